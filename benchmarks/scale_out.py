"""Scale-out: the agent workload on one SGLang replica, then on two behind SGLang's router, in one run.

Configurations (issue 15): (a) one GPU alone (the first worker, no router), (b) two replicas behind the
router round-robin, (c) cache-aware, (d) with session affinity (router policy `manual`, one routing key
per agent session: `serve --dp --router-policy affinity`). Every configuration starts from empty caches
(`/flush_cache` on each worker) and runs the same sessions as `benchmarks/agent_workload.py`.

    # workers already running (see benchmarks/gpu_agent_workload.sh, phase scale-out):
    python benchmarks/scale_out.py --worker-urls http://127.0.0.1:30000 http://127.0.0.1:30001 \\
        --sessions 64 --turns 6 --out benchmarks/results/scale_out-DATE.json
    # the whole pipeline against scripted workers behind the real router (no GPU, small sizes):
    python benchmarks/scale_out.py --scripted 2 --sessions 8 --turns 3 --out /tmp/scale_out.json
    python benchmarks/scale_out.py --plot benchmarks/results/scale_out-DATE.json   # the chart alone
    # one GPU: the worker alone and behind the router with each policy (phase router-check)
    python benchmarks/scale_out.py --worker-urls http://127.0.0.1:30000 --router-check --out ...

Prints a table, writes the JSON list (`label`, `gpus`, `policy`, `sessions`, `turns`, `generated_tok_s`,
`cached_share_turn2plus`, `ttft_p50_s`, `ttft_p90_s`, `wall_s`, plus per-turn rows) and a PNG chart
beside it, and checks the issue's targets (best two-GPU >= 1.8x (a), cached share from turn 2 >= 93%,
TTFT p90 <= 2x p50). With scripted workers the figures only show that the pipeline works: a scripted
worker has no batch to fill, so its throughput does not scale like a GPU's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_workload import run_config

from qwq_agent.agent.clients import SGLangClient
from qwq_agent.serve.fleet import FleetConfig, probe_router, router_command, wait_router
from qwq_agent.serve.launcher import ServerProcess, probe

CONFIGS = [
    # label, gpus, router policy (None: the first worker directly)
    ("a-one-gpu", 1, None),
    ("b-two-round-robin", 2, "round_robin"),
    ("c-two-cache-aware", 2, "cache_aware"),
    ("d-two-affinity", 2, "affinity"),
]
# --router-check, on a machine with one GPU: the same worker alone, then behind the router with each
# policy. It proves the router path on real SGLang (tokenizer, routing header, cache reports) and measures
# what the router itself costs, before two GPUs are spent on the full run.
ROUTER_CHECK = [
    ("a-one-gpu", 1, None),
    ("r-one-round-robin", 1, "round_robin"),
    ("r-one-cache-aware", 1, "cache_aware"),
    ("r-one-affinity", 1, "affinity"),
]


@contextlib.contextmanager
def scripted_workers(n: int, gen_tokens: int, token_delay: float) -> Iterator[list[str]]:
    """`n` scripted model servers in this process (their own threads), writing `gen_tokens` words."""
    from qwq_agent.testing.scripted_server import ScriptedModelServer, Turn

    text = " ".join(["word"] * gen_tokens)
    with tempfile.TemporaryDirectory() as model_dir:  # a local folder: the router asks no model hub
        servers = [
            ScriptedModelServer(
                lambda r: Turn(text, token_delay=token_delay),
                when_exhausted="repeat",
                model=model_dir,
                max_total_num_tokens=200_000,
            )
            for _ in range(n)
        ]
        for s in servers:
            s.__enter__()
        try:
            yield [s.url for s in servers]
        finally:
            for s in servers:
                s.__exit__()


@contextlib.contextmanager
def router(
    policy: str, worker_urls: list[str], port: int, log_dir: Path, tokenizer: str | None = None
) -> Iterator[str]:
    """SGLang's router with `policy` in front of `worker_urls`, ready; stopped on exit."""
    fleet = FleetConfig(dp=len(worker_urls), router_port=port, policy=policy, tokenizer_path=tokenizer)
    process = ServerProcess(
        router_command(fleet, worker_urls), fleet.router_url, log_dir / f"router-{policy}.log"
    )
    process.start()
    try:
        wait_router(process, len(worker_urls), timeout=120)
        yield fleet.router_url
    finally:
        process.stop(10)


