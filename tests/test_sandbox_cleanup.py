"""What failed, late or cancelled starts leave behind, the warm pool after outages and at close, and the
janitor's limits (owners in other PID namespaces, orphans the engine cannot remove).

Faults are real: containers paused through the engine, and `DockerProxy`, a unix socket in front of the
real engine that refuses connections, holds answers back or fails a removal. Every test is guarded by a
generous `wait_for`, so a regression fails instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_asyncio
from docker_proxy import MARK_LABEL, DockerProxy, removed
from freezing import freeze, freeze_sync

from qwq_agent.sandbox import (
    DockerSandbox,
    DockerUnreachable,
    SandboxAcquireTimeout,
    SandboxConfig,
    SandboxDead,
    SandboxPool,
    SandboxPoolClosed,
    janitor,
)
from qwq_agent.sandbox.connector import UnixConnector
from qwq_agent.sandbox.engine import DockerEngine
from qwq_agent.sandbox.errors import DockerAPIError, SandboxStartError

pytestmark = [pytest.mark.asyncio(loop_scope="session")]

GUARD_S = 120.0  # far beyond any bound under test: only a hang reaches it


@pytest_asyncio.fixture(loop_scope="session")
async def proxy() -> AsyncIterator[DockerProxy]:
    async with DockerProxy() as p:
        yield p


async def exists(engine: DockerEngine, name_or_id: str) -> bool:
    try:
        await engine.inspect(name_or_id)
    except DockerAPIError as exc:
        if exc.status == 404:
            return False
        raise
    return True


# ------------------------------------------------------------------------------------ the warm pool


@pytest.mark.docker
async def test_an_acquire_cancelled_during_its_health_check_destroys_that_sandbox_and_refills(
    sandbox_image: str,
) -> None:
    """The sandbox taken from the queue was neither handed out, put back nor closed: its container ran on
    unowned and the pool stayed one sandbox short for good."""
    engine = DockerEngine()
    async with SandboxPool(
        size=1, config=SandboxConfig(image=sandbox_image), health_check_timeout_s=GUARD_S
    ) as pool:
        await pool.wait_ready()
        (warm,) = [w.sandbox for w in list(pool._ready._queue)]  # type: ignore[attr-defined]
        paused = warm.id
        await freeze(engine, paused)
        try:
            # A run's deadline ends the acquire while the pause holds its health check's ping up.
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1.0), pool.acquire():
                    pass
            await asyncio.wait_for(removed(engine, paused), GUARD_S)
            await asyncio.wait_for(pool.wait_ready(), GUARD_S)
            assert pool.ready == 1
        finally:
            await engine.remove(paused)  # forced: paused or not


@pytest.mark.docker
async def test_the_pool_gets_back_to_its_size_after_a_burst_of_failed_starts(
    sandbox_image: str, proxy: DockerProxy
) -> None:
    """A failed start's slot used to be lost: after one outage the pool never held `size` sandboxes again."""
    proxy.refusing = True  # dockerd restarting: every start fails
    config = SandboxConfig(image=sandbox_image)
    async with SandboxPool(size=2, config=config, engine=DockerEngine(proxy.path)) as pool:
        await asyncio.wait_for(pool.wait_ready(), GUARD_S)
        assert pool.ready == 0 and pool.start_failures >= 2
        proxy.refusing = False  # back: with no acquire at all, the pool fills up again

        async def full() -> None:
            while pool.ready < pool.size:
                await pool.wait_ready()
                # Between the pool's retries there is nothing to wait on but the clock.
                await asyncio.sleep(0.05)

        await asyncio.wait_for(full(), GUARD_S)
        async with pool.acquire() as sb:
            assert (await sb.shell("echo ok")).stdout == "ok\n"


@pytest.mark.docker
async def test_closing_the_pool_fails_its_waiting_acquires_at_once(
    sandbox_image: str, proxy: DockerProxy
) -> None:
    """Waiting acquires were left to their own timeout (70 s by default), or to a later start failure."""
    proxy.delays["/containers/create"] = 600.0  # a busy daemon: the start fails after its 3 s
    config = SandboxConfig(image=sandbox_image, start_timeout_s=3.0)
    pool = SandboxPool(size=1, config=config, engine=DockerEngine(proxy.path), acquire_timeout_s=GUARD_S)
    await pool.__aenter__()

    async def acquire() -> None:
        async with pool.acquire():
            pass

    task = asyncio.create_task(acquire())
    await asyncio.sleep(0)  # one step: it waits for the start in flight
    assert pool._waiters == 1
    await asyncio.wait_for(pool.aclose(), GUARD_S)  # it waits for the start in flight to fail
    assert task.done()
    with pytest.raises(SandboxPoolClosed, match="closed while the acquire waited"):
        await task
    with pytest.raises(SandboxPoolClosed):
        await acquire()


