"""`SandboxContainer`: starting, replacing and removing the container behind a `DockerSandbox`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any

from qwq_agent.deadline import Deadline
from qwq_agent.sandbox import janitor
from qwq_agent.sandbox.cells import CellLog
from qwq_agent.sandbox.channel import Channel
from qwq_agent.sandbox.config import SandboxConfig
from qwq_agent.sandbox.connector import Connector
from qwq_agent.sandbox.engine import DockerEngine
from qwq_agent.sandbox.errors import (
    DockerAPIError,
    DockerUnreachable,
    SandboxConfigError,
    SandboxDead,
    SandboxError,
    SandboxHostLost,
    SandboxStartError,
)
from qwq_agent.sandbox.snapshot import RestoreResult
from qwq_agent.settings import get_settings

log = logging.getLogger(__name__)

# The default image's tag per engine URL: each Docker host has its own image store, so a tag found (or
# built) on one engine says nothing about another.
_image_cache: dict[str, str] = {}
# When a sandbox dies, a ping this long tells "the container died" from "its host went away".
HOST_CHECK_TIMEOUT_S = 3.0
# A failed start waits for its container's removal this long at least (more if its start time has more
# left; a cancelled start this long at most); a daemon slower than that finishes the removal in the
# background, so the start fails on time.
DISCARD_WAIT_S = 2.0
# A create the start gave up on (no answer in its time, or cancelled) keeps its request going this long in
# the background: dockerd may carry it out late (storage under load, a daemon lock), after the removal by
# name found nothing, and a container that never starts is never auto-removed. What it returns is removed.
LATE_CREATE_WAIT_S = 60.0
# A live host pings its sandbox this often, as a fraction of the idle limit: the supervisor's idle clock
# then runs out only for a host that stopped (frozen, or its link hung without closing; a host that died
# closes the attach stream and the supervisor exits at once). A model generating a turn longer than the
# idle limit must not cost the agent its Python state.
KEEPALIVE_FRACTION = 1 / 3
# The start-up janitor's removals (once per process and engine) stop after this share of what is left
# of the start time: they are for later starts' sake, and a slow daemon must not spend all of this one's.
JANITOR_SHARE = 0.5
# Removals handed to the background, held here so that they are not garbage-collected half-way.
_removals: set[asyncio.Task[None]] = set()


def _in_background(coro: Coroutine[object, object, None]) -> asyncio.Task[None]:
    task = asyncio.ensure_future(coro)
    _removals.add(task)
    task.add_done_callback(_removals.discard)
    return task


def _cleanup_deadline(deadline: Deadline, exc: BaseException) -> Deadline:
    """How long a failed start waits for its clean-up: what is left of its time, but a cancelled start
    (Ctrl-C, the caller's own timeout) only `DISCARD_WAIT_S`; the removal goes on in the background."""
    return Deadline.after(0.0) if isinstance(exc, asyncio.CancelledError) else deadline


def _default_image(config: SandboxConfig) -> bool:
    """Whether the image is the project's own, resolved once per process and engine (not one the user named)."""
    return not (config.image or get_settings().sandbox_image)


def resolve_image(config: SandboxConfig, connector: Connector | None = None) -> str:
    """The configured image, env QWQ_SANDBOX_IMAGE, or the project's sandbox image on the engine
    `connector` names (default: the `DOCKER_HOST` one), built there if missing; cached per process and
    engine. Blocking (docker-py): call it in a thread."""
    if config.image:
        return config.image
    env_image = get_settings().sandbox_image
    if env_image:
        return env_image
    if connector is None:
        from qwq_agent.sandbox.transport import default_connector

        connector = default_connector()
    if connector.url not in _image_cache:
        from qwq_agent.sandbox.image import ensure_image

        _image_cache[connector.url] = ensure_image(progress=lambda *a, **k: None, connector=connector)
    return _image_cache[connector.url]


class SandboxContainer:
    """One sandbox container and its supervisor channel: started, replaced when it dies, removed."""

    def __init__(self, config: SandboxConfig | None = None, *, engine: DockerEngine | None = None) -> None:
        self.config = config or SandboxConfig()
        self.engine = engine or DockerEngine()
        self.id = ""
        self.name = ""
        self.replacements = 0
        # Why the container last replaced was lost ("lifetime limit reached", "killed", ...), for the
        # warning that tells the run its files and variables are gone.
        self.replaced_because = ""
        self._channel: Channel | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._removing = ""  # the container (id or name) whose removal has been started
        self._lock = asyncio.Lock()
        self._closed = False
        self._replace_off = 0  # > 0 while `no_replacement()` holds: a dead container is not replaced
        self.cells = CellLog()
        """The Python cells run so far, kept so a snapshot can rebuild the interpreter by replay."""
        self.last_restore: RestoreResult | None = None
        self._spent: dict[str, float] = {}  # how long each step of the last start took, for its errors
        self._callers_deadline = False  # whether the last start's time was the caller's, not its own limit

    @property
    def alive(self) -> bool:
        """False once the container died or was closed (the next call replaces it if `auto_replace`)."""
        return self._channel is not None and not self._channel.closed and not self._closed

    async def _start(self, deadline: Deadline | None = None) -> None:
        # Every engine call below gets what is left of the start time, so a hung daemon fails the start
        # within `start_timeout_s` with an error naming Docker.
        given = deadline or Deadline.never()
        deadline = given.sooner(self.config.start_timeout_s)
        self._callers_deadline = deadline is given  # the caller's came before start_timeout_s
        self._spent = {}
        # A new container's interpreter ran none of the cells a dead one did: a snapshot must not replay them.
        self.cells.reset()
        began = time.monotonic()
        try:
            left = deadline.left() or 0.0
            await asyncio.to_thread(
                janitor.startup_once, left, self.engine.connector, removals_s=left * JANITOR_SHARE
            )
        except Exception as exc:  # docker-py's own errors (timeouts, refused connections)
            raise DockerUnreachable(
                f"the Docker engine at {self.engine.url} failed the start-up clean-up of old sandboxes: {exc}"
            ) from exc
        self._spent["the clean-up of old sandboxes"] = time.monotonic() - began
        if _default_image(self.config) and self.engine.url not in _image_cache:
            # The image lookup below uses docker-py in a thread: make sure the engine answers first, so
            # a hung daemon fails here within the start time rather than there after docker-py's 60 s.
            self._check_time(deadline, "the engine was asked for the image")
            await self.engine.request("GET", "/_ping", timeout=deadline.left())
        self.name = f"qwq-sbx-{uuid.uuid4().hex[:12]}"
        try:
            cid = await self._create(deadline)
        except DockerAPIError as exc:
            raise SandboxStartError(f"could not create the sandbox container: {exc}") from exc
        except BaseException as exc:
            # No answer in time, or cancelled: dockerd may have created the container all the same, and
            # one that never starts is never auto-removed. Its name is known: remove it by that (and
            # `_create_request` removes what a create carried out later returns).
            await self._discard(_cleanup_deadline(deadline, exc))
            raise
        self.id = cid[:12]
        try:
            reader, writer = await self.engine.attach(cid, timeout=deadline.left())
            # Downloads are base64 (4/3) inside JSON; anything far beyond that is not an honest reply.
            max_reply = 2 * max(self.config.max_download_bytes, self.config.output_head_bytes * 8) + (
                16 << 20
            )
            self._channel = Channel(
                reader, writer, max_request_bytes=self.config.max_request_bytes, max_reply_bytes=max_reply
            )
            await self.engine.start(cid, timeout=deadline.left())
            # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation that lands
            # as the hello arrives, and the cancelled start went on to hand out a sandbox.
            async with asyncio.timeout(deadline.left()):
                hello = await asyncio.shield(self._channel.hello)
            if not hello.get("privilege_split"):
                # An image without the uid split would let user code write into the channel: refuse it.
                raise SandboxConfigError(
                    f"the image's supervisor does not run under its own uid (hello: {hello}); rebuild it with "
                    "`qwq-agent sandbox build` or start the container as root with the default cap_add"
                )
            self._keepalive = asyncio.create_task(self._keep_alive(self._channel))
        except BaseException as exc:
            await self._discard(_cleanup_deadline(deadline, exc))
            if isinstance(exc, TimeoutError | DockerAPIError | SandboxDead) and not isinstance(
                exc, DockerUnreachable
            ):
                raise SandboxStartError(f"the sandbox did not start: {exc}") from exc
            raise

    async def _create(self, deadline: Deadline) -> str:
        """Create the container named `self.name`; its full id.

        The default image is found (or built) on this sandbox's own engine and its tag cached for the
        process and that engine: when that image has gone since (`docker image
        prune -a`, a prune by another version), resolve it again (finding or building it) and retry once,
        rather than fail every start until the process restarts.
        """
        labels = janitor.owner_labels(self.config.lifetime_s)
        began = time.monotonic()
        image = await asyncio.to_thread(resolve_image, self.config, self.engine.connector)
        self._spent["finding the image"] = time.monotonic() - began
        try:
            return await self._create_request(self.config.container_body(image, labels), deadline)
        except DockerAPIError as exc:
            if not (
                exc.status == 404 and "no such image" in str(exc).lower() and _default_image(self.config)
            ):
                raise
            log.warning("sandbox image %s is gone; resolving the default image again", image)
        _image_cache.pop(self.engine.url, None)
        image = await asyncio.to_thread(resolve_image, self.config, self.engine.connector)
        return await self._create_request(self.config.container_body(image, labels), deadline)

    async def _create_request(self, body: dict[str, Any], deadline: Deadline) -> str:
        """POST the create of `self.name`; its full id, answered by `deadline` or the start fails.

        The request itself is not cut off at the deadline, nor by a cancellation: it goes on in the
        background for up to `LATE_CREATE_WAIT_S`, and the container it returns is removed. Cutting it off
        left a create that dockerd carried out after the removal by name (which then found nothing).
        """
        name = self.name
        # No time left (an image build took it): send nothing there is no time to wait for.
        self._check_time(deadline, "the container was created")
        limit = deadline.left() or 0.0
        request = asyncio.ensure_future(
            self.engine.create(name, body, timeout=max(limit, LATE_CREATE_WAIT_S))
        )
        try:
            async with asyncio.timeout(limit):
                return await asyncio.shield(request)
        except BaseException as exc:
            # Unless the engine refused it (raised below), the answer is still to come, or came just as
            # the wait ended: either way what it created is removed.
            if not request.done() or (not request.cancelled() and request.exception() is None):
                _in_background(self._remove_late_create(request, name))
            if isinstance(exc, TimeoutError):
                raise self.engine.no_answer("POST /containers/create", limit) from None
            raise

    def _check_time(self, deadline: Deadline, before: str) -> None:
        """Raise `SandboxStartError` saying what took the start's time when none is left `before` a step
        (not "the engine did not answer within 0 s": nothing was sent)."""
        if not deadline.expired:
            return
        spent = ", ".join(f"{what} took {s:.1f} s" for what, s in self._spent.items() if s >= 0.05)
        raise SandboxStartError(
            f"the sandbox's start time ran out before {before} on the Docker engine at {self.engine.url}"
            + (f" ({spent})" if spent else "")
            + (
                "; the caller's deadline came first"
                if self._callers_deadline
                else f"; start_timeout_s is {self.config.start_timeout_s:g} s"
            )
        )

    async def _remove_late_create(self, request: asyncio.Future[str], name: str) -> None:
        """Remove the container a create returns after its start gave up on it; by name if no answer."""
        try:
            cid = await request
        except DockerAPIError:
            return  # refused: nothing was created
        except (DockerUnreachable, OSError):
            await self._remove(name, by_name=True)  # no answer still: it may exist all the same
            return
        await self._remove(cid)

    async def _discard(self, deadline: Deadline | None = None) -> None:
        """Close the channel and remove the container: by id, or by name when its create got no answer.

        Without `deadline` this waits for the removal. A failed start passes its deadline: it waits what
        is left of it, at least `DISCARD_WAIT_S`, and leaves a slower removal to the background, so a hung
        daemon does not hold the start past its time by the engine's whole timeout. A container whose
        removal has started is not removed again (a failed start is followed by `close()`).
        """
        if self._keepalive is not None:
            self._keepalive.cancel()
        if self._channel is not None:
            await self._channel.aclose()
        target = self.id or self.name
        if not target or target == self._removing:
            return
        self._removing = target
        removal = _in_background(self._remove(target, by_name=not self.id))
        if deadline is None:
            await asyncio.shield(removal)  # a cancelled close() still removes the container
        else:
            await asyncio.wait({removal}, timeout=max(deadline.left() or 0.0, DISCARD_WAIT_S))

    async def _remove(self, target: str, *, by_name: bool = False) -> None:
        """Remove a container, logging a failure: a warning for one known to exist (by id).

        By name the container may never have been created (a create refused at the door, or not carried
        out): a failed removal then only says the engine did not answer, which the failed start has
        reported already, so it is logged at debug level.
        """
        try:
            await self.engine.remove(target)  # the engine's own timeout bounds it
        except (DockerAPIError, DockerUnreachable, OSError) as exc:
            level = logging.DEBUG if by_name and not isinstance(exc, DockerAPIError) else logging.WARNING
            log.log(level, "could not remove sandbox container %s: %s", target, exc)

    async def _keep_alive(self, channel: Channel) -> None:
        """Ping the supervisor every `KEEPALIVE_FRACTION` of its idle limit until the channel closes."""
        interval = self.config.idle_timeout_s * KEEPALIVE_FRACTION
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await channel.closed_event.wait()
                return
            with contextlib.suppress(SandboxError):  # a paused sandbox: its idle clock stands still too
                await channel.call("ping", {}, interval)

    async def close(self) -> None:
        """Destroy the container (idempotent)."""
        self._closed = True
        await self._discard()

    async def responsive(self, timeout: float) -> bool:
        """True when the supervisor answers a ping within `timeout` s; never starts a replacement.

        A paused or frozen container keeps its channel open but cannot answer; this tells it apart.
        """
        if not self.alive or self._channel is None:
            return False
        try:
            await self._channel.call("ping", {}, timeout)
        except SandboxError:
            return False
        return True

    async def wait_closed(self) -> str:
        """Wait until the current container's channel closes (death, idle or lifetime limit); returns why."""
        if self._channel is None:
            return "not started"
        await asyncio.shield(self._channel.closed_event.wait())
        return self._channel.closed_reason or ""

    @contextlib.contextmanager
    def no_replacement(self) -> Iterator[None]:
        """Calls made inside this block fail with `SandboxDead` on a dead container instead of replacing
        it, whatever `auto_replace` says (for calls about the state the container held, e.g. a check of
        what a finished branch left: a fresh replacement holds none of it and would answer for it)."""
        self._replace_off += 1
        try:
            yield
        finally:
            self._replace_off -= 1

    async def _ensure_alive(self) -> bool:
        """Replace a dead container when allowed; True if this call did."""
        if self._closed:
            raise SandboxDead("the sandbox was closed")
        if self._channel is not None and not self._channel.closed:
            return False
        async with self._lock:
            if self._channel is not None and not self._channel.closed:
                return True  # another caller replaced it while we waited: state is lost for us too
            reason = self._channel.closed_reason if self._channel else "not started"
            if not self.config.auto_replace or self._replace_off:
                raise await self._dead(f"sandbox {self.id}: {reason}")
            await self._discard()
            self.id = self.name = ""
            try:
                await self._start()
            except DockerUnreachable as exc:  # no replacement where the host is gone
                raise SandboxHostLost(f"sandbox lost with its Docker host ({reason}): {exc}") from None
            self.replacements += 1
            self.replaced_because = reason or "it died"
            return True

    async def _dead(self, message: str) -> SandboxDead:
        """`SandboxHostLost` when the engine stopped answering too (its host went away), else `SandboxDead`."""
        gone = await self.engine.unreachable(HOST_CHECK_TIMEOUT_S)
        return (
            SandboxHostLost(f"{message}; its Docker host is gone: {gone}") if gone else SandboxDead(message)
        )
