"""`upload` and `download`: tar archives in and out of the workspace, checked entry by entry."""

import base64
import contextlib
import io
import os
import stat

from .files import resolve
from .framing import RequestError
from .settings import MAX_DOWNLOAD, WORKSPACE
from .snapshots import _KINDS, _Skipped
from .staging import Staged, stage


def check_member(member):
    """Why a tar entry is unsafe to extract (absolute, `..`, a link leaving, a special file), or None.

    Names are split on `/` only, as the disk does: a `\\` is an ordinary character on Linux, and a check
    that read it as `/` judged another name than the one written (`workspace\\notes.sh`)."""
    name = member.name
    parts = name.split("/")
    if name.startswith("/") or os.path.isabs(name):
        return "absolute path"
    if ".." in parts:
        return "`..` in the path"
    if member.issym() or member.islnk():
        target = member.linkname
        if target.startswith("/") or ".." in target.split("/"):
            return f"link to {target!r} leaves the destination"
    elif not (member.isfile() or member.isdir()):
        return "not a regular file or directory"
    return None


def upload(args):
    import tarfile

    shown, dest = resolve(args.get("dest") or WORKSPACE)
    try:
        data = base64.b64decode(args.get("data") or "", validate=True)
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
        members = archive.getmembers()
    except (ValueError, tarfile.TarError) as exc:
        raise RequestError("InvalidRequest", f"not a valid tar archive: {exc}") from None
    skipped = _Skipped()
    kept = []
    for member in members:
        leaving = _link_leaving(member)
        if leaving:
            # A project's `.venv/bin/python3 -> /usr/bin/python3`: the link would point at something
            # else in here anyway, and refusing the lot would mean the run cannot start at all.
            skipped.append(f"{member.name} -> {member.linkname} ({leaving})")
            continue
        kept.append(member)
        problem = check_member(member)
        if problem and member.issym() and problem.startswith("link to"):
            problem = None  # `docs/README.md -> ../README.md`: _link_leaving says it stays inside
        if problem:
            raise RequestError(
                "UnsafeArchive",
                f"refusing the archive: entry {member.name!r}: {problem}; nothing was extracted",
            )
    staged = Staged(shown)
    try:
        written = stage(archive, kept, dest, staged)
    except (OSError, RequestError) as exc:
        staged.undo()
        raise staged.failure(exc) from None
    staged.commit()
    return {"dest": shown, "entries": len(kept), "bytes": written, "skipped": skipped.shown,
            "skipped_count": skipped.count}  # fmt: skip


def _link_leaving(member):
    """Why the symlink `member` would lead out of the upload's destination (absolute, too many `..`), or None."""
    if not member.issym():
        return None
    name, target = member.name, member.linkname  # split on `/` only (see `check_member`)
    if name.startswith("/") or ".." in name.split("/"):
        return None  # the name itself is refused with the rest of the archive
    if target.startswith("/") or os.path.isabs(target):
        return "absolute link"
    lands = os.path.normpath(os.path.join(os.path.dirname(name), target))
    if lands == ".." or lands.startswith("../"):
        return "leads out of the destination"
    return None


MAX_DOWNLOAD_ENTRIES = 100_000  # the host writes every entry to its disk; a million empty files is no result
CHUNK = 4 * 1024 * 1024  # raw archive bytes per streamed event frame
_BLOCK = 512


class _Stream(io.BufferedIOBase):
    """The archive as tarfile writes it: every byte counted against the limit and sent out in chunks.

    Counting what is written (headers, PAX records, padding) rather than file sizes means a folder of a
    million empty files is refused like one huge file; sending chunks as they fill means the supervisor
    never holds more than one of them, whatever the size (it shares the container's memory with tmpfs).
    """

    def __init__(self, send, shown):
        super().__init__()
        self.send, self.shown = send, shown
        self.buf = bytearray()
        self.total = 0

    def too_large(self):
        return RequestError(
            "InvalidRequest",
            f"{self.shown} is larger than the download limit of {MAX_DOWNLOAD} bytes (file contents and "
            f"512-byte tar headers, at most {MAX_DOWNLOAD_ENTRIES} entries); download a smaller part of it",
        )

    def reserve(self, n):
        if self.total + n > MAX_DOWNLOAD:
            raise self.too_large()

    def writable(self):
        return True

    def write(self, data):
        self.reserve(len(data))
        self.total += len(data)
        self.buf += data
        if len(self.buf) >= CHUNK:
            self.send_rest()
        return len(data)

    def send_rest(self):  # not flush(): IOBase calls that from close() and __del__, after the reply
        if self.buf:
            self.send({"event": "download_chunk"}, self.buf)
            self.buf = bytearray()


