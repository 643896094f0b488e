"""Workspaces that real work leaves behind, which once broke a sandbox call or the whole sandbox.

Names that are not UTF-8, trees of unreadable directories, a venv's links out of the workspace, folders
of many empty files, a download while the tmpfs mounts hold most of the memory, and threads a cell left
parked in the interpreter. Each test checks the call's answer and that the sandbox and its state live on.
"""

from __future__ import annotations

import hashlib

import pytest
from tar_builder import tar_of

from qwq_agent.sandbox import (
    DockerSandbox,
    InvalidRequest,
    PathOutsideWorkspace,
    ResourceExhausted,
    SandboxConfig,
    ToolError,
)
from qwq_agent.tools.search_code import SearchCodeArgs, format_matches

pytestmark = [pytest.mark.docker, pytest.mark.asyncio(loop_scope="session")]


async def test_a_name_that_is_not_utf8_is_shown_escaped(shared_sandbox: DockerSandbox) -> None:
    sb = shared_sandbox
    r = await sb.shell(
        "mkdir -p /workspace/latin1 && cd /workspace/latin1 && touch $'r\\xe9sum\\xe9.txt' && mkfifo $'p\\xff'"
    )
    assert r.exit_code == 0, r
    try:
        listing = (await sb.view("/workspace/latin1")).output
        assert "/workspace/latin1/r\\xe9sum\\xe9.txt" in listing
        listing.encode("utf-8")  # what the model request does with it
        snap = await sb.snapshot()
        assert any("latin1/p\\xff" in s for s in snap.skipped), snap.skipped
        snap.model_dump_json()
    finally:
        await sb.shell("rm -rf /workspace/latin1")


async def test_search_finds_its_match_beside_many_unreadable_dirs(shared_sandbox: DockerSandbox) -> None:
    sb = shared_sandbox
    r = await sb.shell(
        "mkdir -p /workspace/locked_tree/locked && cd /workspace/locked_tree/locked && "
        "for i in $(seq 1500); do mkdir d_with_a_longish_name_$i; done && chmod 000 d_* && "
        "echo needle_in_locked_tree > /workspace/locked_tree/zz_target.txt",
        timeout=60,
    )
    assert r.exit_code == 0, r
    try:
        res = await sb.search("needle_in_locked_tree", path="/workspace/locked_tree", timeout=20)
        assert [m.path for m in res.matches] == ["/workspace/locked_tree/zz_target.txt"]
        # Finished before its deadline (rg never stalled on its error pipe); the locked folders are said.
        assert not res.timed_out and not res.stopped_early and res.unreadable
        with pytest.raises(InvalidRequest, match="regex"):  # what stderr still carries is still reported
            await sb.search("(unclosed", path="/workspace/locked_tree")
    finally:
        await sb.shell("chmod -R 755 /workspace/locked_tree; rm -rf /workspace/locked_tree", timeout=60)


async def test_no_match_beside_an_unreadable_dir_is_no_matches_not_a_failure(
    shared_sandbox: DockerSandbox,
) -> None:
    # ripgrep exits 2 when it could not read something, and --no-messages keeps the reason off stderr:
    # with no match the search failed with "ripgrep failed: " and nothing after it (with a match it was
    # a plain result).
    sb = shared_sandbox
    r = await sb.shell(
        "mkdir -p /workspace/ur/locked && chmod 000 /workspace/ur/locked && echo hay > /workspace/ur/a"
    )
    assert r.exit_code == 0, r
    try:
        res = await sb.search("needle_not_there", path="/workspace/ur")
        # Not a failure, but not "searched everything" either: the locked folder was not read.
        assert res.matches == [] and res.unreadable and not res.complete and not res.timed_out, res
        args = SearchCodeArgs(pattern="needle_not_there", path="/workspace/ur")
        assert "could not be read (permissions) and were not searched" in format_matches(args, res)
        found = await sb.search("hay", path="/workspace/ur")
        assert [m.path for m in found.matches] == ["/workspace/ur/a"] and found.unreadable
        readable = await sb.search("hay", path="/workspace/ur/a")
        assert readable.complete and not readable.unreadable
    finally:
        await sb.shell("chmod -R 755 /workspace/ur; rm -rf /workspace/ur")


