"""Arithmetic the model works out by hand in its reasoning, checked exactly as it streams.

QwQ computes by hand and trusts what it wrote: a slip (`17 * 24 = 418`) sends the reasoning down a
wrong road, and a loop recomputes the same wrong value again and again. Each `expression = value`
written in plain numbers is evaluated exactly (fractions, no `eval`); a value that is not what the
expression gives, at the precision it was written with, is a slip. Anything ambiguous is skipped rather
than judged: expressions touching letters, functions, units, percentages, a unary minus, a value that
goes on (`= 3.98 * 10^14`, `= 6 + 4`), integer division written as a quotient, modular or other-base
notation right at the computation (`= 1 (mod 7)`, `= 1000 in binary`), a value that is right modulo
the n or in the base n its paragraph names (`modulo 7 ... 3^2 = 2`: right there; a paragraph that only
mentions "binary search" or a "residue" hides nothing), a product of measured (decimal) quantities
rounded to the significant figures written (`9.8 * 15.3 = 150`). A false alarm
would put a wrong correction into the model's own voice, so the checker only speaks when sure.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from qwq_agent.agent.loops.exact import evaluate
from qwq_agent.agent.loops.ledger import normalise_expression

__all__ = ["HandArithmetic", "Slip", "evaluate", "find_slips"]  # evaluate: re-exported from loops.exact

# Found without a backtracking pattern (hostile text such as 2,000 `(` then 2,000 spaces made one take
# 36 s): from each `=`, walk back over the characters an expression is made of, never past the
# previous `=` (so every character is walked at most once), then check the shape token by token.
_EXPR_CHARS = frozenset("0123456789.+-*/×÷·^()[] \t")
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[-+*/×÷·^]|[(\[]|[)\]]|[ \t]+")
_OPS = frozenset("-+*/×÷·^")
# The written value: thousands separators and a fraction are part of it, so `10^6 = 1,000,000` and
# `3/6 = 1/2` are read whole.
# Bounded: a value of more than ~40 digits is not hand arithmetic (and `Fraction` refuses 4,300).
# A decimal or a fraction of integers, not both (`1.5/2` is not a value to judge).
_VALUE = re.compile(r"[ \t]?(-?(?:\d{1,3}(?:,\d{3}){1,12}|\d{1,40})(?:\.\d{1,20}|/\d{1,20})?)(?![\d.,/]\d)")
# What may follow a value for it to be the whole value: the end, a space or punctuation that ends it,
# never an operator, a digit, a letter glued to it, `%`, `^`, `e5`, `!`.
# A `?` after it is the model doubting its own value, not a slip to correct.
_AFTER_OK = re.compile(r"(?:$|[\s,;:.。，；：、)\]!！](?![\d]))")
# `= 0.666...`: written as truncated, not judged; an operator after it: the value goes on.
_OPERATOR_AFTER = re.compile(r"\s*(?:[-+*/×÷·^%!…]|\.\.|\\times|\\cdot|x\s*10)")
_RANGE = re.compile(r"\d+-\d+")
_MOD = re.compile(r"mod|≡|\\equiv|同余|base|binary|octal|hex|进制", re.IGNORECASE)
# A modulus the paragraph of a computation names, before it (`The powers of 3 modulo 7 cycle: 3^1 = 3,
# 3^2 = 2, ...`) or in the sentence after it: `mod 7`, `modulo 7`, `(mod 7)`, `\pmod{7}`, `Z/7`, `模 7`.
# A word alone ("modular design", "the residue") names no modulus: the computation is judged in decimal.
_MODULUS = re.compile(
    r"\bmod(?:ulo|ulus)?\s*\{?\s*(\d{1,9})\b|\\[pb]mod\s*\{?\s*(\d{1,9})\b|(?:\bZ|ℤ)\s*(?:/|_\{?)\s*(\d{1,9})\b"
    r"|模\s*(\d{1,9})",
    re.IGNORECASE,
)
# A base the paragraph names (`in base 5`, `binary`, `八进制` written `8进制`). "Binary search" names base 2
# too, but decimal numbers are not binary ones: only a value right in that base is left alone.
_BASE = re.compile(
    r"\bbase[- ]?(\d{1,2})\b|\b(binary)\b|\b(octal)\b|\b(hexadecimal)\b|(\d{1,2})\s*进制", re.IGNORECASE
)
_BASE_WORDS = {"binary": 2, "octal": 8, "hexadecimal": 16}
_CONTEXT_CHARS = 400  # how far back the paragraph of a computation is read for a modulus (~100 tokens)
_PARAGRAPH = re.compile(r"\n[ \t]*\n")
_MAX_CHARS = 200  # longer expressions are not hand arithmetic worth judging
_SELF_FIX_CHARS = 300  # the right value written this soon after the slip: corrected, no hint


@dataclass(frozen=True)
class Slip:
    """`written` (`17*24 = 418`) is not what the expression gives (`correct`, as the model would write it)."""

    expression: str
    written: str
    correct: str

    def __str__(self) -> str:
        return f"{self.expression} = {self.written}"


def _shown(value: Fraction, like: str) -> str:
    """`value` written like `like`: an integer when exact, a fraction for a fraction, else with `like`'s
    decimals (4 for an integer). Exact integer arithmetic: no float, whatever the size."""
    if value.denominator == 1:
        return str(value.numerator)
    if "/" in like:
        return f"{value.numerator}/{value.denominator}"
    decimals = len(like.split(".")[1]) if "." in like else 4
    scaled = math.floor(abs(value) * 10**decimals + Fraction(1, 2))  # half up, as written by hand
    whole, frac = divmod(scaled, 10**decimals)
    text = ("-" if value < 0 else "") + f"{whole}.{frac:0{decimals}d}"
    return text.rstrip("0").rstrip(".") if "." not in like else text


def _agrees(value: Fraction, written: str, expr: str) -> bool:
    if "/" in written:
        num, den = written.split("/")
        return int(den) != 0 and Fraction(int(num.replace(",", "")), int(den)) == value
    stated = Fraction(written.replace(",", ""))
    if stated == value:
        return True
    decimals = len(written.split(".")[1]) if "." in written else 0
    if decimals and abs(value - stated) < Fraction(1, 10**decimals):
        return True  # rounded or cut to the digits written (`2/3 = 0.666`, `= 0.667`)
    if (decimals or "." in expr) and abs(value - stated) <= abs(value) / 10_000:
        return True  # a rounded operand carried along (`36 * 365.06 = 13142.28`): within 0.01%
    if not decimals and "." in expr and _rounded_to_figures(value, written, expr):
        return True  # measured (decimal) data, the result rounded to the figures written
    if not decimals and "/" in expr and value.denominator != 1:
        # An integer written for a quotient that is not one: integer division, rounding or a
        # remainder to come ("7/2 = 3 remainder 1"); not judged.
        return True
    return False


def _paragraph_around(text: str, start: int, end: int) -> str:
    """The paragraph around a computation: back to its start (at most `_CONTEXT_CHARS`) and on to its end
    (at most `_SELF_FIX_CHARS`, what is known when it is judged), so the outcome is the same however the
    stream was cut. The computation itself is left out (a space stands for it)."""
    back = text[max(0, start - _CONTEXT_CHARS) : start]
    breaks = list(_PARAGRAPH.finditer(back))
    if breaks:
        back = back[breaks[-1].end() :]
    ahead = text[end : end + _SELF_FIX_CHARS]
    brk = _PARAGRAPH.search(ahead)
    if brk is not None:
        ahead = ahead[: brk.start()]
    return back + " " + ahead


def _right_in_context(text: str, start: int, end: int, expr: str, value: Fraction, written: str) -> bool:
    """Whether a value that is wrong in decimal is right modulo a modulus, or in a base, that the
    computation's paragraph names (`3^2 = 2` after "modulo 7", `101 + 11 = 1000` in binary)."""
    around = _paragraph_around(text, start, end)
    try:
        mine = Fraction(written.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return False
    if value.denominator == 1 and mine.denominator == 1:
        for m in _MODULUS.finditer(around):
            modulus = int(next(g for g in m.groups() if g is not None))
            if modulus > 1 and (value.numerator - mine.numerator) % modulus == 0:
                return True
    for m in _BASE.finditer(around):
        found = next(g for g in m.groups() if g is not None)
        base = _BASE_WORDS.get(found.lower()) or int(found)
        if 2 <= base <= 10 and _in_base(expr, written, base):
            return True
    return False


def _in_base(expr: str, written: str, base: int) -> bool:
    """Whether `expr = written`, every number read as an integer in `base` (2 to 10), holds."""
    numbers = re.findall(r"[\d.,/]+", written) + re.findall(r"\d+(?:\.\d+)?", expr)
    if any(not n.isdigit() or any(int(d) >= base for d in n) for n in numbers):
        return False
    converted = re.sub(r"\d+", lambda m: str(int(m.group(), base)), expr)
    return evaluate(converted) == int(written, base)


def _figures(number: str) -> tuple[int, int]:
    """Significant figures of a written number and the power of ten of its last one.

    `150` -> (2, 1), `177` -> (3, 0), `9.8` -> (2, -1), `0.05` -> (1, -2): an integer's trailing zeros are
    not counted (they may be rounding), a decimal's are.
    """
    digits = number.lstrip("-").replace(",", "")
    whole, _, frac = digits.partition(".")
    if frac:
        significant = (whole + frac).lstrip("0")
        return len(significant), -len(frac)
    kept = whole.rstrip("0")
    return len(kept.lstrip("0")), len(whole) - len(kept)


def _rounded_to_figures(value: Fraction, written: str, expr: str) -> bool:
    """`written` is `value` rounded to the significant figures it shows (`9.8 * 15.3 = 150`,
    `3.14 * 7.5 * 7.5 = 177`): a product of measured quantities is written to their precision.

    Only where the exact value has more decimals than any operand (149.94 from 9.8 and 15.3: digits the
    data cannot vouch for), and to no fewer figures than the least precise operand: `7 * 1.5 = 11` drops
    a digit the data gives (10.5), and `9.8 * 15.3 = 100` is rounder than the data; both are slips.
    """
    figures, place = _figures(written)
    operands = re.findall(r"\d+(?:\.\d+)?", expr)
    if figures == 0 or not operands:
        return False
    data_decimals = max(len(op.partition(".")[2]) for op in operands)
    if value * 10**data_decimals == int(value * 10**data_decimals):
        return False  # the exact value is as precise as the data: nothing to round away
    if figures < min(_figures(op)[0] or 1 for op in operands):
        return False  # rounder than the data allows
    return abs(value - Fraction(written.replace(",", ""))) <= Fraction(10) ** place / 2


def _is_range(raw: str) -> bool:
    """`6-10` written tight, low to high: a range of cases, not a subtraction."""
    if not _RANGE.fullmatch(raw.strip()):
        return False
    low, high = raw.strip().split("-")
    return int(low) < int(high)


def _well_formed(raw: str) -> bool:
    """Numbers joined by operators, brackets around any part, at least one operator: `2 * (3 + 4)`."""
    tokens = [t for t in _TOKEN.findall(raw) if not t.isspace()]
    if "".join(tokens) != raw.replace(" ", "").replace("\t", ""):
        return False
    want_number, numbers = True, 0
    for tok in tokens:
        if tok in "([":
            if not want_number:
                return False  # `(2+1)(2+1)`: implicit multiplication is not read
        elif tok in ")]":
            if want_number:
                return False
        elif tok in _OPS:
            if want_number:
                return False  # two operators in a row, or a leading sign
            want_number = True
        elif want_number:
            want_number, numbers = False, numbers + 1
        else:
            return False  # two numbers in a row: a mixed number `9 14/15`
    return numbers >= 2 and not want_number


Written = tuple[int, str, str, int, int]  # expression start, expression, value, value end, `=` position


def _written(text: str, lo: int = 0, hi: int | None = None) -> list[Written]:
    """Each `expression = value` of `text` whose `=` lies in `[lo, hi)`."""
    found: list[Written] = []
    hi = len(text) if hi is None else hi
    floor = text.rfind("=", 0, lo) + 1
    eq = text.find("=", lo, hi)
    while eq >= 0:
        j, low = eq, floor
        nxt = text.find("=", eq + 1, hi)
        floor = eq + 1
        if text[eq - 1 : eq] in ("<", ">", "!", "=") or text[eq + 1 : eq + 2] == "=":
            eq = nxt
            continue  # `<=`, `==`: a comparison
        while j > low and eq - j < _MAX_CHARS and text[j - 1] in _EXPR_CHARS:
            j -= 1
        start = j
        while start < eq and not (text[start].isdigit() or text[start] in "(["):
            start += 1
        raw = text[start:eq].rstrip()
        if not raw or eq - j >= _MAX_CHARS or not _well_formed(raw):
            eq = nxt
            continue
        prev = text[start - 1 : start]
        if prev and (prev.isalnum() or prev in "_^.,/:'\"#"):
            eq = nxt
            continue  # `x2 + 3`, `1,000 * 3`, `10:30 - 2`: the expression starts before what was walked
        value = _VALUE.match(text, eq + 1)
        if value is None:
            eq = nxt
            continue
        found.append((start, raw, value.group(1), value.end(1), eq))
        eq = nxt
    return found


def find_slips(text: str) -> list[Slip]:
    """The hand computations of `text` whose written value is not what the expression gives."""
    try:
        return _judge(text, _written(text))
    except (ArithmeticError, ValueError, RecursionError):
        return []


def _judge(text: str, written: list[Written]) -> list[Slip]:
    slips: list[Slip] = []
    for item in written:
        try:
            slip = _judge_one(text, item)
        except (ArithmeticError, ValueError, RecursionError):
            slip = None  # one computation nothing here was built for: skipped, the others still judged
        if slip is not None:
            slips.append(slip)
    return slips


def _judge_one(text: str, item: Written) -> Slip | None:
    start, raw, value_text, end, _eq = item
    before = text[max(0, start - 8) : start]
    after = text[end : end + 12]
    if not _AFTER_OK.match(after) or _OPERATOR_AFTER.match(after) or _MOD.search(before + after):
        return None
    # A sign, an operator or a function name right before it: the expression is part of a larger
    # one (`-3 * 4`, `sqrt(12 * 5)`, `2 + 3 * 4` cut short) that was not taken whole. A number
    # right before it: a mixed number (`9 14/15`). LaTeX around it (`-27 \times 1^2`).
    lead = before.rstrip()
    if lead and (
        lead[-1] in "-+*/×÷·^−√∛<>≈~)]"
        or lead[-1].isdigit()
        or (lead[-1] in "([" and lead[:-1][-1:].isalnum())
        or "\\" in before
    ):
        return None
    expr = normalise_expression(raw)
    if expr.count("/") >= 2 or expr.count("^") >= 2 or _is_range(raw):
        # `14/10 ÷ 68/10` is a fraction of fractions, `2^3^2` a tower read either way by hand, `6-10`
        # a range of cases.
        return None
    value = evaluate(expr)
    if value is None or _agrees(value, value_text, expr):
        return None
    if _right_in_context(text, start, end, expr, value, value_text):
        return None
    if after.startswith(",") and len(str(abs(int(value)))) > len(value_text.lstrip("-")):
        return None  # `1344*70 = 93,` a number cut at its thousands comma
    correct = _shown(value, value_text)
    if correct in text[end : end + _SELF_FIX_CHARS]:
        return None  # the model writes the right value soon after: it corrected itself
    return Slip(expr, value_text, correct)


class HandArithmetic:
    """Checks the hand computations of a reasoning fed piece by piece, however it was cut.

    A computation is judged once `_SELF_FIX_CHARS` of text follow its value, so that a model which
    writes `17 * 24 = 418` and then "no, 408" has corrected itself and gets no hint, and so that the
    outcome depends on the text only, not on where the pieces were cut (a piece may end in the middle
    of a number). The text still needed is carried from one piece to the next.
    """

    # The paragraph before an expression (`_CONTEXT_CHARS`), the expression, its value and what follows.
    _CARRY = _CONTEXT_CHARS + _SELF_FIX_CHARS + _MAX_CHARS + 128

    def __init__(self) -> None:
        self.slips: list[Slip] = []  # confirmed: the text after each did not correct it
        self.checked = 0  # hand computations judged so far
        self._buf = ""
        self._offset = 0  # position of `_buf` in the whole text
        self._judged_to = -1  # the position of the last `=` judged
        self._undecided = False  # the carry holds an `=` not decided yet

    def add(self, text: str) -> list[Slip]:
        """Take the next piece of reasoning; return the slips it confirmed (also kept in `slips`)."""
        buf = self._buf + text
        if not self._undecided and "=" not in text:  # nothing to judge: only keep the carry
            if len(buf) > 2 * self._CARRY:  # trimmed now and then, not on every piece
                keep = len(buf) - self._CARRY
                self._buf, self._offset = buf[keep:], self._offset + keep
            else:
                self._buf = buf
            return []
        # Every `=` this far from the end is decided now, judged or not: what follows it is all here
        # (a value is at most ~100 characters), so a later piece, or less context, cannot change it.
        limit = len(buf) - _SELF_FIX_CHARS - 100
        done_from = self._judged_to - self._offset
        first = buf.find("=", max(0, done_from + 1))
        if first < 0 or first >= limit:  # nothing new to decide yet: only keep the carry
            self._buf, self._undecided = buf, first >= 0
            if len(buf) > 2 * self._CARRY:
                keep = len(buf) - self._CARRY
                self._buf, self._offset = buf[keep:], self._offset + keep
            return []
        ready = _written(buf, first, max(first, limit))
        self._judged_to = self._offset + buf.rfind("=", 0, limit)
        found: list[Slip] = []
        try:
            found = _judge(buf, ready)
        except (ArithmeticError, ValueError, RecursionError):
            found = []  # a computation nothing here was built for is not judged; the reasoning goes on
        self.checked += len(ready)
        keep = max(0, len(buf) - self._CARRY)
        self._buf, self._offset = buf[keep:], self._offset + keep
        self._undecided = "=" in self._buf[max(0, self._judged_to - self._offset + 1) :]
        self.slips.extend(found)
        return found
