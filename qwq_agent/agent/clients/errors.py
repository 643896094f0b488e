"""Typed failures of model clients.

Every way a model call can go wrong surfaces as one of these, never as an exception from deep inside
httpx, so the agent loop can decide what to do (retry the turn, keep the partial text, give up).
"""

from __future__ import annotations

import reprlib

from qwq_agent.protocols import Usage


class ModelError(Exception):
    """Base class of model-client failures.

    `partial_text` is the raw output received before the failure ("" when nothing arrived), so a caller
    can keep or discard what the model already wrote. `partial_usage` is what that output cost, as far as
    the client counted it (the server's running counts, else one token per id or event received); None
    when nothing arrived. The server generated those tokens all the same, so budgets count them.
    """

    def __init__(self, message: str, *, partial_text: str = "", partial_usage: Usage | None = None) -> None:
        super().__init__(message)
        self.partial_text = partial_text
        self.partial_usage = partial_usage


class ModelConnectionError(ModelError):
    """The server could not be reached, or the connection dropped before the response was complete."""


class ModelClientClosed(ModelConnectionError):
    """The client's connection pool is closed (`aclose` ran): no request can be sent, and a retry cannot
    help."""


class ModelTimeoutError(ModelConnectionError):
    """The server did not answer (or stopped sending) within the configured timeout."""


class ModelDeadlineExceeded(ModelTimeoutError):
    """A retry was due, but its backoff would end past the caller's deadline (`current_deadline()`)."""


class ModelServerError(ModelError):
    """The server answered with an error: an HTTP status >= 400, or an error event inside the stream."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        body: str = "",
        partial_text: str = "",
        partial_usage: Usage | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message, partial_text=partial_text, partial_usage=partial_usage)
        self.status_code = status_code
        self.body = body
        # seconds the server asked us to wait before the next try (its Retry-After header), if any
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """5xx and 429 are worth another try; other 4xx mean the request itself is wrong."""
        return self.status_code is not None and (self.status_code >= 500 or self.status_code == 429)


def server_abort(detail: str, status_code: object = None) -> ModelServerError:
    """The server ended a generation with finish reason "abort" (out of KV memory, shutting down, an
    operator's abort): an error, never a finished turn, since the text stops wherever the abort came.

    Retryable (as a 503) unless the server gave its own status: SGLang sends 400 for a request that can
    never succeed (input longer than the context).
    """
    code = status_code if isinstance(status_code, int) and status_code >= 400 else 503
    return ModelServerError(f"the server aborted the generation: {detail}", status_code=code)


class ModelProtocolError(ModelError):
    """The server answered something that is not the protocol we speak (malformed event, missing fields)."""


def wrong_type(field: str, value: object, expected: str) -> ModelProtocolError:
    """The error for a field of a server's event that has the wrong type (`field` as a path, e.g.
    `choices[].delta`), saying what it held in one short line (reprlib stops at a length and a depth)."""
    return ModelProtocolError(
        f"the server's {field} is not {expected}: {type(value).__name__} {reprlib.repr(value)}"
    )
