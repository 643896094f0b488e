"""Client for OpenAI-compatible `/v1/chat/completions` servers, re-serialised into QwQ's raw format.

Works with SGLang's and vLLM's OpenAI servers, Alibaba Cloud Model Studio (DashScope) compatible mode and
others. The server parses reasoning and tool calls; this client writes them back as QwQ writes them::

    reasoning\\n</think>\\n\\ncontent\\n<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>

so the agent loop parses a single format whatever the backend.

Configuration, first found wins:
    base URL: `base_url` argument, `QWQ_OPENAI_BASE_URL`, `OPENAI_BASE_URL`.
    API key:  `api_key` argument, `QWQ_OPENAI_API_KEY`, `OPENAI_API_KEY`, `DASHSCOPE_API_KEY` (none: no
              Authorization header, as local SGLang/vLLM servers need none).
    model:    `model` argument, `QWQ_OPENAI_MODEL`, `OPENAI_MODEL`, "qwq-32b".
    (All read through `qwq_agent.settings`; the read timeout defaults to `QWQ_MODEL_READ_TIMEOUT`.)
The key is kept out of `repr`, logs, exceptions and tracebacks: it is held in a `Secret` and only put
into the header of each outgoing request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import httpx

from qwq_agent.agent.chat_format import malformed_call_block, safe_call_json
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
from qwq_agent.agent.clients.routing import RoutingKeyMixin, routing_headers
from qwq_agent.agent.clients.stops import StopScanner
from qwq_agent.agent.markers import defuse, defuse_spec
from qwq_agent.agent.messages import Message, ToolSpec
from qwq_agent.http_env import client_options
from qwq_agent.http_probe import AnswerTooLarge, get_capped
from qwq_agent.protocols import Completion, ModelEvent, SamplingParams, TextDelta, Usage
from qwq_agent.urls import redact_url

log = logging.getLogger(__name__)

KEY_ENV_VARS = ("QWQ_OPENAI_API_KEY", "OPENAI_API_KEY", "DASHSCOPE_API_KEY")
URL_ENV_VARS = ("QWQ_OPENAI_BASE_URL", "OPENAI_BASE_URL")


class Secret:
    """A string that never shows itself in `repr`/`str` (API keys)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the one place that must send it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a Secret is not picklable")


def to_openai_messages(messages: Sequence[Message], prefix: str = "") -> list[dict[str, Any]]:
    """Our messages as OpenAI chat messages (assistant `tool_calls`, `tool` role results).

    Reasoning of earlier turns is not sent: QwQ's template drops it from history anyway. The API has
    no form for a call that could not be decoded (`Message.malformed_calls`): its block is sent in the
    content, which the server's template writes before the calls, and its result first among the
    results, so that each result still follows the order of the calls the model sees. Chat-template
    markers are defused in what the model wrote (content, argument values) as in results; a call's name
    is sent escaped as the inside of a JSON string (`safe_call_json`), as QwQ's template needs it.
    """
    out: list[dict[str, Any]] = []
    for m in _malformed_results_first(messages):
        if m.role == "assistant":
            # The model's own text too: a marker it spelt in ordinary tokens is one to the server's
            # tokenizer once its template writes the text back (see `markers`).
            content = defuse(m.content or "")
            if m.malformed_calls:
                blocks = [malformed_call_block(c) for c in m.malformed_calls]
                content = "\n".join([content, *blocks] if content else blocks)
            item: dict[str, Any] = {"role": "assistant", "content": content}
            if m.tool_calls:
                item["tool_calls"] = [
                    {
                        "id": c.id or f"call_{k}",
                        "type": "function",
                        "function": {
                            # QwQ's template splices the name between quotes as it stands: sent as
                            # the inside of a JSON string, escaped as our own rendering writes it, it
                            # reads back there as the one name (an ordinary name is unchanged).
                            "name": safe_call_json(json.dumps(c.name, ensure_ascii=False))[1:-1],
                            # Defused in the values, not as ``\u003c``: servers decode the arguments
                            # before their template writes them (SGLang does), which would undo an escape.
                            "arguments": defuse(json.dumps(c.arguments, ensure_ascii=False)),
                        },
                    }
                    for k, c in enumerate(m.tool_calls)
                ]
            out.append(item)
        elif m.role == "tool":
            # The server renders the template and tokenizes markers as control tokens (see `markers`).
            item = {"role": "tool", "content": defuse(m.content), "tool_call_id": m.tool_call_id or ""}
            if m.name:
                item["name"] = m.name
            out.append(item)
        else:
            out.append({"role": m.role, "content": m.content})
    if prefix:
        out.append({"role": "assistant", "content": prefix})
    return out


