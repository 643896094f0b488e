"""Pieces of the sandbox layer that need no Docker: config, output capping, host-side archive checks."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from git_repo import host_git
from tar_builder import tar_of

from qwq_agent.sandbox import InvalidRequest, PathOutsideWorkspace, SandboxConfig, ToolError, UnsafeArchive
from qwq_agent.sandbox.archive_extract import _extract_counted, _safe_extract
from qwq_agent.sandbox.config import USER_ID_RANGE, parse_bytes
from qwq_agent.sandbox.errors import SandboxError, error_from_reply
from qwq_agent.sandbox.supervisor import Capture


def test_sizes_parse_and_bad_ones_are_refused() -> None:
    assert (
        parse_bytes("512m") == 512 * 1024**2 and parse_bytes("1g") == 1024**3 and parse_bytes(65536) == 65536
    )
    assert SandboxConfig(memory="256m").memory == 256 * 1024**2
    with pytest.raises(ValueError, match="not a size"):
        SandboxConfig(memory="lots")


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ({"memroy": "256m"}, "memroy"),  # before: ignored, the sandbox got the default limit
        ({"python_timeout_s": float("nan")}, "python_timeout_s"),
        ({"lifetime_s": float("inf")}, "lifetime_s"),
        ({"cpus": -1.0}, "cpus"),
    ],
    ids=["typo", "nan_timeout", "endless_lifetime", "negative_cpus"],
)
def test_a_misspelt_or_meaningless_setting_is_refused(setting: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SandboxConfig(**setting)


def test_container_body_defaults_are_hardened() -> None:
    body = SandboxConfig().container_body("img", {"qwq-agent": "1"})
    host = body["HostConfig"]
    assert host["NetworkMode"] == "none" and host["CapDrop"] == ["ALL"] and host["ReadonlyRootfs"]
    assert host["Memory"] == host["MemorySwap"] and host["LogConfig"]["Type"] == "none"
    assert body["User"] == "0:0" and body["StdinOnce"] and not body["Tty"]
    assert sorted(host["CapAdd"]) == ["KILL", "SETGID", "SETPCAP", "SETUID"]
    env = dict(e.split("=", 1) for e in body["Env"])
    assert env["QWQ_SUPERVISOR_USER"] == "999:999"
    # User code runs under a uid of its own per container, the one its tmpfs mounts belong to.
    uid, _, gid = env["QWQ_USER"].partition(":")
    assert int(uid) in USER_ID_RANGE and gid == uid
    assert f"uid={uid},gid={gid}," in host["Tmpfs"]["/workspace"]
    assert SandboxConfig().container_body("img", {})["Env"] != body["Env"]
    explicit = SandboxConfig(user="4321:4321").container_body("img", {})
    assert "QWQ_USER=4321:4321" in explicit["Env"]
    with pytest.raises(ValueError, match="another uid"):
        SandboxConfig(user="1000:1000", supervisor_user="1000:1000")
    with pytest.raises(ValueError, match="non-root"):
        SandboxConfig(user="0:0")


def test_capture_keeps_head_and_tail_and_counts_the_rest() -> None:
    cap = Capture(head=4, tail=3)
    for chunk in (b"ab", b"cdef", b"ghij"):
        cap.add(chunk)
    assert cap.dropped() == 3 and cap.text() == "abcd\n[... 3 bytes dropped ...]\nhij"
    small = Capture(head=10, tail=10)
    small.add(b"\xffok")
    assert small.text() == "\\xffok" and small.dropped() == 0


def test_capture_cuts_output_between_characters_not_inside_one() -> None:
    # Cut at byte positions, the halves of a character reached the model as `\xe2\x82` ... `\xac`.
    cap = Capture(head=10, tail=10)
    cap.add("€".encode() * 30)  # 3 bytes each: 10 bytes end and start inside a character
    assert cap.text() == "€€€\n[... 72 bytes dropped ...]\n€€€" and cap.dropped() == 72
    whole = Capture(head=10, tail=10)  # nothing dropped: a character across head and tail stays whole
    whole.add("€".encode() * 6)
    assert whole.text() == "€" * 6 and whole.dropped() == 0
    raw = Capture(head=4, tail=4)  # bytes the program wrote that are not UTF-8 are still shown as such
    raw.add(b"\xff\xfeab" + b"x" * 10 + b"cd\xfe\xff")
    assert raw.text() == "\\xff\\xfeab\n[... 10 bytes dropped ...]\ncd\\xfe\\xff"


def test_streamed_output_stops_before_a_character_its_cap_cuts() -> None:
    from qwq_agent.sandbox.supervisor.streaming import OutputStream

    sent: list[dict] = []
    stream = OutputStream(sent.append, 1, "n", limit=10)
    stream.add("stdout", "€".encode() * 5)
    stream.flush(final=True)
    assert "".join(f["data"] for f in sent) == "€€€" and sent[-1].get("capped")


def test_supervisor_errors_map_to_types() -> None:
    assert isinstance(
        error_from_reply({"type": "PathOutsideWorkspace", "message": "m"}), PathOutsideWorkspace
    )
    assert isinstance(error_from_reply({"type": "ToolError", "message": "m"}), ToolError)
    assert isinstance(error_from_reply({"type": "UnsafeArchive", "message": "m"}), InvalidRequest)
    err = error_from_reply({"type": "InternalError", "message": "boom"})
    assert type(err) is SandboxError and str(err) == "InternalError: boom"


def _tar(name: str, *, link: str | None = None) -> bytes:
    return tar_of(("fine.txt", "file", b"ok"), (name, "file", b"x") if link is None else (name, "link", link))


@pytest.mark.parametrize(
    ("name", "link"), [("../escape.txt", None), ("/abs.txt", None), ("../lnk", "x"), ("/lnk", "x")]
)
def test_downloads_from_a_hostile_sandbox_cannot_write_outside(tmp_path, name: str, link: str | None) -> None:
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchive, match="nothing was written"):
        _safe_extract(_tar(name, link=link), dest)
    assert list(dest.iterdir()) == [] and not (tmp_path / "escape.txt").exists()


def _tar_links(*links: tuple[str, str]) -> bytes:
    return tar_of(
        *[(d, "dir", None) for d in ("ws", "ws/docs", "ws/.venv", "ws/.venv/bin")],
        ("ws/README.md", "file", b"hi"),
        ("ws/result.txt", "file", b"important"),
        *[(name, "link", target) for name, target in links],
    )


def test_a_download_keeps_links_inside_and_skips_links_leaving(tmp_path) -> None:
    """A venv's `python3 -> /usr/bin/python3` no longer costs the whole copy-back: it alone is left out."""
    dest = tmp_path / "dest"
    data = _tar_links(
        ("ws/.venv/bin/python3", "/usr/bin/python3"),
        ("ws/docs/README.md", "../README.md"),
        ("ws/up", "../../outside"),
    )
    paths, written, skipped, *_ = _extract_counted(data, dest, 1 << 20)
    assert (dest / "ws" / "result.txt").read_bytes() == b"important" and written == len(b"hiimportant")
    assert (dest / "ws" / "docs" / "README.md").read_text() == "hi"  # the relative link inside is kept
    assert not (dest / "ws" / ".venv" / "bin" / "python3").is_symlink()
    assert not (dest / "ws" / "up").is_symlink()
    assert [s.split(" -> ")[0] for s in skipped] == ["ws/.venv/bin/python3", "ws/up"]
    assert paths == [str(dest / "ws")]


