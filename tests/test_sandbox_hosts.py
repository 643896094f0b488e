"""Sandboxes on several Docker hosts: this machine's engine and the same engine over ssh on 127.0.0.1.

The ssh endpoint is a real sshd (Debian's openssh-server) started by the fixture with keys made here,
logging in as `qwq-docker` (docker group, no shell); the tunnel is the real OpenSSH client. Cutting
the host kills sshd and its connections, as when a machine goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import pytest
from docker_proxy import DockerProxy

from qwq_agent.deadline import Deadline
from qwq_agent.sandbox import (
    DockerHost,
    DockerSandbox,
    DockerUnreachable,
    HostFull,
    SandboxAcquireTimeout,
    SandboxConfig,
    SandboxConfigError,
    SandboxHostLost,
    SandboxPool,
    janitor,
)
from qwq_agent.sandbox.engine import DockerEngine
from qwq_agent.sandbox.errors import DockerAPIError, SandboxStartError
from qwq_agent.sandbox.hosts import HostSet
from qwq_agent.sandbox.protocol import OutputChunk
from qwq_agent.sandbox.transport import connector_for
from qwq_agent.testing import sshd

pytestmark = pytest.mark.docker
LOCAL = "unix:///var/run/docker.sock"


@pytest.fixture
def endpoint(sandbox_image: str) -> Iterator[sshd.SSHDockerEndpoint]:
    problem = sshd.unavailable()
    if problem:
        pytest.skip(problem)
    with sshd.SSHDockerEndpoint() as ep:
        yield ep


def ssh_host(ep: sshd.SSHDockerEndpoint, capacity: int | None = None) -> DockerHost:
    return DockerHost(url=ep.url, ssh_config=ep.ssh_config, capacity=capacity)


async def gone(container_ids: list[str], timeout: float = 30.0) -> None:
    """Wait (at most `timeout` s) until the local engine says each container was removed."""
    engine = DockerEngine(timeout=timeout)
    deadline = Deadline.after(timeout)
    for cid in container_ids:
        with contextlib.suppress(DockerAPIError):  # 404: already gone
            await engine.request(
                "POST", f"/containers/{cid}/wait", params={"condition": "removed"}, timeout=deadline.left()
            )


async def test_a_sandbox_over_ssh_runs_code_edits_files_and_is_cleaned_up_by_its_own_janitor(
    endpoint: sshd.SSHDockerEndpoint, sandbox_image: str, tmp_path
) -> None:
    engine = DockerEngine(connector=connector_for(ssh_host(endpoint)))
    async with DockerSandbox.create(SandboxConfig(image=sandbox_image), engine=engine) as sb:
        assert sb.engine.url == endpoint.url
        assert (await sb.python("21 * 2")).value == "42"
        shell = await sb.shell("echo $((6 * 7)) && id -un")
        assert shell.exit_code == 0 and shell.stdout.split() == ["42", "sandbox"]
        await sb.create_file("/workspace/a.py", "x = 1\n")
        assert "x = 2" in (await sb.str_replace("/workspace/a.py", "x = 1", "x = 2")).output
        assert (await sb.search("x = ", path="/workspace")).total_matches == 1
        (tmp_path / "up.txt").write_text("uploaded over ssh")
        await sb.upload(tmp_path / "up.txt")
        result = await sb.download("/workspace/up.txt", tmp_path / "back")
        assert (tmp_path / "back" / "up.txt").read_text() == "uploaded over ssh" and result.bytes > 0
        # The janitor ran against this engine by its own URL (one run per Docker host).
        assert endpoint.url in janitor._started
        cid = sb.id
    await gone([cid])


async def test_an_unreachable_ssh_host_fails_the_start_with_a_typed_error_naming_it(
    endpoint: sshd.SSHDockerEndpoint, sandbox_image: str
) -> None:
    endpoint.cut()  # nothing listens on its port now
    engine = DockerEngine(connector=connector_for(ssh_host(endpoint)))
    config = SandboxConfig(image=sandbox_image, start_timeout_s=20)
    with pytest.raises(DockerUnreachable, match=f"{endpoint.url}.*ssh exited.*refused"):
        await asyncio.wait_for(DockerSandbox.create(config, engine=engine), 30)


async def test_the_pool_spreads_sandboxes_over_hosts_by_free_capacity(
    endpoint: sshd.SSHDockerEndpoint, sandbox_image: str
) -> None:
    hosts = [DockerHost(url=LOCAL, capacity=2), ssh_host(endpoint, capacity=2)]
    config = SandboxConfig(image=sandbox_image)
    async with SandboxPool(size=0, config=config, hosts=hosts) as pool:
        async with contextlib.AsyncExitStack() as stack:
            held = [await stack.enter_async_context(pool.acquire()) for _ in range(4)]
            assert sorted(sb.engine.url for sb in held) == sorted([LOCAL, LOCAL, endpoint.url, endpoint.url])
            outs = await asyncio.gather(*(sb.shell("echo ok") for sb in held))
            assert [o.stdout for o in outs] == ["ok\n"] * 4
            with pytest.raises(HostFull, match="every Docker host is full"):
                async with pool.acquire(timeout=30):
                    pass
            ids = [sb.id for sb in held]
    await gone(ids)


async def test_a_host_cut_mid_run_fails_its_sandboxes_typed_and_the_pool_serves_from_the_other(
    endpoint: sshd.SSHDockerEndpoint, sandbox_image: str
) -> None:
    hosts = [DockerHost(url=LOCAL, capacity=4), ssh_host(endpoint, capacity=4)]
    config = SandboxConfig(image=sandbox_image)
    # size=0: each acquire starts one, so placement alone decides where (a warm pool hands out whichever
    # start finished first); equal free capacity, so the first goes to the first host, the second to the other.
    async with SandboxPool(size=0, config=config, hosts=hosts) as pool:
        async with pool.acquire() as first, pool.acquire() as second:
            by_host = {first.engine.url: first, second.engine.url: second}
            assert set(by_host) == {LOCAL, endpoint.url}
            remote, local = by_host[endpoint.url], by_host[LOCAL]
            await remote.python("state = 'remote'")
            await local.python("state = 'local'")

            started = asyncio.Event()

            def seen(chunk: OutputChunk) -> None:
                if "running" in chunk.text:
                    started.set()

            call = asyncio.create_task(remote.shell("echo running; sleep 120", timeout=150, on_output=seen))
            await asyncio.wait_for(started.wait(), 30)
            endpoint.cut()
            with pytest.raises(SandboxHostLost, match="Docker host is gone"):
                await asyncio.wait_for(call, 60)
            with pytest.raises(SandboxHostLost):  # and every later call on it, without a replacement
                await asyncio.wait_for(remote.python("state"), 60)
            assert (await local.python("state")).value == "'local'"
            remote_ids = [remote.id]

            # New sandboxes come from the host that is left: the lost one has the most free capacity now,
            # so it is tried first, fails to answer, and is set aside.
            async with pool.acquire(timeout=60) as a, pool.acquire(timeout=60) as b:
                assert a.engine.url == b.engine.url == LOCAL
                assert [(await sb.shell("echo fine")).stdout for sb in (a, b)] == ["fine\n"] * 2
    # The lost host's containers exit on their own: their attach stream (stdin) closed with the link.
    await gone(remote_ids)


async def test_the_default_image_is_found_on_the_pool_hosts_own_engine_not_docker_host(
    sandbox_image: str, monkeypatch, tmp_path
) -> None:
    """The default image was looked up (and would have been built) with the `DOCKER_HOST` engine and its
    tag cached once per process: an operator box with no local Docker driving remote hosts started
    nothing, and a host lacking the image was never given it."""
    from qwq_agent.sandbox import container
    from qwq_agent.sandbox.image import image_tag

    if sandbox_image != image_tag():
        pytest.skip("resolving the default image would build it: the session uses another image")
    monkeypatch.delenv("QWQ_SANDBOX_IMAGE", raising=False)  # the path under test: the default image
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/docker.sock")  # no engine there
    monkeypatch.setattr(container, "_image_cache", {})  # as in a fresh process: no image resolved yet
    # The pool's one host is this machine's engine behind a proxy: another URL than any other engine,
    # and what went through it is seen.
    async with DockerProxy() as proxy:
        async with SandboxPool(size=0, config=SandboxConfig(), hosts=[proxy.url]) as pool:
            async with pool.acquire(timeout=60) as sb:
                assert sb.engine.url == proxy.url
                assert (await sb.shell("echo ok")).stdout == "ok\n"
                cid = sb.id
        assert any(f"/images/{sandbox_image}/json" in line for line in proxy.seen)
    assert container._image_cache == {proxy.url: sandbox_image}  # per engine, not one tag for all
    monkeypatch.undo()  # `gone` asks the DOCKER_HOST engine
    await gone([cid])


NO_SPACE = "failed to create container: write /var/lib/docker/containers: no space left on device"


async def test_a_host_that_refuses_creates_is_set_aside_and_the_others_serve(sandbox_image: str) -> None:
    """Only an unreachable host was set aside: a host that answers but refuses every create (its disk is
    full) was raised at once, kept the most free capacity and took every start; the healthy one idled."""
    async with DockerProxy() as proxy:
        proxy.failures["/containers/create"] = (500, NO_SPACE)
        hosts = [DockerHost(url=proxy.url, capacity=8), DockerHost(url=LOCAL, capacity=2)]
        ids = []
        async with SandboxPool(size=0, config=SandboxConfig(image=sandbox_image), hosts=hosts) as pool:
            for _ in range(3):
                async with pool.acquire(timeout=60) as sb:
                    assert sb.engine.url == LOCAL
                    assert (await sb.shell("echo ok")).stdout == "ok\n"
                    ids.append(sb.id)
            broken = pool.hosts.hosts[0]
            assert broken.down(time.monotonic()) and "no space left" in broken.down_reason
        # Tried once, then left alone while it is set aside.
        assert len([line for line in proxy.seen if "/containers/create" in line]) == 1
    await gone(ids)


async def test_when_every_host_fails_each_ones_error_is_reported_and_pauses_grow(
    sandbox_image: str, caplog
) -> None:
    config = SandboxConfig(image=sandbox_image)
    async with DockerProxy() as full, DockerProxy() as restarting:
        full.failures["/containers/create"] = (500, NO_SPACE)
        restarting.refusing = True
        hs = HostSet.of([full.url, restarting.url], timeout=10, retry_after_s=0.2)
        disk, gone_host = hs.hosts
        with caplog.at_level("WARNING", logger="qwq_agent.sandbox.hosts"):
            # Not DockerUnreachable: one host answered, and refused.
            with pytest.raises(SandboxStartError, match="no Docker host could start") as info:
                await asyncio.wait_for(hs.start(config), 60)
            assert not isinstance(info.value, DockerUnreachable)
            assert f"{full.url}: could not create the sandbox container" in str(info.value)
            assert "no space left" in str(info.value)
            assert f"{restarting.url}: " in str(info.value) and "cannot talk to" in str(info.value)
            # Both set aside: the next start tries neither, and says why.
            with pytest.raises(SandboxStartError, match=r"set aside .*no space left"):
                await asyncio.wait_for(hs.start(config), 60)
            assert len([line for line in full.seen if "/containers/create" in line]) == 1
            # Once their pause is over both are tried again; failing again, each is set aside twice as long.
            await asyncio.sleep(max(h.down_until for h in hs.hosts) - time.monotonic())
            with pytest.raises(SandboxStartError):
                await asyncio.wait_for(hs.start(config), 60)
        pauses = [r.getMessage().split("set aside for ")[1].split(" s")[0] for r in caplog.records]
        assert sorted(pauses) == ["0.2", "0.2", "0.4", "0.4"] and disk.failures == gone_host.failures == 2
        # The disk freed: its next start works there, and its pauses start over.
        full.failures.clear()
        await asyncio.sleep(disk.down_until - time.monotonic())
        sb = await asyncio.wait_for(hs.start(config), 60)
        try:
            assert sb.engine.url == full.url and disk.failures == 0
            assert (await sb.shell("echo ok")).stdout == "ok\n"
        finally:
            await sb.close()


async def test_a_start_that_ran_out_of_the_callers_time_sets_no_host_aside(sandbox_image: str) -> None:
    """Every failed start counted against its host: one cut short by the caller's own deadline (nothing
    left of it, or too little for a host that starts sandboxes in 3 s) set a healthy host aside, for
    longer at each such start, and the pool lost it for up to 5 minutes."""
    config = SandboxConfig(image=sandbox_image)  # start_timeout_s: 60 s, the host's own limit
    async with DockerProxy() as slow:
        # The proxied host has the most room: it is tried first.
        hs = HostSet.of([DockerHost(url=slow.url, capacity=8), DockerHost(url=LOCAL, capacity=2)], timeout=10)
        healthy, local = hs.hosts
        with pytest.raises(
            SandboxStartError,
            match=r"start time ran out before the container was created.*the caller's deadline came first",
        ):
            await asyncio.wait_for(hs.start(config, Deadline.after(0)), 60)
        assert not any(h.down(time.monotonic()) for h in hs.hosts)
        assert healthy.failures == local.failures == 0
        slow.delays["/start"] = 3.0  # a daemon slow to answer, within any sane start time
        with pytest.raises(
            SandboxStartError, match=rf"{slow.url}: .* did not answer POST /containers/.*/start"
        ):
            await asyncio.wait_for(hs.start(config, Deadline.after(1)), 60)
        assert not any(h.down(time.monotonic()) for h in hs.hosts)
        assert healthy.failures == local.failures == 0
        # Given the time, it starts one there.
        sb = await asyncio.wait_for(hs.start(config, Deadline.after(60)), 90)
        try:
            assert sb.engine.url == slow.url
            assert (await sb.shell("echo ok")).stdout == "ok\n"
        finally:
            await sb.close()


async def test_a_start_that_fails_the_same_on_any_host_is_raised_and_sets_none_aside(
    sandbox_image: str, monkeypatch
) -> None:
    """A bad setting (or an image whose supervisor cannot drop root) fails the start on every host: it set
    each one aside in turn, the error hidden in a list of hosts, and the pool had no host for minutes
    after the setting was fixed."""
    from qwq_agent.sandbox import container
    from qwq_agent.sandbox.image.errors import ImageBuildError

    async with DockerProxy() as proxy:
        hs = HostSet.of([proxy.url, LOCAL], timeout=10)
        # The default image, not resolved yet on these engines: its build reads QWQ_SANDBOX_BUILD first.
        monkeypatch.delenv("QWQ_SANDBOX_IMAGE", raising=False)
        monkeypatch.setattr(container, "_image_cache", {})
        monkeypatch.setenv("QWQ_SANDBOX_BUILD", "fastest")
        with pytest.raises(ImageBuildError, match="QWQ_SANDBOX_BUILD='fastest'"):
            await asyncio.wait_for(hs.start(SandboxConfig()), 60)
        monkeypatch.undo()
        # An image whose supervisor starts without root: no sandbox of it is safe, on any host.
        unsplit = _image_without_root(sandbox_image)
        try:
            with pytest.raises(SandboxConfigError, match="does not run under its own uid"):
                await asyncio.wait_for(hs.start(SandboxConfig(image=unsplit)), 60)
        finally:
            _remove_image(unsplit)
        assert [h.failures for h in hs.hosts] == [0, 0] and not any(
            h.down(time.monotonic()) for h in hs.hosts
        )
        sb = await asyncio.wait_for(hs.start(SandboxConfig(image=sandbox_image)), 60)
        try:
            assert (await sb.shell("echo ok")).stdout == "ok\n"
        finally:
            await sb.close()


def _image_without_root(base: str) -> str:
    """An image of `base` whose entrypoint gives up root before the supervisor starts (as a custom image
    that sets its own user might); its tag."""
    import io
    import uuid

    from qwq_agent.sandbox.transport import docker_from_env

    tag = f"qwq-test-unsplit:{uuid.uuid4().hex[:12]}"
    dockerfile = (
        f"FROM {base}\n"
        'ENTRYPOINT ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "/usr/bin/tini", "--", '
        '"python3", "-I", "-u", "/opt/qwq/supervisor/boot.py"]\n'
    )
    client = docker_from_env(timeout=120)
    try:
        client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
    finally:
        client.close()
    return tag


def _remove_image(tag: str) -> None:
    from qwq_agent.sandbox.transport import docker_from_env

    client = docker_from_env(timeout=60)
    try:
        client.images.remove(tag, force=True)
    finally:
        client.close()


def test_the_sessions_sandboxes_go_to_the_test_docker_host() -> None:
    """With QWQ_TEST_DOCKER_HOST set (see conftest), a default sandbox's engine is that host."""
    import os

    target = os.environ.get("QWQ_TEST_DOCKER_HOST")
    if not target:
        pytest.skip("QWQ_TEST_DOCKER_HOST is not set: the suite runs against the local engine")
    url = DockerSandbox().engine.url
    assert url == os.environ["DOCKER_HOST"]
    assert url.startswith("ssh://") if target == "ssh" else url == target


