"""Issue 10: hostile code in the sandbox cannot confuse the host, outlive its call, or wedge the sandbox
through our own tools. One test (or more) per class of attack, against the real image; each asserts what
the attack would have achieved before the fix (a forged result, a surviving process, a hung editor...)."""

from __future__ import annotations

import asyncio
import json
import socket
import struct

import pytest
import pytest_asyncio

from qwq_agent.sandbox import (
    DockerSandbox,
    InvalidRequest,
    PathOutsideWorkspace,
    SandboxConfig,
    SandboxDead,
    ToolError,
)
from qwq_agent.sandbox.channel import Channel

pytestmark = [pytest.mark.docker, pytest.mark.asyncio(loop_scope="session")]

SMALL = {
    "memory": "256m",
    "pids_limit": 64,
    "workspace_size": "32m",
    "tmp_size": "16m",
    "output_head_bytes": 4096,
    "output_tail_bytes": 4096,
    "interrupt_grace_s": 1.5,
}
# Lists processes of the user's uid other than the interpreter and the listing itself, as "pid comm".
USER_PROCS = (
    'python3 -c "import os\n'
    "for p in os.listdir('/proc'):\n"
    "    if not p.isdigit() or int(p) == os.getpid(): continue\n"
    "    try:\n"
    "        st = open(f'/proc/{p}/status').read(); cmd = open(f'/proc/{p}/cmdline').read()\n"
    "    except OSError: continue\n"
    "    uid = st.split('Uid:')[1].split()[0]\n"
    "    if uid == str(os.getuid()) and '--worker' not in cmd and 'Z' not in st.split('State:')[1].split()[0]:\n"
    "        print(p, cmd.replace(chr(0), ' ').strip())\n"
    "\" | grep -v -e 'bash -c python3' || true"
)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def sb(sandbox_image: str):
    async with DockerSandbox.create(SandboxConfig(image=sandbox_image, **SMALL)) as box:
        yield box


@pytest_asyncio.fixture(loop_scope="session")
async def fresh(sandbox_image: str):
    async with DockerSandbox.create(SandboxConfig(image=sandbox_image, **SMALL)) as box:
        yield box


async def leftovers(box: DockerSandbox) -> str:
    return (await box.shell(USER_PROCS)).stdout


async def wait_for_file(box: DockerSandbox, path: str) -> None:
    r = await box.shell(
        f"for i in $(seq 2000); do [ -e {path} ] && exit 0; sleep 0.01; done; exit 1", timeout=30
    )
    assert r.exit_code == 0, f"{path} never appeared"


# ------------------------------------------------------------------------------------- integrity


async def test_user_code_cannot_reach_or_signal_the_supervisor(sb: DockerSandbox) -> None:
    probe = (
        "import os\n"
        "out = []\n"
        "for p in sorted(int(p) for p in os.listdir('/proc') if p.isdigit()):\n"
        "    uid = open(f'/proc/{p}/status').read().split('Uid:')[1].split()[0]\n"
        "    if uid == str(os.getuid()) or p == 1: continue\n"
        "    for attempt in ('list', 'open', 'kill'):\n"
        "        try:\n"
        "            if attempt == 'list': os.listdir(f'/proc/{p}/fd')\n"
        "            elif attempt == 'open': os.open(f'/proc/{p}/fd/1', os.O_WRONLY)\n"
        "            else: os.kill(p, 9)\n"
        "            out.append((p, attempt, 'ALLOWED'))\n"
        "        except PermissionError: out.append((p, attempt, 'denied'))\n"
        "        except OSError as e: out.append((p, attempt, type(e).__name__))\n"
        "out"
    )
    r = await sb.python(probe)
    assert r.value is not None and "denied" in r.value and "ALLOWED" not in r.value, r
    assert (await sb.python("'still here'")).value == "'still here'" and not (
        await sb.shell("true")
    ).sandbox_replaced


async def test_no_descriptor_of_the_channel_reaches_user_processes(sb: DockerSandbox) -> None:
    # bash's own fds are its pipes and /dev/null; nothing else (the channel, other calls' pipes) crossed exec.
    # Listed by one command that bash waits for: listed from inside a pipeline, the fds list could catch
    # bash between forking its stages, holding a pipe of its own (seen on a busy machine: fd 4).
    r = await sb.shell("ls /proc/$$/fd; true")
    assert sorted(r.stdout.split(), key=int) == ["0", "1", "2"]
    # The interpreter's: stdio, its command, result and reap-answer pipes (3-5), its private copies of
    # stdout and stderr, and the listing's own descriptor.
    r = await sb.python("import os; sorted(int(f) for f in os.listdir('/proc/self/fd'))")
    assert r.value is not None and set(eval(r.value)) <= {0, 1, 2, 3, 4, 5, 6, 7, 8}


@pytest.mark.parametrize(
    "frame",
    [
        "b'garbage, not a frame'",
        "(lambda b: struct.pack('>I', len(b)) + b)(json.dumps({'nonce': '0' * 32, 'value': \"'forged'\", 'error': None, 'images': []}).encode())",
    ],
    ids=["garbage", "well-formed-wrong-nonce"],
)
async def test_a_forked_child_writing_to_the_result_pipe_is_a_protocol_violation(
    fresh: DockerSandbox, frame: str
) -> None:
    await fresh.python("state = 'kept'")
    forge = (
        "import os, json, struct\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        f"    os.write(4, {frame})\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "'genuine'"
    )
    r = await fresh.python(forge)
    assert (
        r.value != "'forged'"
        and r.state_lost
        and r.error is not None
        and r.error.ename == "ProtocolViolation"
    ), r
    r = await fresh.python("'state' in globals()")
    assert r.value == "False" and r.error is None and not r.sandbox_replaced


