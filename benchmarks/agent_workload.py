"""Agent workload on a real SGLang server (or transformers), driven through qwq-agent's own loop.

Random weights write random tokens, so each session follows a script: a shared system prompt with the
tool preamble, a task, then T turns. Each turn is the model's real generated tokens (a fixed count,
`ignore_eos`), closed by a scripted `</think>` and a tool call, answered by a scripted observation of
fixed length. The prompt of turn N+1 is what the loop really renders, so the cache behaviour measured
is the loop's own.

    python benchmarks/agent_workload.py --url http://127.0.0.1:30000 --label radix-lpm-drop \
        --sessions 8 --turns 6 --out benchmarks/results/x.json
    python benchmarks/agent_workload.py --transformers MODEL_DIR --sessions 1 --turns 3 ...

Prints a table and appends one configuration's JSON to --out.

On a GPU machine without a package index, run `scripts/prepare-gpu.sh` here first and carry `.device/`
as `benchmarks/gpu_agent_workload.sh` describes (it installs the wheels and starts the server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from results_json import append_results

from qwq_agent.agent.admission import KVAdmission
from qwq_agent.agent.budgets import Budget
from qwq_agent.agent.chat_format import render_segments
from qwq_agent.agent.events import ModelCall
from qwq_agent.agent.exact_tokens import encode_segments
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.loop_detector import LoopDetectorConfig
from qwq_agent.agent.messages import Message, ToolSpec
from qwq_agent.protocols import Completion, ModelEvent, SamplingParams, TextDelta, ToolOutput
from qwq_agent.testing._tokens import common_prefix_len

WORDS = (
    "alpha beta gamma delta kernel cache prefix token radix tree schedule batch decode prefill memory "
    "tensor layer head query key value sandbox python shell editor search index result error retry"
).split()


def system_prompt(words: int) -> str:
    """A long shared system prompt, like an agent's instructions and conventions."""
    return (
        "You are a research agent. You work in steps: think, call one tool, read its result, and continue "
        "until the task is solved. " + " ".join(random.Random(0).choice(WORDS) for _ in range(words))
    )


def task_text(session: int, words: int) -> str:
    """A per-session task carrying its own material (a document to work on)."""
    rng = random.Random(10_000 + session)
    return f"Task {session}: summarise the records of this session. Material: " + " ".join(
        rng.choice(WORDS) for _ in range(words)
    )


def observation(session: int, turn: int, words: int) -> str:
    rng = random.Random(session * 1000 + turn)
    return " ".join(rng.choice(WORDS) for _ in range(words))


class LookupTool:
    """A tool whose result is scripted text of a fixed length (about `words` * 1.3 tokens)."""

    uses_sandbox = False

    def __init__(self, words: int) -> None:
        self.words = words

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(
            name="lookup",
            description="Look up a record by session and turn.",
            parameters={
                "type": "object",
                "properties": {"session": {"type": "integer"}, "turn": {"type": "integer"}},
                "required": ["session", "turn"],
            },
        )

    async def __call__(self, arguments: dict, context: object) -> ToolOutput:
        return ToolOutput(text=observation(arguments["session"], arguments["turn"], self.words))


class ScriptedTurns:
    """Wraps a real model: its generated tokens are the reasoning, a scripted call or answer closes it.

    It also records, per request, what is new to the server (`new_tokens`): the prompt in the form that
    splices every kept turn's server ids (`render_segments`, whatever the client sends), minus its longest
    common prefix with the previous prompt in that form followed by the ids the server generated. With
    reasoning kept that is the scripted suffix, the template's markup and the observation; with it dropped,
    the re-rendered turn as well. Uncached tokens above it are tokens the server prefilled again.
    """

    def __init__(self, inner: object, session: int, turns: int) -> None:
        self.inner = inner
        self.session = session
        self.turns = turns
        self.name = f"scripted({getattr(inner, 'name', 'model')})"
        self.new_tokens: list[int] = []
        self._held: list[int] | None = None  # the server's context after the last request, in ids

    async def stream(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        params: SamplingParams,
        *,
        prefix: str = "",
    ) -> AsyncIterator[ModelEvent]:
        turn = sum(m.role == "assistant" for m in messages) + 1
        keep = bool(getattr(self.inner, "keep_reasoning", False))
        form = encode_segments([*render_segments(messages, tools, keep_reasoning=keep), prefix])
        held = self._held or []
        self.new_tokens.append(len(form) - common_prefix_len(form, held))
        async for ev in self.inner.stream(messages, tools, params, prefix=prefix):  # type: ignore[attr-defined]
            if isinstance(ev, Completion):
                self._held = form + list(ev.output_ids)
                if turn < self.turns:
                    args = json.dumps({"session": self.session, "turn": turn})
                    suffix = (
                        f'\n</think>\n\n<tool_call>\n{{"name": "lookup", "arguments": {args}}}\n</tool_call>'
                    )
                else:
                    suffix = "\n</think>\n\nDone."
                yield TextDelta(text=suffix)
                yield ev.model_copy(update={"text": ev.text + suffix})
            else:
                yield ev

    async def aclose(self) -> None:
        pass


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


