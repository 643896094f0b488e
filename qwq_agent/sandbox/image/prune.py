"""Removing sandbox images that the current recipe no longer names.

Every supervisor or recipe change yields a new content-hash tag; the superseded images (and the
untagged layers their builds left) would otherwise pile up at ~650 MB each.
"""

from __future__ import annotations

import docker
from docker.errors import APIError, ImageNotFound

from qwq_agent.sandbox.image.recipe import BASE_REPO, Recipe
from qwq_agent.sandbox.transport import docker_from_env

FINAL_REPO = "qwq-agent-sandbox"


def stale_images(recipe: Recipe | None = None, client: docker.DockerClient | None = None) -> list[str]:
    """Ids of our images (final, base, or untagged build leftovers) other than the current recipe's."""
    recipe = recipe or Recipe()
    client = client or docker_from_env()
    keep = {recipe.image_tag(), recipe.base_tag()}
    stale = []
    for image in client.images.list(all=True):
        tags = image.tags
        ours = any(t.split(":", 1)[0] in (FINAL_REPO, BASE_REPO) for t in tags) or (
            not tags and (image.labels or {}).get("qwq-agent.image") == "1"
        )
        if ours and not keep.intersection(tags):
            stale.append(image.id)
    return stale


def prune_images(recipe: Recipe | None = None) -> tuple[list[str], list[str]]:
    """Remove stale images; returns (removed ids, ids kept because a container still uses them)."""
    client = docker_from_env()
    removed, in_use = [], []
    for image_id in stale_images(recipe, client):
        try:
            client.images.remove(image_id, force=False, noprune=False)
            removed.append(image_id)
        except ImageNotFound:
            continue  # went with a parent removed just before
        except APIError:
            in_use.append(image_id)
    return removed, in_use
