"""`cut_outward_links` reads a patch text as `git apply` does and cuts the links that would lead out of the
checkout. Real git on the host makes the texts (and applies them), so the parse is checked against what
git writes and what it does with the result; hostile texts are git's own output, edited."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from git_repo import git as shared_git

from qwq_agent.agent.patch_text import UNREADABLE, PatchTextError, cut_outward_links


def git(repo: Path, *args: str, data: str | None = None) -> str:
    """The shared `git`, with paths in its output as they are (not C-quoted), as the patches carry them."""
    return shared_git(repo, "-c", "core.quotepath=false", *args, data=data)


def make_repo(path: Path) -> Path:
    """README, a folder `a` with a file, `sub/up -> ..` (the user's own link to the root), `bin.dat`."""
    path.mkdir()
    git(path, "init", "-q")
    (path / "README").write_text("hello\n")
    (path / "a").mkdir()
    (path / "a" / "f").write_text("f\n")
    (path / "sub").mkdir()
    (path / "sub" / "up").symlink_to("..")
    (path / "bin.dat").write_bytes(b"\0\1\2")
    (path / "old").symlink_to("README")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "init")
    return path


def checkout(repo: Path) -> tuple[set[str], dict[str, str]]:
    """The folders and links of HEAD, as `record_baseline` records them."""
    dirs, links = set(), {}
    for line in git(repo, "ls-tree", "-r", "-t", "--full-tree", "HEAD").splitlines():
        meta, path = line.split("\t", 1)
        mode, _, oid = meta.split()
        if mode == "040000":
            dirs.add(path)
        elif mode == "120000":
            links[path] = git(repo, "cat-file", "blob", oid)
    return dirs, links


def diff(repo: Path) -> str:
    """What the sandbox's `git diff` writes for the work tree against HEAD."""
    git(repo, "add", "-A")
    text = git(repo, "diff", "--cached", "--binary", "--no-color", "--no-ext-diff", "--no-renames", "HEAD")
    git(repo, "reset", "-q", "--hard")
    git(repo, "clean", "-qfdx")
    return text


def applied(repo: Path, text: str, tmp_path: Path) -> None:
    patch = tmp_path / "p.diff"
    patch.write_text(text)
    git(repo, "apply", str(patch))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


def test_what_git_writes_passes_whole(repo: Path, tmp_path: Path) -> None:
    """Names with spaces, tabs and quotes, binary files, a type change, a mode change, a link with a line
    break in its target, links inside the checkout (one through the checkout's own link): nothing cut, and the text still applies."""
    (repo / "README").write_text("hello\nworld\n")
    (repo / "with space.txt").write_text("s\n")
    (repo / 'tab\tand"quote').write_text("t\n")
    (repo / "space and\ttab").write_text("t\n")
    (repo / "bin.dat").write_bytes(b"\0\1\2\3")
    (repo / "a" / "f").unlink()
    (repo / "a" / "f").symlink_to("../README")
    (repo / "new" / "deep").mkdir(parents=True)
    (repo / "new" / "deep" / "l").symlink_to("../../a")
    (repo / "odd").symlink_to("line\nbreak")
    (repo / "via up").symlink_to("sub/up/README")
    (repo / "old").unlink()
    (repo / "old").symlink_to("a/f")
    (repo / "run.sh").write_text("#!/bin/sh\n")
    (repo / "run.sh").chmod(0o755)
    before = checkout(repo)
    text = diff(repo)
    assert "GIT binary patch" in text and "new file mode 120000" in text
    assert '+++ "b/tab\\tand\\"quote"\n' in text and '+++ "b/space and\\ttab"\t\n' in text
    kept, cut = cut_outward_links(text, *before)
    assert cut == []
    assert kept == text
    applied(repo, kept, tmp_path)
    assert str((repo / "a" / "f").readlink()) == "../README"


def test_outward_links_are_cut_with_the_other_entries_of_their_path(repo: Path, tmp_path: Path) -> None:
    """A file the link replaced stays; a changed link keeps the checkout's target; the rest applies."""
    (repo / "README").write_text("hello\nworld\n")
    (repo / "abs").symlink_to("/etc/passwd")
    (repo / "a" / "f").unlink()
    (repo / "a" / "f").symlink_to("../../etc/passwd")  # a file became a link: two entries
    (repo / "old").unlink()
    (repo / "old").symlink_to("../x")
    (repo / "sub" / "x").symlink_to("up/../etc")  # out through the checkout's own `sub/up -> ..`
    (repo / "sub" / "in").symlink_to("up/README")
    text = diff(repo)
    kept, cut = cut_outward_links(text, *checkout(repo))
    assert sorted(cut) == [
        "a/f -> ../../etc/passwd (leads out of the repository)",
        "abs -> /etc/passwd (absolute)",
        "old -> ../x (leads out of the repository)",
        "sub/x -> up/../etc (leads out of the repository)",
    ]
    applied(repo, kept, tmp_path)
    assert (repo / "README").read_text() == "hello\nworld\n"
    assert (repo / "a" / "f").read_text() == "f\n" and not (repo / "a" / "f").is_symlink()
    assert str((repo / "old").readlink()) == "README"
    assert str((repo / "sub" / "in").readlink()) == "up/README"
    assert not (repo / "abs").is_symlink() and not (repo / "sub" / "x").is_symlink()


def test_links_through_what_the_checkout_does_not_hold_or_through_cut_links_are_cut(repo: Path) -> None:
    """`.venv` is not in the tree (ignored: on the host it may be a link anywhere); `hop` leads out only
    through `step`, which is cut first; a ring goes whole."""
    (repo / "tool").symlink_to(".venv/bin/python")
    (repo / "step").symlink_to("..")
    (repo / "hop").symlink_to("step/x")
    (repo / "r1").symlink_to("r2/..")
    (repo / "r2").symlink_to("r1/..")
    kept, cut = cut_outward_links(diff(repo), *checkout(repo))
    assert sorted(cut) == [
        "hop -> step/x (leads through a path the patch does not hold)",
        "r1 -> r2/.. (too many levels of links)",
        "r2 -> r1/.. (too many levels of links)",
        "step -> .. (leads out of the repository)",
        "tool -> .venv/bin/python (leads through a path the patch does not hold)",
    ]
    assert kept == ""