def download(args):
    import tarfile

    shown, real = resolve(args.get("path"), allow_missing=False)
    send = args.get("_send")
    if send is None:
        raise RequestError("InvalidRequest", "download is a streaming call")
    out = _Stream(send, shown)
    skipped = _Skipped()
    # Entries (their numbers) written to while they were read, or that shrank (padded with zeros): the host
    # leaves them out.
    changed = []
    cut = _Skipped()  # files that grew while sent: archived at the size their header claims
    entries = 0
    content = 0

    def budget(info):
        nonlocal entries, content
        entries += 1
        if entries > MAX_DOWNLOAD_ENTRIES:
            raise out.too_large()
        # Refused on the sizes the headers will claim, before a big file is read at all.
        out.reserve(_BLOCK + info.size + (-info.size % _BLOCK))
        content += info.size
        return info

    # Named as the host names it (`file_ops._top_name`: the request's path, lexically): `shown` names the
    # real file, which for `link/..` is another folder than the host expects, and it refuses the lot.
    path = args.get("path")
    top = os.path.basename(os.path.normpath(path if os.path.isabs(path) else os.path.join(WORKSPACE, path)))
    top = top or "workspace"
    root = os.path.realpath(WORKSPACE)
    with tarfile.open(fileobj=out, mode="w|") as archive:  # stream mode: only write() is needed
        # Our own walk, not archive.add: one FIFO, socket or unreadable folder (an agent's `mkfifo`, a
        # server it left running, `chmod 000`) is left out and named, as snapshots do, rather than
        # costing the whole copy-back; and a stack, not recursion, so depth is no limit either. An
        # error may skip an entry only before its header is out (see `_emit`).
        stack = [(top, real)]
        while stack:
            name, path = stack.pop()
            try:
                st = os.lstat(path)
                if stat.S_ISDIR(st.st_mode):
                    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                    try:
                        if not _inside(fd, root):
                            skipped.append(f"{name}/: changed while it was archived")
                            continue
                        info = _header(name, os.fstat(fd))  # the folder listed: a folder (O_DIRECTORY)
                        with os.scandir(fd) as it:
                            children = sorted(e.name for e in it)
                    finally:
                        os.close(fd)
                    _emit(archive, budget(info))
                    stack.extend((f"{name}/{c}", os.path.join(path, c)) for c in reversed(children))
                elif stat.S_ISREG(st.st_mode):
                    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
                    with os.fdopen(fd, "rb") as f:
                        # Swapped after the lstat, or reached through a folder swapped for a link since
                        # it was listed (O_NOFOLLOW guards only the last component): not ours to read.
                        if not stat.S_ISREG(os.fstat(fd).st_mode) or not _inside(fd, root):
                            skipped.append(f"{name}: changed while it was archived")
                            continue
                        before = _settled_stat(fd)  # before anything is read: see `_written_meanwhile`
                        info = archive.gettarinfo(name, name, f)
                        if info.islnk():
                            _emit(archive, budget(info))
                            continue
                        out.reserve(_BLOCK + info.size)  # refused on the size it claims, before reading
                        source = _contents(f, info)
                        _emit(archive, budget(info), source)
                        after = os.fstat(fd)
                        if isinstance(source, _Padded) and source.short:
                            changed.append(entries - 1)  # zeros where it ended: never written cut
                        elif after.st_size > info.size:
                            cut.append(name)  # a log appended to: what was read holds, cut at its size
                        elif _written_meanwhile(before, after):
                            changed.append(entries - 1)
                elif stat.S_ISLNK(st.st_mode):
                    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW)  # the link itself
                    try:
                        st = os.fstat(fd)
                        if not stat.S_ISLNK(st.st_mode) or not _inside(fd, root):
                            skipped.append(f"{name}: changed while it was archived")
                            continue
                        info = _header(
                            name, st, os.readlink("", dir_fd=fd)
                        )  # readlinkat(fd, ""): this link's
                    finally:
                        os.close(fd)
                    _emit(archive, budget(info))
                else:
                    skipped.append(f"{name}: {_KINDS.get(stat.S_IFMT(st.st_mode), 'special file')}")
            except OSError as exc:  # unreadable, or gone mid-walk; before its header, see `_emit`
                suffix = "/" if os.path.isdir(path) and not os.path.islink(path) else ""
                skipped.append(f"{name}{suffix}: {exc.strerror or exc}")
    out.send_rest()
    return {"bytes": content, "archive_bytes": out.total, "entries": entries,
            "skipped": skipped.shown, "skipped_count": skipped.count, "changed": changed,
            "cut": cut.shown, "cut_count": cut.count}  # fmt: skip


