"""The entries of a download that git would run commands from, which a copy-back never writes.

A sandbox's `.git/config` can set `core.fsmonitor`, `core.pager`, `core.sshCommand`, `core.hooksPath`,
`alias.*` or `filter.*`, and its `.git/hooks/` hold programs: copied back as they are, the operator's
next `git status` in the copy runs them on the host. So the copy-back leaves out, inside any git folder
(a `.git` folder, also nested ones: `.git/modules/*/`, `.git/worktrees/*/`; and a folder git would take
for one, holding `HEAD` and `objects` or `commondir`, as an embedded bare repository is):

- `config` and `config.worktree`, which hold those settings;
- `commondir`, which sends git to another folder's `config`;
- everything under `hooks/` (and a `hooks` that is not a folder);
- symlinks: git makes none there, and one can lead it to a file elsewhere in the tree;

and a `.git` that is not a folder (a `gitdir:` file or a link can point git at a planted folder). Git
works without them (a missing `.git/config` is read as empty).
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterable

WHY = "git would run commands from them"
_SETTINGS = frozenset({"config", "config.worktree", "commondir", "hooks"})


class GitFiles:
    """Judges the entries of one archive, knowing all its names (a git folder is told by its contents)."""

    def __init__(self, names: Iterable[str]) -> None:
        # Compared lower-cased: on a case-insensitive host disk `.GIT/Config` is `.git/config`.
        self.names = {name.lower().rstrip("/") for name in names}
        self.known: dict[str, int] = {}  # folder -> length of the first git folder on its way, or -1

    def runs(self, member: tarfile.TarInfo, name: str | None = None) -> bool:
        """Whether git would run commands from `member` (see the module's docstring), written at `name`
        (the path its parent folders really lead to, through links written before it) or its own."""
        path = (name or member.name).lower()
        folder, _, last = path.rpartition("/")
        if last == ".git" and not member.isdir():
            return True
        end = self._first_git_folder(folder)
        return end >= 0 and _inside_runs(path[end + 1 :].split("/"), member)

    def _first_git_folder(self, folder: str) -> int:
        """Where the first git folder on the way to `folder` ends in it (its length), or -1. Each folder
        is judged once, from its parent's answer: per entry, the cost is its name's length, not its square."""
        chain = []
        while folder and folder not in self.known:
            chain.append(folder)
            folder = folder.rpartition("/")[0]
        found = self.known[folder] if folder else -1
        for step in reversed(chain):
            if found < 0 and self._git_folder(step):
                found = len(step)
            self.known[step] = found
        return found

    def _git_folder(self, folder: str) -> bool:
        if folder.rpartition("/")[2] == ".git":
            return True
        return f"{folder}/head" in self.names and (
            f"{folder}/objects" in self.names or f"{folder}/commondir" in self.names
        )


def _inside_runs(rest: list[str], member: tarfile.TarInfo) -> bool:
    """Whether `member`, at `rest` inside a git folder, is one git runs commands from or is led by."""
    if member.issym():
        return True
    *folders, last = rest
    if "hooks" in folders:
        return True
    return not member.isdir() and last in _SETTINGS
