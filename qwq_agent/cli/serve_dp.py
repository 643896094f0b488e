"""`qwq-agent serve --dp N`: N SGLang replicas behind SGLang's router, until Ctrl-C."""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import tempfile
from pathlib import Path

from qwq_agent.cli.safe_text import safe
from qwq_agent.cli.serve_signals import stop_on_signals
from qwq_agent.serve.fleet import MAX_PROBED_WORKERS, Fleet, FleetInfo
from qwq_agent.serve.launcher import ServeConfig
from qwq_agent.urls import redact_url


def serve_fleet(args: argparse.Namespace, config: ServeConfig) -> int:
    """Start the fleet, print the router URL and each worker's KV capacity, serve until Ctrl-C."""
    from qwq_agent.cli.errors import CliError
    from qwq_agent.serve import INSTALL_HINT, PortTaken, ServerError, check_prerequisites
    from qwq_agent.serve.fleet import (
        ROUTER_INSTALL_HINT,
        FleetConfig,
        port_problems,
        router_command,
        worker_specs,
    )

    if args.dp < 1:
        raise CliError(f"--dp {args.dp}: the number of replicas must be at least 1", "pass --dp 2 or more")
    gpus = None
    if args.gpus:
        flat = [g.strip() for g in args.gpus.split(",") if g.strip()]
        tp = args.tp  # 1 or more: checked at parse time
        if len(flat) != args.dp * tp:
            raise CliError(
                f"--gpus names {len(flat)} GPUs; {args.dp} replicas of --tp {tp} need {args.dp * tp}",
                "list the GPUs of replica 0, then replica 1, ...: --gpus 0,1,2,3 for --dp 2 --tp 2",
            )
        gpus = [",".join(flat[i * tp : (i + 1) * tp]) for i in range(args.dp)]
    try:
        fleet_config = FleetConfig(
            dp=args.dp,
            host=args.host,
            router_port=args.port,
            worker_base_port=args.worker_base_port,
            policy=args.router_policy,
            gpus=gpus,
            # A local model folder has the tokenizer the router wants; else it would ask a model hub.
            tokenizer_path=config.model_path if Path(config.model_path).is_dir() else None,
        )
    except ValueError as exc:
        raise CliError(str(exc), "see `qwq-agent serve --help`") from None
    if args.launch_command is not None and args.dp > 1 and "{port}" not in args.launch_command:
        # Each replica would run the same command on the same port while the router waits on the
        # ports it was told; better said now than when the health deadline passes.
        raise CliError(
            f"--command has no {{port}}: the --dp {args.dp} replicas would all start on one port",
            "write {port} where the command takes its port (and {gpu} for its GPUs): "
            "--command 'my-server --port {port}'",
        )
    specs = worker_specs(config, fleet_config, template=args.launch_command)
    if args.print_command:
        for spec in specs:
            print(f"CUDA_VISIBLE_DEVICES={spec.gpu} {shlex.join(spec.command)}")
        print(shlex.join(router_command(fleet_config, [s.url for s in specs])))
        return 0

    if importlib.util.find_spec("sglang_router") is None:
        raise CliError("SGLang's router is not installed (`--dp` needs it)", ROUTER_INSTALL_HINT)
    if args.launch_command is None:
        problems = check_prerequisites()
        if problems:
            raise CliError(
                "cannot serve here: " + "; ".join(problems), f"on a GPU machine run `{INSTALL_HINT}`"
            )

    taken = port_problems(fleet_config)
    if taken:
        raise CliError(
            "cannot serve: " + "; ".join(taken),
            "stop what listens there (a serve still running?), or choose other ports with --port and "
            "--worker-base-port (worker i listens on --worker-base-port + i)",
        )  # exit 2, as a single server's taken --port
    log_dir = args.log_file or Path(tempfile.mkdtemp(prefix="qwq-serve-dp-"))
    fleet = Fleet(fleet_config, specs, log_dir)
    print(f"starting {args.dp} replicas and the router ({args.router_policy}); logs: {log_dir}", flush=True)

    with stop_on_signals():
        try:
            fleet.start_workers()
            print("pids: " + " ".join(str(w.pid) for w in fleet.workers), flush=True)
            try:
                info = fleet.wait_ready(
                    timeout=args.timeout, on_progress=lambda line: print(line, flush=True)
                )
            except PortTaken as exc:
                raise CliError(
                    str(exc),
                    "stop that process and serve again, or choose other ports with --port and "
                    "--worker-base-port",
                    code=1,
                ) from None
            except ServerError as exc:
                last = last_log_line(exc.log_tail)
                raise CliError(
                    str(exc),
                    f"read the logs in {log_dir}" + (f" (it ends: {last[:200]})" if last else ""),
                    code=1,
                ) from None
            print(f"router pid: {fleet.router.pid}", flush=True)
            report_fleet(info)
            print("Ctrl-C stops the router and the replicas.", flush=True)
            ended = _serve_until_the_fleet_is_gone(fleet, log_dir)
            raise CliError(ended, f"read the logs in {log_dir}", code=1)
        except KeyboardInterrupt:
            try:
                print("stopping the router and the replicas (Ctrl-C again kills them)...", flush=True)
                fleet.stop()
            except KeyboardInterrupt:  # the second one, however soon after the line it came: kill now
                fleet.kill()
                raise
            return 0
        finally:
            fleet.stop()  # a no-op once stopped above


