"""Tokens per second: our tiktoken-based QwQ tokenizer beside the reference Hugging Face `tokenizers` one.

Both encode (and decode) the same corpus (tests/tokenizer_corpus.py); each figure is the best of
`--repeats` runs. Prints a table and writes benchmarks/results/tokenizer.json.

    .venv/bin/python benchmarks/tokenizer_bench.py [--size 3000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the shared corpus and the reference-folder lookup live there

from conftest_reference import reference_dir  # noqa: E402
from tokenizer_corpus import build_corpus  # noqa: E402

from qwq_agent.agent.tokenizer import QwenTokenizer, get_tokenizer  # noqa: E402


def best_of(repeats: int, fn: Callable[[], Any]) -> float:
    """Fastest wall time of `repeats` calls (the least disturbed by other work on the machine)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=3000, help="number of corpus texts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tokenizer.json")
    args = parser.parse_args()

    ref_path = reference_dir() / "tokenizer.json"
    if not ref_path.is_file():
        print(f"reference tokenizer {ref_path} not found (set QWQ_REFERENCE_DIR)", file=sys.stderr)
        return 2
    from tokenizers import Tokenizer

    corpus = build_corpus(seed=0, size=args.size)
    start = time.perf_counter()
    get_tokenizer.cache_clear()
    ours: QwenTokenizer = get_tokenizer()
    load_ours = time.perf_counter() - start
    start = time.perf_counter()
    ref = Tokenizer.from_file(str(ref_path))
    load_ref = time.perf_counter() - start

    our_ids = [ours.encode(t) for t in corpus]
    ref_ids = [e.ids for e in ref.encode_batch(corpus, add_special_tokens=False)]
    identical = sum(a == b for a, b in zip(our_ids, ref_ids, strict=True))
    tokens = sum(map(len, our_ids))
    chars = sum(map(len, corpus))

    runs = {
        "ours encode (sequential)": lambda: [ours.encode(t) for t in corpus],
        "reference encode (sequential)": lambda: [ref.encode(t, add_special_tokens=False) for t in corpus],
        "reference encode_batch (Rust threads)": lambda: ref.encode_batch(corpus, add_special_tokens=False),
        "ours decode (sequential)": lambda: [ours.decode(ids) for ids in our_ids],
        "reference decode (sequential)": lambda: [
            ref.decode(ids, skip_special_tokens=False) for ids in our_ids
        ],
    }
    rows = []
    for name, fn in runs.items():
        seconds = best_of(args.repeats, fn)
        rows.append({"run": name, "seconds": round(seconds, 4), "tokens_per_s": round(tokens / seconds)})
    base = next(r["tokens_per_s"] for r in rows if r["run"] == "reference encode (sequential)")
    for row in rows:
        row["vs_reference_sequential_encode"] = round(row["tokens_per_s"] / base, 2)

    print(
        f"corpus: {len(corpus)} texts, {chars:,} chars, {tokens:,} tokens; identical ids: {identical}/{len(corpus)}"
    )
    print(f"load: ours {load_ours:.3f} s, reference {load_ref:.3f} s; cpus: {os.cpu_count()}")
    print(f"{'run':40} {'seconds':>9} {'tokens/s':>12} {'x ref enc':>9}")
    for row in rows:
        print(
            f"{row['run']:40} {row['seconds']:9.3f} {row['tokens_per_s']:12,} {row['vs_reference_sequential_encode']:9.2f}"
        )

    result = {
        "benchmark": "tokenizer",
        "corpus": {"texts": len(corpus), "chars": chars, "tokens": tokens, "seed": 0},
        "identical_ids": identical,
        "load_seconds": {"ours": round(load_ours, 3), "reference": round(load_ref, 3)},
        "repeats": args.repeats,
        "rows": rows,
        "environment": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "tiktoken": metadata.version("tiktoken"),
            "tokenizers": metadata.version("tokenizers"),
        },
        "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0 if identical == len(corpus) else 1


if __name__ == "__main__":
    raise SystemExit(main())
