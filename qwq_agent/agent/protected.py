"""The files a `tests:` check takes from the start state, not from the branch: the tests themselves.

A branch is checked on what its patch does to the code; were the tests part of what is checked, a branch
(a lazy model, or a hostile one) could pass them by rewriting the failing assertion. So the entries of
the patch for protected paths are left out before it is applied for the check (`split_patch`): those
files are exactly as in the user's folder (else the baseline) when COMMAND runs, whatever the branch did
to them (edited, deleted or added). The patch the branch delivers is not changed; what it does to
protected files is named, so that a person reviews it.

Patterns are lines of a `.gitignore` at the top of /workspace, read as git reads them (`git check-ignore`
agrees, tests/test_protected_paths.py): `*` and `?` match within one name, `[...]` one character of a
set (`[!...]` of any other), `**` any number of folders (`**/x`: x at any depth; `x/**`: everything
under x); a pattern with no `/` but a trailing one matches a name at any depth (`conftest.py` is
`**/conftest.py`, `tests/` any folder named tests), else it is anchored at the top (`src/checks`,
`/tests`); a trailing `/` matches folders only; a path is protected when it or a folder above it
matches, so a folder's pattern protects everything under it; `!` before a pattern takes back what the
patterns before it protect (not under a folder they protect, as in git); `\\` makes the next character
plain. Names are compared as they are (case matters). A patch's entries are files (and links), never
folders: a pattern for folders only protects the files under it.

A link of the start state (`links`) that the tests reach, one at a protected path or under a protected
folder or whose files would all be protected, shows them its target: the target is protected too, file
or folder, and so is every link followed on the way to it (`through_links`).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["DEFAULT_PROTECTED", "PatternError", "Protected", "matcher", "split_patch", "through_links"]

# Where test suites live by the common conventions: test folders (pytest, unittest, Go, Java/Maven,
# RSpec, Jest) and test files (test_x.py, x_test.py / x_test.go, x.test.ts, x.spec.js), and pytest's
# conftest.py, which can change what any test sees.
DEFAULT_PROTECTED: tuple[str, ...] = (
    "**/tests/**",
    "**/test/**",
    "**/spec/**",
    "**/__tests__/**",
    "test_*.py",
    "*_test.*",
    "*.test.*",
    "*.spec.*",
    "conftest.py",
)
# Links followed to reach one target, as the kernel allows (ELOOP past it).
MAX_HOPS = 40


class PatternError(ValueError):
    """A protected-path pattern that is no glob (empty, an empty folder name, an unclosed `[`, a comment)."""


@dataclass(frozen=True, slots=True)
class _Pattern:
    regex: re.Pattern[str]
    anchored: bool  # matched against the whole path; else against its last name
    folders_only: bool
    negated: bool

    def matches(self, path: str, folder: bool) -> bool:
        if self.folders_only and not folder:
            return False
        return self.regex.fullmatch(path if self.anchored else path.rpartition("/")[2]) is not None


class Protected:
    """Whether a path (relative to /workspace) is protected: call it with the path of a file (or link)."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self._patterns: list[_Pattern] = []
        for pattern in patterns:
            try:
                self._patterns.append(_compile(pattern))
            except PatternError as exc:
                raise PatternError(f"{pattern!r}: {exc}") from None

    def __call__(self, path: str) -> bool:
        return self.covers(path)

    def covers(self, path: str, folder: bool = False) -> bool:
        """Whether `path` (a folder when `folder`) is protected: a folder above it is (the last pattern
        matching that folder takes it), or else the last pattern matching `path` itself does. As git's
        `prep_exclude` and `last_matching_pattern`."""
        if not self._patterns:
            return False
        parts = path.split("/")
        for i in range(1, len(parts)):
            if self._last("/".join(parts[:i]), folder=True):
                return True
        return self._last(path, folder)

    def _last(self, path: str, folder: bool) -> bool:
        for pattern in reversed(self._patterns):
            if pattern.matches(path, folder):
                return not pattern.negated
        return False


def matcher(patterns: Sequence[str]) -> Protected:
    """Whether a path (relative to /workspace) is protected by `patterns`, lines of a `.gitignore`;
    `PatternError` naming the first pattern that is no glob."""
    return Protected(patterns)


def through_links(protected: Protected, links: Mapping[str, str]) -> Callable[[str], bool]:
    """`protected`, and the paths the tests reach through the start state's `links` (path to target, as
    `patch.Baseline` holds them): a link is followed when its path is protected, as a file or as a
    folder, or every name under it would be (`x/**`); its target is then protected, with everything
    under it, and so is each link followed on the way there, and each link under what is protected so,
    in turn. A target outside /workspace (absolute, or `..` past the top) is none of the patch's; a
    link to a folder that holds it (everything would be protected) is not followed."""
    roots: set[str] = set()
    names = sorted(links)
    todo = [p for p in names if _reached(protected, p)]
    seen = set(todo)
    while todo:
        new = _resolve(todo.pop(), links)
        for root in new:
            if root in roots:
                continue
            roots.add(root)
            # The links under a new root are reached too (bisect: the names under it follow it at once).
            start = bisect.bisect_left(names, root + "/")
            for name in _under(names, start, root + "/"):
                if name not in seen:
                    seen.add(name)
                    todo.append(name)
    if not roots:
        return protected

    def covered(path: str) -> bool:
        if protected(path):
            return True
        parts = path.split("/")
        return any("/".join(parts[:i]) in roots for i in range(1, len(parts) + 1))

    return covered


