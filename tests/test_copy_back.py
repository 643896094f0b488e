"""`--copy-back DIR`: what a hostile or merely busy sandbox can make of the copy written on the host.

Real parts only: a real sandbox, real folders on the host, the CLI's own `copy_back` printing to a console.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from qwq_agent.agent.workspace import open_sandbox
from qwq_agent.cli.branch_cmd import copy_back

pytestmark = [pytest.mark.docker]


async def _copy_back(sandbox, dest: Path) -> tuple[bool, str]:
    """Copy /workspace into `dest` as the CLI does; whether it worked and what it printed (one line each)."""
    out = io.StringIO()
    ok = await copy_back(sandbox, dest, Console(file=out, width=100_000), "the workspace")
    return ok, out.getvalue()


def _project(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README.md").write_text("hello\n")
    return repo


async def test_a_link_into_a_folder_beside_the_copy_is_left_out_and_named(sandbox_image, tmp_path) -> None:
    """`workspace/notes.md -> ../otherproject/secrets.env` stays inside DIR but leaves DIR/workspace: kept,
    the copied-back workspace aimed at the operator's other files in DIR (`cat` showed them, `>>` wrote them)."""
    dest = tmp_path / "out"
    (dest / "otherproject").mkdir(parents=True)
    (dest / "otherproject" / "secrets.env").write_text("API_KEY=operator-secret\n")
    async with open_sandbox(workspace=_project(tmp_path)) as sb:
        r = await sb.shell(
            "ln -s ../otherproject/secrets.env notes.md && mkdir docs && ln -s ../README.md docs/readme "
            "&& ln -s ../workspace/README.md byname",
            timeout=60,
        )
        assert r.exit_code == 0, r
        ok, said = await _copy_back(sb, dest)
    ws = dest / "workspace"
    assert ok, said
    assert "notes.md" not in [p.name for p in ws.iterdir()]
    assert "workspace/notes.md -> ../otherproject/secrets.env (leads out of the destination)" in said
    # Links that stay inside the folder copied back are kept, also one that climbs out and back by name.
    assert (ws / "docs" / "readme").read_text() == "hello\n" and (ws / "byname").read_text() == "hello\n"
    assert sorted(p.name for p in dest.iterdir()) == ["otherproject", "workspace"]
    assert [p.name for p in (dest / "otherproject").iterdir()] == ["secrets.env"]
