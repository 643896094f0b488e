"""Constrained vs unconstrained tool calls on a real SGLang server, all requests at once.

    python benchmarks/gpu_proof.py --url http://127.0.0.1:30000 --n 200 --out results/

On a GPU machine without a package index, run `scripts/prepare-gpu.sh` here first and carry `.device/`
as `benchmarks/gpu_agent_workload.sh` describes (it installs the wheels and starts the server).

The prompt is a QwQ conversation with two tools whose assistant turn has reached `<tool_call>`. Three sets
run concurrently against it:
  - unconstrained: generate until `</tool_call>`, as the plain loop does;
  - constrained (EBNF): `constrained_tool_call` with the grammar written by `qwq_agent.agent.constrained`;
  - constrained (json_schema): the same call under SGLang's `json_schema` constraint.
Every call's text is parsed and validated with jsonschema. With random weights (--load-format dummy) the
unconstrained calls are noise, which is the point: the constraint alone makes them well formed.
Writes `gpu_constrained.json` (counts, timings, samples) and `gpu_constrained.md` (a table).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from qwq_agent.agent.chat_format import render
from qwq_agent.agent.clients import SGLangClient
from qwq_agent.agent.clients.errors import ModelError
from qwq_agent.agent.constrained import constrained_tool_call, validate_tool_call
from qwq_agent.agent.messages import Message, ToolSpec
from qwq_agent.protocols import SamplingParams

TOOLS = [
    ToolSpec(
        name="read_file",
        description="Read a text file from the workspace",
        parameters={
            "type": "object",
            "required": ["path"],
            "properties": {
                "path": {"type": "string", "maxLength": 32},
                "offset": {"type": "integer", "minimum": 0, "maximum": 50},
            },
        },
    ),
    ToolSpec(
        name="add",
        description="Add two integers",
        parameters={
            "type": "object",
            "required": ["a", "b"],
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        },
    ),
    ToolSpec(
        name="set_mode",
        description="Switch the output mode",
        parameters={
            "type": "object",
            "required": ["mode"],
            "properties": {"mode": {"enum": ["json", "text", "table"]}, "verbose": {"type": "boolean"}},
        },
    ),
]


def build_prompt(i: int) -> str:
    messages = [
        Message(role="system", content="You are a careful agent. Call tools when they help."),
        Message(role="user", content=f"Task {i}: read notes.md, then add the two numbers in it."),
    ]
    return render(messages, TOOLS) + "I should read the file first.\n</think>\n\n<tool_call>"


async def one(kind: str, client: SGLangClient, i: int, max_new: int) -> dict[str, Any]:
    so_far = build_prompt(i)
    started = time.perf_counter()
    try:
        if kind == "unconstrained":
            done = await client.generate(
                so_far + "\n", SamplingParams(max_new_tokens=max_new, stop=["</tool_call>"])
            )
            text = done.text
        else:
            mode = "ebnf" if kind == "constrained_ebnf" else "json_schema"
            text = await constrained_tool_call(
                client, so_far, TOOLS, SamplingParams(max_new_tokens=max_new), mode=mode
            )
        error = validate_tool_call(text, TOOLS)
    except ModelError as exc:
        text, error = exc.partial_text, f"request failed: {exc}"
    return {
        "kind": kind,
        "ok": error is None,
        "error": error,
        "text": text,
        "seconds": time.perf_counter() - started,
    }


async def run(url: str, n: int, max_new: int, kinds: list[str]) -> dict[str, Any]:
    async with SGLangClient(url, read_timeout=300) as client:
        info = await client.server_info()
        started = time.perf_counter()
        results = await asyncio.gather(*[one(k, client, i, max_new) for i in range(n) for k in kinds])
        wall = time.perf_counter() - started
    summary: dict[str, Any] = {}
    for kind in kinds:
        rows = [r for r in results if r["kind"] == kind]
        parsed = sum(1 for r in rows if r["error"] is None or r["error"].startswith("invalid"))
        summary[kind] = {
            "n": len(rows),
            "parse_ok": parsed,
            "valid": sum(r["ok"] for r in rows),
            "failed_requests": sum(1 for r in rows if (r["error"] or "").startswith("request failed")),
            "samples": [r["text"][:160] for r in rows[:3]],
            "first_errors": [r["error"] for r in rows if r["error"]][:3],
        }
    return {
        "url": url,
        "n_per_kind": n,
        "max_new_tokens": max_new,
        "wall_seconds": wall,
        "server": {"max_total_num_tokens": info.max_total_num_tokens, "version": info.version},
        "sets": summary,
    }


def gpu_name() -> str:
    try:
        return subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:30000")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--kinds", default="unconstrained,constrained_ebnf,constrained_json_schema")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    report = asyncio.run(run(args.url, args.n, args.max_new_tokens, args.kinds.split(",")))
    report["device"] = gpu_name()
    report["host"] = platform.node()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_constrained.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"# Constrained tool calls on {report['device']}",
        "",
        f"{args.n} calls per set, all sets concurrently, max_new_tokens={args.max_new_tokens}, "
        f"wall time {report['wall_seconds']:.1f} s. Random weights (--load-format dummy).",
        "",
        "| set | calls | parse as JSON | valid (jsonschema) | failed requests |",
        "|---|---|---|---|---|",
    ]
    for kind, s in report["sets"].items():
        lines.append(f"| {kind} | {s['n']} | {s['parse_ok']} | {s['valid']} | {s['failed_requests']} |")
    (args.out / "gpu_constrained.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