def test_links_are_judged_against_the_folder_copied_back_not_the_destination(tmp_path) -> None:
    """`ws/notes.md -> ../other/secrets.env` stays inside DIR but leaves DIR/ws, the folder being copied
    back; and `ws/l -> ..` once carried `ws/l/other/planted.txt` into the operator's DIR/other."""
    dest = tmp_path / "dest"
    (dest / "other").mkdir(parents=True)
    (dest / "other" / "secrets.env").write_text("KEY=1\n")
    data = tar_of(
        ("ws", "dir", ""),
        ("ws/README.md", "file", "hi"),
        ("ws/notes.md", "link", "../other/secrets.env"),
        ("ws/l", "link", ".."),
        ("ws/l/other/planted.txt", "file", "from the sandbox"),
        ("ws/back.md", "link", "../ws/README.md"),
    )
    paths, _, skipped, *_ = _extract_counted(data, dest, 1 << 20)
    assert [p.name for p in (dest / "other").iterdir()] == ["secrets.env"]
    assert sorted(p.name for p in dest.iterdir()) == ["other", "ws"] and paths == [str(dest / "ws")]
    assert skipped == [
        "ws/notes.md -> ../other/secrets.env (leads out of the destination)",
        "ws/l -> .. (leads out of the destination)",
    ]
    assert (dest / "ws" / "l" / "other" / "planted.txt").read_text() == "from the sandbox"  # a folder now
    assert (dest / "ws" / "back.md").read_text() == "hi"


def test_an_archive_with_a_second_top_level_entry_is_refused_whole(tmp_path) -> None:
    """A download is one file or folder: `other/x` beside `ws/` would be written into DIR/other."""
    from qwq_agent.sandbox import UnsafeArchive

    dest = tmp_path / "dest"
    (dest / "other").mkdir(parents=True)
    data = tar_of(("ws", "dir", ""), ("ws/a", "file", "a"), ("other", "dir", ""), ("other/x", "file", "x"))
    with pytest.raises(
        UnsafeArchive,
        match="'other' is not under 'ws', the one file or folder downloaded; nothing was written",
    ):
        _extract_counted(data, dest, 1 << 20)
    with pytest.raises(UnsafeArchive, match="'ws' is not under 'workspace'"):
        _extract_counted(tar_of(("ws", "dir", "")), dest, 1 << 20, top="workspace")
    assert sorted(p.name for p in dest.iterdir()) == ["other"] and list((dest / "other").iterdir()) == []


def _header(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, link: str = "") -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname = size, kind, link
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def test_an_archive_that_reads_as_other_entries_than_were_sent_is_refused(tmp_path) -> None:
    """What the supervisor streamed when a file shrank under it: the header of `ws/d/enabled` promising
    4096 bytes with none behind it, then `ws/e_sled`, a file the sandbox wrote, whose contents the host
    read as headers: `ws/l -> ..` and a file through it. The reply counted the 3 entries it sent."""
    payload = b"print('ran on the host')\n"
    sled = b"".join(_header(f"ws/s{i}", (63 - i) * 512) for i in range(64))
    sled += _header("ws/l", kind=tarfile.SYMTYPE, link="..")
    sled += _header("ws/l/other/conftest.py", len(payload)) + payload.ljust(512, b"\0") + b"\0" * 1024
    data = _header("ws", kind=tarfile.DIRTYPE) + _header("ws/d/enabled", 4096)
    data += _header("ws/e_sled", len(sled)) + sled + b"\0" * 10240
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchive, match="reads as 5 entries where the sandbox sent 3"):
        _extract_counted(data, dest, 1 << 20, entries=3)
    assert list(dest.iterdir()) == []
    # Junk where the end should be: tarfile stops reading at a block that is no header, silently.
    data = _header("ws", kind=tarfile.DIRTYPE) + _header("ws/a") + b"x" * 512 + b"\0" * 10240
    with pytest.raises(UnsafeArchive, match="there is more after its end"):
        _extract_counted(data, dest, 1 << 20, entries=2)
    assert list(dest.iterdir()) == []
    # As the supervisor writes one: all it sent, and zeros after the end.
    _extract_counted(tar_of(("ws", "dir", ""), ("ws/a", "file", "a")), dest, 1 << 20, entries=2)
    assert (dest / "ws" / "a").read_text() == "a"


