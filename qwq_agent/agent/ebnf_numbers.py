"""Grammar expressions (xgrammar EBNF) for JSON numbers: integers within any bounds, and numbers.

Integers are spelt as `json.dumps` spells them (no leading zeros, no `+`, no exponent). A bounded
range is written digit by digit, as regular expressions for numeric ranges are, so its size grows with
the number of digits of its bounds, not with its width: `1..500` and `0..10**18` are a few alternatives.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["INTEGER", "NONNEGATIVE_NUMBER", "NUMBER", "POSITIVE_NUMBER", "integer_bounds", "integer_range"]

_FRACTION = '( "." [0-9]+ )?'
_EXPONENT = "( [eE] [-+]? [0-9]+ )?"
INTEGER = '( "-"? ( "0" | [1-9] [0-9]* ) )'
NUMBER = f'( "-"? ( "0" | [1-9] [0-9]* ) {_FRACTION} {_EXPONENT} )'
NONNEGATIVE_NUMBER = f'( ( "0" | [1-9] [0-9]* ) {_FRACTION} {_EXPONENT} )'
# Greater than zero: a non-zero digit somewhere in the mantissa (an exponent cannot make it zero).
POSITIVE_NUMBER = f'( ( [1-9] [0-9]* {_FRACTION} | "0." [0-9]* [1-9] [0-9]* ) {_EXPONENT} )'


def integer_bounds(schema: dict[str, Any]) -> tuple[int | None, int | None]:
    """The smallest and largest integers `schema`'s bounds allow (None: unbounded on that side).

    Takes fractional bounds (`minimum: 0.5` allows 1, not 0) and draft-4's boolean
    `exclusiveMinimum`/`exclusiveMaximum` (modifiers of `minimum`/`maximum`) as well as 2020-12's numbers.
    """
    low: int | None = None
    high: int | None = None
    minimum, maximum = _number(schema.get("minimum")), _number(schema.get("maximum"))
    ex_min, ex_max = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if minimum is not None:
        low = (
            math.floor(minimum) + 1
            if ex_min is True and minimum == math.floor(minimum)
            else math.ceil(minimum)
        )
    if maximum is not None:
        high = (
            math.ceil(maximum) - 1
            if ex_max is True and maximum == math.ceil(maximum)
            else math.floor(maximum)
        )
    if (ex := _number(ex_min)) is not None:
        low = max(low, math.floor(ex) + 1) if low is not None else math.floor(ex) + 1
    if (ex := _number(ex_max)) is not None:
        high = min(high, math.ceil(ex) - 1) if high is not None else math.ceil(ex) - 1
    return low, high


def _number(value: Any) -> float | int | None:
    """A bound's value; None for none, a boolean (draft-4's modifier) or something not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if isinstance(value, int) or math.isfinite(value) else None


def integer_range(low: int | None, high: int | None) -> str | None:
    """An expression for the integers from `low` to `high` (None: unbounded); None when there are none."""
    if low is not None and high is not None and low > high:
        return None
    parts = []
    if low is None or low < 0:
        largest_negative = -1 if high is None or high >= 0 else high
        parts.append(f'"-" {_naturals(-largest_negative, None if low is None else -low)}')
    if high is None or high >= 0:
        parts.append(_naturals(max(low, 0) if low is not None else 0, high))
    return parts[0] if len(parts) == 1 else "( " + " | ".join(parts) + " )"


def _naturals(low: int, high: int | None) -> str:
    """The integers from `low` >= 0 to `high` (None: unbounded), in decimal without leading zeros."""
    alternatives = []
    shortest = len(str(low))
    longest = len(str(high)) if high is not None else shortest
    for n in range(shortest, longest + 1):
        lo = low if n == shortest else 10 ** (n - 1)
        hi = high if high is not None and n == longest else 10**n - 1
        alternatives.append(_same_length(str(lo), str(hi)))
    if high is None:  # every number with more digits than `low` is larger
        alternatives.append(f"[1-9] [0-9]{{{shortest},}}")
    return alternatives[0] if len(alternatives) == 1 else "( " + " | ".join(alternatives) + " )"


def _same_length(lo: str, hi: str) -> str:
    """The digit strings of `lo`'s length from `lo` to `hi` (`lo <= hi`, both that long)."""
    if lo == hi:
        return f'"{lo}"'
    common = 0
    while lo[common] == hi[common]:
        common += 1
    prefix = f'"{lo[:common]}" ' if common else ""
    lo, hi = lo[common:], hi[common:]
    rest = len(lo) - 1
    tail = f" [0-9]{{{rest}}}" if rest else ""
    # Three kinds of first digit: lo's (then at least lo's tail), those between (then any tail), hi's
    # (then at most hi's tail). lo's and hi's join the middle when their tails are the full range.
    first = int(lo[0]) if lo[1:] == "0" * rest else int(lo[0]) + 1
    last = int(hi[0]) if hi[1:] == "9" * rest else int(hi[0]) - 1
    alternatives = []
    if first > int(lo[0]):
        alternatives.append(f'"{lo[0]}" {_same_length(lo[1:], "9" * rest)}')
    if first <= last:
        alternatives.append(_digit(first, last) + tail)
    if last < int(hi[0]):
        alternatives.append(f'"{hi[0]}" {_same_length("0" * rest, hi[1:])}')
    body = alternatives[0] if len(alternatives) == 1 else "( " + " | ".join(alternatives) + " )"
    return prefix + body


def _digit(first: int, last: int) -> str:
    return f'"{first}"' if first == last else f"[{first}-{last}]"
