"""A ledger of the candidates the reasoning weighs, and how novel the recent ones are.

Semantic circling rarely repeats sentences, but it keeps coming back to the same few candidates: the
same arithmetic expressions (often with the same wrong values), the same answer options, the same
"the answer is X" claims, with the model's own revisit markers ("wait", "let me check again", "再",
"重新") in between. Each segment's candidates are normalised (spacing, `×`/`·` → `*`, `÷` → `/`,
brackets, redundant outer parentheses) and counted; a mention is stale when its candidate had already
been mentioned twice before (a third visit). Low novelty over a window of mentions, among few distinct
candidates, with revisit markers, is the semantic loop.
"""

from __future__ import annotations

import re
from collections import Counter, deque
from fractions import Fraction

from qwq_agent.agent.loops.config import LoopDetectorConfig
from qwq_agent.agent.loops.exact import evaluate

__all__ = ["CandidateLedger", "Mention", "extract_mentions", "normalise_expression"]

Mention = tuple[str, str]  # (kind, normalised text); kinds: expr, option, claim

# A number: digits with thousands separators (`1,250`) are read whole, never as `250` after a comma.
_NUM = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"
_OP = r"[-+*/×÷·^]"
# Two or more numbers joined by operators, with optional brackets around any part, never starting inside
# a number (`1,2345`, a decimal comma `5,3`: not the number `2345` or `3`).
# Purely numeric: an expression touching a letter or `^` (`k^2 - 9`, `2x + 3`) is algebra, where
# the same sub-terms recur as the work progresses, so it is not a candidate.
#
# Inside a run of opening brackets only its first possible start is tried: every start in the run
# reaches the same text after it, so where the first fails they all fail, and trying each one again
# took 43 s on 64 KB of "(" (quadratic). The first possible start is the run's first bracket, or its
# second when a letter, digit, `^` or `.` comes before the run (the first lookbehind); the other two
# lookbehinds refuse a bracket-preceded start unless that bracket itself could not start.
_EXPR = re.compile(
    rf"(?<![\w^.])(?<!\d,)(?<!^[(\[])(?<![^\w^.][(\[])"
    rf"[(\[]*\s*{_NUM}\s*[)\]]*(?:\s*{_OP}\s*[(\[]*\s*{_NUM}\s*[)\]]*)+(?![\w^(])"
)
_SPACES = re.compile(r"\s+")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3})")
_TIGHT = re.compile(r"\d+(?:[-/]\d+)+")
_EQUALS = re.compile(r" ?= ?")
_MAX_VALUE_DIGITS = 200  # a longer number is not a hand result to hand on (and int() refuses > 4,300)
# A written result: digits with thousands separators (`1,000`) read whole, not as `1`.
_VALUE = re.compile(r"(-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?)")
# After a value, more of an expression: the number was the first term of the next step, not a result.
# Or the number is not the whole value: an exponent (`1.5e3`), a unit or variable (`5x`), a percent.
_CONTINUES = re.compile(r" ?[-+*/×÷·^] ?[\d(\[]| ?[(\[] ?\d|[eE][-+]?\d|[^\W_]|%")
_OPTION = re.compile(
    r"(?:\b(?:[Oo]ption|[Cc]hoice|[Aa]nswer(?: is)?|[Aa]nswer would be|[Ss]o it'?s)\s*\(?([A-J])\)?(?![\w'])"
    r"|\(([A-J])\)|\b([A-J]) or ([A-J])\b|选项\s*([A-J])|选\s*([A-J]))"
)
_CLAIM = re.compile(
    r"(?:[Tt]he (?:final )?answer (?:is|would be|should be)|[Aa]nswer:|答案(?:是|为|应该是))\s*\**\s*"
    r"([^\s.,;:!?。，；：！？*]{1,24})"
)
_MARKERS = re.compile(
    r"\b(?:wait|again|re-?check|re-?calculate|re-?compute|re-?count|re-?examine|re-?evaluate|"
    r"double-?check|once more|go(?:ing)? back|tried th(?:at|is)|earlier|previously|same as (?:before|above)|"
    r"reconsider)\b|等等|再|重新|之前|回到|又|还是|不对",
    re.IGNORECASE,
)


