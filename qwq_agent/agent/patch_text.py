"""The links of a patch text, judged on the host from the text itself.

The links of the end snapshot are judged inside the sandbox (`link_judge`), but the text is made and read
back afterwards, from a git directory the sandbox user owns: a process the agent left running can rewrite
the snapshot's objects, or the patch file itself, after the judgement. So the text that came back is read
as `git apply` will read it, and every link it would create or change is judged again here, against the
folders and links the user's checkout held when the run began (recorded by `record_baseline` before the
agent ran) and the patch's own entries. An outward link is cut from the text, with the other entries of
its path (a file it replaced stays), until a round cuts none; so is a link with a `.git` part in its
target (the checkout's own `.git` is in no baseline). A text with a path through a link the checkout holds
(and the text does not delete) or the text makes, or through a file it writes, is refused whole: `git apply` refuses it too ("beyond a
symbolic link"), but GNU `patch -p1` follows the link, and goes on past an entry it cannot apply. A path
that runs through one only on a disk that ignores case or a name's trailing dots (the user's may) is
cut, with the entries of its path, and named; so is a name that ends in a blank, which `patch -p1`
reads without it. git writes a type change as a deletion and the entries under (or over) the path: an
entry that needs a cut one so (`notes /todo.md`, once the deletion of the file `notes ` is cut) is cut
with it and named, else `git apply` fails halfway through writing; then the rules judge what is kept
again (a link whose deletion was cut stays, to walk through), until a pass cuts nothing.

Only git's own diff form passes (`diff --git` entries with the headers, hunks and binary blocks our
`git diff --binary --no-renames` writes; hunk lines counted as the `@@` header says; names quoted, or not,
exactly as git quotes them; mode headers only in git's own forms, which state the mode each entry
leaves): a text with anything else in it is refused whole (`PatchError`), for
`git apply` (or `patch -p1`) could read a part the parse did not.

The text is the sandbox's, up to `patch.MAX_PATCH_BYTES`: the work stays linear in it. A link is judged
again only when a link its walk followed is cut; past a few such rounds every link that leads out goes
at once; and a text with more links than a real patch makes (`MAX_LINKS`), whose links take too long
to follow (`FOLLOW_BUDGET`, for all passes together), or whose cuts still call for more after
`MAX_PASSES` passes, is refused whole.
"""

from __future__ import annotations

import base64
import bisect
import codecs
import re
import zlib
from collections.abc import Callable, Container
from dataclasses import dataclass, field

from qwq_agent.agent import patch_git_dirs
from qwq_agent.agent.link_judge import LINK, TREE, Entry, outward_reason

MODES = ("100644", "100755", LINK, "160000")
# A mode line (its words, its mode) or the index line (the mode, when it has one): one match a line.
_HEADER = re.compile(
    r"(old mode|new mode|deleted file mode|new file mode) (\d{6})|index [0-9a-f]+\.\.[0-9a-f]+(?: (\d{6}))?"
)
# Counts of at most 10 digits: `int` refuses a string of thousands, and no real text holds more lines.
_HUNK = re.compile(r"@@ -(\d{1,10})(?:,(\d{1,10}))? \+(\d{1,10})(?:,(\d{1,10}))? @@")
_BINARY_SIZE = re.compile(r"(literal|delta) (\d{1,10})")
_BASE85_LINE = re.compile(r"[A-Za-z][0-9A-Za-z!#$%&()*+\-;<=>?@^_`{|}~]+")
UNREADABLE = "the patch does not show the link's target whole"
BLANK_END = "a name that ends in a blank, which `patch -p1` reads without it"
GIT_DIR = "leads into a git directory"
MAX_TARGET = 4095  # the bytes a link's target can hold (PATH_MAX less its NUL)
MAX_NAME = 255  # the bytes a name (a part of a path) can hold, on any file system git runs on


class PatchTextError(ValueError):
    """The text is not in git's diff form; the message says where."""