async def test_download_skips_links_out_of_the_workspace_and_keeps_the_rest(
    shared_sandbox: DockerSandbox, tmp_path
) -> None:
    sb = shared_sandbox
    r = await sb.shell(
        "mkdir -p /workspace/cb/docs && cd /workspace/cb && echo result > result.txt && echo hi > README.md && "
        "ln -s ../README.md docs/README.md && python3 -m venv --without-pip .venv",
        timeout=60,
    )
    assert r.exit_code == 0, r
    try:
        res = await sb.download("/workspace/cb", tmp_path)
        assert (tmp_path / "cb" / "result.txt").read_text() == "result\n"
        assert (tmp_path / "cb" / "docs" / "README.md").read_text() == "hi\n"
        assert any(s.startswith("cb/.venv/bin/python3 -> /") for s in res.skipped), res.skipped
        assert not (tmp_path / "cb" / ".venv" / "bin" / "python3").is_symlink()
    finally:
        await sb.shell("rm -rf /workspace/cb")


async def test_a_download_counts_tar_headers_so_many_empty_files_are_refused(
    sandbox_image: str, tmp_path
) -> None:
    config = SandboxConfig(image=sandbox_image, max_download_bytes=1 << 20, auto_replace=False)
    async with DockerSandbox.create(config) as sb:
        await sb.python("import os\nos.makedirs('/workspace/many')\nfor i in range(3000):\n"
                        "    open(f'/workspace/many/{i}', 'w').close()\nmarker = 'kept'")  # fmt: skip
        with pytest.raises(InvalidRequest, match="larger than the download limit"):
            await sb.download("/workspace/many", tmp_path)  # no content, but 3000 headers of 512 bytes
        assert list(tmp_path.iterdir()) == []
        assert (await sb.python("marker")).value == "'kept'"
        await sb.shell("mkdir /workspace/few && touch /workspace/few/a /workspace/few/b")
        assert (await sb.download("/workspace/few", tmp_path)).paths == [str(tmp_path / "few")]
        assert sorted(p.name for p in (tmp_path / "few").iterdir()) == ["a", "b"]


async def test_a_download_with_the_tmpfs_mostly_full_leaves_the_sandbox_alive(
    sandbox_image: str, tmp_path
) -> None:
    """The archive streams out in chunks: it is never held whole (nor base64'd) in the container's memory."""
    config = SandboxConfig(image=sandbox_image, memory="512m", workspace_size="420m", auto_replace=False)
    async with DockerSandbox.create(config) as sb:
        r = await sb.shell(
            "head -c $((40*1024*1024)) /dev/urandom > /workspace/result.bin && "
            "head -c $((360*1024*1024)) /dev/zero > /workspace/filler.bin && sha256sum /workspace/result.bin",
            timeout=120,
        )
        assert r.exit_code == 0, r
        await sb.python("state = 'kept'")
        res = await sb.download("/workspace/result.bin", tmp_path)
        assert res.bytes == 40 * 1024 * 1024 and not res.state_lost
        import hashlib

        digest = hashlib.sha256((tmp_path / "result.bin").read_bytes()).hexdigest()
        assert r.stdout.split()[0] == digest
        assert (await sb.python("state")).value == "'kept'"


async def test_threads_a_cell_left_behind_do_not_lock_the_shell_out(sandbox_image: str) -> None:
    config = SandboxConfig(image=sandbox_image, pids_limit=64, auto_replace=False)
    async with DockerSandbox.create(config) as sb:
        r = await sb.python(
            "import threading\nev = threading.Event()\nn = 0\ntry:\n    while True:\n"
            "        threading.Thread(target=ev.wait, daemon=True).start(); n += 1\n"
            "except RuntimeError:\n    pass\nn",
            timeout=30,
        )
        assert r.value is not None and int(r.value) > 32, r
        res = await sb.shell("echo ok", timeout=10)
        assert res.stdout == "ok\n" and res.state_lost and "holds" in res.stderr and "restarted" in res.stderr
        # The restart forgot the cell that left the threads: a snapshot must not replay it.
        assert sb.cells.recorded() == []
        assert (await sb.python("'n' in dir()")).value == "False"  # the fresh interpreter
        assert (await sb.shell("echo again", timeout=10)).stdout == "again\n"


