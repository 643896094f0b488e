"""`--copy-back DIR`: what a hostile or merely busy sandbox can make of the copy written on the host.

Real parts only: a real sandbox, real folders on the host, the CLI's own `copy_back` printing to a console.
"""

from __future__ import annotations

import asyncio
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from git_repo import git, host_git
from rich.console import Console
from small_disk import tmpfs

from qwq_agent.agent.workspace import open_sandbox
from qwq_agent.cli.branch_cmd import copy_back

pytestmark = [pytest.mark.docker]


async def _copy_back(sandbox, dest: Path, trace: Path | None = None) -> tuple[bool, str]:
    """Copy /workspace into `dest` as the CLI does; whether it worked and what it printed (one line each)."""
    out = io.StringIO()
    ok = await copy_back(sandbox, dest, Console(file=out, width=100_000), "the workspace", trace)
    return ok, out.getvalue()


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs: writing more than that fails with ENOSPC, as on a full disk."""
    with tmpfs(tmp_path / "disk", "64k") as mnt:
        yield mnt


def _project(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README.md").write_text("hello\n")
    return repo


async def test_a_link_into_a_folder_beside_the_copy_is_left_out_and_named(sandbox_image, tmp_path) -> None:
    """`workspace/notes.md -> ../otherproject/secrets.env` stays inside DIR but leaves DIR/workspace: kept,
    the copied-back workspace aimed at the operator's other files in DIR (`cat` showed them, `>>` wrote them)."""
    dest = tmp_path / "out"
    (dest / "otherproject").mkdir(parents=True)
    (dest / "otherproject" / "secrets.env").write_text("API_KEY=operator-secret\n")
    async with open_sandbox(workspace=_project(tmp_path)) as sb:
        r = await sb.shell(
            "ln -s ../otherproject/secrets.env notes.md && mkdir docs && ln -s ../README.md docs/readme "
            "&& ln -s ../workspace/README.md byname",
            timeout=60,
        )
        assert r.exit_code == 0, r
        ok, said = await _copy_back(sb, dest)
    ws = dest / "workspace"
    assert ok, said
    assert "notes.md" not in [p.name for p in ws.iterdir()]
    assert "workspace/notes.md -> ../otherproject/secrets.env (leads out of the destination)" in said
    # Links that stay inside the folder copied back are kept, also one that climbs out and back by name.
    assert (ws / "docs" / "readme").read_text() == "hello\n" and (ws / "byname").read_text() == "hello\n"
    assert sorted(p.name for p in dest.iterdir()) == ["otherproject", "workspace"]
    assert [p.name for p in (dest / "otherproject").iterdir()] == ["secrets.env"]


# The supervisor's own download walk, run in a real sandbox's interpreter (its package is readable there)
# with a `_send` that collects the archive: a chunk going out is the one moment we can act between two
# steps of the walk without a race, as a thread the agent left running might.
_WALK = r"""
import json, os, sys, tarfile
sys.path.insert(0, "/opt/qwq")
from supervisor import archives
from supervisor.framing import RequestError

W = "/workspace/t"
os.makedirs(W + "/d")
with open(W + "/d/a.bin", "wb") as f:
    f.write(os.urandom(5 * 1024 * 1024))  # past one chunk: a chunk goes out while the walk is in d/
open(W + "/d/enabled", "w").write("mine\n")
if BIG:  # walked before d/: the first chunk goes out while it is
    with open(W + "/big.bin", "wb") as f:
        f.write(b"b" * (12 * 1024 * 1024))
    os.utime(W + "/big.bin", (1, 1))  # last written long ago: a write during the walk changes its mtime


def header(name, size=0, kind=tarfile.REGTYPE, link=""):
    t = tarfile.TarInfo(name)
    t.size, t.type, t.linkname, t.mode = size, kind, link, 0o644
    return t.tobuf(format=tarfile.USTAR_FORMAT)


# A file the agent wrote: if a member's header promised more bytes than came, the host read on into
# this, and wherever it landed, every block sends it on to `t/l -> ..` and a file through that link.
payload = b"print('ran on the host')\n"
sled = b"".join(header(f"t/s{i}", (63 - i) * 512) for i in range(64))
sled += header("t/l", kind=tarfile.SYMTYPE, link="..")
sled += header("t/l/otherproject/conftest.py", len(payload)) + payload.ljust(512, b"\0") + b"\0" * 1024
open(W + "/e_sled", "wb").write(sled)

sent = []


def send(frame, blob):
    sent.append(bytes(blob))
    if len(sent) == 1:
        ACT()


try:
    reply = archives.download({"path": W, "_send": send})
except RequestError as exc:
    reply = {"error": str(exc)}
archive = b"".join(sent)
try:
    with tarfile.open(fileobj=__import__("io").BytesIO(archive), mode="r:") as tar:
        reply["parsed"] = tar.getnames()
        reply["sizes"] = {m.name: m.size for m in tar.getmembers()}
        if "t/big.bin" in reply["sizes"]:
            reply["tail_of_big"] = tar.extractfile("t/big.bin").read()[-16:].hex()
except tarfile.TarError as exc:
    reply["parsed"] = f"broken: {exc}"
reply["from_sys"] = b"madvise" in archive
print(json.dumps(reply))
"""


