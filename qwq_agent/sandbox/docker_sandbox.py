"""`DockerSandbox`: one hardened container, driven through its supervisor channel.

Calls on one sandbox may run concurrently: they are multiplexed by request id. Python cells queue on
the single interpreter inside (they share its state); shell, file and search calls run side by side.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import tarfile
import uuid
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from qwq_agent.deadline import Deadline
from qwq_agent.sandbox import janitor
from qwq_agent.sandbox.cells import CellLog
from qwq_agent.sandbox.channel import Channel, OnEvent
from qwq_agent.sandbox.config import SandboxConfig
from qwq_agent.sandbox.engine import DockerEngine
from qwq_agent.sandbox.errors import (
    DockerAPIError,
    DockerUnreachable,
    InvalidRequest,
    SandboxDead,
    SandboxError,
    SandboxHostLost,
    SandboxStartError,
    SandboxTimeout,
    UnsafeArchive,
)
from qwq_agent.sandbox.output_stream import DEFAULT_STREAM_LIMIT, OnOutput, OutputRelay
from qwq_agent.sandbox.protocol import (
    CreateRequest,
    DownloadRequest,
    DownloadResult,
    FileResult,
    InsertRequest,
    PingResult,
    PythonRequest,
    PythonResult,
    Request,
    Result,
    SearchRequest,
    SearchResult,
    ShellRequest,
    ShellResult,
    StrReplaceRequest,
    UndoEditRequest,
    UploadRequest,
    UploadResult,
    ViewRequest,
)
from qwq_agent.sandbox.snapshot import RestoreResult
from qwq_agent.sandbox.snapshotting import SnapshotOps
from qwq_agent.sandbox.supervisor import check_member
from qwq_agent.settings import get_settings

R = TypeVar("R", bound=Result)
_image_cache: dict[str, str] = {}

# Against a deadline, the layers give up in this order: the supervisor interrupts the code (interrupt
# grace + this slack before the deadline), the host stops waiting for a reply and kills the container
# (half this slack before it), and the tool registry cancels the call (at the deadline itself).
DEADLINE_SLACK_S = 1.0
MIN_TIMEOUT_S = 0.05
# When a sandbox dies, a ping this long tells "the container died" from "its host went away".
HOST_CHECK_TIMEOUT_S = 3.0


@contextlib.contextmanager
def _checked() -> Generator[None, None, None]:
    """Bad arguments become `InvalidRequest` (still naming each field and problem)."""
    try:
        yield
    except ValidationError as exc:
        raise InvalidRequest(str(exc)) from None


def resolve_image(config: SandboxConfig) -> str:
    """The configured image, env QWQ_SANDBOX_IMAGE, or the project's sandbox image (built if missing; cached per process)."""
    if config.image:
        return config.image
    env_image = get_settings().sandbox_image
    if env_image:
        return env_image
    if "default" not in _image_cache:
        from qwq_agent.sandbox.image import ensure_image

        _image_cache["default"] = ensure_image(progress=lambda *a, **k: None)
    return _image_cache["default"]


class _Starting:
    """What `DockerSandbox.create()` returns: await it for a sandbox, or use it as `async with`."""

    def __init__(self, sandbox: DockerSandbox) -> None:
        self._sandbox = sandbox

    def __await__(self) -> Generator[Any, None, DockerSandbox]:
        return self._start().__await__()

    async def _start(self) -> DockerSandbox:
        await self._sandbox._start()
        return self._sandbox

    async def __aenter__(self) -> DockerSandbox:
        return await self._start()

    async def __aexit__(self, *exc: object) -> None:
        await self._sandbox.close()


