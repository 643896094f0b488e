"""The tar archive an upload sends, and its size without reading any file: one walk serves both.

`qwq-agent run` checks at start-up that `--workspace` fits in one upload. Counting "a header and the
data" per file missed what tar writes besides: a header per folder, the padding of each file's data
to 512 bytes, the pax headers of long or non-ASCII names, of long link targets and of sub-second
mtimes (every entry Python's tarfile writes), the end blocks and the record padding. A folder of
40 MiB and 22,000 empty sub-folders passed the check, and only the upload, a sandbox later, refused
it. `packed_size` sums the very headers `pack` writes, from the same walk, and file sizes from `stat`.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

__all__ = ["fits_in_request", "pack", "packed_size"]


def fits_in_request(packed_bytes: int, max_request_bytes: int) -> bool:
    """Whether an archive of `packed_bytes` fits in one request: it is sent base64-encoded (4 bytes of 3)."""
    return packed_bytes * 4 // 3 <= max_request_bytes


def _members(
    tar: tarfile.TarFile,
    path: Path,
    contents: bool,
    exclude: Sequence[str],
    left_out: list[str] | None = None,
) -> Iterator[tuple[str, tarfile.TarInfo]]:
    """`(local path, member)` in the order `TarFile.add` writes them (a folder, then its sorted
    entries); a path with a component named in `exclude` is left out, with what is under it.

    Sockets, FIFOs and devices are left out too, their archive names added to `left_out`: the sandbox
    refuses a whole archive holding a FIFO or a device (one stray named pipe failed every run on its
    folder, a sandbox after the start-up check passed it), and tarfile has no type for a socket.

    `tar.gettarinfo` is what `TarFile.add` calls: it reads the names, types and link targets, and
    numbers hard links, the same way. Iterative: a deep tree does not hit the recursion limit."""
    excluded = set(exclude)
    top = sorted(path.iterdir()) if contents else [path]
    stack = [(str(entry), entry.name) for entry in reversed(top)]
    while stack:
        local, arcname = stack.pop()
        if excluded.intersection(Path(arcname).parts):
            continue
        info = tar.gettarinfo(local, arcname)
        if info is None or info.isfifo() or info.isdev():  # None: a socket
            if left_out is not None:
                left_out.append(arcname)
            continue
        yield local, info
        if info.isdir():
            names = sorted(os.listdir(local))
            stack.extend((os.path.join(local, n), os.path.join(arcname, n)) for n in reversed(names))


def pack(
    path: Path, *, contents: bool = False, exclude: Sequence[str] = (), left_out: list[str] | None = None
) -> bytes:
    """A tar archive of `path` (with `contents`: of its entries, each at the archive's top); the
    sockets, FIFOs and devices it leaves out are added to `left_out`, by their names in the archive."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for local, info in _members(tar, path, contents, exclude, left_out):
            if info.isreg():
                with open(local, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buf.getvalue()


def packed_size(
    path: Path,
    *,
    contents: bool = False,
    exclude: Sequence[str] = (),
    stop_above: int | None = None,
    check: Callable[[str, tarfile.TarInfo], None] | None = None,
) -> int:
    """How many bytes `pack` would make of `path`, files not read: their headers as `pack` writes
    them, their sizes padded to 512 bytes, the end blocks and the padding to a whole record.

    `stop_above`: the walk stops once the count passes it (a workspace of millions of files is found
    too big without walking all of it), and returns what it had counted. `check(local path, member)`
    is called for each member before it is counted (a start-up check: each file readable)."""
    # Headers are written to nowhere: `gettarinfo` needs an archive (it numbers hard links in it).
    tar = tarfile.open(fileobj=io.BytesIO(), mode="w")
    total = 0
    for local, info in _members(tar, path, contents, exclude):
        if check is not None:
            check(local, info)
        total += len(info.tobuf(tar.format, tar.encoding, tar.errors))
        if info.isreg():
            total += -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        if stop_above is not None and total > stop_above:
            return total
    total += 2 * tarfile.BLOCKSIZE  # the end of the archive
    return total + -total % tarfile.RECORDSIZE