async def flush(urls: list[str]) -> None:
    """Empty every worker's radix cache, so no configuration inherits another's prefixes."""
    async with httpx.AsyncClient(timeout=60) as http:
        for url in urls:
            with contextlib.suppress(httpx.HTTPError):  # a scripted worker has no /flush_cache
                await http.post(url + "/flush_cache")


async def measure(
    args: argparse.Namespace, url: str, label: str, gpus: int, policy: str, capacity: int
) -> dict:
    client = SGLangClient(url, read_timeout=1800)
    keys = iter(range(10**9))

    def factory() -> SGLangClient:
        # run_config asks once per session, in session order: one routing key per agent session
        return client.with_routing_key(f"{label}-session-{next(keys)}") if policy == "affinity" else client

    workload = argparse.Namespace(**{**vars(args), "label": label, "admission": False})
    try:
        result = await run_config(workload, factory, capacity)
    finally:
        await client.aclose()
    return {
        "label": label,
        "gpus": gpus,
        "policy": policy,
        "sessions": args.sessions,
        "turns": args.turns,
        "generated_tok_s": result["gen_tokens_per_s"],
        "cached_share_turn2plus": result["cached_share_turn2plus"],
        "ttft_p50_s": result["ttft_turn2plus_p50_s"],
        "ttft_p90_s": result["ttft_turn2plus_p90_s"],
        "wall_s": result["wall_s"],
        "generated_tokens": result["generated_tokens"],
        "kv_capacity_tokens": capacity,
        "statuses": result["statuses"],
        "per_turn": result["per_turn"],
    }


async def run_all(args: argparse.Namespace, workers: list[str], log_dir: Path) -> list[dict]:
    results = []
    for label, gpus, policy in ROUTER_CHECK if args.router_check else CONFIGS:
        if gpus > len(workers):
            continue
        await flush(workers)
        if policy is None:
            info = probe(workers[0])
            capacity = (info.max_total_num_tokens if info else None) or 0
            row = await measure(args, workers[0], label, 1, "none", capacity)
        else:
            with router(policy, workers[:gpus], args.router_port, log_dir, args.tokenizer_path) as url:
                fleet = probe_router(url)
                capacity = fleet.total_kv_tokens if fleet else 0
                row = await measure(args, url, label, gpus, policy, capacity)
        print_row(row)
        results.append(row)
    return results


def print_row(r: dict) -> None:
    p50 = f"{r['ttft_p50_s']:.3f}" if r["ttft_p50_s"] is not None else "-"
    p90 = f"{r['ttft_p90_s']:.3f}" if r["ttft_p90_s"] is not None else "-"
    print(
        f"{r['label']:<20} {r['gpus']:>4} {r['policy']:<12} {r['generated_tok_s']:>10.1f} "
        f"{100 * r['cached_share_turn2plus']:>7.1f}% {p50:>9} {p90:>9} {r['wall_s']:>8.1f}  {r['statuses']}",
        flush=True,
    )


def check_targets(results: list[dict]) -> list[str]:
    """The issue's targets, one line each (PASS/FAIL); the baseline is (a), measured in the same run."""
    lines = []
    base = next((r for r in results if r["gpus"] == 1), None)
    two = [r for r in results if r["gpus"] == 2]
    if base and two and base["generated_tok_s"]:
        best = max(two, key=lambda r: r["generated_tok_s"])
        ratio = best["generated_tok_s"] / base["generated_tok_s"]
        lines.append(
            f"{'PASS' if ratio >= 1.8 else 'FAIL'} best two-GPU ({best['label']}) {ratio:.2f}x (a) (>= 1.8)"
        )
    for r in two:
        share = r["cached_share_turn2plus"]
        lines.append(
            f"{'PASS' if share >= 0.93 else 'FAIL'} {r['label']} cached share turn>=2 {100 * share:.1f}% (>= 93%)"
        )
        if r["ttft_p50_s"] and r["ttft_p90_s"] is not None:
            spread = r["ttft_p90_s"] / r["ttft_p50_s"]
            lines.append(f"{'PASS' if spread <= 2 else 'FAIL'} {r['label']} TTFT p90/p50 {spread:.2f} (<= 2)")
    base_row = next((r for r in results if r["policy"] == "none"), None)
    for r in results:
        if r["gpus"] == 1 and r["policy"] != "none" and base_row and base_row["generated_tok_s"]:
            ratio = r["generated_tok_s"] / base_row["generated_tok_s"]
            lines.append(
                f"INFO {r['label']}: {ratio:.2f}x (a) through the router, "
                f"cached share turn>=2 {100 * r['cached_share_turn2plus']:.1f}%"
            )
    return lines


