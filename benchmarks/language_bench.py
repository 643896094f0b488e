"""Cost and accuracy of the language-drift check (issue 18).

Cost: milliseconds per answer of 2,000 characters, one answer per language of the pair set (its
correct answers strung together) plus drifting ones, each checked `--repeats` times; p50 and p90
over all checks. Baselines measured in the same run: counting scripts alone (the floor of any
check), one model call on the whole answer (what judging part by part adds), and the check this
replaced (stopwords and script shares, read from git). The model's load,
once per process, is timed on its own.

Accuracy: the pair set (tests/data/language/pairs.jsonl): drifts flagged, correct answers left
alone; beside it the detector this replaced (read from git at `--baseline-commit`, when git has it).

With `--lingua` (and lingua-language-detector installed by hand: it is not a dependency), the same
check runs on lingua as the model, for the comparison that chose py3langid.

Prints a table and writes benchmarks/results/language.json.

    .venv/bin/python benchmarks/language_bench.py [--repeats 50] [--lingua]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
import types
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PAIRS = ROOT / "tests" / "data" / "language" / "pairs.jsonl"
RESULTS = ROOT / "benchmarks" / "results" / "language.json"
SIZE = 2000

from qwq_agent.agent.language import language_mismatch, model  # noqa: E402
from qwq_agent.agent.language.scripts import script_weights  # noqa: E402


def load_pairs() -> list[dict[str, Any]]:
    return [json.loads(line) for line in PAIRS.read_text(encoding="utf-8").splitlines() if line.strip()]


def answers_of_size(pairs: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(label, question, answer of SIZE characters): each language's correct answers, with and without a drift."""
    out = []
    for lang in sorted({p["user_lang"] for p in pairs}):
        mine = [p for p in pairs if p["user_lang"] == lang]
        correct = [p["answer"] for p in mine if p["expected"] is None]
        drift = [p["answer"] for p in mine if p["kind"] == "midway"]
        # The drift goes second, so that it lies inside the first 2,000 characters.
        for label, texts in (
            (f"{lang} correct", correct),
            (f"{lang} midway", correct[:1] + drift + correct[1:]),
        ):
            text = "\n\n".join(texts)
            while len(text) < SIZE:
                text += "\n\n" + text
            out.append((label, mine[0]["question"], text[:SIZE]))
    return out


def timings(fn: Callable[[], Any], repeats: int) -> list[float]:
    return interleaved([fn], repeats)[0]


def interleaved(fns: list[Callable[[], Any]], repeats: int) -> list[list[float]]:
    """Milliseconds per call of each of `fns`, taken in turn, so that the load of the shared machine
    falls on all of them alike."""
    for fn in fns:
        fn()  # warm: caches, the model
    result: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, times in zip(fns, result, strict=True):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1000)
    return result


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def old_detector(commit: str) -> types.ModuleType | None:
    """The language module as it was at `commit` (a single file then), or None without git."""
    try:
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{commit}:qwq_agent/agent/language.py"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    module = types.ModuleType("language_before_issue_18")
    exec(compile(source, f"{commit}:language.py", "exec"), module.__dict__)
    return module


def accuracy(check: Callable[[str, str], Any], pairs: list[dict[str, Any]]) -> dict[str, Any]:
    drifts = [p for p in pairs if p["expected"] is not None]
    correct = [p for p in pairs if p["expected"] is None]
    missed = [p["id"] for p in drifts if check(p["question"], p["answer"]) is None]
    false = [p["id"] for p in correct if check(p["question"], p["answer"]) is not None]
    return {
        "drifts": len(drifts),
        "drifts_flagged": len(drifts) - len(missed),
        "correct": len(correct),
        "correct_flagged": len(false),
        "missed": missed,
        "false_alarms": false,
    }


def lingua_backend() -> tuple[Callable[[str], tuple[str, float]], Callable[[str], dict[str, float]]]:
    """`model.classify`/`model.rank` on lingua-language-detector instead (the alternative weighed)."""
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    languages = [Language.from_iso_code_639_1(getattr(IsoCode639_1, c.upper())) for c in model.MODEL_LANGS]
    detector = LanguageDetectorBuilder.from_languages(*languages).with_preloaded_language_models().build()

    def rank(text: str) -> dict[str, float]:
        return {
            v.language.iso_code_639_1.name.lower(): v.value
            for v in detector.compute_language_confidence_values(text)
        }

    def classify(text: str) -> tuple[str, float]:
        best = detector.compute_language_confidence_values(text)[0]
        return best.language.iso_code_639_1.name.lower(), best.value

    return classify, rank


