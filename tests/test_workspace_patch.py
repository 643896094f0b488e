"""A git workspace keeps its `.git` in the sandbox, and a run ends with the patch of what the agent changed.

Real parts only: a real git repository on the host, a real sandbox, the scripted model behind a real
HTTP server, the CLI as a subprocess.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from git_repo import git

from qwq_agent.testing.scripted_server import ScriptedModelServer

pytestmark = pytest.mark.docker

CLI = [sys.executable, "-m", "qwq_agent.cli.main"]


def call(name: str, **arguments: object) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def left_out_warnings(trace: Path) -> list[dict]:
    """The `patch_links_left_out` warnings a run's trace holds."""
    return [json.loads(line) for line in trace.read_text().splitlines() if '"patch_links_left_out"' in line]


def make_repo(path: Path) -> Path:
    path.mkdir()
    git(path, "init", "-q")
    (path / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (path / ".gitignore").write_text("*.log\n")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "calc: the first version")
    # The user's own state before the run: an uncommitted edit and an ignored file stay out of the patch.
    (path / "NOTES.md").write_text("my own notes, not committed\n")
    (path / "build.log").write_text("ignored\n")
    return path


EDIT_TURNS = [
    "Look at the history first.\n</think>\n\n"
    + call("shell", command="git log --oneline && git status --short"),
    "Fix the operator.\n</think>\n\n"
    + call(
        "str_replace_editor",
        command="str_replace",
        path="/workspace/calc.py",
        old_str="a - b",
        new_str="a + b",
    ),
    "Add a test.\n</think>\n\n"
    + call(
        "str_replace_editor",
        command="create",
        path="/workspace/test_calc.py",
        file_text="from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n",
    ),
    "Show the change.\n</think>\n\n" + call("shell", command="git diff --stat"),
    "Done.\n</think>\n\nFixed add() and added a test.",
]


