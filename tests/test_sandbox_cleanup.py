"""What failed, late or cancelled starts leave behind, the warm pool after outages and at close, and the
janitor's limits (owners in other PID namespaces, orphans the engine cannot remove).

Faults are real: containers paused through the engine, and `DockerProxy`, a unix socket in front of the
real engine that refuses connections, holds answers back or fails a removal. Every test is guarded by a
generous `wait_for`, so a regression fails instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from docker_proxy import DockerProxy

from qwq_agent.sandbox import (
    DockerSandbox,
    DockerUnreachable,
    SandboxConfig,
)
from qwq_agent.sandbox.engine import DockerEngine
from qwq_agent.sandbox.errors import DockerAPIError

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


async def removed(engine: DockerEngine, cid: str) -> None:
    """Return once the container is gone (the engine's own wait, bounded)."""
    try:
        await engine.request("POST", f"/containers/{cid}/wait", params={"condition": "removed"}, timeout=60)
    except DockerAPIError as exc:
        if exc.status != 404:
            raise


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
    monkeypatch.setattr(container, "_image_cache", {"default": f"qwq-agent-sandbox:{gone_tag}"})
    async with DockerSandbox.create(SandboxConfig()) as sb:
        assert (await sb.shell("echo ok")).stdout == "ok\n"
    assert container._image_cache["default"] == sandbox_image
