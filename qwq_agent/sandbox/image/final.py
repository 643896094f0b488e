"""Stage 2: the final image, `docker build` of a tiny context (a Dockerfile and the supervisor).

The context is assembled in memory so file modes are exactly what the image needs, whatever they
are in the checkout: the supervisor lands root-owned and world-readable.
"""

from __future__ import annotations

import io
import tarfile
import threading

import docker

from qwq_agent.sandbox.image.errors import BuildStopped, ImageBuildError
from qwq_agent.sandbox.image.progress import Stopwatch
from qwq_agent.sandbox.image.recipe import Recipe

# `python` for models that type it; python3 is found on PATH in both the Debian and the slim image.
PYTHON_SHIM = b'#!/bin/sh\nexec python3 "$@"\n'


def build_context(dockerfile: bytes, supervisor: bytes | list[tuple[str, bytes]]) -> io.BytesIO:
    """A tar build context: `Dockerfile` and `root/`, the tree the Dockerfile copies onto `/`.

    `root/` holds the supervisor package in /opt/qwq/supervisor/ (mode 0644) and the `python` shim in
    /usr/local/bin (0755). A single file (old call style) is shipped as the package's `boot.py`.
    """
    files = [("boot.py", supervisor)] if isinstance(supervisor, bytes) else supervisor
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add(name: str, data: bytes | None, mode: int) -> None:
            info = tarfile.TarInfo(name)
            info.mode = mode
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                return
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("Dockerfile", dockerfile, 0o644)
        for directory in ("root", "root/opt", "root/opt/qwq", "root/opt/qwq/supervisor", "root/usr",
                          "root/usr/local", "root/usr/local/bin"):  # fmt: skip
            add(directory, None, 0o755)
        for name, data in files:
            add(f"root/opt/qwq/supervisor/{name}", data, 0o644)
        add("root/usr/local/bin/python", PYTHON_SHIM, 0o755)
    buf.seek(0)
    return buf


def recipe_context(recipe: Recipe, dockerfile: str) -> io.BytesIO:
    """The build context `build_final` sends for `dockerfile` (a recipe file name).

    `Recipe.image_hash` hashes these very bytes, so whatever the context gains or changes (a file, a
    mode, the shim) names a new image.
    """
    return build_context(recipe.file(dockerfile).read_bytes(), recipe.supervisor_files())


def build_final(
    client: docker.DockerClient,
    recipe: Recipe,
    log: Stopwatch,
    *,
    dockerfile: str,
    buildargs: dict[str, str] | None = None,
    pull: bool = False,
    stop: threading.Event | None = None,
) -> str:
    """Build `dockerfile` (a recipe file name) with the supervisor into the final tag; return it.

    `stop` set ends it with `BuildStopped` at the build's next output (before any, when already set).
    """
    tag = recipe.image_tag()
    if recipe.uses_placeholder():
        log(f"warning: {recipe.supervisor} does not exist; using the placeholder supervisor")
    context = recipe_context(recipe, dockerfile)
    log(f"stage final: docker build {dockerfile} -> {tag}")
    # Labels go in as build args to the Dockerfile's single LABEL line: the `labels=` API parameter
    # would add one committed step per label.
    args = {**(buildargs or {}), "RECIPE_HASH": recipe.image_hash()}
    if stop is not None and stop.is_set():
        raise BuildStopped()
    try:
        for chunk in client.api.build(
            fileobj=context,
            custom_context=True,
            tag=tag,
            buildargs=args,
            pull=pull,
            rm=True,
            forcerm=True,
            decode=True,
        ):
            if stop is not None and stop.is_set():
                raise BuildStopped()
            if "error" in chunk:
                raise ImageBuildError(f"docker build of {dockerfile} failed: {chunk['error'].strip()}")
            line = str(chunk.get("stream", "")).strip()
            if line.startswith("Step "):
                log(f"  {line}")
    except docker.errors.APIError as exc:
        raise ImageBuildError(f"docker build of {dockerfile} failed: {exc}") from exc
    return tag
