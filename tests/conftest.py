"""Shared fixtures.

Docker: `sandbox_image` builds/finds the sandbox image once per session; `shared_sandbox` is one default
sandbox for tests whose state does not matter; and the session ends by checking that no container
labelled as ours and owned by this test process is left (then removing any it found).

`QWQ_TEST_DOCKER_HOST=ssh` runs every sandbox of the session through this machine's engine reached over
ssh (an sshd on 127.0.0.1 started for the session, see `qwq_agent.testing.sshd`); any other value is
used as `DOCKER_HOST` for the sandboxes (e.g. `ssh://docker@buildhost`). The image is resolved on the
local engine first.

Parallel runs (pytest-xdist, `-n N`, as `scripts/test.sh` does): every worker is its own test process, so
its sandboxes carry its own pid and the janitor of another worker leaves them alone (their owner is alive).
Each worker lists what it leaked at its session end (before its atexit clean-up could hide it) and hands
the list to the controller, which fails the run once, after all workers are down. Tests marked `serial`
act on the whole engine (pruning images, planting orphans for the janitor to find): another test process
running beside them could change what they see, so `scripts/test.sh` runs them in a pass of their own
after the parallel one (`-m serial`, no workers).
"""

from __future__ import annotations

import os

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, settings

# Timings are not asserted in tests: hypothesis' per-example deadline (200 ms) and its too-slow check
# failed property tests on a loaded CI machine (one example took 406 ms once, 5 ms again).
settings.register_profile("qwq", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("qwq")


def _docker_client(timeout: float = 30.0):
    """docker-py for the sandboxes' engine (through our transport, so an ssh:// DOCKER_HOST works)."""
    from qwq_agent.sandbox.transport import default_connector

    return default_connector().docker_client(timeout)


def _docker_problem() -> str | None:
    try:
        _docker_client(5).ping()
    except Exception as exc:
        return f"Docker engine not reachable: {exc}"
    return None


@pytest.fixture(scope="session", autouse=True)
def _test_docker_host():
    """Points the session's sandboxes at `QWQ_TEST_DOCKER_HOST` (see the module docstring)."""
    target = os.environ.get("QWQ_TEST_DOCKER_HOST", "")
    if not target:
        yield None
        return
    from qwq_agent.testing import sshd

    patch = pytest.MonkeyPatch()
    if not os.environ.get("QWQ_SANDBOX_IMAGE") and not _docker_problem():
        from qwq_agent.sandbox.image import ensure_image

        patch.setenv("QWQ_SANDBOX_IMAGE", ensure_image(progress=lambda *a, **k: None))
    endpoint = None
    if target == "ssh":
        problem = sshd.unavailable()
        if problem:
            raise pytest.UsageError(f"QWQ_TEST_DOCKER_HOST=ssh: {problem}")
        endpoint = sshd.SSHDockerEndpoint().start()
        patch.setenv("QWQ_DOCKER_SSH_CONFIG", str(endpoint.ssh_config))
        target = endpoint.url
    patch.setenv("DOCKER_HOST", target)
    try:
        yield target
    finally:
        patch.undo()
        if endpoint is not None:
            endpoint.stop()


@pytest.fixture(scope="session")
def sandbox_image() -> str:
    """The sandbox image tag (env QWQ_SANDBOX_IMAGE, else built on first use); skips without Docker."""
    problem = _docker_problem()
    if problem:
        pytest.skip(problem)
    if os.environ.get("QWQ_SANDBOX_IMAGE"):
        return os.environ["QWQ_SANDBOX_IMAGE"]
    from qwq_agent.sandbox.image import ensure_image

    return ensure_image(progress=lambda *a, **k: None)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def shared_sandbox(sandbox_image: str):
    """One sandbox with the default config, shared by tests that do not depend on its state."""
    from qwq_agent.sandbox import DockerSandbox, SandboxConfig

    async with DockerSandbox.create(SandboxConfig(image=sandbox_image)) as sb:
        yield sb


def _leaked_by(pids: list[int]) -> list[str]:
    """Names of our containers owned by these processes, after removing them (a leak fails the run, but
    is not left behind for the next one)."""
    import docker.errors

    from qwq_agent.sandbox.janitor import L_PID, LABEL

    client = _docker_client()
    names = []
    for pid in pids:
        for c in client.api.containers(all=True, filters={"label": [f"{LABEL}=1", f"{L_PID}={pid}"]}):
            try:
                client.api.remove_container(c["Id"], force=True)
            except docker.errors.NotFound:
                pass  # it was on its way out (auto-removed once its owner's attach stream closed)
            names.append(f"{(c.get('Names') or ['?'])[0].lstrip('/')} (owner pid {pid})")
    return names


@pytest.fixture(scope="session", autouse=True)
def _no_leaked_sandboxes(request: pytest.FixtureRequest):
    """Fails the session if a sandbox container created by this process outlived its test. In an xdist
    worker the finding goes to the controller instead (`pytest_sessionfinish` below fails the run)."""
    yield
    if _docker_problem():
        return
    left = _leaked_by([os.getpid()])
    workeroutput = getattr(request.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["qwq_leaked"] = left
        return
    assert not left, f"sandbox containers leaked by the test session: {left}"


_LEAKS_KEY = pytest.StashKey[dict[str, list[str]]]()
_WORKER_PIDS_KEY = pytest.StashKey[list[int]]()


def pytest_configure(config: pytest.Config) -> None:
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["qwq_pid"] = os.getpid()
    config.stash[_LEAKS_KEY] = {}
    config.stash[_WORKER_PIDS_KEY] = []


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """(xdist controller) A worker is done: keep what it leaked and its pid for the final check."""
    out = getattr(node, "workeroutput", None) or {}
    worker = str(getattr(node, "gateway", None) and node.gateway.id)
    if out.get("qwq_leaked"):
        node.config.stash[_LEAKS_KEY][worker] = list(out["qwq_leaked"])
    if "qwq_pid" in out:
        node.config.stash[_WORKER_PIDS_KEY].append(int(out["qwq_pid"]))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """(xdist controller) Once, after every worker is down: fail the run if any worker leaked a sandbox,
    or if one of theirs is there still (started after its check; a worker that crashes fails the run
    anyway)."""
    config = session.config
    if getattr(config, "workeroutput", None) is not None:
        return  # a worker: its fixture above reported to the controller
    leaks = dict(config.stash.get(_LEAKS_KEY, {}))
    pids = config.stash.get(_WORKER_PIDS_KEY, [])
    if pids and not _docker_problem():
        still = _leaked_by(pids)
        if still:
            leaks["after the workers"] = still
    if not leaks:
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"{worker}: {', '.join(names)}" for worker, names in leaks.items()]
    if reporter is not None:
        reporter.line("")  # after the progress line, which xdist leaves open
        reporter.write_sep("=", "sandbox containers leaked by the test session", red=True)
        for line in lines:
            reporter.write_line(line)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
