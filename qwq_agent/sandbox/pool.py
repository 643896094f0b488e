"""A warm pool: N sandboxes kept started, handed out with a pop, destroyed after use (never reused).

`acquire()` always ends within a bounded time: it returns a sandbox that answered a health check, or raises
a `SandboxStartError` (`SandboxAcquireTimeout` when nothing worked in time). Warm sandboxes that died while
waiting (killed, crashed, lifetime limit reached), would reach their lifetime limit before the deadline
they are acquired for (or are close to it), or do not answer (a paused or frozen container) are destroyed
and replaced, never handed out. Starts that failed are tried again after a pause that grows with each
failed round, so the pool gets back to its size once Docker is back. Closing the pool fails the acquires
still waiting with `SandboxPoolClosed`.

Each waiting acquire waits on a start of its own: one it began, or one of the pool's own top-ups that no
other acquire waits on. Starts run under no acquire's deadline: one whose acquire gave up still serves the
pool (a later acquire, or the queue), rather than each short acquire creating a container only to remove it. A failed start's error goes to that acquire alone; when it has left (timed out,
cancelled, or served by another sandbox), the error goes to nobody, and a later acquire makes its own
attempt. A sandbox that starts goes to its acquire, else to the acquire waiting longest, else the queue
while that holds fewer than `size`, else it is destroyed; a start nobody waits on that has not begun is
dropped when the pool is full without it. So the pool never holds more than its size for long, however
many acquires gave up on starts of their own.

`size` is how many are kept warm, not a cap: a burst of acquires starts one sandbox each. `max_live` caps
the pool's sandboxes alive at once (warm, checked out, under a check, starting or being removed): a start
beyond it waits, before it creates anything, for one of them to be removed (a release), and the acquire
waiting on it waits within its own time limit, whose timeout then names the cap. Room is handed to the
waiting starts in order; closing the pool drops them, so `aclose()` never waits for a sandbox in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass, field

from qwq_agent.deadline import Deadline
from qwq_agent.sandbox.config import SandboxConfig
from qwq_agent.sandbox.docker_sandbox import DockerSandbox
from qwq_agent.sandbox.engine import DockerEngine
from qwq_agent.sandbox.errors import (
    SandboxAcquireTimeout,
    SandboxError,
    SandboxPoolClosed,
    SandboxStartError,
)
from qwq_agent.sandbox.hosts import HostSet
from qwq_agent.sandbox.snapshot import PythonState, Snapshot
from qwq_agent.sandbox.transport import DockerHost

log = logging.getLogger(__name__)

# A warm sandbox this close to its lifetime limit may exit while the caller uses it: replace it.
EXPIRY_MARGIN = 0.1
# After a failed start the missing sandboxes are started again after this pause, doubled with each failed
# start in a row up to the cap: a dockerd restart ends, a host that stays down is not hammered.
REFILL_DELAY_S = 1.0
REFILL_MAX_DELAY_S = 60.0


@dataclass
class _Warm:
    """A started sandbox waiting in the pool: when its start began (no later than its lifetime's start,
    so what is left of its life is never overestimated) and when it was ready (since then it waited).

    No idle clock: the pool's process pings its sandboxes, so a warm one does not idle out.
    """

    sandbox: DockerSandbox
    started_at: float
    ready_at: float


@dataclass(frozen=True)
class _Limit:
    """The time limit an acquire had, for its timeout's message: `seconds` from its start, set by the
    caller's `deadline` (`by_deadline`) or by its `timeout` (the pool's `acquire_timeout_s` by default)."""

    seconds: float
    by_deadline: bool = False

    def __str__(self) -> str:
        if not self.by_deadline:
            return f"{self.seconds:g} s"
        # What was left of the deadline when the acquire began: a little less than the caller set.
        shown = f"{self.seconds:.2g}" if self.seconds < 100 else f"{self.seconds:.0f}"
        return f"{shown} s (the caller's deadline)"


@dataclass(eq=False)
class _Waiter:
    """An acquire waiting for a sandbox: it lands in `got`, or the error of the acquire's own start."""

    got: asyncio.Future[_Warm] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass(eq=False)
class _Start:
    """A start in flight and the acquire waiting on it (None: nobody). Only the pool's own top-ups are
    `claimable`, once: a start whose acquire left stays nobody's, so its error reaches no later acquire."""

    waiter: _Waiter | None = None
    claimable: bool = True
    capped: bool = False  # waiting for room under `max_live`


