"""Sandbox benchmark: our channel and pool against plain Docker on the same machine.

    .venv/bin/python benchmarks/sandbox_bench.py [--image TAG] [--quick]
        [--baseline-image TAG --baseline-src DIR]

Prints a table and writes benchmarks/results/sandbox.json. Targets (issue 2): trivial call p50 <= 2 ms and
>= 30x faster than `docker exec`; warm acquire p50 <= 2 ms; cold start within 250 ms of a bare
`docker run`; idle memory <= 30 MiB per sandbox; 32 concurrent sandboxes with zero failures.

Before/after (issue 10): with `--baseline-image` (e.g. the image built from main) and `--baseline-src`
(that revision's source, e.g. `git archive $(git merge-base HEAD main) | tar -x -C /tmp/base`), the core
measures (trivial call, docker exec, 1 MB output, idle memory) are also taken for the baseline, by this
same script run on the baseline's own host code, interleaved in the same run, and shown side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from qwq_agent.sandbox import DockerSandbox, SandboxConfig, SandboxPool

RESULTS = Path(__file__).resolve().parent / "results" / "sandbox.json"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {"n": len(ms), "p50_ms": pct(ms, 0.5), "p90_ms": pct(ms, 0.9), "mean_ms": statistics.fmean(ms)}


def timed_cmd(cmd: list[str], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out.append(time.perf_counter() - t0)
    return out


async def cold_start(cfg: SandboxConfig, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        sb = await DockerSandbox.create(cfg)
        r = await sb.python("1")
        out.append(time.perf_counter() - t0)
        assert r.value == "1"
        await sb.close()
    return out


async def warm_acquire(cfg: SandboxConfig, n: int) -> list[float]:
    out = []
    async with SandboxPool(size=4, config=cfg) as pool:
        for _ in range(n):
            await pool.wait_ready()
            t0 = time.perf_counter()
            async with pool.acquire() as sb:
                out.append(time.perf_counter() - t0)
                assert sb.alive
    return out


def _streams(sb: DockerSandbox, streaming: bool) -> dict[str, Any]:
    """`on_output=` for a streaming measure (issue 13); revisions before streaming have none to take."""
    return {"on_output": lambda chunk: None} if streaming else {}


async def trivial_calls(sb: DockerSandbox, n: int, streaming: bool = False) -> list[float]:
    kw = _streams(sb, streaming)
    for _ in range(20):
        await sb.python("pass", **kw)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await sb.python("pass", **kw)
        out.append(time.perf_counter() - t0)
    return out


async def big_output(sb: DockerSandbox, n: int, streaming: bool = False) -> list[float]:
    kw = _streams(sb, streaming)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = await sb.python("print('x' * 1_000_000)", **kw)
        out.append(time.perf_counter() - t0)
        assert len(r.stdout) == 1_000_001 and r.stdout_dropped == 0
    return out


async def idle_memory(cfg: SandboxConfig, n: int) -> list[float]:
    sandboxes = await asyncio.gather(*(DockerSandbox.create(cfg) for _ in range(n)))
    try:
        await asyncio.gather(*(sb.python("1") for sb in sandboxes))
        await asyncio.sleep(2)  # a benchmark may wait: let start-up settle before sampling
        out = []
        for sb in sandboxes:
            _, stats = await sb.engine.request(
                "GET", f"/containers/{sb.id}/stats", params={"stream": "0", "one-shot": "1"}
            )
            mem = stats["memory_stats"]
            cache = mem.get("stats", {}).get("cache", mem.get("stats", {}).get("inactive_file", 0))
            out.append((mem["usage"] - cache) / 2**20)
        return out
    finally:
        await asyncio.gather(*(sb.close() for sb in sandboxes))


async def one_worker(cfg: SandboxConfig, i: int) -> float:
    t0 = time.perf_counter()
    async with DockerSandbox.create(cfg) as sb:
        r = await sb.python(f"sum(range({i} * 1000))")
        assert r.value == str(sum(range(i * 1000))), r
        s = await sb.shell(f"echo {i} > n.txt && cat n.txt")
        assert s.stdout == f"{i}\n", s
        v = await sb.view("/workspace/n.txt")
        assert f"\t{i}" in v.output
    return time.perf_counter() - t0


async def concurrent(cfg: SandboxConfig, n: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    results = await asyncio.gather(*(one_worker(cfg, i) for i in range(n)), return_exceptions=True)
    wall = time.perf_counter() - t0
    failures = [repr(r) for r in results if isinstance(r, BaseException)]
    times = [r for r in results if isinstance(r, float)]
    return {"n": n, "failures": len(failures), "errors": failures[:5], "wall_s": wall,
            "per_sandbox": summary(times) if times else {}}  # fmt: skip


async def core(image: str, reps: int) -> dict[str, Any]:
    """The measures compared before/after: trivial call, docker exec, 1 MB output, idle memory."""
    cfg = SandboxConfig(image=image)
    res: dict[str, Any] = {"image": image}
    async with DockerSandbox.create(cfg.model_copy(update={"output_head_bytes": 2_000_000})) as sb:
        res["trivial_python_call"] = summary(await trivial_calls(sb, 500))
        res["docker_exec_baseline"] = summary(
            await asyncio.to_thread(timed_cmd, ["docker", "exec", sb.id, "python3", "-c", "pass"], reps)
        )
        res["output_1mb"] = summary(await big_output(sb, 20))
        if getattr(DockerSandbox, "supports_output_stream", False):
            # With a listener: the request asks for a stream (issue 13); a silent call sends no frames.
            res["trivial_python_call_streaming"] = summary(await trivial_calls(sb, 500, streaming=True))
            res["output_1mb_streaming"] = summary(await big_output(sb, 20, streaming=True))
    mem = await idle_memory(cfg, 8)
    res["idle_memory_mib"] = {"n": len(mem), "mean": statistics.fmean(mem), "max": max(mem)}
    return res


def core_checks(res: dict[str, Any]) -> dict[str, Any]:
    return {
        "trivial_p50_le_2ms": res["trivial_python_call"]["p50_ms"] <= 2,
        "trivial_speedup_vs_exec": res["docker_exec_baseline"]["p50_ms"]
        / res["trivial_python_call"]["p50_ms"],
        "idle_memory_le_30mib": res["idle_memory_mib"]["max"] <= 30,
    }


async def baseline_core(image: str, src: str, reps: int) -> dict[str, Any]:
    """`core` for the baseline image, measured by this script running on the baseline's host code."""
    env = {**os.environ, "PYTHONPATH": src}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--core-only", "--image", image, "--reps", str(reps),
        env=env, cwd=src, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"baseline run failed ({proc.returncode})")
    return json.loads(out.decode().strip().splitlines()[-1])


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default=os.environ.get("QWQ_SANDBOX_IMAGE"))
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--baseline-image", help="image to compare against (e.g. built from main)")
    ap.add_argument("--baseline-src", help="source tree of the baseline revision (its host code drives it)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where the JSON results go")
    ap.add_argument("--core-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--reps", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.core_only:
        print(json.dumps(await core(args.image, args.reps or 15)))
        return
    if args.image:
        image = args.image
    else:
        from qwq_agent.sandbox.image import ensure_image

        image = ensure_image()
    cfg = SandboxConfig(image=image)
    reps = 5 if args.quick else 15

    res: dict[str, Any] = {
        "image": image,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    res["docker_run_baseline"] = summary(
        await asyncio.to_thread(
            timed_cmd, ["docker", "run", "--rm", "--network", "none", image, "true"], reps
        )
    )
    res["docker_run_true_entrypoint"] = summary(
        await asyncio.to_thread(
            timed_cmd, ["docker", "run", "--rm", "--network", "none", "--entrypoint", "true", image], reps
        )
    )
    res["cold_start_to_first_result"] = summary(await cold_start(cfg, reps))
    res["warm_acquire"] = summary(await warm_acquire(cfg, reps * 2))
    async with DockerSandbox.create(cfg.model_copy(update={"output_head_bytes": 2_000_000})) as sb:
        res["trivial_python_call"] = summary(await trivial_calls(sb, 500))
        res["docker_exec_baseline"] = summary(
            await asyncio.to_thread(timed_cmd, ["docker", "exec", sb.id, "python3", "-c", "pass"], reps)
        )
        res["output_1mb"] = summary(await big_output(sb, 20))
    mem = await idle_memory(cfg, 8)
    res["idle_memory_mib"] = {"n": len(mem), "mean": statistics.fmean(mem), "max": max(mem)}
    res["concurrent_32"] = await concurrent(cfg, 32)

    base = min(res["docker_run_baseline"]["p50_ms"], res["docker_run_true_entrypoint"]["p50_ms"])
    if args.baseline_image:
        if not args.baseline_src:
            ap.error("--baseline-image needs --baseline-src")
        # Baseline, then this image again: both measured in the same run, on the same machine state.
        before = await baseline_core(args.baseline_image, args.baseline_src, reps)
        after = await core(image, reps)
        res["before_after"] = {
            "before": {**before, "checks": core_checks(before)},
            "after": {**after, "checks": core_checks(after)},
        }
    res["checks"] = {
        "trivial_p50_le_2ms": res["trivial_python_call"]["p50_ms"] <= 2,
        "trivial_speedup_vs_exec": res["docker_exec_baseline"]["p50_ms"]
        / res["trivial_python_call"]["p50_ms"],
        "warm_acquire_p50_le_2ms": res["warm_acquire"]["p50_ms"] <= 2,
        "cold_start_minus_docker_run_ms": res["cold_start_to_first_result"]["p50_ms"] - base,
        "idle_memory_le_30mib": res["idle_memory_mib"]["max"] <= 30,
        "concurrent_32_zero_failures": res["concurrent_32"]["failures"] == 0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    report(res, args.out)


def report(res: dict[str, Any], out: Path = RESULTS) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sandbox benchmark ({res['image']})")
    for col in ("measure", "p50 ms", "p90 ms", "n", "note"):
        table.add_column(col)
    rows = [
        (
            "docker run --rm --network none IMAGE true",
            "docker_run_baseline",
            "baseline (runs our entrypoint)",
        ),
        ("docker run ... --entrypoint true IMAGE", "docker_run_true_entrypoint", "baseline (bare)"),
        ("cold start to first python result", "cold_start_to_first_result", "excludes removal"),
        ("warm acquire from pool (size 4)", "warm_acquire", ""),
        ("trivial python call", "trivial_python_call", ""),
        ("docker exec CONTAINER python3 -c pass", "docker_exec_baseline", "baseline"),
        ("python printing 1 MB", "output_1mb", ""),
    ]
    for label, key, note in rows:
        s = res[key]
        table.add_row(label, f"{s['p50_ms']:.2f}", f"{s['p90_ms']:.2f}", str(s["n"]), note)
    mem = res["idle_memory_mib"]
    table.add_row(
        "idle memory per sandbox (MiB)", f"{mem['mean']:.1f}", f"max {mem['max']:.1f}", str(mem["n"]), ""
    )
    c = res["concurrent_32"]
    table.add_row(
        "32 sandboxes at once: wall s", f"{c['wall_s']:.2f}", "", str(c["n"]), f"failures: {c['failures']}"
    )
    console = Console()
    console.print(table)
    if "before_after" in res:
        ba = Table(title="before / after (same run)")
        for col in ("measure", "before p50", "after p50", "unit"):
            ba.add_column(col)
        before, after = res["before_after"]["before"], res["before_after"]["after"]
        for key, label in (("trivial_python_call", "trivial python call"), ("docker_exec_baseline", "docker exec"),
                           ("output_1mb", "python printing 1 MB"),
                           ("trivial_python_call_streaming", "trivial python call, streaming on"),
                           ("output_1mb_streaming", "python printing 1 MB, streaming on")):  # fmt: skip
            cells = [f"{side[key]['p50_ms']:.2f}" if key in side else "n/a" for side in (before, after)]
            ba.add_row(label, *cells, "ms")
        ba.add_row("idle memory (max of 8)", f"{before['idle_memory_mib']['max']:.1f}",
                   f"{after['idle_memory_mib']['max']:.1f}", "MiB")  # fmt: skip
        ba.add_row("speedup vs docker exec", f"{before['checks']['trivial_speedup_vs_exec']:.0f}x",
                   f"{after['checks']['trivial_speedup_vs_exec']:.0f}x", "")  # fmt: skip
        ba.add_row("image", before["image"], after["image"], "")
        console.print(ba)
    console.print({k: (round(v, 2) if isinstance(v, float) else v) for k, v in res["checks"].items()})
    console.print(f"written to {out}")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
