"""Lifecycle: the warm pool, labels and the janitor, death of the owning process, and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from qwq_agent.deadline import Deadline
from qwq_agent.sandbox import SandboxConfig, SandboxPool, janitor
from qwq_agent.sandbox.engine import DockerEngine
from qwq_agent.sandbox.errors import DockerAPIError, SandboxAcquireTimeout

pytestmark = [pytest.mark.docker, pytest.mark.asyncio(loop_scope="session")]


async def gone(engine: DockerEngine, cid: str) -> bool:
    try:
        await engine.inspect(cid)
    except DockerAPIError as exc:
        return exc.status == 404
    return False


async def test_pool_hands_out_fresh_sandboxes_and_destroys_them(sandbox_image: str) -> None:
    mine = [f"{janitor.L_PID}={os.getpid()}"]
    before = {c["Id"] for c in await DockerEngine().list(mine)}  # other tests' shared sandboxes
    async with SandboxPool(size=2, config=SandboxConfig(image=sandbox_image)) as pool:
        await pool.wait_ready()
        assert pool.ready == 2
        async with pool.acquire() as a, pool.acquire() as b:
            assert a.id != b.id
            await a.python("leak = 'secret of user a'")
            used = [a.id, b.id]
            assert (await b.python("'leak' in globals()")).value == "False"
        await pool.wait_ready()
        assert pool.ready == 2  # refilled in the background
        for cid in used:
            await pool.engine.remove(cid)  # returns once removal (started on release) is complete
            assert await gone(pool.engine, cid)
        async with pool.acquire() as c:
            assert c.id not in used and (await c.shell("echo ok")).stdout == "ok\n"
    assert {c["Id"] for c in await pool.engine.list(mine)} <= before


async def test_pool_of_size_zero_starts_on_demand(sandbox_image: str) -> None:
    async with SandboxPool(size=0, config=SandboxConfig(image=sandbox_image)) as pool:
        async with pool.acquire() as sb:
            assert (await sb.python("6 * 7")).value == "42"


def _age_warm(pool: SandboxPool, seconds: float) -> str:
    """Make the pool's one warm sandbox `seconds` older (as after a quiet spell); its id."""
    (warm,) = list(pool._ready._queue)  # type: ignore[attr-defined]
    warm.started_at -= seconds
    warm.ready_at -= seconds
    return warm.sandbox.id


async def test_acquire_for_a_run_hands_out_no_warm_sandbox_that_would_expire_before_its_deadline(
    sandbox_image: str,
) -> None:
    # A warm sandbox with 20 s of its 60 s lifetime left, for a run with 30 s left: its supervisor would
    # exit at its lifetime limit mid-run, and the next call would start an empty replacement. (Before,
    # only one within 10% of its lifetime was refused.) With the defaults: one 30-54 min old, for a run
    # of up to 30 min.
    async with SandboxPool(size=1, config=SandboxConfig(image=sandbox_image, lifetime_s=60.0)) as pool:
        await pool.wait_ready()
        old = _age_warm(pool, 40.0)
        async with pool.acquire(deadline=Deadline.after(30.0)) as sb:
            assert sb.id != old and (await sb.shell("echo fresh")).stdout == "fresh\n"
        assert pool.replaced == 1
        # Enough left for a shorter run: handed out, not replaced for nothing.
        await pool.wait_ready()
        kept = _age_warm(pool, 40.0)
        async with pool.acquire(deadline=Deadline.after(10.0)) as sb:
            assert sb.id == kept
        # A run longer than any lifetime: a sandbox fresh from its start is the best there is, not
        # refused again and again until the acquire times out.
        await pool.wait_ready()
        _age_warm(pool, 40.0)
        async with pool.acquire(deadline=Deadline.after(600.0)) as sb:
            assert (await sb.shell("echo fresh")).stdout == "fresh\n"
        assert pool.replaced == 2


async def _container_with(engine: DockerEngine, image: str, labels: dict[str, str]) -> str:
    body = SandboxConfig(image=image).container_body(image, labels)
    cid = await engine.create(f"qwq-sbx-test-{os.urandom(4).hex()}", body)
    return cid


# Serial: the janitor of any other test process (every CLI child runs one) would remove these orphans
# first, and this prune would not report them.
@pytest.mark.serial
async def test_janitor_removes_orphans_and_keeps_live_ones(sandbox_image: str) -> None:
    engine = DockerEngine()
    dead = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
    )
    dead_pid = dead.stdout.strip()
    orphan_labels = {**janitor.owner_labels(3600), janitor.L_PID: dead_pid, janitor.L_START: "1"}
    # Another host's owner cannot be looked up from here: its expiry alone tells.
    expired_labels = {**janitor.owner_labels(3600), janitor.L_HOST: "elsewhere", janitor.L_EXPIRES: "1000"}
    live_labels = janitor.owner_labels(3600)
    assert janitor.orphan_reason(orphan_labels) == "owner process is gone"
    assert janitor.orphan_reason(expired_labels) == "expired"
    assert janitor.orphan_reason(live_labels) is None
    ids = [
        await _container_with(engine, sandbox_image, lab)
        for lab in (orphan_labels, expired_labels, live_labels)
    ]
    try:
        removed = await asyncio.to_thread(janitor.prune)
        removed_ids = {r.id for r in removed}
        assert ids[0][:12] in removed_ids and ids[1][:12] in removed_ids and ids[2][:12] not in removed_ids
        assert await gone(engine, ids[0]) and await gone(engine, ids[1]) and not await gone(engine, ids[2])
        listed = {s.id: s for s in await asyncio.to_thread(janitor.list_sandboxes)}
        assert listed[ids[2][:12]].orphan is None and listed[ids[2][:12]].owner_pid == os.getpid()
    finally:
        for cid in ids:
            await engine.remove(cid)


