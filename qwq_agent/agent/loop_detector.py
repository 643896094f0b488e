"""Detectors for the two ways an agent run spins without progress.

`ReasoningLoopDetector` watches QwQ's streamed reasoning for circular thinking (retrying the same few
options for thousands of tokens) and escalates: nudge towards a tool, then force `</think>`, then stop.
`ToolCallRepetitionDetector` watches the tool-call steps for the same call (and the same result)
coming back again and again.

Both are pure bookkeeping: they never touch the stream or the conversation; the agent loop decides what
to do with the signals they return.
"""

from __future__ import annotations

import json
import re
from collections import Counter, deque
from itertools import pairwise
from typing import Any, Literal

from pydantic import BaseModel, Field

from qwq_agent.agent.messages import ToolCall

__all__ = [
    "CLOSE_REASONING_TEXT",
    "LoopDetectorConfig",
    "LoopSignal",
    "ReasoningLoopDetector",
    "RepetitionConfig",
    "RepetitionSignal",
    "ToolCallRepetitionDetector",
    "canonical_call",
    "close_text",
    "nudge_text",
]

# Appended inside the model's reasoning, so it is written in the model's own voice.
NUDGE_TEXT = (
    "\n\nWait — I'm going in circles. I should stop re-deriving this by hand and call the python tool "
    "to compute it.\n\n"
)
CLOSE_REASONING_TEXT = "\n\nI've considered this enough; time to answer.\n</think>\n\n"


class LoopDetectorConfig(BaseModel):
    """Thresholds of `ReasoningLoopDetector`. Lengths are in characters of reasoning (~4 per token)."""

    ngram_size: int = Field(4, ge=2, description="Words per n-gram for the repeated-n-gram signal.")
    ngram_window: int = Field(
        400, ge=20, description="How many of the most recent n-grams the repeated share is taken over."
    )
    ngram_share_threshold: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Share of the window's n-grams already seen earlier in the reasoning at or above "
        "which the text counts as looping on its own.",
    )
    min_segment_words: int = Field(
        8, ge=1, description="Sentences shorter than this are merged with the next before comparison."
    )
    max_segment_words: int = Field(
        120, ge=8, description="A segment is cut here even without a sentence end (run-on text)."
    )
    shingle_size: int = Field(3, ge=1, description="Words per shingle for near-duplicate comparison.")
    similarity_threshold: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Jaccard similarity of normalised shingles at or above which a segment is a "
        "near-duplicate of an earlier one.",
    )
    number_reuse_threshold: float = Field(
        0.5,
        ge=0,
        le=1,
        description="A near-duplicate counts as a repeated attempt only if its numbers also agree with "
        "the earlier segment's for at least this share of their digits: steady work (long "
        "multiplication) reuses the wording but produces new numbers, a loop recomputes the same ones.",
    )
    lookback_segments: int = Field(
        300, ge=1, description="How many earlier segments a new one is compared against."
    )
    attempt_window: int = Field(20, ge=2, description="How many recent segments the repeat share uses.")
    attempt_share_threshold: float = Field(
        0.7,
        gt=0,
        le=1,
        description="Share of the recent segments that are repeated attempts at or above which the "
        "text counts as looping.",
    )
    min_reasoning_chars: int = Field(
        2000, ge=0, description="No signal before this much reasoning: short retries are normal."
    )
    level2_gap_chars: int = Field(
        2000, ge=0, description="Reasoning needed after the nudge (level 1) before closing (level 2)."
    )
    level3_gap_chars: int = Field(
        2000, ge=0, description="Reasoning needed after closing (level 2) before stopping (level 3)."
    )
    min_new_repeats: int = Field(
        3, ge=1, description="Repeated attempts needed since the last signal before escalating."
    )


class LoopSignal(BaseModel):
    """What the detector saw: 1 = nudge towards a tool, 2 = close the reasoning, 3 = stop the run."""

    level: Literal[1, 2, 3]
    reason: str
    evidence: dict[str, Any] = Field(default_factory=dict)


def nudge_text(signal: LoopSignal | None = None) -> str:
    """Text the loop appends inside the reasoning at level 1: the model talking itself into a tool call."""
    return NUDGE_TEXT


def close_text(signal: LoopSignal | None = None) -> str:
    """Text the loop appends at level 2 to end the reasoning and force an answer."""
    return CLOSE_REASONING_TEXT


_WORD = re.compile(r"[^\W_]+(?:[.,][0-9]+)*", re.UNICODE)
_NUMBER = re.compile(r"^[0-9]+(?:[.,][0-9]+)*$")
# A sentence ends at . ! ? followed by whitespace, or at a newline; "3.14" and "e.g.x" do not split.
_BOUNDARY = re.compile(r"[.!?。！？]+(?=\s)|\n")
_MAX_PENDING = 2000


