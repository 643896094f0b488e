"""Data-parallel serving: N SGLang replicas (one per GPU) behind SGLang's router (`sglang-router`).

The workers start first, each in a process group of its own with `CUDA_VISIBLE_DEVICES` set to its GPU;
once every one answers `/health` the router starts in front of them, and the fleet is ready when the
router's `/readiness` counts all workers healthy. Every wait shares one deadline.

The launching is separate from the waiting and reporting: tests run the same `Fleet` with scripted model
servers as workers (a command template with `{port}` and `{gpu}`) behind the real router.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import shlex
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from qwq_agent.http_env import client_options
from qwq_agent.http_probe import (
    MAX_CONCURRENT_WORKER_PROBES,
    MAX_PROBED_WORKERS,
    AnswerTooLarge,
    get_within,
    probe_each,
    run_bounded,
)
from qwq_agent.serve.launcher import (
    ReadyInfo,
    ServeConfig,
    ServerError,
    ServerExited,
    ServerProcess,
    ServerStartTimeout,
    bind_error,
    build_command,
    http_url,
    probe,
    probe_unbounded,
)

ROUTER_INSTALL_HINT = "pip install sglang-router (or `pip install -e '.[router]'` in the qwq-agent checkout)"

POLICIES = ("cache_aware", "round_robin", "affinity")
"""Router policies `serve --dp` offers. `affinity` is the router's `manual` policy: a request's
`x-smg-routing-key` header pins it to one worker (checked against sglang-router 0.3.2: the key is read
from that header, a body `rid` does not override it), and new keys go to the worker holding fewest keys."""


def router_policy_args(policy: str) -> list[str]:
    """The router flags for one of `POLICIES`."""
    if policy == "affinity":
        return ["--policy", "manual", "--assignment-mode", "min_group"]
    if policy in POLICIES:
        return ["--policy", policy]
    raise ValueError(f"unknown router policy {policy!r}; choose one of {', '.join(POLICIES)}")


@dataclass
class WorkerSpec:
    """How to start one replica."""

    index: int
    gpu: str
    command: list[str]
    url: str
    env: dict[str, str]


@dataclass
class FleetConfig:
    """N replicas and the router in front of them."""

    dp: int
    host: str = "127.0.0.1"
    router_port: int = 30000
    worker_base_port: int | None = None
    """Worker i listens on worker_base_port + i (default: router_port + 1 + i)."""
    policy: str = "cache_aware"
    gpus: list[str] | None = None
    """`CUDA_VISIBLE_DEVICES` of each worker (default: GPU i for worker i, or its `tp` GPUs)."""
    router_args: list[str] = field(default_factory=list)
    metrics_port: int | None = None
    """The router's Prometheus port, on 127.0.0.1 (default: a free port; the router's own default, 29000
    on every interface, lets only one router run per machine)."""
    tokenizer_path: str | None = None
    """A local tokenizer for the router (else it asks the workers' model path, a hub id included)."""
    python: str = sys.executable

    def __post_init__(self) -> None:
        if self.dp < 1:
            raise ValueError("dp must be at least 1")
        if self.gpus is not None and len(self.gpus) != self.dp:
            raise ValueError(f"{len(self.gpus)} GPUs named for {self.dp} replicas")
        router_policy_args(self.policy)  # an unknown policy fails here, before anything starts

    @property
    def router_url(self) -> str:
        """Where the router will answer."""
        return http_url(self.host, self.router_port)

    def worker_port(self, index: int) -> int:
        """The port of worker `index`."""
        base = self.worker_base_port if self.worker_base_port is not None else self.router_port + 1
        return base + index


def worker_specs(serve: ServeConfig, fleet: FleetConfig, template: str | None = None) -> list[WorkerSpec]:
    """One `WorkerSpec` per replica: SGLang's launch command (or `template` with `{port}` and `{gpu}`
    filled in), on its own port, seeing only its own GPU."""
    specs = []
    for i in range(fleet.dp):
        # with tensor parallelism each replica takes `tp` consecutive GPUs
        gpu = fleet.gpus[i] if fleet.gpus else ",".join(str(i * serve.tp + k) for k in range(serve.tp))
        port = fleet.worker_port(i)
        config = dataclasses.replace(serve, host="127.0.0.1", port=port)
        if template is not None:
            command = shlex.split(fill_template(template, port=port, gpu=gpu))
        else:
            command = build_command(config)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
        specs.append(WorkerSpec(index=i, gpu=gpu, command=command, url=config.url, env=env))
    return specs


_PLACEHOLDER = re.compile(r"\{(port|gpu)\}")


def fill_template(template: str, *, port: int, gpu: str) -> str:
    """`template` with every `{port}` and `{gpu}` replaced, and nothing else touched.

    Not `str.format`: a worker's command line often holds braces of its own, SGLang's
    `--json-model-override-args '{"rope_scaling": ...}'` (QwQ-32B's YaRN setting) for one, which
    `format` would read as fields and fail on (or need doubled, which the JSON then would not be).
    """
    values = {"port": str(port), "gpu": gpu}
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def router_command(fleet: FleetConfig, worker_urls: Sequence[str]) -> list[str]:
    """`python -m sglang_router.launch_router` in front of `worker_urls`."""
    return [
        fleet.python,
        "-m",
        "sglang_router.launch_router",
        "--worker-urls",
        *worker_urls,
        *router_policy_args(fleet.policy),
        "--host",
        fleet.host,
        "--port",
        str(fleet.router_port),
        # A worker that dies is taken out of rotation within seconds, not the default minute.
        "--health-check-interval-secs",
        "2",
        "--health-failure-threshold",
        "1",
        "--prometheus-host",
        "127.0.0.1",
        "--prometheus-port",
        str(fleet.metrics_port or _free_port()),
        *(["--tokenizer-path", fleet.tokenizer_path] if fleet.tokenizer_path else []),
        *fleet.router_args,
    ]


def port_problems(fleet: FleetConfig) -> list[str]:
    """Why the router's or a worker's port cannot be used now (empty when every one can).

    Checked before anything starts: SGLang binds its port only after loading the model (minutes), and
    meanwhile another server already answering on a worker's port (a leftover serve, another user's
    SGLang) would pass its /health and be put behind the router as that worker. Two of the fleet's
    own processes on one port (--worker-base-port overlapping --port) are refused too.
    """
    ports = {"the router": (fleet.host, fleet.router_port)}
    ports.update({f"worker {i}": ("127.0.0.1", fleet.worker_port(i)) for i in range(fleet.dp)})
    problems: list[str] = []
    owner: dict[int, str] = {}
    for name, (host, port) in ports.items():
        if not 0 < port < 65536:
            problems.append(f"{name}'s port {port} is not a TCP port (1-65535)")
        elif port in owner:
            problems.append(f"{name}'s port {port} is {owner[port]}'s too")
        elif (error := bind_error(host, port)) is not None:
            problems.append(_bind_problem(name, host, port, error))
        owner.setdefault(port, name)
    return problems


def _bind_problem(name: str, host: str, port: int, error: OSError) -> str:
    """What `error` (from binding `host:port`) means, said as such: only EADDRINUSE is "in use"."""
    if isinstance(error, socket.gaierror):
        return f"{name}'s host {host} does not resolve ({error.strerror})"
    if error.errno == errno.EADDRINUSE:
        return f"{name}'s port {port} is already in use on {host}"
    if error.errno == errno.EADDRNOTAVAIL:
        return f"{name}'s address {host} is not one of this machine's (port {port} cannot be bound there)"
    if error.errno == errno.EACCES:
        return (
            f"{name}'s port {port} needs privileges to bind on {host} (below 1024: root or "
            "CAP_NET_BIND_SERVICE)"
        )
    return f"{name}'s port {port} cannot be bound on {host}: {error.strerror or error}"


def _free_port() -> int:
    """A port free now on 127.0.0.1 (the router binds it moments later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class WorkerInfo:
    """One replica as the router lists it, with its KV capacity read from the replica itself."""

    url: str
    healthy: bool
    max_total_num_tokens: int | None
    model: str | None = None


@dataclass
class FleetInfo:
    """A ready fleet: the router's URL and each worker's capacity."""

    router_url: str
    workers: list[WorkerInfo]
    policy: str | None = None
    unprobed: int = 0
    """Workers the router listed past `MAX_PROBED_WORKERS`: not probed, and not in `workers`."""

    @property
    def capacities(self) -> list[int]:
        """The KV capacity of each healthy worker that reported one."""
        return [w.max_total_num_tokens for w in self.workers if w.healthy and w.max_total_num_tokens]

    @property
    def total_kv_tokens(self) -> int:
        """The sum of the healthy workers' KV capacities."""
        return sum(self.capacities)


def probe_router(url: str, *, timeout: float = 5.0) -> FleetInfo | None:
    """The fleet behind the router at `url` (its `/workers`, then each worker's `/server_info`);
    None when the router does not answer or is not an SGLang router.

    `timeout` bounds the router's `/workers` answer, and then the workers' probes as a whole: at most
    2 x `timeout` in all, however many workers the router lists or however slowly they answer. The
    workers are probed `MAX_CONCURRENT_WORKER_PROBES` at a time; one that has not answered `/health` and
    `/server_info` when the deadline passes is unhealthy (its capacity unknown). Only the first
    `MAX_PROBED_WORKERS` listed are probed; `FleetInfo.unprobed` counts the rest.
    """
    try:
        response = get_within(url + "/workers", timeout)
        if response.status_code != 200:
            return None
        listed = response.json_body().get("workers")
    except (httpx.HTTPError, httpx.InvalidURL, ValueError, AttributeError, TimeoutError, AnswerTooLarge):
        return None
    if not isinstance(listed, list):
        return None
    entries = [entry for entry in listed if isinstance(entry, dict) and entry.get("url")]
    probed, unprobed = entries[:MAX_PROBED_WORKERS], len(entries) - MAX_PROBED_WORKERS
    infos = _probe_workers([str(entry["url"]) for entry in probed], timeout)
    workers = [
        WorkerInfo(
            url=str(entry["url"]),
            healthy=bool(entry.get("is_healthy", True)) and info is not None,
            max_total_num_tokens=info.max_total_num_tokens if info else None,
            model=info.model if info else None,
        )
        for entry, info in zip(probed, infos, strict=True)
    ]
    # the router lists its workers in no fixed order
    return FleetInfo(router_url=url, workers=sorted(workers, key=lambda w: w.url), unprobed=max(0, unprobed))


def _probe_workers(urls: list[str], timeout: float) -> list[ReadyInfo | None]:
    """`probe` of each of `urls`, `MAX_CONCURRENT_WORKER_PROBES` at a time, all within one `timeout`
    (None for each that has not answered by then, a probe still waiting for its turn included)."""
    found: list[ReadyInfo | None] = [None] * len(urls)

    async def every() -> None:
        async with httpx.AsyncClient(timeout=timeout, **client_options(*urls)) as http:
            await probe_each(urls, lambda url: probe_unbounded(url, timeout=timeout, http=http), found)

    try:
        run_bounded(every(), timeout)
    except TimeoutError:
        pass  # the answers found by then stand
    return found


def _ready_workers(url: str, timeout: float) -> int | None:
    """How many workers the router's `/readiness` counts healthy (None: no answer yet, or none within
    `timeout` seconds however slowly it trickles in)."""
    try:
        response = get_within(url + "/readiness", timeout)
        return int(response.json_body().get("healthy_workers", 0))
    except (
        httpx.HTTPError,
        httpx.InvalidURL,
        ValueError,
        AttributeError,
        TypeError,
        TimeoutError,
        AnswerTooLarge,
    ):
        return None


def wait_router(
    router: ServerProcess,
    workers: int,
    timeout: float,
    poll_interval: float = 0.5,
    watch: Callable[[], None] | None = None,
) -> None:
    """Wait until the router's `/readiness` counts `workers` healthy workers, while it runs.

    `watch` is called every poll (the fleet checks its workers still run, and raises if one ended).
    Raises `ServerExited` when the router ends, `ServerStartTimeout` after `timeout` seconds, `PortTaken`
    when the answer came from another process listening on the router's port.
    """
    deadline = time.monotonic() + max(0.0, timeout)
    while True:
        if watch is not None:
            watch()
        if not router.alive():
            code = router.process.returncode if router.process else None
            raise ServerExited(f"the router exited with status {code} before it was ready", router.log_tail())
        healthy = _ready_workers(router.url, timeout=min(5.0, poll_interval * 2))
        # whatever the count: a stranger's router on the port may count fewer workers, or none
        if healthy is not None and router.owns_listener("while the router started") and healthy >= workers:
            return
        if time.monotonic() >= deadline:
            raise ServerStartTimeout(
                f"the router at {router.url} did not count {workers} healthy workers in time "
                f"(it counts {healthy})",
                router.log_tail(),
            )
        time.sleep(poll_interval)  # the router has no readiness event to wait on


class Fleet:
    """The replicas and the router as processes: start, wait for all with one deadline, stop."""

    def __init__(self, fleet: FleetConfig, workers: Sequence[WorkerSpec], log_dir: str | Path) -> None:
        self.config = fleet
        self.log_dir = Path(log_dir)
        self.workers = [
            ServerProcess(w.command, w.url, self.log_dir / f"worker-{w.index}.log", env=w.env)
            for w in workers
        ]
        self.specs = list(workers)
        self.router = ServerProcess(
            router_command(fleet, [w.url for w in workers]), fleet.router_url, self.log_dir / "router.log"
        )

    def start_workers(self) -> None:
        """Start every replica (they load their models in parallel)."""
        for worker in self.workers:
            worker.start()

    def wait_ready(
        self,
        timeout: float = 1800.0,
        poll_interval: float = 1.0,
        on_progress: Callable[[str], None] | None = None,
        report_every: float = 30.0,
    ) -> FleetInfo:
        """Wait for every worker's `/health`, then start the router and wait until it counts them all.

        `on_progress` gets a line when a worker is ready, and every `report_every` seconds one naming
        the workers still loading with the last line of the first one's log (a model load is long).

        Raises `ServerExited` naming the worker (or the router) that ended, `ServerStartTimeout` when the
        deadline passes, `PortTaken` when another process took a worker's (or the router's) port and
        answered in its place; `log_tail` holds the end of that process's log.
        """
        started = time.monotonic()
        deadline = started + timeout
        reported = started
        pending = {i for i in range(len(self.workers))}
        while pending:
            # every worker, the ready ones too: one that dies now (a CUDA error on its first batch, the
            # OOM killer) must end the wait at once, not after the whole deadline blaming another
            self._check_workers(pending)
            for i in sorted(pending):
                worker = self.workers[i]
                answered = probe(worker.url, timeout=min(5.0, poll_interval * 2)) is not None
                if answered and worker.owns_listener(f"while worker {i} loaded"):
                    pending.discard(i)
                    if on_progress:
                        on_progress(f"worker {i} ready: {worker.url}")
            if not pending:
                break
            if time.monotonic() >= deadline:
                late = ", ".join(f"worker {i} ({self.workers[i].url})" for i in sorted(pending))
                raise ServerStartTimeout(
                    f"{late} did not answer /health within {timeout:.0f} s",
                    self.workers[min(pending)].log_tail(),
                )
            if on_progress and time.monotonic() - reported >= report_every:
                reported = time.monotonic()
                first = self.workers[min(pending)]
                last = next((ln for ln in reversed(first.log_tail(5).splitlines()) if ln.strip()), "")
                names = ", ".join(f"worker {i}" for i in sorted(pending))
                on_progress(f"still waiting for {names} after {reported - started:.0f}s; log: {last[:200]}")
            time.sleep(poll_interval)  # polling processes we do not control; nothing to wait on instead
        self.router.start()
        wait_router(
            self.router,
            len(self.workers),
            deadline - time.monotonic(),
            poll_interval,
            watch=lambda: self._check_workers(set()),
        )
        info = probe_router(self.router.url)
        if info is None:
            raise ServerError(
                f"the router at {self.router.url} did not list its workers", self.router.log_tail()
            )
        info.policy = self.config.policy
        order = {spec.url: spec.index for spec in self.specs}  # as started: worker i is GPU i's
        info.workers.sort(key=lambda w: order.get(w.url, len(order)))
        return info

    def _check_workers(self, pending: set[int]) -> None:
        """Raise `ServerExited` naming the first worker that has ended (`pending`: those not yet ready)."""
        for i, worker in enumerate(self.workers):
            if not worker.alive():
                code = worker.process.returncode if worker.process else None
                when = "before it was ready" if i in pending else "after it answered /health"
                raise ServerExited(
                    f"worker {i} ({worker.url}, GPU {self.specs[i].gpu}) exited with status {code} {when}",
                    worker.log_tail(),
                )

    def exited(self) -> tuple[str, int | None] | None:
        """The first process of the fleet that has ended, as (name, status); None while all run."""
        if self.router.process is not None and not self.router.alive():
            return ("the router", self.router.process.returncode)
        for i, worker in enumerate(self.workers):
            if worker.process is not None and not worker.alive():
                return (f"worker {i} ({worker.url})", worker.process.returncode)
        return None

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the router (first: no new requests) and every worker, give them all one shared
        `grace` seconds, then SIGKILL whatever still runs.

        One grace for all, not one each: hung replicas (a stuck CUDA call ignores SIGTERM) would
        otherwise take (1 + N) x grace, longer than a supervisor waits before it SIGKILLs the CLI.
        Interrupted (a second Ctrl-C), it SIGKILLs every process not yet stopped before the exception
        propagates: each runs in a session of its own, so nothing else would stop it. A process that
        ended earlier (a worker that died and was reported) is not signalled again: its group id may
        belong to another program by now (see `ServerProcess.kill`).
        """
        processes = [self.router, *self.workers]
        deadline = time.monotonic() + grace
        try:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait_exit(deadline - time.monotonic())
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the router and every worker still running (the end of `stop`, and a second Ctrl-C)."""
        for process in (self.router, *self.workers):
            process.kill()


__all__ = [
    "MAX_CONCURRENT_WORKER_PROBES",
    "MAX_PROBED_WORKERS",
    "POLICIES",
    "ROUTER_INSTALL_HINT",
    "Fleet",
    "FleetConfig",
    "FleetInfo",
    "WorkerInfo",
    "WorkerSpec",
    "fill_template",
    "port_problems",
    "probe_router",
    "router_command",
    "router_policy_args",
    "wait_router",
    "worker_specs",
]
