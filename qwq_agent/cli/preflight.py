"""Start-up checks: find what cannot work before any sandbox starts or any model request is sent.

Each check returns quietly or raises a `CliError` saying what is wrong and how to fix it. They are cheap
(a socket ping, a read-only SQLite open, a look at the environment), so a run that would fail after a
minute of sandbox start-up and model time fails at once instead.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwq_agent.cli.endpoint import check_model_url, model_endpoint
from qwq_agent.cli.errors import DOCKER_FIX, EXIT_DOCKER, CliError
from qwq_agent.settings import get_settings
from qwq_agent.urls import redact_url

# Tools that run inside the sandbox; a run choosing none of them starts no container.
SANDBOX_TOOLS = frozenset({"python", "shell", "str_replace_editor", "search_code"})


def tool_names(spec: str) -> list[str]:
    """`"python, shell"` as `["python", "shell"]`."""
    return [name.strip() for name in spec.split(",") if name.strip()]


def needs_sandbox(names: Iterable[str]) -> bool:
    """Whether any of the named tools runs in the sandbox."""
    return any(name in SANDBOX_TOOLS for name in names)


def docker_socket() -> str:
    """The Docker engine's unix socket, from DOCKER_HOST (default /var/run/docker.sock)."""
    host = get_settings().docker_host
    if not host.startswith("unix://"):
        raise CliError(
            f"DOCKER_HOST={redact_url(host)} is not a Docker engine URL qwq-agent can use",
            "set DOCKER_HOST to unix:///path/to/docker.sock, ssh://user@host or tcp://host:2376 (TLS), "
            "or unset it",
            code=EXIT_DOCKER,
        )
    return host[len("unix://") :]


def check_remote_docker(host: str, timeout: float) -> None:
    """Ping an ssh:// or tcp:// (TLS) engine through the sandbox transport, within `timeout` s."""
    import asyncio

    from qwq_agent.sandbox.engine import DockerEngine
    from qwq_agent.sandbox.errors import SandboxError

    try:
        problem = asyncio.run(DockerEngine(timeout=timeout).unreachable(timeout))
    except SandboxError as exc:  # a malformed URL, missing TLS files, no ssh client
        problem = str(exc)
    if problem:
        raise CliError(
            f"Docker is not reachable at {redact_url(host, keep_user=True)}: {problem}",
            "check the host, its ssh key or TLS files (QWQ_DOCKER_SSH_CONFIG, DOCKER_CERT_PATH), or unset DOCKER_HOST",
            code=EXIT_DOCKER,
        )


def check_docker(timeout: float | None = None) -> None:
    """Ping the Docker engine (`GET /_ping`); a daemon that does not answer within `timeout` fails.

    The deadline covers connecting, sending and reading the answer, so a socket that accepts and
    never answers (a hung daemon) is reported instead of waited on. `QWQ_DOCKER_PING_TIMEOUT`
    overrides the default of 10 s.
    """
    if timeout is None:
        timeout = get_settings().docker_ping_timeout_s
    host = get_settings().docker_host
    if host.startswith(("ssh://", "tcp://")):
        check_remote_docker(host, timeout)
        return
    path = docker_socket()
    deadline = time.monotonic() + timeout
    answer = b""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            while b"\r\n" not in answer:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
    except FileNotFoundError:
        raise CliError(
            f"Docker is not reachable: no socket at {path}", DOCKER_FIX, code=EXIT_DOCKER
        ) from None
    except PermissionError:
        raise CliError(
            f"Docker is not reachable: no permission to use {path}",
            "add your user to the `docker` group (then log in again), or run as a user that may use Docker",
            code=EXIT_DOCKER,
        ) from None
    except TimeoutError:
        raise CliError(
            f"Docker at {path} accepted the connection but did not answer within {timeout:g} s (daemon hung)",
            "restart the Docker daemon (`systemctl restart docker`); QWQ_DOCKER_PING_TIMEOUT sets the wait",
            code=EXIT_DOCKER,
        ) from None
    except OSError as exc:
        raise CliError(
            f"Docker is not reachable at {path}: {exc.strerror or exc}", DOCKER_FIX, code=EXIT_DOCKER
        ) from None
    status = answer.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        raise CliError(
            f"{path} did not answer like a Docker engine ({answer[:60]!r})", DOCKER_FIX, code=EXIT_DOCKER
        )


def check_sandbox_image() -> None:
    """When QWQ_SANDBOX_IMAGE names an image, it must exist (the default image is built when missing)."""
    tag = get_settings().sandbox_image
    if not tag:
        return
    from qwq_agent.sandbox.image import image_exists

    if not image_exists(tag):
        raise CliError(
            f"the sandbox image {tag} (QWQ_SANDBOX_IMAGE) is not in the local Docker engine",
            "unset QWQ_SANDBOX_IMAGE to use the project's image, or build it with `qwq-agent sandbox build`",
            code=EXIT_DOCKER,
        )


