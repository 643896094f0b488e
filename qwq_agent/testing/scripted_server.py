"""A scripted model server: real HTTP on 127.0.0.1, scripted output, SGLang's and OpenAI's wire formats.

It is a test double for the model's *intelligence* only. Everything on the wire is real: a client under
test opens TCP connections, reads chunked SSE bodies, sees real dropped connections and real 500s. A test
says what the model writes, turn by turn, in QwQ's raw output format::

    async with ScriptedModelServer(turns=["2+2 is 4\\n</think>\\n\\n4"]) as server:
        client = SGLangClient(server.url)
        ...
        assert "2+2" in server.requests[0].prompt

A turn is a string, a `Turn` (text plus faults: a 500, a slow first token, a connection dropped or a
malformed event after N tokens, a stream held open until aborted, a stream that sends only SSE
keep-alive comments from some point on), or a callable receiving the
`ScriptedRequest` and returning either; `turns` itself may be such a callable, answering every request.
Prefix caching is simulated like a radix cache: `cached_tokens` is the longest common token prefix with any
sequence (prompt + output) served before, at most the prompt length minus one.

Sync code uses it as `with ScriptedModelServer(...) as server:` (it then runs in a thread of its own).
`python -m qwq_agent.testing.scripted_server --port N --text ...` runs it as a process (used by the tests of
`qwq-agent serve`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from qwq_agent.testing._http import HttpRequest, HttpResponder, serve_connection
from qwq_agent.testing._tokens import ScriptTokenizer, common_prefix_len

IM_END_ID = 151645  # QwQ-32B's <|im_end|>, reported as the matched EOS like SGLang does

_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


@dataclass
class Turn:
    """What the model writes for one request, and how the server misbehaves while writing it.

    Token counts in the fault fields count streamed tokens (events, for the OpenAI API).
    """

    text: str = ""
    http_status: int | None = None
    """Answer with this HTTP status (and an error body) instead of any output."""
    first_token_delay: float = 0.0
    token_delay: float = 0.0
    drop_after: int | None = None
    """Drop the connection after this many tokens (0: right after the headers)."""
    malformed_after: int | None = None
    """Send a malformed event after this many tokens, then end the stream."""
    hold_after: int | None = None
    """After this many tokens, send nothing more until the request is aborted or `hold_timeout` passes."""
    hold_timeout: float = 30.0
    hold_until_requests: int | None = None
    """With `hold_after`: hold until the server has received this many requests in all (not until an
    abort), e.g. until side requests made while this stream is open (answer-stability probes) arrive."""
    error_event_after: int | None = None
    """Send an in-stream error event (as SGLang does on a failure mid-request) after this many tokens."""
    stop_order: Literal["text", "listed", "ignore"] = "text"
    """Where several stop strings occur: "text" cuts at the earliest in the text; "listed" cuts at the
    first one in the request's list that occurs anywhere, as SGLang 0.5.17 was seen to do; "ignore"
    applies none (as SGLang does under a grammar)."""
    keepalive_after: int | None = None
    """After this many tokens, send only SSE keep-alive comments (`: keep-alive`), one every
    `keepalive_interval` seconds, until the request is aborted or `hold_timeout` passes (streams only)."""
    keepalive_interval: float = 0.05
    ids: list[int] | None = None
    """Generate these token ids instead of tokenizing `text` (then ignored): a model that samples a split the
    tokenizer would not choose, as real models do. Each id streams as its own decoded piece; stop strings
    do not apply, `max_new_tokens` does."""


@dataclass
class ScriptedRequest:
    """One request the server received, as a test wants to inspect it."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    prompt: str | None = None
    """The text prompt (native text requests, or the rendered OpenAI messages)."""
    input_ids: list[int] | None = None
    prompt_ids: list[int] = field(default_factory=list)
    rid: str | None = None
    stream: bool = False
    cached_tokens: int = 0
    turn_index: int = -1

    @property
    def sampling_params(self) -> dict[str, Any]:
        """The native request's `sampling_params` (empty for OpenAI requests)."""
        return dict(self.body.get("sampling_params") or {})