def _header(name, st, linkname=""):
    """The tar header of a folder or symlink from `st`, the fstat of the fd it was opened by with
    O_NOFOLLOW. Never from a second look by path (`gettarinfo`): by then the path may be something
    else, a folder swapped for a link, and a link header with the folder's listing after it lets the
    host write those entries through the link. (Files: `gettarinfo` with their open file, an fstat too.)"""
    import tarfile

    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE if stat.S_ISLNK(st.st_mode) else tarfile.DIRTYPE
    info.linkname = linkname
    info.mode, info.uid, info.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    info.mtime = int(st.st_mtime)
    return info


def _inside(fd, root):
    """Whether the open file or folder `fd` really is under `root` (the path it was opened by may not be)."""
    where = os.readlink(f"/proc/self/fd/{fd}")
    return where == root or where.startswith(root + "/")


def _settled_stat(fd):
    """The fstat of the regular file `fd`, taken before any write still in progress on it has ended;
    its position back at 0.

    A write stamps mtime/ctime as it begins and holds the inode's lock until its last byte: one that
    began before the fstat could still be copying its bytes while the file is read, its stamp already
    seen. `lseek(SEEK_DATA)` takes that lock (tmpfs, ext4, xfs), so once it returns, such a write has
    ended, and a write still to come (any whose bytes can land in the read) stamps the file after the
    fstat. (A write is one bounded copy: this waits for no process, only for the write one is in.)"""
    st = os.fstat(fd)
    with contextlib.suppress(OSError):  # ENXIO: empty; EINVAL: a filesystem without SEEK_DATA
        os.lseek(fd, 0, os.SEEK_DATA)
    os.lseek(fd, 0, os.SEEK_SET)
    return st


def _written_meanwhile(before, after):
    """Whether the file was written between `before` (`_settled_stat`) and `after`, the fstats around its
    read: then what was read may mix old and new contents (a database or checkpoint rewritten in place at
    the same size), and the host leaves it out. Timestamps are only as fine as the kernel keeps them: a
    write within the same clock tick as the change before `before` may go unseen (kernels with multigrain
    timestamps, 6.13+, give a change after a stat a timestamp of its own); and stores through a shared
    mmap stamp nothing at all."""
    return any(getattr(before, k) != getattr(after, k) for k in ("st_mtime_ns", "st_ctime_ns", "st_size"))


def _contents(f, info):
    """What to archive of the open file `f`, with `info.size` set to what that holds.

    A file up to one chunk is read whole first and its header says what was read, so one that shrinks
    meanwhile (a log a running process truncates) is archived consistently as it was read. A larger one
    is streamed from `f` for `info.size` bytes (held whole, it would share the container's memory with
    the tmpfs it came from), its header out before its data is read: one that shrinks is padded with
    zeros to that size (`_Padded`; stopping there would cost the whole download, every other file of
    the run, for one file something still writes). Either kind that grows is cut at `info.size`; one
    written while it was read, or that shrank, is named `changed` by the caller (`_written_meanwhile`).
    """
    if info.size > CHUNK:
        return _Padded(f, info.size)
    data = f.read(info.size)
    info.size = len(data)
    return io.BytesIO(data)


class _Padded:
    """`f` read for `size` bytes, zeros past where it ends (`short` then): the header's size always comes."""

    def __init__(self, f, size):
        self.f, self.left, self.short = f, size, False

    def read(self, n):
        n = min(n, self.left)
        data = b"" if self.short else self.f.read(n)
        if len(data) < n:
            self.short = True
            data += bytes(n - len(data))
        self.left -= n
        return data


def _emit(archive, info, source=None):
    """Write one member, header and data. Once its header is out, nothing may skip it and go on: the
    host would take the bytes after a header promising more than came (the next file's contents,
    which the sandbox chose) as headers of entries of its making. So a failed read stops the download
    (a file that shrank is no failure: `_Padded`)."""
    try:
        archive.addfile(info, source)
    except OSError as exc:
        raise RequestError(
            "ToolError",
            f"{info.name} changed while it was archived ({exc.strerror or exc}: something in the sandbox "
            "still writes to it); the download was stopped and nothing was written; try again",
        ) from None
