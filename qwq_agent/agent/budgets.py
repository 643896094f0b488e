"""Run budgets: limits that end a run with a clear status instead of an exception.

The wall-time budget becomes one `Deadline` (`BudgetTracker.deadline`), computed from the run's start;
the loop hands it down and every layer below clamps its own limits to it.
"""

from __future__ import annotations

import time
from collections.abc import Collection

from pydantic import BaseModel, ConfigDict, Field

from qwq_agent.deadline import Deadline
from qwq_agent.protocols import Usage

__all__ = ["Budget", "BudgetTracker", "Deadline"]


class Budget(BaseModel):
    """Limits of one run; `None` means unlimited.

    `max_tool_s` bounds the sum of the tool calls' durations (`BudgetTracker.tool_s`), not the wall
    time spent in tools: calls that run at once spend it together, each second of each running call
    counting as it passes. When the calls that ended plus the elapsed time of those still running
    reach it, the running calls are stopped (each one's observation says the tool-time budget ran
    out), calls still waiting for the sandbox do not start, and the run ends `budget_exceeded`. A call
    that runs alone gets what is left as its deadline and ends there, as any call at its deadline.
    """

    # A misspelt limit (`max_wall=60`) is an error: ignored, the run got the default in its place. A
    # limit is a finite number of at least 0 (None for none): NaN compares false with everything, so
    # `max_wall_s=nan` ended runs in a bare TimeoutError and `max_tool_s=nan` refused every tool call.
    model_config = ConfigDict(extra="forbid")

    max_steps: int | None = Field(default=30, ge=0)
    max_generated_tokens: int | None = Field(default=200_000, ge=0)
    max_prompt_tokens: int | None = Field(default=None, ge=0)
    max_wall_s: float | None = Field(default=1800.0, ge=0.0, allow_inf_nan=False)
    max_tool_s: float | None = Field(default=900.0, ge=0.0, allow_inf_nan=False)


class BudgetTracker(BaseModel):
    """What a run has used so far, checked against its `Budget`."""

    budget: Budget
    steps: int = 0
    generated_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    tool_s: float = 0.0
    started: float = Field(default_factory=time.monotonic)

    @property
    def deadline(self) -> Deadline:
        """When the wall-time budget runs out (computed from the start, so it never drifts)."""
        limit = self.budget.max_wall_s
        return Deadline(at=None if limit is None else self.started + limit)

    @property
    def wall_s(self) -> float:
        return time.monotonic() - self.started

    def exceeded(self, only: Collection[str] | None = None) -> tuple[str, float, float] | None:
        """The first budget used up, as (name, limit, used), or None; `only`: of those budgets."""
        b = self.budget
        checks = (
            ("steps", b.max_steps, self.steps),
            ("generated_tokens", b.max_generated_tokens, self.generated_tokens),
            ("prompt_tokens", b.max_prompt_tokens, self.prompt_tokens),
            ("wall_s", b.max_wall_s, self.wall_s),
            ("tool_s", b.max_tool_s, self.tool_s),
        )
        for name, limit, used in checks:
            if limit is not None and used >= limit and (only is None or name in only):
                return name, float(limit), float(used)
        return None

    def left(self, name: str) -> float | None:
        """What is left of `wall_s` or `generated_tokens`; None when it is unlimited. (What is left of
        `tool_s` counts the calls still running: the dispatcher's tool clock knows it, this does not.)"""
        b = self.budget
        limit, used = {
            "wall_s": (b.max_wall_s, self.wall_s),
            "generated_tokens": (b.max_generated_tokens, self.generated_tokens),
        }[name]
        return None if limit is None else max(0.0, limit - used)

    def account(self, usage: Usage) -> None:
        """Add one model call's token usage (a negative count, which no client sends, adds nothing)."""
        self.generated_tokens += max(0, usage.completion_tokens)
        self.prompt_tokens += max(0, usage.prompt_tokens)
        self.cached_tokens += max(0, usage.cached_tokens)

    def totals(self) -> dict[str, float]:
        return {
            "steps": self.steps,
            "generated_tokens": self.generated_tokens,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "tool_s": round(self.tool_s, 4),
            "wall_s": round(self.wall_s, 4),
        }
