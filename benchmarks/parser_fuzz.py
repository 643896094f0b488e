"""Fuzz the QwQ output parser: no exception on any input, same result under any chunking.

Three families of inputs: random text, mutations of valid outputs, and adversarial tag soup. Every
input is parsed whole; a sample is also fed in random chunks and one character at a time, and the
merged events must be identical. Prints a table and writes benchmarks/results/parser_fuzz.json.

    .venv/bin/python benchmarks/parser_fuzz.py [--n 100000] [--seed 0] [--sample-every 10]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
import traceback
from pathlib import Path

from qwq_agent.agent.parser import StreamParser, merge_deltas

RESULTS = Path(__file__).resolve().parent / "results" / "parser_fuzz.json"

TAGS = ["<think>", "</think>", "<tool_call>", "</tool_call>"]
FRAGMENTS = [
    *TAGS,
    *(t[:i] for t in TAGS for i in range(1, len(t))),
    "\n",
    "\n\n",
    " ",
    "{",
    "}",
    "[",
    "]",
    '"',
    "'",
    ",",
    ":",
    "\\",
    "```json\n",
    "```",
    '"name"',
    '"arguments"',
    '"parameters"',
    "True",
    "null",
    "None",
    '{"name": "f", "arguments": {"a": 1}}',
    "{'name': 'g', 'arguments': {'b': True}}",
    '"{\\"x\\": 2}"',
    "é",
    "😀",
    "\x00",
    "\r\n",
]
ALPHABET = "abcxyz <>/{}[]\"':,\n\t\\_" + "".join(TAGS) + "é中😀\x00"


def valid_output(rng: random.Random) -> str:
    """A plausible, well-formed QwQ output with 0-3 calls."""
    reasoning = " ".join(
        rng.choice(["Let", "me", "think", "about", "the", "tool", "call", "<tool_call>"])
        for _ in range(rng.randint(0, 30))
    )
    parts = [reasoning, "\n</think>\n\n"]
    for i in range(rng.randint(0, 3)):
        if rng.random() < 0.5:
            parts.append(rng.choice(["Let me check. ", "Next:\n", "", "ok "]))
        args = {
            f"k{j}": rng.choice([1, "v", None, True, [1, 2], {"n": "x"}]) for j in range(rng.randint(0, 4))
        }
        parts.append(
            "<tool_call>\n" + json.dumps({"name": f"tool_{i}", "arguments": args}) + "\n</tool_call>"
        )
        parts.append(rng.choice(["\n", "", " then "]))
    parts.append(rng.choice(["", "Done.", "The answer is 42."]))
    return "".join(parts)


def mutate(text: str, rng: random.Random) -> str:
    """Apply 1-6 random edits: delete, insert, duplicate, swap, truncate, splice in a fragment."""
    for _ in range(rng.randint(1, 6)):
        if not text:
            text = rng.choice(FRAGMENTS)
            continue
        i = rng.randrange(len(text))
        j = min(len(text), i + rng.randint(1, 12))
        op = rng.randrange(6)
        if op == 0:
            text = text[:i] + text[j:]
        elif op == 1:
            text = text[:i] + rng.choice(ALPHABET) + text[i:]
        elif op == 2:
            text = text[:j] + text[i:j] + text[j:]
        elif op == 3:
            text = text[:i] + text[i:j][::-1] + text[j:]
        elif op == 4:
            text = text[:i]
        else:
            text = text[:i] + rng.choice(FRAGMENTS) + text[i:]
    return text


def random_text(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 200)))


def tag_soup(rng: random.Random) -> str:
    return "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 60)))


def feed(text: str, sizes: list[int] | None) -> list:
    parser = StreamParser()
    if sizes is None:
        events = parser.feed(text)
    else:
        events, pos, k = [], 0, 0
        while pos < len(text):
            n = sizes[k % len(sizes)]
            events += parser.feed(text[pos : pos + n])
            pos, k = pos + n, k + 1
    return events + parser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="inputs in total (split over the families)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample-every", type=int, default=10, help="check chunking on every k-th input")
    args = ap.parse_args()

    rng = random.Random(args.seed)
    families = {
        "random": random_text,
        "mutated_valid": lambda r: mutate(valid_output(r), r),
        "tag_soup": tag_soup,
    }
    rows = []
    failures: list[dict] = []
    per_family = args.n // len(families) + 1
    for fam, make in families.items():
        inputs = [make(rng) for _ in range(per_family)]
        chars = sum(len(t) for t in inputs)
        exceptions = mismatches = checked = calls = errors = repaired = 0
        started = time.perf_counter()
        whole_results = []
        for text in inputs:
            try:
                events = feed(text, None)
            except Exception:
                exceptions += 1
                whole_results.append(None)
                if len(failures) < 20:
                    failures.append(
                        {"family": fam, "input": text[:500], "error": traceback.format_exc(limit=3)}
                    )
                continue
            whole_results.append(events)
            for e in events:
                calls += e.kind == "tool_call"
                errors += e.kind == "tool_call_error"
                repaired += e.kind == "tool_call" and bool(e.repairs)
        elapsed = time.perf_counter() - started

        chunk_started = time.perf_counter()
        for idx in range(0, len(inputs), args.sample_every):
            text, whole = inputs[idx], whole_results[idx]
            if whole is None:
                continue
            checked += 1
            sizes = [rng.randint(1, 16) for _ in range(rng.randint(1, 5))]
            try:
                merged = merge_deltas(whole)
                same = merge_deltas(feed(text, sizes)) == merged and merge_deltas(feed(text, [1])) == merged
            except Exception:
                exceptions += 1
                same = True  # counted as an exception, not a mismatch
                if len(failures) < 20:
                    failures.append(
                        {"family": fam, "input": text[:500], "error": traceback.format_exc(limit=3)}
                    )
            if not same:
                mismatches += 1
                if len(failures) < 20:
                    failures.append({"family": fam, "input": text[:500], "error": "chunking mismatch"})
        chunk_elapsed = time.perf_counter() - chunk_started

        rows.append(
            {
                "family": fam,
                "inputs": len(inputs),
                "mean_chars": round(chars / len(inputs), 1),
                "exceptions": exceptions,
                "chunking_checked": checked,
                "chunking_mismatches": mismatches,
                "tool_calls": calls,
                "repaired_calls": repaired,
                "call_errors": errors,
                "inputs_per_s": round(len(inputs) / elapsed),
                "mb_per_s": round(chars / elapsed / 1e6, 2),
                "chunk_check_s": round(chunk_elapsed, 2),
            }
        )

    # Streaming cost on well-formed outputs, fed in token-sized pieces as a model server sends them.
    valid = [valid_output(rng) for _ in range(5000)]
    started = time.perf_counter()
    for text in valid:
        feed(text, [4])
    elapsed = time.perf_counter() - started
    streamed = {
        "inputs": len(valid),
        "mean_chars": round(sum(map(len, valid)) / len(valid), 1),
        "chunk_chars": 4,
        "outputs_per_s": round(len(valid) / elapsed),
        "mb_per_s": round(sum(map(len, valid)) / elapsed / 1e6, 2),
        "us_per_chunk": round(elapsed / sum(-(-len(t) // 4) for t in valid) * 1e6, 2),
    }

    cols = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r[c]).rjust(w) for c, w in zip(cols, widths, strict=True)))
    total = {
        "inputs": sum(r["inputs"] for r in rows),
        "exceptions": sum(r["exceptions"] for r in rows),
        "chunking_checked": sum(r["chunking_checked"] for r in rows),
        "chunking_mismatches": sum(r["chunking_mismatches"] for r in rows),
    }
    print(f"total: {total}")
    print(f"valid outputs streamed in 4-char chunks: {streamed}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "seed": args.seed,
                "sample_every": args.sample_every,
                "python": platform.python_version(),
                "machine": platform.machine(),
                "rows": rows,
                "total": total,
                "valid_streamed": streamed,
                "failures": failures,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