def test_a_link_in_a_binary_literal_is_read_and_judged(repo: Path, tmp_path: Path) -> None:
    """git writes a link as text, but `git apply` makes a link of a binary literal with mode 120000 too."""
    (repo / ".gitattributes").write_text("* binary\n")
    git(repo, "add", ".gitattributes")
    git(repo, "commit", "-qm", "attributes")
    (repo / "evil").write_text("/etc/passwd")
    (repo / "fine").write_text("README")
    text = diff(repo).replace("new file mode 100644", "new file mode 120000")
    assert text.count("GIT binary patch") == 2
    kept, cut = cut_outward_links(text, *checkout(repo))
    assert cut == ["evil -> /etc/passwd (absolute)"]
    applied(repo, kept, tmp_path)
    assert str((repo / "fine").readlink()) == "README" and not (repo / "evil").exists()


def test_a_link_whose_target_the_text_does_not_show_whole_is_cut(repo: Path, tmp_path: Path) -> None:
    """A changed link whose hunk does not start from the checkout's target, a file made a link by a mode
    line: `git apply` would fail on the first and write the second; the judgement cannot follow either."""
    (repo / "old").unlink()
    (repo / "old").symlink_to("a/f")
    text = diff(repo).replace("-README", "-elsewhere")
    assert cut_outward_links(text, *checkout(repo)) == ("", [f"old -> ? ({UNREADABLE})"])
    (repo / "README").write_text("/etc/passwd")
    text = diff(repo).replace(" 100644\n", "\n", 1)
    text = text.replace("index", "old mode 100644\nnew mode 120000\nindex", 1)
    assert "new mode 120000" in text
    assert cut_outward_links(text, *checkout(repo)) == ("", [f"README -> ? ({UNREADABLE})"])


def test_a_target_that_whitespace_fixing_would_turn_outward_is_cut(repo: Path) -> None:
    """`git apply --whitespace=fix` strips `a/../.. ` to `a/../..`: judged both ways."""
    (repo / "l").symlink_to("a/../.. ")
    _, cut = cut_outward_links(diff(repo), *checkout(repo))
    assert cut == ["l -> a/../..  (leads out of the repository)"]


NEW_LINK = (
    "diff --git a/x b/x\nnew file mode 120000\nindex 0000000..1234567\n--- /dev/null\n+++ b/x\n"
    "@@ -0,0 +1 @@\n+README\n\\ No newline at end of file\n"
)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("garbage\n" + NEW_LINK, "line 1 does not start an entry"),
        (NEW_LINK[:-1], "does not end with a line break"),
        # A traditional diff after the counted lines: `git apply` would read it as a patch of its own.
        (NEW_LINK + "--- a/old\n+++ b/old\n@@ -1 +1 @@\n-README\n+/etc\n", "line 9 does not start"),
        (NEW_LINK.replace("@@ -0,0 +1 @@", "@@ -0,0 +1,2 @@"), "ends inside a hunk"),
        (NEW_LINK.replace("+++ b/x", "+++ b/y"), "not the entry's"),
        (NEW_LINK.replace("diff --git a/x b/x", "diff --git a/x b/y"), "two names differ"),
        (NEW_LINK.replace("index", "rename from x\nindex"), "line 3 does not start"),
        (NEW_LINK + NEW_LINK, "more than one change of 'x'"),
        (NEW_LINK.replace("+README", "-README"), "not a line of its hunk"),
        # A count `int` would refuse (past 4300 digits) is no hunk header.
        (NEW_LINK.replace("@@ -0,0 +1 @@", "@@ -0,0 +1," + "9" * 5000 + " @@"), "names without a hunk"),
        (NEW_LINK.replace("index 0000000..1234567", "index 0000000..1234567 "), "line 3 does not start"),
        # Paths git never writes (it refuses them itself), but `patch -p1` would follow: a hook planted in
        # the user's .git, a file above the checkout.
        (
            NEW_LINK.replace(" x", " .git/hooks/post-checkout").replace("/x", "/.git/hooks/post-checkout"),
            "'.git'",
        ),
        (NEW_LINK.replace(" x", " sub/.GIT/config").replace("/x", "/sub/.GIT/config"), "'.GIT'"),
        (NEW_LINK.replace(" x", " ../x").replace("/x", "/../x"), "'..'"),
        (NEW_LINK.replace(" x", " a//x").replace("/x", "/a//x"), "an empty part"),
    ],
)
def test_a_text_not_in_gits_form_is_refused(text: str, where: str) -> None:
    with pytest.raises(PatchTextError, match=where):
        cut_outward_links(text, set(), {"old": "README"})


def link_entry(header: str, target: str, plus: str) -> str:
    """A new link: `header` is what follows `diff --git `, `plus` what follows `+++ `."""
    return (
        f"diff --git {header}\nnew file mode 120000\nindex 0000000..1234567\n--- /dev/null\n"
        f"+++ {plus}\n@@ -0,0 +1 @@\n+{target}\n\\ No newline at end of file\n"
    )


ODD_NAMES = [
    "back\\slash",
    "ctl\x01x",
    "del\x7fx",
    "bell\x07",
    "cr\rx",
    "vt\x0bx",
    "é acc",
    "nb\u00a0sp",
    "sp ace",
]


@pytest.mark.parametrize("quotepath", ["true", "false"])
def test_odd_names_as_git_writes_them_pass_whole(repo: Path, tmp_path: Path, quotepath: str) -> None:
    """Control bytes, a backslash, DEL, non-ASCII (escaped or raw, as core.quotepath says), blanks: each
    name as git quotes it (or not) passes, and the text applies."""
    for name in ODD_NAMES:
        (repo / name).write_text("x\n")
    (repo / "cr\rx").unlink()
    (repo / "cr\rx").symlink_to("README")
    git(repo, "add", "-A")
    text = git(
        repo, "-c", f"core.quotepath={quotepath}", "diff", "--cached", "--binary", "--no-renames", "HEAD"
    )
    git(repo, "reset", "-q", "--hard")
    git(repo, "clean", "-qfdx")
    assert '"b/cr\\rx"' in text and ("b/\\303\\251 acc" in text) == (quotepath == "true")
    kept, cut = cut_outward_links(text, *checkout(repo))
    assert (kept, cut) == (text, [])
    applied(repo, kept, tmp_path)
    assert sorted(p.name for p in repo.iterdir() if p.name in ODD_NAMES) == sorted(ODD_NAMES)


