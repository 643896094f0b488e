"""SGLang's native API of the scripted server: `/generate` (streamed or not), `/abort_request`, and the
health, info, metrics and cache routes around it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any

from qwq_agent.testing._http import HttpRequest, HttpResponder
from qwq_agent.testing.scripted.model import ScriptedModel
from qwq_agent.testing.scripted.script import ScriptedRequest


class SGLangRoutes(ScriptedModel):
    """The routes a client of SGLang's own server calls; the settings they report are the server's."""

    model: str
    context_length: int
    max_total_num_tokens: int
    incremental: bool
    ready: bool
    abort_delay: float

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
        if (
            refusal := self._context_refusal(request, request.sampling_params.get("max_new_tokens"))
        ) is not None:
            # SGLang refuses before generating: a streamed request gets an error event (with HTTP 200).
            if not request.stream:
                await out.send_json(400, {"error": {"message": refusal}})
                return
            await out.start_chunked()
            await out.chunk(b"data: " + json.dumps({"error": {"message": refusal}}).encode() + b"\n\n")
            await out.chunk(b"data: [DONE]\n\n")
            await out.end_chunked()
            return
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
