"""The scripted model server itself: wire formats, turn selection, the simulated cache, faults, modes."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from qwq_agent.testing.scripted_server import ScriptedModelServer, Turn, split_raw_output

CALL = 'Need a tool.\n</think>\n\nLet me look.\n<tool_call>\n{"name": "ls", "arguments": {"path": "/"}}\n</tool_call>'


def test_split_raw_output_like_sglang_parsers():
    reasoning, content, calls = split_raw_output(CALL)
    assert (
        reasoning == "Need a tool."
        and content == "Let me look."
        and calls == [{"name": "ls", "arguments": {"path": "/"}}]
    )
    assert split_raw_output("still thinking") == ("still thinking", "", [])
    assert split_raw_output("r\n</think>\n\n<tool_call>\n{not json\n</tool_call>")[2] == []


async def test_callable_turns_see_the_request_and_requests_are_recorded():
    seen = []

    def model(request):
        seen.append(request.prompt)
        return f"echo {len(seen)}"

    async with ScriptedModelServer(model) as server, httpx.AsyncClient(base_url=server.url) as http:
        r1 = (await http.post("/generate", json={"text": "hello", "sampling_params": {}})).json()
        r2 = (await http.post("/generate", json={"text": "again", "rid": "mine"})).json()
    assert seen == ["hello", "again"]
    assert r1["text"] == "echo 1" and r2["text"] == "echo 2" and r2["meta_info"]["id"] == "mine"
    assert [r.rid for r in server.requests][1] == "mine"


async def test_exhausted_script_answers_500_and_records_why():
    async with ScriptedModelServer(["only"]) as server, httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.post("/generate", json={"text": "a"})).status_code == 200
        assert (await http.post("/generate", json={"text": "b"})).status_code == 500
    assert "only 1 turns" in server.errors[0]


async def test_repeat_mode_cycles_and_bad_requests_are_400():
    async with ScriptedModelServer(["x", "y"], when_exhausted="repeat") as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            texts = [(await http.post("/generate", json={"text": "p"})).json()["text"] for _ in range(3)]
            bad = await http.post("/generate", json={"text": "p", "input_ids": [1]})
            missing = await http.get("/nope")
    assert texts == ["x", "y", "x"] and bad.status_code == 400 and missing.status_code == 404


async def test_cache_is_longest_common_prefix_with_earlier_sequences():
    async with ScriptedModelServer(["out one", "out two", "out three"]) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            a = (await http.post("/generate", json={"input_ids": [1, 2, 3, 4]})).json()["meta_info"]
            b = (await http.post("/generate", json={"input_ids": [1, 2, 3, 9, 9]})).json()["meta_info"]
            c = (await http.post("/generate", json={"input_ids": [1, 2, 3, 4]})).json()["meta_info"]
    assert (a["cached_tokens"], b["cached_tokens"], c["cached_tokens"]) == (0, 3, 3)  # at most len - 1
    assert server.cached_tokens_total == 6 and server.prompt_tokens_total == 13


async def test_openai_non_streaming_and_streaming_shapes():
    async with ScriptedModelServer([CALL, CALL]) as server, httpx.AsyncClient(base_url=server.url) as http:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        full = (await http.post("/v1/chat/completions", json=body)).json()
        async with http.stream(
            "POST",
            "/v1/chat/completions",
            json={**body, "stream": True, "stream_options": {"include_usage": True}},
        ) as response:
            events = [
                json.loads(line[6:])
                for line in [x async for x in response.aiter_lines()]
                if line.startswith("data: {")
            ]
    message = full["choices"][0]["message"]
    assert message["reasoning_content"] == "Need a tool." and message["content"] == "Let me look."
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"path": "/"}
    assert full["choices"][0]["finish_reason"] == "tool_calls"
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Need a tool."
    assert "".join(d.get("content", "") for d in deltas) == "Let me look."
    args = "".join(c["function"].get("arguments", "") for d in deltas for c in d.get("tool_calls", []))
    assert json.loads(args) == {"path": "/"}
    assert events[-1]["choices"] == [] and "cached_tokens" in events[-1]["usage"]["prompt_tokens_details"]


async def test_slow_first_token_is_slow_but_complete():
    async with ScriptedModelServer([Turn("a b", first_token_delay=0.2)]) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            r = await http.post("/generate", json={"text": "p"})
    assert r.json()["text"] == "a b"


async def test_wait_for_requests_and_abort():
    async with ScriptedModelServer([Turn("a b c", hold_after=1)]) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:

            async def stream():
                async with http.stream(
                    "POST", "/generate", json={"text": "p", "stream": True, "rid": "r1"}
                ) as resp:
                    return [line async for line in resp.aiter_lines() if line.startswith("data:")]

            task = asyncio.create_task(stream())
            request = await server.wait_for_requests(1)
            assert request.rid == "r1"
            await http.post("/abort_request", json={"rid": "r1"})
            await server.wait_for_abort("r1")
            lines = await task
    last = json.loads(lines[-2][6:])
    assert last["meta_info"]["finish_reason"]["type"] == "abort" and lines[-1] == "data: [DONE]"


def test_runs_in_a_thread_for_sync_code():
    with ScriptedModelServer(["sync ok"], max_total_num_tokens=99) as server:
        assert httpx.get(server.url + "/health").status_code == 200
        assert httpx.get(server.url + "/server_info").json()["max_total_num_tokens"] == 99
        assert httpx.post(server.url + "/generate", json={"text": "p"}).json()["text"] == "sync ok"
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/health")
