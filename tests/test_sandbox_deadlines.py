"""Nothing in the sandbox layer waits forever: the warm pool's acquire and every Docker engine call.

Faults are real: warm containers killed or paused through the engine, a short lifetime that makes
the supervisor exit, and a unix socket server that accepts connections and never answers (a hung dockerd).
Each test is guarded by a generous `wait_for`, so a regression fails instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from docker_proxy import removed
from freezing import freeze

from qwq_agent.deadline import Deadline
from qwq_agent.sandbox import (
    DockerSandbox,
    SandboxAcquireTimeout,
    SandboxConfig,
    SandboxPool,
    SandboxStartError,
)
from qwq_agent.sandbox.engine import DockerEngine
from qwq_agent.sandbox.errors import DockerUnreachable

pytestmark = [pytest.mark.asyncio(loop_scope="session")]

GUARD_S = 120.0  # far beyond any bound under test: only a hang reaches it


def warm_ids(pool: SandboxPool) -> list[str]:
    return [w.sandbox.id for w in list(pool._ready._queue)]  # type: ignore[attr-defined]


@pytest.mark.docker
async def test_acquire_replaces_warm_sandboxes_killed_while_idle(sandbox_image: str) -> None:
    async with SandboxPool(size=2, config=SandboxConfig(image=sandbox_image)) as pool:
        await pool.wait_ready()
        killed = warm_ids(pool)
        assert len(killed) == 2
        for cid in killed:
            await pool.engine.kill(cid)

        async def acquire_and_use() -> str:
            async with pool.acquire() as sb:
                assert (await sb.shell("echo ok")).stdout == "ok\n"
                return sb.id

        got = await asyncio.wait_for(acquire_and_use(), GUARD_S)
        assert got not in killed
        assert pool.replaced >= 1


@pytest.mark.docker
async def test_acquire_replaces_a_paused_warm_sandbox(sandbox_image: str) -> None:
    async with SandboxPool(
        size=1, config=SandboxConfig(image=sandbox_image), health_check_timeout_s=1.0
    ) as pool:
        await pool.wait_ready()
        (paused,) = warm_ids(pool)
        await freeze(pool.engine, paused)

        async def acquire_and_use() -> str:
            async with pool.acquire() as sb:
                assert (await sb.python("6 * 7")).value == "42"
                return sb.id

        got = await asyncio.wait_for(acquire_and_use(), GUARD_S)
        assert got != paused and pool.replaced >= 1
        await removed(pool.engine, paused)


@pytest.mark.docker
@pytest.mark.parametrize("left", [0.0, 0.001])
async def test_an_acquire_out_of_time_leaves_the_healthy_warm_sandboxes_alone(
    sandbox_image: str, left: float
) -> None:
    """The health check's ping got only what the acquire's deadline had left, maybe nothing: an acquire
    with (almost) no time left found each warm sandbox "paused or frozen" and destroyed it, one after the
    other. The deadline is the problem, not the sandbox: the acquire times out, and the sandbox goes back
    once the pool's own full-length check (in the background) finds it healthy."""
    async with SandboxPool(size=2, config=SandboxConfig(image=sandbox_image)) as pool:
        await asyncio.wait_for(pool.wait_ready(), GUARD_S)
        warm = warm_ids(pool)
        got: list[str] = []
        with contextlib.suppress(SandboxAcquireTimeout):
            async with pool.acquire(deadline=Deadline.after(left)) as sb:
                got.append(sb.id)  # its ping was answered within the millisecond: as good an outcome
        await asyncio.wait_for(pool.wait_ready(), GUARD_S)  # its check in full, in the background
        assert pool.replaced == 0 and set(warm) <= set(warm_ids(pool) + got)
        assert not got or left > 0
        async with pool.acquire() as sb:
            assert sb.id in warm and (await sb.shell("echo ok")).stdout == "ok\n"