@pytest.mark.parametrize("how", ["made as a parent", "written through a link"])
def test_a_bare_repository_is_told_from_the_disk_not_from_the_names(tmp_path, how: str) -> None:
    """`a` holds HEAD, refs/ and a config whose core.fsmonitor runs a command. Its `objects` was named by
    no entry: made as the parent of `a/objects/info`, or written as `b/objects` through `b -> a`. Judged
    by the archive's names, `a` was no git folder, its config was written, and `git status` in `a` ran
    the command on the host. Git folders are now found on disk once everything is written."""
    marker = tmp_path / "RAN_ON_THE_HOST"
    config = f'[core]\n\tbare = false\n\tworktree = ..\n\tfsmonitor = "touch {marker}; false"\n'
    entries = [("ws", "dir", ""), ("ws/a", "dir", ""), ("ws/a/HEAD", "file", "ref: refs/heads/main\n")]
    entries += [("ws/a/refs", "dir", ""), ("ws/a/refs/heads", "dir", ""), ("ws/a/config", "file", config)]
    if how == "made as a parent":
        entries.append(("ws/a/objects/info", "dir", ""))
    else:
        entries += [("ws/b", "link", "a"), ("ws/b/objects", "dir", "")]
    done = _extract_counted(tar_of(*entries), tmp_path / "dest", 1 << 20, entries=len(entries))
    a = tmp_path / "dest" / "ws" / "a"
    assert (a / "objects").is_dir()
    host_git(a, tmp_path, "status")
    assert not marker.exists()
    assert done.git_left_out == [] and (a / "config").read_text() == '[core]\n\tbare = "false"\n'
    assert done.git_settings == [
        "ws/a/config: kept remotes/branches and basic settings, dropped 2 settings git could run "
        "commands from (or not known to be safe): core.worktree, core.fsmonitor"
    ]


def test_git_folders_lose_what_git_runs_commands_from_whatever_the_names_said(tmp_path) -> None:
    """Judged on disk: `a -> .git` then `a/config` lands in `.git`; `.GIT/CONFIG` is `.git/config` on a
    case-insensitive disk; a `hooks` link, `commondir`, the todo lists of a rebase or cherry-pick (their
    `exec` lines run), any link inside a git folder, and a `.git` that is a file or a link anywhere."""
    entries = (
        ("ws", "dir", ""),
        ("ws/.git", "dir", ""),
        ("ws/.git/HEAD", "file", "ref: refs/heads/main\n"),
        ("ws/.git/hooks", "link", "../scripts"),
        ("ws/.git/commondir", "file", "../evil\n"),
        ("ws/.git/rebase-merge/git-rebase-todo", "file", "exec touch /tmp/x\n"),
        ("ws/.git/sequencer/todo", "file", "exec touch /tmp/x\n"),
        ("ws/.git/refs/heads/main", "file", "0" * 40 + "\n"),
        ("ws/.git/info/exclude", "file", "*.log\n"),
        ("ws/.git/info/HEAD_link", "link", "../HEAD"),
        ("ws/a", "link", ".git"),
        ("ws/a/config", "file", "[core]\n\tfsmonitor = touch /tmp/x\n"),
        ("ws/sub/.GIT/CONFIG", "file", "[core]\n"),
        ("ws/w/.git", "file", "gitdir: ../evil\n"),
        ("ws/v/.git", "link", "../.git"),
        ("ws/scripts/pre-commit", "file", "#!/bin/sh\n"),
        ("ws/config", "file", "not git's: no git folder around it"),
        ("ws/hooks/x", "file", "not git's either"),
    )
    dest = tmp_path / "dest"
    done = _extract_counted(tar_of(*entries), dest, 1 << 20)
    assert sorted(done.git_left_out) == [
        "ws/.git/commondir",
        "ws/.git/hooks",
        "ws/.git/info/HEAD_link",
        "ws/.git/rebase-merge/",
        "ws/.git/sequencer/",
        "ws/v/.git",
        "ws/w/.git",
    ]
    assert [line.split(":")[0] for line in done.git_settings] == ["ws/.git/config"]  # CONFIG dropped none
    ws = dest / "ws"
    assert sorted(p.name for p in (ws / ".git").iterdir()) == ["HEAD", "config", "info", "refs"]
    assert (ws / ".git" / "config").read_text() == "" and (ws / "sub" / ".GIT" / "CONFIG").read_text() == ""
    assert (ws / ".git" / "info" / "exclude").exists() and (ws / ".git" / "refs" / "heads" / "main").exists()
    assert (ws / "a").is_symlink()
    assert list((ws / "w").iterdir()) == [] and list((ws / "v").iterdir()) == []
    assert (
        (ws / "config").exists()
        and (ws / "scripts" / "pre-commit").exists()
        and (ws / "hooks" / "x").exists()
    )


def test_only_what_the_copy_back_wrote_leaves_a_git_folder_that_was_there(tmp_path) -> None:
    """Copied into a folder that already holds the operator's repository: their config and hook stay."""
    git = tmp_path / "dest" / "ws" / ".git"
    (git / "hooks").mkdir(parents=True)
    (git / "config").write_text("[core]\n\tbare = false\n")
    (git / "hooks" / "pre-commit").write_text("#!/bin/sh\n")
    entries = (
        ("ws/.git/hooks/post-checkout", "file", "#!/bin/sh\ntouch /tmp/x\n"),
        ("ws/.git/sequencer/todo", "file", "exec touch /tmp/x\n"),
    )
    done = _extract_counted(tar_of(*entries), tmp_path / "dest", 1 << 20)
    assert sorted(done.git_left_out) == ["ws/.git/hooks/post-checkout", "ws/.git/sequencer/"]
    assert sorted(p.name for p in git.iterdir()) == ["config", "hooks"]
    assert [p.name for p in (git / "hooks").iterdir()] == ["pre-commit"]
    assert (git / "config").read_text() == "[core]\n\tbare = false\n"