def plot(path: Path) -> Path:
    """Bars per configuration: generated tokens/s, cached share from turn 2, TTFT p50 and p90."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = json.loads(path.read_text())
    labels = [r["label"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.5))
    axes[0].bar(labels, [r["generated_tok_s"] for r in rows], color="tab:blue")
    axes[0].set(title="generated tokens/s", ylabel="tokens/s")
    axes[1].bar(labels, [100 * r["cached_share_turn2plus"] for r in rows], color="tab:green")
    axes[1].axhline(93, color="grey", linestyle="--", linewidth=1)
    axes[1].set(title="prompt tokens cached (turn >= 2)", ylabel="%", ylim=(0, 105))
    x = range(len(rows))
    axes[2].bar([i - 0.2 for i in x], [r["ttft_p50_s"] or 0 for r in rows], width=0.4, label="p50")
    axes[2].bar([i + 0.2 for i in x], [r["ttft_p90_s"] or 0 for r in rows], width=0.4, label="p90")
    axes[2].set_xticks(list(x), labels)
    axes[2].set(title="time to first token (turn >= 2)", ylabel="seconds")
    axes[2].legend()
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(
        f"{path.stem}: {rows[0]['sessions']} sessions x {rows[0]['turns']} turns" if rows else path.stem
    )
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    return out


def main() -> None:
    if sys.argv[1:2] == ["--plot"]:  # the GPU machine has no matplotlib: chart its JSON here
        print(plot(Path(sys.argv[2])))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--worker-urls", nargs="+", help="running SGLang replicas, one per GPU")
    where.add_argument("--scripted", type=int, help="start this many scripted workers here instead")
    p.add_argument("--router-port", type=int, default=30100)
    p.add_argument("--tokenizer-path", help="the model folder, for the router's tokenizer")
    p.add_argument("--sessions", type=int, default=64)
    p.add_argument("--turns", type=int, default=6)
    p.add_argument("--gen-tokens", type=int, default=100)
    p.add_argument("--obs-words", type=int, default=150)
    p.add_argument("--system-words", type=int, default=1500)
    p.add_argument("--task-words", type=int, default=1000)
    p.add_argument("--reserve-tokens", type=int, default=4096)
    p.add_argument("--keep-reasoning", action="store_true")
    p.add_argument(
        "--router-check",
        action="store_true",
        help="one worker: alone, then behind the router with each policy (a one-GPU rehearsal)",
    )
    p.add_argument("--token-delay", type=float, default=0.002, help="scripted workers: seconds per token")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    log_dir = args.out.parent / f"{args.out.stem}-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"{'config':<20} {'gpus':>4} {'policy':<12} {'gen tok/s':>10} {'cached':>8} {'TTFT p50':>9} {'TTFT p90':>9} {'wall s':>8}"
    )
    started = time.perf_counter()
    if args.scripted:
        with scripted_workers(args.scripted, args.gen_tokens, args.token_delay) as urls:
            results = asyncio.run(run_all(args, urls, log_dir))
    else:
        results = asyncio.run(run_all(args, args.worker_urls, log_dir))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    for line in check_targets(results):
        print(line)
    try:
        chart = str(plot(args.out))
    except ImportError:
        chart = f"no chart (no matplotlib here: `python benchmarks/scale_out.py --plot {args.out}`)"
    print(f"wrote {args.out} and {chart} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