def test_run_on_a_git_workspace_writes_the_patch_and_copies_back(sandbox_image, tmp_path):
    repo = make_repo(tmp_path / "repo")
    # A bracket in the copy-back path was once read as Rich markup (MarkupError after the run).
    patch, out = tmp_path / "out.diff", tmp_path / "out[" / "back]"
    with ScriptedModelServer(EDIT_TURNS) as server:
        proc = subprocess.run(
            [
                *CLI,
                "run",
                "Fix add().",
                "--model-url",
                server.url,
                "--tools",
                "shell,str_replace_editor",
                "--workspace",
                str(repo),
                "--patch",
                str(patch),
                "--copy-back",
                str(out),
                "--trace",
                str(tmp_path / "t.jsonl"),
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert proc.returncode == 0, proc.stderr
    results = [e["text"] for e in map(json.loads, proc.stdout.splitlines()) if e["type"] == "tool_result"]
    # `.git` went in: the agent sees the history and git's view of its own change.
    assert "calc: the first version" in results[0]
    assert "calc.py" in results[3]
    assert f"patch (2 files changed): {patch}" in " ".join(proc.stderr.split())

    text = patch.read_text()
    assert "-    return a - b\n+    return a + b" in text
    assert "new file mode" in text and "+++ b/test_calc.py" in text
    assert "NOTES.md" not in text and "build.log" not in text
    # It applies to the user's folder as it was, and the history there is untouched.
    git(repo, "apply", "--check", str(patch))
    assert git(repo, "log", "--oneline").count("\n") == 1
    assert git(repo, "status", "--porcelain") == "?? NOTES.md\n"
    # --copy-back keeps working, `.git` included.
    assert f"workspace copied back to {out}" in " ".join(proc.stderr.split())
    copied = out / "workspace"
    assert (copied / "calc.py").read_text().endswith("return a + b\n")
    assert (copied / "test_calc.py").exists() and (copied / ".git" / "HEAD").exists()


def test_patch_needs_a_workspace(tmp_path):
    proc = subprocess.run(
        [
            *CLI,
            "run",
            "x",
            "--tools",
            "shell",
            "--patch",
            str(tmp_path / "p.diff"),
            "--trace",
            str(tmp_path / "t.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--patch needs --workspace" in proc.stderr


async def test_run_result_patch_for_a_folder_that_is_not_a_repository(sandbox_image, tmp_path):
    from qwq_agent import Agent, SGLangClient, build_tools
    from qwq_agent.agent.workspace import open_sandbox

    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "data.txt").write_text("one\ntwo\n")
    (folder / "old.txt").write_text("to delete\n")
    turns = [
        "Edit.\n</think>\n\n"
        + call("shell", command="echo three >> data.txt && rm old.txt && printf 'x\\0y' > blob.bin"),
        "Done.\n</think>\n\nEdited.",
    ]
    async with ScriptedModelServer(turns) as server, SGLangClient(server.url) as model:
        async with open_sandbox(workspace=folder) as sandbox:
            agent = Agent(model, build_tools(["shell"]), sandbox=sandbox)
            result = await agent.run("Edit the files.")
    assert result.status == "completed" and result.patch is not None
    assert "+three" in result.patch
    assert "deleted file mode" in result.patch and "-to delete" in result.patch
    assert "diff --git a/blob.bin b/blob.bin" in result.patch and "GIT binary patch" in result.patch
    # The folder on the host is untouched, and the patch applies to it.
    assert (folder / "data.txt").read_text() == "one\ntwo\n"
    patch = tmp_path / "p.diff"
    patch.write_text(result.patch)
    check = ["git", "apply", "--check", str(patch)]
    await asyncio.to_thread(subprocess.run, check, cwd=folder, check=True, timeout=60)


async def test_a_large_patch_comes_back_whole(sandbox_image, tmp_path):
    """Longer than the shell's 32 KiB of output head, so it is read back in pieces."""
    from qwq_agent.agent.patch import record_baseline, workspace_patch
    from qwq_agent.agent.workspace import open_sandbox

    folder = tmp_path / "big"
    folder.mkdir()
    async with open_sandbox(workspace=folder) as sandbox:
        await record_baseline(sandbox)
        await sandbox.shell("seq 1 40000 > numbers.txt")
        patch = await workspace_patch(sandbox)
    lines = [line for line in patch.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert lines == [f"+{n}" for n in range(1, 40001)]


def test_a_failed_copy_back_still_writes_the_patch_and_the_trace_line(sandbox_image, tmp_path):
    """The copy-back's exception once left `run` before --patch and the trace line. (A used copy-back
    folder is now refused before the run, so the failure here is one only the run can make: a workspace
    past the download limit.) A link out of --workspace is left out and named."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "notes.txt").write_text("old\n")
    (ws / "host").symlink_to("/etc/hostname")
    back = tmp_path / "back"
    # Past the 64 MiB download limit, and ignored so that the patch stays small.
    big = "echo big.bin > .gitignore && head -c 70M /dev/urandom > big.bin"
    turns = [
        "Work.\n</think>\n\n" + call("shell", command=f"echo new > notes.txt && mkfifo .ctl && {big}"),
        "Done.\n</think>\n\nDone.",
    ]
    patch, trace = tmp_path / "p.diff", tmp_path / "t.jsonl"
    with ScriptedModelServer(turns) as server:
        proc = subprocess.run(
            [*CLI, "run", "Update notes.", "--model-url", server.url, "--tools", "shell",
             "--workspace", str(ws), "--copy-back", str(back), "--patch", str(patch), "--trace", str(trace)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    err = " ".join((proc.stdout + proc.stderr).split())  # the live view prints on stdout
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert "1 entries were not copied into the sandbox" in err and "host -> /etc/hostname" in err
    assert f"the workspace was not copied back to {back}" in err and "download limit" in err
    assert "+new" in patch.read_text() and f"trace: {trace}" in err
    assert not (back / "workspace").exists()


async def test_links_leading_out_of_the_repository_stay_out_of_the_patch_and_are_named(
    sandbox_image, tmp_path
):
    """`git apply` would plant them in the user's checkout (copy-back leaves them out too); links that
    stay inside the repository are kept, and a changed link keeps its old target."""
    from qwq_agent import Agent, SGLangClient, build_tools
    from qwq_agent.agent.workspace import open_sandbox

    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "README.md").write_text("hello\n")
    (repo / "docs").mkdir()
    (repo / "docs" / "old").symlink_to("../README.md")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    command = (
        "ln -s /root/.ssh/authorized_keys 'notes *.txt' && ln -s ../../../../etc/shadow up.txt"
        " && ln -s ../README.md docs/readme && mkdir sub && ln -s .. sub/d && ln -s sub/d/../etc chained"
        " && ln -sfn /etc/passwd docs/old"
    )
    turns = ["Link.\n</think>\n\n" + call("shell", command=command), "Done.\n</think>\n\nLinked."]
    trace = tmp_path / "trace.jsonl"
    async with ScriptedModelServer(turns) as server, SGLangClient(server.url) as model:
        async with open_sandbox(workspace=repo) as sandbox:
            agent = Agent(model, build_tools(["shell"]), sandbox=sandbox, trace_path=trace)
            result = await agent.run("Make links.")
    assert result.status == "completed" and result.patch is not None
    warnings = left_out_warnings(trace)
    assert len(warnings) == 1
    message = warnings[0]["message"]
    for named in (
        "notes *.txt -> /root/.ssh/authorized_keys (absolute)",
        "up.txt -> ../../../../etc/shadow (leads out of the repository)",
        "chained -> sub/d/../etc (leads out of the repository)",
        "docs/old -> /etc/passwd (absolute)",
    ):
        assert named in message
    assert "docs/readme" not in message and "sub/d" not in message.replace("sub/d/../etc", "")
    patch = tmp_path / "p.diff"
    patch.write_text(result.patch)
    await asyncio.to_thread(subprocess.run, ["git", "apply", str(patch)], cwd=repo, check=True, timeout=60)
    assert sorted(p.name for p in repo.iterdir()) == [".git", "README.md", "docs", "sub"], result.patch
    assert str((repo / "docs" / "old").readlink()) == "../README.md"
    assert str((repo / "docs" / "readme").readlink()) == "../README.md"
    assert str((repo / "sub" / "d").readlink()) == ".."


async def test_links_are_judged_from_the_snapshot_not_the_live_sandbox_tree(sandbox_image, tmp_path):
    """The filter once asked `realpath` in the sandbox: an ignored path (a real folder in the user's
    checkout, a link in the sandbox), a link it had itself left out, and a climb past `/` that came back
    down through the literal name `workspace` all made an outward link look inside, and `git apply`
    planted it. Judged from the end snapshot alone, each is left out; links that stay inside are kept."""
    from qwq_agent.agent.patch import workspace_changes
    from qwq_agent.agent.workspace import open_sandbox

    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / ".gitignore").write_text(".venv\n")
    (repo / "README.md").write_text("hi\n")
    (repo / "a").mkdir()
    (repo / "a" / "keep").write_text("k\n")
    (repo / "L1").symlink_to("a")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    (repo / ".venv").mkdir()  # the user's ignored folder: on the host it stays a real, shallow folder
    ups, deep = "../" * 10, "a/b/c/d/e/f/g/h/i/j"
    command = (
        f"set -e; mkdir -p {deep}; touch {deep}/f; rm -rf .venv; ln -s {deep} .venv; ln -s .venv/{ups}etc/passwd viaignored;"
        f" ln -sfn /workspace/{deep} L1; ln -s L1/{ups}etc/passwd viadropped;"
        f" ln -s {'../' * 12}workspace/README.md byname; ln -s ../workspace/README.md byname2;"
        " ln -s L1/keep kept; ln -s a/b/../keep kept2"
    )
    async with open_sandbox(workspace=repo) as sandbox:
        done = await sandbox.shell(command)
        assert done.exit_code == 0, done.stderr
        changes = await workspace_changes(sandbox)
    left = " | ".join(changes.left_out)
    for named in ("L1 -> ", "viaignored -> ", "viadropped -> ", "byname -> ", "byname2 -> "):
        assert named in left
    assert "kept" not in left
    patch = tmp_path / "p.diff"
    patch.write_text(changes.text)
    await asyncio.to_thread(subprocess.run, ["git", "apply", str(patch)], cwd=repo, check=True, timeout=60)
    links = sorted(p.name for p in repo.iterdir() if p.is_symlink())
    assert links == ["L1", "kept", "kept2"], changes.text
    assert str((repo / "L1").readlink()) == "a"
    assert (repo / "kept").read_text() == (repo / "kept2").read_text() == "k\n"


# A thread left running in the sandbox's interpreter (it outlives its cell): the diff is written into
# the baseline's git directory, which the sandbox user owns, so it puts a FIFO where the patch file goes,
# takes git's diff from it (after the links were judged), and renames a file with that diff plus a link
# to /etc/passwd over it. A reader that opened the FIFO before the rename gets the same text through it:
# FIFO opens wait for one another, so no timing decides what the host reads.
SWAP_THE_PATCH = r"""
import hashlib, os, threading
patch = os.path.expanduser("~/.qwq-agent/baseline.git/run.patch")
os.mkfifo(patch)
oid = hashlib.sha1(b"blob 11\0/etc/passwd").hexdigest()[:7]
evil = (
    "diff --git a/evil b/evil\nnew file mode 120000\nindex 0000000.." + oid + "\n--- /dev/null\n"
    "+++ b/evil\n@@ -0,0 +1 @@\n+/etc/passwd\n\\ No newline at end of file\n"
).encode()
def swap():
    with open(patch, "rb") as f:
        forged = f.read() + evil
    with open(patch + ".new", "wb") as f:
        f.write(forged)
    fifo = os.open(patch, os.O_RDONLY | os.O_NONBLOCK)
    os.rename(patch + ".new", patch)
    late = os.open(f"/proc/self/fd/{fifo}", os.O_WRONLY)
    os.write(late, forged)
    os.close(late)
threading.Thread(target=swap, daemon=True).start()
"""


async def test_a_link_put_into_the_patch_after_the_judgement_is_cut(sandbox_image, tmp_path):
    """The links were judged in the sandbox, then the diff was read back from a file there: a process
    the agent left running could put an outward link into the text in between, and `git apply` planted
    it. The text that comes back is judged on the host: the link is cut and named."""
    from qwq_agent.agent.patch import workspace_changes
    from qwq_agent.agent.workspace import open_sandbox

    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "README.md").write_text("hello\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    async with open_sandbox(workspace=repo) as sandbox:
        done = await sandbox.shell("echo more >> README.md && ln -s README.md readme")
        assert done.exit_code == 0, done.stderr
        started = await sandbox.python(SWAP_THE_PATCH)
        assert started.error is None, started.error
        changes = await workspace_changes(sandbox)
    assert "evil -> /etc/passwd (absolute)" in changes.left_out, changes.left_out
    assert "+more" in changes.text and "b/evil" not in changes.text
    patch = tmp_path / "p.diff"
    patch.write_text(changes.text)
    await asyncio.to_thread(subprocess.run, ["git", "apply", str(patch)], cwd=repo, check=True, timeout=60)
    assert not (repo / "evil").is_symlink()
    assert str((repo / "readme").readlink()) == "README.md"


async def test_a_list_of_links_left_out_past_its_cap_is_named_in_part(sandbox_image, tmp_path):
    """The list of links left out (`left-out` in the sandbox's home) was read back whole, 24 KB per shell
    call, whatever size the sandbox gave it (a sparse gigabyte: most of an hour and as much host memory).
    It is read up to MAX_LEFT_OUT_BYTES; a line says the rest are not named; they stay out of the patch."""
    from qwq_agent.agent.patch import MAX_LEFT_OUT_BYTES, workspace_changes
    from qwq_agent.agent.workspace import open_sandbox

    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "data.txt").write_text("one\n")
    links = MAX_LEFT_OUT_BYTES // 4000 + 40  # targets of 4,000 bytes: past the cap
    make = (
        "import os\nos.chdir('/workspace')\n"
        f"for i in range({links}): os.symlink('/' + 'x' * 3999, f'l{{i:04}}')\n"
        "open('data.txt', 'a').write('two\\n')"
    )
    async with open_sandbox(workspace=folder) as sandbox:
        done = await sandbox.python(make)
        assert done.error is None, done.error
        changes = await workspace_changes(sandbox)
    named = [line for line in changes.left_out if line.endswith(" (absolute)")]
    assert 0 < len(named) < links and len(named) * 4000 <= MAX_LEFT_OUT_BYTES
    note = f"past the {MAX_LEFT_OUT_BYTES} read back (they are out of the patch all the same)"
    assert [line for line in changes.left_out if line not in named] == [
        # path, target and why, each ended by a NUL
        f"more links, not named: the list of those left out is {links * (6 + 4001 + 9)} bytes, {note}"
    ]
    assert "+two" in changes.text and "l0000" not in changes.text and "xxxx" not in changes.text


async def test_collecting_the_patch_has_one_deadline_and_says_when_it_passed(sandbox_image, tmp_path):
    """Nothing bounded the collection as a whole: each of its many shell calls had its own limit, and the
    agent controls how slow each is (here a clean filter that sleeps in its git config). Past the
    deadline it stops, and says so."""
    from qwq_agent.agent.patch import PatchError, workspace_changes
    from qwq_agent.agent.workspace import open_sandbox

    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "data.txt").write_text("one\n")
    stall = (
        "git config --global filter.slow.clean 'sleep 600; cat' && echo '*.txt filter=slow' > .gitattributes"
        " && echo two >> data.txt"
    )
    async with open_sandbox(workspace=folder) as sandbox:
        done = await sandbox.shell(stall)
        assert done.exit_code == 0, done.stderr
        with pytest.raises(PatchError, match="collecting the workspace patch took more than 5 s"):
            await workspace_changes(sandbox, timeout=5)
        assert (await sandbox.shell("echo alive")).stdout == "alive\n"  # the sandbox is still usable


async def test_the_sandbox_users_git_config_does_not_change_the_patchs_form(sandbox_image, tmp_path):
    """The agent may set git config of its own (no a/ b/ prefixes, no space on empty context lines): the
    patch keeps git's usual form, which the host's check of the text reads and `git apply -p1` takes."""
    from qwq_agent.agent.patch import workspace_changes
    from qwq_agent.agent.workspace import open_sandbox

    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "data.txt").write_text("one\n\ntwo\n")
    command = (
        "git config --global diff.noprefix true && git config --global diff.suppressBlankEmpty true"
        " && printf 'one\\n\\nthree\\n' > data.txt"
    )
    async with open_sandbox(workspace=folder) as sandbox:
        done = await sandbox.shell(command)
        assert done.exit_code == 0, done.stderr
        changes = await workspace_changes(sandbox)
    assert changes.text.startswith("diff --git a/data.txt b/data.txt\n"), changes.text
    patch = tmp_path / "p.diff"
    patch.write_text(changes.text)
    await asyncio.to_thread(subprocess.run, ["git", "apply", str(patch)], cwd=folder, check=True, timeout=60)
    assert (folder / "data.txt").read_text() == "one\n\nthree\n"


async def test_a_git_directory_the_agent_wrote_as_plain_files_loses_its_config_in_the_patch(
    sandbox_image, tmp_path
):
    """The agent writes `tools/HEAD`, `tools/config` (work tree `..`, a `core.fsmonitor` command),
    `tools/objects/`, `tools/refs/` and a hook as plain files: the sandbox's own diff carries them, and
    `git status` in `tools/` after `git apply` ran the command on the host. Copy-back leaves such files
    out; the patch now does too, and the run's warning names them."""
    from qwq_agent import Agent, SGLangClient, build_tools
    from qwq_agent.agent.workspace import open_sandbox

    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "README.md").write_text("hello\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    mark = tmp_path / "PWNED"
    command = (
        "mkdir -p tools/objects/info tools/refs/heads tools/hooks && echo 'ref: refs/heads/main' > tools/HEAD"
        " && echo x > tools/objects/info/keep && echo x > tools/refs/heads/keep"
        f" && printf '[core]\\n\\tbare = false\\n\\tworktree = ..\\n\\tfsmonitor = \"touch {mark}; false\"\\n'"
        f" > tools/config && printf 'touch {mark}\\n' > tools/hooks/post-checkout && echo more >> README.md"
    )
    turns = ["Write.\n</think>\n\n" + call("shell", command=command), "Done.\n</think>\n\nWritten."]
    trace = tmp_path / "trace.jsonl"
    async with ScriptedModelServer(turns) as server, SGLangClient(server.url) as model:
        async with open_sandbox(workspace=repo) as sandbox:
            agent = Agent(model, build_tools(["shell"]), sandbox=sandbox, trace_path=trace)
            result = await agent.run("Write the files.")
    assert result.status == "completed" and result.patch is not None
    warnings = left_out_warnings(trace)
    assert len(warnings) == 1
    message = warnings[0]["message"]
    for named in ("tools/config (git would run commands from it)", "tools/hooks/post-checkout (git would"):
        assert named in message
    assert "b/tools/config" not in result.patch and "b/tools/hooks" not in result.patch
    assert "+more" in result.patch and "b/tools/HEAD" in result.patch
    patch = tmp_path / "p.diff"
    patch.write_text(result.patch)
    await asyncio.to_thread(subprocess.run, ["git", "apply", str(patch)], cwd=repo, check=True, timeout=60)
    status = ["git", "status"]
    await asyncio.to_thread(subprocess.run, status, cwd=repo / "tools", capture_output=True, timeout=60)
    assert not mark.exists()


async def test_the_host_judges_the_patch_text_off_the_event_loop(sandbox_image, tmp_path, monkeypatch):
    """Up to 32 MB of the sandbox's text is parsed and its links followed on the host: seconds at worst,
    which once ran on the event loop and stalled every other run and stream of the process."""
    import threading

    from qwq_agent.agent import patch_text
    from qwq_agent.agent.patch import workspace_changes
    from qwq_agent.agent.workspace import open_sandbox

    judged_on: list[int] = []
    judge = patch_text.cut_outward_links

    def watched(*args):  # the real judgement, noting the thread it ran on
        judged_on.append(threading.get_ident())
        return judge(*args)

    monkeypatch.setattr(patch_text, "cut_outward_links", watched)
    folder = tmp_path / "plain"
    folder.mkdir()
    async with open_sandbox(workspace=folder) as sandbox:
        done = await sandbox.shell("echo new > new.txt && ln -s /etc/passwd out")
        assert done.exit_code == 0, done.stderr
        changes = await workspace_changes(sandbox)
    assert "+new" in changes.text and changes.left_out == ["out -> /etc/passwd (absolute)"]
    assert judged_on and judged_on[0] != threading.get_ident()


LATIN1_WORK = (
    r"printf 'caf\351\n' > new.txt && printf 'Ren\351\nligne 2 modifi\351e\n' > old.txt"
    r""" && printf 'x\n' > "$(printf 'nom\351.txt')" && printf 'd\n' > "$(printf 'brouillon\351 ')" """
)


def latin1_repo(path: Path) -> Path:
    """A repository with a Latin-1 (not UTF-8) source file."""
    path.mkdir()
    git(path, "init", "-q")
    (path / "old.txt").write_bytes("Ren\xe9\nligne 2\n".encode("latin-1"))
    git(path, "add", "-A")
    git(path, "commit", "-qm", "init")
    return path


def assert_latin1_work(repo: Path) -> None:
    """What LATIN1_WORK leaves, byte for byte (less the name that ends in a blank, cut from the patch)."""
    assert (repo / "new.txt").read_bytes() == b"caf\xe9\n"
    assert (repo / "old.txt").read_bytes() == b"Ren\xe9\nligne 2 modifi\xe9e\n"
    names = sorted(name for name in os.listdir(bytes(repo)) if name != b".git")
    assert names == [b"new.txt", b"nom\xe9.txt", b"old.txt"]


def test_bytes_that_are_not_utf8_reach_the_patch_file_exact(sandbox_image, tmp_path):
    """A Latin-1 file, edited and added, and a name that is not UTF-8: `--patch FILE` holds git's bytes
    (each such byte once became U+FFFD: a new file corrupted, an edit that no longer applied)."""
    repo = latin1_repo(tmp_path / "repo")
    turns = ["Write.\n</think>\n\n" + call("shell", command=LATIN1_WORK), "Done.\n</think>\n\nDone."]
    patch = tmp_path / "out.diff"
    with ScriptedModelServer(turns) as server:
        proc = subprocess.run(
            [*CLI, "run", "Write files.", "--model-url", server.url, "--tools", "shell",
             "--workspace", str(repo), "--patch", str(patch), "--trace", str(tmp_path / "t.jsonl"), "--json"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert b"+caf\xe9\n" in patch.read_bytes()
    git(repo, "apply", str(patch))
    assert_latin1_work(repo)


async def test_run_result_patch_keeps_bytes_that_are_not_utf8(sandbox_image, tmp_path):
    """`RunResult.patch` holds them as lone surrogates (`patch_bytes` gives git's bytes back, and
    `apply_patch` applies them exact); in JSON they are `\\xNN` escapes, as in the entries named."""
    from qwq_agent import Agent, SGLangClient, build_tools
    from qwq_agent.agent.patch import apply_patch
    from qwq_agent.agent.workspace import open_sandbox

    repo = latin1_repo(tmp_path / "repo")
    turns = ["Write.\n</think>\n\n" + call("shell", command=LATIN1_WORK), "Done.\n</think>\n\nDone."]
    trace = tmp_path / "t.jsonl"
    async with ScriptedModelServer(turns) as server, SGLangClient(server.url) as model:
        async with open_sandbox(workspace=repo) as sandbox:
            agent = Agent(model, build_tools(["shell"]), sandbox=sandbox, trace_path=trace)
            result = await agent.run("Write files.")
            assert result.status == "completed" and result.patch is not None
            await apply_patch(sandbox, result.patch)  # the baseline's files back, then the patch
            done = await sandbox.shell(
                "base64 -w0 new.txt; echo; base64 -w0 old.txt; echo; ls -b", cwd="/workspace"
            )
    new, old, *names = done.stdout.split("\n")
    assert (
        base64.b64decode(new) == b"caf\xe9\n" and base64.b64decode(old) == b"Ren\xe9\nligne 2 modifi\xe9e\n"
    )
    assert "nom\\351.txt" in names, done.stdout
    assert "caf\\\\xe9" in result.model_dump_json()
    (warning,) = left_out_warnings(trace)
    assert "brouillon\\xe9  (a name that ends in a blank" in warning["message"]
    from qwq_agent.agent.patch import patch_bytes

    (tmp_path / "p.diff").write_bytes(patch_bytes(result.patch))
    git(repo, "apply", str(tmp_path / "p.diff"))
    assert_latin1_work(repo)


@pytest.mark.skipif(os.geteuid() != 0, reason="a small tmpfs needs root (unshare -m, mount)")
def test_a_patch_the_disk_cannot_hold_is_kept_beside_the_trace_and_named(sandbox_image, tmp_path):
    """--patch FILE on a full disk: by then the sandbox is gone and the patch exists only in memory. It
    was lost: a truncated FILE, 'cannot use FILE ... check the path' as bad input (exit 2), no trace
    line. Now FILE is left as it was, the patch is kept beside the trace and named there, the trace
    line is printed, and the run exits 1 (completed, but an output it was asked for is missing)."""
    import shlex

    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "README").write_text("hello\n")
    full, listing = tmp_path / "full", tmp_path / "listing"
    full.mkdir()
    work = "seq -f 'agent work, line %g' 1 4000 > result.txt"  # ~100 KB of patch for a 64 KB disk
    turns = ["Work.\n</think>\n\n" + call("shell", command=work), "Done.\n</think>\n\nDone."]
    patch, trace = full / "work.diff", tmp_path / "t.jsonl"
    with ScriptedModelServer(turns) as server:
        argv = [*CLI, "run", "Write it.", "--model-url", server.url, "--tools", "shell",
                "--workspace", str(ws), "--patch", str(patch), "--trace", str(trace)]  # fmt: skip
        # A private mount namespace: the tmpfs goes with the command, whatever happens to the test.
        shell = (
            f"mount -t tmpfs -o size=64k tmpfs {full} && echo earlier > {patch} && {shlex.join(argv)}; "
            f"rc=$?; ls -A {full} > {listing} && cat {patch} >> {listing}; exit $rc"
        )
        proc = subprocess.run(
            ["unshare", "-m", "sh", "-c", shell], capture_output=True, text=True, timeout=300
        )
    out = " ".join((proc.stdout + proc.stderr).split())  # the live view prints on stdout
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    kept = tmp_path / "t.patch"
    assert (
        f"the patch could not be written to {patch} (No space left on device); it was kept in {kept}" in out
    )
    assert f"trace: {trace}" in out
    assert "+agent work, line 4000\n" in kept.read_text()
    git(ws, "init", "-q")  # the kept patch applies as FILE's would have
    git(ws, "apply", str(kept))
    assert (ws / "result.txt").read_text().endswith("agent work, line 4000\n")
    assert listing.read_text() == "work.diff\nearlier\n"  # FILE as it was, no temporary file left


def test_no_patch_to_write_says_so_and_exits_1(sandbox_image, tmp_path):
    """--patch FILE when the patch could not be collected (here the agent removed the baseline git
    directory; a home it filled did the same): FILE was never written, nothing said so, and the run
    exited 0 "completed" - a `run ... --patch f && git apply f` went on without the agent's work."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "README").write_text("hello\n")
    work = "echo 'the fix' > fix.txt && rm -rf ~/.qwq-agent"
    turns = ["Work.\n</think>\n\n" + call("shell", command=work), "Done.\n</think>\n\nDone."]
    patch, trace = tmp_path / "work.diff", tmp_path / "t.jsonl"
    with ScriptedModelServer(turns) as server:
        proc = subprocess.run(
            [*CLI, "run", "Fix it.", "--model-url", server.url, "--tools", "shell",
             "--workspace", str(ws), "--patch", str(patch), "--trace", str(trace)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    out = " ".join((proc.stdout + proc.stderr).split())  # the live view prints on stdout
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    assert re.search(
        rf"no patch: diffing /workspace with git failed \(exit \d+\): .*; {patch} not written", out
    )
    assert not patch.exists()
    assert f"trace: {trace}" in out


async def test_a_full_home_still_gives_the_patch(sandbox_image, tmp_path):
    """The baseline git directory is in the sandbox user's home, which the agent can fill (a pip cache,
    a dataset in ~): git could not write the end snapshot there and the patch was lost. It is taken
    again with its scratch files in /tmp; with /tmp full too, the error says both."""
    from qwq_agent.agent.patch import PatchError, record_baseline, workspace_changes
    from qwq_agent.agent.workspace import open_sandbox

    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "data.txt").write_text("one\n")
    async with open_sandbox(workspace=folder, home_size="2m", tmp_size="2m") as sandbox:
        await record_baseline(sandbox)
        await sandbox.shell("echo two >> data.txt && seq 1 20000 > new.txt && cat /dev/zero > ~/blob")
        changes = await workspace_changes(sandbox)
        assert "+two" in changes.text and "+20000" in changes.text
        left = await sandbox.shell("ls -A /tmp")
        assert left.stdout == "", left.stdout  # the scratch folder went with the patch
        await sandbox.shell("cat /dev/zero > /tmp/blob")
        with pytest.raises(PatchError, match=r"No space left on device.*again in /tmp.*No space left"):
            await workspace_changes(sandbox)
