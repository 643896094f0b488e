"""One place that turns a failure outside our control into what failed and how to fix it.

Commands do not catch and print errors themselves: they raise (a `CliError` from a start-up check, or
whatever a library raised) and `qwq_agent.cli.main` hands the exception to `explain`, which maps it
onto a `CliError`. The user sees one or two lines and a non-zero exit code; `--debug` (or
`QWQ_DEBUG=1`) also prints the traceback. Anything `explain` does not recognise is our own bug and is
reported as such, still in one line unless `--debug` is given.
"""

from __future__ import annotations

import contextlib
import errno
import json
import select
import socket
import sqlite3
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

# Exit codes, so scripts can tell the kinds of failure apart: one meaning each (listed in the README).
EXIT_USAGE = 2  # bad input: a path, a URL, a trace, an index, a missing key, an environment variable
EXIT_MODEL = 3  # the model server, its URL included (a bad --model-url is 3, not EXIT_USAGE)
EXIT_DOCKER = 4  # Docker, the sandbox image or a sandbox
EXIT_AWAITING_APPROVAL = 5  # not a failure: `run` stopped at a call that needs a decision (no terminal)
EXIT_BUG = 70  # EX_SOFTWARE: an error we did not expect (a bug of ours)
# EX_IOERR: an output (stdout, stderr, the document index) could not be written: a full disk, an I/O error
EXIT_OUTPUT = 74
EXIT_PIPE = 141  # 128 + SIGPIPE: what a shell shows for a writer whose reader (`| head`) went away


class CliError(Exception):
    """A failure the user can fix: `what` failed, `fix` says how; `code` is the exit status."""

    def __init__(self, what: str, fix: str = "", *, code: int = EXIT_USAGE) -> None:
        super().__init__(what)
        self.what = what
        self.fix = fix
        self.code = code

    def render(self, command: str) -> str:
        """The one or two lines shown to the user, control characters shown as escapes (`safe`).

        An error's text often quotes a peer (a model server's error body, a router's answer, a server
        log's last line, a library's message naming a URL): whichever caller built it, an escape
        sequence in it must not reach the terminal as one."""
        from qwq_agent.cli.safe_text import safe

        head = f"{' '.join(filter(None, ('qwq-agent', command)))}: {self.what}".rstrip()
        return safe(f"{head}\n  fix: {self.fix}" if self.fix else head)


DOCKER_FIX = "start Docker (`systemctl start docker`) or point DOCKER_HOST at a running engine's socket"


def _docker(exc: BaseException) -> CliError:
    text = str(exc)
    if "no such image" in text.lower():
        return CliError(
            f"the sandbox image is missing ({_first_line(text)})",
            "build it with `qwq-agent sandbox build`, or set QWQ_SANDBOX_IMAGE to an image that exists",
            code=EXIT_DOCKER,
        )
    return CliError(f"Docker failed: {_first_line(text)}", DOCKER_FIX, code=EXIT_DOCKER)


def _sandbox(exc: BaseException) -> CliError:
    cause = exc.__cause__
    if cause is not None and "no such image" in str(cause).lower():
        return _docker(cause)
    if "no such image" in str(exc).lower():
        return _docker(exc)
    return CliError(
        f"the sandbox failed: {type(exc).__name__}: {_first_line(str(exc))}",
        "check Docker with `qwq-agent sandbox run --python 1`; `qwq-agent sandbox prune` removes leftovers",
        code=EXIT_DOCKER,
    )


def _refused(exc: BaseException) -> CliError:
    # In the CLI only the workspace upload and the copy-back send requests of the user's making.
    return CliError(
        f"the sandbox refused a request: {_first_line(str(exc))}",
        "check --workspace (what it holds, how big it is) and --copy-back",
    )


def _image_build(exc: BaseException) -> CliError:
    return CliError(
        f"the sandbox image could not be built: {_first_line(str(exc))}",
        "run `qwq-agent sandbox build` to see the whole build log (it needs Docker and Debian mirrors)",
        code=EXIT_DOCKER,
    )


