"""Extracting an archive that came from an untrusted sandbox: checked whole first, bytes counted, undone on refusal."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import stat
import tarfile
import time
from collections.abc import Collection
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from qwq_agent.sandbox.errors import DestinationExists, SandboxError, UnsafeArchive
from qwq_agent.sandbox.git_files import Cleaned, TooLong, identity, remove_from_git_folders
from qwq_agent.sandbox.supervisor import check_member
from qwq_agent.sandbox.surrogates import clean_text


class Extracted(NamedTuple):
    """What `_extract_counted` wrote and left out."""

    paths: list[str]  # the top-level path written
    written: int  # bytes that reached the disk
    skipped: list[str]  # links left out, each with why
    git_left_out: list[str]  # what git would run commands from (`git_files`), removed again
    git_settings: list[str]  # a line per git config rebuilt without some settings, or old remotes left out


def _safe_extract(data: bytes, dest: Path, max_bytes: int = 64 * 1024 * 1024) -> list[str]:
    """Extract a downloaded archive under `dest`; see `_extract_counted`. Returns the top-level paths."""
    return _extract_counted(data, dest, max_bytes).paths


def _extract_counted(
    data: bytes,
    dest: Path,
    max_bytes: int,
    timeout: float = 120.0,
    *,
    top: str | None = None,
    entries: int | None = None,
    changed: Collection[int] = (),
) -> Extracted:
    """Extract an archive from an untrusted sandbox under `dest`.

    Returns what was written and left out (`Extracted`). The archive is one file or folder
    (`top`, when the caller knows its name): every entry is under one top-level name, and links and
    parent folders are judged against `dest/top`, the folder being copied back, not `dest`, which holds
    the operator's other work. Everything is checked before anything is written: names, links, types
    (sparse members too: their headers do not say how much they expand to). A symlink that is absolute
    or resolves out of `dest/top` is left out and named rather than refusing the lot: a workspace
    routinely holds one (a venv's `bin/python3 -> /usr/bin/python3`), and copying the rest back matters
    more than a link that would point somewhere else on the host anyway. Hard links are written as
    copies. Files and folders keep the sandbox's permission bits, never more than the umask allows (a
    0600 key stays 0600), the owner always able to read and write (and search a folder); never setuid,
    setgid or sticky. Files are written by our own
    loop that counts the bytes that actually reach the disk and stops at `max_bytes` whatever the
    headers claim; on any refusal, what was written is removed again, so a refused archive leaves
    nothing behind. It all runs under `timeout` (a worker thread that no deadline or Ctrl-C could stop
    otherwise), and an entry that is already on the host (a second copy-back into the same folder)
    refuses the lot up front. With `entries` (the count the sandbox's reply gives), an archive that
    reads as another number of entries, or holds anything but zeros after its end, is refused: a header
    promising more bytes than came after it makes the following file contents read as headers of the
    sandbox's choosing. The files at the entry numbers in `changed` (the supervisor's: written to while
    they were read, so a mix of old and new contents, or shrunk and padded with zeros) are left out and
    named, as are hard links to them. So is an entry whose path under `dest` (or a name in it, or its
    link target) is too long for the host's kernel: a deep path that fits in the sandbox can exceed
    PATH_MAX under the operator's DIR, and costs only itself. Every entry is judged in time linear in
    its own name, whatever the depth: names lexically, each folder looked up on the host's disk once.
    Once all is written, what git would run commands from is removed from every git folder found on
    disk in what this copy-back wrote, and named in `git_left_out`; its configs are rebuilt with only
    their safe settings, a line per config naming those dropped in `git_settings` (`git_files`).
    """
    deadline = time.monotonic() + timeout
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    limits = _Limits.of(dest)
    where = _Where(str(root))  # the disk as it is before anything is written: the first pass's view
    inside = root  # `root / top` once the top-level name is known: nothing may resolve out of it
    created: list[str] = []
    ours: set[tuple[int, int]] = set()  # `identity` of each entry written: only those are removed again
    skipped: list[str] = []
    git = Cleaned([], [])
    links: list[tuple[tarfile.TarInfo, str]] = []
    parents: dict[str, str] = {}  # each folder resolved once, not once per entry in it
    written = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = []
            _check_whole(tar, data, entries)
            shrank: set[str] = set()
            for index, member in enumerate(tar.getmembers()):
                if time.monotonic() > deadline:
                    raise _Timeout
                if "\0" in member.name or "\0" in member.linkname:  # a PAX record can hold one
                    raise UnsafeArchive(
                        f"refusing the downloaded archive: entry {member.name!r}: its name or link target "
                        "holds a NUL byte; nothing was written"
                    )
                top = _top_entry(member, top)
                inside = root / top
                too_long = _too_long(member, dest, root, limits)
                if too_long:
                    skipped.append(clean_text(f"{_shortened(member.name)}: {too_long}"))
                    continue
                outside = _link_outside(member, top, where) if member.issym() else None
                if outside:
                    skipped.append(clean_text(f"{member.name} -> {member.linkname} ({outside})"))
                    continue
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
                    _data_filter(member, where)
                if (member.isreg() and index in changed) or (member.islnk() and member.linkname in shrank):
                    shrank.add(member.name)
                    skipped.append(
                        clean_text(f"{member.name}: changed while it was copied (written to as it was read)")
                    )
                    continue
                existing = where.existing(member.name)
                if existing is not None and not (member.isdir() and os.path.isdir(existing)):
                    raise DestinationExists(
                        f"{dest / member.name} already exists; copy into a folder that does not hold "
                        f"{member.name.split('/')[0]!r} yet; nothing was written"
                    )
                members.append(member)
            # Paths as text from here on: a `Path` of a 1,900-level name is parsed anew for each use.
            for member in members:
                if time.monotonic() > deadline:
                    raise _Timeout
                name = _normal(member.name)
                folder = name.rpartition("/")[0]
                target = f"{dest}/{name}"
                parent = _resolve_under(folder, str(dest), str(root), parents)
                allowed = inside if folder else root  # the top entry itself lands in `dest`
                if not _within(parent, str(allowed)):
                    raise UnsafeArchive(
                        f"refusing the downloaded archive: entry {member.name!r} would land outside {dest / str(top)} through a link; nothing was written"
                    )
                if member.isdir():
                    _make_dirs(target, created, ours)
                    _narrow_folder(target, member.mode, ours)
                    continue
                _make_dirs(f"{dest}/{folder}" if folder else str(dest), created, ours)
                if member.issym():
                    os.symlink(member.linkname, target)
                    created.append(target)
                    ours.add(identity(os.lstat(target)))
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
                # The permission bits, so a 0600 `.env` or key stays private and scripts keep +x (which git
                # records); the owner can always read and write; never setuid, setgid or sticky. The umask
                # applies as to any new file.
                mode = (member.mode & 0o777) | 0o600
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
                created.append(target)
                ours.add(identity(os.fstat(fd)))
                with os.fdopen(fd, "wb") as out:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > max_bytes:
                            raise UnsafeArchive(
                                f"refusing the downloaded archive: it holds more than the download limit of {max_bytes} bytes; nothing was written"
                            )
                        out.write(chunk)
            _drop_links_leaving(links, inside, skipped, deadline)
            if top is not None:
                git = remove_from_git_folders(dest / top, dest, ours, deadline)
    except tarfile.TarError as exc:
        _remove(created)
        raise UnsafeArchive(f"the sandbox sent a broken archive: {exc}") from None
    except (_Timeout, TooLong):
        _remove(created)
        raise UnsafeArchive(
            f"writing the downloaded archive took more than {timeout:g}s; nothing was written"
        ) from None
    except (SandboxError, OSError):  # refused, or the host's own disk failed: said as it is
        _remove(created)
        raise
    except Exception as exc:  # what the checks above missed in a forged archive: still a refusal
        _remove(created)
        raise UnsafeArchive(
            f"refusing the downloaded archive: {type(exc).__name__}: {exc}; nothing was written"
        ) from None
    except BaseException:
        _remove(created)
        raise
    return Extracted(
        [str(dest / top)] if members and top else [],
        written,
        skipped,
        [clean_text(p) for p in git.removed],
        [clean_text(line) for line in git.settings],
    )


def _check_whole(tar: tarfile.TarFile, data: bytes, entries: int | None) -> None:
    """Refuse an archive that is not the one the sandbox's reply describes (see `_extract_counted`)."""
    if entries is None:
        return
    found = len(tar.getmembers())
    end = tar.offset  # where reading stopped: the end-of-archive blocks, or a block that is no header
    if found != entries or end > len(data) or data[end:].strip(b"\0"):
        why = (
            f"it reads as {found} entries where the sandbox sent {entries}"
            if found != entries
            else "there is more after its end"
        )
        raise UnsafeArchive(
            f"refusing the downloaded archive: {why} (a header that does not match what follows it); "
            "nothing was written"
        )


