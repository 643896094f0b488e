"""Happy paths of every sandbox operation, on one shared sandbox (tests use distinct paths)."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from tar_builder import tar_of

from qwq_agent.protocols import Sandbox
from qwq_agent.sandbox import DockerSandbox, ToolError

pytestmark = [pytest.mark.docker, pytest.mark.asyncio(loop_scope="session")]


async def test_satisfies_the_sandbox_protocol(shared_sandbox: DockerSandbox) -> None:
    assert isinstance(shared_sandbox, Sandbox)
    assert shared_sandbox.alive and shared_sandbox.id


async def test_python_output_value_and_persistent_state(shared_sandbox: DockerSandbox) -> None:
    r = await shared_sandbox.python(
        "ops_x = 20\nprint('hello')\nimport sys; print('warn', file=sys.stderr)\nops_x + 1"
    )
    assert (r.stdout, r.stderr, r.value, r.error) == ("hello\n", "warn\n", "21", None)
    r = await shared_sandbox.python("ops_x * 2")
    assert r.value == "40" and not r.state_lost
    r = await shared_sandbox.python("ops_y = 1")  # no trailing expression: no value
    assert r.value is None and r.ok


async def test_python_exception_has_a_traceback_and_keeps_state(shared_sandbox: DockerSandbox) -> None:
    await shared_sandbox.python("ops_keep = 'kept'")
    r = await shared_sandbox.python("def f():\n    return 1 / 0\nf()")
    assert r.error is not None and r.error.ename == "ZeroDivisionError"
    assert "line 2, in f" in r.error.traceback and "return 1 / 0" in r.error.traceback
    r = await shared_sandbox.python("ops_keep")
    assert r.value == "'kept'"


async def test_python_syntax_error(shared_sandbox: DockerSandbox) -> None:
    r = await shared_sandbox.python("def broken(:\n  pass")
    assert r.error is not None and r.error.ename == "SyntaxError" and not r.state_lost


async def test_matplotlib_figure_comes_back_as_png(shared_sandbox: DockerSandbox) -> None:
    r = await shared_sandbox.python(
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.title('squares')\nplt.show()"
    )
    assert r.error is None, r.error
    assert len(r.images) == 1
    assert base64.b64decode(r.images[0]).startswith(b"\x89PNG\r\n\x1a\n")
    r = await shared_sandbox.python("1")  # figures are closed after being sent
    assert r.images == []


async def test_numpy_pandas_sympy_are_there(shared_sandbox: DockerSandbox) -> None:
    r = await shared_sandbox.python(
        "import numpy as np, pandas as pd, sympy as sp\n"
        "(int(np.arange(5).sum()), int(pd.DataFrame({'a': [1, 2]}).a.sum()), str(sp.factor(sp.Symbol('x')**2 - 1)))"
    )
    assert r.value == "(10, 3, '(x - 1)*(x + 1)')", r


async def test_shell_exit_code_streams_and_cwd(shared_sandbox: DockerSandbox) -> None:
    r = await shared_sandbox.shell("pwd; echo err >&2; exit 7")
    assert (r.exit_code, r.stdout, r.stderr, r.timed_out) == (7, "/workspace\n", "err\n", False)


async def test_shell_timeout_kills_the_command(shared_sandbox: DockerSandbox) -> None:
    r = await shared_sandbox.shell("echo before; sleep 30; echo after", timeout=0.5)
    assert r.timed_out and r.stdout == "before\n" and r.exit_code is not None and r.exit_code < 0


async def test_editor_create_view_replace_insert_undo(shared_sandbox: DockerSandbox) -> None:
    path = "/workspace/edit/demo.py"
    r = await shared_sandbox.create_file(path, "a = 1\nb = 2\nc = 3\n")
    assert r.output == f"File created successfully at: {path}"
    with pytest.raises(
        ToolError, match=r"File already exists at: /workspace/edit/demo.py\. Cannot overwrite"
    ):
        await shared_sandbox.create_file(path, "x")
    r = await shared_sandbox.view(path)
    assert (
        r.output
        == f"Here's the result of running `cat -n` on {path}:\n     1\ta = 1\n     2\tb = 2\n     3\tc = 3\n     4\t\n"
    )
    r = await shared_sandbox.view(path, [2, 3])
    assert r.output.endswith("     2\tb = 2\n     3\tc = 3\n")
    r = await shared_sandbox.str_replace(path, "b = 2", "b = 20")
    assert r.output.startswith(
        f"The file {path} has been edited. Here's the result of running `cat -n` on a snippet of {path}:"
    )
    assert "     2\tb = 20" in r.output and r.output.endswith("Edit the file again if necessary.")
    r = await shared_sandbox.insert(path, 1, "inserted = True")
    assert "     2\tinserted = True" in r.output
    await shared_sandbox.undo_edit(path)
    await shared_sandbox.undo_edit(path)
    assert (await shared_sandbox.shell(f"cat {path}")).stdout == "a = 1\nb = 2\nc = 3\n"
    with pytest.raises(ToolError, match=f"No edit history found for {path}."):
        await shared_sandbox.undo_edit(path)


async def test_edits_keep_a_windows_file_in_crlf(shared_sandbox: DockerSandbox) -> None:
    # `view` shows no line endings, so the model writes `\n`: inside a CRLF file that was a silently
    # mixed file, and a multi-line old_str never matched.
    path = "/workspace/ops_win.txt"
    await shared_sandbox.shell(f"printf 'line1\\r\\nline2\\r\\nline3\\r\\n' > {path}")
    await shared_sandbox.insert(path, 1, "inserted")
    await shared_sandbox.str_replace(path, "line2\nline3", "line2\nline3a\nline3b")
    r = await shared_sandbox.shell(f"base64 -w0 {path}")
    raw = base64.b64decode(r.stdout.split()[-1])
    assert raw == b"line1\r\ninserted\r\nline2\r\nline3a\r\nline3b\r\n"
    # A `\r` the strings end on is half of the file's own ending after them, not a second `\r`.
    await shared_sandbox.str_replace(path, "line3b\r", "line3c\r")
    await shared_sandbox.insert(path, 0, "top\r")
    raw = base64.b64decode((await shared_sandbox.shell(f"base64 -w0 {path}")).stdout.split()[-1])
    assert raw == b"top\r\nline1\r\ninserted\r\nline2\r\nline3a\r\nline3c\r\n"
    # A file that already mixes endings is edited as written, not converted.
    mixed = "/workspace/ops_mixed.txt"
    await shared_sandbox.shell(f"printf 'a\\r\\nb\\nc\\n' > {mixed}")
    await shared_sandbox.insert(mixed, 3, "d")
    assert base64.b64decode((await shared_sandbox.shell(f"base64 -w0 {mixed}")).stdout) == b"a\r\nb\nc\nd\n"


async def test_str_replace_needs_exactly_one_match(shared_sandbox: DockerSandbox) -> None:
    path = "/workspace/edit/twice.txt"
    await shared_sandbox.create_file(path, "x\nsame\ny\nsame\n")
    with pytest.raises(ToolError) as err:
        await shared_sandbox.str_replace(path, "same", "other")
    assert (
        str(err.value)
        == "No replacement was performed. Multiple occurrences of old_str `same` in lines [2, 4]. Please ensure it is unique"
    )
    with pytest.raises(ToolError) as err:
        await shared_sandbox.str_replace(path, "absent", "other")
    assert (
        str(err.value) == f"No replacement was performed, old_str `absent` did not appear verbatim in {path}."
    )
    with pytest.raises(
        ToolError,
        match=r"Invalid `insert_line` parameter: 9\. It should be within the range of lines of the file: \[0, 5\]",
    ):
        await shared_sandbox.insert(path, 9, "z")
    with pytest.raises(
        ToolError, match=r"Invalid `view_range`: \[3, 99\]\. Its second element `99` should be smaller"
    ):
        await shared_sandbox.view(path, [3, 99])
    with pytest.raises(ToolError, match=r"The path /workspace/edit/none\.txt does not exist"):
        await shared_sandbox.view("/workspace/edit/none.txt")


async def test_create_refuses_a_path_ending_in_a_slash(shared_sandbox: DockerSandbox) -> None:
    # `/workspace/newdir/` names a folder; create made a FILE called newdir.
    with pytest.raises(ToolError, match=r"ends with '/'.*names a directory"):
        await shared_sandbox.create_file("/workspace/ops_newdir/", "x = 1\n")
    r = await shared_sandbox.shell("ls -ld /workspace/ops_newdir 2>&1 || true")
    assert "No such file or directory" in r.stdout, r.stdout


async def test_an_empty_old_str_is_called_empty(shared_sandbox: DockerSandbox) -> None:
    path = "/workspace/ops_empty_old.txt"
    await shared_sandbox.create_file(path, "a\n")
    with pytest.raises(ToolError) as err:
        await shared_sandbox.str_replace(path, "", "b")
    # It said "old_str `` did not appear verbatim", as if the file lacked it.
    assert "`old_str` is empty" in str(err.value) and "insert" in str(err.value), str(err.value)


async def test_view_directory_two_levels_without_hidden(shared_sandbox: DockerSandbox) -> None:
    await shared_sandbox.shell(
        "mkdir -p /workspace/tree/a/b/c && touch /workspace/tree/a/b/c/deep /workspace/tree/top /workspace/tree/.hidden"
    )
    r = await shared_sandbox.view("/workspace/tree")
    lines = r.output.splitlines()
    assert (
        lines[0]
        == "Here's the files and directories up to 2 levels deep in /workspace/tree, excluding hidden items:"
    )
    assert lines[1:] == ["/workspace/tree", "/workspace/tree/a", "/workspace/tree/a/b", "/workspace/tree/top"]


async def test_search_regex_literal_globs_context_and_caps(shared_sandbox: DockerSandbox) -> None:
    await shared_sandbox.shell(
        "mkdir -p /workspace/srch && cd /workspace/srch && printf 'alpha\\nfoo(1)\\nomega\\n' > a.py && "
        "printf 'FOO(2)\\n' > b.txt && printf 'foo\\0binary' > c.bin && for i in $(seq 1 30); do echo foo$i; done > many.py"
    )
    r = await shared_sandbox.search(r"foo\(\d\)", path="/workspace/srch", case="insensitive")
    assert sorted((m.path, m.line) for m in r.matches) == [
        ("/workspace/srch/a.py", "foo(1)"),
        ("/workspace/srch/b.txt", "FOO(2)"),
    ]
    r = await shared_sandbox.search("foo(1)", path="/workspace/srch", literal=True, context_lines=1)
    (m,) = r.matches
    assert (m.line_number, m.line_length, m.match_start, m.match_end) == (2, 6, 0, 6)
    assert [(c.line_number, c.text) for c in m.before + m.after] == [(1, "alpha"), (3, "omega")]
    r = await shared_sandbox.search(
        "foo", path="/workspace/srch", globs=["*.py"], case="sensitive", max_results=5
    )
    assert len(r.matches) == 5 and r.total_matches == 31 and r.omitted == 26 and r.complete
    assert all(m.path.endswith(".py") for m in r.matches)
    assert not any(
        m.path.endswith(".bin")
        for m in (await shared_sandbox.search("binary", path="/workspace/srch")).matches
    )


async def test_upload_and_download_round_trip(shared_sandbox: DockerSandbox, tmp_path) -> None:
    src = tmp_path / "proj"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("VALUE = 42\n")
    (src / "data.bin").write_bytes(bytes(range(256)))
    r = await shared_sandbox.upload(src, "/workspace/up")
    assert r.entries == 4
    out = await shared_sandbox.python(
        "import sys; sys.path.insert(0, '/workspace/up/proj'); import pkg.mod; pkg.mod.VALUE"
    )
    assert out.value == "42"
    back = await shared_sandbox.download("/workspace/up/proj", tmp_path / "back")
    assert back.paths == [str(tmp_path / "back" / "proj")]
    assert (tmp_path / "back" / "proj" / "data.bin").read_bytes() == bytes(range(256))
    assert (tmp_path / "back" / "proj" / "pkg" / "mod.py").read_text() == "VALUE = 42\n"


async def test_odd_file_names(shared_sandbox: DockerSandbox, tmp_path) -> None:
    path = "/workspace/odd names/ünï cödé\nnewline ✓.txt"
    await shared_sandbox.create_file(path, "héllo wörld\n")
    r = await shared_sandbox.view("/workspace/odd names")
    assert json.dumps(path, ensure_ascii=False) in r.output.splitlines()  # quoted: on one line
    await shared_sandbox.str_replace(path, "wörld", "welt")
    assert "héllo welt" in (await shared_sandbox.view(path)).output
    await shared_sandbox.download("/workspace/odd names", tmp_path)
    assert (tmp_path / "odd names" / "ünï cödé\nnewline ✓.txt").read_text() == "héllo welt\n"


async def test_concurrent_calls_are_multiplexed(shared_sandbox: DockerSandbox) -> None:
    # The waiter can only finish if the writer runs while it is still waiting: the calls overlap.
    waiter = shared_sandbox.shell("while [ ! -f /tmp/conc-flag ]; do sleep 0.01; done; echo seen", timeout=20)
    writer = shared_sandbox.shell("touch /tmp/conc-flag")
    cells = [shared_sandbox.python(f"conc_{i} = {i}\nconc_{i}") for i in range(5)]
    results = await asyncio.gather(waiter, writer, *cells)
    assert results[0].stdout == "seen\n" and not results[0].timed_out
    assert [r.value for r in results[2:]] == [str(i) for i in range(5)]


async def test_upload_archive_of_safe_links_inside(shared_sandbox: DockerSandbox) -> None:
    archive = tar_of(("safe/target.txt", "file", b"target text\n"), ("safe/link.txt", "link", "target.txt"))
    await shared_sandbox.upload_archive(archive, "/workspace/arch")
    assert (await shared_sandbox.shell("cat /workspace/arch/safe/link.txt")).stdout == "target text\n"


async def test_git_commit_works_and_a_repositorys_own_identity_wins(shared_sandbox: DockerSandbox) -> None:
    """git cannot guess an email in a sandbox ("Author identity unknown"): the image gives a default at
    the system level, below a repository's own `user.*`."""
    r = await shared_sandbox.shell(
        "cd /tmp && rm -rf gitid && git init -q gitid && cd gitid && echo a > f && git add f"
        " && git commit -qm one && git -c user.name=Ada -c user.email=ada@example.org commit -q"
        " --allow-empty -m two && git log --format='%an <%ae>'"
    )
    assert r.exit_code == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["Ada <ada@example.org>", "sandbox <sandbox@qwq-agent.invalid>"]


