"""The links of a patch text, judged on the host from the text itself.

The links of the end snapshot are judged inside the sandbox (`link_judge`), but the text is made and read
back afterwards, from a git directory the sandbox user owns: a process the agent left running can rewrite
the snapshot's objects, or the patch file itself, after the judgement. So the text that came back is read
as `git apply` will read it, and every link it would create or change is judged again here, against the
folders and links the user's checkout held when the run began (recorded by `record_baseline` before the
agent ran) and the patch's own entries. An outward link is cut from the text, with the other entries of
its path (a file it replaced stays), until a round cuts none.

Only git's own diff form passes (`diff --git` entries with the headers, hunks and binary blocks our
`git diff --binary --no-renames` writes; hunk lines counted as the `@@` header says; names quoted, or not,
exactly as git quotes them): a text with anything else in it is refused whole (`PatchError`), for
`git apply` (or `patch -p1`) could read a part the parse did not.
"""

from __future__ import annotations

import base64
import re
import zlib
from collections.abc import Callable, Container
from dataclasses import dataclass, field

from qwq_agent.agent.link_judge import LINK, TREE, Entry, outward_reason

MODES = ("100644", "100755", LINK, "160000")
_MODE_LINE = re.compile(r"(old mode|new mode|deleted file mode|new file mode) (\d{6})")
_INDEX_LINE = re.compile(r"index [0-9a-f]+\.\.[0-9a-f]+(?: (\d{6}))?")
_HUNK = re.compile(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_BINARY_SIZE = re.compile(r"(literal|delta) (\d+)")
_BASE85_LINE = re.compile(r"[A-Za-z][0-9A-Za-z!#$%&()*+\-;<=>?@^_`{|}~]+")
# git's C quoting of a name: these escapes, and three octal digits for any other byte.
_UNQUOTED = dict(zip('abtnvfr"\\', '\a\b\t\n\v\f\r"\\', strict=True))
UNREADABLE = "the patch does not show the link's target whole"


class PatchTextError(ValueError):
    """The text is not in git's diff form; the message says where."""


@dataclass
class _Entry:
    """One `diff --git` entry: its path, raw lines, modes and what it holds of the new content."""

    path: str
    lines: list[str]
    modes: dict[str, str] = field(default_factory=dict)  # header words ("new file mode", "index") to mode
    old: str | None = None  # the whole old and new content when one hunk holds all of both
    new: str | None = None
    literal: bytes | None = None  # the new content of a binary entry, when its block is a literal

    @property
    def deleted(self) -> bool:
        return "deleted file mode" in self.modes

    def link_result(self, was_link: bool) -> bool:
        """Whether `git apply` leaves a link at the path (`was_link`: the checkout holds one there now)."""
        if self.deleted:
            return False
        new = self.modes.get("new file mode") or self.modes.get("new mode") or self.modes.get("index")
        return new == LINK if new is not None else was_link


def cut_outward_links(text: str, dirs: set[str], links: dict[str, str]) -> tuple[str, list[str]]:
    """`text` without the entries of links that lead out of the checkout, named as `path -> target (why)`,
    and without the files git would run commands from (`_git_runs`), named as `path (why)`. `dirs` and
    `links` are the checkout's folders and links before the patch. `PatchTextError` for a text not in
    git's diff form."""
    entries = _parse(text)
    held = set(dirs)
    for entry in entries:  # and the folders the patch itself fills
        parts = entry.path.split("/")[:-1]
        held.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    runs = _git_runs(entries, dirs, links)
    cut: dict[str, str] = {path: f"{path} ({GIT_RUNS})" for path in runs}
    while True:
        now, judged = _links_after(entries, cut, links)
        tree = _tree(now, held)
        outward: dict[str, tuple[str, str, set[str]]] = {}
        for path, target in judged.items():
            if target is None:
                outward[path] = ("?", UNREADABLE, set())
                continue
            followed: set[str] = set()
            # `git apply --whitespace=fix` drops blanks at line ends: `.. ` would become `..`.
            for variant in dict.fromkeys((target, _whitespace_fixed(target))):
                why = outward_reason(path, variant, tree, now.__getitem__, followed)
                if why is not None:
                    outward[path] = (target, why, followed - {path})
                    break
        # As `link_judge.main`: a link that only leads out through another one cut now is judged again
        # once that one is back at what the checkout holds; a ring of such links all goes.
        first = {p: v for p, v in outward.items() if not v[2] & outward.keys()} or outward
        if not first:
            break
        cut.update({p: f"{p} -> {target} ({why})" for p, (target, why, _) in first.items()})
    kept = "".join(line + "\n" for e in entries if e.path not in cut for line in e.lines)
    return kept, list(cut.values())


# Inside a git directory: the files whose settings or programs git runs (`core.fsmonitor`, `core.pager`,
# `alias.*`, hooks; `commondir` sends git to another folder's `config`), and the state of a rebase or
# cherry-pick, whose `exec` lines `git rebase --continue` runs. As `sandbox.git_files` keeps them out of a
# copy-back.
_GIT_SETTINGS = frozenset({"config", "config.worktree", "commondir", "hooks"})
_GIT_STATE = frozenset({"hooks", "rebase-merge", "rebase-apply", "sequencer"})
GIT_RUNS = "git would run commands from it"


def _git_runs(entries: list[_Entry], dirs: set[str], links: dict[str, str]) -> set[str]:
    """The paths the patch writes that git would run commands from: a `config`, `config.worktree`,
    `commondir` or `hooks` entry, or anything under `hooks/`, `rebase-merge/`, `rebase-apply/` or
    `sequencer/`, in a folder that looks like a git directory once the patch is applied (`git status`
    there runs what they say). Generous, as a real project rarely ships such a folder: one that holds,
    in the checkout or the patch, an `objects` or `refs` entry, or a `HEAD` or `commondir` one that is
    not a folder; names compared as a case-insensitive disk does (`_fold`)."""
    ids: dict[tuple[int, str], int] = {}  # (folder's id, folded name) -> id; the root is 0

    def steps(path: str) -> list[tuple[int, str]]:
        """Each part of `path` as (its folder's id, its folded name): linear in the path's length."""
        out, folder = [], 0
        for part in path.split("/"):
            name = _fold(part)
            out.append((folder, name))
            folder = ids.setdefault((folder, name), len(ids) + 1)
        return out

    git_dirs: set[int] = set()

    def mark(path: str, folder: bool) -> list[tuple[int, str]]:
        found = steps(path)
        for at, (parent, name) in enumerate(found):
            last = at == len(found) - 1
            if name in ("objects", "refs") or (last and not folder and name in ("head", "commondir")):
                git_dirs.add(parent)
        return found

    for path in dirs:
        mark(path, folder=True)
    for path in links:
        mark(path, folder=False)
    written = {e.path: mark(e.path, folder=False) for e in entries}
    deleted = {e.path for e in entries if e.deleted} - {e.path for e in entries if not e.deleted}
    runs = set()
    for path, found in written.items():
        if path in deleted:  # a deletion plants nothing
            continue
        for at, (parent, name) in enumerate(found):
            if parent in git_dirs and name in (_GIT_SETTINGS if at == len(found) - 1 else _GIT_STATE):
                runs.add(path)
                break
    return runs


def _tree(links: dict[str, str], dirs: set[str]) -> Callable[[str], Entry | None]:
    """`outward_reason`'s tree: a link's "object" is its own path, whose target `links` gives."""

    def entry(path: str) -> Entry | None:
        if path in links:
            return (LINK, path)
        return (TREE, "") if path in dirs else None

    return entry


def _whitespace_fixed(target: str) -> str:
    lines = [line.rstrip(" \t\r\v\f") for line in target.split("\n")]
    while len(lines) > 1 and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def _links_after(
    entries: list[_Entry], cut: Container[str], links: dict[str, str]
) -> tuple[dict[str, str], dict[str, str | None]]:
    """The checkout's links once the entries not cut are applied, and those the patch makes or changes
    (None for one whose target the text does not show whole)."""
    now = dict(links)
    judged: dict[str, str | None] = {}
    for entry in entries:
        if entry.path in cut:
            continue
        was_link = entry.path in now
        if entry.link_result(was_link):
            judged[entry.path] = _new_target(entry, now.get(entry.path))
            now[entry.path] = judged[entry.path] or ""
        elif entry.deleted or was_link:  # a link deleted, or made a file (`git apply` checks the type)
            now.pop(entry.path, None)
    return now, judged


def _new_target(entry: _Entry, old: str | None) -> str | None:
    """The link's target after the entry, when the text shows it whole: a new link's content, or a changed
    one whose hunk starts from exactly what the checkout's link holds now."""
    if entry.literal is not None:
        content = entry.literal.decode("utf-8", "surrogateescape")
    elif entry.new is not None and entry.old == ("" if "new file mode" in entry.modes else old):
        content = entry.new
    else:
        return None
    return content if content and "\0" not in content else None


# ------------------------------------------------------------------------------------------------ parse


def _parse(text: str) -> list[_Entry]:
    """The entries of `text`, each with its raw lines; `PatchTextError` for anything not in git's form."""
    if not text:
        return []
    if not text.endswith("\n"):
        raise PatchTextError("the text does not end with a line break")
    lines = text[:-1].split("\n")  # "\n" only: git reads a "\r" or a "\u2028" as part of the line
    entries: list[_Entry] = []
    at = 0
    while at < len(lines):
        start = at
        if not lines[at].startswith("diff --git "):
            raise PatchTextError(f"line {at + 1} does not start an entry: {lines[at][:80]!r}")
        entry = _Entry(path=_header_path(lines[at][len("diff --git ") :], at), lines=[])
        at += 1
        at = _headers(lines, at, entry)
        if at < len(lines) and lines[at].startswith("--- "):
            at = _names(lines, at, entry)
            at = _hunks(lines, at, entry)
        elif at < len(lines) and lines[at] == "GIT binary patch":
            at = _binary(lines, at + 1, entry)
        entry.lines = lines[start:at]
        entries.append(entry)
    _one_change_a_path(entries)
    return entries


def _one_change_a_path(entries: list[_Entry]) -> None:
    """A path has one entry, or two when its type changed (git writes the deletion, then the addition):
    `git apply --reject` would apply the first of two that the judgement above took as one."""
    by_path: dict[str, list[_Entry]] = {}
    for entry in entries:
        by_path.setdefault(entry.path, []).append(entry)
    for path, group in by_path.items():
        retyped = len(group) == 2 and group[0].deleted and "new file mode" in group[1].modes
        if len(group) > 1 and not retyped:
            raise PatchTextError(f"more than one change of {path!r}")


def _headers(lines: list[str], at: int, entry: _Entry) -> int:
    """The extended headers git writes with --no-renames: modes and the index line, each once."""
    seen: set[str] = set()
    while at < len(lines):
        if found := _MODE_LINE.fullmatch(lines[at]):
            word, mode = found.group(1), found.group(2)
        elif found := _INDEX_LINE.fullmatch(lines[at]):
            word, mode = "index", found.group(1)
        else:
            break
        if word in seen or (mode is not None and mode not in MODES):
            raise PatchTextError(f"line {at + 1}: a header given twice, or a mode git does not write")
        seen.add(word)
        if mode is not None:
            entry.modes[word] = mode
        at += 1
    return at


def _header_path(rest: str, at: int) -> str:
    """The path of `diff --git a/P b/P` (each name quoted or not); both names must be the same."""
    if rest.startswith('"'):
        a, after = _quoted(rest, at)
        second = after[1:]
        if not after.startswith(" "):
            raise PatchTextError(f"line {at + 1}: no second name")
        if not second.startswith('"'):  # git quotes both names or neither: they hold the same path
            raise PatchTextError(f"line {at + 1}: one name quoted, the other not")
        b, tail = _quoted(second, at)
        if tail:
            raise PatchTextError(f"line {at + 1}: text after the names")
    else:
        half = (len(rest) - 1) // 2  # unquoted, the two names hold the same path: `a/P b/P`
        a, b = _plain(rest[:half], at), _plain(rest[half + 1 :], at)
        if rest[half : half + 1] != " ":
            raise PatchTextError(f"line {at + 1}: names git would not write")
    if not (a.startswith("a/") and b.startswith("b/") and a[2:] == b[2:] and a[2:]):
        raise PatchTextError(f"line {at + 1}: the entry's two names differ (a rename or copy)")
    _check_parts(a[2:], at)
    return a[2:]


# What HFS+ leaves out of a name it compares (git's `is_hfs_dotgit` skips the same), so `.g\u200cit` is `.git`.
_HFS_IGNORED = dict.fromkeys(
    [0x200C, 0x200D, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x206A, 0x2070), 0xFEFF]
)


