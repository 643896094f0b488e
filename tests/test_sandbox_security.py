"""Escape attempts: paths out of the workspace, hostile archives, the host's env, socket and network."""

from __future__ import annotations

import pytest
from tar_builder import tar_of

from qwq_agent.sandbox import DockerSandbox, PathOutsideWorkspace, SandboxConfig, UnsafeArchive

pytestmark = [pytest.mark.docker, pytest.mark.asyncio(loop_scope="session")]


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "/workspace/../etc/passwd", "/tmp/x"])
async def test_paths_outside_the_workspace_are_refused(shared_sandbox: DockerSandbox, path: str) -> None:
    with pytest.raises(PathOutsideWorkspace, match="outside the workspace"):
        await shared_sandbox.view(path)
    with pytest.raises(PathOutsideWorkspace):
        await shared_sandbox.create_file(path + ".new", "x")
    with pytest.raises(PathOutsideWorkspace):
        await shared_sandbox.str_replace(path, "root", "toor")


async def test_symlinks_pointing_out_are_refused(shared_sandbox: DockerSandbox) -> None:
    await shared_sandbox.shell(
        "mkdir -p /workspace/sec && ln -sf /etc/passwd /workspace/sec/pw && ln -sfn / /workspace/sec/root"
    )
    for path in ("/workspace/sec/pw", "/workspace/sec/root/etc/passwd"):
        with pytest.raises(PathOutsideWorkspace):
            await shared_sandbox.view(path)
    with pytest.raises(PathOutsideWorkspace):
        await shared_sandbox.create_file("/workspace/sec/root/tmp/planted", "x")
    with pytest.raises(PathOutsideWorkspace):
        await shared_sandbox.download("/workspace/sec/root", "/nonexistent-never-written")
    with pytest.raises(PathOutsideWorkspace):
        await shared_sandbox.upload_archive(tar_of(("ok.txt", "file", b"x")), "/workspace/sec/root/tmp")


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        (("../escape.txt", "file", b"x"), r"`\.\.` in the path"),
        (("a/../../escape.txt", "file", b"x"), r"`\.\.` in the path"),
        (("/tmp/abs.txt", "file", b"x"), "absolute path"),
        (("hard", "hard", "../outside"), "leaves the destination"),
        (("dev", "chr", ""), "not a regular file"),
    ],
)
async def test_hostile_archives_are_refused_whole(shared_sandbox: DockerSandbox, entry, why: str) -> None:
    data = tar_of(("innocent.txt", "file", b"fine"), entry)
    with pytest.raises(UnsafeArchive, match=why):
        await shared_sandbox.upload_archive(data, "/workspace/hostile")
    r = await shared_sandbox.shell(
        "ls -A /workspace/hostile 2>&1; ls /tmp/abs.txt /escape.txt /workspace/escape.txt 2>&1 | wc -l"
    )
    assert "innocent.txt" not in r.stdout  # nothing at all was extracted


async def test_links_leaving_an_upload_are_left_out_and_named_the_rest_extracted(
    shared_sandbox: DockerSandbox,
) -> None:
    """A project's `.venv/bin/python3 -> /usr/bin/...` once refused the whole workspace: no run could start."""
    data = tar_of(
        ("innocent.txt", "file", b"fine\n"),
        ("abs", "link", "/etc/passwd"),
        ("docs/up", "link", "../../etc"),
        ("docs/readme", "link", "../innocent.txt"),
    )
    res = await shared_sandbox.upload_archive(data, "/workspace/leaving")
    assert sorted(s.split(" -> ")[0] for s in res.skipped) == ["abs", "docs/up"] and res.skipped_count == 2
    r = await shared_sandbox.shell("cat /workspace/leaving/docs/readme; ls -A /workspace/leaving")
    assert r.stdout == "fine\ndocs\ninnocent.txt\n"  # the relative link inside is kept
    await shared_sandbox.shell("rm -rf /workspace/leaving")


async def test_not_a_tar_is_a_clear_error(shared_sandbox: DockerSandbox) -> None:
    with pytest.raises(Exception, match="not a valid tar archive"):
        await shared_sandbox.upload_archive(b"this is not a tar archive at all" * 100, "/workspace/x")


async def test_host_environment_does_not_leak(sandbox_image: str, monkeypatch) -> None:
    monkeypatch.setenv("QWQ_TEST_HOST_SECRET", "s3cr3t-value-on-the-host")
    async with DockerSandbox.create(SandboxConfig(image=sandbox_image)) as sb:
        r = await sb.shell("cat /proc/1/environ /proc/self/environ | tr '\\0' '\\n'; env")
        assert r.exit_code == 0 and "HOME=/home/sandbox" in r.stdout
        assert "s3cr3t-value-on-the-host" not in r.stdout
        # The supervisor's settings are not handed on to user code either.
        assert "QWQ_" not in (await sb.shell("env")).stdout


async def test_no_docker_socket_inside(shared_sandbox: DockerSandbox) -> None:
    r = await shared_sandbox.shell(
        "ls -la /var/run/docker.sock /run/docker.sock 2>&1; find / -xdev -name 'docker.sock' 2>/dev/null | wc -l; "
        "grep -c docker.sock /proc/mounts"
    )
    assert r.stdout.count("No such file or directory") == 2 and r.stdout.endswith("0\n0\n")


