"""Typed failures of model clients.

Every way a model call can go wrong surfaces as one of these, never as an exception from deep inside
httpx, so the agent loop can decide what to do (retry the turn, keep the partial text, give up).
"""

from __future__ import annotations

import re
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


class ModelContextExceeded(ModelServerError):
    """The server refused the request because its prompt, or its prompt plus `max_new_tokens`, does not
    fit the model's context length. Sent again it fails again: never retried."""

    @property
    def retryable(self) -> bool:
        return False


# How servers word a request that does not fit the context (matched case-insensitively in the error's
# message, body or code). SGLang's tokenizer manager: "The input (N tokens) is longer than the model's
# context length (C tokens)." and "Requested token count exceeds the model's maximum context length of C
# tokens. ..." (an in-stream error event with no code on /generate, a 400 on the OpenAI API); its
# scheduler: "Input length (N tokens) exceeds the maximum allowed length (M tokens). ..." (an abort with
# status 400). vLLM: "This model's maximum context length is C tokens. However, you requested ...",
# "'max_tokens' or 'max_completion_tokens' is too large: ..." and "The decoder prompt (length N) is longer
# than the maximum model length of C". OpenAI: code "context_length_exceeded". llama.cpp:
# "exceed_context_size_error", "the request exceeds the available context size".
_CONTEXT_REFUSAL = re.compile(
    r"context_length_exceeded|exceed_context_size"
    r"|is longer than the model's context length"
    r"|exceeds the model's maximum context length"
    r"|input length \(\d+ tokens\) exceeds the maximum allowed length"
    r"|maximum context length is \d+"
    r"|'max_tokens' or 'max_completion_tokens' is too large"
    r"|longer than the maximum model length"
    r"|exceeds the available context size",
    re.IGNORECASE,
)


def is_context_refusal(text: str) -> bool:
    """Whether a server's error text says the request does not fit the model's context length."""
    return _CONTEXT_REFUSAL.search(text) is not None


def server_error(
    message: str,
    *,
    status_code: int | None = None,
    body: str = "",
    retry_after: float | None = None,
    code: object = None,
) -> ModelServerError:
    """The `ModelServerError` for a server's error answer: a `ModelContextExceeded` when its message,
    body or `code` (OpenAI's `error.code`, a string there) says the request does not fit the context."""
    cls = ModelServerError
    if is_context_refusal(f"{message}\n{body}\n{code if isinstance(code, str) else ''}"):
        cls = ModelContextExceeded
    return cls(message, status_code=status_code, body=body, retry_after=retry_after)


def server_abort(detail: str, status_code: object = None) -> ModelServerError:
    """The server ended a generation with finish reason "abort" (out of KV memory, shutting down, an
    operator's abort): an error, never a finished turn, since the text stops wherever the abort came.

    Retryable (as a 503) unless the server gave its own status: SGLang sends 400 for a request that can
    never succeed (input longer than the context).
    """
    code = status_code if isinstance(status_code, int) and status_code >= 400 else 503
    return server_error(f"the server aborted the generation: {detail}", status_code=code)


class ModelProtocolError(ModelError):
    """The server answered something that is not the protocol we speak (malformed event, missing fields)."""


def wrong_type(field: str, value: object, expected: str) -> ModelProtocolError:
    """The error for a field of a server's event that has the wrong type (`field` as a path, e.g.
    `choices[].delta`), saying what it held in one short line (reprlib stops at a length and a depth)."""
    return ModelProtocolError(
        f"the server's {field} is not {expected}: {type(value).__name__} {reprlib.repr(value)}"
    )
