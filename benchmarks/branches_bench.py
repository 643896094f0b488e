"""Parallel branches vs independent runs: prefill, first-turn cache share, wall time, sandbox restore.

Both configurations run the same task `--branches` times at once (default 8), with a ~3k-token shared
prefix (system prompt + task) and a workspace of `--workspace-mb` MB:

- `branches`: one parent sandbox holding the workspace; `Agent.explore` snapshots it, restores the
  snapshot into one sandbox per branch, prefills the shared prefix once, then sends the branches at once.
- `independent`: N separate runs, each starting its own sandbox and uploading the workspace, sent at
  once with no shared-prefix warm-up.

The model's text is treated as noise (random weights): each turn is `--gen-tokens` generated tokens of
reasoning (`ignore_eos`), closed by a scripted `</think>` and a scripted tool call (turn 1: a shell
command over the workspace) or answer (turn 2), like `agent_workload.py`. Prefill is read from the
server's `cached_tokens`.

    # here: the scripted server (started in-process), no GPU
    python benchmarks/branches_bench.py --scripted --out benchmarks/results/branches-$(date +%F).json
    # on the GPU: SGLang with random weights (e.g. --load-format dummy), cache flushed per configuration
    python benchmarks/branches_bench.py --url http://127.0.0.1:30000 --flush-cache \
        --label-suffix h200 --out benchmarks/results/branches-$(date +%F).json

Prints a table and appends one JSON object per configuration to --out (`label`, `branches`,
`prefill_tokens`, `first_turn_cached_share`, `wall_s`, `restore_p50_s`, `workspace_mb`, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from results_json import append_results

from qwq_agent.agent.budgets import Budget
from qwq_agent.agent.events import Event, ModelCall
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.loop_detector import LoopDetectorConfig
from qwq_agent.agent.messages import Message, ToolSpec
from qwq_agent.protocols import Completion, ModelEvent, SamplingParams, TextDelta

WORDS = (
    "alpha beta gamma delta kernel cache prefix token radix tree schedule batch decode prefill memory "
    "tensor layer head query key value sandbox python shell editor search index result error retry"
).split()


def words(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n))


class ScriptedCalls:
    """A real model whose generated tokens are the reasoning; a scripted tool call or answer closes each turn."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = f"scripted({getattr(inner, 'name', 'model')})"

    def render_prompt(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> str:
        return self.inner.render_prompt(messages, tools)

    async def generate(self, prompt: str, params: SamplingParams | None = None) -> Completion:
        return await self.inner.generate(prompt, params)

    async def stream(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        params: SamplingParams,
        *,
        prefix: str = "",
    ) -> AsyncIterator[ModelEvent]:
        first = not any(m.role == "assistant" for m in messages)
        cmd = "cd /workspace && echo branch-$RANDOM >> log && ls -l data.bin | wc -c"
        call = json.dumps({"name": "shell", "arguments": {"command": cmd}})
        suffix = f"\n</think>\n\n<tool_call>\n{call}\n</tool_call>" if first else "\n</think>\n\nDone."
        async for ev in self.inner.stream(messages, tools, params, prefix=prefix):
            if isinstance(ev, Completion):
                yield TextDelta(text=suffix)
                yield ev.model_copy(update={"text": ev.text + suffix})
            else:
                yield ev

    async def aclose(self) -> None:
        pass


def agent_config(args: argparse.Namespace) -> AgentConfig:
    return AgentConfig(
        system_prompt="You are a coding agent. Work in steps: think, call one tool, read its result. "
        + words(args.system_words, 0),
        sampling=SamplingParams(max_new_tokens=args.gen_tokens, ignore_eos=True, temperature=0.8),
        budget=Budget(max_steps=4, max_wall_s=None, max_tool_s=None),
        loop_detector=LoopDetectorConfig(min_reasoning_chars=10**9),
        check_language=False,
        context_length=32768,
    )


def task(args: argparse.Namespace) -> str:
    return "Make the tests in /workspace pass. Notes: " + words(args.task_words, 1)


def p50(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def first_turns(calls: dict[int, list[ModelCall]]) -> tuple[int, int]:
    prompt = sum(c[0].usage.prompt_tokens for c in calls.values() if c)
    cached = sum(c[0].usage.cached_tokens for c in calls.values() if c)
    return prompt, cached


def prefill(calls: dict[int, list[ModelCall]]) -> int:
    return sum(c.usage.prompt_tokens - c.usage.cached_tokens for cs in calls.values() for c in cs)


async def run_branches(
    args: argparse.Namespace, model: Any, tools: list, sandbox_config: Any, ws: Path
) -> dict:
    from qwq_agent.sandbox import DockerSandbox

    calls: dict[int, list[ModelCall]] = {i: [] for i in range(args.branches)}

    def on_event(index: int, ev: Event) -> None:
        if isinstance(ev, ModelCall):
            calls[index].append(ev)

    async with AsyncExitStack() as stack:
        parent_sb = None
        if sandbox_config is not None:
            parent_sb = await stack.enter_async_context(DockerSandbox.create(sandbox_config))
            await parent_sb.upload(ws, "/workspace", contents=True)
        agent = Agent(model, tools, sandbox=parent_sb, config=agent_config(args))
        started = time.perf_counter()
        result = await agent.explore(task(args), n=args.branches, select="first", on_event=on_event)
        wall = time.perf_counter() - started
        if parent_sb is None:  # --no-sandbox: the model side only
            await result.aclose()
            return _branches_row(args, result, calls, wall, [])
        # One restore at a time into an idle, already started sandbox (the winner's), for comparison
        # with the branches' restores, which run at once while their sandboxes are still starting.
        snap = await parent_sb.snapshot()
        warm_restores = []
        for _ in range(5):
            t0 = time.perf_counter()
            await result.sandbox.restore(snap)
            warm_restores.append(time.perf_counter() - t0)
        await result.aclose()
    return _branches_row(args, result, calls, wall, warm_restores)


def _branches_row(
    args: argparse.Namespace, result: Any, calls: dict[int, list[ModelCall]], wall: float, warm_restores: list
) -> dict:
    warm = result.warmup
    prompt, cached = first_turns(calls)
    return {
        "label": f"branches{args.label_suffix}",
        "branches": args.branches,
        "statuses": [b.status for b in result.branches],
        "prefill_tokens": prefill(calls) + (warm.prompt_tokens - warm.cached_tokens if warm else 0),
        "warmup_prefill_tokens": warm.prompt_tokens - warm.cached_tokens if warm else 0,
        "first_turn_prompt_tokens": prompt,
        "first_turn_cached_share": cached / prompt if prompt else 0.0,
        "wall_s": wall,
        "restore_p50_s": p50([b.restore_s for b in result.branches if b.restore_s is not None]),
        "sandbox_ready_p50_s": p50([b.sandbox_s for b in result.branches if b.sandbox_s is not None]),
        "restore_warm_one_at_a_time_p50_s": p50(warm_restores),
        "workspace_mb": args.workspace_mb,
    }


async def run_independent(
    args: argparse.Namespace, model: Any, tools: list, sandbox_config: Any, ws: Path
) -> dict:
    from qwq_agent.sandbox import DockerSandbox

    calls: dict[int, list[ModelCall]] = {i: [] for i in range(args.branches)}
    ready: list[float] = []
    statuses: list[str] = []
    base = agent_config(args)

    async def one(i: int) -> None:
        async with AsyncExitStack() as stack:
            sb = None
            if sandbox_config is not None:
                t0 = time.perf_counter()
                sb = await stack.enter_async_context(DockerSandbox.create(sandbox_config))
                await sb.upload(ws, "/workspace", contents=True)
                ready.append(time.perf_counter() - t0)
            sampling = base.sampling.model_copy(update={"seed": 1000 + i})
            agent = Agent(model, tools, sandbox=sb, config=base.model_copy(update={"sampling": sampling}))
            async for ev in agent.stream(task(args)):
                if isinstance(ev, ModelCall):
                    calls[i].append(ev)
            statuses.append(agent.result.status if agent.result else "none")

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(args.branches)))
    wall = time.perf_counter() - started
    prompt, cached = first_turns(calls)
    return {
        "label": f"independent{args.label_suffix}",
        "branches": args.branches,
        "statuses": statuses,
        "prefill_tokens": prefill(calls),
        "warmup_prefill_tokens": 0,
        "first_turn_prompt_tokens": prompt,
        "first_turn_cached_share": cached / prompt if prompt else 0.0,
        "wall_s": wall,
        "restore_p50_s": None,
        "sandbox_ready_p50_s": p50(ready),
        "restore_warm_one_at_a_time_p50_s": None,
        "workspace_mb": args.workspace_mb,
    }


