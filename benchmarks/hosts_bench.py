"""How many agents one Docker host carries, and what reaching a host over ssh costs.

    .venv/bin/python benchmarks/hosts_bench.py [--sandboxes 16] [--busy 8] [--cells 15] [--no-ssh]

Measured on this machine's engine: memory (cgroup usage less page cache) and CPU of N idle sandboxes
(started, one cell run), then of `--busy` sandboxes each running `--cells` agent-like cells (numpy
and pandas work, a file write, a shell call) back to back. From those: sandboxes per GiB and per core,
idle and busy. With ssh (an sshd on 127.0.0.1 as in the tests, needs root and `scripts/bootstrap.sh`),
the same trivial call and cold start are timed through the local socket (the baseline) and through
the ssh tunnel, interleaved in the same run, so the ratio can be read. Prints a table and writes
benchmarks/results/hosts.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from qwq_agent.sandbox import DockerHost, DockerSandbox, SandboxConfig
from qwq_agent.sandbox.engine import DockerEngine
from qwq_agent.sandbox.image import ensure_image
from qwq_agent.sandbox.transport import connector_for

RESULTS = Path(__file__).resolve().parent / "results" / "hosts.json"
GIB = 1 << 30
BUSY_CELL = (
    "import numpy as np, pandas as pd\n"
    "a = np.random.default_rng(0).random((300, 300))\n"
    "df = pd.DataFrame(a[:, :8], columns=list('abcdefgh'))\n"
    "s = float((a @ a).trace()) + float(df.describe().loc['mean'].sum())\n"
    "open('/workspace/out.txt', 'w').write(str(s))\n"
    "s"
)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def usage(engine: DockerEngine, sb: DockerSandbox) -> tuple[int, int]:
    """(memory bytes less page cache, CPU nanoseconds used so far) of the sandbox's container."""
    stats = await engine.stats(sb.id)
    mem = stats["memory_stats"]
    cache = mem.get("stats", {}).get("inactive_file", 0)
    return int(mem.get("usage", 0)) - int(cache), int(stats["cpu_stats"]["cpu_usage"]["total_usage"])


async def snapshot(engine: DockerEngine, sandboxes: list[DockerSandbox]) -> list[tuple[int, int]]:
    return list(await asyncio.gather(*(usage(engine, sb) for sb in sandboxes)))


async def capacity(config: SandboxConfig, n: int, busy: int, cells: int, window: float) -> dict[str, Any]:
    engine = DockerEngine()
    sandboxes = [await DockerSandbox.create(config, engine=engine) for _ in range(n)]
    try:
        await asyncio.gather(*(sb.python("1 + 1") for sb in sandboxes))
        before = await snapshot(engine, sandboxes)
        await asyncio.sleep(window)  # idle: nothing runs, the measure is what idling costs
        after = await snapshot(engine, sandboxes)
        idle_mem = statistics.fmean(m for m, _ in after)
        idle_cpu = statistics.fmean(
            (c2 - c1) / 1e9 / window for (_, c1), (_, c2) in zip(before, after, strict=True)
        )

        workers = sandboxes[:busy]
        start = await snapshot(engine, workers)
        latencies: list[float] = []

        async def agent(sb: DockerSandbox) -> None:
            for _ in range(cells):
                t0 = time.perf_counter()
                r = await sb.python(BUSY_CELL, timeout=120)
                assert r.error is None, r.error
                await sb.shell("wc -c /workspace/out.txt")
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(agent(sb) for sb in workers))
        wall = time.perf_counter() - t0
        end = await snapshot(engine, workers)
        busy_mem = statistics.fmean(m for m, _ in end)
        cpu_s = sum((c2 - c1) / 1e9 for (_, c1), (_, c2) in zip(start, end, strict=True))
        calls = busy * cells
        return {
            "sandboxes": n,
            "idle_mem_mib": idle_mem / (1 << 20),
            "idle_cpu_cores_per_sandbox": idle_cpu,
            "idle_sandboxes_per_gib": GIB / idle_mem,
            "busy_sandboxes": busy,
            "busy_cells": calls,
            "busy_mem_mib": busy_mem / (1 << 20),
            "busy_sandboxes_per_gib": GIB / busy_mem,
            "cpu_s_per_tool_call": cpu_s / calls,
            "tool_calls_per_core_s": calls / cpu_s,
            "tool_call_p50_s": pct(latencies, 0.5),
            "tool_call_p90_s": pct(latencies, 0.9),
            "wall_s": wall,
        }
    finally:
        await asyncio.gather(*(sb.close() for sb in sandboxes))


