"""What a request's prompt costs the event loop before it is sent, on a long transcript.

Before every request the turn counts its prompt against the model's context; the native client then sends
it. Until the count and the send shared one `PreparedPrompt` (`prompt_size.prepare_prompt`), each rendered
the transcript and, where it goes as ids (kept reasoning, `exact_tokens`), tokenized it: the baseline here
is that two-pass way, measured in the same run, against one `SGLangClient.prepare_prompt` counted and sent.

The transcript: a system prompt, a task, then `--turns` assistant turns (reasoning and a tool call, each
kept with its ids) each followed by a tool result, about `--tokens` tokens in all, of Python sources and
their docstrings; the request measured is the one after the last result. Each figure is the CPU time of
the thread (an agent's event loop) per request, median (and least) of `--repeats`, the two ways taken in
turns after one call each to warm the renderer's per-message caches, as an agent's earlier steps do. Where
the prompt goes as text both ways did the same work (the count tokenized it, the send did not): their
ratio shows the measurement's noise.

    .venv/bin/python benchmarks/prompt_prepare_bench.py [--turns 30] [--tokens 100000] [--repeats 30]

Prints a table and adds its rows to benchmarks/results/prompt_prepare.json.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import platform
import statistics
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from results_json import append_results  # noqa: E402

from qwq_agent.agent.chat_format import PromptOptions, render, render_segments  # noqa: E402
from qwq_agent.agent.clients import SGLangClient  # noqa: E402
from qwq_agent.agent.exact_tokens import TokenSpan, encode_segments  # noqa: E402
from qwq_agent.agent.messages import Message, ToolSpec  # noqa: E402
from qwq_agent.agent.tokenizer import get_tokenizer  # noqa: E402
from qwq_agent.testing.helpers import add, call  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "prompt_prepare.json"
# What a coding agent's turns hold: code and its docstrings (the standard library's own sources).
SOURCES = ("argparse.py", "difflib.py", "inspect.py", "pydoc.py", "typing.py", "textwrap.py")


def transcript(turns: int, tokens: int) -> list[Message]:
    """`turns` tool-using turns, kept with the ids the server generated, about `tokens` tokens in all:
    each turn's reasoning and the tool result after it are consecutive pieces of Python sources."""
    tok = get_tokenizer()
    lib = Path(sysconfig.get_paths()["stdlib"])
    source = "\n".join((lib / name).read_text(encoding="utf-8") for name in SOURCES)
    chars_per_token = len(source) / len(tok.encode(source))
    per_turn = int(tokens * chars_per_token / turns)
    if per_turn * turns > len(source):
        raise SystemExit(f"--tokens {tokens}: the sources hold about {len(source) / chars_per_token:.0f}")
    messages = [
        Message(role="system", content="You solve tasks with tools."),
        Message(role="user", content="Read the modules and report what they export."),
    ]
    for i in range(turns):
        piece = source[i * per_turn : (i + 1) * per_turn]
        cut = per_turn * 4 // 5  # four fifths reasoning, one fifth the tool's result
        raw = piece[:cut] + "\n</think>\n\n" + call("add", a=i, b=i + 1)
        messages.append(Message(role="assistant", raw=raw, token_ids=tok.encode(raw)))
        messages.append(Message(role="tool", name="add", content=piece[cut:]))
    return messages


def two_pass(messages: list[Message], specs: list[ToolSpec], options: PromptOptions) -> tuple[int, Any]:
    """The baseline: the count and the send as they were before they shared a prepared prompt."""
    tok = get_tokenizer()
    render_args: dict[str, Any] = {"profile": options.profile, "written_order": options.written_order}
    # prompt_size.rendered_prompt_tokens, then
    if options.exact_tokens and options.keep_reasoning:
        segments = render_segments(messages, specs, keep_reasoning=True, **render_args)
        counted = len(encode_segments(segments, tok))
    else:
        counted = tok.count(render(messages, specs, keep_reasoning=options.keep_reasoning, **render_args))
    # SGLangClient.stream: render_prompt and prompt_ids
    text = render(messages, specs, keep_reasoning=options.keep_reasoning, **render_args)
    ids = None
    if options.exact_tokens and options.keep_reasoning:
        segments = render_segments(messages, specs, keep_reasoning=True, **render_args)
        if any(isinstance(s, TokenSpan) for s in segments):
            ids = encode_segments(segments)
    return counted, ids if ids is not None else text


