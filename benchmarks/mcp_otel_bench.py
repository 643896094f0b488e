"""Cost of MCP tool calls and of span recording, each beside a baseline measured in the same run.

    python benchmarks/mcp_otel_bench.py [--calls 300] [--json PATH]

MCP: a round trip `add(a, b)` through `ToolRegistry.call` to the test server (tests/mcp_server.py) over
stdio and over streamable HTTP on 127.0.0.1, against the same function as a local `@tool`.
Spans: `SpanRecorder.handle` over the events of a scripted 20-step run (each step a model call and a
tool call), with the SDK's in-memory exporter, against writing the same events as JSON (`run --json`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from mcp_helpers import http_server, stdio_command

from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.messages import ToolCall
from qwq_agent.mcp import mcp_tools
from qwq_agent.testing.scripted_server import ScriptedModelServer
from qwq_agent.tools.base import tool
from qwq_agent.tools.registry import ToolRegistry


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


async def time_calls(registry: ToolRegistry, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        res = await registry.call(ToolCall(id="c", name="add", arguments={"a": i, "b": 1}))
        out.append(time.perf_counter() - t0)
        assert res.text == str(i + 1), res.text
    return out


def row(name: str, samples: list[float], unit: float = 1e3) -> dict:
    s = sorted(samples)
    return {
        "what": name,
        "n": len(s),
        "p50_ms": statistics.median(s) * unit,
        "p95_ms": s[int(0.95 * (len(s) - 1))] * unit,
    }


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = [row("local @tool (baseline)", await time_calls(ToolRegistry([add]), args.calls))]
    async with await mcp_tools(stdio_command("bench")) as tools:
        reg = ToolRegistry([t for t in tools if t.spec.name == "add"])
        await time_calls(reg, 5)  # warm-up
        rows.append(row("MCP over stdio", await time_calls(reg, args.calls)))
    with http_server("bench") as (url, _):
        async with await mcp_tools(url) as tools:
            reg = ToolRegistry([t for t in tools if t.spec.name == "add"])
            await time_calls(reg, 5)
            rows.append(row("MCP over streamable HTTP", await time_calls(reg, args.calls)))

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from qwq_agent.otel import SpanRecorder

    steps = 20
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    turns = [f"Step {i}.\n</think>\n\n{call}" for i in range(steps)] + ["Done.\n</think>\n\n3"]
    async with ScriptedModelServer(turns) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        agent = Agent(client, [add], config=AgentConfig(check_language=False))
        events = [ev async for ev in agent.stream("Add.")]
    reps = 50
    base, rec = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        for ev in events:
            ev.model_dump_json()
        base.append(time.perf_counter() - t0)
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        recorder = SpanRecorder(provider.get_tracer("bench"))
        t0 = time.perf_counter()
        for ev in events:
            recorder.handle(ev)
        rec.append(time.perf_counter() - t0)
        spans = len(exporter.get_finished_spans())
    rows.append(row(f"{len(events)} events of a {steps}-step run to JSON (baseline)", base))
    rows.append(row(f"record them: {spans} spans, in-memory exporter", rec))

    print(f"{'what':58}{'n':>6}{'p50 ms':>10}{'p95 ms':>10}")
    for r in rows:
        print(f"{r['what']:58}{r['n']:>6}{r['p50_ms']:>10.3f}{r['p95_ms']:>10.3f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
