"""What the answer-stability probe costs on a real server: extra tokens decoded, prefill the cache saves.

One greedy reasoning request is streamed twice on the same prompt: first alone (the baseline), then
with the probes the agent would send beside it (`AnswerProbe`, the same code and schedule the turn
uses once it has nudged: past `probe_min_reasoning_chars`, every `probe_every_chars`, one in flight
at a time; here from the start, as if the nudge came at `--min-chars`). Greedy
decoding makes both runs write the same reasoning, so the ratios compare like with like:

- extra decoded tokens: the probes' completion tokens / the main request's completion tokens;
- the probes' cached share: cached / prompt tokens over all probes (SGLang's radix cache; a probe's
  uncached part is roughly the reasoning written since the previous probe finished);
- uncached prefill per probe, against the main request's prompt + reasoning at that point;
- the main request's wall time with probes / without (probes share the GPU with it).

    python benchmarks/probe_cost.py --url http://127.0.0.1:30000      # a real SGLang server
    python benchmarks/probe_cost.py --scripted                        # the scripted server (plumbing)

Against the scripted server the figures only show that the plumbing works: it streams as fast as it
can and counts a request's whole output as cached from the moment it starts. Prints a table and writes
`benchmarks/results/probe_cost.json` (or `probe_cost-scripted.json`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.loops.config import LoopDetectorConfig
from qwq_agent.agent.loops.probe import AnswerProbe, ProbeResult
from qwq_agent.agent.messages import Message
from qwq_agent.protocols import Completion, SamplingParams, TextDelta

ROOT = Path(__file__).resolve().parent.parent
QUESTION = (
    "The expression 2 * 3 * 4 * 5 + 1 equals 121. How many different values can be obtained by "
    "inserting parentheses (without rearranging the terms)? Reason it out by hand."
)
SCRIPTED_REASONING = ROOT / "tests" / "data" / "reasoning" / "qwq_parentheses_loop.txt"


async def stream_main(
    client: SGLangClient, prompt: str, params: SamplingParams, probe: AnswerProbe | None
) -> tuple[Completion, float]:
    """Stream the main request, launching probes on the reasoning as the turn does; return its
    completion and wall time (probes still in flight are awaited afterwards, not cancelled)."""
    text = ""
    done: Completion | None = None
    started = time.perf_counter()
    async for event in client.generate_stream(prompt, params):
        if isinstance(event, TextDelta):
            text += event.text
            if probe is not None and "</think>" not in text:
                probe.maybe_launch(lambda suffix, seen=text: prompt + seen + suffix, len(text))
                probe.collect()
        elif isinstance(event, Completion):
            done = event
    wall = time.perf_counter() - started
    assert done is not None
    return done, wall


async def measure(url: str, config: LoopDetectorConfig, max_new_tokens: int) -> dict[str, Any]:
    async with SGLangClient(url, retry=NO_RETRY, read_timeout=900) as client:
        prompt = client.render_prompt([Message(role="user", content=QUESTION)], [])
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0, top_k=-1)
        # Warm the prompt into the cache so both runs start alike; then the baseline, then with probes.
        await client.generate(prompt, params.model_copy(update={"max_new_tokens": 1}))
        base, base_wall = await stream_main(client, prompt, params, None)
        probe = AnswerProbe(client, config)
        main, main_wall = await stream_main(client, prompt, params, probe)
        if probe.pending:
            await asyncio.gather(*probe.pending)
        probe.collect()
    results = probe.results
    return summarise(base, base_wall, main, main_wall, results, config)


def summarise(
    base: Completion,
    base_wall: float,
    main: Completion,
    main_wall: float,
    results: list[ProbeResult],
    config: LoopDetectorConfig,
) -> dict[str, Any]:
    decoded = sum(r.completion_tokens for r in results)
    prompt = sum(r.prompt_tokens for r in results)
    cached = sum(r.cached_tokens for r in results)
    ok = [r for r in results if r.error is None]
    return {
        "config": {
            "probe_min_reasoning_chars": config.probe_min_reasoning_chars,
            "probe_every_chars": config.probe_every_chars,
            "probe_max_new_tokens": config.probe_max_new_tokens,
        },
        "baseline": {
            "completion_tokens": base.usage.completion_tokens,
            "prompt_tokens": base.usage.prompt_tokens,
            "wall_s": round(base_wall, 3),
            "reasoning_chars": len(base.text.split("</think>")[0]),
        },
        "with_probes": {
            "completion_tokens": main.usage.completion_tokens,
            "wall_s": round(main_wall, 3),
            "same_output_as_baseline": main.text == base.text,
        },
        "probes": len(results),
        "probe_errors": len(results) - len(ok),
        "probe_decoded_tokens": decoded,
        "extra_decoded_ratio": round(decoded / max(1, main.usage.completion_tokens), 4),
        "probe_prompt_tokens": prompt,
        "probe_cached_tokens": cached,
        "probe_cached_share": round(cached / prompt, 4) if prompt else None,
        "probe_uncached_tokens_median": statistics.median([r.prompt_tokens - r.cached_tokens for r in ok])
        if ok
        else None,
        "probe_latency_s_median": round(statistics.median([r.seconds for r in ok]), 4) if ok else None,
        "main_wall_ratio_with_probes": round(main_wall / base_wall, 3) if base_wall else None,
        "answers": [r.answer for r in results],
        "per_probe": [
            {
                "at_chars": r.at_chars,
                "prompt_tokens": r.prompt_tokens,
                "cached_tokens": r.cached_tokens,
                "completion_tokens": r.completion_tokens,
                "seconds": round(r.seconds, 4),
                "answer": r.answer,
                "error": r.error,
            }
            for r in results
        ],
    }


def show(summary: dict[str, Any], where: str) -> None:
    table = Table(title=f"answer-stability probe cost ({where})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("main request alone: completion tokens", summary["baseline"]["completion_tokens"]),
        ("main request alone: wall s", summary["baseline"]["wall_s"]),
        ("main request with probes: wall s", summary["with_probes"]["wall_s"]),
        ("  ratio (with / without)", summary["main_wall_ratio_with_probes"]),
        ("  same output as alone", summary["with_probes"]["same_output_as_baseline"]),
        ("probes (errors)", f"{summary['probes']} ({summary['probe_errors']})"),
        ("probe tokens decoded", summary["probe_decoded_tokens"]),
        ("  extra decoded / main decoded", summary["extra_decoded_ratio"]),
        (
            "probe prompt tokens (cached)",
            f"{summary['probe_prompt_tokens']} ({summary['probe_cached_tokens']})",
        ),
        ("  cached share", summary["probe_cached_share"]),
        ("  uncached prefill per probe, median", summary["probe_uncached_tokens_median"]),
        ("probe latency s, median", summary["probe_latency_s_median"]),
        ("answers", " | ".join(summary["answers"])),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    Console(width=120).print(table)


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    config = LoopDetectorConfig(
        probe_enabled=True,
        probe_min_reasoning_chars=args.min_chars,
        probe_every_chars=args.every_chars,
    )
    async with AsyncExitStack() as stack:
        url = args.url
        if args.scripted:
            from qwq_agent.testing.probes import probe_aware
            from qwq_agent.testing.scripted_server import ScriptedModelServer

            reasoning = SCRIPTED_REASONING.read_text(encoding="utf-8")
            server = await stack.enter_async_context(
                ScriptedModelServer(
                    probe_aware([reasoning], " 126\n\nThe values are"), when_exhausted="repeat"
                )
            )
            url = server.url
        return await measure(url, config, args.max_new_tokens)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="an SGLang server's base URL (native API)")
    where.add_argument("--scripted", action="store_true", help="start the scripted server here")
    default = LoopDetectorConfig()
    ap.add_argument("--max-new-tokens", type=int, default=4096, help="length of the main reasoning request")
    ap.add_argument("--min-chars", type=int, default=default.probe_min_reasoning_chars)
    ap.add_argument("--every-chars", type=int, default=default.probe_every_chars)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.scripted and args.min_chars == default.probe_min_reasoning_chars:
        args.min_chars = 1000  # the scripted reasoning is ~7,600 characters: probe it a few times
    summary = asyncio.run(amain(args))
    summary["server"] = "scripted" if args.scripted else args.url
    where_name = "scripted server: plumbing only" if args.scripted else args.url
    show(summary, where_name)
    out = args.out or ROOT / "benchmarks" / "results" / (
        "probe_cost-scripted.json" if args.scripted else "probe_cost.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
