"""Extracting an archive that came from an untrusted sandbox: checked whole first, bytes counted, undone on refusal."""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import time
from pathlib import Path

from qwq_agent.sandbox.errors import DestinationExists, UnsafeArchive
from qwq_agent.sandbox.supervisor import check_member
from qwq_agent.sandbox.surrogates import clean_text


def _safe_extract(data: bytes, dest: Path, max_bytes: int = 64 * 1024 * 1024) -> list[str]:
    """Extract a downloaded archive under `dest`; see `_extract_counted`. Returns the top-level paths."""
    return _extract_counted(data, dest, max_bytes)[0]


def _extract_counted(
    data: bytes, dest: Path, max_bytes: int, timeout: float = 120.0
) -> tuple[list[str], int, list[str]]:
    """Extract an archive from an untrusted sandbox under `dest`.

    Returns (top-level paths, bytes written, symlinks left out). Everything is checked before anything
    is written: names, links, types (sparse members too: their headers do not say how much they expand
    to). A symlink that is absolute or resolves out of `dest` is left out and named rather than refusing
    the lot: a workspace routinely holds one (a venv's `bin/python3 -> /usr/bin/python3`), and copying
    the rest back matters more than a link that would point somewhere else on the host anyway. Hard links are written as copies. Then files are written by our own loop that counts the
    bytes that actually reach the disk and stops at `max_bytes` whatever the headers claim; on any
    refusal, what was written is removed again, so a refused archive leaves nothing behind. It all runs
    under `timeout` (a worker thread that no deadline or Ctrl-C could stop otherwise), and an entry
    that is already on the host (a second copy-back into the same folder) refuses the lot up front.
    """
    deadline = time.monotonic() + timeout
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    created: list[Path] = []
    skipped: list[str] = []
    links: list[tuple[tarfile.TarInfo, Path]] = []
    parents: dict[Path, Path] = {}  # each folder resolved once, not once per entry in it
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
                if not member.issym():  # _link_outside ran the filter on links already
                    _data_filter(member, dest)
                existing = dest / member.name
                if os.path.lexists(existing) and not (member.isdir() and existing.is_dir()):
                    raise DestinationExists(
                        f"{existing} already exists; copy into a folder that does not hold "
                        f"{member.name.split('/')[0]!r} yet; nothing was written"
                    )
            for member in members:
                if time.monotonic() > deadline:
                    raise _Timeout
                target = dest / member.name
                parent = _resolve_under(target.parent, dest, root, parents)
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
            _drop_links_leaving(links, root, skipped, deadline)
    except tarfile.TarError as exc:
        _remove(created)
        raise UnsafeArchive(f"the sandbox sent a broken archive: {exc}") from None
    except _Timeout:
        _remove(created)
        raise UnsafeArchive(
            f"writing the downloaded archive took more than {timeout:g}s; nothing was written"
        ) from None
    except BaseException:
        _remove(created)
        raise
    return [str(dest / m.name) for m in members if "/" not in m.name.rstrip("/")], written, skipped


def _resolve_under(path: Path, dest: Path, root: Path, resolved: dict[Path, Path]) -> Path:
    """Where `path` (under `dest`) really is, from its nearest resolved ancestor one component at a time:
    `Path.resolve()` of every folder re-walked each level in Python, quadratic in the depth (a 1,500-level
    tree took minutes). Only a component that is a link is resolved in full."""
    chain = []
    while path != dest and path not in resolved:
        chain.append(path)
        path = path.parent
    where = root if path == dest else resolved[path]
    for step in reversed(chain):
        where = step.resolve() if step.is_symlink() else where / step.name
        resolved[step] = where
    return where


MAX_LINK_HOPS = 40  # what the kernel follows in one lookup (ELOOP past it)


def _drop_links_leaving(
    links: list[tuple[tarfile.TarInfo, Path]], root: Path, skipped: list[str], deadline: float
) -> None:
    """Remove the written links that resolve out of `root` (or through too many links) now that
    everything is in place.

    Each link was checked alone; together they can still leave (`a/b -> ..` written after `c -> a/b/../..`
    was checked while `a/b` did not exist yet). Removing one can change where others lead, so repeat.
    One resolver per pass remembers every path it resolved, so a chain of links costs one step per link.
    """
    while links:
        resolver = _Resolver(deadline)
        dropped = []
        for member, target in links:
            why = resolver.leaves(target, root)
            if why:
                dropped.append((member, target))
                skipped.append(clean_text(f"{member.name} -> {member.linkname} ({why})"))
        if not dropped:
            return
        for member, target in dropped:
            target.unlink()
            links.remove((member, target))


class _TooDeep(Exception):
    pass


class _Resolver:
    """`os.path.realpath` by hand, remembering each path resolved and capped at `MAX_LINK_HOPS` links."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.known: dict[
            str, tuple[str, int]
        ] = {}  # path (real parent + name) -> (real path, links followed)
        self.too_deep: set[str] = set()

    def leaves(self, link: Path, root: Path) -> str | None:
        """Why `link` may not stay (it leads out of `root`, or through too many links), or None."""
        try:
            real, _ = self._real("/", str(link).split("/"), MAX_LINK_HOPS)
        except _TooDeep:
            return f"more than {MAX_LINK_HOPS} links deep, or a loop"
        path = Path(real)
        return None if path == root or root in path.parents else "leads out of the destination"

    def _real(self, base: str, parts: list[str], budget: int) -> tuple[str, int]:
        """The real path of `parts` taken from the real directory `base`, and the links followed."""
        used = 0
        for part in parts:
            if part in ("", "."):
                continue
            if part == "..":
                base = os.path.dirname(base)
                continue
            path = os.path.join(base, part)
            base, hops = self._one(path, budget - used)
            used += hops
        return base, used

    def _one(self, path: str, budget: int) -> tuple[str, int]:
        if time.monotonic() > self.deadline:
            raise _Timeout
        hit = self.known.get(path)
        if hit is None:
            if path in self.too_deep:
                raise _TooDeep
            try:
                target = os.readlink(path)
            except OSError:  # not a link, or missing: taken as it is (as Path.resolve does)
                hit = (path, 0)
            else:
                if budget < 1:
                    raise _TooDeep
                start = "/" if target.startswith("/") else os.path.dirname(path)
                try:
                    real, hops = self._real(start, target.split("/"), budget - 1)
                except _TooDeep:
                    if budget == MAX_LINK_HOPS:  # too deep from scratch: too deep however it is reached
                        self.too_deep.add(path)
                    raise
                hit = (real, hops + 1)
            self.known[path] = hit
        if hit[1] > budget:
            raise _TooDeep
        return hit


class _Timeout(Exception):
    pass


def _link_outside(member: tarfile.TarInfo, dest: Path) -> str | None:
    """Why the symlink `member` may not be written under `dest` (absolute, leaving it), or None."""
    name = member.name
    if name.startswith("/") or os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        return None  # not a link problem: the name itself is refused with the rest of the archive
    try:
        _data_filter(member, dest)
    except _Outside as exc:
        return str(exc)
    return None


_Outside = (tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError)


def _data_filter(member: tarfile.TarInfo, dest: Path) -> None:
    """tarfile's `data` filter; what it refuses refuses the archive, but for links leaving (`_Outside`)."""
    try:
        tarfile.data_filter(member, str(dest))
    except _Outside:
        raise
    except tarfile.FilterError as exc:
        raise UnsafeArchive(f"refusing the downloaded archive: {exc}; nothing was written") from None


def _remove(paths: list[Path]) -> None:
    for path in reversed(paths):
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()