async def _walk(act: str, *, big: bool) -> dict:
    """The supervisor's reply (or its error) with `act` run as the first chunk goes out, and the names
    tarfile (as the host) reads from the archive it streamed."""
    import json

    async with open_sandbox() as sb:
        r = await sb.python(f"BIG = {big}\ndef ACT():\n    {act}\n" + _WALK, timeout=60)
        assert r.error is None, r.error
        return json.loads(r.stdout)


async def test_a_folder_swapped_for_a_link_mid_walk_is_left_out_not_read_through(sandbox_image) -> None:
    """`d` becomes a link into /sys between its listing and its files: `d/enabled` was opened through it
    (O_NOFOLLOW guards only the last component), sysfs said 4096 bytes and gave fewer, the header went
    out with no data behind it, and the host read the next file's contents as headers: `t/l -> ..` and
    `t/l/otherproject/conftest.py`, planted outside the copy. Now the file is left out and named."""
    reply = await _walk(
        'os.rename(W + "/d", W + "/d_old"); os.symlink("/sys/kernel/mm/transparent_hugepage", W + "/d")',
        big=False,
    )
    assert "error" not in reply, reply
    assert reply["parsed"] == ["t", "t/d", "t/d/a.bin", "t/e_sled"]
    assert reply["skipped"] == ["t/d/enabled: changed while it was archived"]
    assert reply["entries"] == len(reply["parsed"]) and not reply["from_sys"]


# The walk again, with a thread of the agent's (it swaps a folder and a link with renameat2's
# RENAME_EXCHANGE, over and over) played at one exact moment: as the walk lists the folder `d`.
_SWAP = r"""
import io, json, os, sys, tarfile
sys.path.insert(0, "/opt/qwq")
from supervisor import archives

W = "/workspace/t"
os.makedirs(W + "/a/refs")
open(W + "/a/HEAD", "w").write("ref: refs/heads/main\n")
os.makedirs(W + "/d/objects")
os.symlink("a", W + "/l")
os.symlink("a", W + "/k")
listing = os.scandir


def scandir(fd):
    if isinstance(fd, int) and os.readlink(f"/proc/self/fd/{fd}") == W + "/d":
        os.rename(W + "/d", W + "/d_was")
        os.rename(W + "/l", W + "/d")
    return listing(fd)


os.scandir = scandir
sent = []
reply = archives.download({"path": W, "_send": lambda frame, blob: sent.append(bytes(blob))})
with tarfile.open(fileobj=io.BytesIO(b"".join(sent)), mode="r:") as tar:
    reply["members"] = [[m.name, m.type.decode(), m.linkname] for m in tar.getmembers()]
print(json.dumps(reply))
"""