@pytest.mark.parametrize(
    "quoted",
    [
        # git reads the C string up to the NUL: `lnk`, a link at the root, where the parse saw one two
        # folders deep whose `../..` stays inside.
        r"lnk\000/a/x",
        r"\101bc",  # octal for a printable byte: git writes `A`
        r"a\011b",  # octal for a tab: git writes `\t`
        "a\tb",  # a raw tab inside the quotes: git writes `\t`
        "a\x01b",
        r"plain",  # quoted, though nothing in it needs it
        r"a\qb",
    ],
)
def test_a_quoted_name_git_would_not_write_is_refused(repo: Path, tmp_path: Path, quoted: str) -> None:
    name = f'"a/{quoted}" "b/{quoted}"'
    text = link_entry(name, "../..", plus=f'"b/{quoted}"')
    with pytest.raises(PatchTextError, match="quoted name"):
        cut_outward_links(text, *checkout(repo))


def test_a_link_named_with_a_nul_is_refused_where_git_apply_would_plant_it_at_the_root(
    repo: Path, tmp_path: Path
) -> None:
    """What the refusal prevents: the same entry without the NUL in the name is a link two folders deep
    that stays inside; with it, `git apply` plants `lnk -> ../..` at the root (out of the checkout)."""
    inside = link_entry('"a/lnk\\001/a/x" "b/lnk\\001/a/x"', "../..", plus='"b/lnk\\001/a/x"')
    assert cut_outward_links(inside, *checkout(repo)) == (inside, [])
    nul = inside.replace("\\001", "\\000")
    (tmp_path / "nul.diff").write_text(nul)
    git(repo, "apply", str(tmp_path / "nul.diff"))
    assert str((repo / "lnk").readlink()) == "../.."
    (repo / "lnk").unlink()
    with pytest.raises(PatchTextError, match="quoted name"):
        cut_outward_links(nul, *checkout(repo))


@pytest.mark.parametrize(
    "header",
    ['"a/x\\tb" b/x\tb', 'a/x\\tb "b/x\\tb"'],
)
def test_a_header_quoting_one_name_only_is_refused(header: str) -> None:
    text = link_entry(header, "README", '"b/x\\tb"')
    with pytest.raises(PatchTextError):
        cut_outward_links(text, set(), {})


def test_names_with_blanks_as_git_writes_them_are_read_alike_by_git_apply_and_patch(
    repo: Path, tmp_path: Path
) -> None:
    """git ends a `---`/`+++` name that holds a space with a tab; GNU `patch -p1` then reads the whole
    name, as `git apply` does: the same files and links land either way."""
    (repo / "lnk ").mkdir()
    (repo / "lnk " / "x").symlink_to("..")
    (repo / "two  spaces.txt").write_text("t\n")
    (repo / "a" / "f").write_text("f\nmore\n")
    text = diff(repo)
    assert "+++ b/lnk /x\t\n" in text
    assert cut_outward_links(text, *checkout(repo)) == (text, [])
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(repo), str(other))
    (tmp_path / "p.diff").write_text(text)
    subprocess.run(
        ["patch", "-p1", "--batch", "-i", str(tmp_path / "p.diff")], cwd=other, check=True, timeout=60
    )
    applied(repo, text, tmp_path)
    for checkout_ in (repo, other):
        assert str((checkout_ / "lnk " / "x").readlink()) == ".."
        assert (checkout_ / "two  spaces.txt").read_text() == "t\n"
        assert not (checkout_ / "lnk").exists()


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        # `patch -p1` ends a name at its first blank unless a tab follows: `lnk -> ..` at the root.
        (("/x\t\n", "/x\n"), "a name with a blank, without the tab"),
        (("/x\t\n", "/x \t\n"), "not the entry's"),  # `patch -p1` drops the blank: another name
        (("lnk /x", "lnk\x0b/x"), "which git quotes"),
        (("lnk /x", "lnk\x0c/x"), "which git quotes"),
        (("lnk /x", "lnk\r/x"), "which git quotes"),
    ],
)
def test_a_name_patch_would_read_otherwise_is_refused(
    repo: Path, tmp_path: Path, edit: tuple[str, str], where: str
) -> None:
    (repo / "lnk ").mkdir()
    (repo / "lnk " / "x").symlink_to("..")
    text = diff(repo)
    hostile = text.replace(*edit)
    assert hostile != text
    with pytest.raises(PatchTextError, match=where):
        cut_outward_links(hostile, *checkout(repo))


def test_a_tab_after_a_name_without_a_blank_is_refused(repo: Path) -> None:
    (repo / "new").write_text("n\n")
    text = diff(repo)
    with pytest.raises(PatchTextError, match="a tab after a name without a blank"):
        cut_outward_links(text.replace("+++ b/new\n", "+++ b/new\t\n"), *checkout(repo))


BLANK_WORDS = [
    "notes on .git internals.md",
    "range 1 .. 10.txt",
    "sub/.git x",
    "sub/.GIT\u00a0x/config",
    "x ../y",
    "x .  y",
]


def test_names_with_a_word_git_refuses_pass_whole_and_land_whole(repo: Path, tmp_path: Path) -> None:
    """A blank-separated word `.git` or `..` inside a name is no part of its path: git ends such a name
    with a tab on `---`/`+++`, and GNU `patch -p1` reads the whole of it there; an entry without those
    lines (an empty file) names the path only on its `diff --git` line, where `patch` finds no two
    names and skips the entry. Either way nothing lands under another name."""
    names = [*BLANK_WORDS, *(f"{name} empty" for name in BLANK_WORDS)]
    for name in names:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text("" if name.endswith(" empty") else "x\n")
    text = diff(repo)
    assert "diff --git a/x ../y empty b/x ../y empty\nnew file mode 100644\nindex" in text
    assert cut_outward_links(text, *checkout(repo)) == (text, [])
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(repo), str(other))
    gnu_patch(other, text, tmp_path)
    landed = {str(p.relative_to(other)) for p in other.rglob("*") if ".git" not in p.relative_to(other).parts}
    landed = {p for p in landed if not (other / p).is_dir() or (other / p).is_symlink()}
    assert set(BLANK_WORDS) <= landed <= set(names) | {"README", "a/f", "sub/up", "bin.dat", "old"}
    applied(repo, text, tmp_path)
    assert all((repo / name).exists() for name in names)


