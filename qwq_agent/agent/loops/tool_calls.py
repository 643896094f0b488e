"""Repeated tool calls: the same call (and the same result) coming back again and again."""

from __future__ import annotations

import json
from collections import deque
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from qwq_agent.agent.messages import ToolCall

__all__ = [
    "CONTENTLESS_OBSERVATIONS",
    "RepetitionConfig",
    "RepetitionSignal",
    "ToolCallRepetitionDetector",
    "canonical_call",
]


class RepetitionConfig(BaseModel):
    """Thresholds of `ToolCallRepetitionDetector`; counts are tool-call steps."""

    model_config = ConfigDict(extra="forbid")  # a misspelt threshold is an error, not the default

    identical_calls_in_a_row: int = Field(
        default=3, ge=2, description="Same tool and same (canonicalised) arguments this many times in a row."
    )
    same_call_same_result: int = Field(
        default=3,
        ge=2,
        description="The same call returning the same observation this many times in the window.",
    )
    identical_observations_in_a_row: int = Field(
        default=4,
        ge=2,
        description="The same observation text this many times in a row, whatever the calls; an "
        "observation that says nothing (`CONTENTLESS_OBSERVATIONS`) is not counted and ends the run.",
    )
    window_steps: int = Field(
        default=10, ge=2, description="How many recent steps the call/result count covers."
    )


class RepetitionSignal(BaseModel):
    """A repeated tool call or observation, with the message the loop shows the model."""

    kind: Literal["identical_calls", "same_call_same_result", "identical_observations"]
    tool_name: str
    count: int
    message: str


def canonical_call(call: ToolCall) -> str:
    """Name plus arguments in a form where key order and surrounding whitespace do not matter."""
    return call.name + json.dumps(_canon(call.arguments), sort_keys=True, separators=(",", ":"))


def _canon(value: Any) -> Any:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, dict):
        return {str(k): _canon(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canon(v) for v in value]
    return value


# What a silent success reads (python's "(no output)", also MCP's; shell's bare exit code 0), after
# `_canon_observation`. Different calls that all say nothing (imports, definitions, assignments, a
# `mkdir`) are ordinary work, not the same result coming back: only the same call again counts them.
CONTENTLESS_OBSERVATIONS = frozenset({"", "(no output)", "[exit code: 0]"})


def _canon_observation(text: str) -> str:
    return " ".join(text.split())


class ToolCallRepetitionDetector:
    """Flags an agent that keeps making the same tool call or keeps getting the same result.

    Call `record_call` when the model asks for a call (before running it) and `record_result` when
    the observation comes back; each returns a signal when a threshold is reached, and again on every
    further repetition, so the loop can escalate on `count`.
    """

    def __init__(self, config: RepetitionConfig | None = None) -> None:
        self.config = config or RepetitionConfig()
        self._last_call: str | None = None
        self._run = 0
        self._steps: deque[tuple[str, str]] = deque(maxlen=self.config.window_steps)
        self._last_obs: str | None = None
        self._obs_run = 0

    def record_call(self, call: ToolCall) -> RepetitionSignal | None:
        """Register a requested call; flag it if it is the Nth identical call in a row."""
        key = canonical_call(call)
        self._run = self._run + 1 if key == self._last_call else 1
        self._last_call = key
        n = self._run
        if n >= self.config.identical_calls_in_a_row:
            return RepetitionSignal(
                kind="identical_calls",
                tool_name=call.name,
                count=n,
                message=f"You have called {call.name} with the same arguments {n} times in a row; "
                "repeating it will not change anything. Try something different.",
            )
        return None

    def record_result(self, call: ToolCall, observation: str) -> RepetitionSignal | None:
        """Register the observation of a call; flag a recurring call→result pair or observation."""
        key = canonical_call(call)
        obs = _canon_observation(observation)
        self._steps.append((key, obs))
        if obs in CONTENTLESS_OBSERVATIONS:  # no run of identical results: something was done
            self._obs_run, self._last_obs = 0, None
        else:
            self._obs_run = self._obs_run + 1 if obs == self._last_obs else 1
            self._last_obs = obs
        pairs = sum(1 for step in self._steps if step == (key, obs))
        if pairs >= self.config.same_call_same_result:
            return RepetitionSignal(
                kind="same_call_same_result",
                tool_name=call.name,
                count=pairs,
                message=f"You have called {call.name} with the same arguments {pairs} times and got the "
                "same result; try something different.",
            )
        if self._obs_run >= self.config.identical_observations_in_a_row:
            return RepetitionSignal(
                kind="identical_observations",
                tool_name=call.name,
                count=self._obs_run,
                message=f"The last {self._obs_run} tool calls all returned the same result; changing the "
                "call slightly will not help. Try a different approach.",
            )
        return None

    def record(self, call: ToolCall, observation: str) -> RepetitionSignal | None:
        """`record_call` then `record_result` for one step; the first signal wins."""
        first = self.record_call(call)
        second = self.record_result(call, observation)
        return first or second