async def test_a_folder_swapped_for_a_link_as_it_is_listed_keeps_its_folder_header(sandbox_image) -> None:
    """The walk listed `d` (a folder, opened O_NOFOLLOW), then took its header from a second lstat by
    path: by then `d` was the link `l -> a`, so the archive held `t/d -> a` with `d`'s children after it,
    and the host wrote them through the link into `a` (making it a bare repository whose config git
    runs). The header now comes from the fstat of the fd that was listed: a folder, whatever is at the
    path by then."""
    import json

    async with open_sandbox() as sb:
        r = await sb.python(_SWAP, timeout=60)
    assert r.error is None, r.error
    reply = json.loads(r.stdout)
    members = {name: (kind, link) for name, kind, link in reply["members"]}
    assert members["t/d"] == (tarfile.DIRTYPE.decode(), ""), reply
    assert not [m for m in reply["members"] if m[1] == tarfile.SYMTYPE.decode() and m[0] == "t/d"]
    assert members["t/k"] == (tarfile.SYMTYPE.decode(), "a")  # a link that stays one is archived as one


async def test_a_big_file_that_shrinks_while_it_is_sent_is_named_changed_not_the_end(sandbox_image) -> None:
    """A checkpoint a thread rewrites (truncate, then write) while its bytes stream out: its header had
    claimed the size it had, and the short read stopped the whole download, so one busy file cost every
    other file of the run (the sandbox is gone right after). Now its data is padded with zeros to that
    size, the walk goes on, and the reply names its entry as changed: the host leaves just it out."""
    reply = await _walk('os.truncate(W + "/big.bin", 1024 * 1024)', big=True)
    assert "error" not in reply, reply
    assert reply["parsed"] == ["t", "t/big.bin", "t/d", "t/d/a.bin", "t/d/enabled", "t/e_sled"]
    assert reply["sizes"]["t/big.bin"] == 12 * 1024 * 1024 and reply["tail_of_big"] == "00" * 16
    assert reply["changed"] == [1] and reply["entries"] == 6 and reply["cut"] == []


async def test_a_big_file_rewritten_in_place_while_it_is_sent_is_named_changed(sandbox_image) -> None:
    """A checkpoint or database overwritten in place at the same size while its bytes stream out came
    back a silent mix of old and new contents: only a short read or growth was looked at. Its mtime and
    ctime are now compared before and after: changed, and the host leaves it out and names it."""
    reply = await _walk('open(W + "/big.bin", "r+b").write(b"n" * 4096)', big=True)
    assert "error" not in reply, reply
    assert reply["sizes"]["t/big.bin"] == 12 * 1024 * 1024
    assert reply["changed"] == [1] and reply["cut"] == [] and reply["entries"] == 6


# The walk of a folder of small files (each read whole before its header goes out), with a writer of
# the agent's landing at one exact moment: right after the walk read `t/state.json`.
_SMALL = r"""
import io, json, os, sys
sys.path.insert(0, "/opt/qwq")
from supervisor import archives

W = "/workspace/t"
os.makedirs(W)
for name in ("state.json", "other.txt"):
    open(W + "/" + name, "w").write("old " * 100)
    os.utime(W + "/" + name, (1, 1))
contents = archives._contents


def racing(f, info):
    out = contents(f, info)
    if info.name == "t/state.json":
        with open(W + "/state.json", "r+") as g:
            g.write("new ")
    return out


archives._contents = racing
reply = archives.download({"path": W, "_send": lambda frame, blob: None})
print(json.dumps(reply))
"""


async def test_a_small_file_written_while_it_is_read_is_named_changed(sandbox_image) -> None:
    """The same for a file read whole: a write landing in the middle of the read went unseen."""
    import json

    async with open_sandbox() as sb:
        r = await sb.python(_SMALL, timeout=60)
    assert r.error is None, r.error
    reply = json.loads(r.stdout)
    # Entries: t, t/other.txt, t/state.json.
    assert reply["entries"] == 3 and reply["changed"] == [2] and reply["cut"] == []


