"""The entries of a patch that git would run commands from, or push by, once it is applied: a planted git
directory's.

An agent can write a git directory as plain files (`tools/HEAD`, `tools/config` with `core.worktree=..`
and `core.fsmonitor=CMD`, `tools/objects/...`, `tools/refs/...`): the sandbox's own diff carries them,
`git apply` writes them, and `git status` in `tools/` runs CMD on the host. `sandbox.git_files` keeps the
same files out of a copy-back; `git_runs` names them in a patch, for `patch_text` to cut.

Every path is folded once (`fold`) and looked up by bisection among the others: the work is linear in
the paths' length, whatever the text the sandbox sent.
"""

from __future__ import annotations

import bisect
import re
from itertools import islice

WHY = "git would run commands from it"
REMOTE_WHY = "git would take it for a remote, its push refspec unchecked"

# What HFS+ leaves out of a name it compares (git's `is_hfs_dotgit` skips the same), so `.g\u200cit` is `.git`.
HFS_IGNORED = dict.fromkeys(
    [0x200C, 0x200D, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x206A, 0x2070), 0xFEFF]
)
_IGNORED = re.compile("[" + "".join(map(chr, HFS_IGNORED)) + "]")

# In a git directory: the files whose settings or programs git runs (`core.fsmonitor`, `core.pager`,
# `alias.*`, hooks; `commondir` sends git to another folder's `config`), and the state of a rebase or a
# cherry-pick, whose `exec` lines `git rebase --continue` runs; and old-style remotes (`remotes/<name>`,
# `branches/<name>`), which git reads for a remote `config` lacks: `Push: :refs/heads/main` deletes a branch.
_SETTINGS = frozenset({"config", "config.worktree", "commondir", "hooks"})
_REMOTES = frozenset({"remotes", "branches"})
_STATE = frozenset({"hooks", "rebase-merge", "rebase-apply", "sequencer", *_REMOTES})
_NAMED = re.compile(
    r"(?<![^/\n])(config|config\.worktree|commondir|hooks|rebase-merge|rebase-apply|sequencer|remotes|branches)"
    r"(?=[/\n]|$)"
)
# More such names on one path than any real one has: cut without asking about each folder.
MAX_NAMED = 8


def fold(path: str) -> str:
    """`path` as a case-insensitive disk compares it: `fold_case`, and without the dots and spaces that
    end a name (NTFS drops them). Part by part, linear: a regular expression for a run of them at a
    name's end tried every stretch of every run, quadratic in a run's length."""
    return "/".join(part.rstrip(". ") for part in fold_case(path).split("/"))


def fold_case(text: str) -> str:
    """`text` in lower case, without HFS+'s ignored characters."""
    if not text.isascii() and _IGNORED.search(text):
        text = text.translate(HFS_IGNORED)
    return text.lower()


def git_runs(written: list[str], dirs: set[str], links: dict[str, str], entries: list[str]) -> dict[str, str]:
    """Those of `written` (the paths the patch writes, not only deletes) that git would run commands from
    or take for a remote, each with why (`WHY`, `REMOTE_WHY`): a `config`, `config.worktree`, `commondir` or `hooks` entry, or
    anything under `hooks/`, `rebase-merge/`, `rebase-apply/`, `sequencer/`, or `remotes/` or `branches/`
    (old-style remotes), in a folder that looks like a git directory once
    the patch is applied. Generous, as a real project rarely ships such a folder: one that holds, in the
    checkout (`dirs`, `links`) or the patch (`entries`: all its paths), an `objects` or `refs` entry, or a
    `HEAD` or `commondir` one that is not a folder."""
    # The common case first: no such name in any path (joined, a name ends at a line break too).
    if not _NAMED.search("\n".join(map(fold, written))):
        return {}
    named_in = ((path, islice(filter(_runs, _NAMED.finditer(fold(path))), MAX_NAMED + 1)) for path in written)
    found = {path: named for path, found_ in named_in if (named := list(found_))}
    folders = {fold(path) for path in dirs}
    files = {fold(path) for path in (*links, *entries)}
    paths = sorted(files)

    def holds(folder: str) -> bool:
        """Whether `folder` (folded, "" for the root) looks like a git directory."""
        at = f"{folder}/" if folder else ""
        if any(f"{at}{name}" in files for name in ("objects", "refs", "head", "commondir")):
            return True
        for name in ("objects/", "refs/"):
            if f"{at}{name[:-1]}" in folders:
                return True
            i = bisect.bisect_left(paths, at + name)
            if i < len(paths) and paths[i].startswith(at + name):
                return True
        return False

    runs = {}
    for path, named in found.items():
        if len(named) > MAX_NAMED:
            runs[path] = WHY
        elif held := [m.group(1) for m in named if holds(m.string[: max(m.start() - 1, 0)])]:
            runs[path] = REMOTE_WHY if all(name in _REMOTES for name in held) else WHY
    return runs


def _runs(match: re.Match[str]) -> bool:
    """Whether the name `match` found is one git runs commands from, where it stands in its path."""
    last = match.end() == len(match.string)
    return match.group(1) in (_SETTINGS if last else _STATE)