@dataclass(slots=True)
class _Entry:
    """One `diff --git` entry: its path, lines (`start` to `end` of the text's), modes and what it holds
    of the new content."""

    path: str
    start: int
    end: int = 0
    modes: dict[str, str] = field(default_factory=dict)  # header words ("new file mode", "index") to mode
    old: str | None = None  # the whole old and new content when one hunk holds all of both
    new: str | None = None
    literal: bytes | None = None  # the new content of a binary entry, when its block is a literal

    @property
    def deleted(self) -> bool:
        return "deleted file mode" in self.modes

    @property
    def may_link(self) -> bool:
        """Whether the entry may leave a link: only then is its content kept (`old`, `new`, `literal`)."""
        new = self.modes.get("new file mode") or self.modes.get("new mode") or self.modes.get("index")
        return new is None or new == LINK

    def link_result(self, was_link: bool) -> bool:
        """Whether `git apply` leaves a link at the path (`was_link`: the checkout holds one there now)."""
        if self.deleted:
            return False
        new = self.modes.get("new file mode") or self.modes.get("new mode") or self.modes.get("index")
        return new == LINK if new is not None else was_link


def cut_outward_links(text: str, dirs: set[str], links: dict[str, str]) -> tuple[str, list[str]]:
    """`text` without the entries of links that lead out of the checkout, named as `path -> target (why)`,
    and without the files git would run commands from (`patch_git_dirs`), those whose path runs through a
    link or a file only as some disks compare names (`_through_links`), those `patch -p1` would
    write under another name (`BLANK_END`), and those that need a cut one (`_needing`), named as
    `path (why)`. `dirs` and `links` are the checkout's folders and links before the patch.
    `PatchTextError` for a text not in git's diff form, or one whose links are more than a real patch
    makes (`MAX_LINKS`) or take too long to follow (`FOLLOW_BUDGET`), or whose cuts still call for more
    after `MAX_PASSES` passes. The work is bounded for any text: run it off the event loop all the same."""
    entries = _parse(text)
    cut = {e.path: f"{e.path} ({BLANK_END})" for e in entries if _blank_end(e.path)}
    written = list(dict.fromkeys(e.path for e in entries if not e.deleted))
    runs = patch_git_dirs.git_runs(written, dirs, links, [e.path for e in entries])
    cut.update({path: f"{path} ({why})" for path, why in runs.items() if path not in cut})
    groups = _groups(entries)
    budget = FOLLOW_BUDGET
    # A cut can leave what the rules below judged otherwise (a link's deletion cut with the folder that
    # replaced it: the link stays, to walk through): they judge the entries kept again, until none is cut.
    for _ in range(MAX_PASSES):
        size = len(cut)
        cut.update(_needing(groups, cut))
        cut.update(_through_links([e for e in entries if e.path not in cut], dirs, links))
        cut.update(_needing(groups, cut))
        judge = _Links(entries, cut, dirs, links, budget)
        cut.update(judge.cut())
        budget = judge.budget
        cut.update(_needing(groups, cut))
        if len(cut) == size:
            break
    else:
        raise PatchTextError(f"the patch's cuts still call for more after {MAX_PASSES} passes")
    if not cut:
        return text, []
    lines = text.split("\n")
    kept = "".join("\n".join(lines[e.start : e.end]) + "\n" for e in entries if e.path not in cut)
    return kept, list(cut.values())


def drop_entries(text: str, drop: Callable[[str], bool]) -> tuple[str, list[str]]:
    """`text` without the entries of the paths `drop` accepts, and those paths (each once, in the text's
    order). A path's entries go together (a type change is two). `PatchTextError` for a text not in
    git's diff form."""
    entries = _parse(text)
    dropped = list(dict.fromkeys(e.path for e in entries if drop(e.path)))
    if not dropped:
        return text, []
    lines = text.split("\n")
    gone = set(dropped)
    kept = "".join("\n".join(lines[e.start : e.end]) + "\n" for e in entries if e.path not in gone)
    return kept, dropped


NEEDS = "needs {!r}, which was left out"
# Passes of the rules over the entries kept (`cut_outward_links`): a real patch's cuts settle in two.
MAX_PASSES = 8


