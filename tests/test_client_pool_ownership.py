"""A run's `with_routing_key` copy shares its parent's connection pool but does not own it: closing the
copy (the natural `async with client.with_routing_key(run_id) as model:`) leaves every other run's pool
open; once the owner closes it, a request fails with a typed `ModelClientClosed`, not httpx's bare
RuntimeError. Real HTTP to the scripted model server."""

from __future__ import annotations

import pytest

from qwq_agent.agent.clients import ModelConnectionError, OpenAIChatClient, RetryPolicy, SGLangClient
from qwq_agent.agent.clients.errors import ModelClientClosed
from qwq_agent.agent.messages import Message
from qwq_agent.protocols import Completion, SamplingParams
from qwq_agent.testing.scripted_server import ScriptedModelServer

ANSWER = "x\n</think>\n\nok"
PARAMS = SamplingParams(max_new_tokens=8)
# a retry would only meet the same closed pool again: the first failure is the answer
RETRYING = RetryPolicy(attempts=3, base_delay=0.0, jitter=0.0)


async def test_closing_one_runs_sglang_copy_leaves_the_shared_pool_open():
    async with ScriptedModelServer(lambda _r: ANSWER, when_exhausted="repeat") as server:
        client = SGLangClient(server.url, exact_tokens=False, retry=RETRYING)
        other_run = client.with_routing_key("run-B")
        async with client.with_routing_key("run-A") as run_a:
            assert (await run_a.generate("hello", PARAMS)).text.endswith("ok")
        assert (await other_run.generate("hello again", PARAMS)).text.endswith("ok")
        assert await client.health()
        await client.aclose()
        requests = len(server.requests)
        with pytest.raises(ModelClientClosed) as closed:
            await other_run.generate("after the owner closed", PARAMS)
        assert isinstance(closed.value, ModelConnectionError)
        with pytest.raises(ModelClientClosed):
            await client.server_info()
        assert len(server.requests) == requests  # nothing sent, nothing retried


async def test_closing_one_runs_openai_copy_leaves_the_shared_pool_open():
    async def complete(model: OpenAIChatClient) -> Completion:
        final = None
        async for event in model.stream([Message(role="user", content="hi")], [], PARAMS):
            final = event
        assert isinstance(final, Completion)
        return final

    async with ScriptedModelServer(lambda _r: ANSWER, when_exhausted="repeat") as server:
        client = OpenAIChatClient(server.url, retry=RETRYING)
        other_run = client.with_routing_key("run-B")
        async with client.with_routing_key("run-A") as run_a:
            await complete(run_a)
        assert (await complete(other_run)).text.endswith("ok")
        await client.aclose()
        with pytest.raises(ModelClientClosed):
            await complete(other_run)
        with pytest.raises(ModelClientClosed):
            await client.list_models()
