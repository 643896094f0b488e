"""Check `tools.convert` on the whole BFCL v4 data set: correct calls validate, wrong ones are rejected.

    pip download --no-deps bfcl-eval -d /tmp/bfcl && python benchmarks/bfcl_schemas.py /tmp/bfcl/*.whl

Takes the `bfcl-eval` wheel (or an unpacked `bfcl_eval/data` folder); only its data files are read.
Prints a table of counts per check and category, lists the cases whose expected call violates the
case's own schema, and writes JSON with `--json PATH`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from qwq_agent.testing.bfcl import CATEGORIES, check_case, load_cases


def data_dir(source: Path, tmp: Path) -> Path:
    if source.is_dir():
        return source
    with zipfile.ZipFile(source) as whl:
        whl.extractall(tmp, [n for n in whl.namelist() if n.startswith("bfcl_eval/data/")])
    return tmp / "bfcl_eval" / "data"


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="bfcl-eval wheel, or its bfcl_eval/data folder")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = data_dir(args.source, Path(tmp))
        table: dict[str, collections.Counter[str]] = {}
        violating: list[str] = []
        other: list[str] = []
        started = time.perf_counter()
        for category in CATEGORIES:
            counts: collections.Counter[str] = collections.Counter()
            for case in load_cases(root, [category]):
                report = await check_case(case)
                counts.update(report.counts)
                counts["cases"] += 1
                for failure in report.failures:
                    (violating if "correct call" in failure else other).append(failure)
            table[category] = counts
        elapsed = time.perf_counter() - started
    keys = ["cases", "correct", "missing", "extra", "wrong_type", "bad_enum"]
    print(f"{'category':24}" + "".join(f"{k:>18}" for k in keys))
    total: collections.Counter[str] = collections.Counter()
    for category, counts in [*table.items(), ("ALL", None)]:
        c = counts if counts is not None else total
        if counts is not None:
            total.update(counts)
        cells = [str(c["cases"])] + [f"{c[k + '_ok']}/{c[k + '_total']}" for k in keys[1:]]
        print(f"{category:24}" + "".join(f"{x:>18}" for x in cells))
    print(
        f"\n{len(violating)} expected calls rejected: each value disagrees with its own function definition (listed):"
    )
    for line in violating:
        print("  " + line.splitlines()[0][:160])
    print(f"\n{len(other)} wrong calls accepted or rejected without naming the argument")
    for line in other:
        print("  " + line[:300])
    print(f"\n{elapsed:.1f} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "counts": {k: dict(v) for k, v in table.items()},
                    "violating": violating,
                    "other_failures": other,
                    "seconds": elapsed,
                },
                indent=1,
            )
        )
    return 1 if other else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
