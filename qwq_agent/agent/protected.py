"""The files a `tests:` check takes from the start state, not from the branch: the tests themselves.

A branch is checked on what its patch does to the code; were the tests part of what is checked, a branch
(a lazy model, or a hostile one) could pass them by rewriting the failing assertion. So the entries of
the patch for protected paths are left out before it is applied for the check (`split_patch`): those
files are exactly as in the user's folder (else the baseline) when COMMAND runs, whatever the branch did
to them (edited, deleted or added). The patch the branch delivers is not changed; what it does to
protected files is named, so that a person reviews it.

Patterns are globs on the path relative to /workspace, read as in `.gitignore`: `*` and `?` match within
one name, `[...]` one character of a set (`[!...]` of any other), `**` any number of folders
(`**/x`: x at any depth; `x/**`: everything under x); a pattern without a `/` matches a name at any
depth (`conftest.py` is `**/conftest.py`), a leading `/` anchors it at the top, a trailing `/` means
everything under the folder. Names are compared as they are (case matters).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

__all__ = ["DEFAULT_PROTECTED", "PatternError", "matcher", "split_patch"]

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


class PatternError(ValueError):
    """A protected-path pattern that is no glob (empty, an empty folder name, an unclosed `[`)."""


def matcher(patterns: Sequence[str]) -> Callable[[str], bool]:
    """Whether a path (relative to /workspace) matches any of `patterns`; `PatternError` naming the
    first pattern that is no glob."""
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(_regex(pattern)))
        except PatternError as exc:
            raise PatternError(f"{pattern!r}: {exc}") from None
    return lambda path: any(c.fullmatch(path) for c in compiled)


def split_patch(patch: str, protected: Callable[[str], bool]) -> tuple[str, list[str]]:
    """`patch` without its entries for protected paths (what the check applies), and those paths.
    `patch_text.PatchTextError` for a text not in git's diff form."""
    from qwq_agent.agent.patch_text import drop_entries  # not for `DEFAULT_PROTECTED` in `--help`

    return drop_entries(patch, protected)


def _regex(pattern: str) -> str:
    body = pattern[1:] if pattern.startswith("/") else pattern
    if not body.strip("/"):
        raise PatternError("an empty pattern")
    if body.endswith("/"):
        body += "**"
    if "/" not in body and not pattern.startswith("/"):
        body = "**/" + body
    parts = body.split("/")
    out = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
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
    while i < len(part) and (part[i] != "]" or i == first):  # a `]` first is one of the set
        i += 1
    if i >= len(part):
        raise PatternError("an unclosed `[`")
    # A `-` between two members is a range, as in a glob; anything else special to a regex is literal.
    members = "".join("\\" + ch if ch in "\\^[]" else ch for ch in part[first:i])
    return i, ("[^/" if negate else "[") + members + "]"