@pytest.mark.docker
async def test_closing_the_pool_fails_an_acquire_waiting_for_a_retry_at_once(
    sandbox_image: str, proxy: DockerProxy
) -> None:
    """Two acquires on a size-1 pool while dockerd restarts: one heard of the failed start, the other waited
    for the retry. `aclose()` put its notice in the queue and then emptied the queue itself: the acquire
    waited out its whole timeout."""
    proxy.refusing = True
    config = SandboxConfig(image=sandbox_image, start_timeout_s=5.0)
    pool = SandboxPool(size=1, config=config, engine=DockerEngine(proxy.path), acquire_timeout_s=3 * GUARD_S)
    await pool.__aenter__()

    async def acquire() -> BaseException | None:
        try:
            async with pool.acquire():
                return None
        except Exception as exc:
            return exc

    tasks = [asyncio.create_task(acquire()) for _ in range(2)]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    await asyncio.wait_for(pool.aclose(), GUARD_S)
    errors = await asyncio.wait_for(asyncio.gather(*tasks), GUARD_S)
    # Each heard of a failed start or of the close; none waits for a sandbox that will never come.
    assert all(isinstance(e, DockerUnreachable | SandboxPoolClosed) for e in errors), errors


@pytest.mark.docker
async def test_a_size_0_pool_starts_a_sandbox_for_each_concurrent_acquire(sandbox_image: str) -> None:
    """The second acquire saw the first one's start in flight and started none: the first took that
    sandbox, and with size 0 nothing replaced it, so the second waited out its whole timeout."""
    both_in = asyncio.Barrier(2)
    async with SandboxPool(
        size=0, config=SandboxConfig(image=sandbox_image), acquire_timeout_s=3 * GUARD_S
    ) as pool:

        async def use() -> str:
            async with pool.acquire() as sb:
                await both_in.wait()  # each holds its sandbox until the other has one too
                return (await sb.shell("echo ok")).stdout

        assert await asyncio.wait_for(asyncio.gather(use(), use()), GUARD_S) == ["ok\n", "ok\n"]


async def settled(pool: SandboxPool) -> None:
    """Until the pool's background starts and removals are over (`wait_ready` waits for none at size 0)."""
    while pool._tasks:
        await asyncio.gather(*list(pool._tasks), return_exceptions=True)


@pytest.mark.docker
async def test_a_start_failure_goes_to_its_own_acquire_not_to_the_next_one(
    sandbox_image: str, proxy: DockerProxy
) -> None:
    """An acquire cancelled while its start was in flight left that start behind, and the next acquire
    counted on it instead of starting one: when it failed, that acquire failed at once with the error of a
    start it never asked for, although the daemon was well again."""
    proxy.delays["/containers/create"] = 600.0  # created, but the answer is held: the start fails after 3 s
    config = SandboxConfig(image=sandbox_image, start_timeout_s=3.0)
    async with SandboxPool(
        size=0, config=config, engine=DockerEngine(proxy.path), acquire_timeout_s=GUARD_S
    ) as pool:

        async def use() -> str:
            async with pool.acquire() as sb:
                return (await sb.shell("echo ok")).stdout

        first = asyncio.create_task(use())
        await asyncio.wait_for(proxy.held.wait(), GUARD_S)  # its start is in flight, and will fail
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        proxy.delays.clear()  # the daemon answers again: a start of its own succeeds
        assert await asyncio.wait_for(use(), GUARD_S) == "ok\n"
        await asyncio.wait_for(settled(pool), GUARD_S)
        assert pool.start_failures == 1 and pool.ready == 0


def created(proxy: DockerProxy) -> list[str]:
    """The names of the containers whose create went through `proxy` so far, oldest first."""
    lines = [line for line in proxy.seen if "/containers/create" in line]
    return [parse_qs(urlsplit(line.split(" ")[1]).query)["name"][0] for line in lines]


@pytest.mark.docker
@pytest.mark.parametrize("size", [1, 0])
async def test_a_sandbox_started_for_an_acquire_that_left_goes_to_the_pool_if_it_has_room(
    sandbox_image: str, proxy: DockerProxy, size: int
) -> None:
    """Nobody waits for it any more, but it is a good sandbox: while the pool holds fewer than its size
    the next acquire gets it, and the pool destroys it at close if none does. A size-0 pool keeps none:
    it is destroyed at once (it stayed warm, unused, until `aclose()`)."""
    proxy.delays["/containers/create"] = 5.0  # answered late, well within the start time
    config = SandboxConfig(image=sandbox_image)
    engine = DockerEngine()
    async with SandboxPool(size=size, config=config, engine=DockerEngine(proxy.path)) as pool:
        for taken in (True, False):
            # The acquire waits on the pool's top-up (size 1) or on a start of its own (size 0).
            first = asyncio.create_task(pool.acquire().__aenter__())
            await asyncio.wait_for(proxy.held.wait(), GUARD_S)
            proxy.held.clear()
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            await asyncio.wait_for(settled(pool), GUARD_S)
            if size == 0:
                assert pool.ready == 0 and not await exists(engine, created(proxy)[-1])
                continue
            (warm,) = [w.sandbox for w in list(pool._ready._queue)]  # type: ignore[attr-defined]
            if taken:
                async with pool.acquire() as sb:
                    assert sb is warm and (await sb.shell("echo ok")).stdout == "ok\n"
        assert pool.start_failures == 0
    assert not [name for name in created(proxy) if await exists(engine, name)]


