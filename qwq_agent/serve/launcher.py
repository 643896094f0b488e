"""Start SGLang for QwQ-32B, wait until it serves, report its capacity, stop it cleanly.

The launcher runs any command (SGLang's by default) in a process group of its own, so that stopping it
reaches every process SGLang spawns (tokenizer, scheduler and detokenizer workers).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from qwq_agent import group_watchdog
from qwq_agent.group_watchdog import GroupWatchdog
from qwq_agent.http_env import client_options
from qwq_agent.http_probe import AnswerTooLarge, get_capped, run_bounded
from qwq_agent.serve.listeners import port_listeners
from qwq_agent.server_info import read_server_info

DEFAULT_MODEL = "Qwen/QwQ-32B"
INSTALL_HINT = "pip install -e '.[serve]' (in the qwq-agent checkout)"


@dataclass
class ServeConfig:
    """What `python -m sglang.launch_server` is started with."""

    model_path: str = DEFAULT_MODEL
    tp: int = 1
    context_length: int | None = 32768
    mem_fraction_static: float | None = None
    host: str = "127.0.0.1"
    port: int = 30000
    schedule_policy: str = "lpm"
    reasoning_parser: str = "deepseek-r1"
    tool_call_parser: str = "qwen25"
    enable_metrics: bool = True
    enable_cache_report: bool = True
    extra_args: list[str] = field(default_factory=list)
    python: str = sys.executable

    @property
    def url(self) -> str:
        """Where the server will answer."""
        return http_url(self.host, self.port)


def http_url(host: str, port: int) -> str:
    """The `http://` URL of a server listening on `host:port`: a wildcard address is reached on
    127.0.0.1, and an IPv6 literal is bracketed (`http://::1:30000` is not a URL httpx can parse)."""
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def build_command(config: ServeConfig) -> list[str]:
    """The SGLang launch command for `config`.

    `--reasoning-parser deepseek-r1` because SGLang has no `qwq` parser and QwQ's output has the same
    shape (the prompt opens `<think>`); `--schedule-policy lpm` so requests sharing a prefix are scheduled
    together and hit the radix cache.
    """
    cmd = [
        config.python,
        "-m",
        "sglang.launch_server",
        "--model-path",
        config.model_path,
        "--tp",
        str(config.tp),
    ]
    if config.context_length:
        cmd += ["--context-length", str(config.context_length)]
    if config.mem_fraction_static is not None:
        cmd += ["--mem-fraction-static", str(config.mem_fraction_static)]
    cmd += ["--schedule-policy", config.schedule_policy]
    if config.enable_metrics:
        cmd.append("--enable-metrics")
    if config.enable_cache_report:
        cmd.append("--enable-cache-report")
    cmd += ["--reasoning-parser", config.reasoning_parser, "--tool-call-parser", config.tool_call_parser]
    cmd += ["--host", config.host, "--port", str(config.port)]
    return cmd + list(config.extra_args)


def check_prerequisites(
    which: Callable[[str], str | None] | None = None,
    find_spec: Callable[[str], Any] | None = None,
) -> list[str]:
    """What is missing to serve on this machine (empty when nothing is)."""
    which = which or shutil.which
    find_spec = find_spec or importlib.util.find_spec
    problems = []
    if which("nvidia-smi") is None:
        problems.append("no NVIDIA GPU found (nvidia-smi is not on PATH); SGLang needs CUDA")
    if find_spec("sglang") is None:
        problems.append(f"SGLang is not installed: {INSTALL_HINT}")
    return problems


class ServerError(RuntimeError):
    """The server did not come up; `log_tail` holds the end of its log."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


class ServerExited(ServerError):
    """The server process ended before it answered `/health`."""


class ServerStartTimeout(ServerError):
    """`/health` did not answer 200 in time."""


class PortTaken(ServerError):
    """Another process listens on the server's port, so its `/health` answer was not the server's."""


@dataclass
class ReadyInfo:
    """What a ready server reports."""

    url: str
    model: str | None
    max_total_num_tokens: int | None
    context_length: int | None
    version: str | None


