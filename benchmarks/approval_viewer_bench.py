"""Cost of the approval gate and of the trace viewer's endpoints, each beside a baseline from the same run.

    python benchmarks/approval_viewer_bench.py [--runs 20] [--traces 100] [--json PATH]

Approval: a scripted 20-step run (each step one tool call to a local `@tool`) with no policy, against
the same run under a 10-rule policy with argument regexes whose last rule asks an async approver that
allows. Viewer: that run's trace copied `--traces` times into a folder; `GET /api/runs` (summarizing
every trace), `GET /api/events?from=0` (one whole run) and a live poll with nothing new (`from=next`),
against reading the same trace file's bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from qwq_agent.agent.approval import ApprovalDecision, ApprovalPolicy, Rule
from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.testing.scripted_server import ScriptedModelServer
from qwq_agent.tools.base import tool
from qwq_agent.viewer import TraceViewer

STEPS = 20


@tool
def echo(text: str) -> str:
    """Echo the text."""
    return text


def turns() -> list[str]:
    call = '<tool_call>\n{{"name": "echo", "arguments": {{"text": "step {i}"}}}}\n</tool_call>'
    return [f"step {i}\n</think>\n\n" + call.format(i=i) for i in range(STEPS)] + ["done\n</think>\n\nok"]


POLICY = ApprovalPolicy(
    rules=[
        *[Rule(tool="echo", action="deny", arguments={"text": [rf"^forbidden {k}\b"]}) for k in range(9)],
        Rule(tool="echo", action="ask", arguments={"text": [r"^step \d+$"]}),
    ]
)


async def allow(request: object) -> ApprovalDecision:
    return ApprovalDecision.allow()


async def one_run(policy: ApprovalPolicy | None, trace: Path | None = None) -> float:
    async with ScriptedModelServer(turns()) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        config = AgentConfig(check_language=False, approval=policy)
        agent = Agent(client, [echo], config=config, approver=allow if policy else None, trace_path=trace)
        started = time.perf_counter()
        result = await agent.run("Echo twenty times.")
        elapsed = time.perf_counter() - started
    assert result.status == "completed", result.error
    return elapsed


def pct(values: list[float]) -> tuple[float, float]:
    values = sorted(values)
    return statistics.median(values), values[min(len(values) - 1, int(0.95 * len(values)))]


def fetch(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as r:
        r.read()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--traces", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows: dict[str, tuple[float, float]] = {}

    async def runs() -> None:
        plain, gated = [], []
        for _ in range(args.runs):  # interleaved, so machine load hits both alike
            plain.append(await one_run(None))
            gated.append(await one_run(POLICY))
        rows[f"{STEPS}-step run, no policy (ms)"] = tuple(1000 * v for v in pct(plain))  # type: ignore[assignment]
        rows[f"{STEPS}-step run, 10-rule policy + async approver (ms)"] = tuple(1000 * v for v in pct(gated))  # type: ignore[assignment]

    asyncio.run(runs())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        asyncio.run(one_run(POLICY, folder / "t0.jsonl"))
        for i in range(1, args.traces):
            shutil.copy(folder / "t0.jsonl", folder / f"t{i}.jsonl")
        size = (folder / "t0.jsonl").stat().st_size
        with TraceViewer(folder) as viewer:
            nxt = json.loads(urllib.request.urlopen(viewer.url + "api/events?file=t0.jsonl").read())["next"]
            timings = {
                f"GET /api/runs, {args.traces} traces (ms)": [
                    fetch(viewer.url + "api/runs") for _ in range(20)
                ],
                f"GET /api/events from=0, one {size // 1024} KiB trace (ms)": [
                    fetch(viewer.url + "api/events?file=t0.jsonl") for _ in range(50)
                ],
                "GET /api/events, live poll, nothing new (ms)": [
                    fetch(viewer.url + f"api/events?file=t0.jsonl&from={nxt}") for _ in range(50)
                ],
            }
            reads = []
            for _ in range(50):
                started = time.perf_counter()
                (folder / "t0.jsonl").read_bytes()
                reads.append(time.perf_counter() - started)
            timings["baseline: read the trace file (ms)"] = reads
        for name, values in timings.items():
            rows[name] = tuple(1000 * v for v in pct(values))  # type: ignore[assignment]
    width = max(map(len, rows))
    print(f"{'':{width}}  {'p50':>8}  {'p95':>8}")
    for name, (p50, p95) in rows.items():
        print(f"{name:{width}}  {p50:8.2f}  {p95:8.2f}")
    if args.json:
        args.json.write_text(
            json.dumps({k: {"p50_ms": v[0], "p95_ms": v[1]} for k, v in rows.items()}, indent=2)
        )


if __name__ == "__main__":
    main()
