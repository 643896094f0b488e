"""Stage 2: the final image, `docker build` of a tiny context (a Dockerfile and the supervisor).

The context is assembled in memory so file modes are exactly what the image needs, whatever they
are in the checkout: the supervisor lands root-owned and world-readable.
"""

from __future__ import annotations

import io
import tarfile

import docker

from qwq_agent.sandbox.image.errors import ImageBuildError
from qwq_agent.sandbox.image.progress import Stopwatch
from qwq_agent.sandbox.image.recipe import Recipe


def build_context(dockerfile: bytes, supervisor: bytes) -> io.BytesIO:
    """A tar build context holding `Dockerfile` and `supervisor.py` (mode 0644)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("Dockerfile", dockerfile), ("supervisor.py", supervisor)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def build_final(
    client: docker.DockerClient,
    recipe: Recipe,
    log: Stopwatch,
    *,
    dockerfile: str,
    buildargs: dict[str, str] | None = None,
    pull: bool = False,
) -> str:
    """Build `dockerfile` (a recipe file name) with the supervisor into the final tag; return it."""
    tag = recipe.image_tag()
    supervisor = recipe.supervisor_file()
    if recipe.uses_placeholder():
        log(f"warning: {recipe.supervisor} does not exist; using the placeholder supervisor")
    context = build_context(recipe.file(dockerfile).read_bytes(), supervisor.read_bytes())
    log(f"stage final: docker build {dockerfile} -> {tag}")
    # Labels go in as build args to the Dockerfile's single LABEL line: the `labels=` API parameter
    # would add one committed step per label.
    args = {**(buildargs or {}), "RECIPE_HASH": recipe.image_hash()}
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
            if "error" in chunk:
                raise ImageBuildError(f"docker build of {dockerfile} failed: {chunk['error'].strip()}")
            line = str(chunk.get("stream", "")).strip()
            if line.startswith("Step "):
                log(f"  {line}")
    except docker.errors.APIError as exc:
        raise ImageBuildError(f"docker build of {dockerfile} failed: {exc}") from exc
    return tag