_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
"""Terminal escape sequences (CSI colours, OSC, two-byte ones): the router colours its log lines."""


def last_log_line(tail: str) -> str:
    """The last non-blank line of a log tail, without terminal escape sequences (for a one-line hint)."""
    lines = (_ANSI.sub("", line).strip() for line in reversed(tail.splitlines()))
    return next((line for line in lines if line), "")


def _serve_until_the_fleet_is_gone(fleet: Fleet, log_dir: Path) -> str:
    """Serve until the router ends or no worker is left; returns why (Ctrl-C interrupts the wait).

    A worker that ends is reported and its process group killed (SGLang's scheduler processes may
    outlive their leader and hold the GPU), while the others keep serving: the router takes a dead
    worker out of rotation within seconds and moves its sessions' keys to a live one.
    """
    import time

    gone: set[int] = set()
    while True:
        if fleet.router.process is not None and not fleet.router.alive():
            return f"the router exited with status {fleet.router.process.returncode}"
        for i, worker in enumerate(fleet.workers):
            if i in gone or worker.alive():
                continue
            gone.add(i)
            # alive() found it ended, SIGKILLed what was left of its group and reaped it
            code = worker.process.returncode if worker.process else None
            left = len(fleet.workers) - len(gone)
            print(
                f"warning: worker {i} ({worker.url}) exited with status {code}; "
                f"{left} of {len(fleet.workers)} workers still serve (its log: {worker.log_path}; "
                f"it ends: {last_log_line(worker.log_tail())[:200]})",
                flush=True,
            )
        if len(gone) == len(fleet.workers):
            return "every worker has exited (the router has none left to send requests to)"
        time.sleep(1.0)  # several processes, no single one to wait() on


def _tokens(count: int | None) -> str:
    """A KV capacity for the read-out; "unknown" when the server did not report a usable one."""
    return "unknown" if count is None else f"{count} tokens"


def report_fleet(info: FleetInfo) -> None:
    """The router's URL, each worker's KV capacity, and the total (URLs without their credentials:
    `serve --model-url` takes a router behind basic auth).

    The worker URLs are the router's text (`serve --model-url` asks whatever answers on the URL), so
    they are printed through `safe`: an escape sequence in one is shown, not run by the terminal."""
    policy = f", policy {info.policy}" if info.policy else ""
    router = redact_url(info.router_url)
    print(f"ready: {router} (router{policy})", flush=True)
    for i, w in enumerate(info.workers):
        state = "healthy" if w.healthy else "UNHEALTHY"
        url = safe(redact_url(w.url))
        print(f"worker {i}: {url} {state}, KV capacity: {_tokens(w.max_total_num_tokens)}")
    if info.unprobed:
        print(
            f"{info.unprobed} more workers listed by the router were not probed "
            f"(at most {MAX_PROBED_WORKERS} are); their capacity is not in the total"
        )
    print(f"total KV capacity: {info.total_kv_tokens} tokens over {len(info.capacities)} workers")
    if info.policy == "affinity":
        print("affinity: clients send a routing key per run (routing_key=..., header x-smg-routing-key)")
    print(f'connect with: qwq-agent run --model-url {router} "TASK"', flush=True)
