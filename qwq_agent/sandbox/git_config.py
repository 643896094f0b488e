"""A git config from a sandbox, rebuilt with only the settings that can run nothing and name no file.

A copied-back `.git/config` cannot be kept as it came, not even one byte-identical to the user's: it can
run commands itself (`core.fsmonitor`, `alias.*`, `filter.*`, `core.sshCommand`...) or lead git to files
the sandbox rewrote (`include.path = ../.gitconfig`, `core.hooksPath = .githooks`). Dropping it whole
loses the remotes and branch settings, so it is read as git reads it, without following includes and
without running anything (`git config --file F --no-includes --null --list`: listing runs nothing), and
written anew with the settings of an allowlist (`safe`: nor any that makes the operator's next plain
`git push` or `git fetch` delete, overwrite or go elsewhere); values are quoted and escaped, so that none can
start a section or a setting of its own. Without git on PATH, or one it cannot read, there is nothing
to rebuild from: the caller leaves the file out. So it does, and says why, with a config too large to
read within bounded memory and time (`MAX_CONFIG_BYTES`, `MAX_SETTINGS`: judged before git runs).
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

# A config is left out whole, before git reads it, past these: a real one is a few KB, and every setting
# listed is held in memory (an 8 MB config of `a` lines was ~800 MB on the host, and ran the copy-back
# past its deadline). What git lists is bounded too: a long section name is repeated in every key under
# it (100 KB by each of 4,000 settings is 400 MB from a 200 KB file).
MAX_CONFIG_BYTES = 256 * 1024
MAX_SETTINGS = 5_000
MAX_LISTED_BYTES = 1024 * 1024
# Of the settings dropped, the first this many different keys are kept to be named, and a count.
MAX_DROPPED_KEYS = 16


class TooLong(Exception):
    """The deadline passed while a config was read."""


# Settings without a subsection that run nothing and name no other file.
_PLAIN = frozenset(
    {
        "core.repositoryformatversion",
        "core.filemode",
        "core.bare",  # only false: see `safe`
        "core.logallrefupdates",
        "core.ignorecase",
        "core.precomposeunicode",
        "core.symlinks",
        "core.autocrlf",
        "core.eol",
        "core.safecrlf",
        "core.quotepath",
        "extensions.objectformat",  # a SHA-256 repository is unreadable without it
        "extensions.refstorage",  # so is a reftable one
        "extensions.worktreeconfig",
        "user.name",
        "user.email",
        "init.defaultbranch",
        "pull.rebase",
        "pull.ff",
        "fetch.prune",
    }
)
# Settings of `[section "name"]`, whatever the name. Not remote.*.uploadpack/receivepack/vcs or
# proxy, nor submodule.*.update: those name programs. Nor what makes the operator's next plain
# `git push` destructive or send it elsewhere: remote.*.push (`:refs/heads/release` deletes that branch,
# `+HEAD:main` overwrites it), pushurl, mirror (`push --mirror` deletes what the copy lacks),
# branch.*.pushRemote, remote.pushDefault and push.default (`matching` pushes every branch of the
# sandbox's making). A fetch refspec only into `refs/remotes/` (see `_harmless_fetch`).
_NAMED = {
    "remote": frozenset({"url", "fetch", "tagopt", "prune"}),
    "branch": frozenset({"remote", "merge", "rebase"}),
    "submodule": frozenset({"url", "active", "branch"}),
}

Setting = tuple[
    bytes, bytes | None
]  # key as git lists it (section and name lower-cased), value (None: no `=`)


class Rebuilt(NamedTuple):
    """A config file's new text, the first keys of the settings dropped (up to `MAX_DROPPED_KEYS`
    different ones, in file order), how many settings were dropped in all, and where each remote kept
    points (`name -> url`: the operator should see where their next push goes)."""

    text: bytes
    dropped: list[str]
    dropped_count: int
    urls: tuple[str, ...] = ()


def rebuild(path: Path, timeout: float) -> Rebuilt | str | None:
    """The config at `path` with only its `safe` settings; why it is left out whole (a str: too large,
    too many settings), or None where git cannot list it here. Raises `TooLong` past `timeout`."""
    settings = read_settings(path, timeout)
    if settings is None or isinstance(settings, str):
        return settings
    kept: list[Setting] = []
    dropped: dict[str, None] = {}
    count = 0
    urls: dict[bytes, bytes] = {}  # remote name -> its one url
    # Remotes that keep a url: git takes the name of one without a url for a url itself (a path), so a
    # branch naming it would push there. Found first: a branch may come before its remote in the file.
    remotes = {
        _split(key)[1]
        for key, value in settings
        if value is not None and _split(key)[0::2] == ("remote", "url")
    }
    for key, value in settings:
        if safe(key, value) and _one_destination(key, value, urls, remotes):
            kept.append((key, value))
            continue
        count += 1
        if len(dropped) < MAX_DROPPED_KEYS:
            dropped[_text(key)] = None
    shown = tuple(f"{_text(name)} -> {_text(url)}" for name, url in urls.items())
    return Rebuilt(render(kept), list(dropped), count, shown)


def _one_destination(key: bytes, value: bytes | None, urls: dict[bytes, bytes], remotes: set) -> bool:
    """Whether a safe setting still sends pushes and fetches where the remote says: a remote keeps its
    first url only (git pushes to every url of a remote, and fetches from the first: a second one gets
    the operator's pushes unseen), a remote without a url keeps nothing (git takes its name for a url),
    and a branch's remote must be a remote with a url or `.` (a path or URL there is a destination
    `git remote -v` never shows). Records each url kept in `urls`."""
    section, name, variable = _split(key)
    if section == "remote" and name not in remotes:  # no url: its name is one (`git fetch --all` uses it)
        return False
    if (section, variable) == ("remote", "url") and name is not None and value is not None:
        if name in urls:
            return False
        urls[name] = value
    elif (section, variable) == ("branch", "remote"):
        return value == b"." or value in remotes
    return True


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def read_settings(path: Path, timeout: float) -> list[Setting] | str | None:
    """Every setting of the config file `path` as git reads it, includes not followed; None without git
    on PATH or for a file git refuses; why not, as a str, for one past the bounds (`MAX_CONFIG_BYTES`,
    `MAX_SETTINGS`, `MAX_LISTED_BYTES`), the first two judged before git runs. No system, global or
    repository config is read along with it. Raises `TooLong` past `timeout`."""
    deadline = time.monotonic() + timeout
    with open(path, "rb") as f:  # the size first: a huge file is not read at all
        size = os.fstat(f.fileno()).st_size
        if size > MAX_CONFIG_BYTES:
            return f"{size} bytes, over the {MAX_CONFIG_BYTES} a config copied back may hold"
        text = f.read(MAX_CONFIG_BYTES + 1)
    if _most_settings(text) > MAX_SETTINGS:
        return f"more than {MAX_SETTINGS} settings"
    git = shutil.which("git")
    if git is None:
        return None
    listed = _list(git, path, deadline)
    if listed is None or isinstance(listed, str):
        return listed
    settings: list[Setting] = []
    for n, item in enumerate(listed.split(b"\0")[:-1]):
        if n >= MAX_SETTINGS:
            return f"more than {MAX_SETTINGS} settings"
        if n % 256 == 0 and time.monotonic() > deadline:
            raise TooLong
        key, newline, value = item.partition(b"\n")
        settings.append((key, value if newline else None))
    return settings


def _most_settings(text: bytes) -> int:
    """At most how many settings git reads from `text`: a setting takes a line of its own (after its
    section's header, at most), so the lines that are neither blank nor a comment."""
    return sum(1 for line in text.splitlines() if line.strip() and not line.lstrip().startswith((b"#", b";")))


def _list(git: str, path: Path, deadline: float) -> bytes | str | None:
    """What `git config --list` prints for `path`, read up to `MAX_LISTED_BYTES` and `deadline` (git is
    killed past either); None where git refuses the file."""
    with tempfile.TemporaryDirectory(prefix="qwq-git-config-") as home:
        env = {
            # `git` is found already (absolute); listing a config runs no other program.
            "PATH": os.path.dirname(git) + os.pathsep + os.defpath,
            "HOME": home,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CEILING_DIRECTORIES": os.path.dirname(home),  # no repository around `home` is looked at
            "LC_ALL": "C",
        }
        try:
            proc = subprocess.Popen(
                [git, "config", "--file", os.path.abspath(path), "--no-includes", "--null", "--list"],
                cwd=home, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        except OSError:
            return None
        with proc:
            try:
                return _read_bounded(proc, deadline)
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()


def _read_bounded(proc: subprocess.Popen[bytes], deadline: float) -> bytes | str | None:
    assert proc.stdout is not None
    out = bytearray()
    fd = proc.stdout.fileno()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TooLong
        if not select.select([fd], [], [], left)[0]:
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        out += chunk
        if len(out) > MAX_LISTED_BYTES:
            return f"git lists its settings as more than {MAX_LISTED_BYTES} bytes"
    try:
        code = proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise TooLong from None
    return bytes(out) if code == 0 else None


def safe(key: bytes, value: bytes | None) -> bool:
    """Whether the setting `key` is on the allowlist: it can run nothing, name no other file, and make
    none of the operator's routine commands destructive (push refspecs, a fetch into their branches)."""
    section, name, variable = _split(key)
    if name is None:
        plain = f"{section}.{variable}"
        return plain in _PLAIN and (plain != "core.bare" or (value or b"").lower() in _FALSE)
    if b"\n" in name or variable not in _NAMED.get(section, ()):
        return False
    return _harmless_fetch(value) if (section, variable) == ("remote", "fetch") else True


_FALSE = frozenset({b"false", b"no", b"off", b"0"})


def _harmless_fetch(refspec: bytes | None) -> bool:
    """Whether a fetch refspec writes only remote-tracking refs (`+refs/heads/*:refs/remotes/origin/*`,
    as git sets it) or excludes (`^refs/heads/tmp/*`): one into `refs/heads/` or `refs/tags/` force-rewrites
    the operator's own branches and tags at their next `git fetch`."""
    if refspec is None:
        return False
    if refspec.startswith(b"^"):
        return b":" not in refspec
    _, colon, target = refspec.removeprefix(b"+").partition(b":")
    return bool(colon) and target.startswith(b"refs/remotes/") and b":" not in target


def render(settings: list[Setting]) -> bytes:
    """Config text for `settings` (all `safe`): each value quoted and escaped as git's own writer does."""
    out = bytearray()
    current: tuple[str, bytes | None] | None = None
    for key, value in settings:
        section, name, variable = _split(key)
        if (section, name) != current:
            current = (section, name)
            out += (
                b"[%s]\n" % section.encode()
                if name is None
                else b'[%s "%s"]\n'
                % (
                    section.encode(),
                    name.replace(b"\\", b"\\\\").replace(b'"', b'\\"'),
                )
            )
        out += b"\t" + variable.encode()
        out += b"\n" if value is None else b' = "' + _escape(value) + b'"\n'
    return bytes(out)


def _split(key: bytes) -> tuple[str, bytes | None, str]:
    """`section`, `name` (the subsection: any bytes, or None) and `variable` of a listed key."""
    section, _, rest = key.partition(b".")
    name, dot, variable = rest.rpartition(b".")
    # Section and variable names are ASCII letters, digits and `-` (git refuses others).
    return section.decode("ascii", "replace"), name if dot else None, variable.decode("ascii", "replace")


def _escape(value: bytes) -> bytes:
    for raw, escaped in ((b"\\", b"\\\\"), (b'"', b'\\"'), (b"\n", b"\\n"), (b"\t", b"\\t"), (b"\b", b"\\b")):
        value = value.replace(raw, escaped)
    return value