def _fold(part: str) -> str:
    """A name as a case-insensitive file system compares it (HFS+'s ignored characters, NTFS's trailing
    dots and spaces dropped)."""
    return part.translate(_HFS_IGNORED).lower().rstrip(". ")


def _check_parts(path: str, at: int) -> None:
    """Refuse a path git never writes in a diff (its own `verify_path` refuses them on apply, but
    `patch -p1` would follow them): a `.git` part in any spelling a file system takes for it (case,
    trailing dots and spaces for NTFS, its short name `git~1`, HFS+'s ignored characters), `.`, `..`,
    an empty part. Each word of a part is judged too: `patch -p1` ends a name at a blank where no tab
    follows (always on the `diff --git` line), so `sub/.git x` can be written as `sub/.git`."""
    for part in path.split("/"):
        if not part:
            raise PatchTextError(f"line {at + 1}: a path with an empty part: {path!r}")
        for word in (part, *part.split()):
            if word in (".", "..") or _fold(word) in (".git", "git~1"):
                raise PatchTextError(
                    f"line {at + 1}: a path through {part!r}, which git never writes: {path!r}"
                )


def _quoted(text: str, at: int) -> tuple[str, str]:
    """A C-quoted name at the start of `text` and what follows its closing quote, if git would write it
    so (its `quote_c_style`): a raw byte only where git leaves it raw, an escape only for a byte git
    escapes (with its letter where it has one), and at least one escape (else git writes no quotes).
    Above all never a NUL: `git apply` and `patch` read the name as a C string, cut there."""
    out = bytearray()
    escaped = False
    i = 1
    while i < len(text) and text[i] != '"':
        char = text[i]
        if char != "\\":
            if _git_quotes(ord(char)):
                raise PatchTextError(f"line {at + 1}: a quoted name with a raw {char!r}, which git escapes")
            out += char.encode("utf-8", "surrogateescape")
            i += 1
            continue
        escaped = True
        if text[i + 1 : i + 2] in _UNQUOTED:
            out += _UNQUOTED[text[i + 1]].encode()
            i += 2
        elif re.fullmatch(r"[0-3][0-7][0-7]", text[i + 1 : i + 4]):
            byte = int(text[i + 1 : i + 4], 8)
            # git writes octal for the control bytes without a letter, DEL, and bytes past ASCII.
            if not (_git_quotes(byte) or byte >= 0x80) or byte == 0 or chr(byte) in _UNQUOTED.values():
                raise PatchTextError(
                    f"line {at + 1}: a quoted name with \\{text[i + 1 : i + 4]}, which git never writes"
                )
            out.append(byte)
            i += 4
        else:
            raise PatchTextError(f"line {at + 1}: a quoted name git would not write")
    if i >= len(text):
        raise PatchTextError(f"line {at + 1}: a quoted name without its end")
    if not escaped:
        raise PatchTextError(f"line {at + 1}: a quoted name with nothing git quotes in it")
    return out.decode("utf-8", "surrogateescape"), text[i + 1 :]


