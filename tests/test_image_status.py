"""Issue 13: `run` builds a missing sandbox image with a live status (elapsed time, the build's latest
lines) and says nothing when the image is cached."""

from __future__ import annotations

import io
import shutil
import uuid

import docker
import pytest
from rich.console import Console

from qwq_agent.cli.image_status import ensure_run_image
from qwq_agent.sandbox.image import Recipe, image_exists
from qwq_agent.sandbox.image.recipe import SUPERVISOR_PATH

pytestmark = pytest.mark.docker


async def test_a_cached_image_is_used_silently(sandbox_image, monkeypatch):
    monkeypatch.delenv("QWQ_SANDBOX_IMAGE", raising=False)
    out = io.StringIO()
    tag = await ensure_run_image(Console(file=out, force_terminal=True, width=120))
    assert tag == Recipe().image_tag() and image_exists(tag)
    assert out.getvalue() == ""


async def test_a_missing_image_is_built_with_a_live_status(sandbox_image, tmp_path, monkeypatch):
    monkeypatch.delenv("QWQ_SANDBOX_IMAGE", raising=False)
    # A supervisor with one more file: a recipe whose image does not exist yet (the base is reused).
    supervisor = tmp_path / "supervisor"
    shutil.copytree(SUPERVISOR_PATH, supervisor, ignore=shutil.ignore_patterns("__pycache__"))
    (supervisor / "zz_test_marker.py").write_text(f"# {uuid.uuid4().hex}\n")
    recipe = Recipe(supervisor=supervisor)
    tag = recipe.image_tag()
    assert not image_exists(tag)
    out = io.StringIO()
    try:
        built = await ensure_run_image(
            Console(file=out, force_terminal=True, width=160, color_system=None), recipe
        )
        assert built == tag and image_exists(tag)
        screen = out.getvalue()
        assert "building the sandbox image (once; cached afterwards) · " in screen  # status + elapsed
        assert f"building {tag}" in screen  # the build's own progress lines, under the status
        assert f"sandbox image {tag} built in" in screen
    finally:
        if image_exists(tag):
            docker.from_env().images.remove(tag, force=True)
