"""A recogniser for the EBNF dialect `qwq_agent.agent.constrained` writes (xgrammar's), for tests.

xgrammar is not a dependency, so the tests check what a grammar accepts with this instead: one rule per
line (`name ::= body`), alternation `|`, grouping, string literals in JSON spelling, character classes
(ranges, `^`, `\\xNN` escapes) and the quantifiers `? * + {m} {m,} {m,n}`. Every way through the grammar
is followed (sets of end positions), so ambiguity is no problem; left recursion is not supported (the
writer produces none). `xgrammar_accepts` asks the real engine as well when it is importable.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_TOKEN = re.compile(
    r"""\s*(?:
    (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<defn>::=)
  | (?P<lit>"(?:[^"\\]|\\.)*")
  | (?P<cls>\[(?:[^\]\\]|\\.)*\])
  | (?P<rep>\{\s*\d+\s*(?:,\s*\d*\s*)?\})
  | (?P<op>[()|?*+])
)""",
    re.VERBOSE,
)


@dataclass
class Grammar:
    """A parsed grammar; `accepts(text)` says whether `root` derives exactly `text`."""

    rules: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Grammar:
        grammar = cls()
        for line in text.splitlines():
            if not line.strip():
                continue
            tokens = _tokens(line)
            if len(tokens) < 2 or tokens[0][0] != "ident" or tokens[1][0] != "defn":
                raise ValueError(f"not a rule: {line!r}")
            node, end = _alternation(tokens, 2)
            if end != len(tokens):
                raise ValueError(f"trailing tokens in {line!r}")
            grammar.rules[tokens[0][1]] = node
        missing = {name for node in grammar.rules.values() for name in _refs(node)} - set(grammar.rules)
        if missing:
            raise ValueError(f"undefined rules: {sorted(missing)}")
        return grammar

    def accepts(self, text: str, rule: str = "root") -> bool:
        memo: dict[tuple[str, int], frozenset[int]] = {}
        return len(text) in self._ends(("ref", rule), text, 0, memo)

    def _ends(
        self, node: Any, text: str, pos: int, memo: dict[tuple[str, int], frozenset[int]]
    ) -> frozenset[int]:
        kind = node[0]
        if kind == "lit":
            return frozenset({pos + len(node[1])}) if text.startswith(node[1], pos) else frozenset()
        if kind == "cls":
            _, negated, ranges = node
            if pos >= len(text):
                return frozenset()
            inside = any(lo <= text[pos] <= hi for lo, hi in ranges)
            return frozenset({pos + 1}) if inside != negated else frozenset()
        if kind == "ref":
            key = (node[1], pos)
            if key not in memo:
                memo[key] = frozenset()  # a left-recursive rule would see nothing (none is written)
                memo[key] = self._ends(self.rules[node[1]], text, pos, memo)
            return memo[key]
        if kind == "alt":
            return frozenset().union(*(self._ends(n, text, pos, memo) for n in node[1]))
        if kind == "seq":
            here = frozenset({pos})
            for item in node[1]:
                here = frozenset().union(*(self._ends(item, text, p, memo) for p in here))
                if not here:
                    break
            return here
        _, inner, low, high = node  # "rep"
        out = {pos} if low == 0 else set()
        frontier, seen, count = {pos}, {pos}, 0
        while frontier and (high is None or count < high):
            count += 1
            frontier = set().union(*(self._ends(inner, text, p, memo) for p in frontier))
            if count >= low:
                out |= frontier
            if high is None:  # positions seen already add nothing new when unbounded
                frontier -= seen
                seen |= frontier
        return frozenset(out)


def _tokens(line: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(line):
        if not line[pos:].strip():
            break
        m = _TOKEN.match(line, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"cannot read {line[pos : pos + 20]!r}")
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _alternation(tokens: list[tuple[str, str]], i: int) -> tuple[Any, int]:
    seqs = []
    while True:
        seq, i = _sequence(tokens, i)
        seqs.append(seq)
        if i < len(tokens) and tokens[i] == ("op", "|"):
            i += 1
            continue
        return ("alt", seqs), i


def _sequence(tokens: list[tuple[str, str]], i: int) -> tuple[Any, int]:
    items = []
    while i < len(tokens) and tokens[i] not in (("op", "|"), ("op", ")")):
        kind, value = tokens[i]
        if kind == "ident":
            atom: Any = ("ref", value)
            i += 1
        elif kind == "lit":
            atom, i = ("lit", json.loads(value)), i + 1
        elif kind == "cls":
            atom, i = _char_class(value), i + 1
        elif (kind, value) == ("op", "("):
            atom, i = _alternation(tokens, i + 1)
            if i >= len(tokens) or tokens[i] != ("op", ")"):
                raise ValueError("unclosed group")
            i += 1
        else:
            raise ValueError(f"unexpected {value!r}")
        while i < len(tokens) and (tokens[i][0] == "rep" or tokens[i][1] in ("?", "*", "+")):
            atom = ("rep", atom, *_bounds(tokens[i][1]))
            i += 1
        items.append(atom)
    return ("seq", items), i


def _bounds(op: str) -> tuple[int, int | None]:
    if op in ("?", "*", "+"):
        return {"?": (0, 1), "*": (0, None), "+": (1, None)}[op]
    low, _, high = op.strip("{}").partition(",")
    if "," not in op:
        return int(low), int(low)
    return int(low), (int(high) if high.strip() else None)


def _char_class(text: str) -> Any:
    body = text[1:-1]
    negated = body.startswith("^")
    body = body[1:] if negated else body
    chars: list[str] = []
    i = 0
    while i < len(body):
        if body[i] == "\\":
            nxt = body[i + 1]
            if nxt == "x":
                chars.append(chr(int(body[i + 2 : i + 4], 16)))
                i += 4
            elif nxt == "u":
                chars.append(chr(int(body[i + 2 : i + 6], 16)))
                i += 6
            else:
                chars.append({"n": "\n", "t": "\t", "r": "\r"}.get(nxt, nxt))
                i += 2
        else:
            chars.append(body[i] if body[i] != "-" else "\x00-")  # a dash, marked until ranges are read
            i += 1
    ranges: list[tuple[str, str]] = []
    j = 0
    while j < len(chars):
        if j + 2 < len(chars) and chars[j + 1] == "\x00-":
            ranges.append((chars[j], chars[j + 2]))
            j += 3
        else:
            c = "-" if chars[j] == "\x00-" else chars[j]
            ranges.append((c, c))
            j += 1
    return ("cls", negated, ranges)


def _refs(node: Any) -> list[str]:
    kind = node[0]
    if kind == "ref":
        return [node[1]]
    if kind in ("alt", "seq"):
        return [name for n in node[1] for name in _refs(n)]
    if kind == "rep":
        return _refs(node[1])
    return []


def accepts(ebnf: str, text: str) -> bool:
    """Whether `ebnf`'s `root` derives `text`; checked by xgrammar too when it is importable."""
    ours = Grammar.parse(ebnf).accepts(text)
    theirs = xgrammar_accepts(ebnf, text)
    assert theirs is None or theirs == ours, f"xgrammar says {theirs}, this recogniser {ours}: {text!r}"
    return ours


def xgrammar_accepts(ebnf: str, text: str) -> bool | None:
    """xgrammar's verdict, or None when it is not installed."""
    try:
        import xgrammar
        from xgrammar.testing import _is_grammar_accept_string
    except ImportError:
        return None
    return bool(_is_grammar_accept_string(xgrammar.Grammar.from_ebnf(ebnf), text))