async def test_a_file_that_grows_while_it_is_sent_is_cut_and_said_so(sandbox_image) -> None:
    """Only the size its header claimed is sent (a log still being written); the reply says it is cut."""
    reply = await _walk('open(W + "/big.bin", "ab").write(b"g" * 4096)', big=True)
    assert "error" not in reply, reply
    assert reply["sizes"]["t/big.bin"] == 12 * 1024 * 1024 and reply["tail_of_big"] == "62" * 16
    assert reply["changed"] == [] and reply["cut"] == ["t/big.bin"] and reply["cut_count"] == 1


async def test_the_count_of_entries_left_out_is_the_true_one(sandbox_image, tmp_path) -> None:
    """200 FIFOs printed "51 entries were not copied back": the supervisor names 50, the host appended
    "... and 150 more" as a 51st name, and the printed count was the length of that list."""
    async with open_sandbox(workspace=_project(tmp_path)) as sb:
        r = await sb.shell("for i in $(seq 1 200); do mkfifo p$i; done && ln -s /etc/passwd pw", timeout=60)
        assert r.exit_code == 0, r
        ok, said = await _copy_back(sb, tmp_path / "out")
        res = await sb.download("/workspace", tmp_path / "again")
    assert ok and "201 entries were not copied back" in said, said
    assert res.skipped_count == 201 and len(res.skipped) == 51
    assert res.skipped[-1] == "workspace/pw -> /etc/passwd ('workspace/pw' is a link to an absolute path)"
    assert not [s for s in res.skipped if "more" in s]


async def test_executable_files_stay_executable_and_nothing_else_is_kept(sandbox_image, tmp_path) -> None:
    """Every file came back 0644: scripts lost +x, and in a repository `git status` showed each of them
    modified. The sandbox's permission bits now come back (the umask applies, the owner can always read
    and write); setuid, setgid and sticky never do."""
    repo = _project(tmp_path)
    (repo / "run_tests.sh").write_text("#!/bin/sh\necho ok\n")
    (repo / "run_tests.sh").chmod(0o755)
    await asyncio.to_thread(git, repo, "init", "-q")
    await asyncio.to_thread(git, repo, "add", "-A")
    await asyncio.to_thread(git, repo, "commit", "-qm", "init")
    async with open_sandbox(workspace=repo) as sb:
        r = await sb.shell(
            "printf '#!/bin/sh\\necho built\\n' > build.sh && chmod +x build.sh && echo x > suid && "
            "chmod 6755 suid && echo x > group_x && chmod 0654 group_x && echo x > sticky && chmod 1600 sticky",
            timeout=60,
        )
        assert r.exit_code == 0, r
        ok, said = await _copy_back(sb, tmp_path / "out")
    assert ok, said
    ws = tmp_path / "out" / "workspace"
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in ws.iterdir() if p.is_file()}
    exe, plain = 0o755 & ~umask, 0o644 & ~umask
    assert modes == {"README.md": plain, "run_tests.sh": exe, "build.sh": exe, "suid": exe,
                     "group_x": 0o654 & ~umask, "sticky": 0o600}  # fmt: skip
    status = await asyncio.to_thread(git, ws, "status", "--short")
    assert status.split("\n") == ["?? build.sh", "?? group_x", "?? sticky", "?? suid", ""], status