async def test_no_network_egress(shared_sandbox: DockerSandbox) -> None:
    r = await shared_sandbox.python(
        "import socket\nout = []\n"
        "for target in [('1.1.1.1', 53), ('8.8.8.8', 443), ('172.17.0.1', 2375)]:\n"
        "    try:\n        socket.create_connection(target, timeout=2); out.append('connected')\n"
        "    except OSError as exc:\n        out.append(type(exc).__name__)\n"
        "try:\n    socket.getaddrinfo('example.com', 80); out.append('resolved')\n"
        "except OSError as exc:\n    out.append(type(exc).__name__)\n"
        "import os\nout, sorted(os.listdir('/sys/class/net'))"
    )
    assert r.value is not None and "connected" not in r.value and "resolved" not in r.value
    assert r.value.endswith("['lo'])")


async def test_privileges_are_dropped(shared_sandbox: DockerSandbox) -> None:
    r = await shared_sandbox.shell("id -un; grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs):' /proc/self/status")
    assert r.stdout.split() == ["sandbox", "CapPrm:", "0000000000000000", "CapEff:", "0000000000000000",
                                "CapBnd:", "0000000000000000", "NoNewPrivs:", "1"]  # fmt: skip


async def test_supervisor_runs_under_its_own_uid_with_only_the_kept_caps(
    shared_sandbox: DockerSandbox,
) -> None:
    r = await shared_sandbox.shell(
        "for p in $(pgrep -f '^python3 -I -u /opt/qwq/supervisor/boot.py$'); do grep -E '^(Uid|CapEff|CapPrm):' /proc/$p/status; done"
    )
    fields = r.stdout.split()
    # The supervisor and the keepers: real/effective/saved uid 999 (a keeper forked from a request thread
    # touches files as the user, so its fsuid may be 1000), capabilities exactly KILL|SETGID|SETUID|SETPCAP.
    assert fields and fields.count("Uid:") >= 2, r
    uids = [fields[i + 1 : i + 5] for i, f in enumerate(fields) if f == "Uid:"]
    caps = [fields[i + 1] for i, f in enumerate(fields) if f in ("CapEff:", "CapPrm:")]
    assert all(u[:3] == ["999"] * 3 for u in uids) and set(caps) == {"00000000000001e0"}, r.stdout


async def test_container_carries_the_hardening(shared_sandbox: DockerSandbox) -> None:
    info = await shared_sandbox.engine.inspect(shared_sandbox.id)
    host, cfg = info["HostConfig"], shared_sandbox.config
    assert host["NetworkMode"] == "none" and host["CapDrop"] == ["ALL"] and host["ReadonlyRootfs"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"] and host["PidsLimit"] == cfg.pids_limit
    assert host["Memory"] == host["MemorySwap"] == cfg.memory and host["NanoCpus"] == int(cfg.cpus * 1e9)
    assert host["LogConfig"]["Type"] == "none" and host["AutoRemove"]
    assert {u["Name"] for u in host["Ulimits"]} == {"nofile", "fsize", "core"}
    assert set(host["Tmpfs"]) == {"/workspace", "/tmp", "/home/sandbox", "/run/qwq"}
    assert "noexec" in host["Tmpfs"]["/run/qwq"] and "uid=" not in host["Tmpfs"]["/run/qwq"]
    assert f"size={cfg.workspace_size}" in host["Tmpfs"]["/workspace"]
    # Root at start holding only what the supervisor keeps; it switches to its own uid at once.
    assert info["Config"]["User"] == "0:0" and not host.get("Binds")
    assert sorted(host["CapAdd"]) == ["KILL", "SETGID", "SETPCAP", "SETUID"]
    labels = info["Config"]["Labels"]
    assert labels["qwq-agent"] == "1" and {"qwq-agent.owner-pid", "qwq-agent.expires"} <= set(labels)


# Takes every inotify instance user code can get (the kernel counts them per uid, across all
# containers and the host), keeping them open in the interpreter.
HOLD_INOTIFY = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
_held = []
while len(_held) < 100_000:
    fd = libc.inotify_init1(0)
    if fd < 0:
        break
    _held.append(fd)
len(_held), os.strerror(ctypes.get_errno())
"""
PROBE_INOTIFY = """
import ctypes, os
fd = ctypes.CDLL(None, use_errno=True).inotify_init1(0)
"ok" if fd >= 0 else os.strerror(ctypes.get_errno())
"""


async def test_each_sandbox_runs_user_code_under_a_uid_no_host_account_or_other_sandbox_has(
    sandbox_image: str,
) -> None:
    """Per-uid kernel limits are shared by everything of one uid without a user namespace: with one uid
    for all sandboxes (once 1000, often the host operator's own), one sandbox holding all inotify
    instances left the host's account and every other sandbox unable to make one."""
    import pwd

    config = SandboxConfig(image=sandbox_image)  # one config, as a pool uses: the uid is per container
    async with DockerSandbox.create(config) as a, DockerSandbox.create(config) as b:
        limit = int((await a.shell("cat /proc/sys/fs/inotify/max_user_instances")).stdout)
        if limit >= config.nofile - 16:
            pytest.skip(f"max_user_instances is {limit}: the per-process fd limit would stop the hold first")
        held = await a.python(HOLD_INOTIFY)
        assert held.value is not None and held.value.startswith(f"({limit},"), held
        assert (await b.python(PROBE_INOTIFY)).value == "'ok'"
        uids = [int((await sb.shell("id -u")).stdout) for sb in (a, b)]
        names = [(await sb.shell("id -un && id -gn")).stdout.split() for sb in (a, b)]
    from qwq_agent.sandbox.config import USER_ID_RANGE

    assert uids[0] != uids[1] and all(uid in USER_ID_RANGE for uid in uids)
    assert names == [["sandbox", "sandbox"]] * 2
    for uid in uids:
        with pytest.raises(KeyError):
            pwd.getpwuid(uid)