TurnSource = str | Turn | Callable[[ScriptedRequest], "str | Turn"]


class ScriptExhausted(RuntimeError):
    """More requests arrived than the script has turns for."""


class ScriptedModelServer:
    """Serves scripted turns over SGLang's native API and the OpenAI chat API on 127.0.0.1.

    Args:
        turns: the output of each successive request, or one callable answering every request.
        model: the model name reported by `/v1/models` and `/server_info`.
        max_total_num_tokens: the KV capacity reported by `/server_info`.
        incremental: stream native `/generate` output as disjoint pieces (SGLang's
            `--incremental-streaming-output`) instead of the default cumulative text.
        api_key: when set, `/v1/*` requires `Authorization: Bearer <api_key>`.
        when_exhausted: "error" answers 500 once the turns run out; "repeat" starts them over.
        ready: whether `/health` answers 200 from the start (else 503 until `set_ready()`).
        abort_delay: seconds `/abort_request` waits before it acts and answers (a slow server); the
            request is recorded in `abort_requests` as soon as it arrives.
    """

    def __init__(
        self,
        turns: Sequence[TurnSource] | Callable[[ScriptedRequest], str | Turn] = (),
        *,
        model: str = "Qwen/QwQ-32B",
        max_total_num_tokens: int = 18391,
        context_length: int = 16384,
        incremental: bool = False,
        api_key: str | None = None,
        when_exhausted: str = "error",
        ready: bool = True,
        use_project_tokenizer: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        abort_delay: float = 0.0,
    ) -> None:
        self._turns = turns
        self.model = model
        self.max_total_num_tokens = max_total_num_tokens
        self.context_length = context_length
        self.incremental = incremental
        self.api_key = api_key
        self.when_exhausted = when_exhausted
        self.ready = ready
        self.tokenizer = ScriptTokenizer(use_project_tokenizer)
        self.host = host
        self.port = port
        self.requests: list[ScriptedRequest] = []
        self.aborted_rids: list[str] = []
        self.abort_requests: list[str] = []
        self.abort_delay = abort_delay
        self.errors: list[str] = []
        self._next_turn = 0
        self._cache: list[list[int]] = []
        self._aborts: dict[str, asyncio.Event] = {}
        self._changed: asyncio.Condition | None = None
        self._stopping: asyncio.Event | None = None
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.prompt_tokens_total = 0
        self.cached_tokens_total = 0

    # ----- lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, e.g. `http://127.0.0.1:41234`."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind and start serving on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._server = await asyncio.start_server(
            lambda r, w: serve_connection(r, w, self._dispatch), self.host, self.port
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop accepting and close the listening socket; streams in flight are released."""
        if self._stopping is not None:
            self._stopping.set()
        for event in self._aborts.values():
            event.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> ScriptedModelServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __enter__(self) -> ScriptedModelServer:
        started = threading.Event()
        loop = asyncio.new_event_loop()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # report bind errors to the caller's thread
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="scripted-model-server", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            raise failure[0]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._thread = None

    def set_ready(self, ready: bool = True) -> None:
        """Make `/health` answer 200 (or 503 again)."""
        self.ready = ready

    async def wait_for_requests(self, n: int) -> ScriptedRequest:
        """Wait until `n` requests to the model endpoints arrived; returns the n-th (server's loop only)."""
        assert self._changed is not None, "server not started"
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.requests) >= n)
        return self.requests[n - 1]

    async def wait_for_abort(self, rid: str) -> None:
        """Wait until `/abort_request` named `rid` (server's loop only)."""
        assert self._changed is not None, "server not started"
        async with self._changed:
            await self._changed.wait_for(lambda: rid in self.aborted_rids)

    # ----- dispatch --------------------------------------------------------------------------------

    async def _dispatch(self, req: HttpRequest, out: HttpResponder) -> None:
        routes = {
            ("GET", "/health"): self._health,
            ("GET", "/health_generate"): self._health,
            ("GET", "/server_info"): self._server_info,
            ("GET", "/get_server_info"): self._server_info,
            ("GET", "/get_model_info"): self._model_info,
            ("GET", "/metrics"): self._metrics,
            ("POST", "/generate"): self._generate,
            ("POST", "/abort_request"): self._abort,
            ("POST", "/flush_cache"): self._flush_cache,
            ("GET", "/v1/models"): self._models,
            ("POST", "/v1/chat/completions"): self._chat,
        }
        route = routes.get((req.method, req.path))
        if route is None:
            await out.send_json(404, {"error": {"message": f"no route {req.method} {req.path}"}})
            return
        if req.path.startswith("/v1/") and self.api_key is not None:
            if req.headers.get("authorization") != f"Bearer {self.api_key}":
                await out.send_json(401, {"error": {"message": "invalid api key", "type": "auth_error"}})
                return
        try:
            await route(req, out)
        except (ConnectionError, OSError):
            pass  # the client went away mid-response
        except Exception as exc:  # a bug in a scripted callable: answer 500 and keep it for the test
            self.errors.append(f"{type(exc).__name__}: {exc}")
            if not out.started:
                await out.send_json(500, {"error": {"message": f"scripted server: {exc}"}})

    async def _health(self, req: HttpRequest, out: HttpResponder) -> None:
        await out.send_bytes(200 if self.ready else 503, b"")

    async def _server_info(self, req: HttpRequest, out: HttpResponder) -> None:
        await out.send_json(
            200,
            {
                "model_path": self.model,
                "served_model_name": self.model,
                "context_length": self.context_length,
                "max_total_num_tokens": self.max_total_num_tokens,
                "max_req_input_len": self.context_length - 1,
                "schedule_policy": "lpm",
                "incremental_streaming_output": self.incremental,
                "version": "scripted",
                "internal_states": [{"max_total_num_tokens": self.max_total_num_tokens}],
            },
        )

    async def _flush_cache(self, req: HttpRequest, out: HttpResponder) -> None:
        # SGLang's /flush_cache empties the radix cache; benchmarks call it between configurations.
        self._cache.clear()
        await out.send_bytes(200, b"Cache flushed.")

    async def _model_info(self, req: HttpRequest, out: HttpResponder) -> None:
        await out.send_json(200, {"model_path": self.model, "is_generation": True})

    async def _metrics(self, req: HttpRequest, out: HttpResponder) -> None:
        text = (
            f"sglang:prompt_tokens_total {self.prompt_tokens_total}\n"
            f"sglang:cached_tokens_total {self.cached_tokens_total}\n"
        )
        await out.send_bytes(200, text.encode())

    async def _models(self, req: HttpRequest, out: HttpResponder) -> None:
        data = [
            {
                "id": self.model,
                "object": "model",
                "owned_by": "scripted",
                "max_model_len": self.context_length,
            }
        ]
        await out.send_json(200, {"object": "list", "data": data})

    async def _abort(self, req: HttpRequest, out: HttpResponder) -> None:
        body = req.json() or {}
        self.abort_requests.append(str(body.get("rid", "*")))
        if self.abort_delay and self._stopping is not None:
            with contextlib.suppress(TimeoutError):  # `stop()` ends the wait early
                await asyncio.wait_for(self._stopping.wait(), self.abort_delay)
        rids = list(self._aborts) if body.get("abort_all") else [body.get("rid", "")]
        for rid in rids:
            self.aborted_rids.append(rid)
            self._aborts.setdefault(rid, asyncio.Event()).set()
        await self._notify()
        await out.send_bytes(200, b"")

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    # ----- turns, cache, output --------------------------------------------------------------------

    async def _turn_for(self, request: ScriptedRequest, out: HttpResponder) -> Turn | None:
        """The scripted turn for `request`, or None once an error answer (500, scripted status) is sent."""
        try:
            turn = await self._record(request)
        except ScriptExhausted as exc:
            self.errors.append(str(exc))
            await out.send_json(500, {"error": {"message": str(exc)}})
            return None
        if turn.http_status is not None:
            await out.send_json(turn.http_status, {"error": {"message": "scripted server failure"}})
            return None
        return turn

    async def _record(self, request: ScriptedRequest) -> Turn:
        """Record the request, simulate the prefix cache and pick its turn."""
        cached = max((common_prefix_len(request.prompt_ids, seq) for seq in self._cache), default=0)
        request.cached_tokens = max(0, min(cached, len(request.prompt_ids) - 1))
        self.prompt_tokens_total += len(request.prompt_ids)
        self.cached_tokens_total += request.cached_tokens
        self.requests.append(request)
        await self._notify()
        if callable(self._turns):
            source: TurnSource = self._turns
        else:
            if self._next_turn >= len(self._turns):
                if self.when_exhausted != "repeat" or not self._turns:
                    raise ScriptExhausted(f"request {len(self.requests)} but only {len(self._turns)} turns")
                self._next_turn = 0
            source = self._turns[self._next_turn]
            request.turn_index = self._next_turn
            self._next_turn += 1
        if callable(source):
            source = source(request)
        return Turn(text=source) if isinstance(source, str) else source

    def _finish(
        self, request: ScriptedRequest, turn: Turn, params: dict[str, Any]
    ) -> tuple[list[tuple[int, str]], dict[str, Any]]:
        """Apply stop strings and the token limit; return the tokens to stream and SGLang's finish reason."""
        text = turn.text
        finish: dict[str, Any] = {"type": "stop", "matched": IM_END_ID}
        stops = [] if turn.stop_order == "ignore" or turn.ids is not None else params.get("stop") or []
        if isinstance(stops, str):
            stops = [stops]
        hits = [(text.find(s), s) for s in stops if s and s in text]
        if hits:
            at, matched = hits[0] if turn.stop_order == "listed" else min(hits)
            text = text[:at]
            finish = {"type": "stop", "matched": matched}
        if turn.ids is not None:
            pieces = [(i, self.tokenizer.decode([i])) for i in turn.ids]
        else:
            pieces = self.tokenizer.pieces(text)
        limit = params.get("max_new_tokens", params.get("max_tokens", params.get("max_completion_tokens")))
        if limit is not None and len(pieces) > int(limit):
            pieces = pieces[: int(limit)]
            finish = {"type": "length", "length": int(limit)}
        self._cache.append(request.prompt_ids + [i for i, _ in pieces])
        return pieces, finish

    async def _pace(self, turn: Turn, index: int, request: ScriptedRequest, out: HttpResponder) -> str | None:
        """Before token `index`: apply delays and faults. Returns "stop" when the stream must end here."""
        if index == 0 and turn.first_token_delay:
            await asyncio.sleep(turn.first_token_delay)
        elif index > 0 and turn.token_delay:
            await asyncio.sleep(turn.token_delay)
        if turn.drop_after == index:
            out.abort()
            return "stop"
        if turn.malformed_after == index:
            await out.chunk(b'data: {"text": "half an event\n\n')
            await out.end_chunked()
            return "stop"
        if turn.error_event_after == index:
            err = {"error": {"message": "scripted failure mid-stream", "type": "internal_error", "code": 500}}
            await out.chunk(b"data: " + json.dumps(err).encode() + b"\n\n")
            await out.chunk(b"data: [DONE]\n\n")
            await out.end_chunked()
            return "stop"
        event = self._aborts.get(request.rid or "")
        if turn.keepalive_after == index and event is not None and request.stream:
            until = time.monotonic() + turn.hold_timeout
            while not event.is_set() and time.monotonic() < until:
                await out.chunk(b": keep-alive\n\n")
                try:
                    await asyncio.wait_for(event.wait(), turn.keepalive_interval)
                except TimeoutError:
                    pass
        if turn.hold_after == index and turn.hold_until_requests is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wait_for_requests(turn.hold_until_requests), turn.hold_timeout)
        elif turn.hold_after == index and event is not None:
            try:
                await asyncio.wait_for(event.wait(), turn.hold_timeout)
            except TimeoutError:
                pass
        if event is not None and event.is_set():
            return "aborted"
        return None

    # ----- SGLang native /generate -----------------------------------------------------------------

    async def _generate(self, req: HttpRequest, out: HttpResponder) -> None:
        body = req.json() or {}
        text, ids = body.get("text"), body.get("input_ids")
        bad_text = text is not None and not isinstance(text, str)  # a list is a batch
        if (text is None) == (ids is None) or bad_text or (ids and isinstance(ids[0], list)):
            await out.send_json(
                400, {"error": {"message": "give exactly one of text / input_ids (no batches)"}}
            )
            return
        rid = str(body.get("rid") or uuid.uuid4().hex)
        prompt_ids = (
            list(ids) if ids is not None else self.tokenizer.encode(str(text))
        )  # a str, checked above
        request = ScriptedRequest(
            path=req.path,
            body=body,
            headers=req.headers,
            prompt=text,
            input_ids=ids,
            prompt_ids=prompt_ids,
            rid=rid,
            stream=bool(body.get("stream")),
        )
        self._aborts.setdefault(rid, asyncio.Event())
        turn = await self._turn_for(request, out)
        if turn is None:
            return
        pieces, finish = self._finish(request, turn, request.sampling_params)
        started = time.perf_counter()

        def meta(n: int, done: dict[str, Any] | None) -> dict[str, Any]:
            info: dict[str, Any] = {
                "id": rid,
                "finish_reason": done,
                "prompt_tokens": len(prompt_ids),
                "completion_tokens": n,
                "cached_tokens": request.cached_tokens,
            }
            if done is not None:
                info["e2e_latency"] = time.perf_counter() - started
            return info

        if not request.stream:
            for i in range(len(pieces) + 1):
                if await self._pace(turn, i, request, out) == "stop":
                    return
            await out.send_json(
                200,
                {
                    "text": "".join(p for _, p in pieces),
                    "output_ids": [i for i, _ in pieces],
                    "meta_info": meta(len(pieces), finish),
                },
            )
            return

        await out.start_chunked()
        # What was sent so far, kept as it grows: rebuilding it for every event is quadratic in Python
        # code, and long scripted streams (the loop tests') spent most of their time there.
        text_so_far, ids_so_far = "", []
        for n, (tok, piece) in enumerate(pieces):
            state = await self._pace(turn, n, request, out)
            if state == "stop":
                return
            if state == "aborted":
                finish = {"type": "abort", "message": "aborted by /abort_request"}
                break
            text_so_far += piece
            ids_so_far.append(tok)
            last = n == len(pieces) - 1
            done = finish if last else None
            if self.incremental:
                event = {"text": piece, "output_ids": [tok], "meta_info": meta(n + 1, done)}
            else:
                event = {
                    "text": text_so_far,
                    "output_ids": ids_so_far,  # serialised right below, before it grows again
                    "meta_info": meta(n + 1, done),
                }
            await out.chunk(b"data: " + json.dumps(event).encode() + b"\n\n")
        else:
            n = len(pieces)
            if await self._pace(turn, n, request, out) == "stop":
                return
            if not pieces:
                await out.chunk(
                    b"data: "
                    + json.dumps({"text": "", "output_ids": [], "meta_info": meta(0, finish)}).encode()
                    + b"\n\n"
                )
            await out.chunk(b"data: [DONE]\n\n")
            await out.end_chunked()
            return
        # aborted: SGLang sends one last event with the abort reason
        sent = pieces[:n]
        event = {
            "text": "" if self.incremental else "".join(p for _, p in sent),
            "output_ids": [],
            "meta_info": meta(len(sent), finish),
        }
        await out.chunk(b"data: " + json.dumps(event).encode() + b"\n\n")
        await out.chunk(b"data: [DONE]\n\n")
        await out.end_chunked()

    # ----- OpenAI /v1/chat/completions -------------------------------------------------------------

    def _render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
        """The prompt the model would see; the project's renderer when it is there, else plain ChatML."""
        try:
            from qwq_agent.agent.chat_format import render
            from qwq_agent.agent.messages import Message, ToolCall, ToolSpec

            converted = []
            for m in messages:
                calls = [
                    ToolCall(
                        id=c.get("id", ""),
                        name=c["function"]["name"],
                        arguments=_loads_obj(c["function"].get("arguments")),
                    )
                    for c in m.get("tool_calls") or []
                ]
                converted.append(
                    Message(
                        role=m["role"],
                        content=_text_of(m.get("content")),
                        tool_calls=calls,
                        tool_call_id=m.get("tool_call_id"),
                    )
                )
            specs = [ToolSpec(**t["function"]) for t in tools]
            return render(converted, specs)
        except ImportError:
            parts = [f"<|im_start|>{m['role']}\n{_text_of(m.get('content'))}<|im_end|>\n" for m in messages]
            return "".join(parts) + "<|im_start|>assistant\n<think>\n"

    async def _chat(self, req: HttpRequest, out: HttpResponder) -> None:
        body = req.json() or {}
        messages, tools = body.get("messages") or [], body.get("tools") or []
        prompt = self._render(messages, tools)
        request = ScriptedRequest(
            path=req.path,
            body=body,
            headers=req.headers,
            prompt=prompt,
            prompt_ids=self.tokenizer.encode(prompt),
            rid=f"chatcmpl-{uuid.uuid4().hex}",
            stream=bool(body.get("stream")),
        )
        self._aborts.setdefault(request.rid or "", asyncio.Event())
        turn = await self._turn_for(request, out)
        if turn is None:
            return
        pieces, finish = self._finish(request, turn, body)
        raw = "".join(p for _, p in pieces)
        reasoning, content, calls = split_raw_output(raw)
        reason = "length" if finish["type"] == "length" else ("tool_calls" if calls else "stop")
        usage = {
            "prompt_tokens": len(request.prompt_ids),
            "completion_tokens": len(pieces),
            "total_tokens": len(request.prompt_ids) + len(pieces),
            "prompt_tokens_details": {"cached_tokens": request.cached_tokens},
        }
        base = {"id": request.rid, "created": int(time.time()), "model": body.get("model", self.model)}
        if not request.stream:
            for i in range(2):
                if await self._pace(turn, i, request, out) == "stop":
                    return
            message: dict[str, Any] = {
                "role": "assistant",
                "content": content or None,
                "reasoning_content": reasoning,
            }
            if calls:
                message["tool_calls"] = [
                    {
                        "id": f"call_{k}",
                        "type": "function",
                        "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])},
                    }
                    for k, c in enumerate(calls)
                ]
            await out.send_json(
                200,
                {
                    **base,
                    "object": "chat.completion",
                    "usage": usage,
                    "choices": [{"index": 0, "message": message, "finish_reason": reason}],
                },
            )
            return

        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        deltas += [{"reasoning_content": p} for _, p in self.tokenizer.pieces(reasoning)]
        deltas += [{"content": p} for _, p in self.tokenizer.pieces(content)]
        for k, call in enumerate(calls):
            deltas.append(
                {
                    "tool_calls": [
                        {
                            "index": k,
                            "id": f"call_{k}",
                            "type": "function",
                            "function": {"name": call["name"], "arguments": ""},
                        }
                    ]
                }
            )
            args = json.dumps(call["arguments"])
            deltas += [
                {"tool_calls": [{"index": k, "function": {"arguments": p}}]}
                for _, p in self.tokenizer.pieces(args)
            ]
        await out.start_chunked()
        for n, delta in enumerate(deltas):
            state = await self._pace(turn, n, request, out)
            if state == "stop":
                return
            if state == "aborted":
                break
            chunk = {
                **base,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }
            await out.chunk(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        else:
            if await self._pace(turn, len(deltas), request, out) == "stop":
                return
        final = {
            **base,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {}, "finish_reason": reason}],
        }
        await out.chunk(b"data: " + json.dumps(final).encode() + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            tail = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
            await out.chunk(b"data: " + json.dumps(tail).encode() + b"\n\n")
        await out.chunk(b"data: [DONE]\n\n")
        await out.end_chunked()


def split_raw_output(raw: str) -> tuple[str, str, list[dict[str, Any]]]:
    """Split QwQ's raw output as SGLang's deepseek-r1 reasoning parser and qwen25 tool parser do.

    Without `</think>` everything is reasoning (the prompt opened the think block). Returns
    (reasoning, content without tool-call blocks, [{"name", "arguments"}]).
    """
    if "</think>" not in raw:
        return raw, "", []
    reasoning, rest = raw.split("</think>", 1)
    calls = []
    for block in _TOOL_CALL.findall(rest):
        try:
            obj = json.loads(block)
        except json.JSONDecodeError:
            continue  # like SGLang, an unparsable call stays out of tool_calls
        if isinstance(obj, dict) and "name" in obj:
            calls.append({"name": obj["name"], "arguments": obj.get("arguments", {})})
    content = _TOOL_CALL.sub("", rest).strip()
    return reasoning.strip("\n"), content, calls


def _text_of(content: Any) -> str:
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def _loads_obj(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    try:
        obj = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        return {}
    return obj if isinstance(obj, dict) else {}


def main(argv: list[str] | None = None) -> int:
    """Run a scripted server as a process until SIGINT/SIGTERM (for launcher tests)."""
    import signal

    parser = argparse.ArgumentParser(description="Scripted model server (a test double)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--text", action="append", default=[], help="a turn (repeatable; cycles)")
    parser.add_argument(
        "--probe-answer",
        default=None,
        help="answer requests whose prompt ends with the loop detector's probe suffix with this text "
        "(answer-stability probes); other requests get the --text turns",
    )
    parser.add_argument("--model", default="Qwen/QwQ-32B")
    parser.add_argument("--max-total-num-tokens", type=int, default=18391)
    parser.add_argument(
        "--random-tokens",
        type=int,
        default=0,
        help="answer every request with this many random token ids, as a model with random weights does "
        "(its sampled splits are rarely the tokenizer's own): for benchmarks/agent_workload.py",
    )
    parser.add_argument("--unready-for", type=float, default=0.0, help="answer /health 503 this long (s)")
    parser.add_argument(
        "--exit-after", type=float, default=None, help="exit with status 3 after this long (s)"
    )
    args, _unknown = parser.parse_known_args(argv)  # launcher flags meant for SGLang are ignored

    async def serve() -> None:
        texts = args.text or ["scripted\n</think>\n\nok"]
        turns: Sequence[TurnSource] | Callable[[ScriptedRequest], str | Turn] = texts
        if args.random_tokens > 0:
            from qwq_agent.testing.random_turns import random_token_turns

            turns = random_token_turns(args.random_tokens)
        if args.probe_answer is not None:
            from qwq_agent.testing.probes import probe_aware

            turns = probe_aware(texts, args.probe_answer)
        server = ScriptedModelServer(
            turns,
            model=args.model,
            when_exhausted="repeat",
            max_total_num_tokens=args.max_total_num_tokens,
            ready=args.unready_for <= 0,
            host=args.host,
            port=args.port,
        )
        await server.start()
        print(f"scripted server on {server.url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if args.unready_for > 0:
            loop.call_later(args.unready_for, server.set_ready)
        if args.exit_after is not None:

            def crash() -> None:
                print("scripted server crashing on purpose", flush=True)
                stop.set()

            loop.call_later(args.exit_after, crash)
        await stop.wait()
        await server.stop()
        if args.exit_after is not None:
            raise SystemExit(3)

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
