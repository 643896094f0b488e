"""Which symlinks a run added or changed lead out of the repository, judged from a git tree alone.

`workspace_changes` runs this file's source inside the sandbox (`python3 -I -S -c`, standard library
only) against the end snapshot: `python3 - BASE NOW` prints, NUL-separated, `path`, `target`, `why` for
each link that `git diff-tree BASE NOW` shows added or changed and that does not stay inside NOW (save
those that only lead out through another link printed in the same round: see `main`).

Only the snapshot counts, never the live /workspace: the patch is built from the snapshot, and on the
host it lands in a checkout that holds the snapshot's entries and nothing of the sandbox beyond them.
So a path the tree does not hold (absent, or ignored: a real folder on the host, whatever it is in the
sandbox) cannot be walked through; a link is followed by its target in the tree; `..` above the
repository root leads out, whatever the folders above it are called; and a link swapped in the live
tree after the snapshot changes nothing.

`python3 - --entries TREE` prints the folders and links of TREE (zlib-compressed; `entries`):
`record_baseline` keeps them on the host, so that the patch text that comes back can be judged there
again (`patch_text`) against what the user's checkout holds.
"""

from __future__ import annotations

import subprocess
import sys
import zlib
from collections.abc import Callable

MAX_HOPS = 40  # as the kernel's own limit on links followed in one path (ELOOP)
LINK, TREE = "120000", "040000"

# A tree entry: (mode, object id); None for a path the tree does not hold.
Entry = tuple[str, str]


def outward_reason(
    path: str,
    target: str,
    entry: Callable[[str], Entry | None],
    blob: Callable[[str], str],
    followed: set[str] | None = None,
) -> str | None:
    """Why the link at `path` (aiming at `target`) leads out of the tree, or None if it stays inside.

    `entry(p)` gives the tree's entry at the repository path `p` (no leading slash); `blob(oid)` the
    text of a blob (a link's target). The paths of the links followed on the way go into `followed`."""
    if target.startswith("/"):
        return "absolute"
    here = path.split("/")[:-1]  # the folder holding the link
    todo = _parts(target)[::-1]  # a stack, the next part last: a link's parts go on top in one step
    hops = 0
    while todo:
        part = todo.pop()
        if part == "..":
            if not here:
                return "leads out of the repository"
            here.pop()
            continue
        found = entry("/".join([*here, part]))
        if found is None or found[0] not in (LINK, TREE):
            if not todo:
                return None  # the last part: a file, or a dangling name inside the repository
            if found is None or found[0] == "160000":
                return "leads through a path the patch does not hold"
            return "leads through a file"
        if found[0] == TREE:
            here.append(part)
            continue
        hops += 1
        if followed is not None:
            followed.add("/".join([*here, part]))
        if hops > MAX_HOPS:
            return "too many levels of links"
        inner = blob(found[1])
        if inner.startswith("/"):
            return "leads through an absolute link"
        todo.extend(reversed(_parts(inner)))
    return None


def _parts(target: str) -> list[str]:
    return [p for p in target.split("/") if p not in ("", ".")]


def _git(*args: str, data: bytes | None = None) -> bytes:
    # As patch.py's own git: the baseline git directory is bare, and its owner is the sandbox user.
    git = ["git", "-c", "safe.directory=*", "-c", "core.bare=false", "-c", "core.quotepath=false"]
    return subprocess.run([*git, *args], input=data, capture_output=True, check=True).stdout


def _listing(tree: str) -> dict[str, Entry]:
    listing = _git("ls-tree", "-r", "-t", "-z", "--full-tree", tree).split(b"\0")
    entries: dict[str, Entry] = {}
    for line in filter(None, listing):
        meta, name = line.split(b"\t", 1)
        mode, _kind, oid = meta.decode().split()
        entries[name.decode("utf-8", "surrogateescape")] = (mode, oid)
    return entries


def _blob(oid: str) -> str:
    return _git("cat-file", "blob", oid).decode("utf-8", "surrogateescape")


def entries(tree: str) -> None:
    """Print, zlib-compressed, `d\\0path\\0` for each folder of `tree` and `l\\0path\\0target\\0` for
    each link (`read_entries` reads it back)."""
    listing = _listing(tree)
    links = [(path, oid) for path, (mode, oid) in listing.items() if mode == LINK]
    # One `cat-file --batch` for all the targets: a checkout may hold thousands of links.
    batch = _git("cat-file", "--batch", data="".join(f"{oid}\n" for _, oid in links).encode())
    out = bytearray()
    for path, (mode, _) in listing.items():
        if mode == TREE:
            out += b"d\0" + path.encode("utf-8", "surrogateescape") + b"\0"
    at = 0
    for path, _ in links:
        head_end = batch.index(b"\n", at)
        size = int(batch[at:head_end].split()[2])
        target = batch[head_end + 1 : head_end + 1 + size]
        at = head_end + 1 + size + 1
        out += b"l\0" + path.encode("utf-8", "surrogateescape") + b"\0" + target + b"\0"
    sys.stdout.buffer.write(zlib.compress(bytes(out)))


def read_entries(data: bytes) -> tuple[set[str], dict[str, str]]:
    """The folders and the links (path to target) that `entries` printed."""
    fields = zlib.decompress(data).split(b"\0")
    dirs: set[str] = set()
    links: dict[str, str] = {}
    i = 0
    while i < len(fields) - 1:
        kind, path = fields[i], fields[i + 1].decode("utf-8", "surrogateescape")
        if kind == b"d":
            dirs.add(path)
            i += 2
        else:
            links[path] = fields[i + 2].decode("utf-8", "surrogateescape")
            i += 3
    return dirs, links


def main(base: str, now: str) -> None:
    """Print `path\\0target\\0why\\0` for each added or changed link of `now` (against `base`) that leads out."""
    tree = _listing(now)
    changed = _git("diff-tree", "-r", "-z", "--no-renames", "--diff-filter=AMT", base, now).split(b"\0")
    outward: dict[str, tuple[str, str, set[str]]] = {}
    for meta, raw in zip(changed[0::2], changed[1::2], strict=False):
        fields = meta.decode().split()
        if len(fields) < 4 or fields[1] != LINK:
            continue
        path = raw.decode("utf-8", "surrogateescape")
        target, followed = _blob(fields[3]), set[str]()
        why = outward_reason(path, target, tree.get, _blob, followed)
        if why is not None:
            outward[path] = (target, why, followed - {path})
    # A link that only led out through another one leaving now is judged again next round, once that one
    # is back at its baseline target (the caller repeats until a round leaves none out); a ring of such
    # links all goes.
    first = {p: v for p, v in outward.items() if not v[2] & outward.keys()} or outward
    out = sys.stdout.buffer
    for path, (target, why, _) in first.items():
        for field in (path, target, why):
            out.write(field.encode("utf-8", "surrogateescape") + b"\0")


if __name__ == "__main__":
    if sys.argv[1] == "--entries":
        entries(sys.argv[2])
    else:
        main(sys.argv[1], sys.argv[2])