def _malformed_results_first(messages: Sequence[Message]) -> list[Message]:
    """`messages`, the results that follow a turn with malformed calls answering those calls first."""
    out: list[Message] = []
    first: set[str] = set()  # ids of the malformed calls of the last assistant turn
    run: list[Message] = []  # the tool messages after it, so far

    def flush() -> None:
        out.extend(sorted(run, key=lambda r: r.tool_call_id not in first))
        run.clear()

    for m in messages:
        if m.role == "tool" and first:
            run.append(m)
            continue
        flush()
        first = {c.id for c in m.malformed_calls} if m.role == "assistant" else set()
        out.append(m)
    flush()
    return out


def to_openai_tools(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    """Tool specs as OpenAI `tools` entries, chat-template markers defused (an MCP server wrote them)."""
    return [
        json.loads(
            defuse_spec(
                json.dumps(
                    {
                        "type": "function",
                        "function": {
                            "name": t.name,
                            "description": t.description,
                            "parameters": t.parameters,
                        },
                    },
                    ensure_ascii=False,
                )
            )
        )
        for t in tools
    ]


def tools_digest(tools: Sequence[dict[str, Any]]) -> str:
    """A digest of a request's OpenAI `tools`: what a trace records of them (their text is the run's
    tools'), so that a replay can tell whether it sends the same ones."""
    data = json.dumps(list(tools), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(data.encode("utf-8", "surrogatepass")).hexdigest()


def format_tool_call(name: str, arguments: str) -> str:
    """One call in QwQ's format; arguments that are not JSON are kept verbatim for the parser to flag."""
    try:
        parsed = json.loads(arguments) if arguments.strip() else {}
        # The server decoded the call: a "</tool_call>" inside a string must not end its block here.
        # allow_nan=False: NaN or 1e999 (read as inf) stay as the server sent them, for the parser to refuse.
        body = safe_call_json(
            json.dumps({"name": name, "arguments": parsed}, ensure_ascii=False, allow_nan=False)
        )
    # ValueError: JSON errors, integers past Python's 4300-digit limit, numbers JSON has not (NaN, inf);
    # RecursionError: nested too deeply to read. The parser reports each.
    except (ValueError, RecursionError):
        body = '{"name": ' + json.dumps(name, ensure_ascii=False) + ', "arguments": ' + arguments + "}"
    return f"<tool_call>\n{body}\n</tool_call>"


def openai_base_url(url: str) -> str:
    """The API base a server URL names: a URL given with its `/v1` keeps it, others get it added."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


class OpenAIChatClient(RoutingKeyMixin):
    """Async client for an OpenAI-compatible chat API; implements the `Model` protocol.

    Args:
        base_url: the API root, with or without `/v1` (e.g. `http://127.0.0.1:30000/v1` or
            `https://dashscope-intl.aliyuncs.com/compatible-mode/v1`); see the module doc for defaults.
        model: the model name the server knows.
        api_key: bearer token; see the module doc for defaults.
        retry: backoff for connection errors and 5xx/429 answers that arrive before any output.
        extra_sampling: also send `top_k`/`min_p` (SGLang, vLLM and DashScope accept them; strict
            OpenAI servers may not).
        extra_body: more fields merged into every request body.
        routing_key: sent as `x-smg-routing-key` so SGLang's router (policy `manual`) keeps a run on
            the replica holding its KV cache; `with_routing_key` gives a per-run copy.
    """

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        *,
        name: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float | None = None,
        retry: RetryPolicy | None = None,
        extra_sampling: bool = True,
        extra_body: dict[str, Any] | None = None,
        max_connections: int = 1024,
        routing_key: str | None = None,
    ) -> None:
        from qwq_agent.settings import get_settings

        self.routing_key = routing_key
        self._routing = routing_headers(routing_key)

        env = get_settings()
        url = base_url or env.openai_base_url
        if not url:
            raise ValueError(f"no base URL: pass base_url or set {URL_ENV_VARS[0]}")
        self.base_url = openai_base_url(url)
        self.model = model or env.openai_model or "qwq-32b"
        self.name = name or self.model
        key = api_key or (env.openai_api_key.get_secret_value() if env.openai_api_key else None)
        self._key = Secret(key) if key else None
        self.retry = retry or RetryPolicy()
        self.extra_sampling = extra_sampling
        self.extra_body = dict(extra_body or {})
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=64)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(
                connect=connect_timeout,
                read=read_timeout or env.model_read_timeout_s,
                write=connect_timeout,
                pool=None,
            ),
            limits=limits,
            **client_options(self.base_url, limits=limits, settings=env),
        )

    def __repr__(self) -> str:
        return f"OpenAIChatClient({redact_url(self.base_url)!r}, model={self.model!r}, api_key={'***' if self._key else None})"

    async def __aenter__(self) -> OpenAIChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _headers(self) -> dict[str, str]:
        auth = {"Authorization": f"Bearer {self._key.reveal()}"} if self._key else {}
        return {**auth, **self._routing}

    def _redact(self, text: str) -> str:
        return text.replace(self._key.reveal(), "***") if self._key else text

    async def list_models(self) -> list[str]:
        """Model ids from `/v1/models`."""
        self._check_open()
        try:
            response = await get_capped(self._http, "/models", headers=self._headers())
        except AnswerTooLarge as exc:
            raise ModelProtocolError(str(exc)) from None
        except httpx.HTTPError as exc:
            raise ModelConnectionError(f"GET /models failed: {type(exc).__name__}") from None
        if response.status_code >= 400:
            raise ModelServerError(
                f"GET /models answered {response.status_code}",
                status_code=response.status_code,
                body=self._redact(response.text)[:500],  # redacted before cut: a cut key would not match
            )
        try:
            return [m["id"] for m in response.json_body()["data"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelProtocolError("GET /models: unexpected answer") from exc

    def request_body(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec], params: SamplingParams, prefix: str = ""
    ) -> dict[str, Any]:
        """The JSON body `stream()` sends."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": to_openai_messages(messages, prefix),
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if tools:
            body["tools"] = to_openai_tools(tools)
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if self.extra_sampling:
            body["top_k"] = params.top_k
            body["min_p"] = params.min_p
        if params.json_schema:
            schema = json.loads(params.json_schema)
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": schema},
            }
        if params.regex:
            body["regex"] = params.regex
        if params.ebnf:
            body["ebnf"] = params.ebnf
        if prefix:
            # vLLM and SGLang continue a trailing assistant message instead of opening a new one
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        body.update(self.extra_body)
        return body

    def count_prompt_tokens(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec], *, prefix: str = ""
    ) -> int | None:
        """An estimate, erring high, of the prompt the server renders for this request (`PromptCounter`):
        the server applies its own template, so the count is QwQ's template rendered here plus a
        margin (`prompt_size.estimate_prompt_tokens`); None without QwQ's tokenizer."""
        from qwq_agent.agent.prompt_size import estimate_prompt_tokens

        return estimate_prompt_tokens(messages, tools, prefix=prefix)

    async def stream(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        params: SamplingParams,
        *,
        prefix: str = "",
    ) -> AsyncIterator[ModelEvent]:
        """Stream one chat completion as QwQ raw-format `TextDelta`s, then one `Completion`."""
        body = self.request_body(messages, tools, params, prefix)
        delays = self.retry.delays()
        while True:
            emitted = False
            try:
                async with aclosing(self._stream_once(body)) as events:
                    async for event in events:
                        emitted = True
                        yield event
                return
            except ModelError as exc:
                delay = next(delays, None) if retryable(exc) and not emitted else None
                if delay is None:
                    raise
                delay = retry_delay(delay, exc)
                _check_deadline(delay, exc)
                await asyncio.sleep(delay)

    async def _stream_once(self, body: dict[str, Any]) -> AsyncGenerator[ModelEvent, None]:
        started = time.perf_counter()
        writer = _RawWriter()
        ttft: float | None = None
        usage: dict[str, Any] = {}
        finish: str | None = None
        done = False
        stops = StopScanner(body.get("stop") or [])
        guard = OverrunGuard(body.get("max_tokens"))
        emitted = ""  # the raw text yielded: what the writer wrote, up to the earliest stop string
        chunks = 0  # events that carried output: a floor for the tokens generated, should the stream fail
        self._check_open()
        request = self._http.build_request("POST", "/chat/completions", json=body, headers=self._headers())
        try:
            try:
                response = await self._http.send(request, stream=True)
            except httpx.TimeoutException:
                raise ModelTimeoutError("/chat/completions timed out before answering") from None
            except httpx.HTTPError as exc:
                # `from None`: httpx's exceptions carry the request, and its headers carry the key
                raise ModelConnectionError(f"/chat/completions failed: {type(exc).__name__}") from None
            try:
                if response.status_code >= 400:
                    text = self._redact(await _read_quietly(response))[:500]
                    raise server_error(
                        f"/chat/completions answered {response.status_code}: {text}",
                        status_code=response.status_code,
                        retry_after=parse_retry_after(response.headers.get("retry-after")),
                        body=text,
                    )
                async for event in iter_sse_json(response):
                    if event is DONE:
                        done = True
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
                            f"server error mid-stream: {self._redact(str(err.get('message')))}",
                            status_code=code,
                            code=f"{err.get('code')} {err.get('type')}",
                        )
                    if isinstance(event.get("usage"), dict):
                        usage = event["usage"]
                    pieces = 0
                    output = False  # content, reasoning or a piece of a call: one token at least
                    for delta, reason in _choices(event):
                        # `role` is no output (the opening chunk's), and a call's pieces are a list
                        pieces += sum(len(v) for k, v in delta.items() if k != "role" and isinstance(v, str))
                        output = output or pieces > 0 or bool(delta.get("tool_calls"))
                        piece = stops.feed(writer.feed(delta))
                        if reason:
                            finish = reason
                        if piece:
                            ttft = ttft if ttft is not None else time.perf_counter() - started
                            emitted += piece
                            # What the turn counts if it closes the stream here (this event is one more).
                            so_far = _usage(usage, None, ttft, started, floor=chunks + 1)
                            yield TextDelta(text=piece, usage=so_far)
                    guard.feed(pieces)
                    chunks += 1 if output else 0
                    if stops.matched is not None:
                        done, finish = True, "stop"  # closing the response makes the server abort
                        break
                    if guard.overran:
                        # The server ignores max_tokens: end it here, as it should have. Checked whatever
                        # finish_reason said: a server that said "stop" and kept streaming is no better.
                        log.warning("/chat/completions: %s", guard.describe())
                        done, finish = True, "length"
                        break
            finally:
                await response.aclose()
            if not done and finish is None:
                raise ModelConnectionError("stream ended before the server finished")
            if finish == "abort" and stops.matched is None:  # SGLang's and vLLM's aborted request
                raise server_abort('finish_reason "abort"')
            tail = stops.feed(writer.finish()) + stops.flush()
            if tail:
                ttft = ttft if ttft is not None else time.perf_counter() - started
                emitted += tail
                yield TextDelta(text=tail, usage=_usage(usage, None, ttft, started, floor=max(chunks, 1)))
            if stops.matched is not None:
                finish = "stop"
        except ModelError as exc:
            exc.partial_text = exc.partial_text or emitted
            if exc.partial_usage is None and (chunks or usage):
                exc.partial_usage = _usage(usage, None, ttft, started, floor=chunks)
            raise
        messages = body.get("messages")
        yield Completion(
            text=emitted,
            prompt=None,
            # What was sent, for the trace: a replay checks its requests against it (there is no prompt).
            messages=messages if isinstance(messages, list) else None,
            tools_digest=tools_digest(body.get("tools") or []),
            usage=_usage(usage, finish, ttft, started),
        )


