"""Which `AgentConfig` settings came after which, and what a trace recorded before them is replayed with.

A trace records the whole `AgentConfig` its run had (`run_started.config`), so the keys it lacks date
it: a run recorded before a setting existed ran as the code of its time did. Today's default of such a
setting may ask for other requests (a loop signal that did not exist nudges a recorded turn the run
took whole; a cap ends a turn the run went on with), and a replay then no longer rebuilds the run. So a
config that lacks a setting's key (`Since.key`) is read with the values (`Since.before`) that behave as
the code before it did: a new loop signal off, a new cap lifted, a new wait none.

Every setting added to `AgentConfig` (or to a config it holds) goes into `SINCE` or, when its default
behaves as the code before it did (nothing is sent, waited for or refused differently), into
`SAME_AS_BEFORE`; `tests/test_replay.py` checks that every setting an old trace lacks is in one of them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SAME_AS_BEFORE", "SINCE", "Since", "as_recorded_then"]


@dataclass(frozen=True)
class Since:
    """Settings that came with `key` (a dotted path in the recorded config): a config without `key` was
    recorded before they existed, and is read with `before`, each setting the trace lacks taking the
    value that runs as the code of that time did."""

    key: str
    before: dict[str, Any] = field(default_factory=dict)


SINCE: tuple[Since, ...] = (
    # An answer cut off by the token limit was the turn's answer; an unclosed reasoning stayed so.
    Since("max_answer_continuations", {"max_answer_continuations": None}),
    # An intervention on the last step the budget allowed ended the run budget_exceeded there.
    Since("intervene_on_last_step", {"intervene_on_last_step": False}),
    # Requests were not fitted to the context: one the server refused was sent, and retried.
    Since("min_context_room_tokens", {"min_context_room_tokens": None}),
    # A turn made as many requests as it took.
    Since("max_requests_per_turn", {"max_requests_per_turn": None}),
    # A failed request was retried at once.
    Since("model_retry_backoff_s", {"model_retry_backoff_s": 0.0}),
    # A consumer was waited for without a limit.
    Since("consumer_idle_timeout_s", {"consumer_idle_timeout_s": None}),
    # Loop signals: each one off until it existed. (A nudge the recorded run got from a signal that no
    # longer exists, the n-gram one, is still replayed: `RecordedCompletion.intervention`.)
    Since("loop_detector.persist_chars", {"loop_detector.persist_chars": 0}),
    Since("loop_detector.periodic_min_run", {"loop_detector.periodic_enabled": False}),
    Since("loop_detector.ledger_window", {"loop_detector.ledger_enabled": False}),
    Since("loop_detector.ledger_min_distinct", {"loop_detector.ledger_min_distinct": 1}),
    Since("loop_detector.echo_enabled", {"loop_detector.echo_enabled": False}),
    Since("loop_detector.copy_enabled", {"loop_detector.copy_enabled": False}),
    Since("loop_detector.counter_enabled", {"loop_detector.counter_enabled": False}),
    Since("loop_detector.arithmetic_slip_hint", {"loop_detector.arithmetic_slip_hint": False}),
    Since("loop_detector.probe_enabled", {"loop_detector.probe_enabled": False}),
)

SAME_AS_BEFORE: frozenset[str] = frozenset(
    {
        # Off or unset by default: the code before them did the same.
        "approval",
        "context_length",
        "sampling.seed",
        "loop_detector.arithmetic_heavy_hint",
        # Thresholds of a signal that `SINCE` turns off in a config that lacks them.
        "loop_detector.periodic_anchor_chars",
        "loop_detector.periodic_check_every",
        "loop_detector.periodic_max_period",
        "loop_detector.periodic_max_tries",
        "loop_detector.periodic_min_reasoning_chars",
        "loop_detector.revisit_visits",
        "loop_detector.ledger_max_distinct",
        "loop_detector.ledger_min_markers",
        "loop_detector.ledger_stale_threshold",
        "loop_detector.echo_min_markers",
        "loop_detector.echo_share_threshold",
        "loop_detector.copy_count",
        "loop_detector.copy_min_chars",
        "loop_detector.copy_window_chars",
        "loop_detector.copy_echo_markers",
        "loop_detector.copy_echo_window_chars",
        "loop_detector.counter_check_every",
        "loop_detector.counter_max_period",
        "loop_detector.counter_min_repeats",
        "loop_detector.counter_min_run",
        "loop_detector.probe_every_chars",
        "loop_detector.probe_max_new_tokens",
        "loop_detector.probe_min_reasoning_chars",
        "loop_detector.probe_stable_count",
        "loop_detector.probe_suffix",
    }
)


def as_recorded_then(recorded: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`recorded` (a trace's config) with each setting it predates set as its code ran, and those
    settings (dotted path: value); the second is empty for a config recorded by this version."""
    config = copy.deepcopy(recorded)
    pinned: dict[str, Any] = {}
    for since in SINCE:
        if _has(config, since.key):
            continue
        for path, value in since.before.items():
            if not _has(config, path):  # a value the trace does hold is what the run had
                _put(config, path, value)
                pinned[path] = value
    return config, pinned


def _has(config: dict[str, Any], path: str) -> bool:
    *parents, last = path.split(".")
    for name in parents:
        config = config.get(name)  # type: ignore[assignment]
        if not isinstance(config, dict):
            return False
    return last in config


def _put(config: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for name in parents:
        inner = config.get(name)
        if not isinstance(inner, dict):
            # Absent: a config of that part's defaults. (Not a mapping: left for validation to refuse.)
            if inner is not None or name in config:
                return
            inner = config[name] = {}
        config = inner
    config[last] = value
