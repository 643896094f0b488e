"""Client for SGLang's native `/generate` API: raw prompts in, QwQ's raw output out, exact usage.

The native API is the one that lets the agent own the prompt (rendered by `chat_format.render`, so the
radix cache sees the same prefix turn after turn) and that reports `cached_tokens` for every request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

import httpx
from pydantic import BaseModel, Field

from qwq_agent.agent.chat_format import PromptOptions
from qwq_agent.agent.clients._sse import DONE, iter_sse_json
from qwq_agent.agent.clients.counts import server_count
from qwq_agent.agent.clients.errors import (
    ModelConnectionError,
    ModelError,
    ModelProtocolError,
    ModelServerError,
    ModelTimeoutError,
    server_abort,
    server_error,
    wrong_type,
)
from qwq_agent.agent.clients.overrun import OverrunGuard
from qwq_agent.agent.clients.retry import RetryPolicy, parse_retry_after, retry_delay, retryable
from qwq_agent.agent.clients.retry import check_deadline as _check_deadline
from qwq_agent.agent.clients.router_info import is_router_summary, worker_infos
from qwq_agent.agent.clients.routing import RoutingKeyMixin, routing_headers
from qwq_agent.agent.clients.stops import StopScanner
from qwq_agent.agent.messages import Message, ToolSpec
from qwq_agent.agent.prompt_size import PreparedPrompt, prepare_prompt, rendered_prompt_tokens
from qwq_agent.deadline import current_deadline
from qwq_agent.http_env import client_options
from qwq_agent.http_probe import AnswerTooLarge, get_capped
from qwq_agent.protocols import Completion, ModelEvent, SamplingParams, TextDelta, Usage
from qwq_agent.server_info import ServerFacts, read_server_info
from qwq_agent.urls import redact_url, redact_urls_in

log = logging.getLogger(__name__)

ABORT_FLOOR_S = 0.05


class SGLangCompletion(Completion):
    """A `Completion` with what only the native API tells: the request id and the matched stop."""

    rid: str = ""
    matched_stop: str | int | None = None
    """The stop string or token id that ended generation (SGLang trims stop strings from the text)."""
    server_latency_s: float | None = None
    prompt_ids: list[int] | None = None
    """The prompt as ids, when it was sent as ids (kept turns spliced in: see `exact_tokens`)."""


class ServerInfo(BaseModel):
    """The parts of `/server_info` the agent uses, plus everything else in `raw`."""

    model_path: str | None = None
    context_length: int | None = None
    max_total_num_tokens: int | None = None
    """KV-cache capacity in tokens: how many tokens all resident sessions can hold together."""
    version: str | None = None
    raw: dict[str, Any] = Field(default_factory=dict)
    worker_capacities: dict[str, int] = Field(default_factory=dict)
    """Behind SGLang's router: each healthy worker's KV capacity by URL (`max_total_num_tokens` is their
    sum, `context_length` the smallest); empty for a single server."""
    unprobed_workers: int = 0
    """Behind a router listing more than `MAX_PROBED_WORKERS` healthy workers: how many were not probed
    (their capacity is not in `max_total_num_tokens`)."""


def sampling_payload(params: SamplingParams) -> dict[str, Any]:
    """SGLang's `sampling_params` for `params` (constraints only when set; at most one allowed)."""
    constraints = {k: getattr(params, k) for k in ("json_schema", "regex", "ebnf") if getattr(params, k)}
    if len(constraints) > 1:
        raise ValueError(f"at most one of json_schema/regex/ebnf may be set, got {sorted(constraints)}")
    payload: dict[str, Any] = {
        "max_new_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "min_p": params.min_p,
        "ignore_eos": params.ignore_eos,
    }
    if params.stop:
        payload["stop"] = list(params.stop)
    if params.stop_token_ids:
        payload["stop_token_ids"] = list(params.stop_token_ids)
    if params.seed is not None:
        payload["sampling_seed"] = params.seed
    payload.update(constraints)
    return payload