async def test_workspace_modules_import_and_supervisor_modules_do_not(shared_sandbox: DockerSandbox) -> None:
    # The interpreter's path was the supervisor's folders: /workspace/mymod.py could not be imported, and
    # `import settings` (server, search, shell...) silently loaded the supervisor's own module.
    await shared_sandbox.shell(
        "mkdir -p /workspace/imp && cd /workspace/imp && echo 'Y = 7' > imp_mymod.py && "
        "echo 'DEBUG = True' > settings.py && echo 'NAME = \"mine\"' > supervisor.py"
    )
    r = await shared_sandbox.python("import os\nos.chdir('/workspace/imp')\nimport imp_mymod\nimp_mymod.Y")
    assert r.value == "7", r
    r = await shared_sandbox.python(
        "import settings, supervisor\n(settings.__file__, settings.DEBUG, supervisor.__file__, supervisor.NAME)"
    )
    assert r.value == ("('/workspace/imp/settings.py', True, '/workspace/imp/supervisor.py', 'mine')"), r
    r = await shared_sandbox.python(
        "import sys\n[p for p in sys.path if p.startswith('/opt/qwq')], '' in sys.path, sys.argv"
    )
    assert r.value == "([], True, [''])", r
    await shared_sandbox.python("os.chdir('/workspace')")


async def test_cell_definitions_live_in_main_so_they_pickle(shared_sandbox: DockerSandbox) -> None:
    # Cells ran in a plain dict while __main__ was the supervisor's boot.py: pickle (and so
    # multiprocessing) could not find a cell's classes and functions by name.
    r = await shared_sandbox.python(
        "import pickle, sys\n"
        "class PicklePoint:\n    def __init__(self, x):\n        self.x = x\n"
        "def square(x):\n    return x * x\n"
        "from multiprocessing import Pool\n"
        "with Pool(2) as pool:\n    squares = pool.map(square, range(5))\n"
        "(pickle.loads(pickle.dumps(PicklePoint(3))).x, squares, sys.modules['__main__'].square is square)"
    )
    assert r.value == "(3, [0, 1, 4, 9, 16], True)", r