async def test_a_forged_result_gets_no_more_image_bytes_than_the_interpreters_budget(
    sb: DockerSandbox,
) -> None:
    """User code can write its cell's result frame itself (here by patching the worker's encoder): its
    images are held to the 16 MB the worker keeps to (before: up to the 64 MB frame limit reached the
    host and the trace), the rest dropped with a note."""
    await sb.python("forged_state = 'kept'")
    forge = (
        # The worker's module is out of sys.modules while cells run; its frame below the cell is not.
        "import sys\nf = sys._getframe()\nwhile 'encode_frame' not in f.f_globals:\n    f = f.f_back\n"
        "w = f.f_globals\nreal_encode = w['encode_frame']\n"
        "w['encode_frame'] = lambda r: real_encode({**r, 'images': ['A' * 4_000_000] * 5})"
    )
    try:
        r = await sb.python(forge)
        assert r.error is None and not r.state_lost, r
        assert len(r.images) == 4 and sum(map(len, r.images)) <= 16 * 1024 * 1024
        assert "1 image(s) dropped" in r.stderr, r.stderr
    finally:
        await sb.python("w['encode_frame'] = real_encode")
    r = await sb.python("forged_state")
    assert r.value == "'kept'" and r.images == [] and not r.state_lost


async def test_a_process_forked_in_a_cell_dies_with_the_cell(sb: DockerSandbox) -> None:
    r = await sb.python(
        "import os, time, subprocess\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    time.sleep(1000); os._exit(0)\n"
        "daemon = subprocess.Popen(['setsid', 'sleep', '1001'], start_new_session=True).pid\n"
        "(child, daemon)"
    )
    assert r.value is not None and not r.state_lost
    assert await leftovers(sb) == ""
    # The interpreter answers for itself: the next cell's result is its own.
    assert (await sb.python("6 * 7")).value == "42"


async def test_a_forked_child_running_off_the_end_of_the_cell_writes_no_result(fresh: DockerSandbox) -> None:
    # A child forked without os._exit went on to the end of the cell and wrote a result frame of its own:
    # a second frame for the cell, so the interpreter was replaced and every variable lost.
    await fresh.python("state = 'kept'")
    ends_well = "import os\npid = os.fork()\nif pid:\n    status = os.waitpid(pid, 0)[1]\n'child' if pid == 0 else status"
    r = await fresh.python(ends_well)
    assert r.value == "0" and r.error is None and not r.state_lost, r  # the child exited with 0
    fails = (
        "import os\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    raise ValueError('raised in the child')\n"
        "os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])"
    )
    r = await fresh.python(fails)
    # As a script's child would: its traceback on stderr, exit status 1; the cell's result is the parent's.
    assert r.value == "1" and r.error is None and not r.state_lost, r
    assert "ValueError: raised in the child" in r.stderr, r.stderr
    r = await fresh.python("state")
    assert r.value == "'kept'" and not r.state_lost, r


async def test_other_user_processes_cannot_reach_the_interpreters_pipes(sb: DockerSandbox) -> None:
    await sb.python("pipes_state = 'kept'")
    pid = (await sb.ping()).worker_pid
    r = await sb.shell(f"ls /proc/{pid}/fd; echo garbage > /proc/{pid}/fd/4; echo exit=$?")
    assert "Permission denied" in r.stderr and "exit=1" in r.stdout, r
    r = await sb.python("pipes_state")
    assert r.value == "'kept'" and not r.state_lost


async def test_host_rejects_a_reply_without_its_requests_nonce() -> None:
    host, container = socket.socketpair()
    container.setblocking(False)
    reader, writer = await asyncio.open_unix_connection(sock=host)
    chan = Channel(reader, writer, max_request_bytes=1 << 20, max_reply_bytes=1 << 20)
    loop = asyncio.get_running_loop()
    try:
        first = asyncio.create_task(chan.call("ping", {}, 10))
        second = asyncio.create_task(chan.call("ping", {}, 10))
        sent = b""
        while sent.count(b'"op"') < 2:
            sent += await loop.sock_recv(container, 65536)
        reqs = []
        while sent:
            (n,) = struct.unpack(">I", sent[:4])
            reqs.append(json.loads(sent[4 : 4 + n]))
            sent = sent[4 + n :]
        # The answer to request 1, carrying request 2's nonce (as if forged by someone who saw it).
        forged = json.dumps(
            {"id": reqs[0]["id"], "nonce": reqs[1]["nonce"], "ok": True, "result": {"pong": True}}
        ).encode()
        body = struct.pack(">I", len(forged)) + forged
        await loop.sock_sendall(container, struct.pack(">BxxxI", 1, len(body)) + body)
        for task in (first, second):
            with pytest.raises(SandboxDead, match="nonce"):
                await task
    finally:
        await chan.aclose()
        container.close()