class SGLangClient(RoutingKeyMixin):
    """Async client for one SGLang server's native API; implements the `Model` protocol.

    Args:
        base_url: e.g. `http://127.0.0.1:30000`.
        profile: the chat-format profile `stream()` renders prompts with.
        keep_reasoning: keep earlier turns' reasoning in the prompt (prefix-stable history, more tokens)
            instead of dropping it as QwQ's template does.
        written_order: render malformed calls back at their places and tool results in call order
            (`PromptOptions.written_order`); off only to go on from a trace recorded before that.
        exact_tokens: with `keep_reasoning`, send prompts as ids with each earlier turn's `token_ids`
            (the ids this server generated) spliced in verbatim, so the radix cache matches the whole
            history; turns without ids are tokenized as text. Off: the prompt is sent as text.
        name: the model name reported to the loop (defaults to the profile).
        connect_timeout: seconds to open a connection.
        read_timeout: longest silence, in seconds, between bytes of a response (covers a slow prefill).
        retry: backoff for connection errors and 5xx/429 answers that arrive before any output.
        incremental: whether the server streams disjoint pieces (`--incremental-streaming-output`);
            None detects it per request from `output_ids` and `meta_info.completion_tokens`.
        max_connections: concurrent requests the connection pool allows.
        abort_timeout: seconds allowed for `/abort_request` when a request is cancelled.
        routing_key: sent as `x-smg-routing-key` so SGLang's router (policy `manual`) keeps a run on
            the replica holding its KV cache; `with_routing_key` gives a per-run copy.
    """

    def __init__(
        self,
        base_url: str,
        *,
        profile: str = "qwq-32b",
        keep_reasoning: bool = False,
        written_order: bool = True,
        exact_tokens: bool = True,
        name: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 600.0,
        retry: RetryPolicy | None = None,
        incremental: bool | None = None,
        max_connections: int = 1024,
        abort_timeout: float = 5.0,
        routing_key: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.routing_key = routing_key
        self._routing = routing_headers(routing_key)
        self.profile = profile
        self.keep_reasoning = keep_reasoning
        self.written_order = written_order
        self.exact_tokens = exact_tokens
        self.name = name or profile
        self.retry = retry or RetryPolicy()
        self.incremental = incremental
        self.abort_timeout = abort_timeout
        timeout = httpx.Timeout(connect=connect_timeout, read=read_timeout, write=connect_timeout, pool=None)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=64)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout,
            limits=limits,
            **client_options(self.base_url, limits=limits),
        )

    def __repr__(self) -> str:
        return f"SGLangClient({redact_url(self.base_url)!r}, profile={self.profile!r})"

    async def __aenter__(self) -> SGLangClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ----- server state ----------------------------------------------------------------------------

    async def health(self) -> bool:
        """True when `/health` answers 200; False when it answers otherwise or cannot be reached.

        Raises `ModelClientClosed` once this client is closed."""
        self._check_open()
        try:
            response = await get_capped(self._http, "/health", max_bytes=0)  # the body is not needed
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def server_info(self) -> ServerInfo:
        """The server's configuration and KV capacity (`/server_info`, or `/get_server_info` on older ones)."""
        raw = await self._get_json("/server_info", fallback="/get_server_info")
        if is_router_summary(raw):
            return await self._fleet_info(raw)
        facts = read_server_info(raw)  # a value of the wrong type reads as unknown (None)
        return ServerInfo(
            model_path=facts.model_path,
            context_length=facts.context_length,
            max_total_num_tokens=facts.max_total_num_tokens,
            version=facts.version,
            raw=raw,
        )

    async def _fleet_info(self, summary: dict[str, Any]) -> ServerInfo:
        """`server_info` behind SGLang's router: the workers' capacities summed."""
        try:
            found = await worker_infos(self._http)
        except ModelTimeoutError as exc:
            raise ModelTimeoutError(
                f"the router at {redact_url(self.base_url)} did not list its workers: {exc}"
            ) from None
        except (httpx.HTTPError, ValueError, ModelServerError) as exc:
            # httpx's errors may quote the URL they were raised for, with the router's credentials (a
            # ModelProtocolError, a /workers answer of the wrong shape, goes up as it is).
            raise ModelServerError(
                f"the router at {redact_url(self.base_url)} did not list its workers: "
                + redact_urls_in(str(exc)),
                status_code=getattr(exc, "status_code", None),
            ) from exc
        facts = {url: read_server_info(raw) for url, raw in found.infos.items()}
        capacities = {url: c for url, f in facts.items() if (c := f.max_total_num_tokens)}
        lengths = [f.context_length for f in facts.values() if f.context_length]
        first = next(iter(facts.values()), ServerFacts())
        return ServerInfo(
            model_path=first.model_path,
            context_length=min(lengths) if lengths else None,
            max_total_num_tokens=sum(capacities.values()) or None,
            version=first.version,
            raw=summary,
            worker_capacities=capacities,
            unprobed_workers=found.unprobed,
        )

    async def abort(self, rid: str) -> None:
        """Ask the server to stop generating request `rid` (it frees its KV slots)."""
        try:
            # An abort counts against the caller's deadline; the floor still lets it reach a local server.
            timeout = max(ABORT_FLOOR_S, current_deadline().clamp(self.abort_timeout) or 0.0)
            self._check_open()
            response = await self._http.post(
                "/abort_request", json={"rid": rid}, timeout=timeout, headers=self._routing
            )
        except httpx.HTTPError as exc:
            raise ModelConnectionError(f"abort of {rid} failed: {type(exc).__name__}") from exc
        if response.status_code >= 400:
            raise ModelServerError(
                f"abort of {rid} answered {response.status_code}", status_code=response.status_code
            )

    async def _get_json(self, path: str, *, fallback: str | None = None) -> dict[str, Any]:
        self._check_open()
        try:
            response = await get_capped(self._http, path)
            if response.status_code == 404 and fallback:
                response = await get_capped(self._http, fallback)
        except AnswerTooLarge as exc:
            raise ModelProtocolError(str(exc)) from None
        except httpx.TimeoutException as exc:
            raise ModelTimeoutError(f"GET {path} timed out") from exc
        except httpx.HTTPError as exc:
            raise ModelConnectionError(f"GET {path} failed: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            raise ModelServerError(
                f"GET {path} answered {response.status_code}",
                status_code=response.status_code,
                body=response.text[:500],
            )
        try:
            obj = response.json_body()
        except ValueError as exc:
            raise ModelProtocolError(f"GET {path} did not answer JSON") from exc
        if not isinstance(obj, dict):
            raise ModelProtocolError(f"GET {path} did not answer a JSON object")
        return obj

    # ----- generation ------------------------------------------------------------------------------

    async def stream(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        params: SamplingParams,
        *,
        prefix: str = "",
    ) -> AsyncIterator[ModelEvent]:
        """Render the conversation with QwQ's chat template, append `prefix`, and stream the output.

        The prompt goes as ids when `exact_tokens` applies and some earlier turn kept its ids; the
        completion's `prompt` is then the text those ids spell (what `render_prompt` returns).
        """
        prepared = self.prepare_prompt(messages, tools, prefix=prefix)
        async with aclosing(self.stream_prepared(prepared, params)) as events:
            async for event in events:
                yield event

    async def stream_prepared(
        self, prepared: PreparedPrompt, params: SamplingParams
    ) -> AsyncGenerator[ModelEvent, None]:
        """`stream` for a prompt `prepare_prompt` built (and the turn counted): sent as it is."""
        ids = prepared.ids
        prompt = ids if ids is not None else prepared.text
        async with aclosing(self.generate_stream(prompt, params)) as events:
            async for event in events:
                if ids is not None and isinstance(event, SGLangCompletion):
                    event.prompt = prepared.text  # traces and replay compare prompts as text
                yield event

    @property
    def prompt_options(self) -> PromptOptions:
        """How this client renders and sends prompts, as a trace records it."""
        return PromptOptions(
            keep_reasoning=self.keep_reasoning,
            profile=self.profile,
            written_order=self.written_order,
            exact_tokens=self.exact_tokens,
        )

    def render_prompt(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> str:
        """The prompt `stream` sends for this conversation (before any `prefix`)."""
        from qwq_agent.agent.chat_format import render

        return render(
            list(messages),
            list(tools),
            add_generation_prompt=True,
            keep_reasoning=self.keep_reasoning,
            profile=self.profile,
            written_order=self.written_order,
        )

    def prepare_prompt(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec], *, prefix: str = ""
    ) -> PreparedPrompt:
        """The prompt `stream` sends for this conversation and `prefix`, rendered (and tokenized, where
        it goes as ids) once: the turn counts it (`PreparedPrompt.tokens`), then sends it with
        `stream_prepared` (`PromptPreparer`)."""
        return prepare_prompt(messages, tools, prefix=prefix, options=self.prompt_options)

    def prompt_ids(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec], *, prefix: str = ""
    ) -> list[int] | None:
        """The prompt as ids with kept turns spliced in; None when it goes as text (no turn kept ids)."""
        return self.prepare_prompt(messages, tools, prefix=prefix).ids

    def count_prompt_tokens(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec], *, prefix: str = ""
    ) -> int | None:
        """The tokens of the prompt `stream` sends for this conversation and `prefix`, exactly as the
        server counts them (`PromptCounter`); None without QwQ's tokenizer."""
        return rendered_prompt_tokens(messages, tools, prefix=prefix, options=self.prompt_options)

    async def generate(
        self, prompt: str | list[int], params: SamplingParams | None = None
    ) -> SGLangCompletion:
        """Generate to the end and return only the completion."""
        async with aclosing(self.generate_stream(prompt, params)) as events:
            async for event in events:
                if isinstance(event, SGLangCompletion):
                    return event
        raise ModelProtocolError("stream ended without a completion")  # generate_stream never does this

    async def generate_stream(
        self, prompt: str | list[int], params: SamplingParams | None = None, *, rid: str | None = None
    ) -> AsyncGenerator[ModelEvent, None]:
        """Stream `/generate` for a text prompt or token ids: `TextDelta`s, then one `SGLangCompletion`.

        Failures before any output are retried per `retry`; after output has arrived they raise a
        `ModelError` whose `partial_text` holds it. A request that does not finish (cancelled, closed
        early, failed mid-way) is aborted on the server.
        """
        params = params or SamplingParams()
        base_rid = rid or uuid.uuid4().hex
        payload: dict[str, Any] = {"sampling_params": sampling_payload(params), "stream": True}
        payload["input_ids" if isinstance(prompt, list) else "text"] = prompt
        delays = self.retry.delays()
        attempt = 0
        while True:
            payload["rid"] = base_rid if attempt == 0 else f"{base_rid}-r{attempt}"
            emitted = False
            try:
                # aclosing: an early close of this generator must reach the inner one now (it aborts the
                # request), not whenever the garbage collector finalises it
                async with aclosing(self._stream_once(payload, prompt)) as events:
                    async for event in events:
                        emitted = True
                        yield event
                return
            except ModelError as exc:
                if emitted or not retryable(exc):
                    raise
                delay = next(delays, None)
                if delay is None:
                    raise
                delay = retry_delay(delay, exc)
                _check_deadline(delay, exc)
                attempt += 1
                await asyncio.sleep(delay)

    async def _stream_once(
        self, payload: dict[str, Any], prompt: str | list[int]
    ) -> AsyncGenerator[ModelEvent, None]:
        rid = payload["rid"]
        started = time.perf_counter()
        text = received = ""  # what was yielded; what the server sent (more, when a stop string cut it)
        output_ids: list[int] = []
        ttft: float | None = None
        final: dict[str, Any] | None = None
        counts: dict[str, Any] | None = None  # the last meta_info: the server's running token counts
        incremental = self.incremental
        stops = StopScanner(payload["sampling_params"].get("stop") or [])
        guard = OverrunGuard(payload["sampling_params"].get("max_new_tokens"))
        sent = finished = overran = False
        self._check_open()
        try:
            request = self._http.build_request("POST", "/generate", json=payload, headers=self._routing)
            try:
                sent = True
                response = await self._http.send(request, stream=True)
            except httpx.TimeoutException as exc:
                raise ModelTimeoutError(
                    f"/generate timed out before answering: {type(exc).__name__}"
                ) from exc
            except httpx.HTTPError as exc:
                sent = not isinstance(exc, httpx.ConnectError)
                raise ModelConnectionError(f"/generate failed: {type(exc).__name__}: {exc}") from exc
            try:
                if response.status_code >= 400:
                    body = (await _read_quietly(response))[:500]
                    raise server_error(
                        f"/generate answered {response.status_code}: {body}",
                        status_code=response.status_code,
                        retry_after=parse_retry_after(response.headers.get("retry-after")),
                        body=body,
                    )
                async for event in iter_sse_json(response):
                    if event is DONE:
                        break
                    assert isinstance(event, dict)
                    if "error" in event:
                        err = (
                            event["error"]
                            if isinstance(event["error"], dict)
                            else {"message": event["error"]}
                        )
                        code = err.get("code") if isinstance(err.get("code"), int) else None
                        raise server_error(
                            f"server error mid-stream: {err.get('message')}",
                            status_code=code,
                            code=f"{err.get('code')} {err.get('type')}",
                        )
                    meta = event.get("meta_info")
                    if not isinstance(meta, dict):
                        raise ModelProtocolError(f"event without meta_info: {str(event)[:200]}")
                    counts = meta
                    _finish_kind(meta.get("finish_reason"))  # a shape no completion could carry: refused now
                    if incremental is None:
                        incremental = _detect_incremental(event, meta, received)
                    delta, ids = _delta(event, received, bool(incremental))
                    output_ids = output_ids + ids if incremental else ids
                    received += delta
                    overran = guard.feed(len(delta), cumulative_ids=len(output_ids))
                    piece = stops.feed(delta) if stops.stops else delta
                    if piece:
                        if ttft is None:
                            ttft = time.perf_counter() - started
                        text += piece
                        # The running counts: all the turn learns of the cost if it closes the stream here.
                        yield TextDelta(text=piece, usage=_usage(meta, len(output_ids), None, ttft, started))
                    if stops.matched is not None:
                        # Cut here even when the server would go on (or trimmed at a later stop string).
                        final = {**meta, "finish_reason": {"type": "stop", "matched": stops.matched}}
                        finished = meta.get("finish_reason") is not None
                        break
                    if _is_abort(reason := meta.get("finish_reason")):
                        finished = True  # the server ended it: nothing to abort
                        detail = reason.get("message") if isinstance(reason, dict) else None
                        code = reason.get("status_code") if isinstance(reason, dict) else None
                        raise server_abort(str(detail or "no reason given")[:300], code)
                    if overran:
                        # The server ignores max_new_tokens: end it here, as it should have (and abort it).
                        # Checked whatever finish_reason said: a server that labels its events finished
                        # and keeps streaming is no better.
                        log.warning("/generate %s: %s", rid, guard.describe())
                        final = {**meta, "finish_reason": {"type": "length"}}
                        break
                    if reason is not None:
                        final = meta
            finally:
                await response.aclose()
            if final is None:
                raise ModelConnectionError("stream ended before the server reported a finish reason")
            if not all(type(i) is int for i in output_ids):
                raise wrong_type(
                    "output_ids[]", next(i for i in output_ids if type(i) is not int), "an integer"
                )
            matched_streaming = stops.matched is not None
            held = stops.flush()
            if held:
                ttft = ttft if ttft is not None else time.perf_counter() - started
                text += held
                yield TextDelta(text=held, usage=_usage(final, len(output_ids), None, ttft, started))
            if not matched_streaming and stops.matched is not None:
                # The held tail held the earliest stop string; the server had already ended the stream.
                final = {**final, "finish_reason": {"type": "stop", "matched": stops.matched}}
                finished = True
            # A cut made here leaves `finished` as the server left it, so `finally` aborts a request still
            # generating past the stop string.
            finished = finished or (stops.matched is None and not overran)
        except ModelError as exc:
            exc.partial_text = exc.partial_text or text
            if exc.partial_usage is None and (counts is not None or output_ids):
                exc.partial_usage = _usage(counts or {}, len(output_ids), None, ttft, started)
            raise
        finally:
            if sent and not finished:
                await self._abort_quietly(rid)
        reason = final.get("finish_reason")
        matched = reason.get("matched") if isinstance(reason, dict) else None
        latency = final.get("e2e_latency")
        yield SGLangCompletion(
            text=text,
            prompt=prompt if isinstance(prompt, str) else None,
            prompt_ids=None if isinstance(prompt, str) else list(prompt),
            usage=_usage(final, len(output_ids), _finish_kind(reason), ttft, started),
            rid=rid,
            # what the server reports only for the record: a value of the wrong type reads as unknown
            matched_stop=matched if isinstance(matched, str) or type(matched) is int else None,
            server_latency_s=latency
            if isinstance(latency, int | float) and not isinstance(latency, bool) and math.isfinite(latency)
            else None,
            output_ids=output_ids,
        )

    async def _abort_quietly(self, rid: str) -> None:
        # Shielded so that a second cancellation of the caller cannot leave the server generating.
        try:
            await asyncio.shield(self.abort(rid))
        except (ModelError, RuntimeError, asyncio.CancelledError):
            pass  # best effort: SGLang also aborts when it notices the disconnect