def split_patch(
    patch: str, protected: Callable[[str], bool], links: Mapping[str, str] | None = None
) -> tuple[str, list[str]]:
    """`patch` without its entries for protected paths (what the check applies), and those paths.
    `links`: the start state's links (`through_links`), when `protected` is a `matcher`.
    `patch_text.PatchTextError` for a text not in git's diff form."""
    from qwq_agent.agent.patch_text import drop_entries  # not for `DEFAULT_PROTECTED` in `--help`

    if links and isinstance(protected, Protected):
        protected = through_links(protected, links)
    return drop_entries(patch, protected)


def _reached(protected: Protected, link: str) -> bool:
    # A NUL is in no name: a path under the link that only a pattern for any name there matches.
    return protected.covers(link) or protected.covers(link, folder=True) or protected.covers(link + "/\0")


def _under(names: list[str], start: int, prefix: str) -> Iterable[str]:
    for name in names[start:]:
        if not name.startswith(prefix):
            break
        yield name


def _resolve(link: str, links: Mapping[str, str]) -> list[str]:
    """The paths the tests reach through `link`: each link followed after it, and the target (when it
    is inside /workspace and holds no folder above the link)."""
    here = link.split("/")[:-1]
    target = links[link]
    if target.startswith("/"):
        return []
    todo = _parts(target)[::-1]  # a stack, the next part last
    reached: list[str] = []
    hops = 0
    while todo:
        part = todo.pop()
        if part == "..":
            if not here:
                return reached
            here.pop()
            continue
        path = "/".join([*here, part])
        inner = links.get(path)
        if inner is None:
            here.append(part)
            continue
        reached.append(path)
        hops += 1
        if hops > MAX_HOPS or inner.startswith("/"):
            return reached
        todo.extend(reversed(_parts(inner)))
    end = "/".join(here)
    if end and not (link + "/").startswith(end + "/"):
        reached.append(end)
    return reached


def _parts(target: str) -> list[str]:
    return [p for p in target.split("/") if p not in ("", ".")]


def _compile(line: str) -> _Pattern:
    """One `.gitignore` line as git's `parse_path_pattern` reads it."""
    if line.startswith("#"):
        raise PatternError("a comment in a `.gitignore` (`\\#` for a name that starts with #)")
    body = _strip_blanks(line)
    negated = body.startswith("!")
    if negated:
        body = body[1:]
    folders_only = body.endswith("/")
    if folders_only:
        body = body[:-1]
    if body.startswith("/"):
        anchored, body = True, body[1:]
    else:
        anchored = "/" in body
    if not body:
        raise PatternError("an empty pattern")
    return _Pattern(re.compile(_regex(body)), anchored, folders_only, negated)


def _strip_blanks(line: str) -> str:
    """`line` less its trailing blanks, unless one is escaped by a `\\` (as git does)."""
    end = len(line)
    while end and line[end - 1] == " ":
        escapes = end - 1 - len(line[: end - 1].rstrip("\\"))
        if escapes % 2:
            break
        end -= 1
    return line[:end]


def _regex(body: str) -> str:
    parts = body.split("/")
    out = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            # `**/` any folders (none too), a final `/**` anything under: never the folder itself.
            out.append(".+" if last and i else ".*" if last else "(?:[^/]+/)*")
        elif not part:
            raise PatternError("an empty folder name (`//`)")
        else:
            out.append(_name(part) + ("" if last else "/"))
    return "".join(out)


def _name(part: str) -> str:
    """One name's glob as a regex that never crosses a `/`."""
    out = []
    i = 0
    while i < len(part):
        c = part[i]
        if c == "*":
            while i + 1 < len(part) and part[i + 1] == "*":
                i += 1
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end, klass = _set(part, i)
            out.append(klass)
            i = end
        elif c == "\\" and i + 1 < len(part):
            i += 1
            out.append(re.escape(part[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _set(part: str, start: int) -> tuple[int, str]:
    """The `[...]` set at `start`: the index of its `]` and the regex class."""
    i = start + 1
    negate = i < len(part) and part[i] in "!^"
    if negate:
        i += 1
    first = i
    members = []
    while i < len(part) and (part[i] != "]" or i == first):  # a `]` first is one of the set
        if part[i] == "\\" and i + 1 < len(part):  # as in git's wildmatch: the next one is plain
            i += 1
            members.append(re.escape(part[i]))
        elif part.startswith("[:", i):
            raise PatternError("a character class (`[:name:]`)")
        else:
            # A `-` between two members is a range, as in a glob; anything else special to a regex is
            # literal.
            members.append("\\" + part[i] if part[i] in "\\^[]" else part[i])
        i += 1
    if i >= len(part):
        raise PatternError("an unclosed `[`")
    return i, ("[^/" if negate else "[") + "".join(members) + "]"