def test_old_style_remote_files_the_copy_back_wrote_are_left_out_and_named(tmp_path) -> None:
    """`.git/remotes/<name>` and `.git/branches/<name>` are remotes to git when its config lacks them,
    their push refspecs unchecked: the sandbox's never come back; the operator's own stay."""
    from qwq_agent.sandbox.git_files import LEGACY_WHY

    git = tmp_path / "dest" / "ws" / ".git"
    (git / "remotes").mkdir(parents=True)
    (git / "remotes" / "mine").write_text("URL: https://example.com/mine.git\n")
    entries = (
        ("ws/.git/HEAD", "file", "ref: refs/heads/main\n"),
        ("ws/.git/remotes/origin", "file", "URL: /up.git\nPush: :refs/heads/release\n"),
        ("ws/.git/branches/up", "file", "/up.git#release\n"),
        ("ws/nested/BRANCHES/x", "file", "no git folder around it"),
    )
    done = _extract_counted(tar_of(*entries), tmp_path / "dest", 1 << 20)
    assert done.git_left_out == []
    assert done.git_settings == [
        f"ws/.git/branches/: left out: {LEGACY_WHY}: up",
        f"ws/.git/remotes/: left out: {LEGACY_WHY}: origin",
    ]
    assert sorted(p.name for p in git.iterdir()) == ["HEAD", "remotes"]
    assert [p.name for p in (git / "remotes").iterdir()] == ["mine"]
    assert (tmp_path / "dest" / "ws" / "nested" / "BRANCHES" / "x").exists()


def test_past_a_bound_of_nested_repositories_configs_are_left_out_not_each_read_with_git(tmp_path) -> None:
    """Each config costs one `git config` run on the host: a sandbox holding thousands of nested
    repositories would spend the copy-back's whole deadline on them (and lose all of it)."""
    from qwq_agent.sandbox.git_files import MAX_REBUILT_CONFIGS

    count = MAX_REBUILT_CONFIGS + 5
    entries = []
    for i in range(count):
        entries.append((f"ws/r{i:03d}/.git/HEAD", "file", "ref: refs/heads/main\n"))
        entries.append((f"ws/r{i:03d}/.git/config", "file", '[remote "origin"]\n\turl = https://x/r.git\n'))
    done = _extract_counted(tar_of(*entries), tmp_path / "dest", 1 << 20)
    kept = sorted((tmp_path / "dest" / "ws").glob("r*/.git/config"))
    assert len(kept) == MAX_REBUILT_CONFIGS
    assert all("https://x/r.git" in p.read_text() for p in kept)
    left = sorted(done.git_left_out)
    assert len(left) == 5 and all(p.endswith("/.git/config") for p in left)
    assert not {str(p.relative_to(tmp_path / "dest")) for p in kept} & set(left)


def test_links_that_leave_only_together_are_removed(tmp_path) -> None:
    """`c -> a/b/../..` is inside while `a/b` does not exist; once `a/b -> ..` is written, it leaves."""
    dest = tmp_path / "dest"
    data = _tar_links(("ws/a", "docs"), ("ws/c", "a/b/../../.."), ("ws/docs/b", ".."))
    _, _, skipped, *_ = _extract_counted(data, dest, 1 << 20)
    root = dest.resolve()
    for link in (dest / "ws").rglob("*"):
        if link.is_symlink():
            resolved = link.resolve()
            assert resolved == root or root in resolved.parents, (link, resolved)
    assert any(s.startswith("ws/c ->") for s in skipped)


def test_a_chain_of_links_is_resolved_once_and_too_deep_ones_are_named_so(tmp_path) -> None:
    """l1 -> l0, l2 -> l1, ...: each link once walked the whole chain (minutes for 100,000 links), and
    past Python's recursion limit a chain inside was dropped as 'leads out of the destination'."""
    import time

    links = [("ws/l1", "README.md")] + [(f"ws/l{i}", f"l{i - 1}") for i in range(2, 3000)]
    data = _tar_links(*links, ("ws/loop_a", "loop_b"), ("ws/loop_b", "loop_a"))
    t0 = time.monotonic()
    _, _, skipped, *_ = _extract_counted(data, tmp_path / "dest", 1 << 20)
    assert time.monotonic() - t0 < 20  # ~2 s here, of which the symlink() calls are most
    ws = tmp_path / "dest" / "ws"
    assert (ws / "l40").read_text() == "hi" and (ws / "l1").is_symlink()  # 40 links: what the kernel follows
    assert not (ws / "l41").is_symlink() and not (ws / "loop_a").is_symlink()
    assert len(skipped) == 2999 - 40 + 2 and not [s for s in skipped if "leads out" in s]
    assert "ws/l41 -> l40 (more than 40 links deep, or a loop)" in skipped


def test_a_download_into_a_folder_that_holds_it_already_is_refused_untouched(tmp_path) -> None:
    """A second copy-back into the same folder was a raw FileExistsError halfway through the writing."""
    from qwq_agent.sandbox import DestinationExists

    dest = tmp_path / "dest"
    data = _tar_files(("ws/a.txt", b"new"), ("ws/b.txt", b"new"))
    (dest / "ws").mkdir(parents=True)
    (dest / "ws" / "b.txt").write_bytes(b"old")
    with pytest.raises(DestinationExists, match=r"b\.txt already exists"):
        _extract_counted(data, dest, 1 << 20)
    assert sorted(p.name for p in (dest / "ws").iterdir()) == ["b.txt"]
    assert (dest / "ws" / "b.txt").read_bytes() == b"old"


