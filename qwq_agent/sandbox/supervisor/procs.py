"""Spawning user processes so that everything they start can be found and killed when the call ends.

Each spawn forks a *keeper*: a child of the supervisor that keeps the supervisor's uid, becomes a child
subreaper (PR_SET_CHILD_SUBREAPER) and forks the user process, which drops to the user's uid and execs.
Whatever the user process starts (`&`, nohup, setsid, double forks) stays a descendant of the keeper:
orphans are re-parented to the nearest subreaper, and user code cannot kill the keeper (another uid), so
it cannot escape to an ancestor. At the call's end `kill_tree` SIGKILLs every descendant, in rounds until
none is left (a fork bomb adds members while the first round is delivered); the keeper reaps them and
exits. The keeper reports the user process's exit status on a pipe, so the supervisor waits on file
descriptors only and never polls.
"""

import os
import select
import signal
import struct
import time
from collections.abc import Callable

from .framing import RequestError
from .privileges import PR_SET_CHILD_SUBREAPER, PR_SET_DUMPABLE, act_on_files_as_self, drop_to_user, prctl
from .settings import USER_NICE

_STATUS = struct.Struct(">i")
# Set by the server: what to do when a process tree cannot be killed within the budget. The sandbox can
# then no longer promise containment, so the server exits and the host replaces the container.
on_containment_failure: Callable[[], object] | None = None
_FD_FLOOR = 100  # fds are moved above this before being placed, so no source is clobbered


def _keeper(argv, cwd, env, fds, status_w, new_session):
    try:
        # No PR_SET_PDEATHSIG: it fires when the forking *thread* ends, and request threads end all the
        # time. Should the supervisor die, tini exits with it and the container's pid namespace goes.
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        child = os.fork()
        if child == 0:
            _exec_user(argv, cwd, env, fds, new_session)
        os.write(status_w, _STATUS.pack(child))
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break  # no descendant is left: the call's processes are all gone
            except InterruptedError:
                continue
            if pid == child:
                os.write(status_w, _STATUS.pack(os.waitstatus_to_exitcode(status)))
    finally:
        os._exit(0)


def _exec_user(argv, cwd, env, fds, new_session):
    import fcntl

    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        if new_session:
            os.setsid()
        moved = {target: fcntl.fcntl(source, fcntl.F_DUPFD, _FD_FLOOR) for target, source in fds.items()}
        for target, source in moved.items():
            os.dup2(source, target, inheritable=True)
        top = max(fds)
        for fd in range(top):
            if fd not in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
        os.closerange(top + 1, 1 << 20)  # the channel, other calls' pipes: nothing else crosses exec
        # The OOM killer takes user code before the supervisor. The write was refused (EACCES, silently):
        # forked from the supervisor, this process is not dumpable (its /proc files are root's), and forked
        # by a request thread, it accesses files as the user. So it writes with its own uid, dumpable for
        # the write alone, while it still has the supervisor's uid (no user process can reach it).
        try:
            act_on_files_as_self()
            prctl(PR_SET_DUMPABLE, 1)
            fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
            os.write(fd, b"1000")
            os.close(fd)
        except OSError:
            pass
        finally:
            prctl(PR_SET_DUMPABLE, 0)
        # User code runs niced (it cannot raise its priority back: no CAP_SYS_NICE), so the supervisor and the
        # keepers, sharing the container's CPU quota with it, still get scheduled when a fork bomb fills the
        # pids limit with spinning processes; otherwise the kill rounds starve and the bomb outlives its call.
        os.setpriority(os.PRIO_PROCESS, 0, USER_NICE)
        drop_to_user()
        os.chdir(cwd)
        os.execve(argv[0], argv, env)
    except BaseException as exc:
        try:
            os.write(2, f"could not start {argv[0]}: {exc}\n".encode())
        finally:
            os._exit(127)