def _make_dirs(path: str, created: list[str], ours: set[tuple[int, int]]) -> None:
    """`path` and its missing parents, each one recorded: a refused archive leaves none of them behind."""
    missing = []
    while path not in ("", "/") and not os.path.isdir(path):  # `dest` is there: made first thing
        missing.append(path)
        path = os.path.dirname(path)
    for folder in reversed(missing):
        os.mkdir(folder)
        created.append(folder)
        ours.add(identity(os.lstat(folder)))


def _narrow_folder(path: str, mode: int, ours: set[tuple[int, int]]) -> None:
    """Take from the folder this copy-back made at `path` the permission bits the sandbox's folder did not
    have (`mode`): a 0700 `secrets/` stays private. Bits are only taken away (the umask's stay applied),
    the owner keeps read, write and search, and a folder that was there before, or a link, is left as it is."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or identity(st) not in ours:  # a link, or the operator's folder
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if identity(st) in ours:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & ((mode & 0o777) | 0o700 | 0o7000))
    finally:
        os.close(fd)


def _resolve_under(folder: str, dest: str, root: str, resolved: dict[str, str]) -> str:
    """Where `folder` (a name under `dest`; "" for `dest`) really is, from its nearest resolved ancestor
    one component at a time, each looked at on disk as it is now: `Path.resolve()` of every folder
    re-walked each level in Python, quadratic in the depth (a 1,500-level tree took minutes). Only a
    component that is a link is resolved in full."""
    chain = []
    while folder and folder not in resolved:
        chain.append(folder)
        folder = folder.rpartition("/")[0]
    where = resolved[folder] if folder else root
    for step in reversed(chain):
        path, last = f"{dest}/{step}", step.rpartition("/")[2]
        if os.path.islink(path):
            where = os.path.realpath(path)
        elif last not in ("", "."):
            where = f"{where.rstrip('/')}/{last}"
        resolved[step] = where
    return where


def _normal(name: str) -> str:
    """`name` as `dest / name` writes it (`a/./b` is `a/b`, `a//b` too; no `/` at the end); a plain name,
    the usual one, as it is, without a `Path` parsed."""
    if "//" in name or "./" in name or name.endswith(("/", "/.")) or name == ".":
        return str(PurePosixPath(name))
    return name


MAX_LINK_HOPS = 40  # what the kernel follows in one lookup (ELOOP past it)


def _drop_links_leaving(
    links: list[tuple[tarfile.TarInfo, str]], root: Path, skipped: list[str], deadline: float
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
            os.unlink(target)
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

    def leaves(self, link: str, root: Path) -> str | None:
        """Why `link` may not stay (it leads out of `root`, or through too many links), or None."""
        name = link
        start = "/" if name.startswith("/") else os.getcwd()  # a relative `dest`: `--copy-back out`
        try:
            real, _ = self._real(start, name.split("/"), MAX_LINK_HOPS)
        except _TooDeep:
            return f"more than {MAX_LINK_HOPS} links deep, or a loop"
        return None if _within(real, str(root)) else "leads out of the destination"

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


class _Limits(NamedTuple):
    """The longest path (bytes, its NUL not counted) and name the host's kernel takes under `dest`."""

    path: int
    name: int

    @classmethod
    def of(cls, dest: Path) -> _Limits:
        try:  # Linux: 4096 with the NUL, and 255; macOS: 1024, and 255
            return cls(os.pathconf(dest, "PC_PATH_MAX") - 1, os.pathconf(dest, "PC_NAME_MAX"))
        except (OSError, ValueError):
            return cls(4095, 255)