def test_a_name_that_ends_in_a_blank_is_cut_where_patch_would_write_another_file(
    repo: Path, tmp_path: Path
) -> None:
    """GNU `patch -p1` reads `b/draft \t` as `draft` (and `diff --git a/e  b/e ` as `e`): another file.
    Those entries are cut and named; the rest of the work applies."""
    (repo / "README").write_text("hello\nworld\n")
    (repo / "draft ").write_text("d\n")
    (repo / "empty ").write_text("")
    (repo / "lnk ").mkdir()
    (repo / "lnk " / "x").write_text("in a folder that ends in a blank: read whole\n")
    text = diff(repo)
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(repo), str(other))
    gnu_patch(other, text, tmp_path)  # what the cut prevents
    assert (other / "draft").read_text() == "d\n" and (other / "empty").exists()
    kept, cut = cut_outward_links(text, *checkout(repo))
    why = "a name that ends in a blank, which `patch -p1` reads without it"
    assert cut == [f"draft  ({why})", f"empty  ({why})"]
    applied(repo, kept, tmp_path)
    assert (repo / "README").read_text() == "hello\nworld\n"
    assert (repo / "lnk " / "x").exists()
    assert not any((repo / name).exists() for name in ("draft ", "draft", "empty ", "empty"))


def test_an_entry_that_needs_a_cut_one_is_cut_with_it_and_the_rest_applies_whole(
    repo: Path, tmp_path: Path
) -> None:
    """The file `notes ` made a folder and the folder `drafts` (holding `x `) made a file: git writes each
    as a deletion and additions. Only the blank-ended names were cut, so `git apply` of the rest passed its
    check, then failed while writing ("Not a directory", "Directory not empty") after it had rewritten
    README: a half-patched checkout. The entries that need a cut one are cut with it, and named."""
    (repo / "notes ").write_text("old notes\n")
    (repo / "drafts").mkdir()
    (repo / "drafts" / "x ").write_text("x\n")
    (repo / "drafts" / "keep").write_text("k\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "notes and drafts")
    (repo / "README").write_text("hello\nworld\n")
    (repo / "notes ").unlink()
    (repo / "notes ").mkdir()
    (repo / "notes " / "todo.md").write_text("t\n")
    (repo / "notes " / "done.md").write_text("d\n")
    shutil.rmtree(repo / "drafts")
    (repo / "drafts").write_text("now a file\n")
    text = diff(repo)
    kept, cut = cut_outward_links(text, *checkout(repo))
    applied(repo, kept, tmp_path)  # whole, or `git apply` fails: never half
    why = "a name that ends in a blank, which `patch -p1` reads without it"
    assert cut == [
        f"drafts/x  ({why})",
        f"notes  ({why})",
        "drafts (needs 'drafts/x ', which was left out)",
        "drafts/keep (needs 'drafts', which was left out)",
        "notes /done.md (needs 'notes ', which was left out)",
        "notes /todo.md (needs 'notes ', which was left out)",
    ]
    assert (repo / "README").read_text() == "hello\nworld\n"
    assert (repo / "notes ").read_text() == "old notes\n"
    assert (repo / "drafts" / "x ").read_text() == "x\n" and (repo / "drafts" / "keep").read_text() == "k\n"


def test_a_link_that_ends_in_a_blank_made_a_folder_is_cut_with_the_folder_not_refused(
    repo: Path, tmp_path: Path
) -> None:
    """The link `notes  -> README` made a folder: its deletion is cut (`BLANK_END`), so the folder's files
    would be written through the link the checkout still holds. Those are cut and named, as for a file
    made a folder, where the whole text was refused."""
    (repo / "notes ").symlink_to("README")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "notes link")
    (repo / "README").write_text("hello\nworld\n")
    (repo / "notes ").unlink()
    (repo / "notes ").mkdir()
    (repo / "notes " / "todo.md").write_text("t\n")
    text = diff(repo)
    kept, cut = cut_outward_links(text, *checkout(repo))
    why = "a name that ends in a blank, which `patch -p1` reads without it"
    assert cut == [f"notes  ({why})", "notes /todo.md (needs 'notes ', which was left out)"]
    applied(repo, kept, tmp_path)
    assert (repo / "README").read_text() == "hello\nworld\n"
    assert str((repo / "notes ").readlink()) == "README"


def test_links_are_judged_again_once_a_deletion_they_relied_on_is_cut(repo: Path, tmp_path: Path) -> None:
    """The checkout's own link `sub/up -> ..` made a folder holding `evil -> /etc`, and `top -> sub/up/..`
    beside it: inside while `sub/up` is a folder. The outward link is cut, and with it the rest of that
    folder (the link's deletion among them): `sub/up` stays the link to `..`, through which `top` leads
    out, so `top` is judged again and cut too."""
    (repo / "sub" / "up").unlink()
    (repo / "sub" / "up").mkdir()
    (repo / "sub" / "up" / "evil").symlink_to("/etc")
    (repo / "sub" / "up" / "ok.txt").write_text("ok\n")
    (repo / "top").symlink_to("sub/up/..")
    (repo / "README").write_text("hello\nworld\n")
    text = diff(repo)
    kept, cut = cut_outward_links(text, *checkout(repo))
    assert cut == [
        "sub/up/evil -> /etc (absolute)",
        "sub/up (needs 'sub/up/evil', which was left out)",
        "sub/up/ok.txt (needs 'sub/up', which was left out)",
        "top -> sub/up/.. (leads out of the repository)",
    ]
    applied(repo, kept, tmp_path)
    assert (repo / "README").read_text() == "hello\nworld\n"
    assert str((repo / "sub" / "up").readlink()) == ".." and not (repo / "top").is_symlink()