async def test_a_huge_frame_claim_cannot_make_the_host_buffer_it() -> None:
    host, container = socket.socketpair()
    container.setblocking(False)
    reader, writer = await asyncio.open_unix_connection(sock=host)
    chan = Channel(reader, writer, max_request_bytes=1 << 20, max_reply_bytes=1 << 20)
    try:
        call = asyncio.create_task(chan.call("ping", {}, 10))
        body = struct.pack(">I", 2**31) + b"x" * 1000
        await asyncio.get_running_loop().sock_sendall(container, struct.pack(">BxxxI", 1, len(body)) + body)
        with pytest.raises(SandboxDead, match="exceeds the limit"):
            await call
    finally:
        await chan.aclose()
        container.close()


async def test_download_reports_bytes_written_on_the_host(sb: DockerSandbox, tmp_path) -> None:
    await sb.shell("mkdir -p /workspace/dl && head -c 12345 /dev/zero > /workspace/dl/f")
    r = await sb.download("/workspace/dl", tmp_path)
    assert r.bytes == 12345 and (tmp_path / "dl" / "f").stat().st_size == 12345


# ------------------------------------------------------------------------------------- containment


async def test_background_setsid_and_double_forked_jobs_die_when_the_call_returns(sb: DockerSandbox) -> None:
    r = await sb.shell(
        "sleep 301 & nohup sleep 302 >/dev/null 2>&1 & setsid sleep 303 & "
        "(setsid sh -c 'sleep 304 & sleep 305 &' &); disown -a; echo started"
    )
    assert r.stdout == "started\n" and r.exit_code == 0
    assert await leftovers(sb) == ""


async def test_everything_dies_when_the_call_times_out(sb: DockerSandbox) -> None:
    r = await sb.shell("(setsid sh -c 'sleep 306 &' &); trap '' TERM INT HUP; sleep 100", timeout=1)
    assert r.timed_out and r.exit_code == -9
    assert await leftovers(sb) == ""


async def test_setsid_fork_loop_at_the_pids_limit_is_cleaned_up(sb: DockerSandbox) -> None:
    r = await sb.shell("while true; do setsid sleep 1000 & done", timeout=2)
    assert r.timed_out
    assert await leftovers(sb) == ""
    assert (await sb.shell("echo ok")).stdout == "ok\n"
    assert (await sb.python("1 + 1")).value == "2"


async def test_python_fork_bomb_in_the_background_is_cleaned_up(sb: DockerSandbox) -> None:
    r = await sb.python(
        "import os\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    while True:\n"
        "        try: os.fork()\n"
        "        except OSError: pass\n"
        "'launched'"
    )
    assert r.value == "'launched'"
    assert await leftovers(sb) == ""
    assert (await sb.shell("echo ok")).stdout == "ok\n"


# Forks children that sleep until the pids limit refuses one, never waiting for any; `n` counts them.
FORK_TO_THE_LIMIT = (
    "n = 0\n"
    "while True:\n"
    "    try:\n"
    "        pid = os.fork()\n"
    "    except OSError:\n"
    "        break\n"
    "    if pid == 0:\n"
    "        time.sleep(1000); os._exit(0)\n"
    "    n += 1\n"
)
COUNT_ZOMBIES = (
    'python3 -c "import os\n'
    "z = 0\n"
    "for p in os.listdir('/proc'):\n"
    "    try: d = open(f'/proc/{p}/stat').read() if p.isdigit() else ''\n"
    "    except OSError: continue\n"
    "    z += bool(d) and d[d.rindex(')') + 2] == 'Z'\n"
    'print(z)"'
)


async def test_children_a_cell_never_waited_for_do_not_hold_the_pids_limit(fresh: DockerSandbox) -> None:
    # Killed at the cell's end, they stayed zombies of the interpreter, which never waits for them: every
    # later shell call failed "(a fork bomb in a running call?)" though none ran, until reset_python.
    r = await fresh.python("import os, time\n" + FORK_TO_THE_LIMIT + "n")
    assert r.error is None and r.value is not None and int(r.value) > 30, r
    r = await fresh.shell("echo ok; " + COUNT_ZOMBIES)
    assert r.stdout == "ok\n0\n", r
    r = await fresh.python(
        "import threading\nt = threading.Thread(target=lambda: None)\nt.start()\nt.join()\nn"
    )
    assert r.error is None and not r.state_lost, r


async def test_a_child_a_thread_will_wait_for_keeps_its_exit_status(fresh: DockerSandbox) -> None:
    # The reap between cells took every ended child of the interpreter, those a Popen still held unwaited
    # too: the thread that waited for them in the next cell got returncode 0 for a child that exited 3,
    # and for one the cell's end had killed.
    r = await fresh.python(
        "import subprocess, threading, time\n"
        "exited = subprocess.Popen(['sh', '-c', 'exit 3'])\n"
        "while open(f'/proc/{exited.pid}/stat').read().rsplit(')', 1)[1].split()[0] != 'Z':\n"
        "    time.sleep(0.001)  # it has exited; nobody has waited for it yet\n"
        "killed = subprocess.Popen(['sleep', '1000'])  # killed at this cell's end\n"
        "go, codes = threading.Event(), []\n"
        "def wait_later():\n"
        "    go.wait()\n"
        "    codes.extend([exited.wait(), killed.wait()])\n"
        "waiter = threading.Thread(target=wait_later)\n"
        "waiter.start()"
    )
    assert r.error is None, r
    r = await fresh.python("go.set()\nwaiter.join()\ncodes")
    assert r.value == "[3, -9]" and not r.state_lost, r
    # What no Popen holds is still reaped: no zombie is left.
    assert (await fresh.shell(COUNT_ZOMBIES)).stdout == "0\n"


