"""`qwq-agent sandbox prune --images` removes what older recipes built and keeps the current image."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import docker
import pytest

# Removes every sandbox image the current recipe does not name, including one another test process may
# have just built: run in the serial pass (conftest.py).
pytestmark = [pytest.mark.docker, pytest.mark.serial]


def test_stale_images_go_and_the_current_one_stays(sandbox_image):
    client = docker.from_env()
    dockerfile = f"FROM {sandbox_image}\nLABEL qwq-agent.test-stale=1\n".encode()
    stale, _ = client.images.build(
        fileobj=io.BytesIO(dockerfile), tag="qwq-agent-sandbox:stale-test", rm=True
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "qwq_agent.cli.main", "sandbox", "prune", "--images", "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert stale.id in report["images_removed"]
        with pytest.raises(docker.errors.ImageNotFound):
            client.images.get("qwq-agent-sandbox:stale-test")
        assert client.images.get(sandbox_image)  # the current recipe's image is kept
    finally:
        try:
            client.images.remove("qwq-agent-sandbox:stale-test", force=True)
        except docker.errors.ImageNotFound:
            pass
