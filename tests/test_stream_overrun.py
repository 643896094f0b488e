"""A model server that ignores the token limit and streams forever: the client ends the stream itself.

Before: nothing stopped it. No stop string came, bytes kept arriving so the read timeout never fired, and
an unattended `qwq-agent run` against such a server (a proxy dropping `max_new_tokens`, a broken build)
hung forever with its memory growing. The server here is real HTTP on 127.0.0.1 and streams without end.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest_asyncio

from qwq_agent.agent.clients import NO_RETRY, OpenAIChatClient, SGLangClient
from qwq_agent.agent.clients.overrun import MAX_CHARS_PER_TOKEN, OverrunGuard
from qwq_agent.agent.messages import Message
from qwq_agent.protocols import Completion, SamplingParams, TextDelta

LIMIT = 40


class EndlessServer:
    """Answers `/generate` and `/v1/chat/completions` with an SSE stream that never finishes.

    `says_finished`: the first event (every event, natively) carries a finish reason all the same;
    `events`: stop after that many and send `[DONE]` (a run past the limit the old code read whole).
    """

    def __init__(
        self, piece: str = " word", *, says_finished: bool = False, events: int | None = None
    ) -> None:
        self.piece = piece
        self.says_finished = says_finished
        self.events = events
        self.aborts: list[str] = []
        self.streams_closed = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> EndlessServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            path = head.split()[1]
            length = next(
                (int(h.split(":")[1]) for h in head.split("\r\n") if h.lower().startswith("content-length:")),
                0,
            )
            body = json.loads(await reader.readexactly(length) or b"{}")
            if path == "/abort_request":
                self.aborts.append(body.get("rid", ""))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
                await writer.drain()
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
            n = 0
            while self.events is None or n < self.events:  # until the client goes away, or `events` are sent
                n += 1
                if path == "/generate":
                    meta = {
                        "id": body["rid"],
                        "finish_reason": {"type": "stop", "matched": 151645} if self.says_finished else None,
                        "prompt_tokens": 3,
                        "completion_tokens": n,
                    }
                    event = {"text": self.piece, "output_ids": [100], "meta_info": meta}
                else:
                    reason = "stop" if self.says_finished and n == 1 else None
                    event = {
                        "choices": [{"index": 0, "delta": {"content": self.piece}, "finish_reason": reason}]
                    }
                writer.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                await writer.drain()
            writer.write(b"data: [DONE]\n\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            self.streams_closed += 1
        finally:
            writer.close()


@pytest_asyncio.fixture
async def endless() -> AsyncIterator[EndlessServer]:
    async with EndlessServer() as server:
        yield server


async def _collect(events: AsyncIterator[object]) -> tuple[str, Completion]:
    text, final = "", None
    async for ev in events:
        if isinstance(ev, TextDelta):
            text += ev.text
        elif isinstance(ev, Completion):
            final = ev
    assert final is not None
    return text, final


async def test_native_client_ends_a_stream_past_max_new_tokens_and_aborts_it(endless: EndlessServer) -> None:
    async with SGLangClient(endless.url, retry=NO_RETRY) as client:
        stream = client.generate_stream("hi", SamplingParams(max_new_tokens=LIMIT), rid="r1")
        text, final = await asyncio.wait_for(_collect(stream), timeout=60)
    assert final.usage.finish_reason == "length"
    assert LIMIT * len(" word") <= len(text) <= (LIMIT + 32) * len(" word")
    assert endless.aborts == ["r1"]  # the server was told to stop generating before the stream returned


async def test_openai_client_ends_a_stream_past_max_tokens(endless: EndlessServer) -> None:
    async with OpenAIChatClient(endless.url, model="m", retry=NO_RETRY) as client:
        stream = client.stream([Message(role="user", content="hi")], [], SamplingParams(max_new_tokens=LIMIT))
        text, final = await asyncio.wait_for(_collect(stream), timeout=60)
    assert final.usage.finish_reason == "length"
    assert LIMIT * len(" word") <= len(text.removeprefix("<think>\n")) <= (LIMIT + 32) * len(" word")


async def test_a_server_that_said_it_finished_and_keeps_streaming_is_still_cut() -> None:
    # A finish reason switched the guard off: the native client never checked an event carrying one, the
    # OpenAI client stopped checking after the first. Both read all 4000 events of this server.
    async with EndlessServer(says_finished=True, events=4000) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            stream = client.generate_stream("hi", SamplingParams(max_new_tokens=LIMIT), rid="r1")
            native, native_final = await asyncio.wait_for(_collect(stream), timeout=60)
        async with OpenAIChatClient(server.url, model="m", retry=NO_RETRY) as client:
            stream = client.stream(
                [Message(role="user", content="hi")], [], SamplingParams(max_new_tokens=LIMIT)
            )
            openai, openai_final = await asyncio.wait_for(_collect(stream), timeout=60)
    for text, final in ((native, native_final), (openai, openai_final)):
        assert final.usage.finish_reason == "length"
        assert LIMIT <= text.count(" word") <= LIMIT + 32
    assert server.aborts == ["r1"]  # it said it had finished, but it went on: it is told to stop


async def test_one_giant_event_counts_by_characters() -> None:
    async with EndlessServer(piece="x" * (LIMIT * MAX_CHARS_PER_TOKEN)) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            stream = client.generate_stream("hi", SamplingParams(max_new_tokens=LIMIT))
            text, final = await asyncio.wait_for(_collect(stream), timeout=60)
    assert final.usage.finish_reason == "length" and len(text) <= 3 * LIMIT * MAX_CHARS_PER_TOKEN


def test_an_honest_stream_is_never_cut() -> None:
    guard = OverrunGuard(LIMIT)
    # Exactly the limit, one token per event, the longest tokens there are, plus a stop token.
    assert not any(guard.feed(MAX_CHARS_PER_TOKEN, ids=1) for _ in range(LIMIT + 1))
    assert not OverrunGuard(None).feed(10**9, ids=10**9)