class SandboxPool:
    """`async with SandboxPool(size=4) as pool: async with pool.acquire() as sb: ...`

    `hosts=["unix:///var/run/docker.sock", "ssh://docker@gpu2"]` spreads the sandboxes over several
    Docker engines by free capacity; a host that goes away, or fails starts for a reason of its own (a
    create refused, no image), is set aside while the others serve (see `sandbox.hosts`).

    Acquiring takes a ready sandbox from a queue, checks it (alive, outlives the acquire's `deadline` or
    is not near its lifetime limit, answers a ping within `health_check_timeout_s`; None skips the ping,
    and with it the check for paused containers) and starts a replacement in the background. A failed
    ping the acquire's deadline cut short proves nothing: the acquire times out, and the pool pings that
    sandbox again for the full time in the background, out of the queue meanwhile; it goes back if it
    answers, else it is replaced (without that, acquires that all had less time than the check never got
    rid of a frozen one). When none is ready the caller waits for the next one to finish starting, at
    most `acquire_timeout_s` (default: the config's `start_timeout_s` plus 10 s). Released sandboxes are
    destroyed, so no state ever passes from one user to the next.

    `max_live` (None: no cap) bounds the sandboxes of this pool alive at once, warm, in use and starting
    together (at least `size`): beyond it an acquire waits for a release, within its time limit.
    """

    def __init__(
        self,
        size: int = 4,
        config: SandboxConfig | None = None,
        *,
        max_parallel_starts: int = 4,
        acquire_timeout_s: float | None = None,
        health_check_timeout_s: float | None = 2.0,
        engine: DockerEngine | None = None,
        hosts: Sequence[DockerHost | str] | None = None,
        max_live: int | None = None,
    ) -> None:
        if size < 0:
            raise ValueError("size must be >= 0")
        if max_live is not None and max_live < max(size, 1):
            raise ValueError(f"max_live must be at least the pool's size and 1 (got {max_live}, size {size})")
        if hosts is not None and engine is not None:
            raise ValueError("pass `engine` or `hosts`, not both")
        self.size = size
        self.max_live = max_live
        self.config = config or SandboxConfig()
        self.engine = engine or DockerEngine(timeout=self.config.start_timeout_s)
        # Where sandboxes start: `hosts` (spread by free capacity, see `sandbox.hosts`) or the one engine.
        self.hosts = (
            HostSet.of(hosts, timeout=self.config.start_timeout_s) if hosts else HostSet.single(self.engine)
        )
        self.acquire_timeout_s = (
            acquire_timeout_s if acquire_timeout_s is not None else self.config.start_timeout_s + 10.0
        )
        self.health_check_timeout_s = health_check_timeout_s
        self._ready: asyncio.Queue[_Warm] = asyncio.Queue()
        self._start_slots = asyncio.Semaphore(max(1, max_parallel_starts))
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight: set[_Start] = set()
        self._waiting: deque[_Waiter] = deque()  # oldest first
        # Sandboxes taken off the queue for their health check, or handed to a waiting acquire that has
        # not checked them yet, and not yet handed out or discarded: still the pool's, so `aclose()`
        # destroys them too (and waits for that), and the acquire then leaves them alone.
        self._checking: set[DockerSandbox] = set()
        # Full-length health checks of sandboxes an acquire ran out of time for (see `_recheck`); their
        # sandboxes are among `_checking`. `aclose()` cancels them rather than waiting out their pings.
        self._rechecks: set[asyncio.Task[None]] = set()
        self._closed = False
        # Room under `max_live`: sandboxes of this pool alive or about to be created, and the starts
        # waiting for room, oldest first (each is handed the room a removal frees, in turn).
        self._live = 0
        self._room: deque[tuple[_Start, asyncio.Future[bool]]] = deque()
        self._failed_in_a_row = 0
        self._refill: asyncio.Task[None] | None = None  # the pending top-up after failed starts
        self.start_failures = 0
        self.replaced = 0
        """Warm sandboxes found dead, expired or unresponsive at acquire time, and replaced."""
        self.last_error: SandboxError | None = None
        """The last start that failed of itself (the engine, the host, the image): what a timeout names."""

    @property
    def ready(self) -> int:
        """How many started sandboxes are waiting to be acquired."""
        return self._ready.qsize()

    @property
    def live(self) -> int:
        """How many of the pool's sandboxes are alive or being created now: warm, in use, under a check,
        starting or being removed (what `max_live` caps)."""
        return self._live

    @property
    def _starting(self) -> int:
        return len(self._in_flight)

    async def _make_room(self, start: _Start) -> bool:
        """Count `start`'s sandbox as live, once `max_live` leaves room for it; False: the pool closed."""
        if self.max_live is None or (self._live < self.max_live and not self._room):
            self._live += 1
            return True
        room: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._room.append((start, room))
        start.capped = True
        try:
            # True: handed the room a removal freed, counted for this start already; False: closed.
            return await room
        except asyncio.CancelledError:
            if room.done() and not room.cancelled() and room.result():  # handed room as it was cancelled
                self._free_room()
            raise
        finally:
            start.capped = False
            with contextlib.suppress(ValueError):
                self._room.remove((start, room))

    def _free_room(self) -> None:
        """One of the pool's sandboxes is gone (removed, or never created): its room goes to the start
        waiting longest, else back to the pool."""
        while self._room:
            start, room = self._room.popleft()
            if not room.done():
                start.capped = False
                room.set_result(True)
                return
        self._live -= 1

    async def _destroy(self, sandbox: DockerSandbox) -> None:
        """Remove one of the pool's sandboxes; its room under `max_live` is free once it is gone."""
        try:
            await sandbox.close()
        finally:
            self._free_room()

    @property
    def _running_starts(self) -> int:
        return sum(1 for s in self._in_flight if not s.capped)

    @property
    def _waiters(self) -> int:
        return len(self._waiting)

    def _spawn(self, coro: Coroutine[object, object, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _spawn_fill(self, waiter: _Waiter | None = None) -> None:
        """Start a sandbox: for `waiter` (an acquire that found nothing to wait on), or the pool's own."""
        start = _Start(waiter, claimable=waiter is None)
        self._in_flight.add(start)
        self._spawn(self._fill_one(start))

    async def _fill_one(self, start: _Start) -> None:
        try:
            # Room first, then a start slot: a start held by the cap takes no slot from the others.
            if not await self._make_room(start):
                return
            async with self._start_slots:
                if self._closed or self._surplus(start):
                    self._free_room()
                    return
                begun = time.monotonic()
                try:
                    sandbox = await self.hosts.start(self.config)
                except BaseException as exc:
                    self._free_room()  # a start that failed or was cancelled leaves no sandbox alive
                    if not isinstance(exc, Exception):
                        raise
                    # whatever broke, a waiter must hear of it rather than hang
                    self._failed(
                        start,
                        exc
                        if isinstance(exc, SandboxError)
                        else SandboxStartError(f"{type(exc).__name__}: {exc}"),
                    )
                    self._refill_later()
                    return
                self._failed_in_a_row = 0
                if self._closed:
                    await self._destroy(sandbox)
                    return
                self._in_flight.discard(start)
                self._hand_out(_Warm(sandbox, started_at=begun, ready_at=time.monotonic()), start.waiter)
        finally:
            self._in_flight.discard(start)

    def _surplus(self, start: _Start) -> bool:
        """Whether `start`, about to begin, would only take the pool past its size: nobody waits on it
        (its acquire left, or none claimed it) and the queue with the other starts nobody waits on fill
        the pool. Such a start is dropped; without that, each acquire that timed out left a sandbox more."""
        if start.waiter is not None:
            return False
        others = sum(1 for s in self._in_flight if s is not start and s.waiter is None)
        return self._ready.qsize() + others >= self.size

    def _hand_out(self, warm: _Warm, waiter: _Waiter | None) -> None:
        """`warm` to `waiter` if it still waits, else to the acquire waiting longest, else to the queue
        while that holds fewer than `size`; else it is destroyed, in a task `aclose()` waits for."""
        if waiter is None or waiter not in self._waiting:
            waiter = self._waiting[0] if self._waiting else None
        if waiter is not None:
            self._leave(waiter)
            # The acquire resumes a step or two later: an `aclose()` in between must find it the pool's.
            self._checking.add(warm.sandbox)
            waiter.got.set_result(warm)
        elif not self._closed and self._ready.qsize() < self.size:
            self._ready.put_nowait(warm)
        else:
            # Started for an acquire that left, with the pool full: kept, it would stay warm and unused
            # until `aclose()`, and every later acquire would start a replacement beside it.
            log.info("warm pool: destroying sandbox %s: the pool holds its size already", warm.sandbox.id)
            self._spawn(self._destroy(warm.sandbox))

    def _failed(self, start: _Start, error: SandboxError) -> None:
        waiter = start.waiter
        self.start_failures += 1
        self._failed_in_a_row += 1
        self.last_error = error
        log.warning("warm pool: a sandbox failed to start: %s", error)
        # The acquire waiting on this start hears of it now, rather than waiting out its timeout; one that
        # left does not pass it on.
        if waiter is not None and waiter in self._waiting:
            self._leave(waiter)
            waiter.got.set_exception(error)

    def _leave(self, waiter: _Waiter) -> None:
        """`waiter` waits no more: out of the line, and its start (if still in flight) is nobody's."""
        with contextlib.suppress(ValueError):
            self._waiting.remove(waiter)
        for start in self._in_flight:
            if start.waiter is waiter:
                start.waiter = None

    def _wait(self) -> _Waiter:
        """Join the line, waiting on a start of one's own: a top-up nobody waits on, or a new one."""
        waiter = _Waiter()
        self._waiting.append(waiter)
        start = next((s for s in self._in_flight if s.claimable), None)
        if start is None:
            self._spawn_fill(waiter)
        else:
            start.waiter, start.claimable = waiter, False
        return waiter

    def _refill_later(self) -> None:
        """After a failed start: start whatever the pool then lacks of its size, after a growing pause.

        Without it a failed start's slot was lost for good: after one burst of failures (a dockerd restart)
        the pool only replaced what was acquired, and stayed below its size for the rest of the process.
        """
        if self._closed or not self.size or self._refill is not None:
            return  # one pending top-up covers every slot that is missing when it runs
        delay = min(REFILL_MAX_DELAY_S, REFILL_DELAY_S * 2 ** min(self._failed_in_a_row - 1, 16))
        self._refill = asyncio.create_task(self._refill_after(delay))

    async def _refill_after(self, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
        finally:
            self._refill = None
        if self._closed:
            return
        for _ in range(self.size - self._ready.qsize() - self._starting):
            self._spawn_fill()

    async def wait_ready(self) -> None:
        """Wait until the pool holds `size` started sandboxes or its starts (and background health checks,
        which may put one back or start a replacement) have finished, but for those waiting for room
        under `max_live`."""
        # A start held back by `max_live` waits for a release, which this does not wait for.
        while self._ready.qsize() < self.size and (self._running_starts > 0 or self._rechecks):
            pending = [t for t in self._tasks if not t.done()]
            if not pending:  # a recheck just ended, its done-callback not run yet: nothing more to come
                return
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)

    async def __aenter__(self) -> SandboxPool:
        for _ in range(self.size):
            self._spawn_fill()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _expiring(self, warm: _Warm, until: Deadline | None = None) -> str | None:
        """Why `warm` should not be handed out although its channel is open, or None.

        It must outlive `until` (the deadline of the work it is acquired for; None: the last
        `EXPIRY_MARGIN` of its lifetime at least): its supervisor exits at its lifetime limit, even in
        the middle of a call, and the next call gets a fresh, empty sandbox. No sandbox outlives a
        deadline further off than its whole lifetime, so one that has waited less than that margin
        since its start is as good as a new one, and is handed out all the same.
        """
        now = time.monotonic()
        life = self.config.lifetime_s
        left = life - (now - warm.started_at)
        need = life * EXPIRY_MARGIN
        run_left = until.left() if until is not None else None
        if run_left is not None:
            need = max(need, run_left)
        if left < need and now - warm.ready_at >= life * EXPIRY_MARGIN:
            why = f"started {now - warm.started_at:.0f} s ago (its lifetime is {life:g} s)"
            if run_left is not None and run_left > life * EXPIRY_MARGIN:
                why += f": it would end before the deadline it is acquired for ({run_left:.0f} s away)"
            return why
        return None

    async def _usable(self, warm: _Warm, deadline: Deadline, until: Deadline | None = None) -> bool | None:
        """True: `warm` may be handed out; False: it must be replaced; None: the acquire's deadline left its
        ping too little time to tell. `until`: the deadline it must outlive (see `_expiring`)."""
        sb = warm.sandbox
        problem = None if sb.alive else "it died while waiting"
        problem = problem or self._expiring(warm, until)
        if problem is None and self.health_check_timeout_s is not None:
            timeout = deadline.clamp(self.health_check_timeout_s) or 0.0
            if not await sb.responsive(timeout):
                if sb.alive and timeout < self.health_check_timeout_s:
                    # The deadline, not the sandbox, is to blame: an acquire with no time left would
                    # otherwise destroy every healthy warm sandbox in turn as "paused or frozen".
                    return None
                problem = f"it did not answer a ping within {timeout:g} s (paused or frozen?)"
        if problem is not None:
            log.info("warm pool: replacing sandbox %s: %s", sb.id, problem)
        return problem is None

    def _discard_taken(self, sandbox: DockerSandbox) -> None:
        """Destroy a sandbox taken for an acquire but not handed out, and start its replacement; one no
        longer among `_checking` was destroyed by `aclose()` already, which waited for that."""
        if sandbox not in self._checking:
            return
        self._checking.discard(sandbox)
        self._spawn(self._destroy(sandbox))
        if self.size and not self._closed:
            self._spawn_fill()

    async def _take(self, deadline: Deadline, limit: _Limit, until: Deadline | None = None) -> DockerSandbox:
        """A usable sandbox by `deadline` (`limit`: how it was set), one that outlives `until` where any
        can (see `_expiring`)."""
        while True:
            if self._closed:
                raise SandboxPoolClosed("the pool is closed")
            if self._ready.qsize():
                item = self._ready.get_nowait()
                self._checking.add(item.sandbox)
            else:
                item = await self._await_one(deadline, limit)  # among `_checking` already (see `_hand_out`)
            if self._closed:
                self._discard_taken(item.sandbox)
                raise SandboxPoolClosed("the pool was closed while the acquire waited")
            try:
                usable = await self._usable(item, deadline, until)
            except BaseException:
                # Cancelled during the health check (Ctrl-C, the run's deadline): the sandbox is nobody's
                # now, so it must go, and its slot be refilled, or the container runs on unowned.
                self._discard_taken(item.sandbox)
                raise
            if self._closed:
                self._discard_taken(item.sandbox)
                raise SandboxPoolClosed("the pool was closed while the acquire waited")
            if usable is None:  # maybe unharmed: checked in full in the background, then back or replaced
                task = self._spawn(self._recheck(item))
                self._rechecks.add(task)
                task.add_done_callback(self._rechecks.discard)
                raise self._timed_out(limit)
            if usable:
                self._checking.discard(item.sandbox)
                return item.sandbox
            self.replaced += 1
            self._discard_taken(item.sandbox)

    async def _recheck(self, warm: _Warm) -> None:
        """The health check an acquire's deadline cut short, in full: `warm` (among `_checking`, out of
        the queue) goes back to the pool if it passes, else it is replaced. Each acquire with too little
        time took the same frozen sandbox off the queue and put it back otherwise, for good."""
        try:
            usable = await self._usable(warm, Deadline.never())
        except Exception as exc:  # whatever broke, the sandbox must not stay out of the pool unowned
            log.warning("warm pool: health check of sandbox %s failed: %s", warm.sandbox.id, exc)
            usable = False
        if warm.sandbox not in self._checking:  # `aclose()` destroyed it meanwhile
            return
        if usable:
            self._put_back(warm)
        else:
            self.replaced += 1
            self._discard_taken(warm.sandbox)

    def _put_back(self, warm: _Warm) -> None:
        """Hand a sandbox this pool took out (to check it) on to the next acquire or the queue, unless
        `aclose()` destroyed it meanwhile."""
        if warm.sandbox in self._checking:
            self._checking.discard(warm.sandbox)
            self._hand_out(warm, None)

    async def _await_one(self, deadline: Deadline, limit: _Limit) -> _Warm:
        """The next sandbox for this acquire; the error of its own start if that fails first."""
        waiter = self._wait()
        try:
            async with deadline.timer():
                # Shielded: `got` stays whole when the acquire is cancelled, to be looked at below.
                return await asyncio.shield(waiter.got)
        except BaseException as exc:
            # Whether the start it waited on was still held by `max_live` (read before `_leave`).
            capped = any(s.capped for s in self._in_flight if s.waiter is waiter)
            self._leave(waiter)
            got = waiter.got
            if got.done() and got.exception() is None:  # handed over as the acquire left: the next one's
                self._put_back(got.result())
            if isinstance(exc, TimeoutError):
                raise self._timed_out(limit, capped=capped) from None
            raise

    def _timed_out(self, limit: _Limit, *, capped: bool = False) -> SandboxAcquireTimeout:
        """The timeout of an acquire that had `limit`, named: the limit that ran out, not the pool's
        default, the cap that held its start back (`capped`), and the last start that failed."""
        cap = (
            f": all max_live={self.max_live} of the pool's sandboxes were alive (in use, warm or starting) "
            "and none was released in time"
            if capped
            else ""
        )
        why = f"; the last start failed: {self.last_error}" if self.last_error else ""
        return SandboxAcquireTimeout(f"no working sandbox could be acquired within {limit}{cap}{why}")

    @contextlib.asynccontextmanager
    async def acquire(
        self,
        *,
        timeout: float | None = None,
        deadline: Deadline | None = None,
        snapshot: Snapshot | None = None,
        python_state: PythonState = "fresh",
    ) -> AsyncIterator[DockerSandbox]:
        """A fresh, working sandbox for the duration of the block; destroyed afterwards.

        Waits at most `timeout` seconds (default `acquire_timeout_s`), and never past `deadline`; then
        raises `SandboxAcquireTimeout`. A failed start raises its `SandboxStartError` at once. With
        `deadline` (a run's), a warm sandbox whose lifetime (`SandboxConfig.lifetime_s`) would end
        before it is replaced, not handed out: its supervisor would exit in the middle of the run, and
        the run's next call would find a fresh, empty sandbox. (A deadline further off than a whole
        lifetime gets a sandbox fresh from its start; make `lifetime_s` longer than the runs.)
        With `snapshot`, the sandbox holds that file state (`sandbox.last_restore` says how its
        interpreter was left); a failed restore destroys it and raises.
        """
        if self._closed:
            raise SandboxPoolClosed("the pool is closed")
        seconds = self.acquire_timeout_s if timeout is None else timeout
        left = deadline.left() if deadline is not None else None
        limit = _Limit(left, by_deadline=True) if left is not None and left < seconds else _Limit(seconds)
        sandbox = await self._take((deadline or Deadline.never()).sooner(seconds), limit, deadline)
        if self.size:
            self._spawn_fill()
        try:
            if snapshot is not None:
                await sandbox.restore(snapshot, python_state=python_state)
            yield sandbox
        finally:
            if self._closed:
                # Released after (or while) the pool closed: a task of its own might outlive `aclose()`,
                # awaited by nobody and cut off, container and all, when the event loop ends.
                await self._destroy(sandbox)
            else:
                self._spawn(self._destroy(sandbox))

    async def aclose(self) -> None:
        """Destroy every sandbox the pool still holds and wait for background starts and removals.

        Acquires still waiting fail at once with `SandboxPoolClosed` rather than wait out their timeout.
        Sandboxes in use stay their users' until released; one released after this returned is destroyed
        before its release returns.
        """
        self._closed = True
        if self._refill is not None:
            self._refill.cancel()
        for task in self._rechecks:  # their sandboxes are among `_checking`: destroyed below
            task.cancel()
        # Every waiting acquire hears of the close in its own `got`, whatever start it waited on.
        held = [self._ready.get_nowait() for _ in range(self._ready.qsize())]
        for waiter in list(self._waiting):
            self._leave(waiter)
            waiter.got.set_exception(SandboxPoolClosed("the pool was closed while the acquire waited"))
        # Starts waiting for room under `max_live` create nothing now: left waiting, they would hold
        # `aclose()` until every sandbox in use was released.
        for start, room in self._room:
            start.capped = False
            if not room.done():
                room.set_result(False)
        self._room.clear()
        # A sandbox under its health check is destroyed too (its acquire then fails with SandboxPoolClosed);
        # one whose removal its acquire started already is waited for among the tasks.
        for sandbox in [w.sandbox for w in held] + list(self._checking):
            self._spawn(self._destroy(sandbox))
        self._checking.clear()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