async def test_private_files_and_folders_stay_private_there_and_back(sandbox_image, tmp_path) -> None:
    """The operator's 0600 `.env` and key and 0700 `secrets/` came back world-readable (files were written
    0644, folders with mkdir's defaults), and the upload had made the folder 0755 in the sandbox. Both
    ways now keep what the modes withheld; the owner keeps read and write (and a folder's search)."""
    repo = _project(tmp_path)
    (repo / "secrets").mkdir()
    for name in (".env", "secrets/id_ed25519"):
        (repo / name).write_text("operator-secret\n")
        (repo / name).chmod(0o600)
    (repo / "secrets").chmod(0o700)
    (repo / "shared").mkdir()
    (repo / "shared").chmod(0o750)
    async with open_sandbox(workspace=repo) as sb:
        r = await sb.shell(
            "mkdir -p made/deep && chmod 0500 made && echo x > ro && chmod 0400 ro && "
            "stat -c '%a %n' .env secrets secrets/id_ed25519 shared",
            timeout=60,
        )
        assert r.exit_code == 0, r
        assert r.stdout.split("\n")[:4] == ["600 .env", "700 secrets", "600 secrets/id_ed25519", "750 shared"]
        ok, said = await _copy_back(sb, tmp_path / "out")
    assert ok, said
    ws = tmp_path / "out" / "workspace"
    umask = os.umask(0)
    os.umask(umask)
    modes = {p: stat.S_IMODE((ws / p).stat().st_mode) for p in (".env", "secrets", "secrets/id_ed25519")}
    assert modes == {".env": 0o600, "secrets": 0o700, "secrets/id_ed25519": 0o600}
    assert stat.S_IMODE((ws / "shared").stat().st_mode) == 0o750 & ~umask
    assert stat.S_IMODE((ws / "made").stat().st_mode) == 0o700  # the owner can still write in it
    assert stat.S_IMODE((ws / "ro").stat().st_mode) == 0o600
    assert (ws / "made" / "deep").is_dir()


async def test_files_git_would_run_commands_from_are_not_copied_back(sandbox_image, tmp_path) -> None:
    """The sandbox's `.git/config` came back as it was: `core.fsmonitor` ran its command on the host at
    the operator's next `git status`, and new hooks ran at the next commit. Now a git folder's config,
    commondir and hooks and a `.git` file are left out and named on a line of their own, configs (an
    embedded bare repository's too) come back without what could run, and git still works. Hooks never
    come back, the user's own included."""
    repo = _project(tmp_path)
    await asyncio.to_thread(git, repo, "init", "-q")
    await asyncio.to_thread(git, repo, "remote", "add", "origin", "https://example.com/repo.git")
    (repo / ".git" / "hooks" / "pre-commit").write_text("#!/bin/sh\nexit 0\n")
    (repo / ".git" / "hooks" / "pre-commit").chmod(0o755)
    await asyncio.to_thread(git, repo, "add", "-A")
    await asyncio.to_thread(git, repo, "commit", "-qm", "init")
    nested = repo / "nested"  # a second repository inside
    nested.mkdir()
    (nested / "a.txt").write_text("a\n")
    for args in (("init", "-q"), ("add", "-A"), ("commit", "-qm", "nested")):
        await asyncio.to_thread(git, nested, *args)
    marker = tmp_path / "RAN_ON_THE_HOST"
    run = f"touch {marker}; false"
    async with open_sandbox(workspace=repo) as sb:
        r = await sb.shell(
            f"git config core.fsmonitor '{run}' && git config alias.st '!{run}' && "
            f"printf '#!/bin/sh\\n{run}\\n' > .git/hooks/post-checkout && chmod +x .git/hooks/post-checkout && "
            f"git init -q --bare --template= evil && git config -f evil/config core.fsmonitor '{run}' && "
            "git config -f evil/config core.bare false && git config -f evil/config core.worktree .. && "
            "mkdir sub && echo 'gitdir: ../evil' > sub/.git && echo ../evil > .git/commondir && "
            "ln -s .git/hooks hk && printf '#!/bin/sh\\ntrue\\n' > hk/pre-push && chmod +x hk/pre-push",
            timeout=60,
        )
        assert r.exit_code == 0, r
        ok, said = await _copy_back(sb, tmp_path / "out")
        res = await sb.download("/workspace", tmp_path / "again")
    ws = tmp_path / "out" / "workspace"
    assert ok, said
    for folder in (ws, ws / "sub", ws / "evil", ws / "nested"):
        await asyncio.to_thread(host_git, folder, tmp_path, "status")
    await asyncio.to_thread(host_git, ws, tmp_path, "st")
    assert not marker.exists(), said
    left = [
        "workspace/.git/commondir",
        "workspace/.git/hooks/",  # `hk/pre-push` was written into it through the link `hk`
        "workspace/nested/.git/hooks/",
        "workspace/sub/.git",
    ]
    assert res.git_left_out == left and res.skipped == []
    assert "4 entries were not copied back, as git would run commands from them on the host" in said
    why = "settings git could run commands from (or not known to be safe)"
    assert res.git_settings_dropped == [
        f"workspace/.git/config: kept remotes/branches and basic settings, dropped 2 {why}: core.fsmonitor, alias.st",
        "workspace/.git/config: remotes point to origin -> https://example.com/repo.git",
        f"workspace/evil/config: kept remotes/branches and basic settings, dropped 2 {why}: core.fsmonitor, core.worktree",
    ]  # the nested repository's config had nothing to drop
    remotes = await asyncio.to_thread(host_git, ws, tmp_path, "remote", "-v")
    assert "origin\thttps://example.com/repo.git (fetch)" in remotes.stdout
    for folder in (ws, ws / "nested"):
        status = await asyncio.to_thread(host_git, folder, tmp_path, "status", "--short")
        assert status.returncode == 0, status.stderr  # git works without .git/config