def _number_overlap(a: list[str], b: list[str]) -> float:
    """How much two segments' number sequences agree, weighted by digits (1.0 when neither has any).

    Consecutive pairs are compared, not single numbers, so that tracing a program (the same values
    in a changing order) reads as progress; weighting by digits makes two steps of a long
    multiplication differ, since they share the one-digit multipliers but not the long products.
    """
    if not a and not b:
        return 1.0
    pa = list(pairwise(a)) or [(n,) for n in a]
    pb = list(pairwise(b)) or [(n,) for n in b]
    ca, cb = Counter(pa), Counter(pb)

    def digits(pairs: Counter[tuple[str, ...]]) -> int:
        return sum(c * sum(map(len, p)) for p, c in pairs.items())

    common = sum(min(ca[p], cb[p]) * sum(map(len, p)) for p in ca.keys() & cb.keys())
    return common / max(digits(ca), digits(cb))


class _Segment:
    __slots__ = ("numbers", "shingles")

    def __init__(self, shingles: frozenset[tuple[str, ...]], numbers: list[str]) -> None:
        self.shingles = shingles
        self.numbers = numbers


class ReasoningLoopDetector:
    """Streaming detector of circular reasoning.

    Feed it the reasoning deltas as they arrive. Work is done once per completed word and per
    completed sentence, against bounded windows, so a delta costs time proportional to its length.
    Two signals say "looping": the share of recent word n-grams already seen earlier, and the share of
    recent sentences/paragraphs that are near-duplicates (shingle Jaccard after normalising numbers,
    punctuation and case) of an earlier one whose number sequence also matches. Each level fires at
    most once, in order; `signals` keeps all that fired. The outcome does not depend on how the
    stream is chunked (except inside a single run of over 2,000 characters without whitespace).
    """

    def __init__(self, config: LoopDetectorConfig | None = None) -> None:
        self.config = config or LoopDetectorConfig()
        self.reset()

    def reset(self) -> None:
        """Forget everything fed so far (a new reasoning block)."""
        cfg = self.config
        self.chars = 0  # all text fed
        self._pos = 0  # text consumed; positions use it so chunking cannot change the outcome
        self.level = 0
        self.signals: list[LoopSignal] = []
        self._new_signals: list[LoopSignal] = []
        self._pending = ""  # text after the last whitespace: its last token may still grow
        # n-gram signal
        self._tail: deque[str] = deque(maxlen=cfg.ngram_size)
        self._seen_ngrams: set[tuple[str, ...]] = set()
        self._ngram_flags: deque[bool] = deque()
        self._ngram_repeats = 0
        # attempt signal
        self._seg_words: list[str] = []
        self._segments: deque[int] = deque()  # ids of the lookback segments, oldest first
        self._by_id: dict[int, _Segment] = {}
        self._index: dict[tuple[str, ...], set[int]] = {}
        self._next_id = 0
        self._attempt_flags: deque[bool] = deque()
        self._attempt_repeats = 0
        self.total_repeats = 0
        self._repeats_at_signal = 0
        self._chars_at_signal = 0

    # ---- feeding -------------------------------------------------------------------------------

    def feed(self, delta: str) -> LoopSignal | None:
        """Take the next piece of reasoning; return a signal when a new escalation level is reached."""
        if not delta:
            return None
        self.chars += len(delta)
        text = self._pending + delta
        # Only text up to the last whitespace is final: the token after it may still grow, and a
        # sentence end needs the whitespace after its ".". Cutting there makes the outcome independent
        # of how the stream is chunked.
        cut = max(text.rfind(" "), text.rfind("\n"), text.rfind("\t")) + 1
        if cut == 0 and len(text) > _MAX_PENDING:
            cut = len(text)  # pathological run without whitespace: keep memory and rescans bounded
        done, self._pending = text[:cut], text[cut:]
        start = 0
        for m in _BOUNDARY.finditer(done):
            self._add_words(done[start : m.end()])
            start = m.end()
            self._end_sentence()
        self._add_words(done[start:])
        new, self._new_signals = self._new_signals, []
        # A huge delta can cross several levels at once; the strongest is what the loop must act on.
        return new[-1] if new else None

    def _add_words(self, chunk: str) -> None:
        cfg = self.config
        self._pos += len(chunk)
        for raw in _WORD.findall(chunk):
            word = raw.lower()
            self._tail.append(word)
            if len(self._tail) == cfg.ngram_size:
                ngram = tuple(self._tail)
                seen = ngram in self._seen_ngrams
                self._seen_ngrams.add(ngram)
                self._ngram_flags.append(seen)
                self._ngram_repeats += seen
                if len(self._ngram_flags) > cfg.ngram_window:
                    self._ngram_repeats -= self._ngram_flags.popleft()
            self._seg_words.append(word)
            if len(self._seg_words) >= cfg.max_segment_words:
                self._flush_segment()

    def _end_sentence(self) -> None:
        if len(self._seg_words) >= self.config.min_segment_words:
            self._flush_segment()

    # ---- segments ------------------------------------------------------------------------------

    def _flush_segment(self) -> None:
        cfg = self.config
        words, self._seg_words = self._seg_words, []
        if not words:
            return
        numbers = [w for w in words if _NUMBER.match(w)]
        norm = ["#" if _NUMBER.match(w) else w for w in words]
        k = min(cfg.shingle_size, len(norm))
        shingles = frozenset(tuple(norm[i : i + k]) for i in range(len(norm) - k + 1))
        repeated = self._is_repeat(shingles, numbers)
        self._store(_Segment(shingles, numbers))
        self._attempt_flags.append(repeated)
        self._attempt_repeats += repeated
        self.total_repeats += repeated
        if len(self._attempt_flags) > cfg.attempt_window:
            self._attempt_repeats -= self._attempt_flags.popleft()
        signal = self._maybe_signal()
        if signal is not None:
            self._new_signals.append(signal)
            self.signals.append(signal)

    def _is_repeat(self, shingles: frozenset[tuple[str, ...]], numbers: list[str]) -> bool:
        cfg = self.config
        overlap: Counter[int] = Counter()
        for sh in shingles:
            for seg_id in self._index.get(sh, ()):
                overlap[seg_id] += 1
        if not overlap:
            return False
        for seg_id, common in overlap.items():
            other = self._by_id[seg_id]
            jaccard = common / (len(shingles) + len(other.shingles) - common)
            if jaccard >= cfg.similarity_threshold and (
                _number_overlap(numbers, other.numbers) >= cfg.number_reuse_threshold
            ):
                return True
        return False

    def _store(self, seg: _Segment) -> None:
        seg_id = self._next_id
        self._next_id += 1
        self._segments.append(seg_id)
        self._by_id[seg_id] = seg
        for sh in seg.shingles:
            self._index.setdefault(sh, set()).add(seg_id)
        if len(self._segments) > self.config.lookback_segments:
            old_id = self._segments.popleft()
            old = self._by_id.pop(old_id)
            for sh in old.shingles:
                ids = self._index[sh]
                ids.discard(old_id)
                if not ids:
                    del self._index[sh]

    # ---- escalation ----------------------------------------------------------------------------

    @property
    def ngram_share(self) -> float:
        """Share of the recent n-gram window that had been seen before (0 until the window fills)."""
        n = len(self._ngram_flags)
        return self._ngram_repeats / n if n >= self.config.ngram_window else 0.0

    @property
    def attempt_share(self) -> float:
        """Share of the recent segments that repeat an earlier attempt (0 until the window fills)."""
        n = len(self._attempt_flags)
        return self._attempt_repeats / n if n >= self.config.attempt_window else 0.0

    def _maybe_signal(self) -> LoopSignal | None:
        cfg = self.config
        if self.level >= 3 or self._pos < cfg.min_reasoning_chars:
            return None
        ngram_share, attempt_share = self.ngram_share, self.attempt_share
        by_ngrams = ngram_share >= cfg.ngram_share_threshold
        by_attempts = attempt_share >= cfg.attempt_share_threshold
        if not (by_ngrams or by_attempts):
            return None
        if self.level > 0:
            gap = cfg.level2_gap_chars if self.level == 1 else cfg.level3_gap_chars
            if self._pos - self._chars_at_signal < gap:
                return None
            if self.total_repeats - self._repeats_at_signal < cfg.min_new_repeats and not by_ngrams:
                return None
        self.level += 1
        self._chars_at_signal = self._pos
        self._repeats_at_signal = self.total_repeats
        reasons = []
        if by_attempts:
            reasons.append(f"{attempt_share:.0%} of the last {cfg.attempt_window} steps repeat earlier ones")
        if by_ngrams:
            reasons.append(f"{ngram_share:.0%} of the last {cfg.ngram_window} word {cfg.ngram_size}-grams repeat")
        return LoopSignal(
            level=self.level,  # type: ignore[arg-type]
            reason="circular reasoning: " + "; ".join(reasons),
            evidence={
                "chars": self._pos,
                "ngram_share": round(ngram_share, 3),
                "attempt_share": round(attempt_share, 3),
                "repeated_attempts": self.total_repeats,
            },
        )


# ---- tool-call repetition ----------------------------------------------------------------------


class RepetitionConfig(BaseModel):
    """Thresholds of `ToolCallRepetitionDetector`; counts are tool-call steps."""

    identical_calls_in_a_row: int = Field(
        3, ge=2, description="Same tool and same (canonicalised) arguments this many times in a row."
    )
    same_call_same_result: int = Field(
        3, ge=2, description="The same call returning the same observation this many times in the window."
    )
    identical_observations_in_a_row: int = Field(
        4, ge=2, description="The same observation text this many times in a row, whatever the calls."
    )
    window_steps: int = Field(10, ge=2, description="How many recent steps the call/result count covers.")


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