def check_workspace(workspace: Path | None, copy_back: Path | None, *, sandbox: bool) -> None:
    """`--workspace` must be a readable folder, `--copy-back` a folder or a path that can become one,
    without a non-empty `workspace` in it (the copy-back writes `DIR/workspace` and overwrites nothing)."""
    if (workspace is not None or copy_back is not None) and not sandbox:
        raise CliError(
            "--workspace and --copy-back need a tool that works in the sandbox, and none was chosen",
            f"add one of {', '.join(sorted(SANDBOX_TOOLS))} to --tools, or leave those options out",
        )
    if workspace is not None:
        if not workspace.exists():
            raise CliError(f"workspace {workspace} does not exist", "pass an existing folder to --workspace")
        if not workspace.is_dir():
            raise CliError(f"workspace {workspace} is not a folder", "pass a folder to --workspace")
        if not os.access(workspace, os.R_OK | os.X_OK):
            raise CliError(f"workspace {workspace} is not readable", "check the folder's permissions")
        check_workspace_fits(workspace)
    if copy_back is not None:
        existing = next((p for p in (copy_back, *copy_back.parents) if p.exists()), Path("."))
        if not existing.is_dir():
            raise CliError(f"--copy-back {copy_back}: {existing} is not a folder", "pass a folder path")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise CliError(f"--copy-back {copy_back}: {existing} is not writable", "pass a writable folder")
        # The copy-back refuses to write over anything (DestinationExists), and it comes after the run:
        # found then, the agent's work went with the sandbox. An empty folder is written into.
        target = copy_back / "workspace"
        if os.path.lexists(target) and (target.is_symlink() or not target.is_dir() or any(target.iterdir())):
            raise CliError(
                f"--copy-back {copy_back}: {target} already exists (an earlier copy-back?) and would not be "
                "overwritten at the end of the run",
                "pass a new folder to --copy-back, or move that one away",
            )


def check_select(select: str | None, *, sandbox: bool) -> None:
    """`--select tests:CMD` / `verify:CMD` runs CMD in each branch's sandbox: it needs a sandbox tool.

    `run_branches` refuses it too, but only once the model is reached and the sandboxes started: said
    here, it costs nothing.
    """
    kind, sep, _ = (select or "").partition(":")
    if sep and kind in ("tests", "verify") and not sandbox:
        raise CliError(
            f"--select {kind}:COMMAND needs a tool that works in the sandbox (COMMAND runs there), "
            "and none was chosen",
            f"add one of {', '.join(sorted(SANDBOX_TOOLS))} to --tools, or --select majority or first",
        )


def check_patch_target(patch: Path | None, workspace: Path | None) -> None:
    """`--patch FILE` needs `--workspace` (the patch is against it) and a file that can be written."""
    if patch is None:
        return
    if workspace is None:
        raise CliError(
            "--patch needs --workspace: the patch is of what the agent changed in it", "add --workspace DIR"
        )
    folder = patch.parent if str(patch.parent) else Path(".")
    if patch.is_dir():
        raise CliError(f"--patch {patch} is a folder", "pass a file path, e.g. --patch out.diff")
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise CliError(
            f"--patch {patch}: {folder} is not a writable folder", "pass a path in a writable folder"
        )


INDEX_TABLES = frozenset({"meta", "files", "chunks", "fts"})


def _sqlite_tables(path: Path) -> set[str]:
    """The tables of an SQLite file, opened read-only so that checking never creates or changes it
    (an index on read-only storage included: `connect_read_only`)."""
    from qwq_agent.docindex.store import connect_read_only

    conn = connect_read_only(path)
    try:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()


def check_workspace_fits(workspace: Path) -> None:
    """Every file of the workspace is readable and all of them fit in one upload to the sandbox.

    The upload packs the folder (`.git` included, less `__pycache__`) into one request of at most
    `SandboxConfig.max_request_bytes`, base64-encoded; its size is counted here as the packer writes
    it (every header and padding, no file read), so this check and the upload's agree: finding out
    here costs a walk, not a sandbox.
    """
    import tarfile

    from qwq_agent.agent.workspace import NOT_COPIED
    from qwq_agent.sandbox.config import SandboxConfig
    from qwq_agent.sandbox.packing import fits_in_request, packed_size

    max_request = SandboxConfig().max_request_bytes
    limit = max_request * 3 // 4  # the largest archive that fits: base64 makes 4 bytes of 3

    def readable(path: str, member: tarfile.TarInfo) -> None:
        if member.isreg() and not os.access(path, os.R_OK):
            raise CliError(f"workspace file {path} is not readable", "fix its permissions or move it out")

    try:
        size = packed_size(workspace, contents=True, exclude=NOT_COPIED, stop_above=limit, check=readable)
    except OSError as exc:  # a folder that cannot be listed, an entry gone while walked
        raise CliError(
            f"workspace {workspace} cannot be read: {exc.strerror or exc} ({exc.filename})",
            "fix its permissions or move it out",
        ) from None
    if not fits_in_request(size, max_request):
        raise CliError(
            f"workspace {workspace} packs to more than {limit / 2**20:.0f} MiB, more than one upload "
            "to the sandbox takes",
            "pass a folder with only what the agent needs (no data sets, build outputs or "
            "virtual environments)",
        )