async def run_config(args: argparse.Namespace, model_factory, capacity: int | None) -> dict:
    admission = None
    if args.admission and capacity:
        admission = KVAdmission(capacity, headroom=0.95)
    reserve = args.reserve_tokens
    config = AgentConfig(
        system_prompt=system_prompt(args.system_words),
        sampling=SamplingParams(max_new_tokens=args.gen_tokens, ignore_eos=True),
        budget=Budget(max_steps=args.turns + 2, max_wall_s=None, max_tool_s=None),
        loop_detector=LoopDetectorConfig(min_reasoning_chars=10**9),
        check_language=False,
        kv_reservation_tokens=reserve,
    )
    per_turn: dict[int, list[dict]] = defaultdict(list)
    statuses: list[str] = []
    waits: list[float] = []

    new_by_step: dict[int, list[int]] = defaultdict(list)

    async def session(i: int) -> None:
        model = ScriptedTurns(model_factory(), i, args.turns)
        agent = Agent(model, [LookupTool(args.obs_words)], config=config, admission=admission)
        asked = time.perf_counter()
        first = True
        async for ev in agent.stream(task_text(i, args.task_words)):
            if isinstance(ev, ModelCall):
                u = ev.usage
                if first:
                    waits.append(time.perf_counter() - asked - (u.latency_s or 0.0))
                    first = False
                per_turn[ev.step].append(
                    {
                        "prompt": u.prompt_tokens,
                        "cached": u.cached_tokens,
                        "gen": u.completion_tokens,
                        "ttft": u.ttft_s,
                    }
                )
        statuses.append(agent.result.status if agent.result else "none")
        for step, new in enumerate(model.new_tokens, start=1):
            new_by_step[step].append(new)

    started = time.perf_counter()
    await asyncio.gather(*(session(i) for i in range(args.sessions)))
    wall = time.perf_counter() - started

    turns = []
    all_ttft_later: list[float] = []
    gen_total = 0
    for step in sorted(per_turn):
        rows = per_turn[step]
        prompt = sum(r["prompt"] for r in rows)
        cached = sum(r["cached"] for r in rows)
        ttfts = [r["ttft"] for r in rows if r["ttft"] is not None]
        gen_total += sum(r["gen"] for r in rows)
        if step >= 2:
            all_ttft_later.extend(ttfts)
        turns.append(
            {
                "turn": step,
                "requests": len(rows),
                "prompt_tokens_mean": prompt / len(rows),
                "cached_share": cached / prompt if prompt else 0.0,
                "uncached_tokens_mean": (prompt - cached) / len(rows),
                "new_tokens_mean": sum(new_by_step[step]) / len(new_by_step[step])
                if new_by_step[step]
                else None,
                "ttft_p50_s": pct(ttfts, 0.5),
                "ttft_p90_s": pct(ttfts, 0.9),
            }
        )
    later = [t for t in turns if t["turn"] >= 2]
    later_prompt = sum(t["prompt_tokens_mean"] * t["requests"] for t in later)
    later_cached = sum(t["cached_share"] * t["prompt_tokens_mean"] * t["requests"] for t in later)
    return {
        "label": args.label,
        "keep_reasoning": args.keep_reasoning,
        "exact_tokens": args.keep_reasoning and not args.text_prompts,
        # Turns 2.. (turn 1 has no earlier context of its own); means over sessions.
        "uncached_per_turn": [t["uncached_tokens_mean"] for t in later],
        "new_tokens_per_turn": [t["new_tokens_mean"] for t in later],
        "sessions": args.sessions,
        "turns": args.turns,
        "gen_tokens_per_turn": args.gen_tokens,
        "obs_words": args.obs_words,
        "system_words": args.system_words,
        "task_words": args.task_words,
        "admission": bool(admission),
        "kv_capacity_tokens": capacity,
        "statuses": {s: statuses.count(s) for s in set(statuses)},
        "wall_s": wall,
        "generated_tokens": gen_total,
        "gen_tokens_per_s": gen_total / wall if wall else 0.0,
        "cached_share_turn2plus": later_cached / later_prompt if later_prompt else 0.0,
        "ttft_turn2plus_p50_s": pct(all_ttft_later, 0.5),
        "ttft_turn2plus_p90_s": pct(all_ttft_later, 0.9),
        "admission_wait_p50_s": pct(waits, 0.5),
        "admission_wait_max_s": max(waits) if waits else None,
        "per_turn": turns,
    }


