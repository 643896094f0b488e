"""Workspaces that real work leaves behind, which once broke a sandbox call or the whole sandbox.

Names that are not UTF-8, trees of unreadable directories, a venv's links out of the workspace, folders
of many empty files, a download while the tmpfs mounts hold most of the memory, and threads a cell left
parked in the interpreter. Each test checks the call's answer and that the sandbox and its state live on.
"""

from __future__ import annotations

import pytest

from qwq_agent.sandbox import DockerSandbox

pytestmark = [pytest.mark.docker, pytest.mark.asyncio(loop_scope="session")]


async def test_a_name_that_is_not_utf8_is_shown_escaped(shared_sandbox: DockerSandbox) -> None:
    sb = shared_sandbox
    r = await sb.shell(
        "mkdir -p /workspace/latin1 && cd /workspace/latin1 && touch $'r\\xe9sum\\xe9.txt' && mkfifo $'p\\xff'"
    )
    assert r.exit_code == 0, r
    try:
        listing = (await sb.view("/workspace/latin1")).output
        assert "/workspace/latin1/r\\xe9sum\\xe9.txt" in listing
        listing.encode("utf-8")  # what the model request does with it
        snap = await sb.snapshot()
        assert any("latin1/p\\xff" in s for s in snap.skipped), snap.skipped
        snap.model_dump_json()
    finally:
        await sb.shell("rm -rf /workspace/latin1")
