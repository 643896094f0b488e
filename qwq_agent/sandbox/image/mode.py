"""Which build path to take: the Debian path (no registry) or the python:3.12-slim Dockerfile."""

from __future__ import annotations

import docker

from qwq_agent.sandbox.connector import Connector
from qwq_agent.sandbox.transport import docker_from_env

SLIM_IMAGE = "python:3.12-slim"
MODES = ("auto", "debian", "dockerfile")
# The daemon answers at once when DNS or the network is missing; the cap is for a registry that hangs.
PROBE_TIMEOUT_S = 5


def requested_mode() -> str:
    """`QWQ_SANDBOX_BUILD` (auto, debian or dockerfile; default auto), validated.

    Raises `SettingsError` (a `ValueError`) for another value: the user's input, which the CLI reports
    as such however deep the build wrapped it.
    """
    from qwq_agent.settings import SettingsError, get_settings

    mode = get_settings().sandbox_build
    if mode not in MODES:
        raise SettingsError(f"QWQ_SANDBOX_BUILD={mode!r}: expected one of {', '.join(MODES)}")
    return mode


def registry_answers(client: docker.DockerClient, connector: Connector | None = None) -> bool:
    """True when python:3.12-slim is in the engine's store or its manifest can be fetched within a few
    seconds; `connector` is the engine `client` talks to (the one that would pull; default `DOCKER_HOST`)."""
    try:
        client.images.get(SLIM_IMAGE)
        return True
    except docker.errors.ImageNotFound:
        pass
    probe = (
        connector.docker_client(PROBE_TIMEOUT_S) if connector else docker_from_env(timeout=PROBE_TIMEOUT_S)
    )
    try:
        probe.api.inspect_distribution(SLIM_IMAGE)
        return True
    except Exception:  # any failure (no DNS, refused, timeout, auth) means: no usable registry
        return False
    finally:
        probe.close()


def choose_mode(client: docker.DockerClient, connector: Connector | None = None) -> str:
    """Resolve `auto` to `debian` or `dockerfile` for the engine `client` (of `connector`) talks to;
    explicit choices pass through."""
    mode = requested_mode()
    if mode != "auto":
        return mode
    return "dockerfile" if registry_answers(client, connector) else "debian"
