"""Several Docker hosts behind one pool: where the next sandbox starts, and hosts that went away.

`HostSet.start()` starts a sandbox on the reachable host with the most free capacity (capacity minus
the sandboxes of this process living there). A host whose engine cannot be reached is set aside for
`retry_after_s` and the start moves on to the next host, so a pool keeps serving while one host is
gone; sandboxes that lived there fail their calls with `SandboxHostLost`. Each host runs its own
janitor (on its first sandbox start; see `janitor.startup_once`).
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
from qwq_agent.sandbox.errors import DockerUnreachable, SandboxStartError
from qwq_agent.sandbox.transport import DockerHost, connector_for

log = logging.getLogger(__name__)

RETRY_AFTER_S = 30.0
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

    def set_down(self, reason: str, retry_after_s: float) -> None:
        self.down_until = time.monotonic() + retry_after_s
        self.down_reason = reason
        log.warning("sandbox host %s is unreachable, set aside for %g s: %s", self.url, retry_after_s, reason)


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
            host.capacity = max(1, int(info.get("MemTotal", 0)) // max(1, config.memory))
        self._sized = all(h.capacity is not None for h in self.hosts)

    def _order(self) -> list[Host]:
        """Reachable hosts with room, most free capacity first (ties: fewest started, then list order)."""
        now = time.monotonic()
        up = [h for h in self.hosts if not h.down(now) and h.free > 0]
        return sorted(up, key=lambda h: (-h.free, h.live))

    async def start(self, config: SandboxConfig, deadline: Deadline | None = None) -> DockerSandbox:
        """A started sandbox on the best host; a host that cannot be reached is set aside and the next
        one tried. Raises `DockerUnreachable` when no host could be reached, `HostFull` when all are full."""
        deadline = deadline or Deadline.never()
        if not self._sized:
            await self._size(config, deadline)
        failures: list[str] = []
        for host in self._order():
            sandbox = DockerSandbox(config, engine=host.engine)
            host.starting += 1
            try:
                await sandbox._start(deadline)
            except DockerUnreachable as exc:
                await sandbox.close()
                if len(self.hosts) == 1:
                    raise  # nowhere else to go: the engine's own error says it all
                host.set_down(str(exc), self.retry_after_s)
                failures.append(f"{host.url}: {exc}")
                continue
            except BaseException:
                await sandbox.close()
                raise
            finally:
                host.starting -= 1
            host.sandboxes.add(sandbox)
            host.started += 1
            return sandbox
        now = time.monotonic()
        down = [f"{h.url}: {h.down_reason}" for h in self.hosts if h.down(now)]
        if failures or (down and len(down) == len(self.hosts)):
            raise DockerUnreachable("no Docker host could start a sandbox: " + "; ".join(failures or down))
        sizes = ", ".join(f"{h.url} {h.live}/{h.capacity}" for h in self.hosts)
        raise HostFull(f"every Docker host is full ({sizes}); close sandboxes or add hosts")