def _groups(entries: list[_Entry]) -> list[list[str]]:
    """The paths of the text that lie under another of its paths, each with that one (first): git writes
    a type change so (a file made a folder: the file's deletion, the folder's files; a folder made a file:
    the file, the deletions under it), and `git apply` can write none of them without the others. Sorted
    with `/` as the least character, a path's descendants follow it at once: one pass, linear."""
    groups: list[list[str]] = []
    root: str | None = None
    for path in sorted({e.path for e in entries}, key=lambda p: p.replace("/", "\0")):  # no NUL in a path
        if root is not None and path.startswith(root + "/"):
            groups[-1].append(path)
        else:
            root = path
            groups.append([path])
    return [group for group in groups if len(group) > 1]


def _needing(groups: list[list[str]], cut: Container[str]) -> dict[str, str]:
    """The paths of `groups` not in `cut` whose group holds a cut one, as `path -> why`: cut alone, the
    deletion of `notes ` leaves the file that `notes /todo.md` is to be written under, and `git apply`
    fails while writing, after it has written other files (a half-patched checkout). (The other entry of
    a cut path's own type change goes with it: the text is cut by path.) Each is named as needing the
    group's first path, or the first one cut there when that one is kept."""
    found: dict[str, str] = {}
    for group in groups:
        gone = [path for path in group if path in cut]
        if not gone:
            continue
        root = group[0]
        for path in group:
            if path not in cut:
                needed = gone[0] if path == root else root
                found[path] = f"{path} ({NEEDS.format(needed)})"
    return found


# Links a patch makes or changes, judged one by one: a real patch holds far fewer.
MAX_LINKS = 2000
# Rounds that cut only the links leading out on their own (see `_Links.cut`); then every one that leads
# out goes at once, and past MAX_ROUNDS (no real patch needs a second) the text is refused.
CAREFUL_ROUNDS = 8
MAX_ROUNDS = 32
# What following links may cost, all of them together: the characters of the paths looked up and of the
# targets read, and 64 for each. Far beyond any real patch's links, about a second of work at most.
FOLLOW_BUDGET = 20_000_000


