"""Thresholds of the reasoning-loop detector, each with the reason for its value.

Lengths (the fields named `*_chars`, `periodic_min_run`) are weighed in UTF-8 bytes of reasoning:
about 4 per token in English and in Chinese alike (a Chinese character is ~3 bytes and ~1 token), and
equal to characters for ASCII text, so a threshold means the same number of tokens whatever the script
QwQ writes in. Weighed in characters, a Chinese loop had to run ~3 times as many tokens as an English
one before any floor, gap or minimum copy was met. The values were chosen from what circling
*is* (a cycle is a third visit, not a second; a verbatim copy of a long span of one's own reasoning is
never progress) and then checked on the whole development corpus (`../shared/reasoning-corpus`), not
fitted to single files: see `benchmarks/loop_detector_bench.py` and the README for the figures. The
signals allowed on second visits (`echo_*`, `copy_*`) may only nudge, and their thresholds were checked
leave-one-out (`benchmarks/loop_detector_loo.py`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["LoopDetectorConfig"]


class LoopDetectorConfig(BaseModel):
    """Thresholds of `ReasoningLoopDetector` (lengths in UTF-8 bytes: see the module's docstring)."""

    # A misspelt threshold is an error: ignored, the detector ran with the default.
    model_config = ConfigDict(extra="forbid")

    # ---- floors and escalation ----------------------------------------------------------------
    min_reasoning_chars: int = Field(
        default=2000,
        ge=0,
        description="No near-duplicate or ledger signal before this much reasoning: a model restating the "
        "problem and trying its first ideas twice is normal, and ~500 tokens of circling costs little.",
    )
    periodic_min_reasoning_chars: int = Field(
        default=600,
        ge=0,
        description="Floor for the exact-cycle signal alone. An exact repeat of a long span is never "
        "progress, so it may fire sooner than the statistical signals (a degenerate `,000,000...` run "
        "fills the context in a few hundred tokens).",
    )
    level2_gap_chars: int = Field(
        default=2000,
        ge=0,
        description="Reasoning needed after the nudge (level 1) before closing (level 2): ~500 tokens, "
        "time for the model to act on the nudge (start a tool call) or answer.",
    )
    level3_gap_chars: int = Field(
        default=2000,
        ge=0,
        description="Reasoning needed after closing (level 2) before stopping (level 3); same reason.",
    )
    min_new_repeats: int = Field(
        default=3,
        ge=1,
        description="New revisits (third-or-later visits of a step or a candidate, or exact-cycle checks) "
        "needed since the last level before escalating: a model that stopped circling after the nudge "
        "must not be closed just because the old loop is still inside the window.",
    )

    persist_chars: int = Field(
        default=1000,
        ge=0,
        description="The near-duplicate and ledger signals must hold without a break for this much "
        "reasoning (~250 tokens) before they count: a loop persists, while a healthy answer that "
        "briefly weighs two options again, or re-checks a few steps, moves on. (On the corpus any value "
        "from 600 to 1,500 gives the same loops caught and no healthy trace closed; 1,000 is mid-range.)",
    )

    # ---- exact cycle on characters (the buffer's own positions and periods are in characters) -----
    periodic_enabled: bool = Field(
        default=True,
        description="Allow the exact-cycle signal. Off only to replay a trace recorded before it "
        "existed (`config_history`): the copy signals still read the cycle buffer.",
    )
    periodic_check_every: int = Field(
        default=32,
        ge=1,
        description="Characters between two exact-cycle checks (a check is a few C-level string "
        "comparisons; every 32 characters keeps the cost well under a microsecond per character).",
    )
    periodic_anchor_chars: int = Field(
        default=24, ge=4, description="Length of the tail that is looked up earlier to propose a period."
    )
    periodic_max_period: int = Field(
        default=2500,
        ge=8,
        description="Longest cycle looked for: the verbatim loops seen in real outputs repeat blocks of "
        "4 to ~1,400 characters; 2,500 leaves room and bounds the buffer.",
    )
    periodic_min_run: int = Field(
        default=256,
        ge=32,
        description="Exact repeat length, in bytes (characters identical to those one period earlier), that counts "
        "as a cycle: ~64 tokens copied verbatim from the model's own reasoning. Reasoning never "
        "contains the prompt, so such a copy is not a quote, and a healthy re-check rewords its steps. "
        "(On the corpus 480 fires later on the verbatim loops with the same false positives; below "
        "~200 it starts to catch repeated LaTeX derivation lines.) A run shorter than its period is one "
        "copy with new text between (a state table or a function rewritten with a cell or a line "
        "changed): it may nudge, but only a run of a whole period, the same text again with nothing new "
        "between, closes and stops.",
    )
    periodic_max_tries: int = Field(
        default=3,
        ge=1,
        description="Earlier occurrences of the anchor tried as the period start, newest first.",
    )

    # ---- near-duplicate steps -----------------------------------------------------------------
    min_segment_words: int = Field(
        default=8, ge=1, description="Sentences shorter than this are merged with the next before comparison."
    )
    max_segment_words: int = Field(
        default=120, ge=8, description="A segment is cut here even without a sentence end (run-on text)."
    )
    shingle_size: int = Field(default=3, ge=1, description="Words per shingle for near-duplicate comparison.")
    similarity_threshold: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Jaccard similarity of normalised shingles at or above which a segment is a "
        "near-duplicate of an earlier one (half the 3-word phrases shared: a reworded restatement).",
    )
    number_reuse_threshold: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="A near-duplicate counts only if its numbers also agree with the earlier segment's "
        "for at least this share of their digits: steady work (long multiplication, an enumeration "
        "of cases) reuses the wording but produces new numbers, a loop recomputes the same ones.",
    )
    revisit_visits: int = Field(
        default=3,
        ge=2,
        description="A step counts as circling on this visit (a third one): one verification pass "
        "revisits each step once, a loop again and again.",
    )
    lookback_segments: int = Field(
        default=300, ge=1, description="How many earlier segments a new one is compared against."
    )
    attempt_window: int = Field(
        default=16, ge=2, description="How many recent segments the revisit share uses."
    )
    attempt_share_threshold: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Share of the recent segments that are third-or-later visits at or above which the "
        "text counts as circling: half the recent steps going over ground covered twice already.",
    )

    # ---- ledger of candidates -----------------------------------------------------------------
    ledger_enabled: bool = Field(
        default=True,
        description="Allow the ledger signal (candidates circling). Off only to replay a trace recorded "
        "before it existed (`config_history`).",
    )
    ledger_window: int = Field(
        default=24,
        ge=4,
        description="How many recent candidate mentions (expressions, values, answer options, answer "
        "claims) novelty is measured over: about three passes over a handful of candidates.",
    )
    ledger_stale_threshold: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="Share of the window's mentions that are a third-or-later mention of the same "
        "candidate at or above which the candidates are circling: three quarters of what is being "
        "computed or weighed was already weighed twice.",
    )
    ledger_max_distinct: int = Field(
        default=5,
        ge=1,
        description="At most this many distinct candidates in the window: circling is a few candidates "
        "again and again; a long verification pass touches many.",
    )
    ledger_min_distinct: int = Field(
        default=2,
        ge=1,
        description="At least this many distinct candidates in the window: coming back to one answer "
        "again and again ('so the answer is B ... yes, B') is converging, not circling.",
    )
    ledger_min_markers: int = Field(
        default=10,
        ge=0,
        description="Revisit markers ('wait', 'again', '再', '重新', ...) needed within the text the "
        "mention window covers (one per two or three mentions): the model itself saying, over and "
        "over, that it is going back, so that a summary or a final check listing the same values "
        "does not count. Markers alone are common in healthy reasoning and never fire on their own.",
    )

    # ---- second-visit echo (level 1 only) ------------------------------------------------------
    echo_enabled: bool = Field(
        default=True,
        description="Allow the level-1-only echo signal: a nudge costs the model one sentence, so it may "
        "come on second-visit evidence, which a healthy re-check also produces; closing never does. "
        "It obeys `min_reasoning_chars` and `persist_chars` like the other statistical signals "
        "(shorter persistence lets a healthy trace reach level 2 on the corpus).",
    )
    echo_share_threshold: float = Field(
        default=0.35,
        gt=0,
        le=1,
        description="Share of the last `attempt_window` steps that revisit an earlier step at least "
        "once (a second visit) at or above which the steps echo: about one step in three restating an "
        "earlier one, which a forward derivation rarely does. (On the corpus 0.3-0.35 with 4-6 markers "
        "give the same loops and healthy outcome; 0.4 and above add nothing over the third-visit "
        "signals; 0.25 nudges 5-12 healthy traces. A leave-one-out check over the corpus, "
        "`benchmarks/loop_detector_loo.py`, picks 0.35 in 92 of 96 folds.)",
    )
    echo_min_markers: int = Field(
        default=5,
        ge=0,
        description="Revisit markers ('wait', 'again', '再', ...) needed in those steps as well (one "
        "per three steps): an echo the model itself keeps announcing as going back, so a summary or a "
        "final check that restates its steps without saying it goes back does not count. (2-3 markers "
        "nudge 3-12 healthy corpus traces; 8 or more adds nothing over the third-visit signals.)",
    )

    # ---- long verbatim copies (level 1 only) ---------------------------------------------------
    copy_enabled: bool = Field(
        default=True,
        description="Allow the level-1-only copy signal: several separate spans of the model's own "
        "recent reasoning copied verbatim, each long, counted on their second visit. One long copy is "
        "what a healthy answer does when it restates an option or a derivation; a loop copies "
        "paragraph after paragraph. It may only nudge; closing needs the third-visit signals.",
    )
    copy_min_chars: int = Field(
        default=200,
        ge=64,
        description="Length of the tail (~50 tokens) that must occur verbatim earlier, within "
        "`periodic_max_period` characters, for the tail to count as a copy: a healthy re-check rewords "
        "its steps, and one that restates a whole option or derivation does it once or twice. (On the "
        "corpus 160-180 nudge a healthy Qwen3 trace that restates its reasoning near its end; 240 and "
        "above add nothing over the exact-cycle signal.)",
    )
    copy_count: int = Field(
        default=3,
        ge=2,
        description="Separate copies (each a new stretch of copied tail after uncopied text) needed "
        "within `copy_window_chars`: a third copy, as the other signals count a third visit. (Two "
        "copies of 200 characters catch one more corpus loop, at 98% of its trace, but whether they "
        "also nudge a healthy trace depends on where the checks fall: shifting the traces by a few "
        "characters flips it, `benchmarks/loop_detector_shift.py`. Three keep a margin.)",
    )
    copy_window_chars: int = Field(
        default=4000,
        ge=500,
        description="The copies must start within this much reasoning (~1,000 tokens): copies "
        "scattered over a long answer are restatements, a burst of them is a loop. (3,000-6,000 give "
        "the same loops and healthy outcome on the corpus.)",
    )

    copy_echo_markers: int = Field(
        default=4,
        ge=0,
        description="Two weak signals together: when a copy (`copy_min_chars`) began within "
        "`copy_echo_window_chars`, the echo nudges with this many revisit markers instead of "
        "`echo_min_markers`, and without waiting `persist_chars`: a long verbatim copy and steps that "
        "keep announcing they go back are each common in healthy reasoning, together they are a loop "
        "starting. (On the corpus 3 nudges a healthy Qwen3 trace; 5 adds almost nothing over the "
        "echo alone; see `benchmarks/loop_detector_loo.py --signal copy_echo`.)",
    )
    copy_echo_window_chars: int = Field(
        default=2000,
        ge=0,
        description="How recent the copy must be for `copy_echo_markers` to apply (~500 tokens: the "
        "stretch the echo's steps cover). (1,000-4,000 give the same healthy outcome on the corpus.)",
    )

    # ---- runaway counting (level 1 only) ---------------------------------------------------------
    counter_enabled: bool = Field(
        default=True,
        description="Allow the level-1-only counting signal (`loops.counter`): the same line written again "
        "and again with only a counter changing (`Level 5: next even after Level 4 ...`), which the "
        "exact-cycle check misses because the digits differ. Every number of the repeated line must move "
        "by a constant step, so a healthy enumeration, whose results are not a progression, is left alone.",
    )
    counter_min_run: int = Field(
        default=1000,
        ge=256,
        description="Bytes of text (~250 tokens, as `persist_chars`) that must repeat, digits masked, for a "
        "count to be runaway: a short numbered list is how a model lays out cases; hundreds of tokens of "
        "lines that say nothing new is a loop. (No file of the corpus, looping or healthy, has a count "
        "even at 400 bytes and 4 repeats.)",
    )
    counter_min_repeats: int = Field(
        default=8,
        ge=3,
        description="Repetitions of the line needed as well: a long paragraph written twice with a number "
        "changed is a restatement, not a count.",
    )
    counter_max_period: int = Field(
        default=600,
        ge=16,
        description="Longest repeated line (or group of lines), in characters, looked for.",
    )
    counter_check_every: int = Field(
        default=512,
        ge=1,
        description="Characters between two counting checks (each masks the digits of the last 1,280 "
        "characters, and of 4,096 when those repeat; the signal needs a thousand bytes of count, so "
        "checking more often gains little and costs a regex pass each time).",
    )

    # ---- hand arithmetic (a one-time hint, separate from the loop levels) ------------------------
    arithmetic_slip_hint: bool = Field(
        default=True,
        description="When the reasoning writes a hand computation whose value is wrong (`17 * 24 = 418`, "
        "checked exactly by `loops.arithmetic`), write once per run, in the model's voice, what the "
        "expression really gives and, when the agent has a python tool, that the numbers should be "
        "checked with it. A slip sends the reasoning down a wrong road that no amount of re-checking by "
        "hand finds when the same slip is repeated; anything ambiguous is skipped, so the hint is rare "
        "(one slip in the corpus's 1,249 hand computations, a real one).",
    )
    arithmetic_heavy_hint: int = Field(
        default=0,
        ge=0,
        description="After this many hand computations (`expression = value`) in one turn, hint once per "
        "run that the python tool could compute them (0 = never). Off by default: a long enumeration "
        "worked out correctly by hand is healthy and is better left uninterrupted; turn it on for agents "
        "whose tasks are mostly arithmetic.",
    )

    # ---- answer-stability probe (opt-in) -------------------------------------------------------
    probe_enabled: bool = Field(
        default=False,
        description="After the nudge, send short greedy side requests on the reasoning's prefix "
        "(`AnswerProbe`) and let a stable answer close a loop that keeps circling. Off by default: it "
        "costs extra requests (measure with `benchmarks/probe_cost.py`) and needs a client with "
        "`render_prompt` and `generate` (SGLang's native one). Turns never nudged send no probe.",
    )
    probe_min_reasoning_chars: int = Field(
        default=2000,
        ge=0,
        description="No probe before this much reasoning (the statistical signals' floor): a nudge "
        "from the exact-cycle signal can come sooner, and its loop gets the detector's own close.",
    )
    probe_every_chars: int = Field(
        default=1000,
        ge=200,
        description="Reasoning between two probes (~250 tokens): 16 tokens decoded per probe is ~6% "
        "more decoding, paid only after a nudge, and two probes can close ~1,000 characters after it, "
        "half the detector's own gap (`level2_gap_chars`).",
    )
    probe_max_new_tokens: int = Field(
        default=16,
        ge=1,
        le=256,
        description="Tokens a probe may decode: enough for a number, an option or a short phrase.",
    )
    probe_stable_count: int = Field(
        default=2,
        ge=2,
        description="Probes taken after the nudge that must give the same answer to close: one answer "
        "can be a guess, the same answer twice ~250 tokens of circling apart means the circling no "
        "longer changes it.",
    )
    probe_suffix: str = Field(
        default="\n\n...\n</think>\n\n**Final answer:**",
        min_length=1,
        description="Appended to the reasoning so far to ask for the answer; the elision keeps the "
        "model from reading the probe as its own finished reasoning.",
    )