def _build_lock(exc: BaseException) -> CliError:
    from qwq_agent.sandbox.image.errors import BuildLockTimeout

    assert isinstance(exc, BuildLockTimeout)
    holder = f"`kill {exc.holder_pid}`" if exc.holder_pid is not None else "stop it"
    return CliError(
        f"the sandbox image could not be built: {_first_line(str(exc))}",
        f"if that build hangs, {holder}; or wait longer (QWQ_SANDBOX_BUILD_WAIT=SECONDS)",
        code=EXIT_DOCKER,
    )


def _recipe(exc: BaseException) -> CliError:
    return CliError(
        f"the sandbox image cannot be built: {_first_line(str(exc))}",
        "the installed qwq-agent is incomplete: reinstall it (`pip install -e .` in the checkout)",
        code=EXIT_DOCKER,
    )


def _setting(exc: BaseException) -> CliError:
    return CliError(
        _first_line(str(exc)),
        getattr(exc, "fix", "")
        or "fix or unset that environment variable (`qwq-agent --help` lists them with their defaults)",
    )


def _index_locked(exc: BaseException, index: str = "the document index") -> CliError:
    """Another process keeps the document index busy (an update lock or SQLite's): it is fine."""
    return CliError(
        f"{index} is locked by another process ({exc})",
        "another `qwq-agent index` is probably updating it: try again when that ends",
    )


def _sqlite(exc: BaseException) -> CliError:
    assert isinstance(exc, sqlite3.Error)
    return sqlite_error(exc)


def sqlite_error(exc: sqlite3.Error, path: Path | None = None) -> CliError:
    """What an SQLite error on the document index means, naming `path` when the caller knows it.

    Only an index SQLite cannot read as one (corrupt, not a database) is worth rebuilding: a full disk,
    a read-only file, one that cannot be opened or an I/O error leave it as the last commit left it,
    and rebuilding it (the very command that failed, for `qwq-agent index`) cannot help."""
    index = f"the document index {path}" if path is not None else "the document index"
    # Extended codes (SQLITE_IOERR_WRITE, SQLITE_READONLY_DBMOVED, ...) keep the primary one in the low byte.
    code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        # Another connection holds the lock past the busy timeout. The index is fine.
        return _index_locked(exc, index)
    if code == sqlite3.SQLITE_FULL:
        return CliError(
            f"{index} could not be written: the disk is full ({exc})",
            "free some space on its disk (or pass --db a file on another one) and run `qwq-agent index` "
            "again: what it had committed is kept, and it goes on from there",
            code=EXIT_OUTPUT,
        )
    if code == sqlite3.SQLITE_READONLY:
        return CliError(
            f"{index} is read-only ({exc})",
            "make the file and its folder writable (SQLite writes a journal beside it), or pass --db "
            "a file in a writable folder",
        )
    if code == sqlite3.SQLITE_CANTOPEN:
        return CliError(
            f"{index} cannot be opened ({exc})",
            "check that its folder exists and that you may read and write both the file and the folder",
        )
    if code == sqlite3.SQLITE_IOERR:
        return CliError(
            f"{index} could not be read or written: a disk I/O error ({exc})",
            "check the disk it is on (`dmesg` shows the kernel's errors); the index is as its last "
            "commit left it",
            code=EXIT_OUTPUT,
        )
    return CliError(
        f"{index} cannot be used: {exc}",
        "rebuild it with `qwq-agent index DIR` (and pass the file it names with --docs-db / --db)",
    )


def _stream_write(exc: BaseException) -> CliError:
    from qwq_agent.cli.stdio import StreamWriteError

    assert isinstance(exc, StreamWriteError)
    why = exc.strerror or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space on the disk it is redirected to, or redirect it elsewhere"
    elif exc.errno == errno.EFBIG:
        fix = "the file it is redirected to reached the size limit (`ulimit -f`): raise it, or redirect it"
    else:
        fix = "check the file or device it is redirected to, or redirect it elsewhere"
    return CliError(f"cannot write to {exc.stream}: {why}", fix, code=EXIT_OUTPUT)