def probe(url: str, *, timeout: float = 5.0) -> ReadyInfo | None:
    """`ReadyInfo` when `url/health` answers 200 (with `/server_info` read), else None.

    `timeout` bounds the whole probe, however slowly the server answers; an answer larger than
    `PROBE_MAX_BYTES` is no answer.
    """
    try:
        return run_bounded(probe_unbounded(url, timeout=timeout), timeout)
    except TimeoutError:
        return None


async def probe_unbounded(
    url: str, *, timeout: float = 5.0, http: httpx.AsyncClient | None = None
) -> ReadyInfo | None:
    """`probe` for async code that bounds it itself (`asyncio.timeout`): `timeout` bounds each read only.

    `http` is a client to share among many probes (a fleet's workers: one client, not one TLS setup
    each); by default the probe opens its own. A server that answers with an error, too much, or not
    HTTP at all is None, as in `probe`.
    """
    try:
        if http is None:
            async with httpx.AsyncClient(timeout=timeout, **client_options(url)) as own:
                info = await _server_info_if_healthy(own, url)
        else:
            info = await _server_info_if_healthy(http, url)
    except (
        httpx.HTTPError,
        httpx.InvalidURL,  # no HTTPError
        ValueError,
        AnswerTooLarge,
    ):
        return None
    if info is None:
        return None
    facts = read_server_info(info)  # healthy, but an odd /server_info: its capacity is unknown
    return ReadyInfo(
        url=url,
        model=facts.model,
        max_total_num_tokens=facts.max_total_num_tokens,
        context_length=facts.context_length,
        version=facts.version,
    )


