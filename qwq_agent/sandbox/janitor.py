"""Ownership labels on every sandbox container, and the janitor that removes orphans.

A container is an orphan when its owner process is gone (same host, boot and PID namespace; pid dead or
reused) or, where its owner cannot be looked up from here, its expiry has passed: an owner seen alive
keeps its containers whatever the wall clock says (it can step forward: a VM resumed from suspend). An
owner in another PID namespace (a container sharing the host's hostname and Docker socket) has pids
this process cannot see: only its expiry tells, as for another host.
An owner of the same hostname but another boot id is either this host before a reboot or another machine
of the same name sharing the engine (ssh://, tcp://), whose live sandboxes must not be touched: only a
container that has stopped running (a reboot stops them all) or its expiry tells.

The janitor runs once per process and Docker engine before the first sandbox starts there and, via
atexit, removes whatever this process still owns on each engine on the way out.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import socket
import threading
import time
from typing import Any

from pydantic import BaseModel

from qwq_agent.process_identity import BOOT_ID, PID_NS, is_decimal, is_gone, same_pid_space
from qwq_agent.process_identity import start_ticks as _start_ticks
from qwq_agent.sandbox.errors import SandboxError

log = logging.getLogger(__name__)

LABEL = "qwq-agent"
L_PID, L_START, L_BOOT, L_HOST, L_PIDNS, L_EXPIRES, L_CREATED = (
    f"{LABEL}.owner-pid",
    f"{LABEL}.owner-start",
    f"{LABEL}.owner-boot",
    f"{LABEL}.owner-host",
    f"{LABEL}.owner-pidns",
    f"{LABEL}.expires",
    f"{LABEL}.created",
)
EXPIRY_GRACE_S = 60.0


HOSTNAME = socket.gethostname()


def owner_labels(lifetime_s: float) -> dict[str, str]:
    """Labels for a new container owned by this process, expiring after its lifetime plus a grace."""
    now = time.time()
    pid = os.getpid()
    return {
        LABEL: "1",
        L_PID: str(pid),
        L_START: _start_ticks(pid) or "",
        L_BOOT: BOOT_ID,
        L_HOST: HOSTNAME,
        L_PIDNS: PID_NS,
        L_CREATED: f"{now:.3f}",
        L_EXPIRES: f"{now + lifetime_s + EXPIRY_GRACE_S:.3f}",
    }


# Container states (`State` in the engine's listing) of a container that ran and stopped. Not "created":
# a live owner's sandbox is in that state between its create and its start.
STOPPED_STATES = frozenset({"exited", "dead"})


def orphan_reason(labels: dict[str, str], now: float | None = None, state: str | None = None) -> str | None:
    """Why a container with these labels is an orphan, or None while its owner may still use it.

    `state` is the container's state as the engine lists it (None: unknown, judged as running).
    """
    now = time.time() if now is None else now
    try:
        expired = "expired" if float(labels.get(L_EXPIRES, "0")) < now else None
    except ValueError:
        return "bad expiry label"
    if labels.get(L_HOST) != HOSTNAME:
        return expired  # another host's process: only its expiry tells
    if labels.get(L_BOOT) != BOOT_ID:
        # This host before a reboot, or another machine with the same hostname on a shared engine: the
        # labels cannot tell them apart, and that machine's owner may be alive. A reboot stopped every
        # container of the old boot, so a stopped one is sound proof; a running one is left to expiry.
        if state in STOPPED_STATES:
            return "stopped; its owner's host rebooted since (or is another machine)"
        return expired
    if not same_pid_space(labels.get(L_BOOT), labels.get(L_PIDNS)):
        # Another PID namespace (or an unknown one: labels older than this one) on the same host and boot:
        # its pids are not ours to look up, and a live owner would look dead. Only its expiry tells.
        return expired
    try:
        pid = int(labels.get(L_PID, ""))
    except ValueError:
        return "bad owner label"
    if is_gone(pid, labels.get(L_START, "")):
        return "owner process is gone"
    # The owner lives: the expiry, on the wall clock, is not asked. A clock stepped forward (a VM resumed
    # from suspend, an NTP correction) would make its sandboxes look expired mid-run; their supervisor
    # ends them at their lifetime itself (on its monotonic clock) and the owner removes what it owns.
    return None


def owned_by_me(labels: dict[str, str]) -> bool:
    return (
        labels.get(L_PID) == str(os.getpid())
        and labels.get(L_BOOT) == BOOT_ID
        and labels.get(L_HOST) == HOSTNAME
        and labels.get(L_PIDNS) == PID_NS  # the same pid number in another namespace is another process
    )


class SandboxInfo(BaseModel):
    """One container of ours as `ls` and `prune` report it."""

    id: str
    name: str
    status: str
    owner_pid: int | None
    created: float | None
    expires: float | None
    orphan: str | None


class PruneIncomplete(SandboxError):
    """An explicit `prune()` could not remove some containers; the others were removed.

    `removed` lists what went, `failed` each container left with the engine's reason.
    """

    def __init__(self, removed: list[SandboxInfo], failed: list[tuple[SandboxInfo, str]]) -> None:
        reasons = "; ".join(f"{info.id}: {why}" for info, why in failed)
        super().__init__(f"could not remove {len(failed)} sandbox container(s): {reasons}")
        self.removed = removed
        self.failed = failed


def _client(timeout: float = 30.0) -> Any:
    """docker-py for the `DOCKER_HOST` engine, through our own transport (so ssh:// works too)."""
    from qwq_agent.sandbox.transport import default_connector

    return default_connector().docker_client(timeout)


def list_sandboxes(client: Any = None) -> list[SandboxInfo]:
    """Every container labelled as ours, running or not."""
    client = client or _client()
    out = []
    for c in client.api.containers(all=True, filters={"label": f"{LABEL}=1"}):
        labels = c.get("Labels") or {}
        out.append(
            SandboxInfo(
                id=c["Id"][:12],
                name=(c.get("Names") or ["?"])[0].lstrip("/"),
                status=c.get("Status", ""),
                owner_pid=_label_pid(labels),
                created=_label_time(labels, L_CREATED),
                expires=_label_time(labels, L_EXPIRES),
                orphan=orphan_reason(labels, state=c.get("State")),
            )
        )
    return out


# Labels are anyone's to write (`docker run --label`, another tool): one that is not what `owner_labels`
# writes is shown as unknown, never a failure of the whole listing.


def _label_pid(labels: dict[str, str]) -> int | None:
    """The owner pid label's value; None when missing or not a number in ASCII digits."""
    text = labels.get(L_PID, "")
    return int(text) if is_decimal(text) else None


def _label_time(labels: dict[str, str], key: str) -> float | None:
    """A time label's value (seconds since the epoch); None when missing or no finite number."""
    try:
        value = float(labels.get(key, ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def prune(
    *,
    everything: bool = False,
    mine: bool = False,
    client: Any = None,
    deadline: float | None = None,
    skip_failures: bool = False,
) -> list[SandboxInfo]:
    """Remove orphans (or, with `everything`, all of ours; with `mine`, this process's). Returns them.

    Failing to list raises. A container the engine fails to remove (a busy filesystem, a process stuck
    in the kernel) does not stop the others; once they are done, `PruneIncomplete` names what is left.
    With `skip_failures` (the start-up and exit janitor) such a container is logged and skipped instead:
    it is garbage, and must not stop the next sandbox from starting. Past `deadline`
    (`time.monotonic()`), the rest are left for a later run; each removal gets only the time left of it
    (docker-py would give it the client's whole timeout, however little was left).
    """
    client = client or _client()
    own_timeout = client.api.timeout
    try:
        return _prune(
            client, everything=everything, mine=mine, deadline=deadline, skip_failures=skip_failures
        )
    finally:
        client.api.timeout = own_timeout


def _prune(
    client: Any, *, everything: bool, mine: bool, deadline: float | None, skip_failures: bool
) -> list[SandboxInfo]:
    removed = []
    failed: list[tuple[SandboxInfo, str]] = []
    base_timeout = client.api.timeout
    for c in client.api.containers(all=True, filters={"label": f"{LABEL}=1"}):
        labels = c.get("Labels") or {}
        orphan = orphan_reason(labels, state=c.get("State"))
        if not (everything or (mine and owned_by_me(labels)) or (not mine and orphan)):
            continue
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("sandbox janitor: out of time; the remaining orphans are left for a later run")
                break
            client.api.timeout = left if base_timeout is None else min(left, base_timeout)
        info = SandboxInfo(
            id=c["Id"][:12],
            name=(c.get("Names") or ["?"])[0].lstrip("/"),
            status=c.get("Status", ""),
            owner_pid=_label_pid(labels),
            created=None,
            expires=None,
            orphan=orphan or ("owned" if mine else "all"),
        )
        try:
            client.api.remove_container(c["Id"], force=True)
        except Exception as exc:  # already gone, or removal in progress: done; anything else: failed
            if getattr(getattr(exc, "response", None), "status_code", None) not in (404, 409):
                if skip_failures:
                    log.warning("sandbox janitor: could not remove container %s: %s", info.id, exc)
                failed.append((info, str(exc)))
                continue
        removed.append(info)
    if failed and not skip_failures:
        raise PruneIncomplete(removed, failed)
    return removed


_started: dict[str, Any] = {}  # engine URL -> its connector, for the exit-time clean-up
_lock = threading.Lock()


def _at_exit() -> None:
    for connector in list(_started.values()):
        try:
            prune(
                mine=True,
                client=_client() if connector is None else connector.docker_client(10.0),
                skip_failures=True,
            )
        except Exception:  # the engine (or the link to it) may be gone at interpreter exit
            pass


def startup_once(timeout: float = 30.0, connector: Any = None, *, removals_s: float | None = None) -> None:
    """Prune orphans once per process and engine, and make sure our own containers go when the process
    exits. `connector` (a `connector.Connector`) names the engine; None is the `DOCKER_HOST` one.

    Each Docker host has its own janitor run: orphans are found per engine, by the owner labels.
    `timeout` bounds each call to the engine (so a hung daemon fails this instead of blocking it), and
    the run: removals stop `removals_s` (at most `timeout`) after it began, each getting only what is
    left; orphans left then are for a later run (of another process).
    """
    deadline = time.monotonic() + (timeout if removals_s is None else min(timeout, removals_s))
    key = "default" if connector is None else connector.url
    with _lock:
        if key in _started:
            return
        if not _started:
            atexit.register(_at_exit)
        _started[key] = connector
    try:
        prune(
            client=_client(timeout) if connector is None else connector.docker_client(timeout),
            deadline=deadline,
            skip_failures=True,
        )
    except BaseException:
        with _lock:
            _started.pop(key, None)  # try again with the next sandbox on this engine
        raise