async def transports(config: SandboxConfig, reps: int) -> dict[str, Any]:
    """Trivial call and cold start through the local socket (baseline) and through ssh, interleaved."""
    from qwq_agent.testing import sshd

    problem = sshd.unavailable()
    if problem:
        return {"skipped": problem}
    with sshd.SSHDockerEndpoint() as ep:
        engines = {
            "local": DockerEngine(),
            "ssh": DockerEngine(connector=connector_for(DockerHost(url=ep.url, ssh_config=ep.ssh_config))),
        }
        calls: dict[str, list[float]] = {k: [] for k in engines}
        starts: dict[str, list[float]] = {k: [] for k in engines}
        boxes = {k: await DockerSandbox.create(config, engine=e) for k, e in engines.items()}
        try:
            for _ in range(reps * 10):
                for k, sb in boxes.items():
                    t0 = time.perf_counter()
                    await sb.python("1")
                    calls[k].append(time.perf_counter() - t0)
            for _ in range(reps):
                for k, e in engines.items():
                    t0 = time.perf_counter()
                    sb = await DockerSandbox.create(config, engine=e)
                    await sb.python("1")
                    starts[k].append(time.perf_counter() - t0)
                    await sb.close()
        finally:
            for sb in boxes.values():
                await sb.close()
    out: dict[str, Any] = {}
    for k in engines:
        out[k] = {
            "call_p50_ms": pct(calls[k], 0.5) * 1000,
            "call_p90_ms": pct(calls[k], 0.9) * 1000,
            "cold_start_p50_ms": pct(starts[k], 0.5) * 1000,
        }
    out["ssh_over_local_call_p50"] = out["ssh"]["call_p50_ms"] / out["local"]["call_p50_ms"]
    out["ssh_over_local_start_p50"] = out["ssh"]["cold_start_p50_ms"] / out["local"]["cold_start_p50_ms"]
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sandboxes", type=int, default=16)
    ap.add_argument("--busy", type=int, default=8)
    ap.add_argument("--cells", type=int, default=15)
    ap.add_argument("--idle-window", type=float, default=10.0)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-ssh", action="store_true")
    args = ap.parse_args()
    config = SandboxConfig(image=ensure_image(progress=lambda *a, **k: None))
    cap = await capacity(config, args.sandboxes, min(args.busy, args.sandboxes), args.cells, args.idle_window)
    hops: dict[str, Any] = {"skipped": "--no-ssh"} if args.no_ssh else await transports(config, args.reps)
    result = {
        "host": {"cpus": os.cpu_count(), "mem_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB,
                 "platform": platform.platform()},
        "capacity": cap,
        "transports": hops,
        "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'measure':44} {'value':>12}")
    for key, value in cap.items():
        print(f"{key:44} {value:12.5g}" if isinstance(value, float) else f"{key:44} {value:>12}")
    if "skipped" in hops:
        print(f"ssh: skipped ({hops['skipped']})")
    else:
        for k in ("local", "ssh"):
            for key, value in dict(hops[k]).items():
                print(f"{k + ' ' + key:44} {value:12.2f}")
        print(f"{'ssh / local trivial call p50':44} {hops['ssh_over_local_call_p50']:12.2f}")
        print(f"{'ssh / local cold start p50':44} {hops['ssh_over_local_start_p50']:12.2f}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    asyncio.run(main())