class _Links:
    """The links the patch makes or changes, judged against the checkout as the patch leaves it, each
    again only when a link its walk followed is cut."""

    def __init__(
        self,
        entries: list[_Entry],
        cut: Container[str],
        dirs: set[str],
        links: dict[str, str],
        budget: int = FOLLOW_BUDGET,
    ):
        self.before = links
        self.now, self.targets = _links_after(entries, cut, links)
        if len(self.targets) > MAX_LINKS:
            raise PatchTextError(
                f"the patch makes or changes {len(self.targets)} links, more than {MAX_LINKS} links a patch "
                "is judged for"
            )
        self.dirs = dirs
        # The folders the patch fills are prefixes of the paths it keeps (sorted only if there is a link
        # to judge).
        self.paths = sorted(e.path for e in entries if e.path not in cut) if self.targets else []
        self.budget = budget  # what is left of FOLLOW_BUDGET, shared by `cut_outward_links`' passes
        self.why: dict[str, str | None] = {}  # not cut: why it leads out, or None
        self.followed: dict[str, set[str]] = {}
        self.dependents: dict[str, set[str]] = {}  # a link's path -> the links whose walks followed it

    def cut(self) -> dict[str, str]:
        """The links to cut, as `path -> target (why)`, until none left leads out.

        As `link_judge.main`: a link that only leads out through another one cut now is judged again
        once that one is back at what the checkout holds; a ring of such links all goes. A link whose
        walk goes through one that leads out leads out too, so rounds past the first few cut them all."""
        for path in self.targets:
            self._judge(path)
        cut: dict[str, str] = {}
        for round_ in range(MAX_ROUNDS):
            outward = {p for p, why in self.why.items() if why is not None}
            if not outward:
                return cut
            careful = round_ < CAREFUL_ROUNDS
            going = {p for p in outward if careful and not self.followed[p] & outward} or outward
            again: set[str] = set()
            for path in [p for p in self.targets if p in going]:  # in the text's order
                target = self.targets[path]
                cut[path] = f"{path} -> {'?' if target is None else target} ({self.why.pop(path)})"
                if path in self.before:  # back to what the checkout holds
                    self.now[path] = self.before[path]
                else:
                    self.now.pop(path, None)
                again |= self.dependents.get(path, set())
            for path in again - cut.keys():
                self._judge(path)
        raise PatchTextError(f"the patch's links still lead out after {MAX_ROUNDS} rounds of cutting")

    def _judge(self, path: str) -> None:
        for other in self.followed.pop(path, ()):
            self.dependents[other].discard(path)
        target = self.targets[path]
        why: str | None = UNREADABLE if target is None else None
        followed: set[str] = set()
        if target is not None and _names_git_dir(target):
            why = GIT_DIR
        elif target is not None:
            # `git apply --whitespace=fix` drops blanks at line ends: `.. ` would become `..`.
            for variant in dict.fromkeys((target, _whitespace_fixed(target))):
                why = outward_reason(path, variant, self._entry, self._target, followed)
                if why is not None:
                    break
        followed.discard(path)
        self.why[path], self.followed[path] = why, followed
        for other in followed:
            self.dependents.setdefault(other, set()).add(path)

    def _entry(self, path: str) -> Entry | None:
        """`outward_reason`'s tree: a link's "object" is its own path, whose target `_target` gives."""
        self._spend(len(path))
        if path in self.now:
            return (LINK, path)
        if path in self.dirs:
            return (TREE, "")
        prefix = path + "/"
        at = bisect.bisect_left(self.paths, prefix)
        return (TREE, "") if at < len(self.paths) and self.paths[at].startswith(prefix) else None

    def _target(self, path: str) -> str:
        target = self.now[path]
        self._spend(len(target))
        return target

    def _spend(self, length: int) -> None:
        self.budget -= length + 64
        if self.budget < 0:
            raise PatchTextError(
                "the patch's links take too long to follow (far longer walks than a real patch's)"
            )


def _names_git_dir(target: str) -> bool:
    """Whether a part of `target`, or a blank-separated word of one, is `.git` in any spelling a disk takes
    for it (as `_check_parts`). The checkout's own `.git` is in no baseline, so the walk ends there as at
    any name inside; but `patch -p1` writes through such a link into the user's git directory (a hook)."""
    return any(
        patch_git_dirs.fold(word) in (".git", "git~1")
        for part in target.split("/")
        for word in (part, *part.split())
    )


def _through_links(entries: list[_Entry], dirs: set[str], links: dict[str, str]) -> dict[str, str]:
    """Refuse a text with a path that runs through a link the checkout holds (`links`), or through a path
    the text itself writes (a link, or a file) other than to delete what lies under it (git writes a
    folder made a file so). `git apply` refuses such a text whole ("beyond a symbolic link"), but GNU
    `patch -p1` follows the link, and, not atomic, goes on past an entry it cannot apply: after a
    skipped link `d`, a link `x -> d/../..` through the folder `d` another entry made. A link the text
    deletes, with the target the checkout holds (so the deletion applies), is gone before the entries
    after it write there: git writes a link made a folder so. Sorted, each prefix is one bisection.

    The entries whose path runs through one only as a disk that ignores case or a name's trailing dots
    compares names (`patch_git_dirs.fold`: `docs/x` beside the link `Docs`) are returned to cut, as
    `path -> why`: the patch is applied on the user's disk, which may be such a one, but this one holds
    both apart. Not where the checkout holds that folder itself (`docs` in `dirs`): its disk then told
    the two apart."""
    gone = {
        e.path
        for e in entries
        if e.modes.get("deleted file mode") == LINK and e.path in links and e.old == links[e.path]
    }
    held = [link for link in links if link not in gone]
    every = sorted({e.path for e in entries})
    written = sorted({e.path for e in entries if not e.deleted})

    def first_under(folder: str, paths: list[str]) -> str | None:
        at = bisect.bisect_left(paths, folder + "/")
        return paths[at] if at < len(paths) and paths[at].startswith(folder + "/") else None

    for link in held:
        if (path := first_under(link, every)) is not None:
            raise PatchTextError(f"{path!r} runs through a link the checkout holds, {link!r}")
    for made in written:
        if (path := first_under(made, written)) is not None:
            raise PatchTextError(
                f"{path!r} uses {made!r}, which the text writes as a file or a link, as a folder"
            )
    cut = _folded_through(held, every, dirs)
    cut.update(
        _folded_through([p for p in written if p not in cut], [p for p in written if p not in cut], dirs)
    )
    return {path: f"{path} ({FOLDED.format(through)})" for path, through in cut.items()}