def _usage(
    meta: dict[str, Any], ids: int, finish_reason: str | None, ttft: float | None, started: float
) -> Usage:
    """The counts of a `meta_info` (the ids received are a floor for the generated tokens)."""
    prompt_tokens = server_count(meta.get("prompt_tokens"))
    return Usage(
        prompt_tokens=prompt_tokens,
        cached_tokens=min(server_count(meta.get("cached_tokens")), prompt_tokens),
        completion_tokens=server_count(meta.get("completion_tokens"), floor=ids),
        finish_reason=finish_reason,
        ttft_s=ttft,
        latency_s=time.perf_counter() - started,
    )


def _is_abort(reason: object) -> bool:
    kind = reason.get("type") if isinstance(reason, dict) else reason
    return kind == "abort"


def _finish_kind(reason: object) -> str | None:
    """The kind of a `meta_info.finish_reason` (`{"type": "stop", ...}`, or a bare string); None while
    the request goes on. `ModelProtocolError` for any other shape: it reached `Usage` as a pydantic error."""
    kind = reason.get("type") if isinstance(reason, dict) else reason
    if kind is None or isinstance(kind, str):
        return kind
    raise wrong_type(
        "meta_info.finish_reason" + (".type" if isinstance(reason, dict) else ""), kind, "a string"
    )


