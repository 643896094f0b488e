"""Protected paths of a `tests:` check: the globs, and a patch less its entries for them.

Real git on the host makes the patch (as the sandbox does: `--binary --no-renames`) and applies what is
kept, so the split is checked against what git writes and what it does with the result.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from git_repo import git

from qwq_agent.agent.protected import DEFAULT_PROTECTED, PatternError, matcher, split_patch, through_links
from qwq_agent.agent.selection import SelectionError, Verifier, parse_select


@pytest.mark.parametrize(
    "path",
    [
        "tests/test_stats.py",
        "tests/__init__.py",
        "pkg/tests/data/x.json",
        "src/test/java/AppTest.java",
        "spec/models/user_spec.rb",
        "web/__tests__/app.js",
        "test_cli.py",
        "pkg/test_cli.py",
        "server/handler_test.go",
        "lib/stats_test.py",
        "web/app.test.ts",
        "web/app.spec.js",
        "conftest.py",
        "pkg/sub/conftest.py",
    ],
)
def test_the_default_protects_the_usual_places_of_tests(path):
    assert matcher(DEFAULT_PROTECTED)(path)


@pytest.mark.parametrize(
    "path",
    ["textstats/stats.py", "latest.py", "testing/helpers.py", "contests/x.py", "src/testdata.py", "README"],
)
def test_the_default_leaves_the_code_alone(path):
    assert not matcher(DEFAULT_PROTECTED)(path)


def test_globs_read_as_in_gitignore():
    anchored, folder, name, klass = (matcher([p]) for p in ("/a/[!b]c*", "x/", "d?.py", "[]]z"))
    assert anchored("a/xc.py") and not anchored("a/bc") and not anchored("b/a/xc")
    assert folder("x/y/z") and folder("x/y") and not folder("xy/z")
    assert name("dd.py") and name("q/da.py") and not name("d/a.py")  # no `/` in it: any depth
    assert klass("]z") and klass("s/]z")
    assert matcher(["src/*.py"])("src/a.py") and not matcher(["src/*.py"])("src/b/a.py")
    assert matcher(["src/**/*.py"])("src/a.py") and matcher(["src/**/*.py"])("src/b/c/a.py")
    assert not matcher([])("tests/x.py")
    for bad, why in [
        ("", "an empty pattern"),
        ("a//b", "an empty folder name"),
        ("a/[b", "an unclosed"),
        ("#x", "a comment"),
        ("!", "an empty pattern"),
        ("[[:alpha:]]", "a character class"),
    ]:
        with pytest.raises(PatternError, match=why):
            matcher([bad])


def git_ignores(repo: Path, lines: list[str], paths: list[str]) -> set[str]:
    """The paths git's `check-ignore` says a top-level `.gitignore` of `lines` covers (none exist on
    disk: each is a file, the folders above it folders, as a patch's entries are)."""
    (repo / ".gitignore").write_text("".join(line + "\n" for line in lines))
    done = subprocess.run(
        ["git", "-C", str(repo), "check-ignore", "--no-index", "-z", "--stdin"],
        input="".join(p + "\0" for p in paths), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    return set(filter(None, done.stdout.split("\0")))


@pytest.mark.parametrize(
    "pattern, path",
    [
        ("e2e", "e2e/login_check.py"),
        ("/tests", "tests/unit/test_calc.py"),
        ("src/checks", "src/checks/check_api.py"),
        ("**/tests", "pkg/tests/test_io.py"),
        ("tests/", "src/tests/test_a.py"),
        ("tests/unit", "tests/unit/a.py"),
        ("**/a", "a/c"),
    ],
)
def test_a_folders_pattern_protects_everything_under_it(tmp_path, pattern, path):
    git(tmp_path, "init", "-q")
    assert git_ignores(tmp_path, [pattern], [path]) == {path}
    assert matcher([pattern])(path)


def test_globs_agree_with_git_check_ignore(tmp_path):
    """Generated `.gitignore`s (negations, anchors, folders only, `**`, sets) against generated paths:
    what git ignores is exactly what is protected."""
    git(tmp_path, "init", "-q")
    names = ["a", "b", "tests", "x.py", "ab"]
    paths = ["/".join(p) for depth in (1, 2, 3) for p in itertools.product(names, repeat=depth)]
    pieces = ["a", "b", "tests", "x.py", "*", "?", "a*", "*.py", "[ab]", "[!a]", "**", "t?sts", "a?"]
    rng = random.Random(20240611)
    differences = []
    for _ in range(250):
        lines = []
        for _ in range(rng.choice((1, 1, 2, 3))):
            body = "/".join(rng.choice(pieces) for _ in range(rng.choice((1, 1, 2, 3))))
            line = rng.choice(("", "", "", "/", "!")) + body + rng.choice(("", "", "/"))
            lines.append(line)
        protected = matcher(lines)
        ignored = git_ignores(tmp_path, lines, paths)
        differences += [(lines, p, p in ignored) for p in paths if protected(p) != (p in ignored)]
    assert differences == [], differences[:10]


def test_a_patch_less_its_protected_entries_applies_and_leaves_the_tests_as_they_were(tmp_path):
    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True)
    (repo / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (repo / "tests" / "test_calc.py").write_text("assert add(1, 2) == 3\n")
    (repo / "tests" / "gone.py").write_text("kept\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "start")
    clean = tmp_path / "clean"
    git(tmp_path, "clone", "-q", str(repo), str(clean))

    # The branch: the code fixed, and the tests edited, one deleted, one added, one binary.
    (repo / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (repo / "tests" / "test_calc.py").write_text("assert True\n")
    (repo / "tests" / "gone.py").unlink()
    (repo / "conftest.py").write_text("import pytest\n")
    (repo / "tests" / "blob.bin").write_bytes(b"\0\1\2")
    git(repo, "add", "-A")
    patch = git(repo, "diff", "--cached", "--binary", "--no-renames")

    kept, changed = split_patch(patch, matcher(DEFAULT_PROTECTED))
    assert changed == ["conftest.py", "tests/blob.bin", "tests/gone.py", "tests/test_calc.py"]
    (tmp_path / "kept.patch").write_text(kept)
    git(clean, "apply", str(tmp_path / "kept.patch"))
    assert (clean / "calc.py").read_text().endswith("return a + b\n")
    assert (clean / "tests" / "test_calc.py").read_text() == "assert add(1, 2) == 3\n"
    assert (clean / "tests" / "gone.py").read_text() == "kept\n"
    assert not (clean / "conftest.py").exists() and not (clean / "tests" / "blob.bin").exists()

    assert split_patch(patch, matcher([])) == (patch, [])
    assert split_patch("", matcher(DEFAULT_PROTECTED)) == ("", [])


def test_a_verifier_protects_the_tests_unless_told_otherwise():
    assert parse_select("tests:true").protect == DEFAULT_PROTECTED
    assert parse_select("verify:true", protect=["spec/**"]).protect == ("spec/**",)
    assert Verifier("true", protect=()).protect == ()
    with pytest.raises(SelectionError, match="'tests:COMMAND' or 'verify:COMMAND' only"):
        parse_select("majority", protect=["tests/**"])
    with pytest.raises(SelectionError, match="an unclosed"):
        Verifier("true", protect=["[x"])


def cli_selector(*flags: str):
    from qwq_agent.cli import branch_cmd

    parser = argparse.ArgumentParser()
    branch_cmd.add_arguments(parser)
    args = parser.parse_args(["--branches", "2", *flags])
    args.replay = args.resume = None
    return branch_cmd.check(args)


def test_protect_and_no_protect_on_the_command_line():
    assert cli_selector("--select", "tests:true").protect == DEFAULT_PROTECTED
    more = cli_selector("--select", "tests:true", "--protect", "e2e/**", "--protect", "*.snap")
    assert more.protect == (*DEFAULT_PROTECTED, "e2e/**", "*.snap")
    assert cli_selector("--select", "tests:true", "--no-protect").protect == ()
    only = cli_selector("--select", "tests:true", "--no-protect", "--protect", "e2e/**")
    assert only.protect == ("e2e/**",)


GOLDEN_TEST = """from pathlib import Path
from calc import add
expected = Path(__file__).parent.joinpath("golden", "expected.txt").read_text().strip()
assert str(add(2, 2)) == expected, (add(2, 2), expected)
"""


def start_links(repo: Path) -> dict[str, str]:
    """The links of the repository's tree, path to target, as `patch.Baseline.links` holds them."""
    listing = git(repo, "ls-files", "-s", "-z").split("\0")
    paths = [line.split("\t", 1)[1] for line in listing if line.startswith("120000 ")]
    return {p: os.readlink(repo / p) for p in paths}


def test_a_file_reached_through_a_link_under_a_protected_folder_is_protected(tmp_path):
    """tests/golden -> ../fixtures: a branch that rewrote fixtures/expected.txt (which no pattern names)
    passed the tests that read it through the link, and nothing named the change."""
    start = tmp_path / "start"
    (start / "tests").mkdir(parents=True)
    (start / "fixtures").mkdir()
    (start / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (start / "tests" / "test_calc.py").write_text(GOLDEN_TEST)
    (start / "fixtures" / "expected.txt").write_text("4\n")
    (start / "fixtures" / "notes.md").write_text("golden values\n")
    os.symlink("../fixtures", start / "tests" / "golden")
    git(start, "init", "-q")
    git(start, "add", "-A")
    git(start, "commit", "-qm", "start")
    check = tmp_path / "check"
    shutil.copytree(start, check, symlinks=True)

    (start / "fixtures" / "expected.txt").write_text("0\n")  # the branch: the golden value, not the code
    (start / "fixtures" / "notes.md").write_text("golden values, rewritten\n")
    git(start, "add", "-A")
    patch = git(start, "diff", "--cached", "--binary", "--no-renames")
    kept, changed = split_patch(patch, matcher(DEFAULT_PROTECTED), start_links(start))
    assert changed == ["fixtures/expected.txt", "fixtures/notes.md"]
    assert split_patch(patch, matcher(DEFAULT_PROTECTED)) == (patch, [])  # no links known: none followed

    (tmp_path / "kept.patch").write_text(kept)
    git(check, "apply", "--allow-empty", str(tmp_path / "kept.patch"))
    run = subprocess.run(
        [sys.executable, "tests/test_calc.py"], cwd=check, env={**os.environ, "PYTHONPATH": str(check)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 1 and "AssertionError: (0, '4')" in run.stderr, run.stderr


@pytest.mark.parametrize(
    "links, path, protected",
    [
        ({"tests/golden": "../fixtures"}, "fixtures", True),  # the target itself (a type change)
        ({"tests/golden": "../fixtures"}, "fixtures/deep/x.txt", True),
        ({"tests/golden": "../fixtures"}, "fixturesX/x.txt", False),
        ({"tests/expected.txt": "../data/e.txt"}, "data/e.txt", True),  # a file's link
        ({"tests/expected.txt": "../data/e.txt"}, "data/other.txt", False),
        ({"tests/d": "../shared", "shared": "store/v1"}, "shared", True),  # a link on the way
        ({"tests/d": "../shared", "shared": "store/v1"}, "store/v1/x", True),
        ({"tests/d": "../shared", "shared": "store/v1"}, "store/v2/x", False),
        ({"tests/d": "../a", "a/in": "../b"}, "b/x", True),  # a link under a target, in turn
        ({"tests": "suite"}, "suite/data.json", True),  # every file under the link would be protected
        ({"src/d": "../fixtures"}, "fixtures/x", False),  # a link outside the protected paths
        ({"tests/out": "/etc"}, "etc/passwd", False),  # out of /workspace: none of the patch's
        ({"tests/up": "../../x"}, "x/y", False),
        ({"tests/root": ".."}, "src/app.py", False),  # a folder holding the link: not followed
        ({"tests/a": "b", "tests/b": "a"}, "src/app.py", False),  # a loop ends
    ],
)
def test_a_protected_links_target_is_protected(links, path, protected):
    assert through_links(matcher(DEFAULT_PROTECTED), links)(path) is protected
    assert through_links(matcher(["tests/"]), links)(path) is protected
