"""Snapshot benchmark: snapshot and restore of a 10 MB / 100 MB workspace, beside a cold start, one run.

    .venv/bin/python benchmarks/snapshot_bench.py [--image TAG] [--cases 10:100,10:1,100:100] [--n 20]
        [--cold 5] [--quick] [--out PATH]

Prints a table and writes benchmarks/results/snapshot-<date>.json (a list of rows: label, workspace_mb,
n, p50_ms, p90_ms, mean_ms, plus a `meta` row). Target (issue 16): restore of 10 MB into a warm sandbox
<= 100 ms p50. Measured in the same run, as baselines:

- cold start: a new sandbox until its first Python cell answers (what a restore into a warm sandbox
  saves), and cold start + restore;
- docker-py `get_archive`/`put_archive` of the same workspace on a plain container of the same image.
  Our hardened sandboxes cannot use that path at all: the archive API reads and writes the container's
  own filesystem, which is read-only there, and never sees the tmpfs mounted on /workspace. The plain
  container keeps /workspace in its writable layer; `put_archive` there does not empty the workspace
  first (our restore does), which only flatters the baseline.

A case `MB:FILES` is a workspace of FILES files of random (incompressible) bytes adding up to MB; rows
carry `files`. The pool row restores into an empty warm sandbox (nothing to clear), as branches do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker

from qwq_agent.sandbox import DockerSandbox, SandboxConfig, SandboxPool, janitor
from qwq_agent.sandbox.docker_sandbox import resolve_image

RESULTS = Path(__file__).resolve().parent / "results"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def row(label: str, mb: int | None, values: list[float], **extra: Any) -> dict[str, Any]:
    """One table row; `extra` (e.g. files=) lands in the JSON."""
    ms = [v * 1000 for v in values]
    return {"label": label, "workspace_mb": mb, "n": len(ms), "p50_ms": round(pct(ms, 0.5), 2),
            "p90_ms": round(pct(ms, 0.9), 2), "mean_ms": round(statistics.fmean(ms), 2), **extra}  # fmt: skip


async def timed(n: int, fn: Callable[[], Awaitable[Any]]) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t0)
    return out


def fill_command(mb: int, files: int) -> str:
    size = mb * 1024 * 1024 // files
    return f"mkdir -p /workspace/data && for i in $(seq {files}); do head -c {size} /dev/urandom > /workspace/data/f$i; done"


class PlainPair:
    """Two plain containers of the image (writable root, no tmpfs) for docker-py's archive API."""

    def __init__(self, image: str) -> None:
        self.client = docker.from_env()
        run: dict[str, Any] = {"entrypoint": ["sleep", "infinity"], "labels": janitor.owner_labels(3600),
                               "detach": True, "network_mode": "none", "user": "0:0"}  # fmt: skip
        self.containers = [self.client.containers.run(image, **run) for _ in range(2)]
        self.src, self.dst = self.containers
        self.data = b""

    def fill(self, mb: int, files: int) -> None:
        code, out = self.src.exec_run(["bash", "-c", fill_command(mb, files)])
        assert code == 0, out

    def get(self) -> None:
        stream, _ = self.src.get_archive("/workspace")
        self.data = b"".join(stream)

    def put(self) -> None:
        self.dst.put_archive("/", self.data)

    def close(self) -> None:
        for c in self.containers:
            c.remove(force=True)


async def compare(cfg: SandboxConfig, image: str, mb: int, files: int, n: int) -> list[dict[str, Any]]:
    """Ours and docker-py's, interleaved call by call so a load swing hits both alike."""
    plain = await asyncio.to_thread(PlainPair, image)
    try:
        async with DockerSandbox.create(cfg) as src, DockerSandbox.create(cfg) as dst:
            r = await src.shell(fill_command(mb, files), timeout=120)
            assert r.exit_code == 0, r.stderr
            await asyncio.to_thread(plain.fill, mb, files)
            snap = await src.snapshot()
            await asyncio.to_thread(plain.get)
            t: dict[str, list[float]] = {k: [] for k in ("snap", "get", "restore", "inside", "put")}
            for _ in range(n):
                t0 = time.perf_counter()
                await src.snapshot()
                t1 = time.perf_counter()
                await asyncio.to_thread(plain.get)
                t2 = time.perf_counter()
                result = await dst.restore(snap)
                t3 = time.perf_counter()
                await asyncio.to_thread(plain.put)
                t4 = time.perf_counter()
                t["snap"].append(t1 - t0)
                t["get"].append(t2 - t1)
                t["restore"].append(t3 - t2)
                t["put"].append(t4 - t3)
                t["inside"].append(sum(result.sandbox_seconds.values()))
            # Then each path alone, back to back (as 8 branches restoring one snapshot would): the
            # interleaved loop above charges each side with the other's after-effects (dockerd's
            # buffers and page-cache writeback, our sandbox's freed tmpfs).
            alone = await timed(n, lambda: dst.restore(snap))
            put_alone = []
            for _ in range(n):
                t0 = time.perf_counter()
                await asyncio.to_thread(plain.put)
                put_alone.append(time.perf_counter() - t0)
            check = await dst.shell("du -sb /workspace/data | cut -f1")
            assert int(check.stdout) >= mb * 1024 * 1024 - files, check.stdout
    finally:
        await asyncio.to_thread(plain.close)
    return [
        row("snapshot (supervisor channel)", mb, t["snap"], files=files, archive_bytes=snap.size_bytes),
        row("docker-py get_archive (plain container, baseline)", mb, t["get"], files=files),
        row("restore into a warm sandbox (supervisor channel)", mb, t["restore"], files=files),
        row("  of which inside the sandbox (sha256, checks, clear, extract)", mb, t["inside"], files=files),
        row("docker-py put_archive (plain container, baseline)", mb, t["put"], files=files),
        row("restore, back to back", mb, alone, files=files),
        row("docker-py put_archive, back to back (baseline)", mb, put_alone, files=files),
    ]