def check_docs_db(path: Path | None) -> None:
    """`search_docs` needs an index `qwq-agent index` built: an SQLite file with its tables."""
    build = "build one with `qwq-agent index DIR` and pass the file it prints to --docs-db"
    if path is None:
        raise CliError("search_docs needs a document index (--docs-db), and none was given", build)
    if not path.is_file():
        raise CliError(f"no document index at {path}", build)
    try:
        tables = _sqlite_tables(path)
    except sqlite3.Error as exc:
        raise CliError(f"{path} is not a usable document index ({exc})", build) from None
    if not INDEX_TABLES <= tables:
        raise CliError(f"{path} is not a document index built by qwq-agent", build)


def check_index_target(db: Path) -> None:
    """`qwq-agent index` may write `db`: its folder is writable, and an existing file is an index of ours."""
    folder = db.parent if str(db.parent) else Path(".")
    if not folder.is_dir():
        raise CliError(
            f"cannot write the index {db}: {folder} is not a folder", "pass --db in an existing folder"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CliError(
            f"cannot write the index {db}: {folder} is not writable", "pass --db in a writable folder"
        )
    if not db.exists():
        return
    keep = "pass another --db (the file is left as it is)"
    if not db.is_file():
        raise CliError(f"cannot write the index {db}: it is not a file", keep)
    try:
        tables = _sqlite_tables(db)
    except sqlite3.Error as exc:
        raise CliError(f"{db} is not a document index ({exc})", keep) from None
    if tables and not INDEX_TABLES <= tables:
        raise CliError(f"{db} is an SQLite database of something else, not a document index", keep)


def check_web_search() -> None:
    """`web_search` needs a provider configured in the environment."""
    from qwq_agent.tools.web.providers import SearchError, provider_from_env

    try:
        provider_from_env()
    except SearchError as exc:
        raise CliError(
            f"web_search cannot work: {exc}",
            "set QWQ_SEARXNG_URL (a SearXNG instance), BRAVE_API_KEY or TAVILY_API_KEY, or drop web_search",
        ) from None


SAME_MCP = "pass the same --mcp 'CMD ARGS' / --mcp-url URL as the recorded run"


def check_tools(names: list[str], *, docs_db: Path | None, recorded: bool = False) -> None:
    """Every named tool exists and has what it needs to work.

    `recorded`: the names come from a trace, where a name that is no built-in tool may be an MCP
    server's (in a trace that does not say so): the fix then says to pass the servers again.
    """
    from qwq_agent.tools.catalog import TOOL_NAMES

    for name in names:
        if name not in TOOL_NAMES:
            fix = f"choose from {', '.join(TOOL_NAMES)}"
            if recorded:
                fix = f"if the recorded run had it from an MCP server, {SAME_MCP}; else {fix}"
            raise CliError(f"unknown tool {name!r}", fix)
    if "search_docs" in names:
        check_docs_db(docs_db)
    if "web_search" in names:
        check_web_search()


def read_text(path: str | Path, what: str) -> str:
    """A UTF-8 file's exact text, or a `CliError` saying why it cannot be read (`what`: what it should be).

    Unlike `Path.read_text`, this translates no line ends: a `\\r\\n` or a lone `\\r` is text like any other.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}", f"pass {what}") from None
    return decode_utf8(data, str(path), what)


def read_stdin_text(what: str) -> str:
    """Standard input's exact text, read as `read_text` reads a file (stdin must be open)."""
    try:
        data = sys.stdin.buffer.read()
    except OSError as exc:  # EIO from a terminal that went away, say
        raise CliError(f"cannot read stdin: {exc.strerror or exc}", f"pass {what}") from None
    return decode_utf8(data, "stdin", what)


def decode_utf8(data: bytes, source: str, what: str) -> str:
    """`data` decoded strictly as UTF-8, or a `CliError` saying that `source` is not UTF-8 text."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CliError(
            f"cannot read {source}: not UTF-8 text (byte {exc.start} is invalid)", f"pass {what}"
        ) from None


def load_trace(path: Path, run_id: str | None = None) -> list[Any]:
    """A trace's events (of run `run_id` when given), or a `CliError` naming the file and what is wrong.

    Prompts as stored (`read_trace(prompts="stored")`): `trace.restore_prompts` gives them whole.
    """
    from qwq_agent.agent.trace import MixedTraceError, NotATraceFileError, read_trace

    fix = "pass a trace written by `qwq-agent run` (see ./traces/)"
    try:
        events = read_trace(path, run_id=run_id, prompts="stored")
    except MixedTraceError as exc:
        raise CliError(str(exc), "pick one run with --run-id") from None
    except FileNotFoundError:
        raise CliError(f"cannot read trace {path}: no such file", fix) from None
    except IsADirectoryError:
        raise CliError(f"cannot read trace {path}: it is a folder", fix) from None
    except NotATraceFileError as exc:  # a FIFO, a device: refused, never waited on
        raise CliError(f"cannot read trace {path}: it is {exc.kind}", fix) from None
    except OSError as exc:
        raise CliError(f"cannot read trace {path}: {exc.strerror or exc}", fix) from None
    except UnicodeDecodeError:
        raise CliError(f"cannot read trace {path}: not UTF-8 text", fix) from None
    except ValueError:
        raise CliError(f"cannot read trace {path}: a line in it is not a qwq-agent event", fix) from None
    if not events:
        raise CliError(f"cannot read trace {path}: it holds no events", fix)
    return events


def load_recording(path: Path, run_id: str | None = None) -> Any:
    """The run recorded in a trace (`Recording`), or a `CliError` naming the file and what is wrong."""
    from qwq_agent.agent.replay import RecordedConfigError, recording_of
    from qwq_agent.agent.trace import TraceError

    events = load_trace(
        path, run_id
    )  # the readable reasons first: missing, a folder, not a trace, several runs
    try:
        return recording_of(events, path)
    except RecordedConfigError as exc:
        fix = (
            "replay it with the qwq-agent version that recorded it, or change that setting in its run_started"
        )
        raise CliError(f"cannot replay {path}: {exc}", fix) from None
    except TraceError as exc:
        raise CliError(f"cannot replay {path}: {exc}", "pass a trace written by `qwq-agent run`") from None


def check_mcp_given(recorded: list[str], args: Any) -> None:
    """A replay of a run that used MCP servers' tools is given servers to have them from."""
    if recorded and not (args.mcp or args.mcp_url):
        raise CliError(
            f"the recorded run used tools of MCP servers ({', '.join(recorded)}), and no server was given",
            SAME_MCP,
        )


def check_mcp_tools(recorded: list[str], given: list[str]) -> None:
    """The MCP servers given to a replay have every MCP tool the recorded run had."""
    missing = [name for name in recorded if name not in given]
    if missing:
        have = ", ".join(given) or "none"
        raise CliError(
            f"the MCP servers given have no tool {', '.join(map(repr, missing))} of the recorded run "
            f"(they have: {have})",
            SAME_MCP,
        )


def check_trace_target(path: Path) -> None:
    """The trace can be written there: a new or empty file in a folder that exists or can be made."""
    from qwq_agent.agent.trace import TraceError, check_trace_path

    try:
        check_trace_path(path)
    except TraceError as exc:
        raise CliError(str(exc), "pass --trace a new file in a writable folder") from None


@dataclass
class RunPlan:
    """What the start-up checks of `qwq-agent run` found: the tools and whether they need a sandbox."""

    tools: list[str]
    sandbox: bool


def check_run(args: Any, settings: Any, trace_path: Path) -> RunPlan:
    """All start-up checks of `qwq-agent run`, cheapest first; the model server is probed afterwards.

    `settings` (`RunSettings`) holds the tools, options and workspace the run will use: on a replay,
    the recorded ones.
    """
    from qwq_agent.cli import ecosystem

    names = list(settings.tools)
    sandbox = needs_sandbox(names)
    docs_db = settings.build_options().get("docs_db")
    replaying = args.replay is not None or args.resume is not None
    check_tools(names, docs_db=Path(docs_db) if docs_db else None, recorded=replaying and args.tools is None)
    check_mcp_given(settings.mcp_tools, args)
    ecosystem.check_urls(args)
    workspace = Path(settings.workspace) if settings.workspace else None
    check_workspace(workspace, args.copy_back, sandbox=sandbox)
    check_select(getattr(args, "select", None), sandbox=sandbox)
    check_patch_target(getattr(args, "patch", None), workspace)
    check_trace_target(trace_path)
    if args.replay is None:
        check_model_url(model_endpoint(args).url)
    if sandbox:
        check_docker()
        check_sandbox_image()
    return RunPlan(tools=names, sandbox=sandbox)