def _too_long(member: tarfile.TarInfo, dest: Path, root: Path, limits: _Limits) -> str | None:
    """Why `member` cannot be written on this host (its path under `dest` or a name in it too long for
    the kernel, or its link target), or None. A path that fits in the sandbox can still be too long here,
    under the operator's DIR: written, it raised ENAMETOOLONG and cost every other file of the copy.
    Counted on the name's bytes, not a `Path` of it: parsed, a 1,900-level name cost milliseconds."""
    raw = os.fsencode(member.name)
    if len(max(raw.split(b"/"), key=len)) > limits.name:
        return f"a name in its path is longer than {limits.name} bytes"
    raw = os.fsencode(_normal(member.name))
    # Both forms are used: the one as given (maybe relative) for writing, the resolved one for judging.
    if max(len(os.fsencode(str(dest))), len(os.fsencode(str(root)))) + 1 + len(raw) > limits.path:
        return f"its path on the host would be longer than {limits.path} bytes"
    if member.issym() and len(os.fsencode(member.linkname)) > limits.path:
        return f"its link target is longer than {limits.path} bytes"
    return None


def _shortened(name: str, keep: int = 120) -> str:
    """`name` with its middle left out when long: a 4,000-byte path named in full fills the screen."""
    return name if len(name) <= 2 * keep + 3 else f"{name[:keep]}...{name[-keep:]}"


