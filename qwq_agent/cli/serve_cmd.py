"""`qwq-agent serve`: start SGLang for QwQ-32B, wait until it serves, stop it on Ctrl-C."""

from __future__ import annotations

import argparse
import shlex
import signal
import tempfile
from pathlib import Path

from qwq_agent.cli import arg_types
from qwq_agent.cli.serve_signals import stop_on_signals
from qwq_agent.settings import LONGEST_WAIT_S
from qwq_agent.urls import redact_url


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="start an SGLang server for QwQ-32B",
        description="Start `python -m sglang.launch_server` for QwQ-32B (pass more SGLang flags after --).",
    )
    p.add_argument("--model-path", default="Qwen/QwQ-32B", help="HF repo id or local folder")
    p.add_argument("--tp", type=arg_types.positive_int, default=1, help="tensor-parallel GPUs")
    p.add_argument(
        "--context-length",
        type=arg_types.positive_int,
        default=32768,
        help="longest prompt + output, in tokens",
    )
    p.add_argument(
        "--mem-fraction-static",
        type=arg_types.fraction,
        default=None,
        help="share of GPU memory for weights and KV cache (default: SGLang's choice)",
    )
    p.add_argument(
        "--schedule-policy",
        default="lpm",
        help="SGLang's scheduling (lpm: longest prefix match first, reuses caches)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address the server listens on")
    p.add_argument("--port", type=arg_types.port, default=30000, help="port the server listens on")
    p.add_argument(
        "--timeout",
        type=arg_types.seconds(LONGEST_WAIT_S),
        default=1800.0,
        help="seconds to wait for /health",
    )
    p.add_argument(
        "--log-file",
        type=Path,
        default=None,
        help="server log (default: a temporary file); with --dp a folder for every process's log",
    )
    p.add_argument("--print-command", action="store_true", help="print the launch command and exit")
    p.add_argument(
        "--command",
        dest="launch_command",  # `args.command` names the subcommand (error messages say `qwq-agent serve`)
        type=arg_types.command_line,
        default=None,
        help="run this command instead of SGLang's launcher (a wrapper); with --dp a template "
        "whose {port} and {gpu} are filled in (other braces are kept as written)",
    )
    p.add_argument(
        "--model-url",
        default=None,
        help="do not start anything: check the server already at this URL and report its capacity",
    )
    p.add_argument(
        "--dp",
        type=int,
        default=1,
        help="data-parallel replicas (one per GPU) behind SGLang's router; --port is then the router's",
    )
    p.add_argument(
        "--router-policy",
        default="cache_aware",
        choices=["cache_aware", "round_robin", "affinity"],
        help="with --dp: how the router spreads requests (affinity: a run's routing key pins it to a worker)",
    )
    p.add_argument(
        "--worker-base-port",
        type=arg_types.port,
        default=None,
        help="with --dp: worker i listens on this port + i (default: --port + 1 + i)",
    )
    p.add_argument(
        "--gpus",
        default=None,
        help="with --dp: GPU ids, comma-separated, replica 0's --tp GPUs first (default 0,1,...)",
    )
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: flags passed to sglang.launch_server")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from qwq_agent.cli.endpoint import check_model_url
    from qwq_agent.cli.errors import CliError
    from qwq_agent.serve import (
        INSTALL_HINT,
        PortTaken,
        ServeConfig,
        ServerError,
        ServerProcess,
        build_command,
        check_prerequisites,
        probe,
    )

    extra = [a for a in args.extra if a != "--"] if args.extra else []
    config = ServeConfig(
        model_path=args.model_path,
        tp=args.tp,
        context_length=args.context_length,
        mem_fraction_static=args.mem_fraction_static,
        schedule_policy=args.schedule_policy,
        host=args.host,
        port=args.port,
        extra_args=extra,
    )
    if args.dp != 1:
        from qwq_agent.cli.serve_dp import serve_fleet

        return serve_fleet(args, config)
    command = shlex.split(args.launch_command) if args.launch_command else build_command(config)
    if args.print_command:
        print(shlex.join(command))
        return 0

    if args.model_url:
        check_model_url(args.model_url)
        from qwq_agent.cli.serve_dp import report_fleet
        from qwq_agent.serve.fleet import probe_router

        fleet = probe_router(args.model_url.rstrip("/"))
        if fleet is not None:  # SGLang's router: its workers' capacities, not its own
            report_fleet(fleet)
            return 0
        info = probe(args.model_url.rstrip("/"))
        if info is None:
            raise CliError(
                f"no healthy server at {redact_url(args.model_url)} (/health did not answer 200)",
                "start one with `qwq-agent serve`, or check the URL (scheme, host and port)",
                code=1,
            )
        _report(info)
        return 0

    if args.launch_command is None:
        problems = check_prerequisites()
        if problems:
            raise CliError(
                "cannot serve here: " + "; ".join(problems),
                f"on a machine with an NVIDIA GPU run `{INSTALL_HINT}`; or use a server that already runs: "
                "`qwq-agent run --model-url http://HOST:30000 ...` (SGLang), `--api openai` for an "
                "OpenAI-compatible one",
            )

    check_port_free(args.host, args.port)
    log_path = args.log_file or Path(tempfile.mkdtemp(prefix="qwq-serve-")) / "server.log"
    server = ServerProcess(command, config.url, log_path)
    print(f"starting: {shlex.join(command)}\nlog: {log_path}", flush=True)

    with stop_on_signals():
        try:
            server.start()
            print(f"pid: {server.pid}", flush=True)
            try:
                info = _wait_ready(server, args.timeout)
            except PortTaken as exc:
                raise CliError(
                    str(exc), "stop that process and serve again, or pass another --port", code=1
                ) from None
            except ServerError as exc:
                raise CliError(str(exc), _log_hint(log_path, exc.log_tail), code=1) from None
            _report(info)
            print("Ctrl-C stops the server.", flush=True)
            server.wait_exit(None)
            server.kill()  # what is left of its group, before it is reaped
            assert server.process is not None
            # Exit 1, like a server that never got ready: the server's own status (-9, 70, 2) would read
            # as one of our documented codes or none of them, so it is only in the message.
            raise CliError(
                f"the server {exit_status(server.process.returncode)}",
                _log_hint(log_path, server.log_tail()),
                code=1,
            )
        except KeyboardInterrupt:
            try:
                print("stopping the server (Ctrl-C again kills it)...", flush=True)
                server.stop()
            except KeyboardInterrupt:  # the second one, however soon after the line it came: kill now
                server.kill()
                raise
            return 0
        finally:
            server.stop()  # a no-op once stopped above