def test_writing_a_download_is_under_a_deadline(tmp_path) -> None:
    data = _tar_links(*[(f"ws/l{i}", f"l{i - 1}") for i in range(1, 200)])
    with pytest.raises(UnsafeArchive, match="took more than 0s; nothing was written"):
        _extract_counted(data, tmp_path / "dest", 1 << 20, timeout=0)
    assert list((tmp_path / "dest").iterdir()) == []


def test_the_checks_before_anything_is_written_are_under_the_deadline_too(tmp_path) -> None:
    """The first pass over the members (names, links, what is on disk) ran before any deadline check, at a
    cost that grew with each entry's depth: a legal 1,900-level tree ran 20 times its timeout. Past the
    deadline it now stops there too: here before it reaches the entry it would refuse."""
    data = tar_of(*[(f"ws/f{i}", "file", "x") for i in range(200)], ("ws/../escape", "file", "x"))
    with pytest.raises(UnsafeArchive, match="took more than 0s; nothing was written"):
        _extract_counted(data, tmp_path / "dest", 1 << 20, timeout=0)
    with pytest.raises(UnsafeArchive, match=r"`\.\.` in the path"):
        _extract_counted(data, tmp_path / "dest", 1 << 20)
    assert list((tmp_path / "dest").iterdir()) == []


def test_names_and_links_through_the_operators_own_links_are_judged_on_disk(tmp_path) -> None:
    """Names are judged as text where nothing is on disk yet, and through what is: the operator's own
    link in the folder copied into leads out of it, so an entry under it is refused, and a link through
    it is left out (as tarfile's `data` filter judged them, each folder now looked up once)."""
    dest = tmp_path / "dest"
    (dest / "ws").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (dest / "ws" / "mine").symlink_to(tmp_path / "elsewhere")
    through = tar_of(("ws", "dir", ""), ("ws/a", "file", "a"), ("ws/mine/planted", "file", "x"))
    with pytest.raises(
        UnsafeArchive, match=r"'ws/mine/planted' would be extracted to .*outside the destination"
    ):
        _extract_counted(through, dest, 1 << 20)
    links = tar_of(
        ("ws/deep/er", "dir", ""),
        ("ws/deep/er/l", "link", "../../mine/x"),
        ("ws/deep/er/k", "link", "../../a"),
    )
    done = _extract_counted(links, dest, 1 << 20)
    assert done.skipped == [
        f"ws/deep/er/l -> ../../mine/x ('ws/deep/er/l' would link to '{tmp_path / 'elsewhere' / 'x'}', which "
        "is outside the destination)"
    ]
    assert os.readlink(dest / "ws" / "deep" / "er" / "k") == "../../a"
    assert list((tmp_path / "elsewhere").iterdir()) == []


