"""Freezing a sandbox (`docker pause`) in tests: the way a hung container looks to the host."""

from __future__ import annotations

from typing import Any

from qwq_agent.sandbox.errors import DockerAPIError

# runc freezes the cgroup and gives up when a process does not stop in time ("unable to freeze"),
# which a loaded machine sees now and then: the set-up is tried again, a bounded number of times.
_TRIES = 5


async def freeze(engine: Any, container_id: str) -> None:
    """Pause `container_id` through `engine` (the project's Docker engine client)."""
    for attempt in range(_TRIES):
        try:
            await engine.request("POST", f"/containers/{container_id}/pause")
            return
        except DockerAPIError as exc:
            if "unable to freeze" not in str(exc) or attempt == _TRIES - 1:
                raise


def freeze_sync(client: Any, container_id: str) -> None:
    """`freeze` through docker-py (`client`), for a test that pauses while its event loop must not run."""
    import docker.errors

    for attempt in range(_TRIES):
        try:
            client.api.pause(container_id)
            return
        except docker.errors.APIError as exc:
            if "unable to freeze" not in str(exc) or attempt == _TRIES - 1:
                raise
