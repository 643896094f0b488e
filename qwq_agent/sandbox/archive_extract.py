"""Extracting an archive that came from an untrusted sandbox: checked whole first, bytes counted, undone on refusal."""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
from pathlib import Path

from qwq_agent.sandbox.errors import UnsafeArchive
from qwq_agent.sandbox.supervisor import check_member


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