@pytest.mark.docker
async def test_a_frozen_warm_sandbox_is_replaced_though_every_acquire_has_too_little_time(
    sandbox_image: str,
) -> None:
    """An acquire with less time than the health check's ping put a paused sandbox back as "the deadline
    proves nothing", and nothing ever pinged it in full: with every acquire that short, each took the
    same frozen sandbox, failed, and put it back; the pool stayed broken for good. Now it is checked in
    full in the background (tracked by the pool), out of the queue meanwhile, and replaced."""
    async with SandboxPool(size=1, config=SandboxConfig(image=sandbox_image)) as pool:  # a 2 s health check
        await asyncio.wait_for(pool.wait_ready(), GUARD_S)
        (paused,) = warm_ids(pool)
        await freeze(pool.engine, paused)
        with pytest.raises(SandboxAcquireTimeout):
            async with pool.acquire(timeout=0.5):
                pass
        await asyncio.wait_for(pool.wait_ready(), GUARD_S)  # the full check, then the replacement's start
        assert pool.replaced == 1 and warm_ids(pool) != [paused] and pool.ready == 1
        async with pool.acquire(timeout=1.0) as sb:
            assert sb.id != paused and (await sb.shell("echo ok")).stdout == "ok\n"
        await asyncio.wait_for(removed(pool.engine, paused), GUARD_S)


@pytest.mark.docker
async def test_closing_the_pool_does_not_wait_out_a_background_health_check(sandbox_image: str) -> None:
    """The full-length check of a sandbox an acquire ran out of time for is the pool's: `aclose()` stops
    it rather than waiting out its ping, and destroys the sandbox."""
    pool = SandboxPool(size=1, config=SandboxConfig(image=sandbox_image), health_check_timeout_s=GUARD_S)
    await pool.__aenter__()
    try:
        await asyncio.wait_for(pool.wait_ready(), GUARD_S)
        (paused,) = warm_ids(pool)
        await freeze(pool.engine, paused)
        with pytest.raises(SandboxAcquireTimeout):
            async with pool.acquire(timeout=0.5):
                pass
    finally:
        await asyncio.wait_for(pool.aclose(), GUARD_S / 4)  # well before the check's ping would end
    await asyncio.wait_for(removed(pool.engine, paused), GUARD_S / 4)
    assert pool.ready == 0 and not pool._tasks  # type: ignore[attr-defined]


@pytest.mark.docker
async def test_acquire_replaces_a_warm_sandbox_past_its_lifetime(sandbox_image: str) -> None:
    # (Warm sandboxes do not idle out: the pool's process pings them.)
    config = SandboxConfig(image=sandbox_image, lifetime_s=5.0)
    async with SandboxPool(size=1, config=config) as pool:
        await pool.wait_ready()
        (expired,) = warm_ids(pool)
        reason = await asyncio.wait_for(pool._ready._queue[0].sandbox.wait_closed(), GUARD_S)  # type: ignore[attr-defined]
        assert "lifetime limit reached" in reason

        async def acquire_and_use() -> str:
            async with pool.acquire() as sb:
                assert (await sb.shell("echo fresh")).stdout == "fresh\n"
                return sb.id

        assert await asyncio.wait_for(acquire_and_use(), GUARD_S) != expired
        assert pool.replaced >= 1


@pytest.mark.docker
async def test_size_one_pool_whose_start_raises_a_foreign_error_fails_acquire(
    sandbox_image: str, monkeypatch
) -> None:
    """A start that fails with something other than a sandbox error (here the image builder's own error
    for a bad QWQ_SANDBOX_BUILD) used to end the start task silently, leaving acquire waiting forever."""
    from qwq_agent.sandbox import container

    monkeypatch.delenv("QWQ_SANDBOX_IMAGE", raising=False)
    monkeypatch.setenv("QWQ_SANDBOX_BUILD", "no-such-mode")
    monkeypatch.setattr(container, "_image_cache", {})  # as in a fresh process: no image resolved yet
    async with SandboxPool(size=1, config=SandboxConfig()) as pool:

        async def acquire() -> None:
            async with pool.acquire():
                pass

        with pytest.raises(SandboxStartError, match="QWQ_SANDBOX_BUILD"):
            await asyncio.wait_for(acquire(), GUARD_S)


# ------------------------------------------------------------------------------- a hung Docker daemon


