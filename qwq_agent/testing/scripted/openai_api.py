"""The OpenAI chat API of the scripted server: `/v1/models` and `/v1/chat/completions`, with QwQ's raw
output split into reasoning, content and tool calls as SGLang's parsers do."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from typing import Any

from qwq_agent.testing._http import HttpRequest, HttpResponder
from qwq_agent.testing.scripted.model import ScriptedModel
from qwq_agent.testing.scripted.script import ScriptedRequest

_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


class OpenAIRoutes(ScriptedModel):
    """The routes an OpenAI-compatible client calls; the settings they report are the server's."""

    model: str
    context_length: int

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
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if (refusal := self._context_refusal(request, limit)) is not None:
            error = {"object": "error", "message": refusal, "type": "BadRequestError", "code": 400}
            await out.send_json(400, error)
            return
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