@pytest.mark.docker
async def test_acquires_that_time_out_leave_the_pool_no_bigger_than_its_size(
    sandbox_image: str, proxy: DockerProxy
) -> None:
    """Each acquire that found nothing to claim started a sandbox of its own; when it timed out, that start
    still ran (once a start slot was free) and its sandbox went to the queue, nobody's: after N timed-out
    acquires a size-1 pool held N warm containers until `aclose()`, each later acquire starting a
    replacement, so the count never came down."""
    config = SandboxConfig(image=sandbox_image)
    engine = DockerEngine()
    pool = SandboxPool(size=1, config=config, engine=DockerEngine(proxy.path), max_parallel_starts=2)
    async with pool:
        await asyncio.wait_for(pool.wait_ready(), GUARD_S)
        proxy.delays["/containers/create"] = 5.0  # Docker slow for a moment, well within the start time
        async with pool.acquire():  # the one warm sandbox in use; its replacement starts, slowly
            before = len(created(proxy))
            for _ in range(4):  # the first claims the replacement; each other starts one of its own
                with pytest.raises(SandboxAcquireTimeout):
                    async with pool.acquire(timeout=0.2):
                        pass
            await asyncio.wait_for(settled(pool), GUARD_S)
            # The two starts under way finished: one sandbox for the queue, the other destroyed; the two
            # still waiting for a start slot were dropped, their acquires gone and the pool full.
            assert pool.ready == 1 and pool.start_failures == 0
            late = created(proxy)[before:]
            assert len(late) == 2
            assert [await exists(engine, name) for name in late].count(True) == 1
    assert not [name for name in created(proxy) if await exists(engine, name)]


@pytest.mark.docker
async def test_closing_the_pool_destroys_a_sandbox_under_its_health_check(sandbox_image: str) -> None:
    """A warm sandbox taken off the queue for its health check was the pool's no more: `aclose()` returned
    while its container still ran, and the acquire's later removal was a task nobody awaited."""
    engine = DockerEngine()
    pool = SandboxPool(size=1, config=SandboxConfig(image=sandbox_image), health_check_timeout_s=GUARD_S)
    await pool.__aenter__()
    await asyncio.wait_for(pool.wait_ready(), GUARD_S)
    (warm,) = [w.sandbox for w in list(pool._ready._queue)]  # type: ignore[attr-defined]
    await freeze(engine, warm.id)  # its ping goes unanswered
    try:

        async def acquire() -> None:
            async with pool.acquire():
                pass

        task = asyncio.create_task(acquire())

        await asyncio.sleep(0)  # one step: it takes the sandbox and waits on its ping, unanswered
        assert pool.ready == 0 and not task.done()
        await asyncio.wait_for(pool.aclose(), GUARD_S)
        assert not await exists(engine, warm.id)
        with pytest.raises(SandboxPoolClosed):
            await asyncio.wait_for(task, GUARD_S)
    finally:
        await engine.remove(warm.id)  # forced: paused or not


@pytest.mark.docker
async def test_closing_the_pool_destroys_a_sandbox_handed_to_an_acquire_that_has_not_resumed(
    sandbox_image: str,
) -> None:
    """A start handed its sandbox to the waiting acquire, and `aclose()` ran before that acquire resumed:
    nothing of the pool's held the sandbox then, so `aclose()` returned at once with the container still
    running, and the acquire, seeing the pool closed, destroyed it in a task nobody awaited."""
    engine = DockerEngine()
    pool = SandboxPool(size=0, config=SandboxConfig(image=sandbox_image), acquire_timeout_s=GUARD_S)
    await pool.__aenter__()

    async def acquire() -> None:
        async with pool.acquire():
            pass

    task = asyncio.create_task(acquire())
    await asyncio.sleep(0)  # one step: it waits on a start of its own
    (start,) = pool._tasks
    (waiter,) = pool._waiting
    # Awaited directly, not under a guard's task (the start time bounds the start, the engine's timeout
    # the removal), so this test wakes in the very step the start ends, its sandbox handed over, and
    # closes the pool in it: the acquire, waiting through a shield, wakes one step later.
    await start
    sandbox = waiter.got.result().sandbox
    assert not task.done() and sandbox.alive
    await pool.aclose()
    assert not sandbox.alive and not await exists(engine, sandbox.id)
    with pytest.raises(SandboxPoolClosed):
        await asyncio.wait_for(task, GUARD_S)
    assert not pool._tasks  # nothing left running behind the closed pool


@pytest.mark.docker
async def test_a_sandbox_released_after_the_pool_closed_is_destroyed_by_its_release(
    sandbox_image: str,
) -> None:
    """`aclose()` leaves a sandbox in use to its user; released after that, it was destroyed in a task of
    the closed pool that nobody awaited, cut off with its container running if the event loop ended."""
    engine = DockerEngine()
    pool = SandboxPool(size=1, config=SandboxConfig(image=sandbox_image))
    await pool.__aenter__()
    async with pool.acquire() as sb:
        await asyncio.wait_for(pool.aclose(), GUARD_S)
        assert (await sb.shell("echo ok")).stdout == "ok\n"  # still the user's
    assert not sb.alive and not await exists(engine, sb.id)
    assert not pool._tasks


# ------------------------------------------------------------------------- what a failed start leaves


