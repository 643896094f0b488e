"""Extracting an archive that came from an untrusted sandbox: checked whole first, bytes counted, undone on refusal."""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
from pathlib import Path

from qwq_agent.sandbox.errors import UnsafeArchive
from qwq_agent.sandbox.supervisor import check_member
from qwq_agent.sandbox.surrogates import clean_text


def _safe_extract(data: bytes, dest: Path, max_bytes: int = 64 * 1024 * 1024) -> list[str]:
    """Extract a downloaded archive under `dest`; see `_extract_counted`. Returns the top-level paths."""
    return _extract_counted(data, dest, max_bytes)[0]


def _extract_counted(data: bytes, dest: Path, max_bytes: int) -> tuple[list[str], int, list[str]]:
    """Extract an archive from an untrusted sandbox under `dest`.

    Returns (top-level paths, bytes written, symlinks left out). Everything is checked before anything
    is written: names, links, types (sparse members too: their headers do not say how much they expand
    to). A symlink that is absolute or resolves out of `dest` is left out and named rather than refusing
    the lot: a workspace routinely holds one (a venv's `bin/python3 -> /usr/bin/python3`), and copying
    the rest back matters more than a link that would point somewhere else on the host anyway. Hard links are written as copies. Then files are written by our own loop that counts the
    bytes that actually reach the disk and stops at `max_bytes` whatever the headers claim; on any
    refusal, what was written is removed again, so a refused archive leaves nothing behind.
    """
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    created: list[Path] = []
    skipped: list[str] = []
    links: list[tuple[tarfile.TarInfo, Path]] = []
    written = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = []
            for member in tar.getmembers():
                outside = _link_outside(member, dest) if member.issym() else None
                if outside:
                    skipped.append(clean_text(f"{member.name} -> {member.linkname} ({outside})"))
                    continue
                members.append(member)
                problem = check_member(member)
                if problem and member.issym() and problem.startswith("link to"):
                    problem = None  # `docs/README.md -> ../README.md`: data_filter below says it stays inside
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
                    links.append((member, target))
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
            _drop_links_leaving(links, root, skipped)
    except tarfile.TarError as exc:
        _remove(created)
        raise UnsafeArchive(f"the sandbox sent a broken archive: {exc}") from None
    except BaseException:
        _remove(created)
        raise
    return [str(dest / m.name) for m in members if "/" not in m.name.rstrip("/")], written, skipped


def _drop_links_leaving(links: list[tuple[tarfile.TarInfo, Path]], root: Path, skipped: list[str]) -> None:
    """Remove the written links that resolve out of `root` now that everything is in place.

    Each link was checked alone; together they can still leave (`a/b -> ..` written after `c -> a/b/../..`
    was checked while `a/b` did not exist yet). Removing one can change where others lead, so repeat.
    """
    while True:
        leaving = [(m, t) for m, t in links if not _leads_inside(t, root)]
        if not leaving:
            return
        for member, target in leaving:
            target.unlink()
            links.remove((member, target))
            skipped.append(clean_text(f"{member.name} -> {member.linkname} (leads out of the destination)"))


def _leads_inside(link: Path, root: Path) -> bool:
    try:
        path = link.resolve()
    except (OSError, RuntimeError):  # a loop of links: nowhere useful either
        return False
    return path == root or root in path.parents


def _link_outside(member: tarfile.TarInfo, dest: Path) -> str | None:
    """Why the symlink `member` may not be written under `dest` (absolute, leaving it), or None."""
    name = member.name
    if name.startswith("/") or os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        return None  # not a link problem: the name itself is refused with the rest of the archive
    try:
        tarfile.data_filter(member, str(dest))
    except (tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError) as exc:
        return str(exc)
    except tarfile.FilterError:
        return None
    return None


def _remove(paths: list[Path]) -> None:
    for path in reversed(paths):
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()