async def flush(url: str) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        r = await http.post("/flush_cache")
        print(f"flush_cache: {r.status_code}", flush=True)


async def amain(args: argparse.Namespace) -> list[dict]:
    from qwq_agent.agent.clients import SGLangClient
    from qwq_agent.sandbox import SandboxConfig
    from qwq_agent.sandbox.image import ensure_image
    from qwq_agent.testing.scripted_server import ScriptedModelServer
    from qwq_agent.tools.catalog import build_tools

    if args.no_sandbox:
        # A machine without Docker (the lent GPU): the same scripted call, answered on the host, so only
        # the model side (prefill, cached share, wall) is measured; the sandbox side is measured here.
        from qwq_agent.tools.base import tool

        @tool(name="shell")
        def fake_shell(command: str) -> str:
            """Run a command (answered on the host with a fixed listing: --no-sandbox)."""
            return "data.bin\n" + "ok " * 40

        sandbox_config, tools = None, [fake_shell]
    else:
        sandbox_config = SandboxConfig(image=ensure_image(progress=lambda *a, **k: None))
        tools = build_tools(["shell"])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        (ws / "data.bin").write_bytes(os.urandom(int(args.workspace_mb * 1024 * 1024)))
        for name, runner in (("independent", run_independent), ("branches", run_branches)):
            async with AsyncExitStack() as stack:
                url = args.url
                if args.scripted:  # a fresh server per configuration: an empty (simulated) cache each
                    filler = " ".join(["noise"] * args.gen_tokens)
                    server = await stack.enter_async_context(
                        ScriptedModelServer(lambda req, text=filler: text)
                    )
                    url = server.url
                elif args.flush_cache:
                    await flush(url)
                client = await stack.enter_async_context(SGLangClient(url, read_timeout=1800))
                print(f"running {name} x{args.branches} ...", flush=True)
                row = await runner(args, ScriptedCalls(client), tools, sandbox_config, ws)
                row["server"] = "scripted (in-process, simulated radix cache)" if args.scripted else url
                row["cpus"] = os.cpu_count()
                results.append(row)
    return results


