"""How close to its deadline each bounded wait ends, under the faults that used to hang.

1. Wall-time budget: an agent run with `max_wall_s` W against the scripted model server (real HTTP on
   127.0.0.1) injecting one fault per row: keep-alives only, a stream stalled mid-way, a server failing
   every request (the client retries), a stall plus an `/abort_request` that takes a minute. Reports the
   run's wall time and its overshoot past W (negative: it ended early, keeping the abort's reserve).
   Baseline in the same run: a healthy but slow stream (a token every 5 ms), which the loop also stops
   at the deadline; the faults should end no later than it does.
2. Docker: a unix socket server that accepts and never answers, as DOCKER_HOST would point to it; the
   time `DockerSandbox.create(start_timeout_s=S)` takes to raise `DockerUnreachable`, against S.
3. Warm acquire from a pool of 4 (real containers): with the health-check ping that finds paused or
   frozen sandboxes (the default), and, as the baseline in the same run, with it off
   (`health_check_timeout_s=None`).

    python benchmarks/deadline_bench.py [--wall 1.0] [--repeats 5] [--start-timeout 1.0]

Prints a table and writes benchmarks/results/deadlines.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from qwq_agent.agent.budgets import Budget
from qwq_agent.agent.clients import SGLangClient
from qwq_agent.agent.clients.retry import RetryPolicy
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.sandbox import DockerSandbox, SandboxConfig, SandboxPool
from qwq_agent.sandbox.engine import DockerEngine
from qwq_agent.sandbox.errors import DockerUnreachable
from qwq_agent.testing.scripted_server import ScriptedModelServer, Turn

TEXT = "thinking about it " * 400
RESULTS = Path(__file__).parent / "results" / "deadlines.json"


def faults() -> dict[str, dict]:
    patient = RetryPolicy(attempts=1000, base_delay=0.1, max_delay=0.1, jitter=0.0)
    return {
        "baseline: slow healthy stream": {"turns": [Turn(text=TEXT, token_delay=0.005)]},
        "keep-alives only": {"turns": [Turn(text=TEXT, keepalive_after=3, hold_timeout=120)]},
        "stalled mid-stream": {"turns": [Turn(text=TEXT, hold_after=5, hold_timeout=120)]},
        "503 on every request (client retries)": {
            "turns": [Turn(http_status=503)],
            "server": {"when_exhausted": "repeat"},
            "client": {"retry": patient},
        },
        "stall + abort answering after 60 s": {
            "turns": [Turn(text=TEXT, hold_after=5, hold_timeout=120)],
            "server": {"abort_delay": 60},
            "client": {"abort_timeout": 60},
        },
    }


async def one_run(spec: dict, wall: float) -> tuple[float, str]:
    async with ScriptedModelServer(spec["turns"], **spec.get("server", {})) as server:
        async with SGLangClient(server.url, read_timeout=600, **spec.get("client", {})) as client:
            agent = Agent(
                client, [], config=AgentConfig(check_language=False, budget=Budget(max_wall_s=wall))
            )
            started = time.perf_counter()
            result = await asyncio.wait_for(agent.run("go"), 120)
            return time.perf_counter() - started, result.status


async def hung_docker(start_timeout: float, repeats: int) -> list[float]:
    folder = tempfile.mkdtemp(prefix="qwq-hung-", dir="/tmp")
    path = os.path.join(folder, "docker.sock")
    held: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        try:
            while await reader.read(65536):
                pass
        except (asyncio.CancelledError, ConnectionError):
            pass  # the benchmark is over

    server = await asyncio.start_unix_server(handle, path)
    times = []
    try:
        for _ in range(repeats):
            engine = DockerEngine(path, timeout=3600)
            started = time.perf_counter()
            try:
                await DockerSandbox.create(
                    SandboxConfig(image="any", start_timeout_s=start_timeout), engine=engine
                )
            except DockerUnreachable:
                times.append(time.perf_counter() - started)
    finally:
        server.close()
        for w in held:
            w.close()
        shutil.rmtree(folder, ignore_errors=True)
    return times


async def warm_acquire(image: str, health_check: float | None, n: int) -> list[float]:
    out = []
    async with SandboxPool(
        size=4, config=SandboxConfig(image=image), health_check_timeout_s=health_check
    ) as pool:
        for _ in range(n):
            await pool.wait_ready()
            started = time.perf_counter()
            async with pool.acquire():
                out.append(time.perf_counter() - started)
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wall", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--start-timeout", type=float, default=1.0)
    ap.add_argument("--acquires", type=int, default=30)
    args = ap.parse_args()

    table = Table(title=f"runs with max_wall_s={args.wall:g} ({args.repeats} each)")
    for col in ("fault", "status", "wall p50 (s)", "wall max (s)", "overshoot max (s)"):
        table.add_column(col)
    rows = []
    for name, spec in faults().items():
        walls, statuses = [], set()
        for _ in range(args.repeats):
            wall, status = await one_run(spec, args.wall)
            walls.append(wall)
            statuses.add(status)
        row = {
            "fault": name,
            "statuses": sorted(statuses),
            "wall_p50_s": statistics.median(walls),
            "wall_max_s": max(walls),
            "overshoot_max_s": max(walls) - args.wall,
        }
        rows.append(row)
        table.add_row(
            name,
            ",".join(row["statuses"]),
            f"{row['wall_p50_s']:.3f}",
            f"{row['wall_max_s']:.3f}",
            f"{row['overshoot_max_s']:+.3f}",
        )

    docker_times = await hung_docker(args.start_timeout, args.repeats)
    docker = {
        "start_timeout_s": args.start_timeout,
        "errors": len(docker_times),
        "attempts": args.repeats,
        "time_to_error_p50_s": statistics.median(docker_times) if docker_times else None,
        "time_to_error_max_s": max(docker_times) if docker_times else None,
    }
    image = os.environ.get("QWQ_SANDBOX_IMAGE")
    if not image:
        from qwq_agent.sandbox.image import ensure_image

        image = ensure_image(progress=lambda *a, **k: None)
    acquire = {}
    for label, check in (("with health check", 2.0), ("baseline: no health check", None)):
        times = sorted(await warm_acquire(image, check, args.acquires))
        acquire[label] = {
            "n": len(times),
            "p50_ms": 1000 * statistics.median(times),
            "p90_ms": 1000 * times[int(0.9 * (len(times) - 1))],
        }
    console = Console()
    console.print(table)
    for label, row in acquire.items():
        console.print(
            f"warm acquire, {label}: p50 {row['p50_ms']:.2f} ms, p90 {row['p90_ms']:.2f} ms (n={row['n']})"
        )
    console.print(
        f"hung Docker daemon: {docker['errors']}/{args.repeats} DockerUnreachable, time to error p50 "
        f"{docker['time_to_error_p50_s']:.3f} s, max {docker['time_to_error_max_s']:.3f} s "
        f"(start_timeout_s={args.start_timeout:g})"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "wall_s": args.wall,
                "repeats": args.repeats,
                "runs": rows,
                "hung_docker": docker,
                "warm_acquire": acquire,
            },
            indent=2,
        )
        + "\n"
    )
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    asyncio.run(main())