@pytest.mark.docker
@pytest.mark.parametrize("how", ["answered late", "cancelled"])
async def test_a_create_without_an_answer_leaves_no_container(
    sandbox_image: str, proxy: DockerProxy, how: str
) -> None:
    """dockerd creates the container although its answer comes after the start time (or the start was
    cancelled meanwhile); with no id to remove, a never-started container stayed for good."""
    proxy.delays["/containers/create"] = 600.0
    config = SandboxConfig(image=sandbox_image, start_timeout_s=3.0)
    sandbox = DockerSandbox(config, engine=DockerEngine(proxy.path))
    engine = DockerEngine()
    start = asyncio.create_task(sandbox._start())
    try:
        if how == "cancelled":
            await asyncio.wait_for(proxy.held.wait(), GUARD_S)  # dockerd created it; the answer is held
            start.cancel()
        with pytest.raises(DockerUnreachable if how == "answered late" else asyncio.CancelledError):
            await asyncio.wait_for(start, GUARD_S)
        assert sandbox.name.startswith("qwq-sbx-") and not sandbox.id
        assert not await exists(engine, sandbox.name)
    finally:
        if sandbox.name:
            await engine.remove(sandbox.name)


@pytest.mark.docker
async def test_a_start_whose_clean_up_meets_a_hung_daemon_still_fails_within_its_start_time(
    sandbox_image: str, proxy: DockerProxy
) -> None:
    """The failed start's removal used the engine's own timeout (here an hour) instead of the start's."""
    proxy.delays["/attach"] = 3600.0
    proxy.delays["DELETE /"] = 3600.0  # the removal is done, its answer never comes
    engine = DockerEngine(proxy.path, timeout=3600.0)
    sandbox = DockerSandbox(SandboxConfig(image=sandbox_image, start_timeout_s=2.0), engine=engine)
    with pytest.raises(DockerUnreachable, match="attach"):
        await asyncio.wait_for(sandbox._start(), GUARD_S)
    await asyncio.wait_for(sandbox.close(), GUARD_S)  # its removal is under way already: not waited again
    await removed(DockerEngine(), sandbox.id)


@pytest.mark.docker
async def test_a_cancelled_start_waits_for_its_clean_up_only_briefly(
    sandbox_image: str, proxy: DockerProxy
) -> None:
    """A cancelled start (Ctrl-C, the caller's own timeout) waited for the removal of its container as long
    as its start time had left (here 10 minutes), instead of `DISCARD_WAIT_S`, the removal going on in the
    background."""
    proxy.delays["/containers/create"] = 3600.0  # a hung daemon: it creates, and answers nothing
    proxy.delays["DELETE /"] = 3600.0
    config = SandboxConfig(image=sandbox_image, start_timeout_s=600.0)  # far beyond the guard
    sandbox = DockerSandbox(config, engine=DockerEngine(proxy.path, timeout=3600.0))
    start = asyncio.create_task(sandbox._start())
    await asyncio.wait_for(proxy.held.wait(), GUARD_S)
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(start, GUARD_S)
    await removed(DockerEngine(), sandbox.name)  # the removal went through; only its answer is held


@pytest.mark.docker
async def test_a_create_carried_out_after_its_start_gave_up_leaves_no_container(
    sandbox_image: str, proxy: DockerProxy
) -> None:
    """dockerd got to the create only after the failed start had removed the container by name (finding
    nothing): the container it then created was never started, nor removed."""
    from qwq_agent.sandbox import container

    proxy.late["/containers/create"] = 5.0  # past the start time
    sandbox = DockerSandbox(
        SandboxConfig(image=sandbox_image, start_timeout_s=2.0), engine=DockerEngine(proxy.path)
    )
    with pytest.raises(DockerUnreachable, match="POST /containers/create"):
        await asyncio.wait_for(sandbox._start(), GUARD_S)
    engine = DockerEngine()
    try:
        await asyncio.wait_for(proxy.late_done.wait(), GUARD_S)  # dockerd has created it now
        await asyncio.wait_for(asyncio.gather(*container._removals), GUARD_S)
        assert not await exists(engine, sandbox.name)
    finally:
        await engine.remove(sandbox.name)


@pytest.mark.docker
async def test_a_refused_create_logs_no_failed_removal(
    sandbox_image: str, proxy: DockerProxy, caplog
) -> None:
    """Every create refused by a restarting dockerd also warned that its container (never created) could
    not be removed."""
    from qwq_agent.sandbox import container

    engine = DockerEngine(proxy.path)
    await asyncio.to_thread(janitor.startup_once, GUARD_S, engine.connector)  # done before the restart
    proxy.refusing = True
    sandbox = DockerSandbox(SandboxConfig(image=sandbox_image), engine=engine)
    with caplog.at_level("WARNING", logger=container.__name__):
        with pytest.raises(DockerUnreachable, match="POST /containers/create"):
            await asyncio.wait_for(sandbox._start(), GUARD_S)
        await asyncio.wait_for(sandbox.close(), GUARD_S)
    assert not [r for r in caplog.records if "could not remove" in r.getMessage()]