def test_cuts_that_keep_calling_for_more_are_refused_past_a_bound(tmp_path: Path) -> None:
    """The checkout's links `l0`...`ln -> ..`, each made a folder holding `a`, which leads out through the
    one before once that one's deletion is cut (`l0/a -> /etc` first): each pass cuts one more. A chain
    that settles within `MAX_PASSES` is cut whole and applies; a longer one is refused whole."""
    from qwq_agent.agent.patch_text import MAX_PASSES

    for n, settles in ((MAX_PASSES - 1, True), (MAX_PASSES, False)):
        repo = make_repo(tmp_path / f"chain{n}")
        for i in range(n):
            (repo / f"l{i}").symlink_to("..")
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "links")
        for i in range(n):
            (repo / f"l{i}").unlink()
            (repo / f"l{i}").mkdir()
            (repo / f"l{i}" / "a").symlink_to(f"../l{i - 1}/.." if i else "/etc")
        text = diff(repo)
        if not settles:
            with pytest.raises(PatchTextError, match=f"after {MAX_PASSES} passes"):
                cut_outward_links(text, *checkout(repo))
            continue
        kept, cut = cut_outward_links(text, *checkout(repo))
        assert kept == "" and len(cut) == 2 * n
        assert f"l{n - 1}/a -> ../l{n - 2}/.. (leads out of the repository)" in cut


def plant_git_dir(folder: Path, mark: Path) -> None:
    """Plain files that make `folder` a git directory whose work tree is its parent and whose
    `core.fsmonitor` runs `touch mark` at the next `git status` there."""
    files = {
        "HEAD": "ref: refs/heads/main\n",
        "config": f'[core]\n\trepositoryformatversion = 0\n\tbare = false\n\tworktree = ..\n\tfsmonitor = "touch {mark}; false"\n',
        "objects/info/keep": "x\n",
        "refs/heads/keep": "x\n",
    }
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(content)


def test_files_git_would_run_commands_from_in_a_planted_git_directory_are_cut(
    repo: Path, tmp_path: Path
) -> None:
    """An agent can write a git directory as plain files; `git apply` (or `patch -p1`) would write them,
    and `git status` there would run its `core.fsmonitor` on the host. Its config, hooks and rebase
    state are cut and named; the rest of it, and a `config` in a folder that is no git directory, stay."""
    mark = tmp_path / "PWNED"
    plant_git_dir(repo / "tools", mark)
    (repo / "tools" / "hooks").mkdir()
    (repo / "tools" / "hooks" / "pre-commit").write_text(f"touch {mark}\n")
    (repo / "tools" / "config.worktree").write_text("[core]\n\tpager = touch\n")
    (repo / "tools" / "rebase-merge").mkdir()
    (repo / "tools" / "rebase-merge" / "git-rebase-todo").write_text(f"exec touch {mark}\n")
    (repo / "app").mkdir()
    (repo / "app" / "config").write_text("debug = true\n")
    text = diff(repo)
    kept, cut = cut_outward_links(text, *checkout(repo))
    why = "(git would run commands from it)"
    assert sorted(cut) == [
        f"tools/config {why}",
        f"tools/config.worktree {why}",
        f"tools/hooks/pre-commit {why}",
        f"tools/rebase-merge/git-rebase-todo {why}",
    ]
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(repo), str(other))
    (tmp_path / "kept.diff").write_text(kept)
    subprocess.run(
        ["patch", "-p1", "--batch", "-i", str(tmp_path / "kept.diff")], cwd=other, check=True, timeout=60
    )
    applied(repo, kept, tmp_path)
    for checkout_ in (repo, other):
        assert (checkout_ / "app" / "config").read_text() == "debug = true\n"
        assert (checkout_ / "tools" / "HEAD").exists() and not (checkout_ / "tools" / "config").exists()
        assert (
            not (checkout_ / "tools" / "hooks").exists()
            and not (checkout_ / "tools" / "rebase-merge").exists()
        )
        subprocess.run(["git", "status"], cwd=checkout_ / "tools", capture_output=True, timeout=60)
    assert not mark.exists()


def test_old_style_remote_files_in_a_planted_git_directory_are_cut(repo: Path, tmp_path: Path) -> None:
    """`remotes/<name>` and `branches/<name>` in a git directory are remotes to git when its config lacks
    them, their push refspecs unchecked (`Push: :refs/heads/main` deletes the branch at a plain `git push`
    there): cut and named; a project's own `remotes/` folder, in no git directory, stays."""
    plant_git_dir(repo / "tools", tmp_path / "PWNED")
    (repo / "tools" / "config").unlink()
    for name, text in (
        ("remotes/origin", "URL: /up.git\nPush: :refs/heads/main\n"),
        ("branches/up", "/up\n"),
    ):
        (repo / "tools" / name).parent.mkdir()
        (repo / "tools" / name).write_text(text)
    (repo / "app" / "remotes").mkdir(parents=True)
    (repo / "app" / "remotes" / "origin").write_text("not git's\n")
    kept, cut = cut_outward_links(diff(repo), *checkout(repo))
    why = "(git would take it for a remote, its push refspec unchecked)"
    assert sorted(cut) == [f"tools/branches/up {why}", f"tools/remotes/origin {why}"]
    applied(repo, kept, tmp_path)
    assert (repo / "app" / "remotes" / "origin").exists() and (repo / "tools" / "HEAD").exists()
    assert not (repo / "tools" / "remotes").exists() and not (repo / "tools" / "branches").exists()


def test_a_git_directory_is_told_by_what_the_checkout_already_holds_and_in_any_case(
    repo: Path, tmp_path: Path
) -> None:
    """The checkout already holds the repository's `objects` and `refs`: the patch adds only its config.
    On a case-insensitive disk `OBJECTS` and `Config` are git's `objects` and `config`."""
    mark = tmp_path / "PWNED"
    plant_git_dir(repo / "vendor.git", mark)
    (repo / "vendor.git" / "config").unlink()
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "a bare repository as a fixture")
    plant_git_dir(repo / "vendor.git", mark)
    (repo / "cache" / "OBJECTS").mkdir(parents=True)
    (repo / "cache" / "OBJECTS" / "keep").write_text("x\n")
    (repo / "cache" / "Config").write_text("[core]\n")
    kept, cut = cut_outward_links(diff(repo), *checkout(repo))
    assert sorted(cut) == [
        "cache/Config (git would run commands from it)",
        "vendor.git/config (git would run commands from it)",
    ]
    assert "cache/OBJECTS/keep" in kept


def new_link(name: str, target: str) -> str:
    return (
        f"diff --git a/{name} b/{name}\nnew file mode 120000\nindex 0000000..1234567\n--- /dev/null\n"
        f"+++ b/{name}\n@@ -0,0 +1 @@\n+{target}\n\\ No newline at end of file\n"
    )


