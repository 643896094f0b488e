"""Shared fixtures.

Docker: `sandbox_image` builds/finds the sandbox image once per session; `shared_sandbox` is one default
sandbox for tests whose state does not matter; and the session ends by checking that no container
labelled as ours and owned by this test process is left (then removing any it found).

`QWQ_TEST_DOCKER_HOST=ssh` runs every sandbox of the session through this machine's engine reached over
ssh (an sshd on 127.0.0.1 started for the session, see `qwq_agent.testing.sshd`); any other value is
used as `DOCKER_HOST` for the sandboxes (e.g. `ssh://docker@buildhost`). The image is resolved on the
local engine first.
"""

from __future__ import annotations

import os

import pytest
import pytest_asyncio


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


@pytest.fixture(scope="session", autouse=True)
def _no_leaked_sandboxes():
    """Fails the session if a sandbox container created by this process outlived its test."""
    yield
    if _docker_problem():
        return
    from qwq_agent.sandbox.janitor import L_PID, LABEL

    client = _docker_client()
    left = client.api.containers(all=True, filters={"label": [f"{LABEL}=1", f"{L_PID}={os.getpid()}"]})
    for c in left:
        client.api.remove_container(c["Id"], force=True)
    assert not left, f"sandbox containers leaked by the test session: {[c['Names'] for c in left]}"