async def test_a_child_a_popen_holds_is_looked_for_once_not_at_every_cells_end(fresh: DockerSandbox) -> None:
    # While a Popen held an exited child unwaited, every cell's end scanned the whole heap again for it
    # (`gc.get_objects`), though nothing had changed: with millions of objects, a second per cell, and
    # past the reap's wait it ran on into the next cell's limit. Counted here by wrapping gc.get_objects.
    zombie = (
        "while open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[0] != 'Z':\n    time.sleep(0.001)\n"
    )
    r = await fresh.python(
        "import gc, os, subprocess, time\n"
        "scans, real_get_objects = [], gc.get_objects\n"
        "def counted(*args):\n"
        "    scans.append(1)\n"
        "    return real_get_objects(*args)\n"
        "gc.get_objects = counted\n"
        "server = subprocess.Popen(['sh', '-c', 'exit 1'])\n"
        "pid = server.pid\n" + zombie
    )
    assert r.error is None, r
    for _ in range(3):
        assert (await fresh.python("1 + 1")).value == "2"
    assert (await fresh.python("len(scans)")).value == "1"
    # Another ended child is looked for again, and reaped (no Popen holds it); the held one is not.
    r = await fresh.python("pid = os.fork()\nif pid == 0:\n    os._exit(0)\n" + zombie)
    assert r.error is None, r
    assert (await fresh.shell(COUNT_ZOMBIES)).stdout == "1\n"
    r = await fresh.python("len(scans), server.wait()")
    assert r.value == "(2, 1)" and not r.state_lost, r
    assert (await fresh.shell(COUNT_ZOMBIES)).stdout == "0\n"


async def test_processes_a_thread_forks_after_its_cell_ended_do_not_hold_the_pids_limit(
    fresh: DockerSandbox,
) -> None:
    # A thread left running forks up to the limit once the shell call below is over (its keeper gone):
    # no call runs, the processes belong to none, and the next call found no pid for itself.
    await fresh.python(
        "import os, threading, time\n"
        "def fill():\n"
        "    while not (os.path.exists('/tmp/go') and open('/tmp/go').read().strip()): time.sleep(0.01)\n"
        "    keeper = int(open('/tmp/go').read())\n"
        "    while os.path.exists(f'/proc/{keeper}'): time.sleep(0.001)\n"
        + "".join("    " + line + "\n" for line in FORK_TO_THE_LIMIT.splitlines())
        + "    with open('/workspace/.filled', 'w') as f: f.write(str(n))\n"
        "    os.rename('/workspace/.filled', '/workspace/filled')\n"
        "threading.Thread(target=fill, daemon=True).start()\n"
        "kept = 'state'"
    )
    await fresh.shell("echo $PPID > /tmp/go")
    while True:  # until the thread is done (a view needs no process, only a thread of the supervisor)
        try:
            filled = (await fresh.view("/workspace/filled")).output
        except ToolError:
            await asyncio.sleep(0.01)
            continue
        break
    assert "1\t" in filled
    assert (await fresh.shell("echo ok")).stdout == "ok\n"
    r = await fresh.python("kept")
    assert r.value == "'state'" and not r.state_lost, r


# A child whose main thread ends (pthread_exit) while a thread of it goes on writing a counter: /proc shows
# its thread-group leader as a zombie (Z), though the process still runs.
GHOST_CHILD = (
    "import ctypes, threading, time\n"
    "def write():\n"
    "    n = 0\n"
    "    while True:\n"
    "        n += 1\n"
    "        with open('/workspace/ghost.txt', 'w') as f: f.write(str(n))\n"
    "        time.sleep(0.01)\n"
    "threading.Thread(target=write).start()\n"
    "ctypes.CDLL(None).pthread_exit(None)\n"
)
# Starts GHOST_CHILD (through `start(argv)`) and waits until it wrote and its main thread is gone.
GHOST_STARTED = (
    "import os, sys, time\n"
    f"open('/workspace/ghost.py', 'w').write({GHOST_CHILD!r})\n"
    "def state(pid):\n"
    "    data = open(f'/proc/{pid}/stat').read()\n"
    "    return data[data.rindex(')') + 2]\n"
    "ghost = start([sys.executable, '/workspace/ghost.py'])\n"
    "deadline = time.monotonic() + 20\n"
    "while not (state(ghost) == 'Z' and os.path.exists('/workspace/ghost.txt')):\n"
    "    assert time.monotonic() < deadline, 'the child never ended its main thread'\n"
    "    time.sleep(0.01)\n"
)
# "tid state" of each thread of process {pid} that is neither a zombie nor dead; nothing once it is all gone.
LIVE_THREADS = (
    'python3 -c "import os\n'
    "try: tids = os.listdir('/proc/{pid}/task')\n"
    "except OSError: tids = []\n"
    "for t in tids:\n"
    "    try: data = open(f'/proc/{pid}/task/{{t}}/stat').read()\n"
    "    except OSError: continue\n"
    "    s = data[data.rindex(')') + 2]\n"
    "    if s not in 'ZX': print(t, s)\n"
    '"'
)