async def test_a_huge_single_line_match_is_clipped_not_the_sandbox(sandbox_image: str) -> None:
    # rg --json writes a matching line whole with one entry per match: a 4 MB minified line matching
    # `a` is a ~180 MB record, and parsing it took the supervisor past the container's memory.
    async with DockerSandbox.create(SandboxConfig(image=sandbox_image)) as sb:
        await sb.python("work = 'three hours of state'")
        await sb.shell(
            "python3 -c \"open('bundle.min.js','w').write('a' * (4 * 1024 * 1024))\"; printf 'x\\na\\n' > small.txt"
        )
        res = await sb.search("a", path="/workspace", timeout=60)
        by_path = {m.path: m for m in res.matches}
        big = by_path["/workspace/bundle.min.js"]
        assert big.line_number == 1 and big.line == "a" * 2000
        assert by_path["/workspace/small.txt"].line_number == 2
        assert (await sb.python("work")).value == "'three hours of state'"


async def test_a_fifo_socket_or_unreadable_folder_is_left_out_of_a_download_and_named(
    shared_sandbox: DockerSandbox, tmp_path
) -> None:
    """One of these once cost the whole copy-back (the host refused the FIFO, tar.add the folder)."""
    sb = shared_sandbox
    r = await sb.shell(
        "mkdir -p /workspace/sp/locked && cd /workspace/sp && echo important > result.txt && mkfifo .pipe && "
        "python3 -c \"import socket; socket.socket(socket.AF_UNIX).bind('sock')\" && chmod 000 locked"
    )
    assert r.exit_code == 0, r
    try:
        res = await sb.download("/workspace/sp", tmp_path)
        assert (tmp_path / "sp" / "result.txt").read_text() == "important\n"
        assert sorted(res.skipped) == ["sp/.pipe: FIFO", "sp/locked/: Permission denied", "sp/sock: socket"]
        assert sorted(p.name for p in (tmp_path / "sp").iterdir()) == ["result.txt"]
    finally:
        await sb.shell("chmod 755 /workspace/sp/locked; rm -rf /workspace/sp")


async def test_a_project_with_a_venv_and_relative_links_uploads(
    shared_sandbox: DockerSandbox, tmp_path
) -> None:
    ws = tmp_path / "proj"
    (ws / "docs").mkdir(parents=True)
    (ws / ".venv" / "bin").mkdir(parents=True)
    (ws / "README.md").write_text("hi\n")
    (ws / "docs" / "README.md").symlink_to("../README.md")
    # What `python -m venv` leaves: relative links to one that leaves the project.
    (ws / ".venv" / "bin" / "python3.11").symlink_to("/root/.pyenv/versions/3.11.7/bin/python3.11")
    (ws / ".venv" / "bin" / "python3").symlink_to("python3.11")
    res = await shared_sandbox.upload(ws, "/workspace/proj", contents=True)
    absolute = [s.split(" -> ")[0] for s in res.skipped if s.endswith("(absolute link)")]
    assert absolute == [".venv/bin/python3.11"], res.skipped
    r = await shared_sandbox.shell("cat /workspace/proj/docs/README.md; ls /workspace/proj/.venv/bin")
    assert r.stdout.startswith("hi\n")
    assert not set(absolute) & {f".venv/bin/{name}" for name in r.stdout.split()}
    await shared_sandbox.shell("rm -rf /workspace/proj")


async def test_the_editor_opens_a_non_utf8_name_as_the_listing_shows_it(
    shared_sandbox: DockerSandbox,
) -> None:
    sb = shared_sandbox
    r = await sb.shell("mkdir -p /workspace/l1 && printf 'data\\n' > /workspace/l1/$'r\\xe9sum\\xe9.txt'")
    assert r.exit_code == 0, r
    try:
        shown = "/workspace/l1/r\\xe9sum\\xe9.txt"
        assert shown in (await sb.view("/workspace/l1")).output
        assert "data" in (await sb.view(shown)).output
        await sb.str_replace(shown, "data", "edited")
        assert (await sb.shell("cat /workspace/l1/$'r\\xe9sum\\xe9.txt'")).stdout == "edited\n"
    finally:
        await sb.shell("rm -rf /workspace/l1")