def _os_error(exc: BaseException) -> CliError:
    assert isinstance(exc, OSError)
    where = f" {exc.filename}" if exc.filename else ""
    why = exc.strerror or type(exc).__name__
    if exc.errno == errno.EPIPE and stdout_closed():
        return CliError(
            "stdout was closed before the output ended (its reader, e.g. `head`, exited)", code=EXIT_PIPE
        )
    if exc.errno == errno.EPIPE:
        return CliError(
            f"cannot write{where}: the other end closed the connection ({why})",
            "rerun with --debug to see which connection it was",
        )
    if exc.errno == errno.EADDRINUSE:
        return CliError(
            f"cannot listen{where}: the address is already in use ({why})",
            "pass another --port (0: any free one, where allowed), or stop what listens there",
        )
    # Socket errors with no command to say which flag (a command that listens maps its own with
    # `listen_error`): about a host or an address, not a path.
    if isinstance(exc, socket.gaierror):
        return CliError(f"a host name does not resolve ({why})", "check the host names given (--host, URLs)")
    if exc.errno == errno.EADDRNOTAVAIL:
        return CliError(
            f"cannot use the address{where}: it is not one of this machine's ({why})",
            "check the host and port given (--host, --port)",
        )
    return CliError(f"cannot use{where}: {why}", "check the path and its permissions")


_ANY_ADDRESS = "127.0.0.1: this machine only; 0.0.0.0: every interface"