async def test_old_style_remote_files_are_not_copied_back(sandbox_image, tmp_path) -> None:
    """Git still reads `.git/remotes/<name>` and `.git/branches/<name>` for a remote `.git/config` lacks:
    the sandbox dropped `origin` from the config (nothing for its allowlist to see) and planted it as such
    a file, with a push refspec deleting `release`; the operator's next plain `git push` in the copy
    deleted it upstream. Now both folders are left out of every git folder and named on a line."""
    upstream = tmp_path / "upstream.git"
    await asyncio.to_thread(git, tmp_path, "init", "-q", "--bare", str(upstream))
    repo = _project(tmp_path)
    await asyncio.to_thread(git, repo, "init", "-q", "-b", "main")
    await asyncio.to_thread(git, repo, "add", "-A")
    await asyncio.to_thread(git, repo, "commit", "-qm", "init")
    await asyncio.to_thread(git, repo, "remote", "add", "origin", str(upstream))
    await asyncio.to_thread(git, repo, "push", "-q", "origin", "main", "main:release")
    async with open_sandbox(workspace=repo) as sb:
        r = await sb.shell(
            "git config --remove-section remote.origin && mkdir -p .git/remotes .git/branches && "
            f"printf 'URL: {upstream}\\nPush: :refs/heads/release\\n' > .git/remotes/origin && "
            f"echo '{upstream}#release' > .git/branches/up",
            timeout=60,
        )
        assert r.exit_code == 0, r
        ok, said = await _copy_back(sb, tmp_path / "out")
    ws = tmp_path / "out" / "workspace"
    assert ok, said
    assert not (ws / ".git" / "remotes").exists() and not (ws / ".git" / "branches").exists()
    push = await asyncio.to_thread(host_git, ws, tmp_path, "push")
    assert push.returncode != 0  # no remote left to push to
    assert "release" in await asyncio.to_thread(git, upstream, "branch", "--list")
    assert (
        "workspace/.git/branches/: left out: old-style remote files, which git reads as remotes beside "
        "its config, unchecked (a push refspec there could delete branches on your remote): up"
    ) in said
    assert "workspace/.git/remotes/: left out: old-style remote files" in said and ": origin\n" in said