async def test_a_short_line_with_a_huge_record_keeps_its_text(shared_sandbox: DockerSandbox) -> None:
    """7,000 matches of `a` make a record over 256 KB although the line fits the preview window."""
    sb = shared_sandbox
    await sb.python("open('/workspace/dense.txt','w').write('x = \"' + 'a' * 7000 + '\"\\n')")
    try:
        res = await sb.search("a", path="/workspace/dense.txt")
        assert res.matches[0].line_number == 1 and res.matches[0].line.startswith('x = "aaa')
    finally:
        await sb.shell("rm -f /workspace/dense.txt")


HOG = r"""
import os, time
end = time.time() + 6
while time.time() < end:
    try:
        pid = os.fork()
    except OSError:
        continue
    if pid == 0:
        end = min(end, time.time() + 6)
"""


async def test_python_starts_again_after_a_reclaim_whose_restart_failed(sandbox_image: str) -> None:
    """The reclaim's restart could not start a new interpreter while a pid hog took the freed pids; every
    later python call then said 'the interpreter is stopped'. (Whether the restart loses the race to the
    hog depends on the scheduler; the hog keeps forking so that it usually does.)"""
    import asyncio

    config = SandboxConfig(image=sandbox_image, pids_limit=64, auto_replace=False)
    async with DockerSandbox.create(config) as sb:
        await sb.python(
            "import threading\nev = threading.Event()\nts = [threading.Thread(target=ev.wait, daemon=True)"
            " for _ in range(40)]\nfor t in ts: t.start()"
        )
        await sb.shell(f"cat > /tmp/hog.py <<'EOF2'\n{HOG}\nEOF2")
        hog = asyncio.create_task(sb.shell("python3 /tmp/hog.py 2>/dev/null; true", timeout=30))
        loop = asyncio.get_running_loop()
        end = loop.time() + 20
        reclaimed = False
        while not reclaimed and not hog.done() and loop.time() < end:  # calls while the pids are held
            try:
                reclaimed = (await sb.shell("echo hi", timeout=10)).state_lost
            except ResourceExhausted:
                continue  # not even a request thread could start: try again
        await hog
        assert (await sb.python("1 + 1", timeout=20)).value == "2"


async def test_a_long_multibyte_name_can_be_edited(shared_sandbox: DockerSandbox) -> None:
    # 60 emoji are 240 bytes, a legal name (NAME_MAX is 255 bytes); the editor's temporary file took the
    # name's first 100 *characters* (400 bytes) and every write failed with "File name too long".
    sb = shared_sandbox
    name = "/workspace/mb/" + "\U0001f600" * 60
    try:
        assert "File created successfully" in (await sb.create_file(name, "a = 1\n")).output
        assert "has been edited" in (await sb.str_replace(name, "a = 1", "a = 2")).output
        assert "has been edited" in (await sb.insert(name, 1, "b = 3")).output
        assert "undone successfully" in (await sb.undo_edit(name)).output
        r = await sb.shell("cat /workspace/mb/*; ls -a /workspace/mb | wc -l")
        assert r.stdout == "a = 2\n3\n", r  # `.`, `..` and the file: no temporary file left
    finally:
        await sb.shell("rm -rf /workspace/mb")


async def test_dotdot_after_a_symlink_names_what_the_kernel_opens(shared_sandbox: DockerSandbox) -> None:
    # `link/../x` with link -> a/b is a/x to the kernel (and to the shell and python); the editor
    # normalised `..` lexically first and edited /workspace/dd/x instead, saying so.
    sb = shared_sandbox
    r = await sb.shell(
        "mkdir -p /workspace/dd/a/b && cd /workspace/dd && echo 'value = 1' > a/x && echo 'value = 1' > x"
        " && ln -s a/b link && ln -s / up"
    )
    assert r.exit_code == 0, r
    try:
        r = await sb.str_replace("/workspace/dd/link/../x", "value = 1", "value = 2")
        assert r.output.startswith("The file /workspace/dd/a/x has been edited."), r.output
        cat = await sb.shell("cd /workspace/dd && cat link/../x a/x x")
        assert cat.stdout == "value = 2\nvalue = 2\nvalue = 1\n", cat
        assert "value = 2" in (await sb.view("/workspace/dd/link/../x")).output
        created = await sb.create_file("/workspace/dd/link/../new.py", "n = 1\n")
        assert created.output == "File created successfully at: /workspace/dd/a/new.py"
        # The workspace check is on the kernel's path: `up/..` is `/`, lexically it looked like dd/.
        with pytest.raises(PathOutsideWorkspace):
            await sb.create_file("/workspace/dd/up/../tmp/planted", "x")
        assert (await sb.shell("ls /workspace/dd")).stdout == "a\nlink\nup\nx\n"
        # Paths without a link before `..` are shown as written, normalised.
        plain = await sb.str_replace("/workspace/dd/a/../x", "value = 1", "value = 3")
        assert plain.output.startswith("The file /workspace/dd/x has been edited."), plain.output
    finally:
        await sb.shell("rm -rf /workspace/dd")