def _plain(name: str, at: int) -> str:
    """`name`, written without quotes: refused if it holds a character git would have quoted it for, or
    ends in a blank (git writes it, but `patch -p1` reads the name without it: another file)."""
    for char in name:
        if _git_quotes(ord(char)):
            raise PatchTextError(f"line {at + 1}: a name with a raw {char!r}, which git quotes")
    if name.endswith(" "):
        raise PatchTextError(f"line {at + 1}: a name that ends in a blank, which `patch -p1` leaves out")
    return name


def _git_quotes(code: int) -> bool:
    """Whether git quotes a name for holding this character (a control byte, DEL, `"` or a backslash)."""
    return code < 0x20 or code == 0x7F or chr(code) in '"\\'


def _names(lines: list[str], at: int, entry: _Entry) -> int:
    """The `---` and `+++` lines: each names the entry's path (or /dev/null for an added or deleted file)."""
    if at + 1 >= len(lines) or not lines[at + 1].startswith("+++ "):
        raise PatchTextError(f"line {at + 1}: `---` without `+++`")
    created, deleted = "new file mode" in entry.modes, entry.deleted
    for here, prefix, null in ((at, "a/", created), (at + 1, "b/", deleted)):
        name = lines[here][4:]
        if null:
            if name != "/dev/null":
                raise PatchTextError(f"line {here + 1}: an added or deleted file without /dev/null")
            continue
        if name.startswith('"'):
            label, (name, after) = name, _quoted(name, here)
            label = label[: len(label) - len(after)]
        else:
            label, after = (name[:-1], "\t") if name.endswith("\t") else (name, "")
            name = _plain(label, here)
        # git ends a name that holds a space with a tab (after the quotes, for a quoted one), and no other
        # name. Without it GNU `patch -p1` ends the name at its first blank: `b/lnk /x` is `lnk`.
        if after not in ("", "\t"):
            raise PatchTextError(f"line {here + 1}: text after the name")
        if " " in label and not after:
            raise PatchTextError(f"line {here + 1}: a name with a blank, without the tab git writes after it")
        if after and " " not in label:
            raise PatchTextError(
                f"line {here + 1}: a tab after a name without a blank, which git never writes"
            )
        if name != prefix + entry.path:
            raise PatchTextError(f"line {here + 1}: a name that is not the entry's")
    return at + 2