@pytest.mark.docker
async def test_slow_orphan_removals_leave_the_start_its_time(sandbox_image: str, proxy: DockerProxy) -> None:
    """The start-up janitor gave each removal docker-py's whole timeout (the start's), checking its deadline
    only before each: a daemon slow to remove orphans took all of the start's time, and the start failed
    with "did not answer POST /containers/create within 0 s". Now its removals stop after part of the
    start time, each getting only what is left; the rest are left for a later run."""
    engine = DockerEngine()
    owner = await asyncio.create_subprocess_exec(
        "sleep", "600"
    )  # alive until the start: no janitor takes them
    orphans = []
    try:
        for _ in range(2):
            labels = {
                **janitor.owner_labels(3600),
                janitor.L_PID: str(owner.pid),
                janitor.L_START: janitor._start_ticks(owner.pid) or "",
                MARK_LABEL: proxy.mark,  # the only containers the janitor sees through the proxy
            }
            body = SandboxConfig(image=sandbox_image).container_body(sandbox_image, labels)
            orphan = await engine.create(f"qwq-sbx-test-{uuid.uuid4().hex[:8]}", body)
            orphans.append(orphan)
            proxy.delays[orphan] = 3600.0  # its removal is done, its answer never comes
        owner.kill()
        await owner.wait()
        via_proxy = DockerEngine(connector=UnixConnector(proxy.path))
        config = SandboxConfig(image=sandbox_image, start_timeout_s=20.0)
        async with DockerSandbox.create(config, engine=via_proxy) as sb:
            assert (await sb.shell("echo ok")).stdout == "ok\n"
            cid = sb.id
        # One removal sent and cut off when the janitor's share of the start time ran out; not the other.
        assert len([line for line in proxy.seen if any(o in line for o in orphans)]) == 1
        await removed(engine, cid)
    finally:
        if owner.returncode is None:
            owner.kill()
            await owner.wait()
        for cid in orphans:
            await engine.remove(cid)


@pytest.mark.docker
async def test_a_start_with_no_time_left_says_what_took_it_and_sends_nothing(
    sandbox_image: str, proxy: DockerProxy
) -> None:
    """No time left for the create said "the engine did not answer POST /containers/create within 0 s",
    blaming a daemon that was sent nothing."""
    from qwq_agent.deadline import Deadline

    engine = DockerEngine(proxy.path)
    await asyncio.to_thread(janitor.startup_once, GUARD_S, engine.connector)  # done: not this start's
    sandbox = DockerSandbox(SandboxConfig(image=sandbox_image), engine=engine)
    with pytest.raises(
        SandboxStartError, match="start time ran out before the container was created"
    ) as info:
        await asyncio.wait_for(sandbox._start(Deadline.after(0.0)), GUARD_S)
    assert not isinstance(info.value, DockerUnreachable) and "did not answer" not in str(info.value)
    assert not [line for line in proxy.seen if "/containers/create" in line]
    await asyncio.wait_for(sandbox.close(), GUARD_S)


@pytest.mark.docker
async def test_a_default_image_removed_since_it_was_resolved_is_resolved_again(
    sandbox_image: str, monkeypatch
) -> None:
    """The default tag was cached for the process: once its image was pruned, no sandbox could start."""
    from qwq_agent.sandbox import container
    from qwq_agent.sandbox.image import image_tag

    if sandbox_image != image_tag():
        pytest.skip("resolving the default image again would build it: the session uses another image")
    monkeypatch.delenv("QWQ_SANDBOX_IMAGE", raising=False)
    engine = DockerEngine()
    gone_tag = f"qwq-test-gone-{uuid.uuid4().hex[:8]}"
    await engine.request(
        "POST", f"/images/{sandbox_image}/tag", params={"repo": "qwq-agent-sandbox", "tag": gone_tag}
    )
    await engine.request("DELETE", f"/images/qwq-agent-sandbox:{gone_tag}")  # only the tag goes
    monkeypatch.setattr(container, "_image_cache", {engine.url: f"qwq-agent-sandbox:{gone_tag}"})
    async with DockerSandbox.create(SandboxConfig(), engine=engine) as sb:
        assert (await sb.shell("echo ok")).stdout == "ok\n"
    assert container._image_cache[engine.url] == sandbox_image


# ----------------------------------------------------------------------------------------- the janitor


