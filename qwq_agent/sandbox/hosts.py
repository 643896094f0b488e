"""Several Docker hosts behind one pool: where the next sandbox starts, and hosts that went away.

`HostSet.start()` starts a sandbox on the reachable host with the most free capacity (capacity minus
the sandboxes of this process living there). A host where the start fails for a reason of its own (its
engine cannot be reached, refuses the create — a full disk —, lacks the image and cannot build it, or
its sandbox does not say hello within `start_timeout_s`) is set aside and the start moves on to the next
host, so a pool keeps serving while one host is gone or broken; sandboxes that lived there fail their
calls with `SandboxHostLost`. A start cut short by the caller's own deadline says nothing about the host,
nor does one that would fail the same on any host (a bad setting, an image whose supervisor cannot drop
root: `SandboxConfigError`): neither sets a host aside. A host is set aside for `retry_after_s`, twice
as long for each further failure in a row (at most `MAX_RETRY_AFTER_S`); a start that works there again
resets that. Without the setting aside, a broken host kept the most free capacity (its failed starts
free it again) and took every start. When no host can start one, the error names each host's own
failure. Each host runs its own janitor (on its first sandbox start; see `janitor.startup_once`).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Sequence

from qwq_agent.deadline import Deadline
from qwq_agent.sandbox.config import SandboxConfig
from qwq_agent.sandbox.docker_sandbox import DockerSandbox
from qwq_agent.sandbox.engine import DockerEngine
from qwq_agent.sandbox.errors import (
    DockerAPIError,
    DockerUnreachable,
    SandboxConfigError,
    SandboxStartError,
)
from qwq_agent.sandbox.transport import DockerHost, connector_for

log = logging.getLogger(__name__)

RETRY_AFTER_S = 30.0
# A host that keeps failing is tried again at most this far apart (the pause doubles up to it).
MAX_RETRY_AFTER_S = 300.0
INFO_TIMEOUT_S = 10.0


class HostFull(SandboxStartError):
    """Every reachable Docker host already holds as many sandboxes as its capacity allows."""


class Host:
    """One engine of a `HostSet`: its capacity, the sandboxes started there, and whether it is down."""

    def __init__(self, engine: DockerEngine, capacity: int | None) -> None:
        self.engine = engine
        self.capacity = capacity
        self.sandboxes: weakref.WeakSet[DockerSandbox] = weakref.WeakSet()
        self.down_until = 0.0
        self.down_reason = ""
        self.down_unreachable = False  # the reason it is set aside: its engine did not answer
        self.failures = 0  # starts (or capacity reads) failed here in a row
        self.starting = 0
        self.started = 0

    @property
    def url(self) -> str:
        return self.engine.url

    @property
    def live(self) -> int:
        """Sandboxes of this process starting or running here."""
        return self.starting + sum(1 for sb in self.sandboxes if sb.alive)

    @property
    def free(self) -> float:
        return float("inf") if self.capacity is None else self.capacity - self.live

    def down(self, now: float) -> bool:
        return now < self.down_until

    def set_down(self, reason: str, retry_after_s: float, *, unreachable: bool = True) -> float:
        """Set the host aside after a failure: `retry_after_s`, doubled for each failure in a row before
        this one, at most `MAX_RETRY_AFTER_S` (or `retry_after_s` when that is longer). Returns the pause."""
        self.failures += 1
        pause = min(retry_after_s * 2 ** min(self.failures - 1, 16), max(retry_after_s, MAX_RETRY_AFTER_S))
        self.down_until = time.monotonic() + pause
        self.down_reason = reason
        self.down_unreachable = unreachable
        what = "is unreachable" if unreachable else "failed to start a sandbox"
        log.warning("sandbox host %s %s, set aside for %g s: %s", self.url, what, pause, reason)
        return pause

    def worked(self) -> None:
        """A start succeeded here: the next failure is set aside for the base pause again."""
        self.failures = 0


def _host_tied(exc: BaseException) -> bool:
    """Whether a failed start says something about the host it was tried on (engine gone, create
    refused, image missing there and not buildable, no hello in time), so another host may do better;
    a cancellation, a stopped build, a bug in the caller's code or what would fail the same on every
    host (the configuration or image refused, a bad setting under the image build) is no such thing."""
    from qwq_agent.sandbox.image.errors import BuildStopped, ImageBuildError
    from qwq_agent.settings import SettingsError

    if not isinstance(exc, SandboxStartError | ImageBuildError) or isinstance(
        exc, BuildStopped | SandboxConfigError
    ):
        return False
    # What it was raised from, too: a bad environment variable is the user's, however deep.
    each: BaseException | None = exc
    for _ in range(16):
        if each is None:
            break
        if isinstance(each, SettingsError):
            return False
        each = each.__cause__
    return True


class HostSet:
    """The Docker hosts a pool starts sandboxes on (one host: the classic single-engine pool)."""

    def __init__(self, hosts: Sequence[Host], *, retry_after_s: float = RETRY_AFTER_S) -> None:
        if not hosts:
            raise ValueError("a HostSet needs at least one host")
        self.hosts = list(hosts)
        self.retry_after_s = retry_after_s
        self._sized = False

    @classmethod
    def single(cls, engine: DockerEngine) -> HostSet:
        """One engine with no capacity limit: what `SandboxPool` without `hosts=` uses."""
        hs = cls([Host(engine, None)])
        hs._sized = True
        return hs

    @classmethod
    def of(
        cls, hosts: Sequence[DockerHost | str], *, timeout: float, retry_after_s: float = RETRY_AFTER_S
    ) -> HostSet:
        """Hosts from URLs (`unix://`, `ssh://`, `tcp://`) or `DockerHost`s; nothing is contacted yet."""
        parsed = [h if isinstance(h, DockerHost) else DockerHost(url=h) for h in hosts]
        urls = [h.url for h in parsed]
        if len(set(urls)) != len(urls):
            raise ValueError(f"a Docker host is listed twice: {urls}")
        return cls(
            [Host(DockerEngine(connector=connector_for(h), timeout=timeout), h.capacity) for h in parsed],
            retry_after_s=retry_after_s,
        )

    async def _size(self, config: SandboxConfig, deadline: Deadline) -> None:
        """Capacities not given: the engine's memory over the sandbox's memory limit (read once)."""
        for host in self.hosts:
            if host.capacity is not None or host.down(time.monotonic()):
                continue
            try:
                _, info = await host.engine.request(
                    "GET", "/info", timeout=deadline.clamp(INFO_TIMEOUT_S) or 0.0
                )
            except DockerUnreachable as exc:
                host.set_down(str(exc), self.retry_after_s)
                continue
            except DockerAPIError as exc:
                host.set_down(f"GET /info: {exc}", self.retry_after_s, unreachable=False)
                continue
            host.capacity = max(1, int(info.get("MemTotal", 0)) // max(1, config.memory))
        self._sized = all(h.capacity is not None for h in self.hosts)

    def _order(self) -> list[Host]:
        """Reachable hosts with room, most free capacity first (ties: fewest started, then list order)."""
        now = time.monotonic()
        up = [h for h in self.hosts if not h.down(now) and h.free > 0]
        return sorted(up, key=lambda h: (-h.free, h.live))

    async def start(self, config: SandboxConfig, deadline: Deadline | None = None) -> DockerSandbox:
        """A started sandbox on the best host. A host where the start fails for a reason of its own (see
        the module docstring) is set aside and the next one tried; one left untried because the failed
        ones used up `deadline`, or whose start ran out of `deadline` (when that came before the config's
        `start_timeout_s`), is not set aside.

        Raises the host's own error when there is only one host, and the error of a start that would fail
        the same on any host (`SandboxConfigError`, a bad setting) at once; `HostFull` when every host
        that is not set aside is full; else, when no host started one, `DockerUnreachable` if none could
        be reached and `SandboxStartError` otherwise, either naming each host's failure.
        """
        deadline = deadline or Deadline.never()
        if not self._sized:
            await self._size(config, deadline)
        failed: dict[Host, BaseException] = {}
        for host in self._order():
            if failed and deadline.expired:
                break  # the hosts tried took the time: another would fail for want of it, not of its own
            sandbox = DockerSandbox(config, engine=host.engine)
            # Whether the caller's deadline, not the host's own start time, bounds this start.
            callers = deadline.at is not None and deadline.at <= time.monotonic() + config.start_timeout_s
            host.starting += 1
            try:
                await sandbox._start(deadline)
            except BaseException as exc:
                # Read before the clean-up below, which may take what is left.
                out_of_callers_time = callers and deadline.expired
                await sandbox.close()
                if len(self.hosts) == 1 or not _host_tied(exc):
                    raise  # one host: nowhere else to go, and its own error says it all
                # A start that ran out of the caller's time (not the host's `start_timeout_s`) says
                # nothing of the host: a healthy one may take longer than the caller had. It is named in
                # the error, not set aside.
                if not out_of_callers_time:
                    unreachable = isinstance(exc, DockerUnreachable)
                    host.set_down(str(exc), self.retry_after_s, unreachable=unreachable)
                failed[host] = exc
                continue
            finally:
                host.starting -= 1
            host.worked()
            host.sandboxes.add(sandbox)
            host.started += 1
            return sandbox
        now = time.monotonic()
        if failed or all(h.down(now) for h in self.hosts):
            raise self._none_started(failed, now)
        sizes = ", ".join(f"{h.url} {h.live}/{h.capacity}" for h in self.hosts)
        raise HostFull(f"every Docker host is full ({sizes}); close sandboxes or add hosts")

    def _none_started(self, failed: dict[Host, BaseException], now: float) -> SandboxStartError:
        """The error of a start no host could serve: each host's own failure, or why it was not tried."""
        parts, unreachable = [], True
        for h in self.hosts:
            if h in failed:
                exc = failed[h]
                parts.append(f"{h.url}: {exc}")
                unreachable = unreachable and isinstance(exc, DockerUnreachable)
            elif h.down(now):
                parts.append(f"{h.url}: set aside for {h.down_until - now:.0f} s more after: {h.down_reason}")
                unreachable = unreachable and h.down_unreachable
            elif h.free <= 0:
                parts.append(f"{h.url}: full ({h.live}/{h.capacity})")
            else:
                parts.append(f"{h.url}: not tried, no time left")
        cls = DockerUnreachable if unreachable else SandboxStartError
        return cls("no Docker host could start a sandbox: " + "; ".join(parts))