def normalise_expression(text: str) -> str:
    """Canonical form of an arithmetic expression: no spaces, `*` and `/` operators, round brackets,
    balanced, without one redundant pair around the whole."""
    s = re.sub(r"\s+", "", text).replace("×", "*").replace("·", "*").replace("÷", "/")
    s = _THOUSANDS.sub("", s)  # `1,250` is 1250
    s = s.replace("[", "(").replace("]", ")")
    # The regex may take a bracket that belongs to the surrounding text: drop unmatched ones, leading
    # "(" while they outnumber ")", then trailing ")" while those do (counted once: a loop that
    # recounted per bracket was quadratic on a long run of them).
    opens, closes = s.count("("), s.count(")")
    drop = min(len(s) - len(s.lstrip("(")), max(0, opens - closes))
    s, opens = s[drop:], opens - drop
    drop = min(len(s) - len(s.rstrip(")")), max(0, closes - opens))
    s = s[: len(s) - drop]
    if s.startswith("(") and s.endswith(")") and _wraps(s):
        s = s[1:-1]
    return s


def _identifier(raw: str) -> bool:
    """Numbers joined tight by `-` or `/` that are not arithmetic: dates, phone numbers, serials.

    Three or more of them (`2024-01-15`, `555-123-4567`, `01/15/2024`), or any zero-padded one
    (`2024-01`, `09-15`): nobody computes `2024-01-15` by hand.
    """
    if not _TIGHT.fullmatch(raw):
        return False
    parts = re.split(r"[-/]", raw)
    return len(parts) >= 3 or any(len(p) > 1 and p[0] == "0" for p in parts)


def _wraps(s: str) -> bool:
    depth = 0
    for i, ch in enumerate(s):
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and i < len(s) - 1:
            return False
    return True


def extract_mentions(text: str) -> list[Mention]:
    """Candidates named in a piece of reasoning, in order."""
    # One space per gap keeps the expression pattern linear (adjacent `\s*` would backtrack).
    text = _SPACES.sub(" ", text)
    out: list[Mention] = []
    # The value rides along for the nudge (the candidate is the expression, whatever was found). It is
    # the number that ends an `=` chain: in `2*(3*20)+1 = 2*60+1 = 121` the first number after an `=`
    # is the start of the next step, and naming `2*(3*20)+1 = 2` would put a false sum in the model's
    # mouth; the chain's earlier expressions get its final number.
    chain: list[int] = []  # expressions whose `=` led straight into the next expression
    chain_next = -1  # where that next expression must start
    for m in _EXPR.finditer(text):
        expr = normalise_expression(m.group(0))
        if not any(op in expr for op in "+-*/^") or expr.replace(".", "").isdigit():
            chain = []
            continue
        raw = m.group(0)
        if _identifier(raw.strip()):
            chain = []
            continue
        if m.start() + len(raw) - len(raw.lstrip()) != chain_next:
            chain = []
        out.append(("expr", expr))
        eq = _EQUALS.match(text, m.end())
        if eq is None:
            chain = []
            continue
        v = _VALUE.match(text, eq.end())
        if v is not None and not _CONTINUES.match(text, v.end()):
            value = v.group(1)
            out[-1] = ("expr", expr + "=" + value)
            # A chain's earlier steps get its number only where it is their value: a running total
            # (`3 * 4 = 12 + 5 = 17`) is not a chain of equal things.
            exact = Fraction(value.replace(",", "")) if len(value) <= _MAX_VALUE_DIGITS else None
            for j in chain:
                if exact is not None and evaluate(out[j][1]) == exact:
                    out[j] = ("expr", out[j][1] + "=" + value)
            chain = []
        else:
            chain.append(len(out) - 1)
            chain_next = eq.end()
    for m in _OPTION.finditer(text):
        for letter in m.groups():
            if letter:
                out.append(("option", letter))
    for m in _CLAIM.finditer(text):
        claim = m.group(1)
        if not any(ch.isdigit() for ch in claim) and not (len(claim) == 1 and claim.isupper()):
            continue  # "the answer is likely ..." names no candidate
        # "the answer is B" is an option, whatever way it was named.
        out.append(
            ("option", claim) if len(claim) == 1 and claim in "ABCDEFGHIJ" else ("claim", claim.lower())
        )
    return out