class Spawned:
    """A user process (`pid`) under its keeper (`keeper`); `status_fd` becomes readable when it exits."""

    def __init__(self, argv, *, cwd, env, fds, new_session=True):
        status_r, status_w = os.pipe()
        try:
            keeper = os.fork()
        except BlockingIOError:
            os.close(status_r)
            os.close(status_w)
            raise RequestError(
                "ResourceExhausted",
                "no process could be started: the sandbox's limit on processes and threads is used up",
            ) from None
        if keeper == 0:
            _keeper(argv, cwd, env, fds, status_w, new_session)
        os.close(status_w)
        self.keeper, self.status_fd = keeper, status_r
        self.exit_code = None
        self._reaped = False
        head = b""
        while len(head) < 4:
            chunk = os.read(status_r, 4 - len(head))
            if not chunk:
                break
            head += chunk
        self.pid = _STATUS.unpack(head)[0] if len(head) == 4 else None
        os.set_blocking(status_r, False)
        if self.pid is None:
            self.close()
            raise RequestError(
                "ResourceExhausted", "the user process could not be forked (process limit used up)"
            )

    def read_status(self):
        """The exit code once the user process has exited (negative: killed by that signal), else None."""
        if self.exit_code is None:
            try:
                data = os.read(self.status_fd, 4)
            except BlockingIOError:
                return None
            if len(data) == 4:
                self.exit_code = _STATUS.unpack(data)[0]
        return self.exit_code

    def kill_all(self, *, spare_main=False, budget=10.0):
        """SIGKILL every descendant of the keeper (with `spare_main`, all but the user process itself)."""
        return kill_tree(self.keeper, spare={self.pid} if spare_main else set(), budget=budget)

    def close(self, budget=10.0):
        """Kill everything, reap the keeper, release the status pipe; returns the exit code."""
        if self._reaped:
            return self.exit_code
        if not kill_tree(self.keeper, spare=set(), budget=budget) and on_containment_failure is not None:
            on_containment_failure()
        # The keeper exits once it has reaped the last descendant; its end of the pipe closing says so.
        deadline = time.monotonic() + 2.0
        while True:
            ready, _, _ = select.select([self.status_fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(self.keeper, signal.SIGKILL)
                break
            data = os.read(self.status_fd, 4)
            if not data:
                break
            if len(data) == 4 and self.exit_code is None:
                self.exit_code = _STATUS.unpack(data)[0]
        os.waitpid(self.keeper, 0)
        os.close(self.status_fd)
        self._reaped = True
        return self.exit_code


def spawn_piped(argv, *, cwd, env):
    """`Spawned(argv)` reading /dev/null, its stdout and stderr on new pipes: `(proc, out_r, err_r)`.

    The write ends are closed here (once the user's processes are gone, the read ends see EOF); should the
    start fail, the read ends are closed too.
    """
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        proc = Spawned(argv, cwd=cwd, env=env, fds={0: devnull, 1: out_w, 2: err_w})
    except BaseException:
        for fd in (out_r, err_r):
            os.close(fd)
        raise
    finally:
        for fd in (out_w, err_w, devnull):
            os.close(fd)
    return proc, out_r, err_r


_DEAD = (b"Z", b"X")


def _state(data: bytes) -> bytes:
    """The state letter of a /proc/.../stat line (after the command name, which may hold anything)."""
    return data[data.rindex(b")") + 2 :][:1]


def _thread_states(pid):
    """(tid, state letter) of each thread of `pid` still there; nothing when its task folder is gone."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                yield tid, _state(f.read())
        except OSError:
            continue  # that thread just went


def _threads_live(pid: str) -> bool:
    """Whether a thread of `pid` other than its leader is neither a zombie nor dead."""
    return any(state not in _DEAD for tid, state in _thread_states(pid) if tid != str(pid))


def _process_table():
    """{pid: (ppid, live)} of every process visible in /proc.

    A process whose main thread ended (pthread_exit) while other threads run on shows its leader as a
    zombie: it is live all the same, and counts as such everywhere (paused, killed, waited for).
    """
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rindex(b")") + 2 :].split(b" ", 2)
        live = rest[0] not in _DEAD or _threads_live(name)
        table[int(name)] = (int(rest[1]), live)
    return table


def _tree(root, table):
    """(pid, ppid, live) of every descendant of `root`, zombies included."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        out.append((pid, *table[pid]))
        todo.extend(children.get(pid, ()))
    return out


def descendants(root, table=None):
    """Pids of the live descendants of `root`: not zombies, bar a zombie leader whose threads run on."""
    table = _process_table() if table is None else table
    return [pid for pid, _, live in _tree(root, table) if live]


def tasks_under(root):
    """How many pids the descendants of `root` hold: a thread, a process and a zombie each take one."""
    held = 0
    for pid, _, live in _tree(root, _process_table()):
        try:
            held += len(os.listdir(f"/proc/{pid}/task")) if live else 1
        except OSError:
            pass  # gone meanwhile
    return held


def wait_reaped(parent, budget):
    """Wait until `parent` has no zombie child (it reaps them itself), `budget` seconds at most; True if so."""
    deadline = time.monotonic() + budget
    while any(ppid == parent and not live for ppid, live in _process_table().values()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def _all_stopped(pid):
    """Whether every thread of `pid` is stopped (or gone): a group stop reaches each thread on its own."""
    return all(state in (b"T", b"t", *_DEAD) for _, state in _thread_states(pid))


def stop_tree(root, *, budget=5.0):
    """SIGSTOP every live descendant of `root`, in rounds until all of them (each of their threads) are
    stopped, a process forked meanwhile included; returns the pids stopped, for `continue_tree`.

    Raises RequestError("ToolError") past `budget` (nothing is left stopped then).
    """
    stopped = set()
    deadline = time.monotonic() + budget
    while True:
        live = descendants(root)
        for pid in live:
            if pid not in stopped:
                try:
                    os.kill(pid, signal.SIGSTOP)
                except (ProcessLookupError, PermissionError):
                    continue
                stopped.add(pid)
        if all(_all_stopped(pid) for pid in live) and set(live) <= stopped:
            return stopped
        if time.monotonic() > deadline:
            continue_tree(stopped)
            raise RequestError("ToolError", "the interpreter's processes could not be paused")
        time.sleep(0.0005)  # let SIGSTOP land on every thread before looking again


def continue_tree(pids):
    """SIGCONT the processes `stop_tree` stopped."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except (ProcessLookupError, PermissionError):
            pass


def kill_tree(root, *, spare=frozenset(), budget=10.0):
    """SIGKILL all descendants of `root` except those in `spare` until none is left; False if time ran out.

    Spared processes are kept but their own descendants are not. It returns only once the dead are reaped
    too (bar a spared process's own unwaited children): a zombie still holds its pid, so after a fork bomb
    the next call could otherwise find the sandbox's pids limit used up while the keeper catches up.
    """
    deadline = time.monotonic() + budget
    while True:
        tree = _tree(root, _process_table())
        live = [pid for pid, _, alive in tree if alive and pid not in spare]
        unreaped = [pid for pid, ppid, alive in tree if not alive and ppid not in spare]
        if not live and not unreaped:
            return True
        # Zombies too: SIGKILL to a leader takes its whole thread group (should a look at its threads
        # have missed one that runs, as one that ends while it starts another), to a true zombie nothing.
        for pid in (pid for pid, _, _ in tree if pid not in spare):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.0005)  # let SIGKILL land (and the keeper reap) before looking again
