"""git on a test's repository, as a developer with a name and an e-mail (so that commits work anywhere)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def git(repo: Path, *args: str, data: str | None = None) -> str:
    """`git -C repo -c user.name=Dev -c user.email=dev@example.com ARGS`, with `data` on stdin; its
    stdout. A failure raises `CalledProcessError`."""
    done = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=Dev", "-c", "user.email=dev@example.com", *args],
        input=data, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return done.stdout


def host_git(folder: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """git as the operator runs it in a copy-back's `folder`, with `home` as HOME and no system or global
    config of this machine's; the finished process, whatever its status."""
    env = {**os.environ, "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
    return subprocess.run(["git", *args], cwd=folder, env=env, capture_output=True, text=True, timeout=60)