def judged_in(seconds: float, text: str, dirs: set[str], links: dict[str, str]) -> tuple[str, list[str]]:
    """`cut_outward_links` of `text`, failing when it takes longer than `seconds` of this process's CPU
    (a bound on runaway work, not a measurement: other tenants of the cores do not count), or raising
    its error."""
    start = time.process_time()
    try:
        return cut_outward_links(text, dirs, links)
    finally:
        took = time.process_time() - start
        assert took < seconds, f"{len(text)} bytes judged in {took:.1f} s"


def test_a_chain_of_links_that_leads_out_is_cut_whole_in_a_moment(repo: Path) -> None:
    """`l0 -> l1/x`, ..., `l1000 -> /etc`: each leads out only through the next, so rounds that cut one
    link each (re-following every chain each time) took 24 s for this, on the event loop."""
    n = 1000
    text = "".join(new_link(f"l{i}", f"l{i + 1}/x") for i in range(n)) + new_link(f"l{n}", "/etc")
    kept, cut = judged_in(3.0, text, *checkout(repo))
    assert kept == "" and len(cut) == n + 1
    assert f"l{n} -> /etc (absolute)" in cut and "l0 -> l1/x (too many levels of links)" in cut


def test_a_patch_with_more_links_than_a_real_one_holds_is_refused_whole(repo: Path) -> None:
    from qwq_agent.agent.patch_text import MAX_LINKS

    text = "".join(new_link(f"l{i}", "README") for i in range(MAX_LINKS + 1))
    with pytest.raises(PatchTextError, match=f"more than {MAX_LINKS} links"):
        judged_in(3.0, text, *checkout(repo))
    inside = "".join(new_link(f"l{i}", "README") for i in range(MAX_LINKS))
    assert judged_in(3.0, inside, *checkout(repo)) == (inside, [])


def deep_paths() -> str:
    """Entries 2000 folders deep (4 KB paths, as deep as a path goes), each path its own: every prefix
    is a folder no other entry shares."""
    deep = "/".join(["d"] * 2000)
    entry = (
        "diff --git a/{p} b/{p}\nnew file mode 100644\nindex 0000000..1234567\n--- /dev/null\n"
        "+++ b/{p}\n@@ -0,0 +1 @@\n+x\n"
    )
    return "".join(entry.format(p=f"e{i}/{deep}/f") for i in range(200))


def far_walks() -> str:
    """1900 links, each walking 800 folders down and up again through 41 links (4 KB targets)."""
    down, up = "/".join(["d"] * 800), "/".join([".."] * 800)
    text = new_link(f"{down}/f", "x") + "".join(new_link(f"h{i}", f"{down}/{up}/h{i + 1}") for i in range(40))
    return (
        text + new_link("h40", "README") + "".join(new_link(f"w{i}", f"{down}/{up}/h0") for i in range(1900))
    )


def bomb() -> str:
    """A link whose binary literal inflates to 256 MiB from 250 KB."""
    import base64
    import zlib

    packer = zlib.compressobj(6)
    data = b"".join(packer.compress(b"\0" * (64 << 20)) for _ in range(4)) + packer.flush()
    lines = []
    for at in range(0, len(data), 52):
        piece = data[at : at + 52]
        size = chr(ord("A") + len(piece) - 1) if len(piece) <= 26 else chr(ord("a") + len(piece) - 27)
        lines.append(size + base64.b85encode(piece + b"\0" * (-len(piece) % 4)).decode())
    return (
        "diff --git a/b b/b\nnew file mode 120000\nindex 0000000..1234567\nGIT binary patch\n"
        f"literal {256 << 20}\n" + "\n".join(lines) + "\n\nliteral 0\nHcmV?d00001\n\n"
    )


def test_a_text_as_deep_as_paths_go_is_judged_in_a_moment(repo: Path) -> None:
    """The folders the patch fills were built as strings, every prefix of every path: quadratic."""
    text = deep_paths()
    assert judged_in(3.0, text, *checkout(repo)) == (text, [])


def test_names_of_long_runs_of_blanks_and_dots_are_judged_in_a_moment(repo: Path) -> None:
    """Folding a path (a name's trailing dots and blanks dropped) took a regular expression that tried,
    at each blank or dot of a run, every longer stretch of it: 10 s for these 2 MB, days for 32 MiB."""
    path = "/".join(["x" + " " * 250 + "y", "z" + "." * 250 + "w"] * 4)
    entry = "diff --git a/{p} b/{p}\nnew file mode 100644\nindex 0000000..e69de29\n"
    text = "".join(entry.format(p=f"e{i}/{path}") for i in range(500))
    assert judged_in(3.0, text, *checkout(repo)) == (text, [])


def test_a_name_longer_than_any_disk_takes_is_refused_in_a_moment(repo: Path) -> None:
    """No file system takes a name past 255 bytes: the text is refused before anything folds it."""
    name = "x" + " " * 20000 + "y"
    text = f"diff --git a/{name} b/{name}\nnew file mode 100644\nindex 0000000..e69de29\n"
    with pytest.raises(PatchTextError, match="longer than 255 bytes"):
        judged_in(1.0, text, *checkout(repo))
    fits = "\u00e9" * 127  # 254 bytes
    assert cut_outward_links(text.replace(name, fits), set(), {})[1] == []
    with pytest.raises(PatchTextError, match="longer than 255 bytes"):
        cut_outward_links(text.replace(name, fits + "\u00e9"), set(), {})


def test_links_that_walk_too_far_are_refused_within_a_bound(repo: Path) -> None:
    """Following each link costs its walk: past a bound on all of them together, the text is refused."""
    with pytest.raises(PatchTextError, match="too long to follow"):
        judged_in(4.0, far_walks(), *checkout(repo))


def test_a_link_whose_literal_inflates_without_end_is_cut_without_inflating_it(repo: Path) -> None:
    import tracemalloc

    text = bomb()
    tracemalloc.start()
    try:
        kept, cut = judged_in(3.0, text, *checkout(repo))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (kept, cut) == ("", [f"b -> ? ({UNREADABLE})"])
    assert peak < 64 << 20