def _usage(
    usage: dict[str, Any], finish: str | None, ttft: float | None, started: float, *, floor: int = 0
) -> Usage:
    """The counts of a chunk's `usage` (`floor`: the generated tokens the client counted itself)."""
    details = usage.get("prompt_tokens_details") or {}
    prompt_tokens = server_count(usage.get("prompt_tokens"))
    return Usage(
        prompt_tokens=prompt_tokens,
        cached_tokens=min(
            server_count(details.get("cached_tokens") if isinstance(details, dict) else 0), prompt_tokens
        ),
        completion_tokens=server_count(usage.get("completion_tokens"), floor=floor),
        finish_reason=finish,
        ttft_s=ttft,
        latency_s=time.perf_counter() - started,
    )


def _choices(event: dict[str, Any]) -> list[tuple[dict[str, Any], str | None]]:
    """Each choice of a chunk as (delta, finish_reason), or `ModelProtocolError` naming the field of the
    wrong type (it escaped the client as an AttributeError, or a pydantic error from `Usage`)."""
    choices = event.get("choices")
    if choices is None:
        return []
    if not isinstance(choices, list):
        raise wrong_type("choices", choices, "a list")
    out: list[tuple[dict[str, Any], str | None]] = []
    for choice in choices:
        if not isinstance(choice, dict):
            raise wrong_type("choices[]", choice, "an object")
        delta = choice.get("delta")
        if delta is None:
            delta = {}
        if not isinstance(delta, dict):
            raise wrong_type("choices[].delta", delta, "an object")
        reason = choice.get("finish_reason")
        if reason is not None and not isinstance(reason, str):
            raise wrong_type("choices[].finish_reason", reason, "a string")
        out.append((delta, reason))
    return out


