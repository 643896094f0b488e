"""Tar archives built entry by entry, for the tests of uploads and copy-backs (hostile ones included)."""

from __future__ import annotations

import io
import tarfile

_LINK_TYPES = {"link": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE}


def tar_of(*entries: tuple[str, str, bytes | str | None]) -> bytes:
    """An uncompressed tar of (name, kind, payload) entries, in this order, the names as given (`..` and
    absolute ones included). kind: "file" (payload its content, a str as UTF-8), "dir" (a 0755 folder),
    "link" (a symbolic link to payload), "hard" (a hard link to the entry named payload), "chr" (a
    character device)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, payload in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = payload.encode() if isinstance(payload, str) else payload
                assert data is not None, f"{name}: a file needs its content"
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "chr":
                info.type = tarfile.CHRTYPE
            else:
                assert isinstance(payload, str), f"{name}: a link needs its target"
                info.type, info.linkname = _LINK_TYPES[kind], payload
            tar.addfile(info)
    return buf.getvalue()