def gnu_patch(repo: Path, text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """GNU `patch -p1` of `text` in `repo`, as a user who reads the README might apply it."""
    (tmp_path / "gnu.diff").write_text(text)
    return subprocess.run(
        ["patch", "-p1", "--batch", "-i", str(tmp_path / "gnu.diff")],
        cwd=repo, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def leads_out(repo: Path, link: str) -> bool:
    path = repo / link
    return path.is_symlink() and not path.resolve().is_relative_to(repo.resolve())


RETARGET = (
    "diff --git a/.venv/lib64 b/.venv/lib64\n{headers}--- a/.venv/lib64\n+++ b/.venv/lib64\n"
    "@@ -1 +1 @@\n-lib\n\\ No newline at end of file\n+../..\n\\ No newline at end of file\n"
)


def test_an_entry_that_does_not_state_its_mode_is_refused(tmp_path: Path) -> None:
    """An ignored link (`.venv/lib64 -> lib`, as every venv has) is in no baseline: an entry with no mode
    line took it for a file, but `git apply` takes the missing mode from the disk and retargets the link
    out of the checkout. git always states the mode an entry leaves, so one that does not is refused."""
    text = RETARGET.format(headers="")
    for apply in ("git", "check"):
        repo = tmp_path / apply
        repo.mkdir()
        git(repo, "init", "-q")
        (repo / ".gitignore").write_text(".venv/\n")
        (repo / ".venv" / "lib").mkdir(parents=True)
        (repo / ".venv" / "lib64").symlink_to("lib")
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "init")
        if apply == "git":  # what the refusal prevents
            applied(repo, text, tmp_path)
            assert leads_out(repo, ".venv/lib64")
            continue
        with pytest.raises(PatchTextError, match="does not state the mode"):
            cut_outward_links(text, *checkout(repo))


@pytest.mark.parametrize(
    ("headers", "apply"),
    [
        # git and patch take the last mode line: a link, where the first said a file.
        ("new file mode 100644\nnew mode 120000\n", "git"),
        ("new file mode 100644\nnew mode 120000\n", "patch"),
        # GNU patch takes the index line's mode.
        ("new file mode 100644\nindex 0000000..1111111 120000\n", "patch"),
        # git reads the index line's mode as the old one, overridden by `old mode`: no new mode, so the
        # link the checkout holds stays a link, retargeted.
        ("index 1111111..2222222 100644\nold mode 120000\n", "git"),
        ("old mode 120000\n", "patch"),  # no new mode: patch keeps the link's type
        ("new mode 100644\nold mode 100755\n", None),
        ("new mode 100644\n", None),
        ("deleted file mode 100644\nnew file mode 100644\n", None),
        ("index 1111111..2222222 100644\nnew mode 100755\n", None),
    ],
)
def test_mode_headers_git_does_not_write_are_refused(
    repo: Path, tmp_path: Path, headers: str, apply: str | None
) -> None:
    """Only git's own combinations pass: `old mode` then `new mode`, `new file mode` or `deleted file mode`
    alone (each then an index line without a mode), or an index line with the mode alone."""
    if "new file mode" in headers:
        text = link_entry("a/x b/x", "..", "b/x").replace(
            "new file mode 120000\nindex 0000000..1234567\n", headers
        )
        link = "x"
    else:
        text = RETARGET.replace(".venv/lib64", "old").replace("lib", "README").format(headers=headers)
        text = text.replace("+../..", "+..")
        link = "old"
    if apply is not None:  # what the refusal prevents
        other = tmp_path / "other"
        git(tmp_path, "clone", "-q", str(repo), str(other))
        if apply == "git":
            applied(other, text, tmp_path)
        else:
            gnu_patch(other, text, tmp_path)
        assert leads_out(other, link)
    with pytest.raises(PatchTextError, match="mode"):
        cut_outward_links(text, *checkout(repo))


def new_file(path: str, lines: list[str], mode: str = "100755") -> str:
    body = "".join(f"+{line}\n" for line in lines)
    return (
        f"diff --git a/{path} b/{path}\nnew file mode {mode}\nindex 0000000..1234567\n--- /dev/null\n"
        f"+++ b/{path}\n@@ -0,0 +1,{len(lines)} @@\n{body}"
    )


def through_links(repo: Path, tmp_path: Path) -> dict[str, tuple[str, Path]]:
    """Texts that write through a link, and what GNU `patch -p1` plants with each: `git apply` refuses
    each whole (beyond a symbolic link), but `patch -p1` follows the link, and goes on past an entry it
    cannot apply."""
    mark, outside = tmp_path / "PWNED", tmp_path / "outside"
    config = ["[core]", "\trepositoryformatversion = 0", "\tbare = false", "\tworktree = ..",
              f'\tfsmonitor = "touch {mark}; false"']  # fmt: skip
    outside.mkdir()
    (repo / "tools").mkdir()
    (repo / "tools" / "README").write_text("t\n")
    (repo / "lnk").symlink_to("tools")  # the user's own
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "tools")
    git_dir = (
        new_file("tools/HEAD", ["ref: refs/heads/main"])
        + new_file("tools/objects/info/packs", [""])
        + new_file("tools/refs/heads/keep", [""])
    )
    return {
        # A git directory in tools/, its config written through the patch's own inward link x -> tools.
        "config": (git_dir + new_link("x", "tools") + new_file("x/config", config), mark),
        # The user's own .git, through a link to it.
        "hook": (
            new_link("x", ".git") + new_file("x/hooks/pre-commit", ["#!/bin/sh", f"touch {mark}"]),
            mark,
        ),
        # `d/file` makes d a folder for patch -p1, which then skips the link d and keeps x -> d/../..
        "skipped": (
            new_file("d/file", ["x"])
            + new_file("sub/deep/k", ["k"])
            + new_link("d", "sub/deep")
            + new_link("x", "d/../.."),
            outside / "secret",
        ),
        # The same through the checkout's own link (the patch makes none).
        "held": (git_dir + new_file("lnk/config", config), mark),
    }


