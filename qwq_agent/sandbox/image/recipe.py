"""The image recipe on disk and the content hashes that name its images.

The base image's hash covers only what goes into the Debian base (the root filesystem's recipe and
the `docker import` instructions), so a change to the supervisor (or the final Dockerfile) rebuilds
the cheap final stage and reuses the slow base. The `docker import` instructions and the final
stage's build context are hashed as the build hands them to Docker, made by the same functions the
build uses, so an input kept in Python code (an ENV of the base, the `python` shim, a file mode)
cannot be left out of the hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

IMAGE_REPO = "qwq-agent-sandbox"
BASE_REPO = "qwq-agent-sandbox-base"
LABEL = "qwq-agent.image"
HASH_LABEL = "qwq-agent.recipe-hash"

RECIPE_DIR = Path(__file__).with_name("recipe")
SUPERVISOR_PATH = Path(__file__).resolve().parents[1] / "supervisor"  # a package, shipped whole

BASE_FILES = ("packages.txt", "prune.txt", "mkrootfs.sh", "customize.sh")
FINAL_FILES = ("final.Dockerfile", "slim.Dockerfile")
PLACEHOLDER_SUPERVISOR = "placeholder_supervisor.py"

# Hex digits kept in tags: short enough to read, long enough never to collide in practice.
_HASH_LEN = 16


class RecipeError(RuntimeError):
    """The recipe directory is missing a file the build needs."""


@dataclass(frozen=True)
class Recipe:
    """Where the recipe files and the supervisor are; defaults are the ones shipped in the package."""

    directory: Path = RECIPE_DIR
    supervisor: Path = SUPERVISOR_PATH

    def file(self, name: str) -> Path:
        """Path of recipe file `name`, or `RecipeError` if it is missing."""
        path = self.directory / name
        if not path.is_file():
            raise RecipeError(f"sandbox image recipe file missing: {path}")
        return path

    def supervisor_file(self) -> Path:
        """The supervisor's entry file (`boot.py` of the package) when it exists, otherwise the placeholder."""
        if self.supervisor.is_dir() and (self.supervisor / "boot.py").is_file():
            return self.supervisor / "boot.py"
        if self.supervisor.is_file():
            return self.supervisor
        return self.file(PLACEHOLDER_SUPERVISOR)

    def supervisor_files(self) -> list[tuple[str, bytes]]:
        """(name, content) of every file of the supervisor package, sorted; the placeholder as `boot.py`."""
        if self.supervisor.is_dir() and (self.supervisor / "boot.py").is_file():
            return [(p.name, p.read_bytes()) for p in sorted(self.supervisor.glob("*.py"))]
        return [("boot.py", self.supervisor_file().read_bytes())]

    def uses_placeholder(self) -> bool:
        """True when the supervisor does not exist yet and the placeholder stands in for it."""
        return not (self.supervisor.is_file() or (self.supervisor / "boot.py").is_file())

    def base_hash(self) -> str:
        """Content hash of everything that goes into the Debian base image.

        The root filesystem's recipe files and the instructions given to `docker import --change`.
        """
        from qwq_agent.sandbox.image.debian import import_changes  # debian imports this module

        parts = [(name, self.file(name).read_bytes()) for name in BASE_FILES]
        # The LABEL instruction carries this very hash, hence blank here.
        parts.append(("docker import --change", json.dumps(import_changes("")).encode()))
        return _digest(parts)

    def image_hash(self) -> str:
        """Content hash of the whole recipe: the base and the final stage's build context.

        The context is the exact tar `docker build` is sent on either build path (its Dockerfile,
        the supervisor, the `python` shim, every file's mode and place).
        """
        from qwq_agent.sandbox.image.final import recipe_context  # final imports this module

        parts = [("base", self.base_hash().encode())]
        parts += [(f"context/{name}", recipe_context(self, name).getvalue()) for name in FINAL_FILES]
        return _digest(parts)

    def base_tag(self) -> str:
        """Tag of the base image, `qwq-agent-sandbox-base:<base-hash>`."""
        return f"{BASE_REPO}:{self.base_hash()}"

    def image_tag(self) -> str:
        """Tag of the final image, `qwq-agent-sandbox:<hash>`."""
        return f"{IMAGE_REPO}:{self.image_hash()}"


def _digest(parts: Iterable[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for name, data in parts:
        # Length-prefixed so that moving bytes between files changes the hash.
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:_HASH_LEN]
