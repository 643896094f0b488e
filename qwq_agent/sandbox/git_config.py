"""A git config from a sandbox, rebuilt with only the settings that can run nothing and name no file.

A copied-back `.git/config` cannot be kept as it came, not even one byte-identical to the user's: it can
run commands itself (`core.fsmonitor`, `alias.*`, `filter.*`, `core.sshCommand`...) or lead git to files
the sandbox rewrote (`include.path = ../.gitconfig`, `core.hooksPath = .githooks`). Dropping it whole
loses the remotes and branch settings, so it is read as git reads it, without following includes and
without running anything (`git config --file F --no-includes --null --list`: listing runs nothing), and
written anew with the settings of an allowlist (`safe`); values are quoted and escaped, so that none can
start a section or a setting of its own. Without git on PATH, or one it cannot read, there is nothing
to rebuild from: the caller leaves the file out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

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
        "push.default",
        "fetch.prune",
    }
)
# Settings of `[section "name"]`, whatever the name. Not remote.*.uploadpack/receivepack/vcs or
# proxy, nor submodule.*.update: those name programs.
_NAMED = {
    "remote": frozenset({"url", "pushurl", "fetch", "push", "tagopt", "prune", "mirror"}),
    "branch": frozenset({"remote", "merge", "rebase", "pushremote"}),
    "submodule": frozenset({"url", "active", "branch"}),
}

Setting = tuple[
    bytes, bytes | None
]  # key as git lists it (section and name lower-cased), value (None: no `=`)


class Rebuilt(NamedTuple):
    """A config file's new text, and the keys of the settings dropped (one per setting, in file order)."""

    text: bytes
    dropped: list[str]


def rebuild(path: Path, timeout: float) -> Rebuilt | None:
    """The config at `path` with only its `safe` settings, or None where git cannot list it here."""
    settings = read_settings(path, timeout)
    if settings is None:
        return None
    kept = [s for s in settings if safe(*s)]
    dropped = [key.decode("utf-8", "backslashreplace") for key, value in settings if not safe(key, value)]
    return Rebuilt(render(kept), dropped)


def read_settings(path: Path, timeout: float) -> list[Setting] | None:
    """Every setting of the config file `path` as git reads it, includes not followed; None without git
    on PATH or for a file git refuses. No system, global or repository config is read along with it."""
    git = shutil.which("git")
    if git is None:
        return None
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
            done = subprocess.run(
                [git, "config", "--file", os.path.abspath(path), "--no-includes", "--null", "--list"],
                cwd=home, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=max(timeout, 1.0),
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return None
    if done.returncode != 0:
        return None
    settings: list[Setting] = []
    for item in done.stdout.split(b"\0")[:-1]:
        key, newline, value = item.partition(b"\n")
        settings.append((key, value if newline else None))
    return settings


def safe(key: bytes, value: bytes | None) -> bool:
    """Whether the setting `key` is on the allowlist: it can run nothing and name no other file."""
    section, name, variable = _split(key)
    if name is None:
        plain = f"{section}.{variable}"
        return plain in _PLAIN and (plain != "core.bare" or (value or b"").lower() in _FALSE)
    return b"\n" not in name and variable in _NAMED.get(section, ())


_FALSE = frozenset({b"false", b"no", b"off", b"0"})


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
