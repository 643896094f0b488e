"""Berkeley Function Calling Leaderboard cases as a check of `tools.convert` and the registry.

Each BFCL case has function definitions and, per expected call, the acceptable values of each
argument (`""` among them means the argument may be left out). From it we build the correct call,
which must validate, and wrong ones that must be rejected with a message naming the argument: a
missing required argument, an extra one, a value of the wrong type, a value outside an enum.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from qwq_agent.agent.messages import ToolCall, ToolSpec
from qwq_agent.protocols import ToolContext, ToolOutput
from qwq_agent.tools.convert import spec_from_bfcl
from qwq_agent.tools.registry import ToolRegistry

__all__ = ["CATEGORIES", "BfclCase", "CaseReport", "Mutation", "check_case", "load_cases", "mutations"]

# The categories whose answers are JSON values (Java/JavaScript ones hold source-code literals).
CATEGORIES = (
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
)
EXTRA_ARGUMENT = "unexpected_argument_xyz"


class BfclCase(BaseModel):
    """One case: its function definitions and the expected calls' acceptable argument values."""

    id: str
    functions: list[dict[str, Any]]
    ground_truth: list[dict[str, dict[str, list[Any]]]]


class Mutation(BaseModel):
    kind: str  # "missing", "extra", "wrong_type", "bad_enum"
    argument: str
    arguments: dict[str, Any]


class CaseReport(BaseModel):
    """Counts per check; `failures` says what went wrong (empty when all held)."""

    id: str
    counts: dict[str, int] = Field(default_factory=dict)
    failures: list[str] = Field(default_factory=list)


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def load_cases(data_dir: str | Path, categories: Iterable[str] = CATEGORIES) -> list[BfclCase]:
    """Cases from bfcl-eval's `data/` folder (`BFCL_v4_<category>.json` and `possible_answer/`)."""
    root = Path(data_dir)
    cases: list[BfclCase] = []
    for category in categories:
        questions = root / f"BFCL_v4_{category}.json"
        answers = {a["id"]: a["ground_truth"] for a in _read_jsonl(root / "possible_answer" / questions.name)}
        for q in _read_jsonl(questions):
            if q["id"] in answers:
                cases.append(BfclCase(id=q["id"], functions=q["function"], ground_truth=answers[q["id"]]))
    return cases


def _resolve(value: Any) -> Any:
    """A concrete value from an answer that may nest `{key: [acceptable values]}` inside."""
    if isinstance(value, dict):
        picked = {}
        for key, sub in value.items():
            present, v = _pick(sub) if isinstance(sub, list) else (True, _resolve(sub))
            if present:
                picked[key] = v
        return picked
    if isinstance(value, list):
        return [_resolve(v) for v in value]
    return value


def _pick(options: list[Any]) -> tuple[bool, Any]:
    """(present, value): the first acceptable value; absent when `""` (leave out) is the only one."""
    for option in options:
        if option != "":
            return True, _resolve(option)
    return False, None


def correct_arguments(answer: dict[str, list[Any]]) -> dict[str, Any]:
    """The arguments of a correct call from one ground-truth entry."""
    args = {}
    for name, options in answer.items():
        present, value = _pick(options)
        if present:
            args[name] = value
    return args


def _wrong_value(schema: dict[str, Any]) -> Any | None:
    """A value whose JSON type the schema does not allow (None when every type is allowed)."""
    kind = schema.get("type")
    if kind is None or "anyOf" in schema or "oneOf" in schema:
        return None
    kinds = set(kind if isinstance(kind, list) else [kind])
    for candidate, its in (
        ({"not": "this"}, "object"),
        ("wrong", "string"),
        ([1, 2], "array"),
        (True, "boolean"),
    ):
        if its not in kinds:
            return candidate
    return None


def mutations(spec: ToolSpec, args: dict[str, Any]) -> list[Mutation]:
    """Wrong calls made from a correct one, each with the argument its error must name."""
    props = spec.parameters.get("properties", {})
    out = [Mutation(kind="extra", argument=EXTRA_ARGUMENT, arguments={**args, EXTRA_ARGUMENT: 1})]
    for name in spec.parameters.get("required", []):
        if name in args:
            out.append(
                Mutation(
                    kind="missing", argument=name, arguments={k: v for k, v in args.items() if k != name}
                )
            )
    for name in args:
        schema = props.get(name, {})
        wrong = _wrong_value(schema)
        if wrong is not None:
            out.append(Mutation(kind="wrong_type", argument=name, arguments={**args, name: wrong}))
        enum = schema.get("enum")
        if enum and all(isinstance(v, str) for v in enum):
            out.append(
                Mutation(
                    kind="bad_enum", argument=name, arguments={**args, name: "not-" + "-".join(enum)[:40]}
                )
            )
    return out


class _SpecTool:
    """A tool that only has a spec: calling it means the registry let the arguments through."""

    uses_sandbox = False

    def __init__(self, spec: ToolSpec) -> None:
        self.spec = spec

    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        return ToolOutput(text="ok")


async def check_case(case: BfclCase) -> CaseReport:
    """Convert the case's functions and run its correct and wrong calls through a real `ToolRegistry`."""
    report = CaseReport(id=case.id)

    def count(key: str) -> None:
        report.counts[key] = report.counts.get(key, 0) + 1

    specs = {f["name"]: spec_from_bfcl(f) for f in case.functions}
    registry = ToolRegistry([_SpecTool(s) for s in specs.values()])
    for expected in case.ground_truth:
        for name, answer in expected.items():
            args = correct_arguments(answer)
            out = await registry.call(ToolCall(id="c", name=name, arguments=args))
            count("correct_total")
            if out.is_error:
                report.failures.append(
                    f"{case.id}: correct call {name}({json.dumps(args)}) rejected: {out.text}"
                )
            else:
                count("correct_ok")
            for m in mutations(specs[name], args):
                out = await registry.call(ToolCall(id="c", name=name, arguments=m.arguments))
                count(f"{m.kind}_total")
                if not out.is_error:
                    report.failures.append(
                        f"{case.id}: {m.kind} {m.argument!r} accepted: {json.dumps(m.arguments)}"
                    )
                elif f"'{m.argument}'" not in out.text and f".{m.argument}" not in out.text:
                    report.failures.append(
                        f"{case.id}: {m.kind} error does not name {m.argument!r}: {out.text}"
                    )
                else:
                    count(f"{m.kind}_ok")
    return report