def _tar_files(*files: tuple[str, bytes], sparse: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            if sparse:
                info.type = tarfile.GNUTYPE_SPARSE
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_download_limit_counts_bytes_written_not_claims(tmp_path) -> None:
    dest = tmp_path / "dest"
    data = _tar_files(("ws/a.bin", b"a" * 600_000), ("ws/b.bin", b"b" * 600_000))
    with pytest.raises(UnsafeArchive, match="download limit of 1000000 bytes"):
        _extract_counted(data, dest, 1_000_000)
    assert list(dest.iterdir()) == []  # what was written before the limit hit is gone again
    paths, written, *_ = _extract_counted(data, dest, 2_000_000)
    assert written == 1_200_000 and paths == [str(dest / "ws")]
    assert sorted(p.name for p in (dest / "ws").iterdir()) == ["a.bin", "b.bin"]


def test_sparse_members_are_refused(tmp_path) -> None:
    with pytest.raises(UnsafeArchive, match="sparse"):
        _extract_counted(_tar_files(("s.bin", b"x" * 10), sparse=True), tmp_path / "d", 1 << 20)
    assert list((tmp_path / "d").iterdir()) == []


@pytest.mark.parametrize("field", ["path", "linkpath"])
def test_a_nul_byte_in_a_name_or_link_target_refuses_the_archive(tmp_path, field: str) -> None:
    """A PAX `path` (or `linkpath`) holding a NUL: tarfile reads it, but the filter's `realpath` and
    `open` raise a bare ValueError ("embedded null byte"), which escaped the copy-back as a traceback
    where any other hostile archive is one warning. Now it refuses the archive, and nothing is left."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(tarfile.TarInfo("ws/a.txt"), io.BytesIO(b""))  # written before the bad one
        info = tarfile.TarInfo("ws/x")
        if field == "linkpath":
            info.type = tarfile.SYMTYPE
        info.pax_headers = {field: "ws/a\x00b" if field == "path" else "a\x00b"}
        tar.addfile(info, io.BytesIO(b""))
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchive, match="NUL byte; nothing was written"):
        _extract_counted(buf.getvalue(), dest, 1 << 20, top="ws", entries=2)
    assert list(dest.iterdir()) == []


def test_a_file_the_sandbox_names_changed_is_left_out_and_named(tmp_path) -> None:
    """The supervisor pads a big file that shrank while it was sent with zeros to the size its header
    claimed and names its entry as changed (the download goes on): the host writes neither it nor a hard
    link to it, and says so; an index that is no file is ignored."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(_info("ws", tarfile.DIRTYPE))
        big = _info("ws/state.json", size=8)
        tar.addfile(big, io.BytesIO(b"ab\0\0\0\0\0\0"))
        tar.addfile(_info("ws/same", tarfile.LNKTYPE, link="ws/state.json"))
        tar.addfile(_info("ws/result.txt", size=2), io.BytesIO(b"ok"))
    dest = tmp_path / "dest"
    done = _extract_counted(buf.getvalue(), dest, 1 << 20, top="ws", entries=4, changed=[0, 1])
    assert sorted(p.name for p in (dest / "ws").iterdir()) == ["result.txt"]
    assert done.skipped == [
        "ws/state.json: changed while it was copied (written to as it was read)",
        "ws/same: changed while it was copied (written to as it was read)",
    ]
    assert done.written == 2


def _info(name: str, kind: bytes = tarfile.REGTYPE, *, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, link
    return info


def test_a_rebuilt_git_config_keeps_safe_settings_and_no_value_can_start_a_setting(tmp_path) -> None:
    """Values that hold newlines, quotes, backslashes, `;` or `#` (which git reads back fine) are written
    quoted and escaped: one that spells `[core] fsmonitor = ...` stays a value. Includes, hooksPath,
    aliases, filters and the like are dropped, and a bare repository's `core.bare = true` too, and a
    fetch refspec that force-rewrites local tags."""
    from qwq_agent.sandbox.git_config import read_settings, rebuild

    forged = 'x"\\\n[core]\n\tfsmonitor = touch /tmp/ran ; # \t\b'
    config = tmp_path / "config"
    config.write_text(
        "[core]\n\trepositoryformatversion = 0\n\tbare = true\n\tfilemode\n\tfsmonitor = touch /tmp/ran\n"
        '\thooksPath = .githooks\n[include]\n\tpath = ../.gitconfig\n[includeIf "gitdir:/"]\n\tpath = x\n'
        '[remote "or\\"ig\\\\in"]\n\tfetch = +refs/heads/*:refs/remotes/o/*\n\tfetch = +refs/tags/*:refs/tags/*\n'
        "\tuploadpack = touch /tmp/ran\n[alias]\n\tst = !touch /tmp/ran\n"
        '[filter "lfs"]\n\tclean = touch /tmp/ran\n[branch "main"]\n\tremote = .\n'
    )
    set_value = ["git", "config", "--file", str(config), 'remote.or"ig\\in.url', forged]
    assert __import__("subprocess").run(set_value, capture_output=True).returncode == 0
    new = rebuild(config, 30)
    assert new is not None
    assert new.dropped == [
        "core.bare", "core.fsmonitor", "core.hookspath", "include.path", "includeif.gitdir:/.path",
        'remote.or"ig\\in.fetch', 'remote.or"ig\\in.uploadpack', "alias.st", "filter.lfs.clean",
    ]  # fmt: skip
    out = tmp_path / "rebuilt"
    out.write_bytes(new.text)
    assert read_settings(out, 30) == [
        (b"core.repositoryformatversion", b"0"),
        (b"core.filemode", None),
        (b'remote.or"ig\\in.fetch', b"+refs/heads/*:refs/remotes/o/*"),  # not `+refs/tags/*:refs/tags/*`
        (b'remote.or"ig\\in.url', forged.encode()),  # git put it at the end of its section
        (b"branch.main.remote", b"."),  # a remote the config defines, or `.` (see the test after next)
    ]


def test_without_git_on_the_host_a_config_is_left_out(tmp_path, monkeypatch) -> None:
    """Nothing can read it without running anything: it is removed and named."""
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))
    entries = (("ws/.git/HEAD", "file", "ref: refs/heads/main\n"), ("ws/.git/config", "file", "[core]\n"))
    done = _extract_counted(tar_of(*entries), tmp_path / "dest", 1 << 20)
    assert done.git_left_out == ["ws/.git/config"] and done.git_settings == []
    assert [p.name for p in (tmp_path / "dest" / "ws" / ".git").iterdir()] == ["HEAD"]


def test_a_config_too_large_or_with_too_many_settings_is_left_out_before_git_reads_it(tmp_path) -> None:
    """An 8 MB `.git/config` ("[core]" then "a" lines) grew the host by ~800 MB and ran the copy-back past
    its deadline (refused whole): every listed setting was held as Python objects, and a key string per
    dropped one. A long section name multiplied what git lists (100 KB by each setting under it). Now a
    config over 256 KB, or with more settings than a few thousand, is left out and named, before git
    runs; what git lists is read up to a bound; and only the first few dropped keys are kept."""
    from qwq_agent.sandbox.git_config import MAX_CONFIG_BYTES, MAX_SETTINGS, rebuild

    big = b"[core]\n" + b"a\n" * (4 * 1024 * 1024)
    many = b"[core]\n" + b"a\n" * (MAX_SETTINGS + 1)
    wide = b"[" + b"s" * 100_000 + b"]\n" + b"a\n" * 4000  # under both bounds; 400 MB as git lists it
    good = b'[remote "origin"]\n\turl = https://x/r.git\n'
    entries: list[tuple[str, str, str | bytes]] = [("ws", "dir", "")]
    for name, config in (("big", big), ("many", many), ("wide", wide), ("good", good)):
        entries += [
            (f"ws/{name}/.git/HEAD", "file", "ref: refs/heads/main\n"),
            (f"ws/{name}/.git/config", "file", config),
        ]
    dest = tmp_path / "dest"
    done = _extract_counted(tar_of(*entries), dest, 64 << 20, 2.0, top="ws", entries=len(entries))
    assert done.git_left_out == ["ws/big/.git/config", "ws/many/.git/config", "ws/wide/.git/config"]
    assert done.git_settings == [
        f"ws/big/.git/config: left out: {len(big)} bytes, over the {MAX_CONFIG_BYTES} a config copied back may hold",
        "ws/good/.git/config: remotes point to origin -> https://x/r.git",
        f"ws/many/.git/config: left out: more than {MAX_SETTINGS} settings",
        "ws/wide/.git/config: left out: git lists its settings as more than 1048576 bytes",
    ]
    assert (
        dest / "ws" / "good" / ".git" / "config"
    ).read_text() == '[remote "origin"]\n\turl = "https://x/r.git"\n'
    # A config within the bounds that drops thousands of settings keeps the first few names, and a count.
    aliases = tmp_path / "aliases"
    aliases.write_bytes(b"[alias]\n" + b"".join(b"\ta%d = !x\n" % i for i in range(3000)))
    new = rebuild(aliases, 30)
    assert new is not None and not isinstance(new, str)
    assert new.dropped_count == 3000 and new.dropped == [f"alias.a{i}" for i in range(len(new.dropped))]
    assert 0 < len(new.dropped) <= 16


