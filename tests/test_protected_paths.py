"""Protected paths of a `tests:` check: the globs, and a patch less its entries for them.

Real git on the host makes the patch (as the sandbox does: `--binary --no-renames`) and applies what is
kept, so the split is checked against what git writes and what it does with the result.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest

from qwq_agent.agent.protected import DEFAULT_PROTECTED, PatternError, matcher, split_patch
from qwq_agent.agent.selection import SelectionError, Verifier, parse_select


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=Dev", "-c", "user.email=dev@example.com", *args],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return done.stdout


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
    for bad, why in [("", "an empty pattern"), ("a//b", "an empty folder name"), ("a/[b", "an unclosed")]:
        with pytest.raises(PatternError, match=why):
            matcher([bad])


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
