"""A warm pool: N sandboxes kept started, handed out with a pop, destroyed after use (never reused)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from qwq_agent.sandbox.config import SandboxConfig
from qwq_agent.sandbox.docker_sandbox import DockerSandbox
from qwq_agent.sandbox.engine import DockerEngine
from qwq_agent.sandbox.errors import SandboxError, SandboxStartError

log = logging.getLogger(__name__)


class SandboxPool:
    """`async with SandboxPool(size=4) as pool: async with pool.acquire() as sb: ...`

    Acquiring takes a ready sandbox from a queue (no Docker call on that path) and starts a replacement in
    the background; when none is ready the caller waits for the next one to finish starting. Released
    sandboxes are destroyed, so no state ever passes from one user to the next.
    """

    def __init__(self, size: int = 4, config: SandboxConfig | None = None, *, max_parallel_starts: int = 4) -> None:
        if size < 0:
            raise ValueError("size must be >= 0")
        self.size = size
        self.config = config or SandboxConfig()
        self.engine = DockerEngine()
        # A failed start is queued as its exception, so a waiting acquire fails instead of hanging.
        self._ready: asyncio.Queue[DockerSandbox | SandboxError] = asyncio.Queue()
        self._starts = asyncio.Semaphore(max(1, max_parallel_starts))
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.start_failures = 0

    @property
    def ready(self) -> int:
        """How many started sandboxes are waiting to be acquired."""
        return self._ready.qsize()

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fill_one(self) -> None:
        async with self._starts:
            if self._closed:
                return
            sandbox = DockerSandbox(self.config, engine=self.engine)
            try:
                await sandbox._start()
            except (SandboxError, OSError) as exc:
                self.start_failures += 1
                log.warning("warm pool: a sandbox failed to start: %s", exc)
                await sandbox.close()
                error = exc if isinstance(exc, SandboxError) else SandboxStartError(str(exc))
                self._ready.put_nowait(error)
                return
            if self._closed:
                await sandbox.close()
                return
            self._ready.put_nowait(sandbox)

    async def wait_ready(self) -> None:
        """Wait until the pool holds `size` started sandboxes (or failed starts) or its starts have finished."""
        while self._ready.qsize() < self.size and any(not t.done() for t in self._tasks):
            await asyncio.wait([t for t in self._tasks if not t.done()], return_when=asyncio.FIRST_COMPLETED)

    async def __aenter__(self) -> SandboxPool:
        for _ in range(self.size):
            self._spawn(self._fill_one())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _take(self) -> DockerSandbox:
        while True:
            if self._ready.empty() and not any(not t.done() for t in self._tasks):
                self._spawn(self._fill_one())  # size 0, or every start failed: start one on demand
            sandbox = await self._ready.get()
            if isinstance(sandbox, SandboxError):
                raise sandbox
            if sandbox.alive:
                return sandbox
            self._spawn(sandbox.close())  # died while waiting (idle limit, killed): never hand it out

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[DockerSandbox]:
        """A fresh sandbox for the duration of the block; destroyed afterwards."""
        if self._closed:
            raise SandboxError("the pool is closed")
        sandbox = await self._take()
        if self.size:
            self._spawn(self._fill_one())
        try:
            yield sandbox
        finally:
            self._spawn(sandbox.close())

    async def aclose(self) -> None:
        """Destroy every sandbox the pool still holds and wait for background starts and removals."""
        self._closed = True
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        while not self._ready.empty():
            item = self._ready.get_nowait()
            if isinstance(item, DockerSandbox):
                await item.close()