async def test_an_owner_in_another_pid_namespace_is_judged_by_expiry_only() -> None:
    """Its pids are not visible here: a live owner looked dead, and its sandboxes were removed mid-run."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("a new PID namespace needs root and unshare(1)")
    live = janitor.owner_labels(3600)  # this process: alive, in the namespace the child cannot see
    expired = {**live, janitor.L_EXPIRES: "1000"}
    child = textwrap.dedent("""
        import json, sys
        from qwq_agent.sandbox import janitor
        print(json.dumps([janitor.orphan_reason(json.loads(a)) for a in sys.argv[1:]]
                         + [janitor.owned_by_me({**json.loads(sys.argv[1]), janitor.L_PID: "1"})]))
    """)
    out = await asyncio.to_thread(
        subprocess.run,
        [
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            sys.executable,
            "-c",
            child,
            *map(json.dumps, [live, expired]),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode and "Operation not permitted" in out.stderr:
        pytest.skip(f"unshare refused: {out.stderr.strip()}")
    assert out.returncode == 0, out.stderr
    # Not an orphan; expired all the same; and pid 1 there (the child itself) is not our pid 1.
    assert json.loads(out.stdout) == [None, "expired", False]
    # Labels from before the namespace was recorded: only their expiry tells, wherever they come from.
    old = {k: v for k, v in live.items() if k != janitor.L_PIDNS}
    assert janitor.orphan_reason({**old, janitor.L_PID: "999999999"}) is None
    assert janitor.orphan_reason({**old, janitor.L_EXPIRES: "1000"}) == "expired"
    # In this namespace a dead owner is still found out.
    assert janitor.orphan_reason({**live, janitor.L_PID: "999999999"}) == "owner process is gone"


@pytest.mark.docker
async def test_a_running_sandbox_of_another_boot_with_our_hostname_is_judged_by_expiry_only(
    sandbox_image: str, proxy: DockerProxy
) -> None:
    """Another machine with the same hostname (a shared ssh:// or tcp:// engine) has another boot id: its
    live sandboxes were judged orphans ("owner's host rebooted") and removed mid-run. Only a container
    that stopped proves a reboot (which stops them all); a running one is left to its expiry."""
    engine = DockerEngine()
    other_boot = {**janitor.owner_labels(3600), janitor.L_BOOT: str(uuid.uuid4()), MARK_LABEL: proxy.mark}
    assert janitor.orphan_reason(other_boot) is None  # state unknown: judged as running
    assert janitor.orphan_reason(other_boot, state="created") is None  # between its create and start
    assert janitor.orphan_reason({**other_boot, janitor.L_EXPIRES: "1000"}, state="running") == "expired"

    def body(*command: str) -> dict:
        return {
            "Image": sandbox_image,
            "Entrypoint": list(command),
            "Labels": other_boot,
            "HostConfig": {"NetworkMode": "none", "AutoRemove": False},
        }

    running = await engine.create(f"qwq-sbx-test-{uuid.uuid4().hex[:8]}", body("sleep", "300"))
    stopped = await engine.create(f"qwq-sbx-test-{uuid.uuid4().hex[:8]}", body("true"))
    try:
        for cid in (running, stopped):
            await engine.start(cid)
        await engine.request("POST", f"/containers/{stopped}/wait", params={"condition": "not-running"})
        # docker-py blocks, and the proxy answers on this loop: in a thread. It sees only the two above.
        client = await asyncio.to_thread(UnixConnector(proxy.path).docker_client, 30)
        try:
            listed = {
                info.id: info.orphan for info in await asyncio.to_thread(janitor.list_sandboxes, client)
            }
            assert listed[running[:12]] is None and "rebooted" in (listed[stopped[:12]] or "")
            pruned = await asyncio.to_thread(janitor.prune, client=client, skip_failures=True)
        finally:
            client.close()
        assert [info.id for info in pruned] == [stopped[:12]]
        assert (await engine.inspect(running))["State"]["Running"]
        assert not await exists(engine, stopped)
    finally:
        for cid in (running, stopped):
            with contextlib.suppress(DockerAPIError):
                await engine.remove(cid)


@pytest.mark.docker
async def test_an_orphan_the_engine_cannot_remove_does_not_stop_sandboxes_starting(
    sandbox_image: str, proxy: DockerProxy
) -> None:
    """A removal error other than 404/409 failed the start-up clean-up, and so every start, for good."""
    engine = DockerEngine()
    labels = {
        **janitor.owner_labels(3600),
        janitor.L_PID: "999999999",  # its owner is gone
        janitor.L_START: "1",
        MARK_LABEL: proxy.mark,  # the only container the janitor sees through the proxy
    }
    body = SandboxConfig(image=sandbox_image).container_body(sandbox_image, labels)
    orphan = await engine.create(f"qwq-sbx-test-{uuid.uuid4().hex[:8]}", body)
    proxy.failures[orphan] = (
        500,
        'driver "overlay2" failed to remove root filesystem: device or resource busy',
    )
    try:
        via_proxy = DockerEngine(connector=UnixConnector(proxy.path))
        async with DockerSandbox.create(SandboxConfig(image=sandbox_image), engine=via_proxy) as sb:
            assert (await sb.shell("echo ok")).stdout == "ok\n"
        assert any(line.startswith("DELETE") and orphan in line for line in proxy.seen)
        assert proxy.url in janitor._started  # done for this engine: not retried (and failed) per start
    finally:
        await engine.remove(orphan)


@pytest.mark.docker
async def test_prune_all_names_a_container_it_could_not_remove_and_fails(
    sandbox_image: str, proxy: DockerProxy
) -> None:
    """The janitor's skip of containers the engine cannot remove also applied to the operator's explicit
    `sandbox prune`: it exited 0, and a script took the sandboxes for gone."""
    engine = DockerEngine()
    labels = {**janitor.owner_labels(3600), MARK_LABEL: proxy.mark}  # the only container the CLI sees
    body = SandboxConfig(image=sandbox_image).container_body(sandbox_image, labels)
    stuck = await engine.create(f"qwq-sbx-test-{uuid.uuid4().hex[:8]}", body)
    proxy.failures[stuck] = (500, "device or resource busy")
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "qwq_agent.cli.main",
            "sandbox",
            "prune",
            "--all",
            env={**os.environ, "DOCKER_HOST": proxy.url},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), GUARD_S)
        assert proc.returncode == 4, (out, err)  # Docker failed
        assert stuck[:12] in err.decode() and "device or resource busy" in err.decode()
        assert "removed 0 sandbox container(s)" in out.decode()
        assert await exists(engine, stuck)
    finally:
        await engine.remove(stuck)


@pytest.mark.docker
async def test_sandbox_ls_shows_garbage_time_and_owner_labels_as_unknown(
    sandbox_image: str, proxy: DockerProxy
) -> None:
    """Labels are anyone's to write (`docker run --label`, another tool, a torn edit): a `created` or
    `expires` that is no number made `sandbox ls` fail with a traceback (float()), and so did an owner
    pid of digits `int()` refuses ("²"), hiding every other container."""
    engine = DockerEngine()
    labels = {
        **janitor.owner_labels(3600),
        janitor.L_CREATED: "yesterday",
        janitor.L_EXPIRES: "inf",
        janitor.L_PID: "\u00b2",
        MARK_LABEL: proxy.mark,  # the only container the CLI sees
    }
    body = SandboxConfig(image=sandbox_image).container_body(sandbox_image, labels)
    odd = await engine.create(f"qwq-sbx-test-{uuid.uuid4().hex[:8]}", body)
    try:
        outs = []
        for extra in ([], ["--json"]):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "qwq_agent.cli.main", "sandbox", "ls", *extra,
                env={**os.environ, "DOCKER_HOST": proxy.url},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(proc.communicate(), GUARD_S)
            assert proc.returncode == 0 and b"Traceback" not in err, (out, err)
            outs.append(out.decode())
        assert odd[:12] in outs[0]
        [row] = json.loads(outs[1])
        assert row["id"] == odd[:12]
        assert row["created"] is None and row["expires"] is None and row["owner_pid"] is None, row
        # The janitor (`sandbox prune`, and the start-up clean-up every run makes) took such a container
        # for an orphan ("bad owner label") and then failed on the same int(): every run on the engine
        # ended "Docker failed ... invalid literal for int()" while it existed.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "qwq_agent.cli.main", "sandbox", "prune",
            env={**os.environ, "DOCKER_HOST": proxy.url},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), GUARD_S)
        assert proc.returncode == 0 and b"Traceback" not in err and b"invalid literal" not in err, (out, err)
        assert not await exists(engine, odd)
    finally:
        if await exists(engine, odd):
            await engine.remove(odd)


# -------------------------------------------------------------------------------------- the idle limit


@pytest.mark.docker
async def test_a_host_frozen_mid_reply_has_its_sandbox_reaped(sandbox_image: str) -> None:
    """A host that stopped reading while a reply streamed (a CLI Ctrl-Z'd during a big download, a hung
    ssh link): the request's thread blocked writing under the channel's lock, so the idle limit never
    counted (a request was in flight) and the exit that a limit calls waited for that lock for ever: the
    container outlived every limit. A write the host has taken nothing of for the idle limit now counts
    as idle, and the exit never waits on the channel."""
    config = SandboxConfig(image=sandbox_image, idle_timeout_s=2.0, auto_replace=False)
    async with DockerSandbox.create(config) as sb:
        await sb.shell("head -c 40000000 /dev/urandom > /workspace/big")
        # The engine itself cannot be asked while the host is frozen (it waits to hand the container's
        # output on before it reports the container's end): the container's first process is watched.
        pid = (await sb.engine.inspect(sb.id))["State"]["Pid"]
        try:
            watch = os.pidfd_open(pid)
        except OSError:
            pytest.skip("the engine's processes are not visible from here")
        ended: list[bool] = []

        def freeze_host(frame: dict) -> None:
            # The host's event loop stops here, at the first chunk, and reads nothing more until the
            # container's processes are gone (or the guard runs out: the bug).
            if not ended:
                ended.append(bool(select.select([watch], [], [], GUARD_S)[0]))

        assert sb._channel is not None
        try:
            with pytest.raises(SandboxDead):
                await sb._channel.call("download", {"path": "/workspace/big"}, GUARD_S, freeze_host)
        finally:
            os.close(watch)
        assert ended == [True]


@pytest.mark.docker
async def test_a_live_host_keeps_its_idle_sandbox_while_a_frozen_host_s_is_reaped(sandbox_image: str) -> None:
    """The idle limit counted whether or not the host was alive: an agent waiting on a model turn longer
    than the limit (900 s) lost its sandbox and its Python state. A live host now pings its sandboxes;
    the limit still reaps one whose host stopped (here frozen: its attach stream stays open, so the
    supervisor sees no EOF)."""
    config = SandboxConfig(image=sandbox_image, idle_timeout_s=2.0)
    child = textwrap.dedent(f"""
        import asyncio, os, signal
        from qwq_agent.sandbox import DockerSandbox, SandboxConfig, janitor
        from qwq_agent.sandbox.engine import DockerEngine
        janitor._started.setdefault(DockerEngine().url, None)  # other processes' orphans are not its own
        async def main():
            sb = await DockerSandbox.create(SandboxConfig(image={sandbox_image!r}, idle_timeout_s=2.0))
            print(sb.id, flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)
        asyncio.run(main())
    """)
    engine = DockerEngine()
    async with DockerSandbox.create(config) as sb:
        await sb.python("x = 42")  # our last call: idle from here on
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", child, stdout=asyncio.subprocess.PIPE
        )
        try:
            assert proc.stdout is not None
            frozen = (await asyncio.wait_for(proc.stdout.readline(), GUARD_S)).decode().strip()
            assert frozen
            # Started after ours went idle, with the same limit: reaped after ours would have been.
            await asyncio.wait_for(removed(engine, frozen), GUARD_S)
            assert sb.alive
            r = await sb.python("x")
            assert r.value == "42" and not r.sandbox_replaced and not r.state_lost
        finally:
            proc.kill()
            await proc.wait()


async def until(condition: Callable[[], bool]) -> None:
    """Until the pool's state (an acquire in line, a sandbox handed out) holds: reached through awaits of
    the pool's own that offer no event to wait on, so looked at every few milliseconds."""
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0.005)