def count_markers(text: str) -> int:
    """Revisit markers: the model saying it is going back over something."""
    return len(_MARKERS.findall(text))


class CandidateLedger:
    """Counts candidate mentions and keeps a window of recent ones for the novelty signal."""

    def __init__(self, config: LoopDetectorConfig) -> None:
        self.config = config
        self.counts: Counter[Mention] = Counter()
        self.values: dict[str, str] = {}  # last value the reasoning gave each expression
        self._window: deque[tuple[Mention, bool]] = deque()
        self._stale = 0
        self._markers: deque[tuple[int, int]] = deque()  # (mention count at the time, markers)
        self._marker_sum = 0
        self._covered = 0  # mentions in the segments `_markers` holds
        self.total_stale = 0

    def add(self, mentions: list[Mention], markers: int) -> int:
        """Record one segment's mentions and markers; return how many mentions were stale."""
        cfg = self.config
        stale_here = 0
        for mention in mentions:
            kind, text = mention
            if kind == "expr":
                expr, _, value = text.partition("=")
                if value:
                    self.values[expr] = value
                mention = (kind, expr)
            stale = self.counts[mention] >= cfg.revisit_visits - 1
            self.counts[mention] += 1
            self._window.append((mention, stale))
            self._stale += stale
            stale_here += stale
            if len(self._window) > cfg.ledger_window:
                self._stale -= self._window.popleft()[1]
        self.total_stale += stale_here
        # Markers are kept per segment, for the stretch of text the mention window covers.
        self._markers.append((len(mentions), markers))
        self._marker_sum += markers
        self._covered += len(mentions)
        while self._markers and self._covered - self._markers[0][0] >= cfg.ledger_window:
            n, k = self._markers.popleft()
            self._covered -= n
            self._marker_sum -= k
        return stale_here

    def clear_window(self) -> None:
        """Start the novelty window afresh (after a signal), keeping the counts."""
        self._window.clear()
        self._stale = 0
        self._markers.clear()
        self._marker_sum = self._covered = 0

    @property
    def stale_share(self) -> float:
        """Share of the mention window that were third-or-later mentions (0 until it fills)."""
        n = len(self._window)
        return self._stale / n if n >= self.config.ledger_window else 0.0

    def distinct(self) -> int:
        return len({m for m, _ in self._window})

    def circling(self) -> bool:
        """Few candidates, mostly revisited, and the model saying it goes back over them."""
        cfg = self.config
        return (
            self.stale_share >= cfg.ledger_stale_threshold
            and cfg.ledger_min_distinct <= self.distinct() <= cfg.ledger_max_distinct
            and self._marker_sum >= cfg.ledger_min_markers
        )

    def top(self, n: int = 4) -> list[str]:
        """The most revisited candidates in the window, most frequent first, for the nudge."""
        recent = Counter(m for m, _ in self._window)
        ranked = sorted(recent, key=lambda m: (-self.counts[m], -recent[m]))
        return [self._describe(m) for m in ranked[:n]]

    def _describe(self, mention: Mention) -> str:
        kind, text = mention
        if kind == "expr":
            return f"{text} = {self.values[text]}" if text in self.values else text
        return _describe(mention)


def _describe(mention: Mention) -> str:
    kind, text = mention
    if kind == "option":
        return f"option {text}"
    return f"the answer {text}"