def _detect_incremental(event: dict[str, Any], meta: dict[str, Any], emitted: str) -> bool | None:
    """Decide once per request whether events carry disjoint pieces; None while it cannot be told yet.

    Cumulative events carry every output id so far, so `len(output_ids) == completion_tokens`; incremental
    events carry only the new ids. Before anything was emitted both readings agree, so wait.
    """
    if not emitted:
        return None
    ids, n = event.get("output_ids"), meta.get("completion_tokens")
    if isinstance(ids, list) and isinstance(n, int) and n > 0:
        return len(ids) != n
    text = event.get("text")
    return not (isinstance(text, str) and text.startswith(emitted))


def _delta(event: dict[str, Any], emitted: str, incremental: bool) -> tuple[str, list[int]]:
    text = event.get("text")
    ids = event.get("output_ids") or []
    if not isinstance(ids, list):  # its items are checked once, at the end: cumulative events resend them all
        raise wrong_type("output_ids", ids, "a list")
    if text is None:
        return "", list(ids)  # token-ids-only servers (--skip-tokenizer-init) send no text
    if not isinstance(text, str):
        raise ModelProtocolError(f"event text is not a string: {type(text).__name__}")
    if incremental:
        return text, list(ids)
    if text.startswith(emitted):
        return text[len(emitted) :], list(ids)
    # The server rewrote text it had already sent (it should not); what was sent cannot be unsaid, so
    # carry on from the new text's end.
    return text[len(emitted) :] if len(text) > len(emitted) else "", list(ids)


async def _read_quietly(response: httpx.Response) -> str:
    try:
        return (await response.aread()).decode("utf-8", "replace")
    except httpx.HTTPError:
        return ""