async def test_the_users_own_config_cannot_lead_git_to_files_the_sandbox_rewrote(
    sandbox_image, tmp_path
) -> None:
    """The user's `.git/config`, unchanged, came back as theirs; but it delegates to worktree files the
    sandbox may rewrite at will (`include.path = ../.gitconfig`, `core.hooksPath = .githooks`, an alias
    running `./tools/check.sh`, a hook that is a link to it): the sandbox's fsmonitor and hook ran at the
    operator's next `git status` and commit. Now hooks never come back, and a config comes back rebuilt
    from the settings that can run nothing and name no other file (remotes, branches, user, core basics),
    the rest named on a line."""
    repo = _project(tmp_path)
    (repo / ".gitconfig").write_text("[core]\n\tautocrlf = false\n")
    for script in (".githooks/pre-commit", "tools/check.sh"):
        (repo / script).parent.mkdir(exist_ok=True)
        (repo / script).write_text("#!/bin/sh\nexit 0\n")
        (repo / script).chmod(0o755)
    await asyncio.to_thread(git, repo, "init", "-q", "-b", "main")
    for key, value in (
        ("include.path", "../.gitconfig"),
        ("core.hooksPath", ".githooks"),
        ("alias.check", "!./tools/check.sh"),
        ("remote.origin.url", "https://example.com/repo.git"),
        ("branch.main.remote", "origin"),
        ("branch.main.merge", "refs/heads/main"),
        ("user.name", "Dev"),
    ):
        await asyncio.to_thread(git, repo, "config", key, value)
    (repo / ".git" / "hooks" / "pre-push").symlink_to("../../tools/check.sh")
    await asyncio.to_thread(git, repo, "add", "-A")
    await asyncio.to_thread(git, repo, "commit", "-qm", "init")
    marker = tmp_path / "RAN_ON_THE_HOST"
    planted = f"printf '#!/bin/sh\\ntouch {marker}\\nexit 0\\n' >"
    async with open_sandbox(workspace=repo) as sb:
        r = await sb.shell(
            f"printf '[core]\\n\\tfsmonitor = \"touch {marker}; false\"\\n' > .gitconfig && "
            f"{planted} .githooks/pre-commit && {planted} tools/check.sh",
            timeout=60,
        )
        assert r.exit_code == 0, r
        ok, said = await _copy_back(sb, tmp_path / "out")
    ws = tmp_path / "out" / "workspace"
    assert ok, said
    await asyncio.to_thread(host_git, ws, tmp_path, "status")
    (ws / "README.md").write_text("edited by the operator\n")
    commit = await asyncio.to_thread(host_git, ws, tmp_path, "-c", "user.email=d@e", "commit", "-qam", "mine")
    assert commit.returncode == 0, commit.stderr
    await asyncio.to_thread(host_git, ws, tmp_path, "check")
    assert not marker.exists(), said
    assert not (ws / ".git" / "hooks").exists()
    listed = await asyncio.to_thread(host_git, ws, tmp_path, "config", "--file", ".git/config", "--list")
    settings = listed.stdout.splitlines()
    assert "remote.origin.url=https://example.com/repo.git" in settings
    assert "branch.main.remote=origin" in settings and "branch.main.merge=refs/heads/main" in settings
    assert "user.name=Dev" in settings and "core.bare=false" in settings
    assert not [
        s for s in settings if s.startswith(("include.", "core.hookspath", "alias.", "core.fsmonitor"))
    ]
    assert (
        "workspace/.git/config: kept remotes/branches and basic settings, dropped 3 settings git could "
        "run commands from (or not known to be safe): core.hookspath, include.path, alias.check"
    ) in said


async def test_a_path_too_long_for_the_host_costs_only_itself(sandbox_image, tmp_path) -> None:
    """A legal 4,085-byte path in the sandbox is longer than PATH_MAX under the host's DIR: the host
    raised ENAMETOOLONG, removed everything it had written, and the run's work was lost. Now that entry
    alone is left out and named."""
    make_deep = (
        "import os; p = 'deep/' + '/'.join(['d' * 50] * 79); os.makedirs(p); open(p + '/' + 'f' * 40, 'w')"
    )
    async with open_sandbox(workspace=_project(tmp_path)) as sb:
        r = await sb.shell(f'echo keep > important.txt && python3 -c "{make_deep}"', timeout=60)
        assert r.exit_code == 0, r
        ok, said = await _copy_back(sb, tmp_path / "out")
    ws = tmp_path / "out" / "workspace"
    assert ok, said
    assert (ws / "important.txt").read_text() == "keep\n" and (ws / "README.md").read_text() == "hello\n"
    assert "entries were not copied back" in said and "its path on the host would be longer than" in said