def _top_entry(member: tarfile.TarInfo, top: str | None) -> str:
    """The archive's top-level name: `top`, or the first entry's; an entry under another is refused.

    A download is one file or folder. A second top-level name (`otherproject/conftest.py` beside
    `workspace/`) would be written into the operator's folder of that name beside the copy. Names are
    split on `/` only, as they are written: `workspace\\notes.sh` is a name of its own, beside the copy.
    """
    first = member.name.split("/")[0]
    if top is None:
        top = first
    if first != top or first in ("", ".", ".."):
        raise UnsafeArchive(
            f"refusing the downloaded archive: entry {member.name!r} is not under {top!r}, the one file "
            "or folder downloaded; nothing was written"
        )
    return top


def _link_outside(member: tarfile.TarInfo, top: str, where: _Where) -> str | None:
    """Why the symlink `member` may not be written under `dest/top` (absolute, leaving it), or None."""
    name = member.name
    if name.startswith("/") or os.path.isabs(name) or ".." in name.split("/"):
        return None  # not a link problem: the name itself is refused with the rest of the archive
    try:
        _data_filter(member, where)
    except _Outside as exc:
        return str(exc)
    # Inside `dest` is not enough: `workspace/notes.md -> ../otherproject/secrets.env` would aim the
    # copy at the operator's other files beside it. (Links through links are judged once all are written.)
    lands = os.path.normpath(os.path.join(os.path.dirname(name), member.linkname))
    if lands != top and not lands.startswith(top + "/"):
        return "leads out of the destination"
    return None


_Outside = (tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError)


