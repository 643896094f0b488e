"""Session affinity, dead workers and admission over the fleet, through SGLang's real router.

Scripted workers in the test's process count which worker served which request (tests/router_helpers.py);
also the scale-out benchmark end to end on scripted workers, and `run` sending its run id as routing key.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from qwq_agent.agent.admission import KVAdmission, PerWorkerAdmission
from qwq_agent.agent.clients import ModelServerError, OpenAIChatClient, SGLangClient
from qwq_agent.agent.clients.routing import ROUTING_KEY_HEADER
from qwq_agent.agent.messages import Message
from qwq_agent.protocols import SamplingParams
from qwq_agent.serve.fleet import probe_router
from qwq_agent.testing.scripted_server import ScriptedModelServer

pytest.importorskip("sglang_router", reason="sglang-router is not installed (pip install -e '.[router]')")

from router_helpers import Router, free_port, scripted


async def run_sessions(client: SGLangClient, sessions: int, turns: int, *, keyed: bool) -> None:
    async def session(i: int) -> None:
        c = client.with_routing_key(f"run-{i}") if keyed else client
        for t in range(turns):
            await c.generate(f"<session {i}> turn {t}", SamplingParams(max_new_tokens=4))

    await asyncio.gather(*(session(i) for i in range(sessions)))


async def test_with_affinity_each_sessions_requests_land_on_one_worker(tmp_path):
    servers = [scripted(tmp_path) for _ in range(3)]
    for s in servers:
        s.__enter__()
    try:
        with Router(servers, "affinity", tmp_path) as router:
            async with SGLangClient(router.url) as client:
                await run_sessions(client, sessions=9, turns=4, keyed=True)
            placements = [router.workers_of(f"<session {i}>") for i in range(9)]
            assert all(len(p) == 1 for p in placements), placements
            # new keys are spread over the workers, not all pinned to one
            assert len(set().union(*placements)) >= 2
            assert all(r.headers.get(ROUTING_KEY_HEADER, "").startswith("run-") for r in servers[0].requests)
    finally:
        for s in servers:
            s.__exit__()


async def test_round_robin_without_a_key_spreads_a_session(tmp_path):
    """The contrast that makes the affinity test meaningful: without affinity a session moves."""
    servers = [scripted(tmp_path) for _ in range(2)]
    for s in servers:
        s.__enter__()
    try:
        with Router(servers, "round_robin", tmp_path) as router:
            async with SGLangClient(router.url) as client:
                await run_sessions(client, sessions=1, turns=4, keyed=False)
            assert router.workers_of("<session 0>") == {0, 1}
    finally:
        for s in servers:
            s.__exit__()


async def test_openai_client_sends_the_routing_key_through_the_router(tmp_path):
    servers = [scripted(tmp_path) for _ in range(2)]
    for s in servers:
        s.__enter__()
    try:
        with Router(servers, "affinity", tmp_path) as router:
            async with OpenAIChatClient(router.url, model=str(tmp_path)) as client:
                keyed = client.with_routing_key("chat-run")
                for t in range(4):
                    messages = [Message(role="user", content=f"<chat> turn {t}")]
                    async for _ in keyed.stream(messages, [], SamplingParams(max_new_tokens=4)):
                        pass
            assert len(router.workers_of("<chat>")) == 1
            seen = [r.headers.get(ROUTING_KEY_HEADER) for s in servers for r in s.requests]
            assert seen == ["chat-run"] * 4
    finally:
        for s in servers:
            s.__exit__()


async def test_a_dead_worker_is_routed_around_and_all_dead_is_a_clear_error(tmp_path):
    servers = [scripted(tmp_path) for _ in range(3)]
    for s in servers:
        s.__enter__()
    try:
        await _dead_worker_checks(servers, tmp_path)
    finally:
        for s in servers:
            s.__exit__()  # a second exit is a no-op


async def _dead_worker_checks(servers: list[ScriptedModelServer], tmp_path: Path) -> None:
    with Router(servers, "affinity", tmp_path) as router:
        async with SGLangClient(router.url) as client:
            await run_sessions(client, sessions=6, turns=1, keyed=True)
            victim = next(i for i, s in enumerate(servers) if s.requests)
            pinned = [i for i in range(6) if router.workers_of(f"<session {i}>") == {victim}]
            servers[victim].__exit__()
            # every session, those pinned to the dead worker included, still gets its turns
            await run_sessions(client, sessions=6, turns=2, keyed=True)
            for i in pinned:
                assert len(router.workers_of(f"<session {i}>") - {victim}) == 1
            for i, s in enumerate(servers):
                if i != victim:
                    s.__exit__()
            with pytest.raises(ModelServerError, match=r"503.*[Nn]o available workers") as err:
                await client.with_routing_key("late").generate("x", SamplingParams(max_new_tokens=2))
            assert err.value.status_code == 503


async def test_admission_sizes_itself_from_the_workers_capacities(tmp_path):
    servers = [scripted(tmp_path, capacity) for capacity in (1000, 2000, 3000)]
    for s in servers:
        s.__enter__()
    try:
        with Router(servers, "cache_aware", tmp_path) as router:
            info = probe_router(router.url)
            async with SGLangClient(router.url) as client:  # what the agent loop and benchmarks ask
                seen = await client.server_info()
    finally:
        for s in servers:
            s.__exit__()
    assert info is not None
    assert sorted(info.capacities) == [1000, 2000, 3000] and info.total_kv_tokens == 6000
    assert seen.max_total_num_tokens == 6000 and seen.context_length == 16384
    assert seen.worker_capacities == {s.url: c for s, c in zip(servers, (1000, 2000, 3000), strict=True)}
    assert seen.model_path == str(tmp_path)
    admission = KVAdmission.for_workers(info.capacities, headroom=0.5)
    assert admission.capacity == 3000
    with pytest.raises(ValueError, match="no worker reported"):
        KVAdmission.for_workers([0])


async def test_per_worker_admission_keeps_a_key_on_its_worker_and_fills_each_worker():
    admission = PerWorkerAdmission({"http://a": 1000, "http://b": 500}, headroom=1.0)
    assert admission.capacity == 1500
    async with admission.reserve(600, key="run-1"):
        assert admission.worker_of("run-1") == "http://a"  # the freest worker
        async with admission.reserve(300, key="run-2"):
            assert admission.worker_of("run-2") == "http://b"  # b (500 free) is now freer than a (400)
            # run-2 stays on b while it holds a reservation there: this one waits, though a has room
            blocked = asyncio.create_task(_reserve(admission, 300, "run-2"))
            await asyncio.sleep(0)
            assert not blocked.done() and admission.workers["http://b"].waiting == 1
            assert admission.workers["http://a"].in_use == 600
        await asyncio.wait_for(blocked, 5)  # b's release lets it in
    assert all(a.in_use == 0 for a in admission.workers.values())
    assert admission.worker_of("run-3") == "http://a"  # an idle key is free to move


async def _reserve(admission: PerWorkerAdmission, tokens: int, key: str) -> None:
    async with admission.reserve(tokens, key=key):
        pass


def test_scale_out_benchmark_runs_every_configuration_on_scripted_workers(tmp_path):
    """benchmarks/scale_out.py end to end, small: scripted workers behind the real router."""
    out = tmp_path / "scale_out.json"
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "scale_out.py"
    # one session: round-robin then alternates its turns between the workers, deterministically
    sizes = "--sessions 1 --turns 3 --gen-tokens 10 --system-words 100 --task-words 50 --obs-words 30"
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            "--scripted",
            "2",
            "--router-port",
            str(free_port()),
            *sizes.split(),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())
    assert [(r["label"], r["gpus"], r["policy"]) for r in rows] == [
        ("a-one-gpu", 1, "none"),
        ("b-two-round-robin", 2, "round_robin"),
        ("c-two-cache-aware", 2, "cache_aware"),
        ("d-two-affinity", 2, "affinity"),
    ]
    keys = {
        "sessions",
        "turns",
        "generated_tok_s",
        "cached_share_turn2plus",
        "ttft_p50_s",
        "ttft_p90_s",
        "wall_s",
    }
    assert all(keys <= set(r) and r["statuses"] == {"completed": 1} for r in rows)
    by = {r["policy"]: r for r in rows}
    # a session that stays on its worker finds its prefix there; round-robin moves it every turn
    assert by["affinity"]["cached_share_turn2plus"] > by["round_robin"]["cached_share_turn2plus"]
    assert by["affinity"]["cached_share_turn2plus"] == pytest.approx(by["none"]["cached_share_turn2plus"])
    assert out.with_suffix(".png").stat().st_size > 0 and "best two-GPU" in done.stdout


@pytest.mark.parametrize("api", ["native", "openai"])
def test_cli_run_through_the_router_sends_its_run_id_as_routing_key(tmp_path, api):
    servers = [scripted(tmp_path) for _ in range(2)]
    for s in servers:
        s.__enter__()
    try:
        with Router(servers, "affinity", tmp_path) as router:
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "qwq_agent.cli.main",
                    "run",
                    "--model-url",
                    router.url,
                    "--api",
                    api,
                    "--model",
                    str(tmp_path),
                    "What is 2+2?",
                ],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=tmp_path,
            )
    finally:
        for s in servers:
            s.__exit__()
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = next((tmp_path / "traces").glob("*.jsonl")).stem
    model_calls = [r for s in servers for r in s.requests]
    assert model_calls and all(r.headers.get(ROUTING_KEY_HEADER) == run_id for r in model_calls)