async def test_a_child_whose_main_thread_exited_dies_with_the_cell(fresh: DockerSandbox) -> None:
    # Its leader showed as a zombie, so the end-of-cell kill took it for an unreaped child of the spared
    # interpreter and let its thread run on; the next interpreter stop (here: the restore) then waited on
    # that "zombie" for the whole kill budget and the supervisor exited, taking the container with it.
    r = await fresh.python(
        "import subprocess\n"
        "def start(argv):\n"
        "    return subprocess.Popen(argv).pid\n" + GHOST_STARTED + "ghost",
        timeout=30,
    )
    assert r.error is None and r.value is not None and not r.state_lost, r
    pid = int(r.value)
    assert (await fresh.shell(LIVE_THREADS.format(pid=pid))).stdout == ""
    first = (await fresh.shell("cat /workspace/ghost.txt")).stdout
    await fresh.ping()
    assert (await fresh.shell("cat /workspace/ghost.txt")).stdout == first
    snap = await fresh.snapshot()
    await fresh.restore(snap, timeout=60)
    assert (await fresh.python("6 * 7")).value == "42"
    assert (await fresh.shell("cat /workspace/ghost.txt")).stdout == first


async def test_pausing_and_killing_a_tree_reach_a_child_whose_main_thread_exited(
    fresh: DockerSandbox,
) -> None:
    # The supervisor's own stop_tree/kill_tree, run in the sandbox's interpreter on a tree the cell owns: a
    # root that reaps, as a keeper does, with the thread-only child under it. stop_tree is the keep_python
    # pause of a restore, kill_tree the interpreter's stop; both skipped the child as a zombie.
    r = await fresh.python(
        "import json, os, signal, subprocess, sys\n"
        "sys.path.insert(0, '/opt/qwq')\n"
        "from supervisor import procs\n"
        "ROOT = 'import subprocess, sys; p = subprocess.Popen(sys.argv[1:]); print(p.pid, flush=True); p.wait(); sys.stdin.read()'\n"
        "root = None\n"
        "def start(argv):\n"
        "    global root\n"
        "    root = subprocess.Popen([sys.executable, '-c', ROOT, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE)\n"
        "    return int(root.stdout.readline())\n" + GHOST_STARTED + "def live_states():\n"
        "    out = []\n"
        "    for t in os.listdir(f'/proc/{ghost}/task') if os.path.exists(f'/proc/{ghost}') else []:\n"
        "        try: data = open(f'/proc/{ghost}/task/{t}/stat').read()\n"
        "        except OSError: continue\n"
        "        if data[data.rindex(')') + 2] not in 'ZX': out.append(data[data.rindex(')') + 2])\n"
        "    return out\n"
        "seen = {'ghost': ghost, 'descendants': procs.descendants(root.pid)}\n"
        "stopped = procs.stop_tree(root.pid, budget=5)\n"
        "seen['stopped'], seen['while_paused'] = sorted(stopped), live_states()\n"
        "procs.continue_tree(stopped)\n"
        "seen['killed'] = procs.kill_tree(root.pid, budget=3)\n"
        "seen['after_kill'] = live_states()\n"
        "try: os.kill(ghost, signal.SIGKILL)  # for the old code: no ghost outlives the test\n"
        "except ProcessLookupError: pass\n"
        "root.kill(); root.wait()\n"
        "print(json.dumps(seen))",
        timeout=30,
    )
    assert r.error is None, r
    seen = json.loads(r.stdout)
    assert seen["descendants"] == [seen["ghost"]], seen
    assert seen["stopped"] == [seen["ghost"]] and seen["while_paused"] == ["T"], seen
    assert seen["killed"] and seen["after_kill"] == [], seen


# A thread left in the interpreter catches the ripgrep of a search (held stopped while it looks) and reports
# how it runs: its bounding set, nice value, oom_score_adj, and its parent and grandparent beside the
# supervisor's pid (the parent of the interpreter's own keeper).
RG_WATCHER = (
    "import os, signal, threading\n"
    "def ppid(pid):\n"
    "    data = open(f'/proc/{pid}/stat').read()\n"
    "    return int(data[data.rindex(')') + 2 :].split()[1])\n"
    "SUPERVISOR = ppid(os.getppid())\n"
    "SEEN = []\n"
    "def watch():\n"
    "    while not SEEN:\n"
    "        for p in os.listdir('/proc'):\n"
    "            try:\n"
    "                if not p.isdigit() or open(f'/proc/{p}/comm').read().strip() != 'rg': continue\n"
    "                os.kill(int(p), signal.SIGSTOP)\n"
    "                status = open(f'/proc/{p}/status').read()\n"
    "                stat = open(f'/proc/{p}/stat').read()\n"
    "                SEEN.append({'capbnd': status.split('CapBnd:')[1].split()[0],\n"
    "                             'nice': int(stat[stat.rindex(')') + 2 :].split()[16]),\n"
    "                             'oom_score_adj': int(open(f'/proc/{p}/oom_score_adj').read()),\n"
    "                             'parent_is_supervisor': ppid(p) == SUPERVISOR,\n"
    "                             'grandparent_is_supervisor': ppid(ppid(p)) == SUPERVISOR})\n"
    "                os.kill(int(p), signal.SIGCONT)\n"
    "            except OSError:\n"
    "                continue\n"
    "threading.Thread(target=watch, daemon=True).start()\n"
)