def print_table(results: list[dict]) -> None:
    print(
        f"\n{'label':<22} {'n':>3} {'prefill tok':>11} {'1st-turn cached':>15} {'wall s':>7} {'restore p50':>11} {'ready p50':>9}"
    )
    for r in results:
        rest = f"{r['restore_p50_s']:.3f}" if r["restore_p50_s"] is not None else "-"
        ready = f"{r['sandbox_ready_p50_s']:.3f}" if r["sandbox_ready_p50_s"] is not None else "-"
        one = r["restore_warm_one_at_a_time_p50_s"]
        print(
            f"{r['label']:<22} {r['branches']:>3} {r['prefill_tokens']:>11} "
            f"{100 * r['first_turn_cached_share']:>14.1f}% {r['wall_s']:>7.2f} {rest:>11} {ready:>9} "
            f"{f'{one:.3f}' if one is not None else '-':>23}"
        )
    base, br = results[0], results[1]
    if br["prefill_tokens"]:
        print(f"prefill ratio independent/branches: {base['prefill_tokens'] / br['prefill_tokens']:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--url", help="an SGLang server (random weights are fine: the tool calls are scripted)"
    )
    where.add_argument("--scripted", action="store_true", help="start the scripted model server in-process")
    p.add_argument("--flush-cache", action="store_true", help="POST /flush_cache before each configuration")
    p.add_argument("--branches", type=int, default=8)
    p.add_argument("--gen-tokens", type=int, default=64, help="generated (noise) tokens per turn")
    p.add_argument("--system-words", type=int, default=1850)
    p.add_argument("--task-words", type=int, default=700)
    p.add_argument("--workspace-mb", type=float, default=10.0)
    p.add_argument(
        "--no-sandbox",
        action="store_true",
        help="no Docker here: answer the scripted tool call on the host and measure the model side only",
    )
    p.add_argument("--label-suffix", default="", help="appended to the labels (e.g. -h200)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if args.label_suffix and not args.label_suffix.startswith("-"):
        args.label_suffix = "-" + args.label_suffix
    results = asyncio.run(amain(args))
    print_table(results)
    append_results(args.out, results)


if __name__ == "__main__":
    main()