def listen_error(exc: OSError, host: str, port: int) -> CliError:
    """What failing to listen on `host:port` (`exc`, raised by binding it) means, in terms of the
    command's `--host` and `--port`: a bind error carries no file name, and its EACCES is about the
    port, not a path's permissions."""
    why = exc.strerror or str(exc)
    if isinstance(exc, socket.gaierror):
        return CliError(
            f"cannot listen: the host {host} does not resolve to an address to listen on ({why})",
            f"pass --host an address or name of this machine ({_ANY_ADDRESS})",
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return CliError(
            f"cannot listen on {host}: {host} is not an address of this machine ({why})",
            f"pass --host an address of this machine ({_ANY_ADDRESS})",
        )
    if exc.errno == errno.EADDRINUSE:
        return CliError(
            f"cannot listen: port {port} is already in use on {host} ({why})",
            "pass another --port (0: any free one), or stop what listens there",
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return CliError(
            f"cannot listen: port {port} needs privileges on {host} (below 1024: root or "
            f"CAP_NET_BIND_SERVICE) ({why})",
            "pass --port 1024 or above (0: any free one)",
        )
    return CliError(f"cannot listen on {host} port {port}: {why}", "check --host and --port")


def stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (`qwq-agent ... | head`, once `head` exited)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no stdout, or not a real file
        return False


def quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush at exit does not raise again.

    What Python's documentation advises for SIGPIPE (library/signal.html, "Note on SIGPIPE"): without
    it, the exit prints "Exception ignored ... BrokenPipeError" after our own message.
    """
    _to_devnull(sys.stdout)


def closed_stdout(lost: str = "what this command prints") -> CliError:
    """The error for a command started with stdout closed: `lost` (its output, the help) would be lost."""
    return CliError(
        f"standard output is closed: {lost} would be lost",
        "run it with stdout open (redirect it to a file, or to /dev/null to drop it)",
        code=EXIT_OUTPUT,
    )


def _to_devnull(stream: TextIO) -> None:
    from qwq_agent.cli.stdio import to_devnull

    to_devnull(stream)


def _to_stderr(write: Callable[[TextIO], object]) -> None:
    """Run `write(sys.stderr)`; a stderr whose reader has gone (`2>&1 | head -1`: the same closed pipe as
    stdout) loses the text, and is pointed at /dev/null so the exit's flush does not raise either.
    The exit code is what tells the caller then."""
    try:
        write(sys.stderr)
    except OSError:  # BrokenPipeError, or a stderr closed some other way: nowhere left to say it
        with contextlib.suppress(OSError, ValueError):
            _to_devnull(sys.stderr)


def _unicode(exc: BaseException) -> CliError:
    assert isinstance(exc, UnicodeDecodeError)
    return CliError(f"a file is not UTF-8 text ({exc.reason})", "pass a text file (a trace is JSON lines)")


def _json(exc: BaseException) -> CliError:
    return CliError(f"not valid JSON: {_first_line(str(exc))}", "pass a file written by qwq-agent")


def _trace(exc: BaseException) -> CliError:
    from qwq_agent.agent.trace import MixedTraceError

    # Its message names the file and what is wrong (a reader left out `run_id` for a multi-run one).
    fix = (
        "pick one run with --run-id" if isinstance(exc, MixedTraceError) else "check the trace file it names"
    )
    return CliError(_first_line(str(exc)), fix)


def _model_error(exc: BaseException) -> CliError:
    return CliError(
        f"the model server failed: {_first_line(str(exc))}",
        "check the server's log, or run `qwq-agent serve --model-url URL` to see what it reports",
        code=EXIT_MODEL,
    )


def _mappers() -> list[tuple[type[BaseException], Callable[[BaseException], CliError]]]:
    """Most specific first; imports stay lazy so a command only pays for what it touched."""
    mappers: list[tuple[type[BaseException], Callable[[BaseException], CliError]]] = []
    try:
        from qwq_agent.sandbox.errors import DockerAPIError, InvalidRequest, SandboxError

        mappers += [(DockerAPIError, _docker), (InvalidRequest, _refused), (SandboxError, _sandbox)]
    except ImportError:  # pragma: no cover - the sandbox package is part of every install
        pass
    from qwq_agent.sandbox.image.errors import BuildLockTimeout, ImageBuildError
    from qwq_agent.sandbox.image.recipe import RecipeError

    mappers += [(BuildLockTimeout, _build_lock), (ImageBuildError, _image_build), (RecipeError, _recipe)]
    try:
        import docker.errors

        mappers.append((docker.errors.DockerException, _docker))
    except ImportError:  # pragma: no cover - docker is a dependency
        pass
    from qwq_agent.agent.clients.errors import ModelError
    from qwq_agent.agent.trace import TraceError
    from qwq_agent.cli.stdio import StreamWriteError
    from qwq_agent.docindex.update_lock import IndexBusy

    mappers += [
        (IndexBusy, _index_locked),
        (ModelError, _model_error),
        (TraceError, _trace),  # before OSError: a `TracePathError` is one, its message names the file
        (sqlite3.DatabaseError, _sqlite),
        (UnicodeDecodeError, _unicode),
        (json.JSONDecodeError, _json),
        (StreamWriteError, _stream_write),  # before OSError: it is one, with no file name to show
        (OSError, _os_error),
    ]
    return mappers


def explain(exc: BaseException) -> CliError | None:
    """The user-facing error for `exc`, or None when it is not a failure we know (a bug of ours)."""
    if isinstance(exc, CliError):
        return exc
    # A bad environment variable is the user's input wherever it was read: in a sandbox start, or an
    # image build that a sandbox start wrapped (SandboxStartError <- ImageBuildError <- SettingsError).
    from qwq_agent.settings import SettingsError

    for cause in _causes(exc):
        if isinstance(cause, SettingsError):
            return _setting(cause)
    # Docker's own typed errors (engine timeouts, unreachable daemon) are recognised by name so that
    # new ones raised by the sandbox layer are mapped without this module knowing each of them.
    if "docker" in type(exc).__name__.lower():
        return _docker(exc)
    for kind, mapper in _mappers():
        if isinstance(exc, kind):
            return mapper(exc)
    return None


def report(exc: BaseException, command: str, *, debug: bool) -> int:
    """Print `exc` for the user (with its traceback when `debug`) and return the exit code."""
    if debug:
        _to_stderr(lambda stderr: traceback.print_exception(exc, file=stderr))
    from qwq_agent.cli.stdio import STDOUT, StreamWriteError

    error = explain(exc)
    # What stdout still buffers cannot be written either: the exit's flush must not fail again.
    stdout_failed = isinstance(exc, StreamWriteError) and exc.stream == STDOUT
    if stdout_failed or (error is not None and error.code == EXIT_PIPE):
        quiet_stdout()
    if error is None:
        error = CliError(
            f"unexpected error: {type(exc).__name__}: {_first_line(str(exc))}",
            "this is a bug in qwq-agent: rerun with --debug and report the traceback",
            code=EXIT_BUG,
        )
    text = error.render(command)
    _to_stderr(lambda stderr: print(text, file=stderr, flush=True))
    return error.code


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what it was raised from (`raise ... from`), and so on (a cycle ends it)."""
    seen: set[int] = set()
    each: BaseException | None = exc
    while each is not None and id(each) not in seen:
        seen.add(id(each))
        yield each
        each = each.__cause__


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= 300 else line[:297] + "..."