async def test_ripgrep_runs_as_user_code_under_a_keeper(fresh: DockerSandbox) -> None:
    # search started ripgrep straight from the supervisor (Popen(user=...)): no keeper, the supervisor's
    # bounding set, not niced, not first for the OOM killer; a thread left in the interpreter could then
    # ptrace it into starting a process that no call's end ever killed.
    await fresh.shell(
        "python3 -c \"open('/workspace/big.txt', 'w').write(('abc def ghi ' * 20 + '\\n') * 40000)\""
    )
    await fresh.python(RG_WATCHER)
    await fresh.search(r"(\w+\s+){5}\d", path="/workspace/big.txt", timeout=30)
    r = await fresh.python("SEEN")
    assert r.value is not None and r.value != "[]", "the watcher never caught ripgrep running"
    seen = eval(r.value)[0]
    assert seen == {
        "capbnd": "0000000000000000",
        "nice": 19,
        "oom_score_adj": 1000,
        "parent_is_supervisor": False,
        "grandparent_is_supervisor": True,
    }, seen
    # The same spawn path as shell and python: their oom_score_adj write had been refused silently too.
    assert (await fresh.shell("cat /proc/self/oom_score_adj")).stdout == "1000\n"


async def test_host_cancellation_kills_the_shell_call(sb: DockerSandbox) -> None:
    call = asyncio.create_task(
        sb.shell("touch /tmp/cancel-sh; setsid sleep 307 & sleep 308; touch /tmp/never", timeout=60)
    )
    await wait_for_file(sb, "/tmp/cancel-sh")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    r = await sb.shell(
        f"for i in $(seq 1000); do [ -z \"$({USER_PROCS} | grep 'sleep 30[78]')\" ] && break; sleep 0.01; done; {USER_PROCS}",
        timeout=30,
    )
    assert "sleep" not in r.stdout, r.stdout
    assert (await sb.shell("[ -e /tmp/never ] && echo ran || echo no")).stdout == "no\n"


async def test_host_cancellation_interrupts_the_python_cell(sb: DockerSandbox) -> None:
    await sb.python("kept = 1")
    code = "open('/tmp/cancel-py', 'w').close()\nimport time\nwhile True:\n    time.sleep(0.01)"
    call = asyncio.create_task(sb.python(code, timeout=300))
    await wait_for_file(sb, "/tmp/cancel-py")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    # Had the cell kept running, this one would wait behind it for the whole timeout and report it.
    r = await sb.python("kept", timeout=30)
    assert r.value == "1" and not r.timed_out and r.error is None


# ------------------------------------------------------------------------------------- our own tools


async def test_view_of_a_one_gigabyte_single_line_is_bounded(fresh: DockerSandbox) -> None:
    await fresh.shell(
        "truncate -s 1G /workspace/huge && printf 'x' | dd of=/workspace/huge bs=1 seek=0 conv=notrunc 2>/dev/null"
    )
    r = await fresh.view("/workspace/huge")
    assert (
        "more bytes on this line not shown" in r.output
        and len(r.output) < 17_000
        and "<response clipped>" in r.output
    )
    r = await fresh.view("/workspace/huge", [1, 1])
    assert len(r.output) < 17_000
    assert not (await fresh.shell("true")).sandbox_replaced


async def test_every_editor_output_is_clipped_like_view(sb: DockerSandbox) -> None:
    # Only `view` of a file was bounded: the snippet of an edit in a minified file (one 2 MB line), the
    # whole file undo_edit echoes and a listing of 900 long names came back whole.
    await sb.shell(
        "mkdir -p /workspace/clip/data && cd /workspace/clip && "
        "python3 -c \"open('app.min.js', 'w').write('var a=1;' + 'x=2;' * 500000 + '\\n')\" && "
        "seq -f 'v%g = 1' 1 50000 > big.py && "
        "for i in $(seq -w 1 900); do : > data/sample_${i}_with_a_fairly_descriptive_name.json; done"
    )
    outputs = {
        "str_replace": (await sb.str_replace("/workspace/clip/app.min.js", "var a=1;", "var a=3;")).output,
        "insert": (await sb.insert("/workspace/clip/app.min.js", 0, "// hi")).output,
    }
    await sb.str_replace("/workspace/clip/big.py", "v5 = 1\n", "v5 = 55\n")
    outputs["undo_edit"] = (await sb.undo_edit("/workspace/clip/big.py")).output
    outputs["view dir"] = (await sb.view("/workspace/clip/data")).output
    for what, out in outputs.items():
        assert len(out) < 17_000 and "<response clipped>" in out, (what, len(out))
    for what in ("str_replace", "insert"):
        assert "more characters on this line not shown" in outputs[what], what
        assert outputs[what].endswith("Edit the file again if necessary."), what
    assert "     1\tv1 = 1\n     2\tv2 = 1" in outputs["undo_edit"]
    assert "more entries not shown" in outputs["view dir"]
    assert (
        await sb.shell("grep -c . /workspace/clip/big.py; head -c 9 /workspace/clip/app.min.js")
    ).stdout == ("50000\n// hi\nvar")
    await sb.shell("rm -rf /workspace/clip")


async def test_str_replace_with_millions_of_matches_is_bounded(sb: DockerSandbox) -> None:
    await sb.shell("head -c 5000000 /dev/zero | tr '\\0' 'a' > /workspace/many.txt")
    with pytest.raises(ToolError, match=r"Multiple occurrences .* in lines \[1, 1, .*\] and more"):
        await sb.str_replace("/workspace/many.txt", "a", "b")


async def test_old_str_counts_overlapping_occurrences(sb: DockerSandbox) -> None:
    await sb.create_file("/workspace/overlap.txt", "aaa")
    with pytest.raises(ToolError, match=r"Multiple occurrences of old_str `aa` in lines \[1, 1\]"):
        await sb.str_replace("/workspace/overlap.txt", "aa", "b")
    assert (await sb.shell("cat /workspace/overlap.txt")).stdout == "aaa"