FOLDED = "on a disk that ignores case or a name's trailing dots, a path through {!r}"


def _folded_through(blockers: list[str], paths: list[str], dirs: set[str]) -> dict[str, str]:
    """Those of `paths` with a folder that, folded (`patch_git_dirs.fold`), is one of `blockers` folded
    and is not in `dirs`, each to that blocker. A path's parts are looked up one by one, each once, in
    a tree of the folded blockers' parts: linear in the paths, whatever the text. (Each folder the
    checkout holds costs its length: `dirs` is the checkout's, not the text's.)"""
    nodes: dict[tuple[int, str], int] = {}
    ends: dict[int, str] = {}  # a node to a blocker that folds to the parts that lead to it
    for blocker in blockers:
        node = 0
        for part in patch_git_dirs.fold(blocker).split("/"):
            node = nodes.setdefault((node, part), len(nodes) + 1)
        ends.setdefault(node, blocker)
    found: dict[str, str] = {}
    for path in paths if ends else ():
        node, offset = 0, 0
        exact = path.split("/")
        for part, folded in zip(exact[:-1], patch_git_dirs.fold(path).split("/"), strict=False):
            offset += len(part) + 1
            if (next_ := nodes.get((node, folded))) is None:
                break
            node = next_
            if node in ends and path[: offset - 1] not in dirs:
                found[path] = ends[node]
                break
    return found


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
    if len(content.encode("utf-8", "surrogateescape")) > MAX_TARGET:  # no link holds it: symlink() fails
        return None
    return content if content and "\0" not in content else None


# ------------------------------------------------------------------------------------------------ parse


def _parse(text: str) -> list[_Entry]:
    """The entries of `text`, each with its lines; `PatchTextError` for anything not in git's form."""
    if not text:
        return []
    if not text.endswith("\n"):
        raise PatchTextError("the text does not end with a line break")
    lines = text[:-1].split("\n")  # "\n" only: git reads a "\r" or a "\u2028" as part of the line
    entries: list[_Entry] = []
    at = 0
    while at < len(lines):
        if not lines[at].startswith("diff --git "):
            raise PatchTextError(f"line {at + 1} does not start an entry: {lines[at][:80]!r}")
        entry = _Entry(path=_header_path(lines[at][len("diff --git ") :], at), start=at)
        at += 1
        at = _headers(lines, at, entry)
        if at < len(lines) and lines[at].startswith("--- "):
            at = _names(lines, at, entry)
            at = _hunks(lines, at, entry)
        elif at < len(lines) and lines[at] == "GIT binary patch":
            at = _binary(lines, at + 1, entry)
        entry.end = at
        entries.append(entry)
    _one_change_a_path(entries)
    return entries


def _one_change_a_path(entries: list[_Entry]) -> None:
    """A path has one entry, or two when its type changed (git writes the deletion, then the addition):
    `git apply --reject` would apply the first of two that the judgement above took as one."""
    first: dict[str, _Entry] = {}
    again: dict[str, _Entry] = {}
    for entry in entries:
        if first.setdefault(entry.path, entry) is not entry:
            retyped = first[entry.path].deleted and "new file mode" in entry.modes
            if not retyped or again.setdefault(entry.path, entry) is not entry:
                raise PatchTextError(f"more than one change of {entry.path!r}")