async def test_a_sandbox_over_tcp_with_mutual_tls_and_a_client_without_a_certificate_refused(
    sandbox_image: str, tmp_path
) -> None:
    import shutil as _shutil

    from qwq_agent.sandbox import TLSFiles
    from qwq_agent.testing.tls_docker import TLSDockerEndpoint, make_certs

    if _shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is missing")
    async with TLSDockerEndpoint() as ep:
        engine = DockerEngine(connector=connector_for(DockerHost(url=ep.url, tls=ep.tls)))
        async with DockerSandbox.create(SandboxConfig(image=sandbox_image), engine=engine) as sb:
            assert sb.engine.url == ep.url
            assert (await sb.python("6 * 7")).value == "42"
            assert ep.url in janitor._started
            cid = sb.id
        # A client whose certificate another CA signed is refused by the TLS handshake.
        other = tmp_path / "other"
        other.mkdir()
        stranger = make_certs(other)
        forged = TLSFiles(
            ca_cert=ep.tls.ca_cert, client_cert=stranger.client_cert, client_key=stranger.client_key
        )
        refused = DockerEngine(connector=connector_for(DockerHost(url=ep.url, tls=forged)), timeout=10)
        assert "cannot talk to the Docker engine at " + ep.url in (await refused.unreachable(10) or "")
    await gone([cid])


