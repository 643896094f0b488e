"""Exact values of plain arithmetic written by hand (`2*(3*4)*5+1`): fractions, no `eval`, bounded.

Shared by the hand-arithmetic checker (is a written value right?) and the candidate ledger (does an
`=` chain's final number belong to each of its steps?).
"""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = ["evaluate"]

_MAX_CHARS = 200  # longer expressions are not hand arithmetic worth judging
_MAX_EXPONENT = 64
_MAX_BITS = 665  # ~200 digits: results past this are skipped (hostile `9^9^9` cannot blow up)


class _Skip(Exception):
    """The expression is not one to judge."""


def evaluate(expr: str) -> Fraction | None:
    """The exact value of a normalised expression (`2*(3*4)*5+1`), or None when not plain arithmetic."""
    if len(expr) > _MAX_CHARS:
        return None
    tokens = re.findall(r"\d+(?:\.\d+)?|[-+*/^()]", expr)
    if "".join(tokens) != expr:
        return None
    try:
        value, rest = _sum(tokens, 0)
    except (_Skip, ZeroDivisionError, IndexError):
        return None
    return value if rest == len(tokens) else None


def _bounded(value: Fraction) -> Fraction:
    if value.numerator.bit_length() > _MAX_BITS or value.denominator.bit_length() > _MAX_BITS:
        raise _Skip  # far past hand arithmetic (`999^64 * 9…9`): not judged, and no float overflow later
    return value


def _sum(t: list[str], i: int) -> tuple[Fraction, int]:
    value, i = _product(t, i)
    while i < len(t) and t[i] in "+-":
        op = t[i]
        rhs, i = _product(t, i + 1)
        value = _bounded(value + rhs if op == "+" else value - rhs)
    return value, i


def _product(t: list[str], i: int) -> tuple[Fraction, int]:
    value, i = _power(t, i)
    while i < len(t) and t[i] in "*/":
        op = t[i]
        rhs, i = _power(t, i + 1)
        value = _bounded(value * rhs if op == "*" else value / rhs)
    return value, i


def _power(t: list[str], i: int) -> tuple[Fraction, int]:
    base, i = _atom(t, i)
    if i < len(t) and t[i] == "^":
        exp, i = _power(t, i + 1)  # right-associative, as written by hand
        if exp.denominator != 1 or abs(exp) > _MAX_EXPONENT:
            raise _Skip
        if max(base.numerator.bit_length(), base.denominator.bit_length()) * abs(exp) > 2 * _MAX_BITS:
            raise _Skip  # checked before it is computed
        base = base ** int(exp)
    return _bounded(base), i


def _atom(t: list[str], i: int) -> tuple[Fraction, int]:
    if t[i] == "(":
        value, i = _sum(t, i + 1)
        if i >= len(t) or t[i] != ")":
            raise _Skip
        return value, i + 1
    if t[i][0].isdigit():
        return Fraction(t[i]), i + 1
    raise _Skip  # a unary sign or a stray operator: not written the way a slip is judged