# The extended headers git writes with --no-renames, in its order: a mode change, an added or a deleted
# file's mode, or none; then the index line, which holds the mode (old and new alike) only where no mode
# line came before. `git apply` and `patch` read any other mix otherwise than the judgement would: the
# last mode line wins, git takes the index line's mode for the old one, `patch` for the new one.
_HEADER_FORMS = {
    ("old mode", "new mode"): False,
    ("new file mode",): False,
    ("deleted file mode",): False,
    (): True,  # then the index line must hold the mode: git states the mode every entry leaves
}


def _headers(lines: list[str], at: int, entry: _Entry) -> int:
    """The extended headers, only in one of git's own forms (`_HEADER_FORMS`)."""
    words: list[str] = []
    index: str | None = None
    indexed = False
    while at < len(lines) and (found := _HEADER.fullmatch(lines[at])):
        word, mode = found.group(1) or "index", found.group(2) or found.group(3)
        if indexed or (mode is not None and mode not in MODES):
            raise PatchTextError(
                f"line {at + 1}: a header after the index line, or a mode git does not write"
            )
        if word == "index":
            indexed, index = True, mode
        elif mode is not None:  # always, for a mode line
            words.append(word)
            entry.modes[word] = mode
        at += 1
    form = _HEADER_FORMS.get(tuple(words))
    if form is None or (index is not None) != form:
        raise PatchTextError(
            f"line {entry.start + 1}: mode headers git does not write (or an entry that does not state "
            "the mode it leaves)"
        )
    if index is not None:
        entry.modes["index"] = index
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
        a, b = rest[:half], _plain(rest[half + 1 :], at)
        if rest[half : half + 1] != " ":
            raise PatchTextError(f"line {at + 1}: names git would not write")
        _plain(a, at)  # the same characters as `b`, when the two are the same
    if not (a.startswith("a/") and b.startswith("b/") and a[2:] == b[2:] and a[2:]):
        raise PatchTextError(f"line {at + 1}: the entry's two names differ (a rename or copy)")
    _check_parts(a[2:], at)
    return a[2:]


# A `.`, `..` (trailing blanks dropped), `.git` or `git~1` part (trailing dots and blanks dropped), in
# `fold_case`.
_DOTS = re.compile(r"(?:^|/)(?:\.{1,2} *|\.git[. ]*|git~1[. ]*)(?=/|$)")


def _check_parts(path: str, at: int) -> None:
    """Refuse a path git never writes in a diff (its own `verify_path` refuses them on apply, but
    `patch -p1` would follow them): a `.git` part in any spelling a file system takes for it (case,
    trailing dots and spaces for NTFS, its short name `git~1`, HFS+'s ignored characters), `.`, `..`
    (with trailing blanks, which NTFS drops), an empty part, a part past `MAX_NAME`. A blank-separated
    word of a part is no part: git ends a name that holds a blank with a tab, and `patch -p1` reads the
    whole of it (only blanks at the end are lost, `BLANK_END`); without `---`/`+++` lines it finds no
    two names on the `diff --git` line, and skips the entry."""
    if not path or path.startswith("/") or path.endswith("/") or "//" in path:
        raise PatchTextError(f"line {at + 1}: a path with an empty part: {path!r}")
    # First, before anything folds the path: no file system takes a longer name, so a real diff holds
    # none, and every later look at a part (a regular expression, a fold) is bounded by it.
    if any(len(part.encode("utf-8", "surrogateescape")) > MAX_NAME for part in path.split("/")):
        raise PatchTextError(f"line {at + 1}: a name longer than {MAX_NAME} bytes: {path[:120]!r}...")
    if not _DOTS.search(patch_git_dirs.fold_case(path)):
        return  # the whole path judged at once; the loop below, for the message, finds the same
    for part in path.split("/"):
        if part.rstrip(" ") in (".", "..") or patch_git_dirs.fold(part) in (".git", "git~1"):
            raise PatchTextError(f"line {at + 1}: a path through {part!r}, which git never writes: {path!r}")