def one_pass(client: SGLangClient, messages: list[Message], specs: list[ToolSpec]) -> tuple[int, Any]:
    """Today: one prepared prompt, counted, then sent as it is."""
    prepared = client.prepare_prompt(messages, specs)
    counted = prepared.tokens
    assert counted is not None
    return counted, prepared.ids if prepared.ids is not None else prepared.text


def interleaved_ms(repeats: int, old: Callable[[], object], new: Callable[[], object]) -> dict[str, float]:
    """Median and least CPU times of `repeats` calls of each, in ms, taken in turns, after one call each
    to warm the caches. CPU time of this thread (the event loop's, in an agent): wall time would count
    whatever else a shared machine runs meanwhile."""
    old(), new()
    times: dict[str, list[float]] = {"old": [], "new": []}
    gc.collect()
    gc.disable()  # as timeit does: a collection would land on whichever call happens to trigger it
    try:
        for _ in range(repeats):
            for name, fn in (("old", old), ("new", new)):
                start = time.thread_time()
                fn()
                times[name].append((time.thread_time() - start) * 1000)
    finally:
        gc.enable()
    return {
        f"{name}_{stat}": round(f(ts), 2)
        for name, ts in times.items()
        for stat, f in (("median_ms", statistics.median), ("min_ms", min))
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    messages = transcript(args.turns, args.tokens)
    specs = [add.spec]
    modes = {
        "kept reasoning, sent as ids": {"keep_reasoning": True, "exact_tokens": True},
        "kept reasoning, sent as text": {"keep_reasoning": True, "exact_tokens": False},
        "reasoning dropped (text)": {"keep_reasoning": False},
    }
    rows = []
    table = Table(title=f"per-request prompt cost: {args.turns} turns ({args.repeats} requests each)")
    for col in ("prompt", "tokens", "two passes (before)", "one prepared prompt", "speed-up"):
        table.add_column(col)
    table.caption = "CPU time per request: median (least), the two ways taken in turns"
    for name, settings in modes.items():
        client = SGLangClient("http://127.0.0.1:9", **settings)
        options = client.prompt_options
        before, now = two_pass(messages, specs, options), one_pass(client, messages, specs)
        assert before == now, f"{name}: the prepared prompt differs from the two-pass one"
        timed = interleaved_ms(
            args.repeats,
            lambda: two_pass(messages, specs, options),  # noqa: B023 (called in this iteration only)
            lambda: one_pass(client, messages, specs),  # noqa: B023
        )
        row = {
            "date": datetime.date.today().isoformat(),
            "machine": platform.node(),
            "python": platform.python_version(),
            "mode": name,
            "turns": args.turns,
            "prompt_tokens": now[0],
            "sent_as": "ids" if isinstance(now[1], list) else "text",
            "two_pass_ms": timed["old_median_ms"],
            "two_pass_min_ms": timed["old_min_ms"],
            "one_pass_ms": timed["new_median_ms"],
            "one_pass_min_ms": timed["new_min_ms"],
            "speedup": round(timed["old_median_ms"] / timed["new_median_ms"], 2),
            "repeats": args.repeats,
        }
        rows.append(row)
        table.add_row(
            name,
            f"{now[0]:,}",
            f"{row['two_pass_ms']:.1f} ms ({row['two_pass_min_ms']:.1f})",
            f"{row['one_pass_ms']:.1f} ms ({row['one_pass_min_ms']:.1f})",
            f"{row['speedup']:.2f}x ({row['two_pass_min_ms'] / row['one_pass_min_ms']:.2f}x)",
        )
    Console().print(table)
    append_results(args.out, rows)
    print(f"added {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
