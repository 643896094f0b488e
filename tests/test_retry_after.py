"""A server that says when to come back (429/503 with Retry-After) is waited for, within the deadline.

Before: Retry-After was never read; the client's short backoff and the turn's immediate retries sent a
dozen requests in seconds and ended an unattended run `model_error` with its wall budget unused.
Real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.utils import formatdate

import pytest

from qwq_agent.agent.budgets import Budget
from qwq_agent.agent.clients import OpenAIChatClient, RetryPolicy, SGLangClient
from qwq_agent.agent.clients.errors import ModelDeadlineExceeded
from qwq_agent.agent.clients.retry import MAX_RETRY_AFTER_S, parse_retry_after
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.messages import Message
from qwq_agent.deadline import Deadline
from qwq_agent.protocols import Completion, SamplingParams

NO_BACKOFF = RetryPolicy(attempts=3, base_delay=0.0, jitter=0.0)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("3", 3.0),
        (" 0 ", 0.0),
        ("1.5", 1.5),
        (formatdate(1_000_030, usegmt=True), 30.0),
        (formatdate(999_000, usegmt=True), 0.0),  # a date already past: go now
        ("-5", None),
        (str(MAX_RETRY_AFTER_S * 10), None),  # absurd
        ("nan", None),
        ("inf", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_is_read_as_seconds_or_a_date_and_nonsense_is_ignored(header, expected):
    assert parse_retry_after(header, now=1_000_000) == expected


@asynccontextmanager
async def limited_server(
    refusals: int, status: int, retry_after: str, answer: bytes
) -> AsyncIterator[tuple[str, list[float]]]:
    """Refuses the first `refusals` requests with `status` and `Retry-After`, then sends `answer`."""
    hits: list[float] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            n = next(
                (int(h.split(":")[1]) for h in head.split("\r\n") if h.lower().startswith("content-length:")),
                0,
            )
            await reader.readexactly(n)
            if head.startswith("POST /abort_request"):  # the client aborting the refused request
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
                return
            if head.startswith("GET "):  # the agent asking /server_info for the context length: unknown
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            hits.append(time.monotonic())
            if len(hits) <= refusals:
                body = b'{"error": {"message": "busy"}}'
                writer.write(
                    b"HTTP/1.1 %d Busy\r\nRetry-After: %s\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                    % (status, retry_after.encode(), len(body), body)
                )
            else:
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
                )
                writer.write(answer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", hits
    finally:
        server.close()
        await server.wait_closed()


def _native_answer(text: str) -> bytes:
    meta = {"id": "x", "finish_reason": {"type": "stop"}, "prompt_tokens": 1, "completion_tokens": 1}
    return (
        b"data: "
        + json.dumps({"text": text, "output_ids": [1], "meta_info": meta}).encode()
        + b"\n\ndata: [DONE]\n\n"
    )


def _openai_answer(text: str) -> bytes:
    chunk = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": "stop"}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\ndata: [DONE]\n\n"


async def test_both_clients_wait_as_long_as_retry_after_asks():
    async with limited_server(1, 429, "1", _native_answer("fine")) as (url, hits):
        async with SGLangClient(url, retry=NO_BACKOFF) as client:
            assert (await client.generate("p")).text == "fine"
    assert len(hits) == 2 and hits[1] - hits[0] >= 0.9  # the policy's own backoff is 0

    async with limited_server(1, 503, "1", _openai_answer("fine")) as (url, hits):
        async with OpenAIChatClient(url + "/v1", model="m", retry=NO_BACKOFF) as client:
            events = [
                ev async for ev in client.stream([Message(role="user", content="q")], [], SamplingParams())
            ]
    assert isinstance(events[-1], Completion) and events[-1].text == "fine"
    assert len(hits) == 2 and hits[1] - hits[0] >= 0.9


async def test_a_retry_after_past_the_deadline_ends_the_request_at_once():
    async with limited_server(5, 429, "60", _native_answer("never")) as (url, hits):
        async with SGLangClient(url, retry=NO_BACKOFF) as client:
            started = time.monotonic()
            with Deadline.after(5).scope(), pytest.raises(ModelDeadlineExceeded, match="429"):
                await client.generate("p")
    assert len(hits) == 1 and time.monotonic() - started < 4


async def test_turn_retries_wait_for_the_server_and_give_up_when_the_wall_budget_cannot_fit_the_wait():
    no_client_retry = RetryPolicy(attempts=1)
    answer = _native_answer("ok\n</think>\n\nThe answer is 5.")
    # the client does not retry: the turn does, after the second the server asked for
    async with limited_server(2, 503, "1", answer) as (url, hits):
        async with SGLangClient(url, retry=no_client_retry) as client:
            agent = Agent(client, [], config=AgentConfig(check_language=False, model_retries=2))
            result = await asyncio.wait_for(agent.run("2+3?"), 60)
    assert result.status == "completed" and result.answer == "The answer is 5."
    assert len(hits) == 3 and all(b - a >= 0.9 for a, b in itertools.pairwise(hits))

    # a wait the wall budget cannot fit ends the run now, naming why
    async with limited_server(5, 429, "30", answer) as (url, hits):
        async with SGLangClient(url, retry=no_client_retry) as client:
            config = AgentConfig(check_language=False, model_retries=2, budget=Budget(max_wall_s=10))
            started = time.monotonic()
            result = await asyncio.wait_for(Agent(client, [], config=config).run("2+3?"), 60)
    assert result.status == "model_error" and "no time left" in (result.error or "")
    assert len(hits) == 1 and time.monotonic() - started < 5