async def test_undo_history_is_bounded_in_bytes_and_says_so(sandbox_image: str) -> None:
    async with DockerSandbox.create(SandboxConfig(image=sandbox_image, max_undo_bytes=1500)) as box:
        await box.create_file("/workspace/u.txt", "x" * 1000 + "\nONE\n")
        r1 = await box.str_replace("/workspace/u.txt", "ONE", "TWO")
        assert "dropped" not in r1.output
        r2 = await box.str_replace("/workspace/u.txt", "TWO", "THREE")
        assert "the undo history is limited to 1500 bytes" in r2.output
        await box.undo_edit("/workspace/u.txt")
        assert (await box.shell("tail -n 1 /workspace/u.txt")).stdout == "TWO\n"
        with pytest.raises(ToolError, match="older history was dropped"):
            await box.undo_edit("/workspace/u.txt")


async def test_very_deep_paths_give_clear_errors(sb: DockerSandbox, tmp_path) -> None:
    deep = "/workspace/" + "d/" * 1200 + "f.txt"  # 1200 components: deeper than Python's recursion limit
    r = await sb.create_file(deep, "deep")
    assert "created" in r.output and "deep" in (await sb.view(deep)).output
    with pytest.raises(InvalidRequest, match="limited to 4096 bytes"):
        await sb.view("/workspace/" + "x" * 5000)
    r = await sb.shell(
        "mkdir -p /workspace/tower && python3 -c \"import os\nos.chdir('/workspace/tower')\n"
        "for _ in range(1500):\n    os.mkdir('d'); os.chdir('d')\"",
        timeout=120,
    )
    assert r.exit_code == 0, r
    # The download walks with a stack, not recursion: the depth is no limit (it was "nested too deeply").
    try:
        res = await sb.download("/workspace/tower", tmp_path)
        assert res.skipped == [] and (tmp_path / "tower" / ("d/" * 1500)).is_dir()
    finally:
        # pytest's own clean-up of tmp_path recurses per level and dies at this depth; rm does not.
        rm = await asyncio.create_subprocess_exec("rm", "-rf", str(tmp_path / "tower"))
        assert await asyncio.wait_for(rm.wait(), 120) == 0
    assert (await sb.shell("echo ok")).stdout == "ok\n"


@pytest.mark.parametrize("kind", ["fifo", "socket"])
async def test_fifos_and_sockets_are_refused_without_opening(sb: DockerSandbox, kind: str) -> None:
    path = f"/workspace/special-{kind}"
    if kind == "fifo":
        await sb.shell(f"rm -f {path}; mkfifo {path}")
    else:
        await sb.python(
            f"import socket, os\nif os.path.exists('{path}'): os.unlink('{path}')\nkeep = socket.socket(socket.AF_UNIX)\nkeep.bind('{path}')"
        )
    what = r"a FIFO \(named pipe\)" if kind == "fifo" else "a socket"
    with pytest.raises(ToolError, match=f"is {what}, not a regular file; it was not opened"):
        await sb.view(path)
    with pytest.raises(ToolError, match=f"is {what}"):
        await sb.str_replace(path, "a", "b")
    with pytest.raises(ToolError, match=f"is {what}"):
        await sb.insert(path, 0, "x")


async def test_a_link_to_a_device_is_refused(sb: DockerSandbox) -> None:
    await sb.shell("ln -sf /dev/zero /workspace/zero")
    with pytest.raises(PathOutsideWorkspace):
        await sb.view("/workspace/zero")


async def test_edit_on_a_full_disk_leaves_the_original_intact(sandbox_image: str) -> None:
    async with DockerSandbox.create(SandboxConfig(image=sandbox_image, workspace_size="1m")) as box:
        original = "HEAD\n" + "keep me\n" * 10_000  # 80 kB
        await box.create_file("/workspace/doc.txt", original)
        await box.shell("cat /dev/zero > /workspace/fill 2>/dev/null; true")
        with pytest.raises(ToolError, match=r"No space left on device\. The file was not changed"):
            await box.str_replace("/workspace/doc.txt", "HEAD\n", "grown\n" * 200_000)  # 1.2 MB
        r = await box.shell("md5sum < /workspace/doc.txt; ls -A /workspace")
        expected = (await box.python(f"import hashlib; hashlib.md5({original!r}.encode()).hexdigest()")).value
        assert expected is not None and r.stdout.split()[0] == expected.strip("'")
        assert ".qwq-tmp" not in r.stdout  # no temporary file left behind


async def test_error_observations_are_capped(sb: DockerSandbox) -> None:
    r = await sb.python("raise ValueError('x' * 5_000_000)")
    assert r.error is not None and r.error.ename == "ValueError"
    assert (
        len(r.error.evalue) < 70_000
        and len(r.error.traceback) < 70_000
        and "characters dropped" in r.error.evalue
    )
    await sb.create_file("/workspace/small.txt", "abc")
    with pytest.raises(ToolError) as exc:
        await sb.str_replace("/workspace/small.txt", "z" * 3_000_000, "y")
    assert len(str(exc.value)) < 10_000


async def _cpu_ns(box: DockerSandbox) -> int:
    stats = await box.engine.stats(box.id)
    return stats["cpu_stats"]["cpu_usage"]["total_usage"]