@pytest.mark.docker
async def test_a_burst_of_acquires_starts_no_more_sandboxes_than_max_live(
    sandbox_image: str, proxy: DockerProxy
) -> None:
    """`size` is a warm count, not a cap: a burst of four acquires on a size-1 pool started four containers
    at once. With `max_live=2` at most two of the pool's sandboxes live at a time (warm, in use or
    starting); the other acquires wait for a release, and one that runs out of time says the cap held it."""
    engine = DockerEngine()
    pool = SandboxPool(
        size=1, config=SandboxConfig(image=sandbox_image), engine=DockerEngine(proxy.path), max_live=2
    )
    release = asyncio.Event()
    held: list[str] = []

    async def user() -> None:
        async with pool.acquire(timeout=GUARD_S) as sb:
            held.append(sb.id)
            await release.wait()

    async with pool:
        await asyncio.wait_for(pool.wait_ready(), GUARD_S)
        users = [asyncio.create_task(user()) for _ in range(4)]
        await asyncio.wait_for(until(lambda: len(held) == 2 and len(pool._waiting) == 2), GUARD_S)
        with pytest.raises(SandboxAcquireTimeout, match=r"within 0\.5 s: .*max_live=2"):
            async with pool.acquire(timeout=0.5):
                pass
        assert pool.live == 2 and len(held) == 2
        assert [await exists(engine, name) for name in created(proxy)].count(True) == 2
        release.set()  # each release makes room for one of the acquires still waiting
        await asyncio.wait_for(asyncio.gather(*users), GUARD_S)
        assert len(set(held)) == 4
        await asyncio.wait_for(settled(pool), GUARD_S)
        assert pool.live <= 2 and pool.ready == 1
    assert pool.live == 0
    assert not [name for name in created(proxy) if await exists(engine, name)]


