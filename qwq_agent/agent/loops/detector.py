"""The streaming reasoning-loop detector: three signals and one escalation ladder.

Signals (each cheap per character and streaming):
- `periodic`: the tail is an exact cycle on characters (`PeriodicTail`); a single long verbatim copy
  with new text between it and its original (a table or a function rewritten with one change) is a
  second visit and only nudges;
- `steps`: many recent steps are third-or-later visits of earlier ones (`NearDuplicates`);
- `candidates`: the same few candidates come back again and again (`CandidateLedger`);
- `echo` (level 1 only): many recent steps restate an earlier one at least once (a second visit) while
  the model keeps saying it goes back ("wait", "again", "再"). A healthy re-check produces this too, so
  it may only nudge; closing and stopping need the third-visit signals above.
- `copies` (level 1 only): several separate long spans of the recent reasoning copied verbatim (each on
  its second visit; one copy is a restatement, a burst of them a loop);
- `counter` (level 1 only): the same line again and again with only a counter changing (`loops.counter`);
- `probe` (level 2 only, opt-in): after the nudge, the answer-stability probes (`loops.probe`) keep
  giving the same answer while the reasoning keeps circling; `observe_probe` takes their answers.

Any signal gives level 1 (nudge towards a tool). Each further level needs a gap of reasoning since the
last one and new evidence of circling in it (new revisits, not the old loop still inside a window), so a
model that took the nudge is left alone.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any, Literal

from pydantic import BaseModel, Field

from qwq_agent.agent.loops.arithmetic import HandArithmetic
from qwq_agent.agent.loops.config import LoopDetectorConfig
from qwq_agent.agent.loops.counter import CountRun, runaway_count
from qwq_agent.agent.loops.duplicates import NearDuplicates
from qwq_agent.agent.loops.fences import CodeBlock, FenceSplitter
from qwq_agent.agent.loops.ledger import CandidateLedger, count_markers, extract_mentions
from qwq_agent.agent.loops.periodic import PeriodicTail
from qwq_agent.agent.loops.probe import ProbeResult

__all__ = ["LoopSignal", "ReasoningLoopDetector", "SignalKind"]

SignalKind = Literal["periodic", "steps", "candidates", "echo", "copies", "counter", "probe"]
Level = Literal[1, 2, 3]
_LEVELS: dict[int, Level] = {1: 1, 2: 2, 3: 3}  # the detector counts in ints; a signal carries a Level

_WORD = re.compile(r"[^\W_]+(?:[.,][0-9]+)*", re.UNICODE)
_NUMBER = re.compile(r"^[0-9]+(?:[.,][0-9]+)*$")
_LABEL = re.compile(r"(?<![\w'])(?:[A-J]|[IVX]{1,4})(?![\w'])|\b\d+(?=[.:)]\s)")
# A sentence ends at . ! ? followed by whitespace, or at a newline; "3.14" and "e.g.x" do not split.
# Tried at the start of a run of . ! ? only: a run that is not followed by whitespace fails from every
# position inside it alike, and retrying each one made a 64 KB run of dots take 23 s (quadratic).
_BOUNDARY = re.compile(r"(?<![.!?])[.!?]+(?=\s)|[。！？]+|\n")
# Text after the last whitespace is held back (its last word may still grow) up to this much; longer
# runs without whitespace (digits, CJK) are consumed in blocks of this size, counted from the run's
# start, so the outcome does not depend on how the stream was cut.
_BLOCK = 64
# The counting check looks this far back (within the exact-cycle buffer, whatever the stream's cuts).
_COUNTER_WINDOW = 4096
# A segment is cut here whatever it holds, which bounds the text the ledger's patterns scan.
_MAX_SEGMENT_CHARS = 4096


class LoopSignal(BaseModel):
    """What the detector saw: 1 = nudge towards a tool, 2 = close the reasoning, 3 = stop the run."""

    level: Level
    reason: str
    kind: str = "steps"
    candidates: list[str] = Field(
        default_factory=list, description="What is being recomputed, most revisited first (may be empty)."
    )
    evidence: dict[str, Any] = Field(default_factory=dict)


class ReasoningLoopDetector:
    """Streaming detector of circular reasoning.

    Feed it the reasoning deltas as they arrive; `feed` returns a signal when a new escalation level
    is reached (each level fires at most once, in order; `signals` keeps them all). The outcome does
    not depend on how the stream is chunked.
    """

    def __init__(self, config: LoopDetectorConfig | None = None) -> None:
        self.config = config or LoopDetectorConfig()
        self.reset()

    def reset(self) -> None:
        """Forget everything fed so far (a new reasoning block)."""
        cfg = self.config
        self.chars = 0  # all text fed
        self.bytes_fed = 0  # the same in UTF-8 bytes, the unit of the length thresholds (and the probe's)
        self._pos = 0  # text consumed; positions use it so chunking cannot change the outcome
        # The same in UTF-8 bytes: the clock of every length threshold. A token is ~4 bytes in English
        # and in Chinese alike (one character there, four here), so bytes keep the thresholds' meaning
        # in tokens whatever the script.
        self._size = 0
        self.level = 0
        self.signals: list[LoopSignal] = []
        self._new: list[LoopSignal] = []
        self._pending = ""
        self._periodic = PeriodicTail(cfg)
        self._next_check = cfg.periodic_check_every
        self._dups = NearDuplicates(cfg)
        self._ledger = CandidateLedger(cfg)
        self._seg_words: list[str] = []
        self._seg_raw: list[str] = []
        self._seg_raw_len = 0
        self._flags: list[bool] = []  # per segment: a third-or-later visit
        self._flag_sum = 0
        self._flag_start = 0
        self.revisits = 0  # all evidence of circling so far (for escalation)
        self._revisits_at_signal = 0
        self._size_at_signal = 0
        self._fed_at_signal = 0
        self._cycle_checks = 0
        self._circling_since: int | None = None  # where the statistical signals last became true
        self._echo: deque[tuple[bool, int]] = deque()  # per recent segment: a second visit, markers
        self._echo_sum = 0
        self._echo_markers = 0
        self._echo_copy_at: int | None = None  # where the copy began that let the echo nudge sooner
        self.probes: list[ProbeResult] = []
        self._probe_answer = ""
        # Fenced code: one step per block, its own exact-cycle buffer (`loops.fences`).
        self._fences = FenceSplitter()
        self._block: CodeBlock | None = None
        self._code_tail = PeriodicTail(cfg)
        self._blocks: dict[str, int] = {}  # fingerprint -> times written
        self._cycle = (0, 0)  # (run, period) of the last exact cycle found, prose or code
        self._count: CountRun | None = None  # the runaway count that nudged
        # Hand computations checked exactly (read by the turn for its one-time hint, not a loop level).
        self.arithmetic = HandArithmetic()
        self._check_arithmetic = cfg.arithmetic_slip_hint or cfg.arithmetic_heavy_hint > 0

    # ---- feeding -------------------------------------------------------------------------------

    def feed(self, delta: str) -> LoopSignal | None:
        """Take the next piece of reasoning; return a signal when a new escalation level is reached."""
        if not delta:
            return None
        self.chars += len(delta)
        self.bytes_fed += len(delta.encode("utf-8", "surrogatepass"))
        if self.level >= 3:
            return None
        for kind, text in self._fences.feed(delta):
            if kind == "prose":
                self._feed_prose(text)
            elif kind == "code":
                self._feed_code(text)
            elif kind == "overflow":  # a block open too long: still one block, and prose to the signals
                if self._block is not None:
                    self._block.add(text)
                self._feed_prose(text)
            else:
                self._close_code()
        new, self._new = self._new, []
        # A huge delta can cross several levels at once; the strongest is what the loop must act on.
        return new[-1] if new else None

    def _feed_prose(self, delta: str) -> None:
        text = self._pending + delta
        cut = max(text.rfind(" "), text.rfind("\n"), text.rfind("\t")) + 1
        if cut == 0 and len(text) >= _BLOCK:
            cut = len(text) - len(text) % _BLOCK
        done, self._pending = text[:cut], text[cut:]
        start = 0
        for m in _BOUNDARY.finditer(done):
            self._consume(done[start : m.end()])
            start = m.end()
            self._end_sentence()
        self._consume(done[start:])

    def _feed_code(self, text: str) -> None:
        if self._block is None:  # a block starts: the prose before it is a finished step
            self._consume(self._pending)
            self._pending = ""
            self._flush_segment()
            self._block = CodeBlock()
            self._code_tail = PeriodicTail(self.config)  # cycles are looked for inside a block only
        self._block.add(text)
        self._consume(text, code=True)

    def _close_code(self) -> None:
        """A block ends: one step, a visit of each earlier block with the same code."""
        if self._block is None:
            return
        fingerprint = self._block.fingerprint()
        self._block = None
        earlier = self._blocks.get(fingerprint, 0)
        self._blocks[fingerprint] = earlier + 1
        # The prose buffer gets a stand-in, so a verbatim cycle of prose and unchanged code stays one.
        self._periodic.extend(f"\n[code {fingerprint[:12]}]\n")
        self._step_done(min(earlier, self.config.revisit_visits - 1), markers=0, stale=0)

    def _consume(self, chunk: str, *, code: bool = False) -> None:
        if not chunk:
            return
        cfg = self.config
        tail = self._code_tail if code else self._periodic
        # Exact-cycle checks at fixed positions: extend the buffer up to each one, then check.
        base, i, end = self._pos, 0, self._pos + len(chunk)
        while end >= self._next_check:
            j = self._next_check - base
            tail.extend(chunk[i:j])
            self._size += len(chunk[i:j].encode("utf-8", "surrogatepass"))
            self._pos, i = self._next_check, j
            self._next_check += cfg.periodic_check_every
            self._check_cycle(tail)
        tail.extend(chunk[i:])
        self._size += len(chunk[i:].encode("utf-8", "surrogatepass"))
        self._pos = end
        if code:
            return  # code is compared block by block (`_close_code`), not as words and sentences
        if self._check_arithmetic:  # the whole prose, in order: the checker's outcome ignores the cuts
            self.arithmetic.add(chunk)
        self._seg_raw.append(chunk)
        self._seg_raw_len += len(chunk)
        if self._seg_raw_len > _MAX_SEGMENT_CHARS:  # punctuation or spaces only: nothing to compare
            self._flush_segment()
        for raw in _WORD.findall(chunk):
            self._seg_words.append(raw.lower())
            if len(self._seg_words) >= cfg.max_segment_words:
                self._flush_segment()

    def _end_sentence(self) -> None:
        if len(self._seg_words) >= self.config.min_segment_words:
            self._flush_segment()

    # ---- signals -------------------------------------------------------------------------------

    def _check_cycle(self, tail: PeriodicTail) -> None:
        cfg = self.config
        run = tail.check()
        if self._size < cfg.periodic_min_reasoning_chars:
            return
        # A run shorter than its period is one verbatim copy with other text between the two: a table
        # or a function written out again with a cell or a line changed, a step restated. That is a
        # second visit, and like the other second-visit signals it may only nudge. Only a run of a whole
        # period or more (the same text again with nothing new between) is a cycle that closes and stops.
        if (
            cfg.periodic_enabled
            and run >= cfg.periodic_min_run
            and (tail.run >= tail.period or self.level == 0)
        ):
            self._cycle = (tail.run, tail.period)
            self._cycle_checks += 1
            self.revisits += 1
            self._maybe_signal("periodic")
        if cfg.copy_enabled and self.level == 0 and tail is self._periodic:
            if self._copy_burst():
                self._maybe_signal("copies")
            elif self._echo_with_copy():
                self._echo_copy_at = self._periodic.copies[-1]
                self._maybe_signal("echo")
        if (
            cfg.counter_enabled
            and self.level == 0
            and self._pos % cfg.counter_check_every < cfg.periodic_check_every
        ):
            # Prose or code alike: a real one was ~70 comment lines in an unclosed code block.
            found = runaway_count(
                tail.recent(_COUNTER_WINDOW),
                anchor=cfg.periodic_anchor_chars,
                max_period=cfg.counter_max_period,
                tries=cfg.periodic_max_tries,
                min_run_bytes=cfg.counter_min_run,
                min_repeats=cfg.counter_min_repeats,
            )
            if found is not None:
                self._count = found
                self._maybe_signal("counter")

    def _copy_burst(self) -> bool:
        cfg = self.config
        copies = self._periodic.copies
        n = self._periodic.check_copy(self._size)
        return n >= cfg.copy_count and copies[-1] - copies[-cfg.copy_count] <= cfg.copy_window_chars

    def _echo_with_copy(self) -> bool:
        """The echo's step share with fewer markers, right after a long verbatim copy."""
        cfg = self.config
        copies = self._periodic.copies
        return (
            cfg.echo_enabled
            and bool(copies)
            and copies[-1] >= self._size - cfg.copy_echo_window_chars
            and self.echo_share >= cfg.echo_share_threshold
            and self._echo_markers >= cfg.copy_echo_markers
        )

    def _flush_segment(self) -> None:
        words, self._seg_words = self._seg_words, []
        raw = "".join(self._seg_raw)
        self._seg_raw, self._seg_raw_len = [], 0
        if not words:
            return
        numbers = [w for w in words if _NUMBER.match(w)]
        labels = frozenset(_LABEL.findall(raw))
        earlier = self._dups.add(words, numbers, labels)
        markers = count_markers(raw)
        stale = self._ledger.add(extract_mentions(raw), markers)
        self._step_done(earlier, markers, stale)

    def _step_done(self, earlier: int, markers: int, stale: int) -> None:
        """A step (a sentence, a run-on stretch, a code block) ended: update the windows and signals."""
        cfg = self.config
        flag = earlier >= cfg.revisit_visits - 1
        self._push_echo(earlier >= 1, markers)
        self._flags.append(flag)
        self._flag_sum += flag
        if len(self._flags) - self._flag_start > cfg.attempt_window:
            self._flag_sum -= self._flags[self._flag_start]
            self._flag_start += 1
        if self._flag_start > 4096:  # keep the list short without a deque's slower indexing
            self._flags = self._flags[self._flag_start :]
            self._flag_start = 0
        self.revisits += flag + (stale if cfg.ledger_enabled else 0)
        kind: SignalKind | None = None
        if self.attempt_share >= cfg.attempt_share_threshold:
            kind = "steps"
        elif cfg.ledger_enabled and self._ledger.circling():
            kind = "candidates"
        elif self.level == 0 and self._echoing():
            kind = "echo"
        if kind is None:
            self._circling_since = None
            return
        if self._circling_since is None:
            self._circling_since = self._size
        if self._size - self._circling_since >= cfg.persist_chars:
            self._maybe_signal(kind)

    def _push_echo(self, second_visit: bool, markers: int) -> None:
        self._echo.append((second_visit, markers))
        self._echo_sum += second_visit
        self._echo_markers += markers
        if len(self._echo) > self.config.attempt_window:
            old, old_markers = self._echo.popleft()
            self._echo_sum -= old
            self._echo_markers -= old_markers

    @property
    def echo_share(self) -> float:
        """Share of the recent segments that revisit an earlier one at least once (0 until it fills)."""
        n = len(self._echo)
        return self._echo_sum / n if n >= self.config.attempt_window else 0.0

    def _echoing(self) -> bool:
        cfg = self.config
        return (
            cfg.echo_enabled
            and self.echo_share >= cfg.echo_share_threshold
            and self._echo_markers >= cfg.echo_min_markers
        )

    @property
    def attempt_share(self) -> float:
        """Share of the recent segments that are third-or-later visits (0 until the window fills)."""
        n = len(self._flags) - self._flag_start
        return self._flag_sum / n if n >= self.config.attempt_window else 0.0

    # ---- the answer-stability probe --------------------------------------------------------------

    def observe_probe(self, result: ProbeResult) -> LoopSignal | None:
        """Take a probe's answer; return a close (level 2) when it is time.

        Only after the nudge: the last `probe_stable_count` probes taken since the nudge gave the same
        (non-empty) answer, and the reasoning kept circling meanwhile (some new revisit: a third visit
        of a step, a stale candidate or an exact-cycle check). A model that converges without
        circling, or that took the nudge, is left alone; a stable answer alone never nudges.
        """
        self.probes.append(result)
        cfg = self.config
        if self.level != 1:
            return None
        since = [p.answer for p in self.probes if p.at_chars > self._fed_at_signal]
        last = since[-cfg.probe_stable_count :]
        if len(last) < cfg.probe_stable_count or not last[0] or len(set(last)) != 1:
            return None
        if self.revisits == self._revisits_at_signal:
            return None
        self._probe_answer = last[0]
        self._maybe_signal("probe")
        new, self._new = self._new, []
        return new[-1] if new else None

    # ---- escalation ----------------------------------------------------------------------------

    def _maybe_signal(self, kind: SignalKind) -> None:
        cfg = self.config
        if self.level >= 3 or (kind in ("echo", "copies", "counter") and self.level >= 1):
            return
        if kind != "periodic" and self._size < cfg.min_reasoning_chars:
            return
        if self.level > 0 and kind != "probe":  # the probe's own conditions stand in for the gap
            gap = cfg.level2_gap_chars if self.level == 1 else cfg.level3_gap_chars
            if self._size - self._size_at_signal < gap:
                return
            if self.revisits - self._revisits_at_signal < cfg.min_new_repeats:
                return
        self._mark(self.level + 1)
        candidates = self._ledger.top()
        if kind == "periodic" and self._cycle[0] < self._cycle[1]:
            reason = (
                f"a verbatim copy: the last {self._cycle[0]} characters repeat text written "
                f"{self._cycle[1]} characters earlier"
            )
        elif kind == "periodic":
            reason = (
                f"an exact cycle: the last {self._cycle[0]} characters repeat with period {self._cycle[1]}"
            )
        elif kind == "steps":
            reason = (
                f"{self.attempt_share:.0%} of the last {cfg.attempt_window} steps go over ground "
                "covered twice already"
            )
        elif kind == "probe":
            reason = (
                f"the answer stayed {self._probe_answer!r} over {cfg.probe_stable_count} probes while the "
                "reasoning kept circling"
            )
        elif kind == "copies":
            reason = (
                f"{cfg.copy_count} separate spans of {cfg.copy_min_chars}+ characters copied verbatim from "
                f"the last {cfg.periodic_max_period} characters of reasoning"
            )
        elif kind == "counter" and self._count is not None:
            reason = (
                f"a runaway count: the same {self._count.period}-character line {self._count.repeats} times "
                f"with only its numbers counting up (last: {self._count.line!r})"
            )
        elif kind == "echo":
            reason = (
                f"{self.echo_share:.0%} of the last {cfg.attempt_window} steps restate earlier ones, with "
                f"{self._echo_markers} 'wait'/'again' markers"
            )
            if self._echo_copy_at is not None:
                reason += f", after a span of {cfg.copy_min_chars}+ characters copied verbatim"
        else:
            reason = (
                f"{self._ledger.stale_share:.0%} of the last {cfg.ledger_window} candidates weighed were "
                "already weighed twice"
            )
        signal = LoopSignal(
            level=_LEVELS[self.level],
            reason="circular reasoning: " + reason,
            kind=kind,
            candidates=candidates,
            evidence={
                "chars": self._pos,
                "attempt_share": round(self.attempt_share, 3),
                "candidate_stale_share": round(self._ledger.stale_share, 3),
                "echo_share": round(self.echo_share, 3),
                "cycle_period": self._cycle[1],
                "cycle_run": self._cycle[0],
                "revisits": self.revisits,
                **({"probe_answer": self._probe_answer} if kind == "probe" else {}),
            },
        )
        self._new.append(signal)
        self.signals.append(signal)
        self._clear_windows()

    def adopt(self, signal: LoopSignal) -> LoopSignal:
        """Escalate to `signal`, decided outside this detector, as if it had fired here.

        For a replay: the recorded run stepped in on what the replay does not repeat (a probe's
        answers; probes would take recorded completions). Taking the recorded decision keeps the
        levels in step with the recording, so the later escalations are judged as they were then.
        """
        if signal.level > self.level:
            answer = signal.evidence.get("probe_answer")
            if signal.kind == "probe" and isinstance(answer, str):
                self._probe_answer = answer
            self._mark(signal.level)
            self.signals.append(signal)
            self._clear_windows()
        return signal

    def closed(self) -> None:
        """The reasoning was closed outside this detector (a `</think>` the turn wrote for the model).

        What is fed next is the answer, watched as after the detector's own close (level 2): the only
        signal left is a stop, since a nudge or a close written there would become part of the answer.
        """
        if self.level < 2:
            self._mark(2)
            self._clear_windows()

    def _mark(self, level: int) -> None:
        """Enter `level`: where it was reached is where the next one is measured from."""
        self.level = level
        self._size_at_signal = self._size
        # Probes are placed by the text fed (`bytes_fed`): one taken where the nudge was written,
        # whatever the cut of the stream, is not "after" it.
        self._fed_at_signal = self.bytes_fed
        self._revisits_at_signal = self.revisits

    def _clear_windows(self) -> None:
        # The next level must be earned by text written after this one: the windows start empty
        # (what was seen stays indexed, so going back to it again still counts).
        self._flags, self._flag_sum, self._flag_start = [], 0, 0
        self._echo.clear()
        self._echo_sum = self._echo_markers = 0
        self._ledger.clear_window()
