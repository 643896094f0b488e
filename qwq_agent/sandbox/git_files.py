"""What a copy-back removes from the git folders it wrote, judged from what is on disk.

A sandbox's `.git/config` can set `core.fsmonitor`, `core.pager`, `core.sshCommand`, `core.hooksPath`,
`alias.*`, `filter.*` or `include.path`, and `.git/hooks/` holds programs: copied back as they are, the
operator's next `git status` or commit in the copy runs them on the host. Which folders git takes for a
git directory is judged once the whole archive is written, from the disk, never from the archive's
names: a folder made as the parent of a deeper entry, or filled through a link to it, is named by no
entry of its own (both bypassed the names). A git folder is one named `.git`, or one holding `HEAD`
beside `objects`, `refs` or `commondir` (git's own `is_git_directory()` wants `HEAD` with both
`objects` and `refs`, or with `commondir`: every folder it accepts is one of these). From each, this
copy-back's own entries that git runs commands from, or is led by, are removed:

- `config` and `config.worktree`, which hold those settings: each is written anew with only the
  settings that run nothing and name no other file (`git_config`: remotes, branches, user, core basics);
  without git on the host to read it, it is removed, as is one too large to read (and said so);
- `commondir`, which sends git to another folder's config;
- `hooks/`, and `rebase-merge/`, `rebase-apply/` and `sequencer/`, whose todo lists hold `exec` lines;
- every symlink inside it: git makes none there, and one can lead it to a file elsewhere in the tree;

- `remotes/` and `branches/`, old-style remote files git still reads for a remote `config` lacks: a
  `Push: :refs/heads/release` line there would make the operator's next plain `git push` delete a branch
  on their remote, past the config's allowlist; they are named in `settings`, like dropped remotes;

and anywhere, a `.git` that is not a folder (a `gitdir:` file or a link points git at a folder of the
sandbox's choosing). Names are compared lower-cased: on a case-insensitive host disk `.GIT/CONFIG` is
`.git/config`. What was there before the copy-back (the operator's own) stays. Git works without them:
a missing `.git/config` reads as empty.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Set
from pathlib import Path
from typing import NamedTuple

from qwq_agent.sandbox.git_config import TooLong, rebuild

WHY = "git would run commands from them"
_RUNS = frozenset(
    {"config", "config.worktree", "commondir", "hooks", "rebase-merge", "rebase-apply", "sequencer"}
)
# Old-style remotes (`remotes/<name>`: `URL:`, `Push:`, `Pull:` lines; `branches/<name>`: `URL#branch`),
# read when `config` has no such remote: the push and fetch refspecs `git_config` drops would come back here.
_LEGACY_REMOTES = frozenset({"remotes", "branches"})
LEGACY_WHY = (
    "old-style remote files, which git reads as remotes beside its config, unchecked (a push refspec there "
    "could delete branches on your remote)"
)
_GIT_DIR_SIGNS = frozenset({"objects", "refs", "commondir"})
_CONFIGS = frozenset({"config", "config.worktree"})
MAX_SHOWN_KEYS = 5


class Cleaned(NamedTuple):
    """What `remove_from_git_folders` did: paths removed, and a line per config rebuilt without some
    settings (or left out whole for its size, and why)."""

    removed: list[str]
    settings: list[str]


# Each config rebuilt costs one `git config` run on the host; past this many (a sandbox holding thousands
# of nested repositories) the rest are left out, named, so the deadline is not spent on them.
MAX_REBUILT_CONFIGS = 32


def identity(st: os.stat_result) -> tuple[int, int]:
    """What tells one file from another on the host: its device and inode."""
    return st.st_dev, st.st_ino


def remove_from_git_folders(top: Path, dest: Path, ours: Set[tuple[int, int]], deadline: float) -> Cleaned:
    """Remove what git runs commands from out of every git folder under `top`, and rebuild its configs
    (see the module's docstring); only entries this copy-back wrote (`ours`: their `identity`) are
    touched. Links are never followed. Paths are named relative to `dest` (a folder with a trailing `/`)."""
    removed: list[str] = []
    settings: list[str] = []
    rebuilt = 0
    if not os.path.lexists(top):
        return Cleaned(removed, settings)
    if not stat.S_ISDIR(os.lstat(top).st_mode):  # one file (or link) was copied back
        if top.name.lower() == ".git":
            removed += _remove_ours(top, dest, ours)
        return Cleaned(removed, settings)
    # Paths as text but for those acted on: a `Path` of every entry, parsed anew, cost a millisecond
    # apiece 1,900 levels deep.
    stack = [(str(top), top.name, False)]
    while stack:
        if time.monotonic() > deadline:
            raise TooLong
        folder, folder_name, within = stack.pop()
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        names = {e.name.lower() for e in entries}
        git = folder_name.lower() == ".git" or ("head" in names and bool(names & _GIT_DIR_SIGNS))
        within = within or git
        for entry in entries:
            name = entry.name.lower()
            is_dir = entry.is_dir(follow_symlinks=False)
            if git and name in _CONFIGS and entry.is_file(follow_symlinks=False):
                if identity(entry.stat(follow_symlinks=False)) not in ours:
                    continue
                if rebuilt < MAX_REBUILT_CONFIGS:
                    _rebuild(Path(entry.path), dest, deadline, removed, settings)
                    rebuilt += 1
                else:
                    removed += _remove_ours(Path(entry.path), dest, ours)
            elif git and name in _LEGACY_REMOTES and (is_dir or entry.is_symlink()):
                _drop_legacy_remotes(Path(entry.path), dest, ours, settings)
            elif (
                (name == ".git" and not is_dir) or (git and name in _RUNS) or (within and entry.is_symlink())
            ):
                removed += _remove_ours(Path(entry.path), dest, ours)
            elif is_dir:
                stack.append((entry.path, entry.name, within))
    return Cleaned(sorted(removed), sorted(settings))


def _rebuild(path: Path, dest: Path, deadline: float, removed: list[str], settings: list[str]) -> None:
    """Write the config at `path` anew with its safe settings, naming those dropped; or remove it (and
    say why, when it is too large to read)."""
    shown = str(path.relative_to(dest))
    new = rebuild(path, deadline - time.monotonic())
    path.unlink()
    if new is None or isinstance(new, str):
        removed.append(shown)
        if new is not None:
            settings.append(f"{shown}: left out: {new}")
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(new.text)
    if new.urls:  # where the operator's next push goes: the sandbox wrote this config
        more = " ..." if len(new.urls) > MAX_SHOWN_KEYS else ""
        settings.append(f"{shown}: remotes point to {', '.join(new.urls[:MAX_SHOWN_KEYS])}{more}")
    if new.dropped_count:
        more = " ..." if len(new.dropped) > MAX_SHOWN_KEYS else ""
        settings.append(
            f"{shown}: kept remotes/branches and basic settings, dropped {new.dropped_count} settings git "
            f"could run commands from (or not known to be safe): {', '.join(new.dropped[:MAX_SHOWN_KEYS])}{more}"
        )


def _drop_legacy_remotes(path: Path, dest: Path, ours: Set[tuple[int, int]], settings: list[str]) -> None:
    """Remove what this copy-back wrote as `path` (a git folder's `remotes` or `branches`), and name the
    remotes it held on a line of `settings`: a remote the operator would push to, never shown, otherwise."""
    st = os.lstat(path)
    shown = f"{path.relative_to(dest)}{'/' if stat.S_ISDIR(st.st_mode) else ''}"
    names: list[str] = []
    if stat.S_ISDIR(st.st_mode) and identity(st) in ours:
        with os.scandir(path) as it:  # a few names are enough to say what it was; the count could be huge
            names = sorted(entry.name for _, entry in zip(range(MAX_SHOWN_KEYS + 1), it, strict=False))
        if not names:  # `git init`'s template makes an empty `branches/`: nothing to say, nothing to remove
            return
    removed = _remove_ours(path, dest, ours)
    if not removed:
        return
    if identity(st) not in ours:  # the operator's folder: only what this copy-back wrote in it went
        names = [name.removeprefix(shown) for name in removed]
    more = " ..." if len(names) > MAX_SHOWN_KEYS else ""
    listed = f": {', '.join(names[:MAX_SHOWN_KEYS])}{more}" if names else ""
    settings.append(f"{shown}: left out: {LEGACY_WHY}{listed}")


def _remove_ours(path: Path, dest: Path, ours: Set[tuple[int, int]]) -> list[str]:
    """Remove `path` if this copy-back wrote it, else (a folder that was there) what it wrote inside."""
    st = os.lstat(path)
    folder = stat.S_ISDIR(st.st_mode)
    if identity(st) in ours:
        if folder:
            shutil.rmtree(path)  # all of it ours: a folder this copy-back made holds nothing else
        else:
            path.unlink()
        return [str(path.relative_to(dest)) + ("/" if folder else "")]
    if not folder:
        return []
    removed = []
    for child in sorted(os.listdir(path)):
        removed += _remove_ours(path / child, dest, ours)
    return removed