class DockerSandbox(SnapshotOps):
    """A sandbox container with a persistent Python interpreter, a shell, an editor and search.

    Satisfies `qwq_agent.protocols.Sandbox`; `snapshot()` and `restore()` come from `SnapshotOps`. Use `async with DockerSandbox.create() as sb: ...` or
    `sb = await DockerSandbox.create()` followed by `await sb.close()`.
    """

    def __init__(self, config: SandboxConfig | None = None, *, engine: DockerEngine | None = None) -> None:
        self.config = config or SandboxConfig()
        self.engine = engine or DockerEngine()
        self.id = ""
        self.name = ""
        self.replacements = 0
        self._channel: Channel | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self.cells = CellLog()
        """The Python cells run so far, kept so a snapshot can rebuild the interpreter by replay."""
        self.last_restore: RestoreResult | None = None

    @classmethod
    def create(
        cls, config: SandboxConfig | None = None, *, engine: DockerEngine | None = None, **overrides: Any
    ) -> _Starting:
        """Start a sandbox; keyword overrides are `SandboxConfig` fields (e.g. `memory="256m"`)."""
        if overrides:
            config = (config or SandboxConfig()).model_copy(
                update=SandboxConfig(**overrides).model_dump(include=set(overrides))
            )
        return _Starting(cls(config, engine=engine))

    @property
    def alive(self) -> bool:
        """False once the container died or was closed (the next call replaces it if `auto_replace`)."""
        return self._channel is not None and not self._channel.closed and not self._closed

    async def _start(self, deadline: Deadline | None = None) -> None:
        # Every engine call below gets what is left of the start time, so a hung daemon fails the start
        # within `start_timeout_s` with an error naming Docker.
        deadline = (deadline or Deadline.never()).sooner(self.config.start_timeout_s)
        try:
            await asyncio.to_thread(janitor.startup_once, deadline.left() or 0.0, self.engine.connector)
        except Exception as exc:  # docker-py's own errors (timeouts, refused connections)
            raise DockerUnreachable(
                f"the Docker engine at {self.engine.url} failed the start-up clean-up of old sandboxes: {exc}"
            ) from exc
        if not (self.config.image or get_settings().sandbox_image or "default" in _image_cache):
            # The image lookup below uses docker-py in a thread: make sure the engine answers first, so
            # a hung daemon fails here within the start time rather than there after docker-py's 60 s.
            await self.engine.request("GET", "/_ping", timeout=deadline.left())
        image = await asyncio.to_thread(resolve_image, self.config)
        self.name = f"qwq-sbx-{uuid.uuid4().hex[:12]}"
        labels = janitor.owner_labels(self.config.lifetime_s)
        try:
            cid = await self.engine.create(
                self.name, self.config.container_body(image, labels), timeout=deadline.left()
            )
        except DockerAPIError as exc:
            raise SandboxStartError(f"could not create the sandbox container: {exc}") from exc
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
            hello = await asyncio.wait_for(asyncio.shield(self._channel.hello), deadline.left())
            if not hello.get("privilege_split"):
                # An image without the uid split would let user code write into the channel: refuse it.
                raise SandboxStartError(
                    f"the image's supervisor does not run under its own uid (hello: {hello}); rebuild it with "
                    "`qwq-agent sandbox build` or start the container as root with the default cap_add"
                )
        except BaseException as exc:
            await self._discard()
            if isinstance(exc, TimeoutError | DockerAPIError | SandboxDead) and not isinstance(
                exc, DockerUnreachable
            ):
                raise SandboxStartError(f"the sandbox did not start: {exc}") from exc
            raise

    async def _discard(self) -> None:
        if self._channel is not None:
            await self._channel.aclose()
        if self.id:
            with contextlib.suppress(DockerAPIError, DockerUnreachable, OSError):
                await self.engine.remove(self.id)

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
            if not self.config.auto_replace:
                raise await self._dead(f"sandbox {self.id}: {reason}")
            await self._discard()
            self.id = ""
            try:
                await self._start()
            except DockerUnreachable as exc:  # no replacement where the host is gone
                raise SandboxHostLost(f"sandbox lost with its Docker host ({reason}): {exc}") from None
            self.replacements += 1
            return True

    async def _call_raw(
        self,
        request: Request,
        reply_timeout: float | None,
        on_event: OnEvent | None = None,
        blob: bytes | memoryview | None = None,
    ) -> tuple[dict[str, Any], bool]:
        replaced = await self._ensure_alive()
        assert self._channel is not None
        try:
            args = request.model_dump(exclude={"op"})
            if blob is None:
                raw = await self._channel.call(request.op, args, reply_timeout, on_event)
            else:
                raw = await self._channel.call(request.op, args, reply_timeout, on_event, blob=blob)
        except SandboxTimeout as exc:
            # An unresponsive supervisor cannot be trusted with the next call: kill it now.
            await self._discard()
            raise SandboxTimeout(f"sandbox {self.id}: {exc}; the container was killed") from None
        except SandboxDead as exc:
            raise await self._dead(f"sandbox {self.id}: {exc}") from None
        return raw, replaced

    async def _dead(self, message: str) -> SandboxDead:
        """`SandboxHostLost` when the engine stopped answering too (its host went away), else `SandboxDead`."""
        gone = await self.engine.unreachable(HOST_CHECK_TIMEOUT_S)
        return (
            SandboxHostLost(f"{message}; its Docker host is gone: {gone}") if gone else SandboxDead(message)
        )

    async def _call(
        self,
        request: Request,
        result_type: type[R],
        reply_timeout: float | None,
        on_event: OutputRelay | None = None,
    ) -> R:
        raw, replaced = await self._call_raw(request, reply_timeout, on_event)
        result = result_type.model_validate(raw)
        if replaced:
            result.sandbox_replaced = result.state_lost = True
        return result

    def _grace(self, timeout: float, deadline: Deadline | None = None) -> float:
        reply = timeout + self.config.interrupt_grace_s + self.config.reply_grace_s
        if deadline is None:
            return reply
        return max(MIN_TIMEOUT_S, deadline.clamp(reply, reserve=DEADLINE_SLACK_S / 2) or 0.0)

    def clamp_timeout(
        self, timeout: float | None, deadline: Deadline | None, default: float | None = None
    ) -> float:
        """The in-sandbox time limit of a call: `timeout` (or `default`, or the config's python limit),
        shortened so that the interrupt, its grace and the reply all fit before `deadline`."""
        limit = timeout or default or self.config.python_timeout_s
        if deadline is not None:
            limit = deadline.clamp(limit, reserve=self.config.interrupt_grace_s + DEADLINE_SLACK_S) or 0.0
        return max(MIN_TIMEOUT_S, limit)

    # ------------------------------------------------------------------------------------------ operations

    # `timeout` is enforced inside the sandbox (interrupt, then kill), which asyncio.timeout cannot do.

    async def python(
        self,
        code: str,
        *,
        timeout: float | None = None,
        deadline: Deadline | None = None,
        on_output: OnOutput | None = None,
        stream_limit: int = DEFAULT_STREAM_LIMIT,
    ) -> PythonResult:
        """Run a cell in the persistent interpreter (notebook-style: the last expression's repr is `value`).

        With `deadline`, the time limit is shortened so that the result comes back before it. With
        `on_output`, output is passed to it while the cell runs (coalesced, at most `stream_limit`
        bytes); the result holds all of it regardless.
        """
        result = await self._timed_call(
            PythonRequest, PythonResult, {"code": code}, self.config.python_timeout_s,
            timeout, deadline, on_output, stream_limit,
        )  # fmt: skip
        self.cells.record(code, result)
        return result

    async def shell(
        self,
        command: str,
        *,
        timeout: float | None = None,
        cwd: str | None = None,
        deadline: Deadline | None = None,
        on_output: OnOutput | None = None,
        stream_limit: int = DEFAULT_STREAM_LIMIT,
    ) -> ShellResult:
        """Run `bash -c command` in its own process group; background jobs are killed when it returns.

        With `deadline`, the time limit is shortened so that the result comes back before it. With
        `on_output`, output is passed to it while the command runs (coalesced, at most `stream_limit`
        bytes); the result holds all of it regardless.
        """
        return await self._timed_call(
            ShellRequest, ShellResult, {"command": command, "cwd": cwd}, self.config.shell_timeout_s,
            timeout, deadline, on_output, stream_limit,
        )  # fmt: skip

    async def _timed_call(
        self,
        request_type: type[PythonRequest] | type[ShellRequest],
        result_type: type[R],
        fields: dict[str, Any],
        default_timeout: float,
        timeout: float | None,
        deadline: Deadline | None,
        on_output: OnOutput | None,
        stream_limit: int,
    ) -> R:
        """A python or shell call: its time limit clamped to `deadline`, its output relayed if asked."""
        if deadline is not None:
            timeout = self.clamp_timeout(timeout, deadline, default_timeout)
        with _checked():
            req = request_type(
                **fields,
                timeout=timeout or default_timeout,
                stream_limit=stream_limit if on_output is not None else None,
            )
        relay = OutputRelay(on_output, stream_limit) if on_output is not None else None
        return await self._call(req, result_type, self._grace(req.timeout, deadline), relay)

    async def view(self, path: str, view_range: list[int] | None = None) -> FileResult:
        """`cat -n` of a file (optionally lines [start, end], end -1 = to the end) or a 2-level listing."""
        with _checked():
            req = ViewRequest(path=path, view_range=view_range)
        return await self._call(req, FileResult, self._grace(60))

    async def create_file(self, path: str, file_text: str) -> FileResult:
        """Create a new file (refuses to overwrite)."""
        with _checked():
            req = CreateRequest(path=path, file_text=file_text)
        return await self._call(req, FileResult, self._grace(60))

    async def str_replace(self, path: str, old_str: str, new_str: str = "") -> FileResult:
        """Replace the one occurrence of `old_str`; zero or several matches raise `ToolError`."""
        with _checked():
            req = StrReplaceRequest(path=path, old_str=old_str, new_str=new_str)
        return await self._call(req, FileResult, self._grace(60))

    async def insert(self, path: str, insert_line: int, new_str: str) -> FileResult:
        """Insert `new_str` after line `insert_line` (0: at the top)."""
        with _checked():
            req = InsertRequest(path=path, insert_line=insert_line, new_str=new_str)
        return await self._call(req, FileResult, self._grace(60))

    async def undo_edit(self, path: str) -> FileResult:
        """Revert the last `str_replace` or `insert` on `path`."""
        with _checked():
            req = UndoEditRequest(path=path)
        return await self._call(req, FileResult, self._grace(60))

    async def search(self, pattern: str, **options: Any) -> SearchResult:
        """ripgrep over the workspace; options are `SearchRequest` fields (literal, globs, context_lines...)."""
        with _checked():
            req = SearchRequest(pattern=pattern, **options)
        return await self._call(req, SearchResult, self._grace(req.timeout))

    async def ping(self) -> PingResult:
        return await self._call(Request.model_construct(op="ping"), PingResult, self._grace(10))

    async def upload_archive(self, data: bytes, dest: str = "/workspace") -> UploadResult:
        """Extract a tar archive under `dest`; unsafe entries make the whole archive refused (`UnsafeArchive`)."""
        with _checked():
            req = UploadRequest(dest=dest, data=base64.b64encode(data).decode("ascii"))
        return await self._call(req, UploadResult, self._grace(120))

    async def upload(
        self,
        local: str | os.PathLike[str],
        dest: str = "/workspace",
        *,
        contents: bool = False,
        exclude: Sequence[str] = (),
    ) -> UploadResult:
        """Copy a local file or folder into the directory `dest` (like `docker cp local dest/`).

        With `contents`, a folder's entries land directly in `dest` (like `docker cp local/. dest/`).
        Paths with a component named in `exclude` (e.g. `.git`, `__pycache__`) are left out.
        """
        path = Path(local)
        excluded = set(exclude)

        def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
            return None if excluded.intersection(Path(info.name).parts) else info

        def pack() -> bytes:
            if not path.exists():
                raise InvalidRequest(f"{local} does not exist")
            if contents and not path.is_dir():
                raise InvalidRequest(f"{local} is not a directory")
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                for entry in sorted(path.iterdir()) if contents else [path]:
                    tar.add(entry, arcname=entry.name, filter=keep)
            return buf.getvalue()

        data = await asyncio.to_thread(pack)
        if len(data) * 4 // 3 > self.config.max_request_bytes:
            raise InvalidRequest(
                f"{local} packs to {len(data)} bytes, over the request limit; nothing was sent"
            )
        return await self.upload_archive(data, dest)

    async def download(self, src: str, local_dir: str | os.PathLike[str]) -> DownloadResult:
        """Copy a workspace file or folder into the local directory `local_dir` (created if missing).

        The archive comes from an untrusted sandbox, so it is checked in full before anything is written:
        absolute paths, `..`, links leaving `local_dir` and special files raise `UnsafeArchive`.
        """
        with _checked():
            req = DownloadRequest(path=src)
        raw, replaced = await self._call_raw(req, self._grace(120))
        try:
            data = base64.b64decode(raw.get("data") or "", validate=True)
        except (ValueError, TypeError) as exc:
            raise UnsafeArchive(
                f"the sandbox sent a download that is not base64: {exc}; nothing was written"
            ) from None
        limit = self.config.max_download_bytes
        paths, written = await asyncio.to_thread(_extract_counted, data, Path(local_dir), limit)
        return DownloadResult(paths=paths, bytes=written, sandbox_replaced=replaced, state_lost=replaced)

    async def __aenter__(self) -> DockerSandbox:
        if self._channel is None:
            await self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _safe_extract(data: bytes, dest: Path, max_bytes: int = 64 * 1024 * 1024) -> list[str]:
    """Extract a downloaded archive under `dest`; see `_extract_counted`. Returns the top-level paths."""
    return _extract_counted(data, dest, max_bytes)[0]