def print_table(result: dict) -> None:
    print(
        f"\n== {result['label']}: {result['sessions']} sessions x {result['turns']} turns, "
        f"admission={'on' if result['admission'] else 'off'}, statuses={result['statuses']}"
    )
    print(
        f"{'turn':>4} {'prompt tok':>10} {'cached':>7} {'uncached':>8} {'new':>6} {'TTFT p50':>9} {'TTFT p90':>9}"
    )
    for t in result["per_turn"]:
        p50 = f"{t['ttft_p50_s']:.3f}" if t["ttft_p50_s"] is not None else "-"
        p90 = f"{t['ttft_p90_s']:.3f}" if t["ttft_p90_s"] is not None else "-"
        new = f"{t['new_tokens_mean']:.1f}" if t.get("new_tokens_mean") is not None else "-"
        print(
            f"{t['turn']:>4} {t['prompt_tokens_mean']:>10.0f} {100 * t['cached_share']:>6.1f}% "
            f"{t['uncached_tokens_mean']:>8.1f} {new:>6} {p50:>9} {p90:>9}"
        )
    print(
        f"wall {result['wall_s']:.1f} s, {result['gen_tokens_per_s']:.1f} generated tok/s, cached share "
        f"(turn >= 2) {100 * result['cached_share_turn2plus']:.1f}%, TTFT p50/p90 (turn >= 2) "
        f"{result['ttft_turn2plus_p50_s']} / {result['ttft_turn2plus_p90_s']}"
    )


async def amain(args: argparse.Namespace) -> dict:
    capacity = None
    if args.transformers:
        from transformers_model import TransformersModel

        shared = TransformersModel(args.transformers)
        factory = lambda: shared  # noqa: E731
    else:
        from qwq_agent.agent.clients import SGLangClient

        client = SGLangClient(
            args.url,
            keep_reasoning=args.keep_reasoning,
            exact_tokens=not args.text_prompts,
            read_timeout=1800,
        )
        # Each configuration starts from an empty cache, so none inherits another's prefixes.
        async with httpx.AsyncClient(base_url=args.url, timeout=60) as http:
            flushed = await http.post("/flush_cache")
            print(f"flush_cache: {flushed.status_code}", flush=True)
        info = await client.server_info()
        capacity = info.max_total_num_tokens
        factory = lambda: client  # noqa: E731
    result = await run_config(args, factory, capacity)
    result["backend"] = "transformers" if args.transformers else "sglang"
    result["server_flags"] = args.server_flags
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:30000")
    p.add_argument("--transformers", help="model dir: run the transformers batch-1 baseline instead")
    p.add_argument("--label", required=True)
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--turns", type=int, default=6)
    p.add_argument("--gen-tokens", type=int, default=200)
    p.add_argument("--obs-words", type=int, default=150)
    p.add_argument("--system-words", type=int, default=1500)
    p.add_argument("--task-words", type=int, default=1000)
    p.add_argument("--keep-reasoning", action="store_true")
    p.add_argument(
        "--text-prompts",
        action="store_true",
        help="send kept turns as text (re-tokenized) instead of the ids the server generated",
    )
    p.add_argument("--admission", action="store_true")
    p.add_argument("--reserve-tokens", type=int, default=4096)
    p.add_argument("--server-flags", default="")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    result = asyncio.run(amain(args))
    print_table(result)
    append_results(args.out, [result])


if __name__ == "__main__":
    main()