def compare_lingua(
    cases: list[tuple[str, str, str]], pairs: list[dict[str, Any]], repeats: int
) -> dict[str, Any]:
    """The same part-by-part check with lingua as the model: cost, pair-set accuracy, load time."""
    start = time.perf_counter()
    classify, rank = lingua_backend()
    load_s = time.perf_counter() - start
    saved = model.classify, model.rank
    model.classify, model.rank = classify, rank
    try:
        costs: list[float] = []
        for _, question, answer in cases:
            costs += timings(lambda q=question, a=answer: language_mismatch(q, a), repeats)
        acc = accuracy(language_mismatch, pairs)
    finally:
        model.classify, model.rank = saved
    return {
        "version": metadata.version("lingua-language-detector"),
        "load_ms": round(load_s * 1000, 1),
        "p50_ms": pct(costs, 0.5),
        "p90_ms": pct(costs, 0.9),
        "accuracy": acc,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--baseline-commit", default="8c7dced")
    parser.add_argument(
        "--lingua", action="store_true", help="also run the check on lingua-language-detector (if installed)"
    )
    args = parser.parse_args()
    pairs = load_pairs()

    start = time.perf_counter()
    model.classify("warm the model up")
    load_s = time.perf_counter() - start

    old = old_detector(args.baseline_commit)
    cases = answers_of_size(pairs)
    rows = []
    all_before: list[float] = []
    all_ours: list[float] = []
    all_scripts: list[float] = []
    all_whole: list[float] = []
    for label, question, answer in cases:
        fns: list[Callable[[], Any]] = [
            lambda q=question, a=answer: language_mismatch(q, a),
            lambda a=answer: script_weights(a, 2.5),
            lambda a=answer: model.classify(a),
        ]
        if old is not None:
            fns.append(lambda q=question, a=answer: old.language_mismatch(q, a))
        ours, scripts, whole, *rest = interleaved(fns, args.repeats)
        before = rest[0] if rest else [float("nan")]
        all_before += before
        all_ours += ours
        all_scripts += scripts
        all_whole += whole
        flagged = language_mismatch(question, answer) is not None
        rows.append(
            {
                "answer": label,
                "chars": len(answer),
                "flagged": flagged,
                "p50_ms": pct(ours, 0.5),
                "p90_ms": pct(ours, 0.9),
                "scripts_only_p50_ms": pct(scripts, 0.5),
                "one_model_call_p50_ms": pct(whole, 0.5),
                "before_p50_ms": pct(before, 0.5),
            }
        )

    ours_acc = accuracy(language_mismatch, pairs)
    old_acc = accuracy(old.language_mismatch, pairs) if old is not None else None

    print(f"model load (once per process): {load_s * 1000:.0f} ms")
    print(
        f"{'answer (2,000 chars)':<22}{'flagged':>8}{'p50 ms':>9}{'p90 ms':>9}{'scripts':>9}{'1 call':>9}{'before':>9}"
    )
    for r in rows:
        print(
            f"{r['answer']:<22}{r['flagged']!s:>8}{r['p50_ms']:>9.3f}{r['p90_ms']:>9.3f}"
            f"{r['scripts_only_p50_ms']:>9.3f}{r['one_model_call_p50_ms']:>9.3f}{r['before_p50_ms']:>9.3f}"
        )
    print(
        f"{'all':<22}{'':>8}{pct(all_ours, 0.5):>9.3f}{pct(all_ours, 0.9):>9.3f}"
        f"{pct(all_scripts, 0.5):>9.3f}{pct(all_whole, 0.5):>9.3f}{pct(all_before, 0.5):>9.3f}"
    )
    print("p50/p90: this check; scripts: counting scripts only; 1 call: the model once on the whole")
    print(f"answer; before: the check this replaced ({args.baseline_commit}).")
    print()
    print(f"{'pair set':<28}{'drifts flagged':>16}{'correct flagged':>17}")
    for name, acc in (("part by part (py3langid)", ours_acc), (f"before ({args.baseline_commit})", old_acc)):
        if acc is None:
            print(f"{name:<28}{'(git history not available)':>33}")
            continue
        print(
            f"{name:<28}{acc['drifts_flagged']:>10}/{acc['drifts']:<5}{acc['correct_flagged']:>11}/{acc['correct']:<5}"
        )

    lingua = None
    if args.lingua:
        lingua = compare_lingua(cases, pairs, max(5, args.repeats // 5))
        acc = lingua["accuracy"]
        print(
            f"\nsame check on lingua {lingua['version']} (preloaded, {len(model.MODEL_LANGS)} languages): "
            f"load {lingua['load_ms']:.0f} ms, p50 {lingua['p50_ms']:.3f} ms, p90 {lingua['p90_ms']:.3f} ms, "
            f"drifts {acc['drifts_flagged']}/{acc['drifts']}, correct flagged {acc['correct_flagged']}/{acc['correct']}"
        )

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "language_bench",
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": {
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "load_avg": os.getloadavg(),
                },
                "py3langid": metadata.version("py3langid"),
                "repeats": args.repeats,
                "model_load_ms": round(load_s * 1000, 1),
                "per_answer": rows,
                "all": {
                    "p50_ms": pct(all_ours, 0.5),
                    "p90_ms": pct(all_ours, 0.9),
                    "mean_ms": round(statistics.fmean(all_ours), 3),
                    "scripts_only_p50_ms": pct(all_scripts, 0.5),
                    "one_model_call_p50_ms": pct(all_whole, 0.5),
                    "before_p50_ms": pct(all_before, 0.5),
                },
                "accuracy": {"ours": ours_acc, "before": old_acc, "before_commit": args.baseline_commit},
                "lingua": lingua,
            },
            indent=2,
            ensure_ascii=False,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
