"""Token counts a server reports, made safe to add up.

Budgets add these counts run-long (`BudgetTracker.account`), so one bad value would poison a whole
unattended run: a negative `completion_tokens` from a broken proxy or a hostile endpoint would quietly
give back generated-token budget, text or a float `inf` would raise out of the client. A count that is
not a finite, non-negative number is read as 0, and what the client counted itself (the output ids it
received) is a floor the server cannot talk it below.
"""

from __future__ import annotations

import math

__all__ = ["MAX_COUNT", "server_count"]

MAX_COUNT = 10**9
"""More tokens than any context holds: a larger count is a lie, not a measurement."""


def server_count(value: object, *, floor: int = 0) -> int:
    """`value` as a token count in [floor, MAX_COUNT]; anything that is not a finite number >= 0 reads as 0."""
    number: float = 0.0
    if isinstance(value, int) and not isinstance(value, bool):
        number = min(value, MAX_COUNT)  # a JSON integer of any length: float() of it could overflow
    elif isinstance(value, float | str):
        try:
            number = float(value)
        except ValueError:
            number = 0.0
    n = int(min(number, MAX_COUNT)) if math.isfinite(number) and number > 0 else 0
    return max(n, floor)