# Serial: once its owner is gone, any other test process's janitor may remove the container first.
@pytest.mark.serial
async def test_janitor_keeps_a_live_owners_sandbox_past_its_expiry_and_removes_it_once_the_owner_dies(
    sandbox_image: str,
) -> None:
    # A wall clock that jumps forward (a VM resumed from suspend, an NTP step) puts every expiry label in
    # the past: another process's janitor removed the live sandboxes of an owner it could see was alive.
    owner = await asyncio.to_thread(
        subprocess.Popen,
        [
            sys.executable,
            "-c",
            "import json, sys; from qwq_agent.sandbox import janitor; "
            "print(json.dumps(janitor.owner_labels(3600)), flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    engine = DockerEngine()
    cid = None
    try:
        assert owner.stdout is not None
        labels = json.loads(await asyncio.to_thread(owner.stdout.readline))
        assert labels[janitor.L_PID] == str(owner.pid)
        labels[janitor.L_EXPIRES] = "1000"  # long past, as the stepped clock has it
        cid = await _container_with(engine, sandbox_image, labels)
        assert janitor.orphan_reason(labels) is None
        removed = await asyncio.to_thread(janitor.prune)  # this process's janitor: not the owner
        assert cid[:12] not in {r.id for r in removed} and not await gone(engine, cid)
        owner.communicate(timeout=60)  # the owner ends: now its sandbox is an orphan
        assert janitor.orphan_reason(labels) == "owner process is gone"
        await asyncio.to_thread(janitor.prune)
        assert await gone(engine, cid)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if cid is not None and not await gone(engine, cid):
            await engine.remove(cid)


async def test_sandbox_dies_with_its_owner_process(sandbox_image: str) -> None:
    # No atexit, no close(): the process vanishes. Its attach stream closes, the supervisor sees EOF.
    script = textwrap.dedent(f"""
        import asyncio, os
        from qwq_agent.sandbox import DockerSandbox, SandboxConfig
        async def main():
            sb = await DockerSandbox.create(SandboxConfig(image={sandbox_image!r}))
            print(sb.id, flush=True)
            os._exit(0)
        asyncio.run(main())
    """)
    out = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    cid = out.stdout.strip()
    assert cid, out.stderr
    engine = DockerEngine()
    try:
        await asyncio.wait_for(
            engine.request("POST", f"/containers/{cid}/wait", params={"condition": "removed"}), 60
        )
    except DockerAPIError as exc:
        assert exc.status == 404  # already removed before we asked
    assert await gone(engine, cid)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qwq_agent.cli.main", "sandbox", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


async def test_cli_run_ls_prune(sandbox_image: str, monkeypatch) -> None:
    monkeypatch.setenv("QWQ_SANDBOX_IMAGE", sandbox_image)
    out = await asyncio.to_thread(_cli, "run", "--python", "print('hi'); 6 * 7", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["stdout"] == "hi\n" and data["value"] == "42"
    out = await asyncio.to_thread(_cli, "run", "--shell", "echo out; exit 3")
    assert out.returncode == 3 and out.stdout == "out\n"
    out = await asyncio.to_thread(_cli, "ls", "--json")
    assert out.returncode == 0 and isinstance(json.loads(out.stdout), list)
    out = await asyncio.to_thread(_cli, "prune", "--json")
    assert out.returncode == 0 and isinstance(json.loads(out.stdout), list)


async def test_pool_with_a_missing_image_fails_acquire_instead_of_hanging() -> None:
    from qwq_agent.sandbox import SandboxStartError

    async with SandboxPool(size=1, config=SandboxConfig(image="qwq-agent-no-such-image:missing")) as pool:
        with pytest.raises(SandboxStartError, match="No such image"):
            async with pool.acquire():
                pass
        assert pool.start_failures >= 1


async def test_an_acquire_timeout_names_the_limit_that_ran_out_and_no_docker_failure(
    sandbox_image: str,
) -> None:
    """A timeout said "within 70 s" (the pool's default) whatever limit the acquire had; and the start a
    short deadline cut ("did not answer POST .../start within 0.13 s (is dockerd hung?)") became the pool's
    `last_error`, warned about and named by every later timeout, although Docker was healthy."""
    async with SandboxPool(size=0, config=SandboxConfig(image=sandbox_image)) as pool:
        with pytest.raises(SandboxAcquireTimeout) as by_timeout:  # no sandbox starts in 0.1 s
            async with pool.acquire(timeout=0.1):
                pass
        with pytest.raises(SandboxAcquireTimeout) as by_deadline:
            async with pool.acquire(deadline=Deadline.after(0.1)):
                pass
    assert pool.last_error is None  # the pool's close waited for the starts begun for them (cut short)
    assert str(by_timeout.value) == "no working sandbox could be acquired within 0.1 s"
    message = str(by_deadline.value)
    # The deadline's time left when the acquire began: 0.1 s, less what passed on the way (0.098 under load).
    said = re.match(
        r"no working sandbox could be acquired within (0\.\d+) s \(the caller's deadline\)", message
    )
    assert said is not None and 0.05 < float(said.group(1)) <= 0.1, message
    assert "70" not in message and "dockerd" not in message
