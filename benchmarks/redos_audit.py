"""ReDoS / super-linear work audit of everything that reads untrusted text.

The agent loop is asyncio: a regex or loop that takes seconds on hostile text blocks the event loop, so
no deadline can fire. This feeds every function that sees model output, tool output, SSE streams or
replayed traces adversarial inputs of 16 KB and 64 KB (long runs of one character, whitespace, nested
and unbalanced brackets, repeated near-matches of each pattern's own prefix, alternations, one long
line), in one piece and, for streaming functions, in 16-character deltas, and times each with
`time.process_time`.

A case is flagged when 64 KB costs more than 0.1 s, or when 16 KB -> 64 KB grows well past 4x (more
than 8x, and the 64 KB time is above 10 ms: below that, timer noise decides the ratio). Each case
climbs 1 KB, 4 KB, 16 KB, 64 KB and stops climbing once a size took over 0.5 s (a cubic pattern took
160 s on 8 KB); the sizes left are estimated from the growth of the last two measured (marked `~`),
and flagged. Timings are the best of two runs (one for runs over 0.5 s), after a `gc.collect()`.

    PYTHONPATH=. .venv/bin/python benchmarks/redos_audit.py [--only NAME] [--out FILE]

Prints a table and writes benchmarks/results/redos_audit.json (rows under 10 ms at 64 KB are only
counted). benchmarks/results/redos_audit-before-13a9e0d.json is the same audit of the code before
the fixes it led to (223 of 2040 cases flagged then, 2 now, both linear; `~` values there are
extrapolations of cases stopped at 1-16 KB).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console
from rich.table import Table

from qwq_agent.agent.chat_format import render
from qwq_agent.agent.clients._sse import iter_sse_json
from qwq_agent.agent.clients.openai_chat import _RawWriter
from qwq_agent.agent.clients.stops import StopScanner
from qwq_agent.agent.constrained import grammar_ignored, validate_tool_call
from qwq_agent.agent.language import language_mismatch, strip_non_language
from qwq_agent.agent.language.parts import split_parts
from qwq_agent.agent.language.scripts import script_weights
from qwq_agent.agent.loops.arithmetic import find_slips
from qwq_agent.agent.loops.detector import ReasoningLoopDetector
from qwq_agent.agent.loops.ledger import count_markers, extract_mentions
from qwq_agent.agent.loops.probe import normalise_answer
from qwq_agent.agent.loops.tool_calls import ToolCallRepetitionDetector
from qwq_agent.agent.markers import defuse
from qwq_agent.agent.messages import Message, ToolCall, ToolSpec
from qwq_agent.agent.parser import StreamParser
from qwq_agent.agent.repair import decode_call, ends_inside_string
from qwq_agent.agent.selection import normalize_answer
from qwq_agent.cli.safe_text import safe
from qwq_agent.docindex.extract import Section, extract
from qwq_agent.docindex.store import _match_line
from qwq_agent.sandbox.protocol import PythonResult, SearchMatch, SearchResult, ShellResult
from qwq_agent.tools.fetch_url import render_page
from qwq_agent.tools.sandbox_tools import format_python, format_shell
from qwq_agent.tools.search_code import SearchCodeArgs, format_matches
from qwq_agent.tools.web.fetch import FetchedPage
from qwq_agent.tools.web.providers import SearchResult as WebResult
from qwq_agent.tools.web.providers import _strip_tags
from qwq_agent.tools.web.readable import html_to_readable
from qwq_agent.tools.web_search import format_results

LADDER = (1024, 4 * 1024, 16 * 1024, 64 * 1024)
SIZES = LADDER[-2:]  # reported
DELTA = 16
LIMIT_S = 0.1  # per 64 KB
STOP_CLIMBING_S = 0.5  # a size this slow is not followed by the next one (estimated instead)


def rep(unit: str) -> Callable[[int], str]:
    return lambda n: (unit * (n // len(unit) + 1))[:n]


def half(a: str, mid: str, b: str) -> Callable[[int], str]:
    return lambda n: a * ((n - len(mid)) // 2) + mid + b * ((n - len(mid)) // 2)


# Adversarial inputs, each a function of the size in characters.
INPUTS: dict[str, Callable[[int], str]] = {
    "a*n": rep("a"),
    "A*n": rep("A"),
    "space*n": rep(" "),
    "newline*n": rep("\n"),
    "ws mix": rep(" \t\n\r"),
    "(*n": rep("("),
    "(*n 1 space*n": half("(", "1", " "),
    ")*n": rep(")"),
    "([{ nested": half("([{", "1", "}])"),
    "unbalanced {[": rep('{"a":['),
    '"*n': rep('"'),
    "backslash*n": rep("\\"),
    "<*n": rep("<"),
    "<tool_call*n": rep("<tool_call"),
    "<tool_call>*n": rep("<tool_call>"),
    "</think*n": rep("</think"),
    "<|im_end*n": rep("<|im_end"),
    "<|a_b*n": rep("<|abcdefghij_"),
    "1+*n": rep("1+"),
    "1^*n": rep("1^"),
    "1 ^ *n": rep("1 ^ "),
    "(1)*n": rep("(1)"),
    "((1+1)) unbalanced": lambda n: "(" * (n - 4) + "1+1)",
    "(*n 1+1 )*n": half("(", "1+1", ")"),
    "f((*n": lambda n: "f" + "(" * (n - 1),
    "( *n": rep("( "),
    "1 + *n": rep("1 + "),
    "1 = *n": rep("1 = "),
    "(1+1)=2 ": rep("(1 + 1) = 2 "),
    "1*n": rep("1"),
    "1,*n": rep("1,"),
    "1.*n": rep("1."),
    ".*n": rep("."),
    "!?*n": rep("!?"),
    "。*n": rep("。"),
    ". *n": rep(". "),
    "Option A or *n": rep("Option A or "),
    "the answer is *n": rep("The answer is "),
    "wait again *n": rep("wait, again "),
    "A *n": rep("A "),
    "A-*n": rep("A-"),
    "Aa'*n": rep("Aa'"),
    "x-A*n": rep("x-A"),
    "\\[*n": rep("\\["),
    "\\(*n": rep("\\("),
    "$*n": rep("$"),
    "$$a*n": rep("$$a"),
    "`*n": rep("`"),
    "```a*n": rep("```a"),
    "a@*n": rep("a@"),
    "a@a.*n": rep("a@a."),
    "@*n": rep("@"),
    "a.*n": rep("a."),
    "a_*n": rep("a_"),
    "aB*n": rep("aB"),
    "http://*n": rep("http://"),
    "\\boxed{*n": rep("\\boxed{"),
    "#  #*n": lambda n: "# " + rep(" #")(n - 3) + "x",
    "    x\\n*n": rep("    x\n"),
    "> *n": rep("> "),
    "ab*n": rep("ab"),
    "a *n": rep("a "),
    "prose line": rep("the quick brown fox jumps over the lazy dog "),
    "中文*n": rep("我们再算一次，"),
    "data: *n": rep("data: "),
    "\\r*n": rep("\r"),
    "<b>*n": rep("<b"),
    "~*n": rep("~"),
}


# ---- targets: name -> (function of the text, streaming) -------------------------------------------


def _parser(text: str, step: int) -> None:
    p = StreamParser()
    for i in range(0, len(text), step):
        p.feed(text[i : i + step])
    p.close()
    p.result()


def _parser_after_think(text: str, step: int) -> None:
    p = StreamParser()
    p.feed("<think>\nok</think>\n\n<tool_call>\n")
    for i in range(0, len(text), step):
        p.feed(text[i : i + step])
    p.close()


def _detector(text: str, step: int) -> None:
    d = ReasoningLoopDetector()
    for i in range(0, len(text), step):
        d.feed(text[i : i + step])


def _stops(text: str, step: int) -> None:
    s = StopScanner(["</tool_call>", "<|im_end|>", "\n\n\n"])
    for i in range(0, len(text), step):
        s.feed(text[i : i + step])
    s.flush()


def _raw_writer(text: str, step: int) -> None:
    w = _RawWriter()
    n = len(text) // 2
    for i in range(0, n, step):
        w.feed({"reasoning_content": text[i : min(i + step, n)]})
    for i in range(n, len(text), step):
        w.feed({"content": text[i : i + step]})
    w.feed({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": text[:step]}}]})
    w.finish()


async def _sse(body: str, step: int) -> None:
    import httpx

    data = body.encode("utf-8", "surrogatepass")

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), step):
            yield data[i : i + step]

    response = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=chunks())
    try:
        async for _ in iter_sse_json(response):
            pass
    except Exception:
        pass  # a protocol error is an answer too


def _sse_raw(text: str, step: int) -> None:
    asyncio.run(_sse(text, step))


def _sse_event(text: str, step: int) -> None:
    asyncio.run(_sse("data: " + json.dumps({"text": text}) + "\n\n", step))


def _sse_data_lines(text: str, step: int) -> None:
    asyncio.run(_sse("".join(f"data: {line}\n" for line in text.split(" ")) + "\n", step))


def _decode(text: str) -> None:
    for body in (
        text,
        '{"name": "f", "arguments": {"x": "' + text + '"}}',
        '{"name": "f", "arguments": ' + text,
    ):
        try:
            decode_call(body)
        except Exception:
            pass
    ends_inside_string(text)


def _tool_outputs(text: str) -> None:
    format_shell(ShellResult(exit_code=0, stdout=text, stderr=text, stdout_dropped=5), 10.0)
    format_python(PythonResult(stdout=text, value=text), 10.0)
    result = SearchResult(
        matches=[SearchMatch(path="/workspace/" + text[:200], line_number=1, line=text, before=[text])],
        total_matches=1,
    )
    format_matches(SearchCodeArgs(pattern="x"), result)
    format_results(text[:100], [WebResult(title=text, url="https://x", snippet=text)])
    _strip_tags(text)
    ToolCallRepetitionDetector().record(ToolCall(id="c", name="f", arguments={}), text)


def _html(text: str) -> None:
    html_to_readable(f"<html><body><p>{text}</p></body></html>")
    render_page(
        FetchedPage(
            url="https://x", status=200, content_type="text/html", body=text.encode("utf-8", "replace")
        ),
        0,
        20000,
    )


def _render_prompt(text: str) -> None:
    render(
        [Message(role="user", content="q"), Message(role="tool", name="f", tool_call_id="c", content=text)],
        [],
    )


def _docindex(text: str) -> None:
    data = text.encode("utf-8", "replace")
    for kind in ("markdown", "text"):
        extract(data, kind)
    section = Section(line=1, body=text)
    _match_line(section, ["zzzz", "qwerty"], [["a", "b"], ["1", "2"]])


def _language(text: str) -> None:
    language_mismatch("What is the capital of France? Answer in English please.", text)


def _language_parts(text: str) -> None:
    clean = strip_non_language(text)
    split_parts(clean, 12.0)
    script_weights(clean, 2.5)


_TOOLS = [ToolSpec(name="f", parameters={"type": "object", "properties": {"x": {"type": "string"}}})]


def _constrained(text: str) -> None:
    for body in (text, '{"name": "f", "arguments": {"x": ' + text + "}}"):
        validate_tool_call(body, _TOOLS)
        grammar_ignored(body, _TOOLS, "stop")


def _small(text: str) -> None:
    normalise_answer(text)
    normalize_answer(text)
    safe(text)
    defuse(text)


STREAMING: dict[str, Callable[[str, int], None]] = {
    "parser.feed": _parser,
    "parser.feed (in a call)": _parser_after_think,
    "detector.feed": _detector,
    "StopScanner.feed": _stops,
    "openai _RawWriter.feed": _raw_writer,
    "sse raw body": _sse_raw,
    "sse one event": _sse_event,
    "sse data lines": _sse_data_lines,
}
WHOLE: dict[str, Callable[[str], None]] = {
    "ledger.extract_mentions": extract_mentions,
    "ledger.count_markers": count_markers,
    "arithmetic.find_slips": find_slips,
    "markers.defuse": defuse,
    "language.strip_non_language": strip_non_language,
    "language parts/scripts": _language_parts,
    "language_mismatch": _language,
    "repair.decode_call": _decode,
    "constrained validate/grammar": _constrained,
    "tool output formatting": _tool_outputs,
    "html_to_readable/render_page": _html,
    "chat_format.render (tool msg)": _render_prompt,
    "docindex extract/_match_line": _docindex,
    "answers/safe/defuse": _small,
}


def cases() -> list[tuple[str, str, Callable[[str], None]]]:
    out: list[tuple[str, str, Callable[[str], None]]] = []
    for name, fn in STREAMING.items():
        out.append((name, "one piece", lambda t, fn=fn: fn(t, max(1, len(t)))))
        out.append((name, f"{DELTA}-char deltas", lambda t, fn=fn: fn(t, DELTA)))
    for name, f in WHOLE.items():
        out.append((name, "one piece", f))
    return out


ERRORS: dict[tuple[str, str, str], str] = {}


def timed(fn: Callable[[str], None], text: str, key: tuple[str, str, str]) -> float:
    gc.collect()
    start = time.process_time()
    try:
        fn(text)
    except Exception as exc:  # noted in the row: hostile text must not raise either
        ERRORS[key] = f"{type(exc).__name__}: {str(exc)[:120]}"
    return time.process_time() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="run only targets whose name contains this")
    ap.add_argument("--inputs", help="run only inputs whose name contains this")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "redos_audit.json"))
    ap.add_argument("--all-rows", action="store_true", help="print every row, not only the worst per target")
    args = ap.parse_args()
    console = Console(width=150)
    # Warm up lazy loads (the language model, bs4) outside the timings.
    _language("Hello there, this is an English sentence.")
    _html("warm")
    gc.collect()
    gc.freeze()  # what the imports left is not the functions' garbage
    rows: list[dict[str, Any]] = []
    for target, mode, fn in cases():
        if args.only and args.only not in target:
            continue
        for input_name, make in INPUTS.items():
            if args.inputs and args.inputs not in input_name:
                continue
            key = (target, mode, input_name)
            measured: dict[int, float] = {}
            for size in LADDER:
                text = make(size)
                t = timed(fn, text, key)
                if t <= STOP_CLIMBING_S:
                    t = min(t, timed(fn, text, key))
                measured[size] = t
                if t > STOP_CLIMBING_S:
                    break
            times = dict(measured)
            done = sorted(measured)
            for size in LADDER:
                if size not in times:
                    # Growth per 4x from the last two sizes measured: at least quadratic's 16x.
                    a, b = measured[done[-2]], measured[done[-1]]
                    growth = max(16.0, b / a if a > 1e-4 else 16.0)
                    times[size] = times[LADDER[LADDER.index(size) - 1]] * growth
            estimated = SIZES[-1] not in measured
            t16, t64 = times[SIZES[0]], times[SIZES[1]]
            ratio = t64 / t16 if t16 > 1e-4 else None
            flagged = t64 > LIMIT_S or (ratio is not None and ratio > 8 and t64 > 0.01)
            rows.append(
                {
                    "target": target,
                    "mode": mode,
                    "input": input_name,
                    "s_16k": round(t16, 4),
                    "s_64k": round(t64, 4),
                    "s_64k_estimated": estimated,
                    "s_16k_estimated": SIZES[0] not in measured,
                    "s_1k": round(times[LADDER[0]], 5),
                    "s_4k": round(times[LADDER[1]], 4),
                    "ratio": round(ratio, 1) if ratio is not None else None,
                    "flagged": flagged,
                    "error": ERRORS.get((target, mode, input_name)),
                }
            )
            if rows[-1]["error"]:
                console.print(f"[yellow]RAISED[/] {target} / {mode} / {input_name}: {rows[-1]['error']}")
            if flagged:
                approx = "~" if estimated else ""
                console.print(
                    f"[red]FLAG[/] {target} / {mode} / {input_name}: {t16:.3f} s -> {approx}{t64:.3f} s"
                )

    table = Table(title="ReDoS audit: worst input per target (process time, s)")
    for col in ("target", "mode", "input", "16 KB", "64 KB", "ratio", "flag"):
        table.add_column(col, justify="right" if col in ("16 KB", "64 KB", "ratio") else "left")
    worst: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        key = (r["target"], r["mode"])
        if key not in worst or r["s_64k"] > worst[key]["s_64k"]:
            worst[key] = r
    shown = rows if args.all_rows else [r for r in rows if r["flagged"]] + list(worst.values())
    seen: set[tuple[str, str, str]] = set()
    for r in shown:
        k = (r["target"], r["mode"], r["input"])
        if k in seen:
            continue
        seen.add(k)
        table.add_row(
            r["target"],
            r["mode"],
            r["input"],
            ("~" if r["s_16k_estimated"] else "") + f"{r['s_16k']:.4f}",
            ("~" if r["s_64k_estimated"] else "") + f"{r['s_64k']:.4f}",
            "-" if r["ratio"] is None else f"{r['ratio']:.1f}",
            "[red]FLAG[/]" if r["flagged"] else "",
        )
    console.print(table)
    flagged = [r for r in rows if r["flagged"]]
    raised = [r for r in rows if r["error"]]
    console.print(f"{len(rows)} cases, {len(flagged)} flagged, {len(raised)} raised")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "sizes": list(SIZES),
        "delta_chars": DELTA,
        "limit_s_per_64k": LIMIT_S,
        "python": sys.version.split()[0],
        "cases": len(rows),
        "flagged": flagged,
        "raised": raised,
        "worst_per_target": list(worst.values()),
        "rows": rows,
    }
    if not (args.only or args.inputs):
        out.write_text(to_json(payload), encoding="utf-8")
        console.print(f"wrote {out}")


def to_json(payload: dict[str, Any]) -> str:
    """The results, one row a line; of the rows only those above 10 ms per 64 KB (the rest are counted)."""
    rows = payload["rows"]
    kept = [r for r in rows if r["s_64k"] >= 0.01 or r["flagged"] or r["error"]]
    head = {k: v for k, v in payload.items() if k not in ("flagged", "raised", "worst_per_target", "rows")}
    head["rows_under_10ms_at_64k"] = len(rows) - len(kept)
    lines = ["{"]
    lines += [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    for name, items in (
        ("flagged", payload["flagged"]),
        ("raised", payload["raised"]),
        ("worst_per_target", payload["worst_per_target"]),
        ("rows", kept),
    ):
        lines.append(f"  {json.dumps(name)}: [")
        lines += [f"    {json.dumps(r, ensure_ascii=False)}," for r in items]
        if items:
            lines[-1] = lines[-1].rstrip(",")
        lines.append("  ],")
    lines[-1] = "  ]"
    lines.append("}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