def test_a_copied_back_config_cannot_turn_the_operators_next_push_or_fetch_destructive(tmp_path) -> None:
    """The rebuilt config kept `remote.origin.push = :refs/heads/release` and `+HEAD:refs/heads/main`: the
    operator's next plain `git push` in the copy deleted `release` on their real remote and force-wrote
    `main`. `pushurl`, `mirror`, `branch.*.pushRemote`, `remote.pushDefault` and `push.default` steered
    pushes too, and a fetch refspec into `refs/heads/` force-rewrote local branches at the next fetch.
    Now all of those are dropped and named; a fetch refspec into `refs/remotes/` stays."""
    import os
    import subprocess

    from qwq_agent.sandbox.git_config import rebuild

    env = {**os.environ, "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
    env.update(GIT_AUTHOR_NAME="a", GIT_AUTHOR_EMAIL="a@a", GIT_COMMITTER_NAME="a", GIT_COMMITTER_EMAIL="a@a")

    def git(*args: str, cwd=tmp_path) -> str:
        done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    origin, ws = tmp_path / "origin.git", tmp_path / "sandbox" / "ws"
    git("init", "-q", "--bare", "-b", "main", str(origin))
    git("clone", "-q", str(origin), str(tmp_path / "op"))
    git("commit", "-q", "--allow-empty", "-m", "one", cwd=tmp_path / "op")
    git("push", "-q", "origin", "main", "main:release", cwd=tmp_path / "op")
    before = git("for-each-ref", "--format=%(refname) %(objectname)", cwd=origin)
    # The sandbox's copy: history rewritten (no fast-forward of origin's main), its pushes made destructive.
    git("clone", "-q", str(origin), str(ws))
    git("commit", "-q", "--amend", "--allow-empty", "-m", "rewritten", cwd=ws)
    for key, value in (
        ("remote.origin.push", ":refs/heads/release"),
        ("remote.origin.push", "+HEAD:refs/heads/main"),
        ("remote.origin.fetch", "+refs/heads/*:refs/heads/*"),
        ("push.default", "matching"),
    ):
        git("config", "--add", key, value, cwd=ws)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(ws, arcname="ws")
        count = len(tar.getmembers())
    done = _extract_counted(buf.getvalue(), tmp_path / "copy", 64 << 20, top="ws", entries=count)
    copy = tmp_path / "copy" / "ws"
    subprocess.run(["git", "push"], cwd=copy, env=env, capture_output=True, timeout=60)  # routine: rejected
    assert git("for-each-ref", "--format=%(refname) %(objectname)", cwd=origin) == before
    listed = git("config", "--file", ".git/config", "--list", cwd=copy).splitlines()
    assert [s for s in listed if s.startswith(("remote.", "branch.", "push."))] == [
        f"remote.origin.url={origin}",
        "remote.origin.fetch=+refs/heads/*:refs/remotes/origin/*",
        "branch.main.remote=origin",
        "branch.main.merge=refs/heads/main",
    ]
    assert done.git_settings == [
        "ws/.git/config: kept remotes/branches and basic settings, dropped 4 settings git could run "
        "commands from (or not known to be safe): remote.origin.push, remote.origin.fetch, push.default",
        f"ws/.git/config: remotes point to origin -> {origin}",
    ]
    # What else would steer the next push: elsewhere, or mirroring (deleting what the copy lacks).
    config = tmp_path / "config"
    config.write_text(
        '[remote "origin"]\n\turl = https://x/r.git\n\tpushurl = https://evil/r.git\n\tmirror = true\n'
        "\tfetch = +refs/tags/*:refs/tags/*\n\tfetch = ^refs/heads/tmp/*\n\tfetch = refs/heads/a:refs/remotes/o/a\n"
        '[remote]\n\tpushDefault = evil\n[branch "main"]\n\tremote = origin\n\tpushRemote = evil\n'
    )
    new = rebuild(config, 30)
    assert new is not None and not isinstance(new, str)
    assert new.dropped == [
        "remote.origin.pushurl", "remote.origin.mirror", "remote.origin.fetch", "remote.pushdefault",
        "branch.main.pushremote",
    ]  # fmt: skip
    assert new.text == (
        b'[remote "origin"]\n\turl = "https://x/r.git"\n\tfetch = "^refs/heads/tmp/*"\n'
        b'\tfetch = "refs/heads/a:refs/remotes/o/a"\n[branch "main"]\n\tremote = "origin"\n'
    )


def test_a_backslash_is_an_ordinary_character_in_a_downloaded_name(tmp_path) -> None:
    """`ws\\notes.sh` passed the one-top-level-entry rule (names were compared with `\\` read as `/`) but
    was written under its raw name, where `\\` is an ordinary character: a file beside the copy, in the
    operator's DIR. Names are now split on `/` only, as the disk does: that is a second top-level entry,
    and the archive is refused; inside the copy such names are plain names, `..` in them too."""
    dest = tmp_path / "dest"
    forged = tar_of(
        ("ws", "dir", ""), ("ws/README.md", "file", "hi\n"), ("ws\\notes.sh", "file", "echo planted\n"),
        ("ws\\.git", "dir", ""),
    )  # fmt: skip
    with pytest.raises(UnsafeArchive, match=r"'ws\\\\notes.sh' is not under 'ws'.*nothing was written"):
        _extract_counted(forged, dest, 1 << 20, top="ws", entries=4)
    assert list(dest.iterdir()) == []
    odd = tar_of(
        ("ws", "dir", ""), ("ws/a\\..", "file", "1"), ("ws/b\\..\\..\\c", "file", "2"), ("ws/l", "link", "a\\.."),
    )  # fmt: skip
    done = _extract_counted(odd, dest, 1 << 20, top="ws", entries=4)
    assert sorted(p.name for p in (dest / "ws").iterdir()) == ["a\\..", "b\\..\\..\\c", "l"]
    assert (
        (dest / "ws" / "l").read_text() == "1"
        and done.skipped == []
        and list(dest.iterdir()) == [dest / "ws"]
    )


def test_entries_whose_host_path_would_be_too_long_are_left_out_and_named_not_the_lot(tmp_path) -> None:
    """One path that fits in the sandbox but not under the host's DIR (PATH_MAX: 4096 bytes with its
    NUL), or a name over NAME_MAX (255 bytes, which a forged archive can hold), made the host raise
    ENAMETOOLONG and remove everything written: every other file of the run was lost. Each such entry
    is now left out and named, up front; the rest is written."""
    import os

    dest = tmp_path / "dest"
    room = 4095 - len(os.fsencode(str(dest / "ws"))) - 1  # bytes a name under DIR/ws may take
    dirs, rest = divmod(room - 1, 51)
    fits = ("d" * 50 + "/") * dirs + "f" * (rest + 1)  # exactly `room` bytes: 4095 with DIR/ws/
    deep = ("d" * 50 + "/") * dirs + "g" * (rest + 2)  # one more
    entries: list[tuple[str, str, str | bytes]] = [
        ("ws", "dir", ""), ("ws/important.txt", "file", "keep"), (f"ws/{fits}", "file", "fits"),
        (f"ws/{deep}", "file", "deep"), (f"ws/{'n' * 256}", "file", "long name"), (f"ws/{'m' * 255}", "file", "255"),
        (f"ws/{'o' * 300}/inner", "file", "under a long name"), ("ws/far", "link", "t" * 4096),
    ]  # fmt: skip
    assert len(os.fsencode(str(dest / "ws" / fits))) == 4095
    done = _extract_counted(tar_of(*entries), dest, 1 << 20, top="ws", entries=len(entries))
    assert (dest / "ws" / "important.txt").read_text() == "keep"
    assert (dest / "ws" / fits).read_text() == "fits" and (dest / "ws" / ("m" * 255)).read_text() == "255"
    assert sorted(os.listdir(dest / "ws")) == sorted(["important.txt", "d" * 50, "m" * 255])
    assert [s.rsplit(": ", 1)[1] for s in done.skipped] == [
        "its path on the host would be longer than 4095 bytes",
        "a name in its path is longer than 255 bytes",
        "a name in its path is longer than 255 bytes",
        "its link target is longer than 4095 bytes",
    ]
    assert done.skipped[0].startswith("ws/ddddd") and "..." in done.skipped[0] and len(done.skipped[0]) < 400


def test_links_inside_are_kept_when_the_destination_is_a_relative_path(tmp_path, monkeypatch) -> None:
    """`--copy-back out` (relative): the check of links once all was written resolved `out/ws/docs/...`
    from `/`, found it outside the copy, and removed every link, even `docs/README.md -> ../README.md`."""
    monkeypatch.chdir(tmp_path)
    data = _tar_links(("ws/docs/README.md", "../README.md"), ("ws/up", "../../outside"))
    _, _, skipped, *_ = _extract_counted(data, Path("out"), 1 << 20)
    assert (tmp_path / "out" / "ws" / "docs" / "README.md").read_text() == "hi"
    assert [s.split(" -> ")[0] for s in skipped] == ["ws/up"]


def test_a_copied_back_config_cannot_send_the_operators_next_push_elsewhere(tmp_path) -> None:
    """A second `remote.origin.url` (git pushes to every url of a remote, fetches from the first) or a
    `branch.main.remote` that is itself a path or URL sent the operator's next plain `git push` to the
    sandbox's chosen repository, while `git remote -v` looked normal. Now a remote keeps one url, a
    branch's remote must be one the config defines (or `.`), and each kept url is named."""
    from qwq_agent.sandbox.git_config import rebuild

    config = tmp_path / "config"
    config.write_text(
        '[remote "origin"]\n\turl = https://example.com/real.git\n\turl = /tmp/attacker.git\n'
        "\tfetch = +refs/heads/*:refs/remotes/origin/*\n"
        '[branch "main"]\n\tremote = /tmp/attacker.git\n\tmerge = refs/heads/main\n'
        '[branch "dev"]\n\tremote = origin\n[branch "local"]\n\tremote = .\n'
        # A remote without a url is a url itself (git takes its name for one): not a remote to name.
        '[branch "other"]\n\tremote = ../attacker.git\n[remote "../attacker.git"]\n\tprune = true\n'
    )
    new = rebuild(config, 30)
    assert not isinstance(new, str | None)
    text = new.text.decode()
    assert "real.git" in text and "attacker" not in text, text
    assert {
        "remote.origin.url",
        "branch.main.remote",
        "branch.other.remote",
        "remote.../attacker.git.prune",
    } <= set(new.dropped)
    assert 'remote = "origin"' in text and 'remote = "."' in text, text
    assert new.urls == ("origin -> https://example.com/real.git",)