class HungDaemon:
    """A unix socket server that accepts every connection, reads what it is sent, and never answers."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="qwq-hung-", dir="/tmp")  # short: unix socket paths are capped
        self.path = os.path.join(self.dir, "docker.sock")
        self.connections = 0
        self._server: asyncio.AbstractServer | None = None
        self._held: list[asyncio.StreamWriter] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._held.append(writer)
        while await reader.read(65536):
            pass

    async def __aenter__(self) -> HungDaemon:
        self._server = await asyncio.start_unix_server(self._handle, self.path)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._held:
            w.close()
        await self._server.wait_closed()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest_asyncio.fixture(loop_scope="session")
async def hung() -> AsyncIterator[HungDaemon]:
    async with HungDaemon() as daemon:
        yield daemon


async def test_engine_call_to_a_hung_daemon_raises_a_typed_error(hung: HungDaemon) -> None:
    engine = DockerEngine(hung.path, timeout=0.5)
    with pytest.raises(
        DockerUnreachable, match=f"Docker engine at unix://{hung.path} did not answer GET /containers"
    ):
        await asyncio.wait_for(engine.inspect("abc"), GUARD_S)
    with pytest.raises(DockerUnreachable, match="attach"):
        await asyncio.wait_for(engine.attach("abc", timeout=0.3), GUARD_S)
    assert hung.connections == 2


async def test_sandbox_start_against_a_hung_daemon_fails_within_its_start_timeout(hung: HungDaemon) -> None:
    # The engine's own timeout is long: the start's remaining time is what bounds each call.
    engine = DockerEngine(hung.path, timeout=3600)
    config = SandboxConfig(image="qwq-agent-sandbox:any", start_timeout_s=1.0)
    with pytest.raises(DockerUnreachable) as info:
        await asyncio.wait_for(DockerSandbox.create(config, engine=engine), GUARD_S)
    assert isinstance(info.value, SandboxStartError)
    assert "Docker engine" in str(info.value) and hung.path in str(info.value)
    assert hung.connections >= 1


async def test_size_one_pool_via_docker_host_of_a_hung_daemon_raises(hung: HungDaemon, monkeypatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{hung.path}")
    config = SandboxConfig(image="qwq-agent-sandbox:any", start_timeout_s=1.0)
    async with SandboxPool(size=1, config=config) as pool:

        async def acquire() -> None:
            async with pool.acquire():
                pass

        with pytest.raises(DockerUnreachable, match="Docker engine"):
            await asyncio.wait_for(acquire(), GUARD_S)
        assert pool.start_failures >= 1
        # The next acquire tries again (no stale failure is handed out) and fails the same bounded way.
        with pytest.raises(SandboxStartError, match="Docker engine"):
            await asyncio.wait_for(acquire(), GUARD_S)


# ------------------------------------------------------------------------ one deadline flows down


@pytest.mark.docker
async def test_a_tool_call_deadline_reaches_the_sandbox_which_reports_before_it(sandbox_image: str) -> None:
    """The loop's per-call limit (4 s) is shorter than the timeout the model asked for (60 s): the sandbox
    interrupts the cell in time and reports its partial output, instead of the loop cancelling a call
    whose code goes on running."""
    import json

    from qwq_agent.agent.clients import NO_RETRY, SGLangClient
    from qwq_agent.agent.events import ToolResultEvent
    from qwq_agent.agent.loop import Agent, AgentConfig
    from qwq_agent.testing.scripted_server import ScriptedModelServer
    from qwq_agent.tools.catalog import build_tools

    def call(name: str, **arguments: object) -> str:
        return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"

    slow = "x = 41\nprint('started', flush=True)\nimport time\nwhile True:\n    time.sleep(0.05)"
    turns = [
        "a\n</think>\n\n" + call("python", code=slow, timeout=60),
        "b\n</think>\n\n" + call("python", code="x + 1", timeout=60),
        "c\n</think>\n\ndone",
    ]
    config = SandboxConfig(image=sandbox_image, interrupt_grace_s=1.0)
    async with DockerSandbox.create(config) as sb, ScriptedModelServer(turns) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            agent = Agent(
                client,
                build_tools(["python"]),
                sandbox=sb,
                config=AgentConfig(check_language=False, tool_timeout_s=4.0),
            )
            events = await asyncio.wait_for(_collect(agent), GUARD_S)
    results = [e for e in events if isinstance(e, ToolResultEvent)]
    assert agent.result is not None and agent.result.status == "completed"
    first, second = results
    assert "was cancelled" not in first.text  # not the registry's backstop
    assert "started" in first.text and "Execution timed out after" in first.text
    assert first.is_error
    assert "Out: 42" in second.text  # interrupted, not killed: the interpreter and its state carry on


async def _collect(agent) -> list:  # type: ignore[no-untyped-def,type-arg]
    return [ev async for ev in agent.stream("task")]


async def test_default_image_lookup_against_a_hung_daemon_fails_within_the_start_time(
    hung: HungDaemon, monkeypatch
) -> None:
    from qwq_agent.sandbox import container

    monkeypatch.delenv("QWQ_SANDBOX_IMAGE", raising=False)
    monkeypatch.setattr(container, "_image_cache", {})  # as in a fresh process: no image resolved yet
    engine = DockerEngine(hung.path, timeout=3600)
    # The janitor runs against the sandbox's own engine first (one per Docker host), so it is the
    # first call to meet the hung daemon; either way the start fails within its time naming the engine.
    with pytest.raises(DockerUnreachable, match=f"engine at unix://{hung.path}"):
        await asyncio.wait_for(
            DockerSandbox.create(SandboxConfig(start_timeout_s=1.0), engine=engine), GUARD_S
        )


async def test_waiting_for_a_pool_sandbox_counts_against_the_runs_wall_time(hung: HungDaemon) -> None:
    from qwq_agent.agent.budgets import Budget
    from qwq_agent.agent.clients import SGLangClient
    from qwq_agent.agent.loop import Agent, AgentConfig
    from qwq_agent.testing.scripted_server import ScriptedModelServer

    # A start may take 10 s; the run's 1.5 s deadline ends the wait for one first. (Closing the pool then
    # waits for that start to fail: starts are bounded, and cancelling one could leak its container.)
    config = SandboxConfig(image="qwq-agent-sandbox:any", start_timeout_s=10.0)
    async with SandboxPool(size=1, config=config, engine=DockerEngine(hung.path)) as pool:
        async with (
            ScriptedModelServer(["x\n</think>\n\nnever asked"]) as server,
            SGLangClient(server.url) as client,
        ):
            cfg = AgentConfig(check_language=False, budget=Budget(max_wall_s=1.5))
            agent = Agent(client, [], sandbox_pool=pool, config=cfg)
            events = await asyncio.wait_for(_collect(agent), 30)
    assert agent.result is not None and agent.result.status == "budget_exceeded"
    assert "before the run could start" in (agent.result.error or "")
    assert events[-1].type == "final" and not server.requests  # the model was never asked


async def test_a_branch_waiting_for_its_pool_sandbox_times_out_with_its_branch_timeout(
    hung: HungDaemon,
) -> None:
    import time

    from qwq_agent.agent.clients import NO_RETRY, SGLangClient
    from qwq_agent.agent.loop import Agent, AgentConfig
    from qwq_agent.testing.scripted_server import ScriptedModelServer

    # The pool's start hangs (up to its 10 s start time); the branch's 1 s covers the wait for it.
    config = SandboxConfig(image="qwq-agent-sandbox:any", start_timeout_s=10.0)
    async with SandboxPool(size=1, config=config, engine=DockerEngine(hung.path)) as pool:
        async with (
            ScriptedModelServer(["x\n</think>\n\nnever asked"]) as server,
            SGLangClient(server.url, retry=NO_RETRY) as client,
        ):
            agent = Agent(client, [], sandbox_pool=pool, config=AgentConfig(check_language=False))
            started = time.monotonic()
            result = await asyncio.wait_for(agent.explore("go", n=1, branch_timeout_s=1.0), GUARD_S)
            took = time.monotonic() - started
    assert took < 5
    [b] = result.branches
    assert b.status == "timeout" and "1 s limit" in (b.error or "") and "sandbox" in (b.error or "")
    assert result.winner is None
    assert all(r.sampling_params.get("max_new_tokens") == 1 for r in server.requests)  # only the warm-up