async def _server_info_if_healthy(http: httpx.AsyncClient, url: str) -> Any:
    """The `/server_info` body ({} when the server has none) once `/health` answers 200, else None."""
    base = url.rstrip("/")
    if (await get_capped(http, base + "/health")).status_code != 200:
        return None
    response = await get_capped(http, base + "/server_info")
    if response.status_code == 404:
        response = await get_capped(http, base + "/get_server_info")
    return response.json_body() if response.status_code == 200 else {}


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on `host:port`, so that a server started there cannot bind it.

    Before this check, another server already on the port (yesterday's, in another terminal) answered
    `/health` and a launch that served nothing was reported ready with that server's model. An address
    that cannot be bound for another reason (not local, no permission) is left for the server itself to
    report.
    """
    error = bind_error(host, port)
    return error is not None and error.errno == errno.EADDRINUSE


def bind_error(host: str, port: int) -> OSError | None:
    """Why a server could not listen on `host:port` now (None: it could), found by binding it.

    Bound the way the server will (every address `host` resolves to, with SO_REUSEADDR as uvicorn sets
    it, so only a listener counts, not a closed connection's TIME_WAIT). The error says which problem it
    is: `errno.EADDRINUSE` (something listens there), `EADDRNOTAVAIL` (not an address of this machine),
    `EACCES` (a port below 1024 without the privilege), or a `socket.gaierror` for a host name that does
    not resolve. A listener on any of the addresses is reported first; another error only when none of
    the addresses can be bound.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:  # socket.gaierror: an unknown host name
        return exc
    first: OSError | None = None
    bound = False
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return exc
                first = first or exc
            else:
                bound = True
    return None if bound else first


LOG_CHUNK = 64 * 1024
KILL_WAIT_S = 5.0
"""How long to wait for a SIGKILLed process to be reaped (it cannot refuse, but may be in the kernel)."""

PR_SET_PDEATHSIG = 1
WATCHDOG_GRACE_S = 5.0
"""How long a server whose CLI died gets after its SIGTERM before its watchdog SIGKILLs it."""
WATCHDOG = Path(group_watchdog.__file__)
"""The watchdog script (`GroupWatchdog` runs it)."""


def _die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child receive SIGTERM when its parent dies (Linux), else None.

    The server runs in a session of its own (so Ctrl-C on the terminal does not reach it mid-load, and
    `stop()` can signal its whole group); without this, a parent killed by a signal it cannot handle
    (SIGKILL, the OOM killer) would leave SGLang running and holding the GPU. The kernel sends the
    signal when the *thread* that started the child ends, so start servers from a long-lived thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        prctl = ctypes.CDLL(name, use_errno=True).prctl  # resolved here, not between fork and exec
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect: nobody would stop us
            os._exit(1)

    return preexec


class LogFollower:
    """Reads what was appended to a log file since the last read; a flood yields only its last bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> str:
        read = _read_tail(self.path, self.offset)
        if read is None:
            return ""
        start, data = read
        self.offset = start + len(data)
        return data.decode("utf-8", "replace")


def _read_tail(path: Path, offset: int) -> tuple[int, bytes] | None:
    """The bytes of `path` from `offset` (from 0 if the file is now shorter: truncated or replaced) to
    its end, the last `LOG_CHUNK` of them at most, and where they start; None if it cannot be read."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(offset if offset <= size else 0, size - LOG_CHUNK)
            f.seek(start)
            return start, f.read(size - start)
    except OSError:
        return None


class ServerProcess:
    """A server command running in its own process group, with its output in a log file."""

    def __init__(
        self, command: Sequence[str], url: str, log_path: str | Path, env: dict[str, str] | None = None
    ):
        self.command = list(command)
        self.url = url
        self.log_path = Path(log_path)
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.watchdog: subprocess.Popen[bytes] | None = None
        """SIGKILLs the server's group if this process dies without stopping it (see `group_watchdog`)."""
        self._watchdog: GroupWatchdog | None = None

    def start(self) -> None:
        """Start the command (stdout and stderr to the log), and its watchdog."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=self.env,
                preexec_fn=_die_with_parent(),
            )
        self._watchdog = GroupWatchdog(self.process.pid, WATCHDOG_GRACE_S)
        self.watchdog = self._watchdog.process

    def _stand_down_watchdog(self) -> None:
        """Tell the watchdog the server is stopped (it exits), and reap it."""
        if self._watchdog is not None:
            self._watchdog.stand_down()

    @property
    def pid(self) -> int | None:
        """The process id (also its process group id)."""
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        """True while the process runs.

        Once it has ended, what is left of its group is SIGKILLed and it is reaped (`kill`), so that its
        status is then in `process.returncode`. Callers read that, never `process.poll()` or `wait()`:
        those reap the leader without killing its group first (see `kill`).
        """
        if self.process is None or self.process.returncode is not None:
            return False
        if not self._ended():
            return True
        self.kill()
        return False

    def _ended(self, block: bool = False) -> bool:
        """Whether the process has exited, found *without* reaping it (`block`: wait until it has).

        An unreaped (zombie) leader keeps its pid, which is its group's id, from being given to any other
        process: while it is unreaped, signalling the group cannot reach a stranger.
        """
        assert self.process is not None
        if self.process.returncode is not None:
            return True
        flags = os.WEXITED | os.WNOWAIT | (0 if block else os.WNOHANG)
        try:
            return os.waitid(os.P_PID, self.process.pid, flags) is not None
        except ChildProcessError:  # reaped by someone else (SIGCHLD ignored): let Popen record that
            self.process.poll()
            return True

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of the log (of its last `LOG_CHUNK` bytes at most).

        Only the end is read: SGLang logs every batch, so after days of serving the log is gigabytes,
        and this runs the moment the server exits (and every progress line while a fleet loads).
        """
        read = _read_tail(self.log_path, 0)
        if read is None:
            return ""
        start, data = read
        if start > 0:  # began mid-line: drop the fragment
            data = data.partition(b"\n")[2]
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

    def wait_ready(
        self, timeout: float = 1800.0, poll_interval: float = 2.0, on_log: Callable[[str], None] | None = None
    ) -> ReadyInfo:
        """Poll `/health` until it answers 200 while the process lives and holds the port (see
        `owns_listener`); raise `ServerError` otherwise (`PortTaken` when another process holds it).

        `on_log` receives what the server wrote to its log since the last poll (at most the last
        `LOG_CHUNK` bytes of it), so a caller can show that loading is progressing.
        """
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout
        follower = LogFollower(self.log_path) if on_log is not None else None
        while True:
            if follower is not None and on_log is not None:
                new = follower.read()
                if new:
                    on_log(new)
            info = probe(self.url, timeout=min(5.0, poll_interval * 2))
            # Checked after the probe: whatever answered /health then, it was not the server we started.
            if not self.alive():
                code = self.process.returncode
                raise ServerExited(
                    f"the server exited with status {code} before it was ready", self.log_tail()
                )
            if info is not None and self.owns_listener():
                return info
            if time.monotonic() >= deadline:
                raise ServerStartTimeout(
                    f"{self.url}/health did not answer 200 within {timeout:.0f} s", self.log_tail()
                )
            time.sleep(poll_interval)  # polling a process we do not control; nothing to wait on instead

    def owns_listener(self, during: str = "while the server loaded") -> bool:
        """Whether what listens on the server's port is the server (a process of its session), checked
        once its `/health` answered: False while nothing listens there (keep waiting).

        Raises `PortTaken` when another process listens there: it took the port before the server
        bound it (`during` says when), and the server will fail to bind it. Where /proc is not
        available (not Linux) the listener's owner cannot be found, and any answer is taken as the
        server's, as before this check.
        """
        assert self.process is not None, "start() first"
        url = httpx.URL(self.url)
        port = url.port or (443 if url.scheme == "https" else 80)
        listeners = port_listeners(url.host, port, self.process.pid)
        if listeners is None:
            return True
        if listeners.foreign:
            pids = ", ".join(map(str, listeners.foreign_pids))
            raise PortTaken(
                f"port {port} was taken by another process{f' (pid {pids})' if pids else ''} {during}",
                self.log_tail(),
            )
        return listeners.ours

    def stop(self, grace: float = 20.0) -> int | None:
        """SIGTERM the process group, then SIGKILL it after `grace` seconds; returns the exit status.

        An exception during the grace (a second Ctrl-C) still kills the group before it propagates: the
        server runs in a session of its own, so nothing else would ever stop it.
        """
        if self.process is None:
            return None
        try:
            self.terminate()
            self.wait_exit(grace)
        finally:
            self.kill()
        return self.process.returncode

    def terminate(self) -> None:
        """SIGTERM the process group, if the process still runs (`stop` without the wait and the kill)."""
        if self.process is not None and not self._ended():
            self._signal(signal.SIGTERM)

    def wait_exit(self, timeout: float | None) -> bool:
        """Wait up to `timeout` seconds (None: however long it takes) for the process to end; True when
        it has. The process is not reaped: `kill` (or `alive`) does that, after killing its group."""
        if self.process is None:
            return True
        if timeout is None:
            return self._ended(block=True)  # a signal handler's KeyboardInterrupt still ends the wait
        deadline = time.monotonic() + max(0.0, timeout)
        delay = 0.0005
        while not self._ended():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            delay = min(delay * 2, remaining, 0.05)
            time.sleep(delay)  # as Popen.wait(timeout) does: waitid() has no timeout of its own
        return True

    def kill(self) -> None:
        """SIGKILL the whole process group (workers that outlived the leader too), then reap the leader.

        The group is signalled only while its leader is unreaped: the group's id is the leader's pid, and
        once the leader is reaped (and the last member gone) the kernel may give that number to any new
        process, whose own group (another user's job, a sandbox) a later signal would kill. So a reaped
        server is never signalled again; its group was SIGKILLed here, just before the reaping. Idempotent.
        """
        if self.process is None:
            return
        self._signal(signal.SIGKILL)
        # Stood down before the reaping: a watchdog outliving it would watch an id that is no longer ours.
        self._stand_down_watchdog()
        try:
            self.process.wait(KILL_WAIT_S)
        except subprocess.TimeoutExpired:  # stuck in the kernel: unreaped still, so `kill` may signal again
            pass

    def _signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        if self.process.returncode is not None:  # reaped: the group's id may be a stranger's now
            return
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