async def test_a_download_of_dotdot_after_a_link_is_named_as_the_host_expects(
    shared_sandbox: DockerSandbox, tmp_path
) -> None:
    # With link -> a/b, `link/..` is a (the kernel's reading, the editor's since), while the host names the
    # archive's one top-level entry from the path as written: the supervisor named it `a`, and the host
    # refused the whole download ("not under 'ws'").
    sb = shared_sandbox
    r = await sb.shell(
        "mkdir -p /workspace/ws/a/b && echo kept > /workspace/ws/a/note && ln -s a/b /workspace/ws/link"
    )
    assert r.exit_code == 0, r
    try:
        res = await sb.download("/workspace/ws/link/..", tmp_path)
        assert (tmp_path / "ws" / "note").read_text() == "kept\n", res
    finally:
        await sb.shell("rm -rf /workspace/ws")


async def test_an_upload_the_workspace_cannot_hold_changes_nothing_and_names_the_file(
    sandbox_image: str,
) -> None:
    """A full workspace: the upload unlinked a file it replaced and wrote the new one in place, so the old
    version was gone and a cut one left, the files before it in the archive stayed, and the error ("No
    space left on device") named nothing. Now it is all or nothing (each file written beside its place,
    renamed into place once all are), and the error names the file and says nothing was changed."""
    config = SandboxConfig(image=sandbox_image, workspace_size="1m", auto_replace=False)
    old = "the operator's old notes\n" * 100
    async with DockerSandbox.create(config) as sb:
        await sb.create_file("/workspace/data.bin", old)
        await sb.create_file("/workspace/first.txt", "first, old\n")
        assert (await sb.shell("head -c 600000 /dev/zero > /workspace/other")).exit_code == 0
        archive = tar_of(
            ("first.txt", "file", b"first, new\n"),
            ("new/inner.txt", "file", b"inner\n"),
            ("data.bin", "file", b"x" * 600_000),
        )
        with pytest.raises(ToolError) as raised:
            await sb.upload_archive(archive, "/workspace")
        said = str(raised.value)
        assert "data.bin" in said and "No space left on device" in said and "nothing was changed" in said
        r = await sb.shell("cat first.txt; md5sum < data.bin; ls -A", cwd="/workspace")
        assert r.stdout.split("\n")[0] == "first, old"
        assert r.stdout.split("\n")[1].startswith(hashlib.md5(old.encode()).hexdigest())
        assert sorted(r.stdout.split("\n")[2:-1]) == ["data.bin", "first.txt", "other"]  # no temporary file
        # With room again, the same archive goes in whole.
        await sb.shell("rm /workspace/other")
        done = await sb.upload_archive(archive, "/workspace")
        assert done.entries == 3
        r = await sb.shell("cat first.txt new/inner.txt; stat -c %s data.bin; ls -A", cwd="/workspace")
        assert r.stdout.split("\n")[:3] == ["first, new", "inner", "600000"]
        assert sorted(r.stdout.split("\n")[3:-1]) == ["data.bin", "first.txt", "new"]