async def pool_acquire(
    cfg: SandboxConfig, mb: int, files: int, snap_src: DockerSandbox, n: int
) -> list[dict[str, Any]]:
    """Acquire with a snapshot from a pool of one; the refill it starts competes, as it would in use."""
    snap = await snap_src.snapshot()
    times, restores = [], []
    async with SandboxPool(size=1, config=cfg) as pool:
        for _ in range(n):
            await pool.wait_ready()  # a warm sandbox waits, as in a pool sized for the load
            t0 = time.perf_counter()
            async with pool.acquire(snapshot=snap) as sb:
                times.append(time.perf_counter() - t0)
                assert sb.last_restore is not None
                restores.append(sb.last_restore.duration_s)
    return [
        row("pool.acquire(snapshot=) from a warm pool (ping + restore)", mb, times, files=files),
        row("  of which the restore into its empty workspace", mb, restores, files=files),
    ]


async def cold(cfg: SandboxConfig, n: int, snap_data_src: DockerSandbox | None) -> list[dict[str, Any]]:
    starts, with_restore = [], []
    snap = await snap_data_src.snapshot() if snap_data_src else None
    for _ in range(n):
        t0 = time.perf_counter()
        sb = await DockerSandbox.create(cfg)
        await sb.python("1")
        starts.append(time.perf_counter() - t0)
        if snap is not None:
            t0 = time.perf_counter()
            sb2 = await DockerSandbox.create(cfg)
            await sb2.restore(snap)
            await sb2.python("1")
            with_restore.append(time.perf_counter() - t0)
            await sb2.close()
        await sb.close()
    rows = [row("cold start (create + first cell)", None, starts)]
    if snap is not None:
        rows.append(row("cold start + restore + first cell", snap.size_bytes // (1024 * 1024), with_restore))
    return rows


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image")
    ap.add_argument("--cases", default="10:100,10:1,100:100", help="MB:FILES,...")
    ap.add_argument("--n", type=int, default=20, help="repetitions for 10 MB (fewer for bigger sizes)")
    ap.add_argument("--cold", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="n=5, cold=2")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/snapshot-<date>.json)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.cold = 5, 2
    cfg = SandboxConfig(image=args.image) if args.image else SandboxConfig()
    image = await asyncio.to_thread(resolve_image, cfg)
    cfg = cfg.model_copy(update={"image": image})
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    first = True
    for mb, files in (tuple(int(x) for x in case.split(":")) for case in args.cases.split(",")):
        n = args.n if mb <= 10 else max(3, args.n // 3)
        rows += await compare(cfg, image, mb, files, n)
        if first:  # the pool and the cold start once, with the first case's workspace
            first = False
            async with DockerSandbox.create(cfg) as src:
                await src.shell(fill_command(mb, files), timeout=120)
                rows += await pool_acquire(cfg, mb, files, src, max(5, n // 2))
                rows += await cold(cfg, args.cold, src)
    meta = {"label": "meta", "date": datetime.now(UTC).isoformat(timespec="seconds"), "host": platform.node(),
            "cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
            "image": image, "cases": args.cases}  # fmt: skip
    print(f"{'measure':<66} {'MB':>4} {'files':>5} {'n':>3} {'p50 ms':>9} {'p90 ms':>9}")
    for r in rows:
        size = "" if r["workspace_mb"] is None else r["workspace_mb"]
        files = r.get("files", "")
        print(
            f"{r['label']:<66} {size!s:>4} {files!s:>5} {r['n']:>3} {r['p50_ms']:>9.1f} {r['p90_ms']:>9.1f}"
        )
    print(f"load average before/after: {load_before} / {meta['loadavg_after']} on {meta['cpus']} cpus")
    out = Path(args.out) if args.out else RESULTS / f"snapshot-{datetime.now(UTC).date().isoformat()}.json"
    out.write_text(json.dumps([*rows, meta], indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
