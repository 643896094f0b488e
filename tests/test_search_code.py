"""search_code against a real Docker sandbox (ripgrep inside the container)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from tar_builder import tar_of

from qwq_agent.protocols import ToolContext
from qwq_agent.tools.search_code import SearchCode, SearchCodeArgs

FILES: dict[str, bytes] = {
    "src/app.py": b"import os\n\n\ndef main():\n    # TODO: parse args\n    return run(os.environ)\n\n\ndef run(env):\n    return 0\n",
    "src/util.py": b"def helper(x):\n    return x * 2  # todo later\n\n\nclass Runner:\n    def run(self):\n        pass\n",
    "docs/notes.md": b"# Notes\n\nThe run() function is the entry point.\nTODO: document flags.\n",
    "data/blob.bin": b"\x00\x01TODO hidden in binary\x00\xff" * 10,
    "src/generated.py": b"".join(b"VALUE_%d = %d  # marker\n" % (i, i) for i in range(120)),
}


@pytest.fixture
async def sandbox(sandbox_image: str) -> AsyncIterator[object]:
    """A fresh sandbox (image from the conftest's `sandbox_image`) holding FILES in /workspace."""
    from qwq_agent.sandbox import DockerSandbox, SandboxConfig

    async with DockerSandbox.create(SandboxConfig(image=sandbox_image)) as sb:
        await sb.upload_archive(tar_of(*[(name, "file", data) for name, data in FILES.items()]), "/workspace")
        yield sb


def ctx(sb: object) -> ToolContext:
    return ToolContext(sandbox=sb)


@pytest.mark.docker
async def test_regex_search_groups_matches_by_file(sandbox: object) -> None:
    out = await SearchCode()({"pattern": r"def \w+\(", "globs": ["*.py"]}, ctx(sandbox))
    assert not out.is_error, out.text
    lines = out.text.splitlines()
    assert lines[0].startswith("4 matches for ") and "in 2 files" in lines[0]
    assert "src/app.py:4: def main():" in lines
    assert "src/app.py:9: def run(env):" in lines
    assert "src/util.py:1: def helper(x):" in lines
    assert "src/util.py:6:     def run(self):" in lines
    assert out.metadata["locations"][0].startswith("src/")


@pytest.mark.docker
async def test_case_literal_and_binary_files(sandbox: object) -> None:
    tool = SearchCode()
    smart = await tool({"pattern": "TODO"}, ctx(sandbox))  # upper case: smart case is sensitive
    assert "src/app.py:5:     # TODO: parse args" in smart.text
    assert "docs/notes.md:4: TODO: document flags." in smart.text
    assert "todo later" not in smart.text
    assert "blob.bin" not in smart.text  # binary files are skipped
    insensitive = await tool({"pattern": "todo", "case": "insensitive"}, ctx(sandbox))
    assert "src/util.py:2:     return x * 2  # todo later" in insensitive.text
    literal = await tool({"pattern": "run()", "literal": True}, ctx(sandbox))
    assert literal.text.splitlines()[1:] == ["", "docs/notes.md:3: The run() function is the entry point."]


@pytest.mark.docker
async def test_context_lines_and_path(sandbox: object) -> None:
    out = await SearchCode()({"pattern": "TODO", "path": "src", "context_lines": 1}, ctx(sandbox))
    assert not out.is_error, out.text
    assert out.text.splitlines()[1:] == [
        "",
        "src/app.py-4- def main():",
        "src/app.py:5:     # TODO: parse args",
        "src/app.py-6-     return run(os.environ)",
    ]


@pytest.mark.docker
async def test_results_are_capped_with_the_count_left_out(sandbox: object) -> None:
    out = await SearchCode()({"pattern": "marker", "max_results": 10}, ctx(sandbox))
    assert "120 matches" in out.text and "110 more not shown" in out.text
    assert out.text.count("src/generated.py:") == 10
    assert out.metadata["omitted"] == 110


@pytest.mark.docker
async def test_errors_are_observations(sandbox: object) -> None:
    tool = SearchCode()
    bad = await tool({"pattern": "foo(bar"}, ctx(sandbox))
    assert bad.is_error and "literal=true" in bad.text
    outside = await tool({"pattern": "root", "path": "/etc"}, ctx(sandbox))
    assert outside.is_error and "outside /workspace" in outside.text
    none = await tool({"pattern": "no_such_identifier_xyz"}, ctx(sandbox))
    assert not none.is_error and none.text.startswith("No matches")


@pytest.mark.docker
async def test_a_fifo_path_is_refused_not_read_until_the_timeout(sandbox: object) -> None:
    # ripgrep blocked on the FIFO for the whole timeout, then the search said "No matches".
    await sandbox.shell("mkfifo /workspace/pipe")
    out = await SearchCode(timeout_s=5)({"pattern": "needle", "path": "pipe"}, ctx(sandbox))
    assert out.is_error and "is a FIFO (named pipe)" in out.text, out.text


@pytest.mark.docker
async def test_a_search_that_times_out_says_so_not_no_matches(sandbox: object) -> None:
    # ~100 MB of text and a regex ripgrep cannot skip through: far more than a 1 ms timeout covers.
    await sandbox.shell(
        'mkdir -p /workspace/bulk && python3 -c "import random; r = random.Random(0); '
        "line = lambda: ' '.join(r.choice(['alpha', 'beta', 'gamma', 'delta']) for _ in range(12)); "
        "text = '\\n'.join(line() for _ in range(5000)) + '\\n'\n"
        "for i in range(4):\n"
        "    open(f'/workspace/bulk/f{i}.txt', 'w').write(text * 80)\""
    )
    out = await SearchCode(timeout_s=0.001)({"pattern": r"\w+_no_such_\d{3}\b"}, ctx(sandbox))
    assert not out.is_error, out.text
    assert not out.text.startswith("No matches") and "timed out" in out.text, out.text
    assert out.metadata["complete"] is False and out.metadata["timed_out"] is True


@pytest.mark.docker
async def test_hidden_files_are_searched_but_not_git_and_large_files_are_counted(sandbox: object) -> None:
    # Dotfiles and dot-folders (CI configs, .env.example) were skipped and files over 50 MB too, and the
    # search still answered "No matches", complete.
    r = await sandbox.shell(
        "cd /workspace && mkdir -p .github/workflows .git && echo 'run: deploy_v2' > .github/workflows/ci.yml"
        " && echo 'DEPLOY=deploy_v2' > .env.example && echo 'deploy_v2' > .git/config && "
        "python3 -c \"open('app.log', 'w').write('x' * (51 * 1024 * 1024) + '\\nFATAL boom\\n')\""
    )
    assert r.exit_code == 0, r
    tool = SearchCode()
    found = await tool({"pattern": "deploy_v2"}, ctx(sandbox))
    lines = found.text.splitlines()
    assert (
        ".github/workflows/ci.yml:1: run: deploy_v2" in lines and ".env.example:1: DEPLOY=deploy_v2" in lines
    )
    assert ".git/" not in found.text  # the repository's own files stay out
    # The large file is not searched, but the answer says so and is marked incomplete.
    assert "1 file over 50 MB" in found.text and found.metadata["complete"] is False, found.text
    fatal = await tool({"pattern": "FATAL"}, ctx(sandbox))
    assert not fatal.is_error and not fatal.text.startswith("No matches"), fatal.text
    assert "1 file over 50 MB" in fatal.text and "not searched" in fatal.text, fatal.text
    assert fatal.metadata["complete"] is False and fatal.metadata["skipped_large"] == 1
    # A path inside .git is still searched when named.
    inside = await tool({"pattern": "deploy_v2", "path": ".git"}, ctx(sandbox))
    assert ".git/config:1: deploy_v2" in inside.text.splitlines(), inside.text


async def test_without_a_sandbox_the_error_is_clear() -> None:
    out = await SearchCode()({"pattern": "x"}, ToolContext())
    assert out.is_error and "no sandbox" in out.text
    invalid = await SearchCode()({"pattern": "", "context_lines": 99}, ToolContext())
    assert invalid.is_error and "pattern" in invalid.text and "context_lines" in invalid.text


def test_a_line_of_unknown_length_is_not_given_a_made_up_one() -> None:
    # What a line too long to read back shows (its first 2000 characters, its length unknown): the note
    # counted "more chars" from that cut copy, as if the line ended there.
    from qwq_agent.sandbox import SearchMatch, SearchResult
    from qwq_agent.tools.search_code import format_matches

    match = SearchMatch(path="/workspace/a.js", line_number=1, line="a" * 2000, line_length=None)
    text = format_matches(SearchCodeArgs(pattern="a"), SearchResult(matches=[match], total_matches=1))
    assert text.splitlines()[-1] == "a.js:1: " + "a" * 300 + "… [at least 1700 more chars]"
    old_style = SearchMatch(path="/workspace/a.js", line_number=2, line="x", before=["w"], after=["y"])
    text = format_matches(SearchCodeArgs(pattern="x"), SearchResult(matches=[old_style], total_matches=1))
    assert text.splitlines()[2:] == ["a.js-1- w", "a.js:2: x", "a.js-3- y"]


def test_schema_describes_every_argument() -> None:
    schema = SearchCode().spec.parameters
    assert schema["required"] == ["pattern"]
    assert set(schema["properties"]) == set(SearchCodeArgs.model_fields)
    assert all("description" in p for p in schema["properties"].values())


@pytest.mark.docker
async def test_a_symlink_loop_path_is_refused_with_its_reason(sandbox: object) -> None:
    # ripgrep's message was suppressed (--no-messages): the answer was "ripgrep failed: " and no reason.
    await sandbox.shell("ln -s loop /workspace/loop")
    out = await SearchCode()({"pattern": "x", "path": "loop"}, ctx(sandbox))
    assert out.is_error and "Too many levels of symbolic links" in out.text, out.text


@pytest.mark.docker
async def test_context_lines_carry_their_own_numbers_beside_a_huge_line(sandbox: object) -> None:
    # A context line too long to parse (> 256 KB record) was dropped, and context lines were numbered
    # by their place in what was left: line 1's text was shown as line 2.
    await sandbox.python(
        "lines = ['/* line 1: license */', 'var bundle=' + 'a' * 400000 + ';', '//# sourceMappingURL=app.js.map',\n"
        "         'x' * 300000, '/* line 5: trailer */']\n"
        "open('/workspace/app.min.js', 'w').write('\\n'.join(lines) + '\\n')"
    )
    out = await SearchCode()(
        {"pattern": "sourceMappingURL", "path": "app.min.js", "context_lines": 2}, ctx(sandbox)
    )
    assert out.text.splitlines()[1:] == [
        "",
        "app.min.js-1- /* line 1: license */",
        "app.min.js-2- var bundle=" + "a" * 289 + f"… [{400_012 - 300} more chars]",
        "app.min.js:3: //# sourceMappingURL=app.js.map",
        "app.min.js-4- " + "x" * 300 + f"… [{300_000 - 300} more chars]",
        "app.min.js-5- /* line 5: trailer */",
    ], out.text


@pytest.mark.docker
async def test_a_match_in_a_long_line_is_shown_with_what_surrounds_it(sandbox: object) -> None:
    # Lines were cut to their first 300 characters with "[1700 more chars]" whatever their length, so on
    # minified code the match itself was not shown.
    await sandbox.python(
        "open('/workspace/min.js', 'w').write('x' * 10_000 + 'NEEDLE_FN()' + 'y' * 10 + '\\n')\n"
        # a line whose ripgrep record is too large to parse whole (the file is read for the window)
        "open('/workspace/huge.min.js', 'w').write('x' * 1_000_000 + 'NEEDLE_FN()' + 'y' * 500_000 + '\\n')"
    )
    tool = SearchCode()
    out = await tool({"pattern": "NEEDLE_FN", "path": "min.js"}, ctx(sandbox))
    assert out.text.splitlines()[2] == (
        "min.js:1: …" + "x" * 279 + "NEEDLE_FN()" + "y" * 10 + " [chars 9722-10021 of 10021]"
    ), out.text
    out = await tool({"pattern": "NEEDLE_FN", "path": "huge.min.js"}, ctx(sandbox))
    assert out.text.splitlines()[2] == (
        "huge.min.js:1: …" + "x" * 100 + "NEEDLE_FN()" + "y" * 189 + "… [chars 999901-1000200 of 1500011]"
    ), out.text