def test_a_plain_tcp_host_is_refused_without_tls(monkeypatch) -> None:
    from qwq_agent.sandbox import SandboxError

    monkeypatch.delenv("DOCKER_CERT_PATH", raising=False)
    with pytest.raises(SandboxError, match="needs TLS"):
        connector_for("tcp://127.0.0.1:2375")


async def test_a_pool_acquire_that_times_out_sets_no_host_aside(
    sandbox_image: str,
) -> None:
    """An acquire that gives up while its start is slow (but healthy) must not count against the host:
    its start runs on for the pool (so short acquires under a slow Docker do not each create a container
    only to remove it), succeeds, and no host is set aside nor another tried."""
    config = SandboxConfig(image=sandbox_image)  # start_timeout_s: 60 s, the host's own limit
    async with DockerProxy() as slow, DockerProxy() as other:
        slow.delays["/start"] = 3.0  # healthy, but slower than the acquire has
        hosts = [DockerHost(url=slow.url, capacity=8), DockerHost(url=other.url, capacity=2)]
        async with SandboxPool(size=0, config=config, hosts=hosts) as pool:
            with pytest.raises(SandboxAcquireTimeout) as timed_out:
                async with pool.acquire(timeout=1):
                    pass
        # `aclose()` waited for the start, which finished on the slow host (then removed: size 0).
        assert str(timed_out.value) == "no working sandbox could be acquired within 1 s"
        assert (pool.start_failures, pool.last_error) == (0, None)
        assert not any(h.down(time.monotonic()) for h in pool.hosts.hosts)
        assert [h.failures for h in pool.hosts.hosts] == [0, 0]
        assert not [line for line in other.seen if "/containers/create" in line]
        # Given the time, the slow host serves an acquire.
        async with SandboxPool(size=0, config=config, hosts=hosts) as pool:
            async with pool.acquire(timeout=60) as sb:
                assert sb.engine.url == slow.url
                assert (await sb.shell("echo ok")).stdout == "ok\n"
                cid = sb.id
    await gone([cid])