@dataclass
class _StreamedCall:
    """One tool call as its deltas arrive: the pieces of its name and arguments."""

    index: int
    id: str
    name: list[str] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)


class _RawWriter:
    """Turns chat deltas into QwQ's raw text, in order: reasoning, `</think>`, content, tool calls.

    Only what the text written so far ends with is kept, and call pieces are joined once at the end:
    growing strings by each delta was quadratic (1 MB of reasoning in 16-character deltas: 5 s).
    """

    def __init__(self) -> None:
        self._ends_with_newline = False  # the text written so far ends with "\n"
        self._blank = True  # ... is empty or whitespace only
        self._reasoning = False
        self._closed_think = False
        self._calls: list[_StreamedCall] = []  # in the order they were opened
        self._open: dict[int, _StreamedCall] = {}  # the call each stream index is writing

    def _wrote(self, out: str) -> None:
        if out:
            self._ends_with_newline = out.endswith("\n")
            self._blank = self._blank and not out.strip()

    def feed(self, delta: dict[str, Any]) -> str:
        out = ""
        # vLLM has called the field both `reasoning_content` and `reasoning`
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning and not self._closed_think:
            self._reasoning = True
            out += reasoning
        content = delta.get("content")
        if isinstance(content, str) and content:
            out += self._close_think(out) + content
        calls = delta.get("tool_calls")
        if calls is not None and not isinstance(calls, list):
            raise wrong_type("delta.tool_calls", calls, "a list")
        for call in calls or []:
            if not isinstance(call, dict):
                raise wrong_type("delta.tool_calls[]", call, "an object")
            index, call_id, fn = call.get("index"), call.get("id") or "", call.get("function") or {}
            if index is None:  # null as absent: a call of its own
                index = len(self._calls)
            if not isinstance(index, int) or isinstance(index, bool):
                raise wrong_type("delta.tool_calls[].index", index, "an integer")
            if not isinstance(call_id, str):
                raise wrong_type("delta.tool_calls[].id", call_id, "a string")
            if not isinstance(fn, dict):
                raise wrong_type("delta.tool_calls[].function", fn, "an object")
            name, arguments = fn.get("name") or "", fn.get("arguments") or ""
            for what, value in (("name", name), ("arguments", arguments)):
                if not isinstance(value, str):
                    raise wrong_type(f"delta.tool_calls[].function.{what}", value, "a string")
            slot = self._open.get(index)
            # Ollama, Gemini-compatible adapters and some proxies send every call of a parallel batch at
            # index 0, each with its own id: a new id at an index is a new call, not more of the open one.
            if slot is None or (call_id and slot.id and call_id != slot.id):
                slot = self._open[index] = _StreamedCall(index=index, id=call_id)
                self._calls.append(slot)
            slot.id = slot.id or call_id
            slot.name.append(name)
            slot.arguments.append(arguments)
        self._wrote(out)
        return out

    def _close_think(self, pending: str) -> str:
        # Without any reasoning_content the server did not split reasoning off (no reasoning parser): its
        # content is QwQ's raw text already, `</think>` included.
        if not self._reasoning or self._closed_think:
            return ""
        self._closed_think = True
        ends_with_newline = pending.endswith("\n") if pending else self._ends_with_newline
        return ("" if ends_with_newline else "\n") + "</think>\n\n"

    def finish(self) -> str:
        """The tool calls, written once their arguments are complete."""
        if not self._calls:
            return ""
        out = self._close_think("")
        self._wrote(out)
        if not self._blank and not self._ends_with_newline:
            out += "\n"
        # sorted() is stable: calls sharing an index stay in the order they came
        out += "\n".join(
            format_tool_call("".join(c.name), "".join(c.arguments))
            for c in sorted(self._calls, key=lambda c: c.index)
        )
        self._wrote(out)
        return out


async def _read_quietly(response: httpx.Response) -> str:
    try:
        return (await response.aread()).decode("utf-8", "replace")
    except httpx.HTTPError:
        return ""