# A name as git's quote_c_style writes it: raw, any character git does not escape; escaped, with its letter
# where it has one, else three octal digits (control bytes without a letter, DEL, bytes past ASCII).
_QUOTED = re.compile(
    r'"((?:[^"\\\x00-\x1f\x7f]|\\[abtnvfr"\\]|\\(?:00[1-6]|01[67]|0[23][0-7]|177|[23][0-7]{2}))*)"'
)
_GIT_QUOTES = re.compile(r'[\x00-\x1f\x7f"\\]')  # a name holding one is quoted


def _quoted(text: str, at: int) -> tuple[str, str]:
    """A C-quoted name at the start of `text` and what follows its closing quote, if git would write it
    so (`_QUOTED`, with at least one escape: git quotes nothing else). Above all never a NUL:
    `git apply` and `patch` read the name as a C string, cut there."""
    found = _QUOTED.match(text)
    if found is None:
        raise PatchTextError(f"line {at + 1}: a quoted name git would not write: {text[:120]!r}")
    if "\\" not in found.group(1):
        raise PatchTextError(f"line {at + 1}: a quoted name with nothing git quotes in it")
    name = codecs.escape_decode(found.group(1).encode("utf-8", "surrogateescape"))[0]
    return name.decode("utf-8", "surrogateescape"), text[found.end() :]


def _plain(name: str, at: int) -> str:
    """`name`, written without quotes: refused if it holds a character git would have quoted it for."""
    if quoted := _GIT_QUOTES.search(name):
        raise PatchTextError(f"line {at + 1}: a name with a raw {quoted.group()!r}, which git quotes")
    return name


def _blank_end(path: str) -> bool:
    """Whether `patch -p1` reads the path without its end (`BLANK_END`): an unquoted name that ends in a
    blank (git's tab after it, or the `diff --git` line's next blank, ends it there for `patch`)."""
    return path.endswith(" ") and not _GIT_QUOTES.search(path)


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
        whole = count == 1 and start_old <= 1 and start_new <= 1 and entry.may_link
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
                    if touched and whole:
                        side[-1] = side[-1][:-1]
                last = ""
            elif (kind in ("", " ") and left_old and left_new) or (kind == "-" and left_old):
                # An empty line is context to `git apply` (git writes one with diff.suppressBlankEmpty).
                left_old -= 1
                if whole:  # the content is kept only where it may be a link's target
                    old.append(line[1:] + "\n")
                if kind != "-":
                    left_new -= 1
                    if whole:
                        new.append(line[1:] + "\n")
                last = kind
            elif kind == "+" and left_new:
                left_new -= 1
                if whole:
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
    one when it is a literal of a size a link's target can have (only then is anything decoded: the
    text is the sandbox's, and a few megabytes of it can inflate to gigabytes)."""
    for block in range(2):
        size = _BINARY_SIZE.fullmatch(lines[at]) if at < len(lines) else None
        if size is None:
            raise PatchTextError(f"line {at + 1}: not a binary block")
        wanted = (
            block == 0 and size.group(1) == "literal" and entry.may_link and int(size.group(2)) <= MAX_TARGET
        )
        data = bytearray()
        at += 1
        while at < len(lines) and lines[at]:
            line = lines[at]
            if not _BASE85_LINE.fullmatch(line) or (len(line) - 1) % 5:
                raise PatchTextError(f"line {at + 1}: not a line of base85")
            if wanted and len(data) <= 2 * MAX_TARGET:  # deflate never grows a target past that
                length = ord(line[0]) - (ord("A") - 1 if line[0] <= "Z" else ord("a") - 27)
                data += base64.b85decode(line[1:])[:length]
            else:
                wanted = False
            at += 1
        if at >= len(lines):
            raise PatchTextError("the text ends inside a binary block")
        at += 1  # the empty line that ends the block
        if wanted:
            inflate = zlib.decompressobj()
            try:
                content = inflate.decompress(bytes(data), int(size.group(2)) + 1)
            except zlib.error:
                content = b""
            # The whole stream, and exactly the size the block says, as `git apply` checks.
            whole = inflate.eof and len(content) == int(size.group(2))
            entry.literal = content if whole else None
    return at