@pytest.mark.parametrize("name", ["config", "hook", "skipped", "held"])
def test_a_path_through_a_link_is_refused(repo: Path, tmp_path: Path, name: str) -> None:
    text, planted = through_links(repo, tmp_path)[name]
    (tmp_path / "outside" / "secret").write_text("host secret\n")
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(repo), str(other))
    with pytest.raises(subprocess.CalledProcessError):
        applied(other, text, tmp_path)  # git refuses it whole: refusing it too loses nothing
    gnu_patch(other, text, tmp_path)  # what the refusal prevents
    subprocess.run(["git", "status"], cwd=other / "tools", capture_output=True, timeout=60)
    (other / "README").write_text("edited\n")
    git(other, "commit", "-qam", "the user's next commit")
    assert planted.exists() and (name != "skipped" or (other / "x" / "outside" / "secret").exists())
    with pytest.raises(PatchTextError, match=r"through a link|as a folder"):
        cut_outward_links(text, *checkout(repo))


@pytest.mark.parametrize(
    "target", [".git", "a/../.git/hooks", ".GIT.", "sub/git~1", ".g\u200cit/x", ".git x"]
)
def test_a_link_into_a_git_directory_is_cut(repo: Path, target: str) -> None:
    """The checkout's own .git is in no baseline: a link to it ended as a dangling name inside."""
    text = new_link("x", target) + new_link("y", "README")
    kept, cut = cut_outward_links(text, *checkout(repo))
    assert cut == [f"x -> {target} (leads into a git directory)"]
    assert kept == new_link("y", "README")


def test_a_folder_made_a_file_and_a_file_made_a_folder_pass_whole(repo: Path, tmp_path: Path) -> None:
    """git writes a folder made a file as the new file and the deletions under it: no path runs through a
    link, and the text applies. (`patch -p1` skips the new file `a`, a folder still: not atomic.)"""
    (repo / "a" / "f").unlink()
    (repo / "a").rmdir()
    (repo / "a").write_text("now a file\n")
    (repo / "README").unlink()
    (repo / "README").mkdir()
    (repo / "README" / "x").write_text("now a folder\n")
    text = diff(repo)
    assert cut_outward_links(text, *checkout(repo)) == (text, [])
    applied(repo, text, tmp_path)
    assert (repo / "a").read_text() == "now a file\n"
    assert (repo / "README" / "x").read_text() == "now a folder\n"


def test_a_link_replaced_by_a_folder_passes_whole(repo: Path, tmp_path: Path) -> None:
    """git writes a link made a folder as the link's deletion and the files under it: the deleted link
    is gone before they are written (`git apply` applies the text whole; GNU patch 2.7 removes the link,
    then skips files under a link it touched), so no path runs through it."""
    (repo / "vendor").symlink_to("a")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "vendor link")
    (repo / "vendor").unlink()
    (repo / "vendor").mkdir()
    (repo / "vendor" / "f").write_text("vendored\n")
    (repo / "old").unlink()  # `old -> README`: a file link made a folder
    (repo / "old").mkdir()
    (repo / "old" / "todo.md").write_text("t\n")
    text = diff(repo)
    assert "deleted file mode 120000" in text and "+++ b/vendor/f" in text
    assert cut_outward_links(text, *checkout(repo)) == (text, [])
    applied(repo, text, tmp_path)
    assert (repo / "vendor" / "f").read_text() == "vendored\n" and not (repo / "vendor").is_symlink()
    assert (repo / "old" / "todo.md").read_text() == "t\n"
    assert (repo / "a" / "f").read_text() == "f\n"


def test_a_link_deleted_otherwise_than_the_checkout_holds_it_is_still_a_link_to_go_through(
    repo: Path,
) -> None:
    """A deletion whose hunk does not hold the checkout's target does not apply: the link stays, and the
    files after it would be written through it."""
    (repo / "old").unlink()
    (repo / "old").mkdir()
    (repo / "old" / "x").write_text("x\n")
    text = diff(repo)
    for hostile in (
        text.replace("-README", "-elsewhere"),
        text.replace("deleted file mode 120000", "deleted file mode 100644"),
    ):
        assert hostile != text
        with pytest.raises(PatchTextError, match="runs through a link the checkout holds, 'old'"):
            cut_outward_links(hostile, *checkout(repo))


def test_a_folder_beside_a_link_that_differs_in_case_or_trailing_dots_passes_whole(
    repo: Path, tmp_path: Path
) -> None:
    """The checkout holds both `docs` and `Docs -> docs` (`build.` and `build -> build.`): its disk tells
    them apart, so an edit in the folder runs through no link there."""
    (repo / "docs").mkdir()
    (repo / "docs" / "guide.md").write_text("guide\n")
    (repo / "Docs").symlink_to("docs")
    (repo / "build.").mkdir()
    (repo / "build." / "x").write_text("x\n")
    (repo / "build").symlink_to("build.")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "compatibility links")
    (repo / "docs" / "guide.md").write_text("guide, fixed\n")
    (repo / "build." / "x").write_text("y\n")
    (repo / "docs" / "new.md").write_text("new\n")
    text = diff(repo)
    assert cut_outward_links(text, *checkout(repo)) == (text, [])
    applied(repo, text, tmp_path)
    assert (repo / "docs" / "guide.md").read_text() == "guide, fixed\n"
    assert (repo / "build." / "x").read_text() == "y\n"


def test_a_path_through_a_link_only_where_a_disk_ignores_case_is_cut_not_refused(
    repo: Path, tmp_path: Path
) -> None:
    """`lnk/new` beside the checkout's `Lnk -> a`, `notes/x` beside the text's own file `Notes`: on a
    disk that ignores case (the user's, maybe) each runs through the other, which `patch -p1` follows;
    on this one they are apart. Those entries are cut and named; the rest of the work applies."""
    (repo / "Lnk").symlink_to("a")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "link")
    (repo / "README").write_text("hello\nworld\n")
    (repo / "lnk").mkdir()
    (repo / "lnk" / "new").write_text("n\n")
    (repo / "Notes").write_text("N\n")
    (repo / "notes").mkdir()
    (repo / "notes" / "x").write_text("x\n")
    text = diff(repo)
    kept, cut = cut_outward_links(text, *checkout(repo))
    assert cut == [
        "lnk/new (on a disk that ignores case or a name's trailing dots, a path through 'Lnk')",
        "notes/x (on a disk that ignores case or a name's trailing dots, a path through 'Notes')",
    ]
    applied(repo, kept, tmp_path)
    assert (repo / "README").read_text() == "hello\nworld\n" and (repo / "Notes").read_text() == "N\n"
    assert not (repo / "lnk").exists() and not (repo / "notes").exists()