def _data_filter(member: tarfile.TarInfo, where: _Where) -> None:
    """What tarfile's `data` filter checks, on the disk as `where` sees it: what it refuses refuses the
    archive, but for links leaving (`_Outside`), raised as they are. Its `os.path.realpath` of each entry
    re-walked the entry's whole path on disk, a system call per level (20 ms an entry 1,900 levels deep);
    `where` looks each folder up once. Its other checks (absolute names, `..`, special files) are
    `check_member`'s too; its changes to modes and owners are not used (the files are written here)."""
    name = member.name
    if name.startswith("/") or os.path.isabs(name) or ".." in name.split("/"):
        raise UnsafeArchive(
            f"refusing the downloaded archive: entry {name!r}: absolute or with `..`; nothing was written"
        )
    lands = where.entry(name)
    if not _within(lands, where.root):
        problem: tarfile.FilterError = tarfile.OutsideDestinationError(member, lands)
        raise UnsafeArchive(f"refusing the downloaded archive: {problem}; nothing was written")
    if member.islnk() or member.issym():
        if os.path.isabs(member.linkname):
            raise tarfile.AbsoluteLinkError(member)
        if member.issym():
            target = where.follow(name.rpartition("/")[0], member.linkname)
        else:  # a hard link names its target from the archive's root: no `..` (`check_member`)
            target = where.entry(member.linkname)
        if not _within(target, where.root):
            raise tarfile.LinkOutsideDestinationError(member, target)


def _within(path: str, folder: str) -> bool:
    """Whether the absolute `path` is `folder` or under it: compared as text, not through `Path.parents`,
    which built and compared every ancestor (O(depth) per entry)."""
    return path == folder or path.startswith(folder if folder.endswith("/") else folder + "/")


class _Where:
    """Where a name under `dest` leads on the host's disk as it is before anything is written, as
    `os.path.realpath` says (through the operator's own links), each folder looked up once and remembered:
    the first pass over an archive writes nothing, so what it found stays true for that pass. Under a
    folder that does not exist, names are joined as text, with no system call."""

    def __init__(self, root: str) -> None:
        self.root = root  # `dest`, resolved
        self.folders: dict[str, tuple[str, bool]] = {"": (root, True)}  # name -> real path, whether there

    def folder(self, name: str) -> tuple[str, bool]:
        """The real path of the folder `name` (relative to `dest`, no `..`) and whether it exists."""
        chain = []
        while name not in self.folders:
            chain.append(name)
            name = name.rpartition("/")[0]
        real, there = self.folders[name]
        for step in reversed(chain):
            real, there = self._step(real, there, step.rpartition("/")[2])
            self.folders[step] = (real, there)
        return real, there

    def entry(self, name: str) -> str:
        """The real path of `name` (relative to `dest`, no `..`); the last step is not remembered."""
        parent, _, last = name.rpartition("/")
        return self._step(*self.folder(parent), last)[0]

    def existing(self, name: str) -> str | None:
        """`dest`'s path of `name` when something is there already (a link too: `os.path.lexists`)."""
        parent, _, last = name.rpartition("/")
        real, there = self.folder(parent)
        path = f"{real}/{last}" if last not in ("", ".") else real
        return path if there and os.path.lexists(path) else None

    def follow(self, folder: str, target: str) -> str:
        """The real path a link in `folder` (relative to `dest`) pointing to the relative `target` leads to."""
        real, there = self.folder(folder)
        for part in target.split("/"):
            if part == "..":
                real = os.path.dirname(real)
                there = there or os.path.lexists(real)  # a folder's parent is there if the folder is
            else:
                real, there = self._step(real, there, part)
        return real

    @staticmethod
    def _step(real: str, there: bool, part: str) -> tuple[str, bool]:
        """`real` (a real path, there or not) joined with one name, resolved as `os.path.realpath` does."""
        if part in ("", "."):
            return real, there
        path = f"{real.rstrip('/')}/{part}"
        if not there:
            return path, False
        try:
            os.readlink(path)
        except OSError as exc:  # EINVAL: there, and no link; anything else: taken as it is (as realpath does)
            return path, exc.errno == errno.EINVAL
        real = os.path.realpath(path)  # a link the host had already: the operator's, resolved in full
        return real, os.path.lexists(real)


def _remove(paths: list[str]) -> None:
    for path in reversed(paths):
        with contextlib.suppress(OSError):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)  # a folder made here: all in it is this copy's (a config rebuilt too)
            else:
                os.unlink(path)