def exit_status(code: int | None) -> str:
    """How a process ended, from its `returncode` (negative: the signal that killed it)."""
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name} (status {code})"
        except ValueError:
            pass
    return f"exited with status {code}"


def check_port_free(host: str, port: int, what: str = "--port") -> None:
    """A `CliError` when something already listens on `host:port`: the server could not bind it, and
    the other server would answer the ready check in its place."""
    from qwq_agent.cli.errors import CliError
    from qwq_agent.serve.launcher import http_url, port_in_use

    if port_in_use(host, port):
        raise CliError(
            f"{what} {port}: the port is already in use on {host} (another server, e.g. an earlier "
            "`qwq-agent serve`, listens there)",
            f"stop that server, pass another {what}, or check the running one with "
            f"`qwq-agent serve --model-url {http_url(host, port)}`",
        )


def _wait_ready(server, timeout: float):
    """`server.wait_ready`, showing how long it has waited and the tail of the server's log meanwhile.

    On a terminal: a live status with the log's last lines. Elsewhere (a log file, CI): one line every
    `QUIET_REPORT_S` seconds with the log's last line, so a long model load is not silent either.
    """
    import time

    from qwq_agent.cli.activity import Activity
    from qwq_agent.cli.console import PipeConsole
    from qwq_agent.cli.safe_text import safe

    activity = Activity(PipeConsole())
    activity.start(f"waiting for {server.url}/health (the server loads the model)")
    last_line, last_report = "", time.monotonic()

    def on_log(text: str) -> None:
        nonlocal last_line, last_report
        activity.output(text)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if lines:
            last_line = lines[-1]
        if not activity.enabled and time.monotonic() - last_report >= QUIET_REPORT_S:
            last_report = time.monotonic()
            print(
                f"still waiting for /health after {activity.elapsed():.0f}s; log: {safe(last_line[:200])}",
                flush=True,
            )

    try:
        return server.wait_ready(timeout=timeout, poll_interval=1.0, on_log=on_log)
    finally:
        activity.stop()


QUIET_REPORT_S = 30.0


def _log_hint(log_path: Path, tail: str) -> str:
    """Where the server's log is, and its last line (usually the reason it stopped)."""
    last = next((line.strip() for line in reversed(tail.splitlines()) if line.strip()), "")
    return f"read the server's log {log_path}" + (f" (it ends: {last[:200]})" if last else "")


def _report(info) -> None:
    from qwq_agent.cli.safe_text import safe

    url = redact_url(info.url)  # `serve --model-url` takes a server behind basic auth
    print(f"ready: {url}", flush=True)
    # the server's own text (its /server_info): an escape sequence in it is shown, not run
    print(f"model: {safe(str(info.model))}")
    capacity = "unknown" if info.max_total_num_tokens is None else f"{info.max_total_num_tokens} tokens"
    length = "unknown" if info.context_length is None else info.context_length
    print(f"KV capacity: {capacity} (max_total_num_tokens); context length: {length}")
    print(f'connect with: qwq-agent run --model-url {url} "TASK"', flush=True)
