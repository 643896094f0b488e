"""Shared fixtures.

Docker: `sandbox_image` builds/finds the sandbox image once per session; `shared_sandbox` is one default
sandbox for tests whose state does not matter; and the session ends by checking that no container
labelled as ours and owned by this test process is left (then removing any it found).
"""

from __future__ import annotations

import os

import pytest
import pytest_asyncio


def _docker_problem() -> str | None:
    try:
        import docker

        docker.from_env(timeout=5).ping()
    except Exception as exc:
        return f"Docker engine not reachable: {exc}"
    return None


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
    import docker

    from qwq_agent.sandbox.janitor import L_PID, LABEL

    client = docker.from_env()
    left = client.api.containers(all=True, filters={"label": [f"{LABEL}=1", f"{L_PID}={os.getpid()}"]})
    for c in left:
        client.api.remove_container(c["Id"], force=True)
    assert not left, f"sandbox containers leaked by the test session: {[c['Names'] for c in left]}"