# ~200 KB of results for a 64 KiB disk.
RESULTS = "mkdir results && echo MARK > results/summary.txt && head -c 200000 /dev/urandom > results/data.bin"


def test_a_copy_back_the_disk_cannot_hold_keeps_the_archive_beside_the_trace(
    sandbox_image, tmp_path, small_disk
):
    """The copy-back removed what it wrote on the full disk (right), then the sandbox, which held the only
    copy of the agent's work, was removed and the downloaded archive dropped: the work was gone, and the
    line did not say so. Now the archive is kept beside the trace and the line names it."""
    import json
    import sys

    from qwq_agent.testing.scripted_server import ScriptedModelServer

    call = (
        "<tool_call>\n" + json.dumps({"name": "shell", "arguments": {"command": RESULTS}}) + "\n</tool_call>"
    )
    turns = ["Work.\n</think>\n\n" + call, "Done.\n</think>\n\nResults are in results/."]
    dest, trace = small_disk / "out", tmp_path / "t.jsonl"
    with ScriptedModelServer(turns) as server:
        proc = subprocess.run(
            [sys.executable, "-m", "qwq_agent.cli.main", "run", "Compute.", "--model-url", server.url,
             "--tools", "shell", "--copy-back", str(dest), "--trace", str(trace)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    out = " ".join((proc.stdout + proc.stderr).split())  # the live view prints on stdout
    assert proc.returncode == 1, out
    kept = tmp_path / "t.workspace.tar"
    assert (
        f"the workspace was not copied back to {dest}: [Errno 28] No space left on device" in out
        and f"the archive the sandbox sent was kept in {kept}" in out
    ), out
    assert "Traceback" not in out and f"trace: {trace}" in out
    with tarfile.open(kept) as tar:
        assert tar.extractfile("workspace/results/summary.txt").read() == b"MARK\n"
        assert tar.getmember("workspace/results/data.bin").size == 200000
    assert os.listdir(dest) == []  # what the copy-back wrote is removed


async def test_without_a_trace_the_archive_is_kept_in_the_temporary_folder(
    sandbox_image, tmp_path, small_disk, monkeypatch
) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the standard library's own setting
    async with open_sandbox() as sb:
        assert (await sb.shell(RESULTS)).exit_code == 0
        ok, said = await _copy_back(sb, small_disk / "out")
    kept = tmp_path / "qwq-agent-out.workspace.tar"
    assert not ok and f"the archive the sandbox sent was kept in {kept}" in said, said
    with tarfile.open(kept) as tar:
        assert tar.extractfile("workspace/results/summary.txt").read() == b"MARK\n"


async def test_a_copy_back_whose_folder_was_taken_meanwhile_keeps_the_archive(
    sandbox_image, tmp_path
) -> None:
    """Two runs with the same `--copy-back out/`: both pass the check at their start, the first to end
    writes `out/workspace`, and the second's copy-back failed with `DestinationExists`. The archive was
    kept only on a failing disk, so it was dropped and the sandbox removed: the run's work was lost. Now
    any failure with the archive in hand keeps it beside the trace, and the line names it."""
    dest, trace = tmp_path / "out", tmp_path / "run2.jsonl"
    (dest / "workspace").mkdir(parents=True)
    (dest / "workspace" / "README.md").write_text("run 1's copy\n")
    async with open_sandbox(workspace=_project(tmp_path)) as sb:
        assert (await sb.shell(RESULTS)).exit_code == 0
        ok, said = await _copy_back(sb, dest, trace)
    kept = tmp_path / "run2.workspace.tar"
    assert not ok and "already exists" in said and f"the archive the sandbox sent was kept in {kept}" in said
    with tarfile.open(kept) as tar:
        assert tar.extractfile("workspace/results/summary.txt").read() == b"MARK\n"
    assert (dest / "workspace" / "README.md").read_text() == "run 1's copy\n"  # the other run's, untouched
