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


def download(args):
    import tarfile

    shown, real = resolve(args.get("path"), allow_missing=False)
    total = 0

    def budget(info):
        nonlocal total
        total += info.size
        if total > MAX_DOWNLOAD:
            raise RequestError(
                "InvalidRequest", f"{shown} is larger than the download limit of {MAX_DOWNLOAD} bytes"
            )
        return info

    buf = io.BytesIO()
    try:
        with tarfile.open(fileobj=buf, mode="w") as archive:
            archive.add(real, arcname=os.path.basename(shown.rstrip("/")) or "workspace", filter=budget)
    except RecursionError:
        raise RequestError(
            "ToolError",
            f"{shown} is nested too deeply to download; archive a shallower part of it with the shell",
        ) from None
    return {"data": base64.b64encode(buf.getvalue()).decode("ascii"), "bytes": total}