def _hunks(lines: list[str], at: int, entry: _Entry) -> int:
    """The hunks, each exactly as many lines as its header counts; `entry.old`/`new` when one hunk
    holds the whole of both contents (as git writes a link's)."""
    count = 0
    while at < len(lines) and (hunk := _HUNK.match(lines[at])):
        count += 1
        start_old, start_new = int(hunk.group(1)), int(hunk.group(3))
        left_old = 1 if hunk.group(2) is None else int(hunk.group(2))
        left_new = 1 if hunk.group(4) is None else int(hunk.group(4))
        whole = count == 1 and start_old <= 1 and start_new <= 1
        old: list[str] = []
        new: list[str] = []
        at += 1
        last = ""  # the kind of the line a "\\ No newline at end of file" marker would end
        while left_old or left_new or (at < len(lines) and lines[at].startswith("\\")):
            line = lines[at] if at < len(lines) else None
            if line is None:
                raise PatchTextError("the text ends inside a hunk")
            kind = line[:1]
            if kind == "\\" and last:
                for side, touched in ((old, last in " -"), (new, last in " +")):
                    if touched:
                        side[-1] = side[-1][:-1]
                last = ""
            elif (kind in ("", " ") and left_old and left_new) or (kind == "-" and left_old):
                # An empty line is context to `git apply` (git writes one with diff.suppressBlankEmpty).
                left_old -= 1
                old.append(line[1:] + "\n")
                if kind != "-":
                    left_new -= 1
                    new.append(line[1:] + "\n")
                last = kind
            elif kind == "+" and left_new:
                left_new -= 1
                new.append(line[1:] + "\n")
                last = kind
            else:
                raise PatchTextError(f"line {at + 1}: not a line of its hunk")
            at += 1
        entry.old, entry.new = ("".join(old), "".join(new)) if whole else (None, None)
    if not count:
        raise PatchTextError(f"line {at + 1}: names without a hunk")
    if count > 1:
        entry.old = entry.new = None
    return at


def _binary(lines: list[str], at: int, entry: _Entry) -> int:
    """The two blocks of a `GIT binary patch` (forward, then reverse); `entry.literal` from the forward
    one when it is a literal."""
    for block in range(2):
        size = _BINARY_SIZE.fullmatch(lines[at]) if at < len(lines) else None
        if size is None:
            raise PatchTextError(f"line {at + 1}: not a binary block")
        data = bytearray()
        at += 1
        while at < len(lines) and lines[at]:
            line = lines[at]
            if not _BASE85_LINE.fullmatch(line) or (len(line) - 1) % 5:
                raise PatchTextError(f"line {at + 1}: not a line of base85")
            length = ord(line[0]) - (ord("A") - 1 if line[0] <= "Z" else ord("a") - 27)
            data += base64.b85decode(line[1:])[:length]
            at += 1
        if at >= len(lines):
            raise PatchTextError("the text ends inside a binary block")
        at += 1  # the empty line that ends the block
        if block == 0 and size.group(1) == "literal":
            try:
                content = zlib.decompress(bytes(data))
            except zlib.error:
                content = None
            entry.literal = content if content is not None and len(content) == int(size.group(2)) else None
    return at