def _extract_counted(data: bytes, dest: Path, max_bytes: int) -> tuple[list[str], int]:
    """Extract an archive from an untrusted sandbox under `dest`; returns (top-level paths, bytes written).

    Everything is checked before anything is written: names, links, types (sparse members too: their
    headers do not say how much they expand to). Hard links are written as copies. Then files are written by our own loop that counts the
    bytes that actually reach the disk and stops at `max_bytes` whatever the headers claim; on any
    refusal, what was written is removed again, so a refused archive leaves nothing behind.
    """
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    created: list[Path] = []
    written = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = tar.getmembers()
            for member in members:
                problem = check_member(member)
                if problem is None and member.issparse():
                    problem = "sparse file"
                if problem:
                    raise UnsafeArchive(
                        f"refusing the downloaded archive: entry {member.name!r}: {problem}; nothing was written"
                    )
                try:
                    tarfile.data_filter(member, str(dest))
                except tarfile.FilterError as exc:
                    raise UnsafeArchive(
                        f"refusing the downloaded archive: {exc}; nothing was written"
                    ) from None
            for member in members:
                target = dest / member.name
                parent = target.parent.resolve()
                if parent != root and root not in parent.parents:
                    raise UnsafeArchive(
                        f"refusing the downloaded archive: entry {member.name!r} would land outside {dest} through a link; nothing was written"
                    )
                if member.isdir():
                    if not target.is_dir():
                        target.mkdir(parents=True)
                        created.append(target)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                if member.issym():
                    target.symlink_to(member.linkname)
                    created.append(target)
                    continue
                try:
                    src = tar.extractfile(member)  # a hard link is written as a copy of its target
                except KeyError as exc:
                    raise UnsafeArchive(
                        f"refusing the downloaded archive: entry {member.name!r}: {exc}; nothing was written"
                    ) from None
                if src is None:
                    raise UnsafeArchive(
                        f"refusing the downloaded archive: entry {member.name!r} has no data; nothing was written"
                    )
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                created.append(target)
                with os.fdopen(fd, "wb") as out:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > max_bytes:
                            raise UnsafeArchive(
                                f"refusing the downloaded archive: it holds more than the download limit of {max_bytes} bytes; nothing was written"
                            )
                        out.write(chunk)
    except tarfile.TarError as exc:
        _remove(created)
        raise UnsafeArchive(f"the sandbox sent a broken archive: {exc}") from None
    except BaseException:
        _remove(created)
        raise
    return [str(dest / m.name) for m in members if "/" not in m.name.rstrip("/")], written


def _remove(paths: list[Path]) -> None:
    for path in reversed(paths):
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()


class _Raw(BaseModel):
    pass