@pytest.mark.parametrize("op", ["python", "shell"])
async def test_supervisor_does_not_spin_when_user_code_closes_its_output(sb: DockerSandbox, op: str) -> None:
    before = await _cpu_ns(sb)
    if op == "python":
        r = await sb.python(
            "import os, time\n"
            "for fd in map(int, os.listdir('/proc/self/fd')):\n"
            "    if fd not in (3, 4):\n"
            "        try: os.close(fd)\n"
            "        except OSError: pass\n"
            "time.sleep(3)\n"
            "'slept'"
        )
        assert r.value == "'slept'"
    else:
        r = await sb.shell("exec >&- 2>&-; sleep 3")
        assert r.exit_code == 0
    used_s = (await _cpu_ns(sb) - before) / 1e9
    # Idle user code for 3 s: a spinning supervisor would burn ~3 CPU-seconds (cpus=1).
    assert used_s < 1.0, f"the container used {used_s:.2f} CPU-s while user code slept"
    assert (await sb.python("'next'")).value == "'next'"


async def test_python_on_path_is_python3(sb: DockerSandbox) -> None:
    r = await sb.shell("command -v python && python -c 'import sys; print(sys.version_info[0])'")
    assert r.exit_code == 0 and r.stdout.splitlines()[-1] == "3"


async def test_one_calls_end_does_not_kill_another_calls_processes(sb: DockerSandbox) -> None:
    # Calls run side by side; each one's cleanup reaches only its own keeper's descendants.
    long_shell = asyncio.create_task(sb.shell("touch /tmp/long-sh; sleep 2; echo long-done", timeout=30))
    long_cell = asyncio.create_task(
        sb.python(
            "import subprocess\nopen('/tmp/long-py', 'w').close()\nsubprocess.run(['sleep', '2']).returncode",
            timeout=30,
        )
    )
    await wait_for_file(sb, "/tmp/long-sh")
    await wait_for_file(sb, "/tmp/long-py")
    for _ in range(5):
        assert (await sb.shell("sleep 0.05 & echo short")).stdout == "short\n"
    assert (await long_shell).stdout == "long-done\n"
    assert (await long_cell).value == "0"


async def test_too_many_or_too_large_figures_are_dropped_not_the_interpreter(sandbox_image: str) -> None:
    # 14 photo-like 1500x1500 figures once made a 145 MB result frame, over the result pipe's limit: the
    # interpreter was killed as a protocol violator and every variable was lost, because of plots.
    code = (
        "import numpy as np, matplotlib\n"
        "matplotlib.use('Agg')\n"
        "import matplotlib.pyplot as plt\n"
        "rng = np.random.default_rng(0)\n"
        "for i in range(3):\n"
        "    f = plt.figure(figsize=(15, 15), dpi=100)\n"
        "    f.figimage(rng.integers(0, 255, (1500, 1500, 3), dtype=np.uint8))\n"
        "for i in range(20):\n"
        "    plt.figure(figsize=(1, 1)); plt.plot([0, i])\n"
        "print('plotted')\n"
    )
    async with DockerSandbox.create(SandboxConfig(image=sandbox_image)) as sb:
        await sb.python("model = 'trained for an hour'")
        r = await sb.python(code, timeout=120)
        assert r.ok and not r.state_lost, r
        assert "plotted" in r.stdout
        # One photo-like figure fits the 16 MB budget, two do not; then 19 small ones up to 20 in all.
        assert len(r.images) == 20
        assert "3 figure(s) not returned" in r.stderr
        assert (await sb.python("model")).value == "'trained for an hour'"


async def test_a_figure_that_cannot_render_is_reported_once_and_closed(fresh: DockerSandbox) -> None:
    # 100000 px wide: Agg refuses it. It was never closed, so every later cell (even `1 + 1`) failed with
    # its ValueError until the model guessed to call plt.close('all'); the good figure beside it was lost.
    r = await fresh.python(
        "import matplotlib.pyplot as plt\n"
        "plt.figure(figsize=(1000, 10), dpi=100); plt.plot([1, 2])\n"
        "plt.figure(figsize=(2, 2)); plt.plot([3, 4])\n"
        "'made'"
    )
    assert r.ok and r.value == "'made'", r
    assert len(r.images) == 1  # the figure that renders still comes back
    assert r.stderr.count("could not be rendered") == 1 and "Image size of 100000x1000" in r.stderr, r.stderr
    for code, value in (("1 + 1", "2"), ("x = 3", None), ("x", "3")):
        r = await fresh.python(code)
        assert r.ok and r.value == value and r.stderr == "" and r.images == [], (code, r)


async def test_a_figure_interrupted_while_rendering_is_closed(fresh: DockerSandbox) -> None:
    # The timeout's SIGINT landed inside savefig and left the figure open: every later cell re-rendered it
    # at its end and timed out too. The slow artist stands in for a 50-million-point scatter plot.
    await fresh.python("import time, matplotlib.pyplot as plt\nfrom matplotlib.artist import Artist")
    r = await fresh.python(
        "class Slow(Artist):\n"
        "    def draw(self, renderer):\n"
        "        while True:\n"
        "            time.sleep(0.05)\n"
        "plt.figure().add_artist(Slow())\n"
        "'figure made'",
        timeout=2,
    )
    assert r.timed_out and not r.state_lost and r.images == [], r
    for code, value in (("1 + 1", "2"), ("2 + 2", "4")):
        later = await fresh.python(code, timeout=10)
        assert not later.timed_out and later.ok and later.value == value and later.stderr == "", (code, later)
    # The cell that made the figure says why none came back.
    assert "interrupted while its figures were being rendered" in r.stderr, r.stderr