@pytest.mark.docker
async def test_closing_a_pool_at_max_live_fails_the_acquires_waiting_for_room_at_once(
    sandbox_image: str,
) -> None:
    """An acquire waiting for room under `max_live` fails with `SandboxPoolClosed` when the pool closes,
    and the close does not wait for the sandbox still in use to be released."""
    pool = SandboxPool(size=0, config=SandboxConfig(image=sandbox_image), max_live=1)
    async with pool, pool.acquire() as sb:

        async def second() -> None:
            async with pool.acquire(timeout=GUARD_S):
                pass

        waiting = asyncio.create_task(second())
        await asyncio.wait_for(until(lambda: bool(pool._waiting)), GUARD_S)
        await asyncio.wait_for(pool.aclose(), GUARD_S)
        with pytest.raises(SandboxPoolClosed):
            await asyncio.wait_for(waiting, GUARD_S)
        assert (await sb.shell("echo still mine")).stdout == "still mine\n"
    assert pool.live == 0


async def test_max_live_below_the_pool_size_is_refused() -> None:
    with pytest.raises(ValueError, match="max_live"):
        SandboxPool(size=3, max_live=2)


def _pause_with_the_host_stopped(client: Any, container_id: str, seconds: float, *, then: float) -> None:
    """Pause the container for `seconds`, and unpause it `then` seconds before the host runs again: all of
    it synchronous, so the event loop (and with it the keepalive) does not run meanwhile."""
    freeze_sync(client, container_id)
    time.sleep(seconds)
    client.api.unpause(container_id)
    time.sleep(then)


@pytest.mark.docker
async def test_a_paused_sandbox_is_not_reaped_as_idle_on_unpause(sandbox_image: str) -> None:
    """A paused sandbox's idle clock stands still: `docker pause` for longer than the idle limit once made
    the supervisor exit as idle on unpause (its monotonic clock ran through the freeze), racing the pings
    a live host had queued in its stdin, and usually winning: the host's Python state was gone although
    the host never stopped. Frozen time is not the host's silence.

    First with a host that sends nothing meanwhile (its event loop blocked through the pause and a moment
    after): no queued ping can win the race, so only a supervisor that does not count the freeze keeps the
    sandbox. Then with a host that pings on throughout, as the CLI does."""
    from qwq_agent.sandbox.transport import docker_from_env

    idle = 3.0
    engine = DockerEngine()
    client = docker_from_env(timeout=60)
    try:
        async with DockerSandbox.create(SandboxConfig(image=sandbox_image, idle_timeout_s=idle)) as sb:
            first = sb.id
            await sb.python("x = 42")
            _pause_with_the_host_stopped(client, first, 3 * idle, then=idle / 10)
            r = await sb.python("x")
            assert r.value == "42" and not r.sandbox_replaced and sb.id == first

            await freeze(engine, first)
            try:
                await asyncio.sleep(2 * idle)  # the host pings on meanwhile: the pings queue in its stdin
            finally:
                await engine.request("POST", f"/containers/{first}/unpause")
            closed = asyncio.create_task(sb.wait_closed())
            done, _ = await asyncio.wait({closed}, timeout=idle)  # the queued pings are read, not raced
            closed.cancel()
            assert not done, f"reaped after the pause: {closed.result() if done else ''}"
            r = await sb.python("x")
            assert r.value == "42" and not r.sandbox_replaced and sb.id == first
    finally:
        client.close()
