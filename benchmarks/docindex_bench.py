"""Benchmark of the document index: full build, incremental re-index, query latency.

The corpus is real prose: the docstrings of the installed Python packages and the standard library, as
one Markdown document per documented class or function (title, signature, docstring sections). Run:

    .venv/bin/python benchmarks/docindex_bench.py [--docs 10000] [--queries 300]

Prints a rich table and writes benchmarks/results/docindex_bench.json.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import os
import platform
import random
import re
import sqlite3
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from qwq_agent.docindex import DocIndex
from qwq_agent.protocols import ToolContext
from qwq_agent.tools.search_docs import SearchDocs

RESULTS = Path(__file__).resolve().parent / "results" / "docindex_bench.json"


def harvest(sources: list[Path], wanted: int, min_chars: int = 200) -> list[tuple[str, str]]:
    """(relative path, markdown) documents from docstrings of the .py files under `sources`."""
    docs: list[tuple[str, str]] = []
    for source in sources:
        docs += _harvest_one(source, wanted - len(docs), min_chars)
        if len(docs) >= wanted:
            break
    return docs


def _harvest_one(site_packages: Path, wanted: int, min_chars: int) -> list[tuple[str, str]]:
    docs: list[tuple[str, str]] = []
    seen: set[str] = set()
    top = "stdlib" if "site-packages" not in site_packages.parts else "packages"
    for py in sorted(site_packages.rglob("*.py")):
        if len(docs) >= wanted:
            break
        try:
            tree = ast.parse(py.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        module = py.relative_to(site_packages).with_suffix("").as_posix()
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            doc = ast.get_docstring(node)
            if not doc or len(doc) < min_chars:
                continue
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            body = _docstring_to_markdown(doc)
            text = f"# {node.name}\n\n`{module.replace('/', '.')}.{node.name}` ({kind})\n\n{body}\n"
            rel = f"{top}/{module}/{node.name}.md"
            n = 2
            while rel in seen:  # methods of different classes share names
                rel, n = f"{top}/{module}/{node.name}_{n}.md", n + 1
            seen.add(rel)
            docs.append((rel, text))
            if len(docs) >= wanted:
                break
    return docs


def _docstring_to_markdown(doc: str) -> str:
    # numpydoc/Google section titles become Markdown headings so the index sees sections.
    out = []
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if re.fullmatch(r"-{3,}", nxt.strip()) and line.strip():
            out.append(f"## {line.strip()}")
        elif re.fullmatch(r"-{3,}", line.strip()):
            continue
        elif re.fullmatch(
            r"(Args|Arguments|Parameters|Returns|Raises|Examples?|Notes?|Yields|Attributes):", line.strip()
        ):
            out.append(f"## {line.strip()[:-1]}")
        else:
            out.append(line)
    return "\n".join(out)


def make_queries(docs: list[tuple[str, str]], n: int, rng: random.Random) -> list[str]:
    """Single words, word pairs and two-word phrases drawn from the corpus itself."""
    words = [w for _, text in docs for w in re.findall(r"[A-Za-z]{4,}", text)]
    queries = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            queries.append(rng.choice(words))
        elif kind == 1:
            queries.append(f"{rng.choice(words)} {rng.choice(words)}")
        else:
            _, text = rng.choice(docs)
            run = re.findall(r"[A-Za-z]{3,}", text)
            j = rng.randrange(max(1, len(run) - 1))
            queries.append('"' + " ".join(run[j : j + 2]) + '"')
    return queries


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    site = Path(next(p for p in sys.path if p.endswith("site-packages")))
    sources = [site, Path(sysconfig.get_paths()["stdlib"])]

    with tempfile.TemporaryDirectory(prefix="qwq-docbench-") as tmp:
        root = Path(tmp, "corpus")
        t0 = time.perf_counter()
        docs = harvest(sources, args.docs)
        if len(docs) < args.docs:
            print(f"only {len(docs)} documents could be harvested", file=sys.stderr)
        for rel, text in docs:
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        corpus_bytes = sum(len(t.encode()) for _, t in docs)
        gen_s = time.perf_counter() - t0
        db = Path(tmp, "index.sqlite3")

        with DocIndex(db, root) as index:
            full = index.update()
            chunks = index.chunk_count()
            noop = index.update()
            touched = rng.sample(docs, max(1, len(docs) // 100))
            for rel, text in touched:
                (root / rel).write_text(
                    text + "\nRevised after review: benchmark marker.\n", encoding="utf-8"
                )
            incremental = index.update()
            expected = (len(touched), 0, 0)
            got = (incremental.updated, incremental.added, incremental.removed)
            assert got == expected, f"incremental re-index did {got}, expected {expected}"

            queries = make_queries(docs, args.queries, rng)
            for q in queries[:20]:
                index.search(q)  # warm the page cache, as a running agent would have it
            lat_ms, hits = [], []
            for q in queries:
                s = time.perf_counter()
                found = index.search(q, limit=10)
                lat_ms.append((time.perf_counter() - s) * 1000)
                hits.append(len(found))

        tool = SearchDocs(db)
        ctx = ToolContext()

        async def tool_latencies() -> list[float]:
            out = []
            for q in queries[:100]:
                s = time.perf_counter()
                await tool({"query": q, "limit": 8}, ctx)
                out.append((time.perf_counter() - s) * 1000)
            return out

        tool_ms = asyncio.run(tool_latencies())
        db_bytes = db.stat().st_size + sum(p.stat().st_size for p in db.parent.glob("index.sqlite3-*"))

    result = {
        "machine": {
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "corpus": {
            "source": "docstrings of the installed packages and the Python standard library: "
            + ", ".join(map(str, sources)),
            "documents": len(docs),
            "bytes": corpus_bytes,
            "indexed": full.added,
            "sections": chunks,
            "generate_s": round(gen_s, 3),
            "index_bytes": db_bytes,
        },
        "full_index": {
            "seconds": round(full.seconds, 3),
            "docs_per_s": round(full.added / full.seconds, 1),
            "mb_per_s": round(corpus_bytes / 1e6 / full.seconds, 2),
        },
        "reindex_no_change": {"seconds": round(noop.seconds, 3), "unchanged": noop.unchanged},
        "reindex_1pct_modified": {
            "seconds": round(incremental.seconds, 3),
            "updated": incremental.updated,
            "unchanged": incremental.unchanged,
        },
        "query": {
            "n": len(lat_ms),
            "p50_ms": round(pct(lat_ms, 50), 3),
            "p95_ms": round(pct(lat_ms, 95), 3),
            "p99_ms": round(pct(lat_ms, 99), 3),
            "mean_ms": round(statistics.fmean(lat_ms), 3),
            "mean_hits": round(statistics.fmean(hits), 2),
            "zero_hit_queries": sum(1 for h in hits if h == 0),
        },
        "tool_call": {
            "n": len(tool_ms),
            "p50_ms": round(pct(tool_ms, 50), 3),
            "p95_ms": round(pct(tool_ms, 95), 3),
            "note": "search_docs tool: opens the index, searches and formats, in a worker thread",
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    table = Table(title=f"docindex: {len(docs)} documents, {corpus_bytes / 1e6:.1f} MB, {chunks} sections")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("full index", f"{full.seconds:.2f} s ({result['full_index']['docs_per_s']:.0f} docs/s)")
    table.add_row("re-index, nothing changed", f"{noop.seconds:.3f} s")
    table.add_row(f"re-index, {incremental.updated} docs (1%) modified", f"{incremental.seconds:.3f} s")
    q = result["query"]
    table.add_row(
        f"query p50 / p95 / p99 ({q['n']} queries)",
        f"{q['p50_ms']:.2f} / {q['p95_ms']:.2f} / {q['p99_ms']:.2f} ms",
    )
    table.add_row(
        "search_docs tool call p50 / p95",
        f"{result['tool_call']['p50_ms']:.2f} / {result['tool_call']['p95_ms']:.2f} ms",
    )
    table.add_row("index size", f"{db_bytes / 1e6:.1f} MB")
    Console().print(table)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
