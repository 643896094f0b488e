"""`upload` and `download`: tar archives in and out of the workspace, checked entry by entry."""

import base64
import io
import os

from .files import make_parents, resolve
from .framing import RequestError
from .settings import MAX_DOWNLOAD, WORKSPACE


def check_member(member):
    """Why a tar entry is unsafe to extract (absolute, `..`, a link leaving, a special file), or None."""
    name = member.name
    parts = name.replace("\\", "/").split("/")
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
    for member in members:
        problem = check_member(member)
        if problem:
            raise RequestError(
                "UnsafeArchive",
                f"refusing the archive: entry {member.name!r}: {problem}; nothing was extracted",
            )
    make_parents(shown, dest)
    root = os.path.realpath(WORKSPACE)
    written = 0
    for member in members:
        target = os.path.join(dest, member.name)
        parent = os.path.realpath(os.path.dirname(target))
        if parent != root and not parent.startswith(root + "/"):
            raise RequestError(
                "UnsafeArchive",
                f"entry {member.name!r} would be written outside the workspace through a link",
            )
        if member.isdir():
            make_parents(shown, target)
            continue
        make_parents(shown, os.path.dirname(target))
        if os.path.lexists(target) and not os.path.isdir(target):
            os.unlink(target)
        if member.issym():
            os.symlink(member.linkname, target)
        elif member.islnk():
            os.link(os.path.join(dest, member.linkname), target)
        else:
            source = archive.extractfile(member)
            if source is None:  # check_member let only regular files get here
                raise RequestError("UnsafeArchive", f"entry {member.name!r} is not a regular file")
            fd = os.open(
                target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, (member.mode & 0o755) | 0o600
            )
            with os.fdopen(fd, "wb") as out, source as src:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            written += member.size
    return {"dest": shown, "entries": len(members), "bytes": written}


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

    try:
        with tarfile.open(fileobj=out, mode="w|") as archive:  # stream mode: only write() is needed
            archive.add(real, arcname=os.path.basename(shown.rstrip("/")) or "workspace", filter=budget)
    except RecursionError:
        raise RequestError(
            "ToolError",
            f"{shown} is nested too deeply to download; archive a shallower part of it with the shell",
        ) from None
    out.send_rest()
    return {"bytes": content, "archive_bytes": out.total, "entries": entries}