async def test_a_patch_the_workspace_cannot_hold_leaves_no_cut_patch_file(
    sandbox_image: str, tmp_path
) -> None:
    """`apply_patch` uploads its patch file into /workspace: on a full workspace a cut
    `.qwq-agent-apply-*.patch` stayed there, for the next patch to pick up."""
    from qwq_agent.agent.patch import apply_patch, record_baseline
    from qwq_agent.agent.workspace import upload_workspace

    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "data.txt").write_text("one\n")
    config = SandboxConfig(image=sandbox_image, workspace_size="1m", auto_replace=False)
    async with DockerSandbox.create(config) as sb:
        await upload_workspace(sb, folder)
        baseline = await record_baseline(sb)
        await sb.shell("head -c 1000000 /dev/zero > /workspace/filler")
        patch = "".join(f"+line {i}\n" for i in range(20000))
        patch = f"diff --git a/big.txt b/big.txt\nnew file mode 100644\n--- /dev/null\n+++ b/big.txt\n@@ -0,0 +1,20000 @@\n{patch}"
        with pytest.raises(ToolError, match="nothing was changed"):
            await apply_patch(sb, patch, baseline)
        r = await sb.shell("ls -A /workspace")
        assert sorted(r.stdout.split()) == ["data.txt", "filler"]


async def _listing(sb: DockerSandbox, folder: str) -> list[str]:
    r = await sb.shell(f"cd {folder} && find . -mindepth 1 -printf '%y %p%l\\n' | sort")
    return r.stdout.split("\n")[:-1]


async def test_an_upload_holding_a_file_and_a_folder_of_one_name_changes_nothing(
    shared_sandbox: DockerSandbox,
) -> None:
    """A file `a` and a file `a/b` in one archive: staging made a real folder `a` for `a/b`, the commit
    renamed `x` into place (its old contents gone), then failed on `a` and left the folder. The whole plan
    is checked while staging now: refused, nothing changed, in either order."""
    sb = shared_sandbox
    await sb.shell("mkdir -p /workspace/same && echo old > /workspace/same/x")
    try:
        for entries in (
            (("x", "file", b"new\n"), ("a", "file", b"A\n"), ("a/b", "file", b"B\n")),
            (("x", "file", b"new\n"), ("a/b", "file", b"B\n"), ("a", "file", b"A\n")),
            (("x", "file", b"new\n"), ("a", "link", "x"), ("a/b", "file", b"B\n")),  # `a` -> the file `x`
        ):
            with pytest.raises(ToolError, match="nothing was changed"):
                await sb.upload_archive(tar_of(*entries), "/workspace/same")
            assert await _listing(sb, "/workspace/same") == ["f ./x"], entries
            assert (await sb.shell("cat /workspace/same/x")).stdout == "old\n"
    finally:
        await sb.shell("rm -rf /workspace/same")


async def test_an_upload_writes_through_the_links_it_places(shared_sandbox: DockerSandbox) -> None:
    """Entries under a link the same archive places land where that link leads, as extracting the
    archive in order does: `lnk -> sub` then `lnk/f` is `sub/f` (it failed and left folders); a link
    retargeted from `d1` to `d2` then `l/f` writes `d2/f` (the temporary went to d1 and stayed there)."""
    sb = shared_sandbox
    await sb.shell(
        "mkdir -p /workspace/via/d1 /workspace/via/d2 && cd /workspace/via && ln -s d1 l && echo old > d1/f"
    )
    try:
        archive = tar_of(("sub", "dir", None), ("lnk", "link", "sub"), ("lnk/f", "file", b"F\n"),
                         ("l", "link", "d2"), ("l/f", "file", b"new\n"))  # fmt: skip
        done = await sb.upload_archive(archive, "/workspace/via")
        assert done.entries == 5
        assert await _listing(sb, "/workspace/via") == [
            "d ./d1", "d ./d2", "d ./sub", "f ./d1/f", "f ./d2/f", "f ./sub/f", "l ./ld2", "l ./lnksub",
        ]  # fmt: skip
        r = await sb.shell("cat d1/f d2/f sub/f", cwd="/workspace/via")
        assert r.stdout == "old\nnew\nF\n"
        # A link leading out of the workspace through a link placed by the same archive is refused.
        await sb.shell("ln -s /etc /workspace/via/etc")
        with pytest.raises(Exception, match="outside the workspace"):
            await sb.upload_archive(
                tar_of(("hop", "link", "etc"), ("hop/new_dir/f", "file", b"x")), "/workspace/via"
            )
        assert (await sb.shell("ls /etc/new_dir /workspace/via/hop")).exit_code != 0
    finally:
        await sb.shell("rm -rf /workspace/via")
