"""Incremental parser for QwQ's raw output: reasoning, `</think>`, content and `<tool_call>` blocks.

The generation prompt ends with `<think>\\n`, so the output starts inside the reasoning:

    reasoning ...\\n</think>\\n\\ncontent <tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>

`StreamParser` is fed the output as it streams and emits typed events. Text is held back only while it
could still be the start of a tag, so deltas never leak a partial tag, and the merged events are the
same whatever the chunking. `parse` does the whole thing for a complete output.
"""

from __future__ import annotations

import re
from enum import Enum
from itertools import groupby
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from qwq_agent.agent.messages import ToolCall
from qwq_agent.agent.repair import CallDecodeError, decode_call, ends_inside_string

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"

REPAIR_MISSING_CLOSE = "added the missing </tool_call> at the end of the output"
CUT_OFF_MESSAGE = (
    "the call was cut off before it ended ({why}), so it was not run. Write the whole call "
    "again in one <tool_call> block; if it is long (a big file or script), split the work into "
    "several smaller calls."
)


# The name of a cut-off call, when it got that far (so the observation can name its tool).
_NAME = re.compile(r'"name"\s*:\s*"([^"\\]{1,200})"')


class ReasoningDelta(BaseModel):
    """A piece of the reasoning (text before `</think>`), exactly as generated."""

    kind: Literal["reasoning"] = "reasoning"
    text: str


class ReasoningEnd(BaseModel):
    """`</think>` was seen: what follows is content and tool calls."""

    kind: Literal["reasoning_end"] = "reasoning_end"


class ContentDelta(BaseModel):
    """A piece of the content (text after `</think>`, outside `<tool_call>` blocks), exactly as generated."""

    kind: Literal["content"] = "content"
    text: str


class ToolCallParsed(BaseModel):
    """A `<tool_call>` block decoded into a call; `repairs` names each fix applied to `raw`."""

    kind: Literal["tool_call"] = "tool_call"
    call: ToolCall
    raw: str
    repairs: list[str] = Field(default_factory=list)


class ToolCallError(BaseModel):
    """A `<tool_call>` block that could not be decoded; `message` is written for the model to act on.

    It has an `id` like a parsed call so the loop can answer it with a tool message; `name` is set when
    the name could be read. `cut_off` is set when the output ended before the call did (inside one of
    its strings, or at the token limit): such a call is never repaired into something runnable.
    """

    kind: Literal["tool_call_error"] = "tool_call_error"
    id: str
    raw: str
    message: str
    name: str | None = None
    cut_off: bool = False


class ToolCallInReasoning(BaseModel):
    """A `<tool_call>` written before `</think>`: never executed, reported so the loop can nudge the model.

    `raw` is the text after `<tool_call>` up to `</tool_call>`, `</think>` or the end of the output.
    """

    kind: Literal["tool_call_in_reasoning"] = "tool_call_in_reasoning"
    raw: str


ParseEvent = Annotated[
    ReasoningDelta | ReasoningEnd | ContentDelta | ToolCallParsed | ToolCallError | ToolCallInReasoning,
    Field(discriminator="kind"),
]


class ParseResult(BaseModel):
    """The parse of a whole output.

    `reasoning` and `content` are stripped of surrounding whitespace (the deltas keep it); `content`
    excludes the tool call blocks. `repairs` maps a call id to the repairs applied to that call.
    `call_ids` are the ids of `tool_calls` and `errors` together, in the order the calls were written:
    QwQ's template gives tool results no ids, so the model matches them to its calls by position.
    """

    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    errors: list[ToolCallError] = Field(default_factory=list)
    reasoning_tool_calls: list[str] = Field(default_factory=list)
    reasoning_closed: bool = False
    repairs: dict[str, list[str]] = Field(default_factory=dict)
    call_ids: list[str] = Field(default_factory=list)


class _State(Enum):
    START = "start"  # deciding whether the output opens with an explicit <think>
    AFTER_OPEN = "after_open"  # just dropped <think>; drop one newline after it
    REASONING = "reasoning"
    REASONING_CALL = "reasoning_call"  # inside a <tool_call> written in the reasoning
    CONTENT = "content"
    CALL = "call"  # inside a <tool_call> block after </think>


_TERMINATORS: dict[_State, tuple[str, ...]] = {
    _State.REASONING: (THINK_CLOSE, CALL_OPEN),
    _State.REASONING_CALL: (THINK_CLOSE, CALL_CLOSE),
    _State.CONTENT: (CALL_OPEN,),
    _State.CALL: (CALL_CLOSE,),
}


def _held_suffix_start(buf: str, tags: tuple[str, ...], pos: int = 0) -> int:
    """Index where the longest suffix of `buf[pos:]` that is a proper prefix of one of `tags` starts."""
    longest = max(len(t) for t in tags) - 1
    # Every tag starts with "<": without one near the end nothing can be held (the common case).
    start = buf.find("<", max(pos, len(buf) - longest))
    if start < 0:
        return len(buf)
    for i in range(start, len(buf)):
        tail = buf[i:]
        if any(t.startswith(tail) for t in tags):
            return i
    return len(buf)


class StreamParser:
    """Parse QwQ's raw output incrementally.

    `feed(chunk)` returns the events the chunk completes; `close()` flushes what was held back and
    finishes an unterminated tool call. Neither raises on any text. Call ids are
    `f"{id_prefix}{n}"` with n counting from `first_id`, shared by parsed calls and call errors.
    """

    def __init__(self, *, id_prefix: str = "call_", first_id: int = 0) -> None:
        self._id_prefix = id_prefix
        self._next_id = first_id
        self._state = _State.START
        self._buf = ""  # undecided text: a possible tag prefix, or the start-of-output probe
        # Leading whitespace set aside while the start is undecided: re-stripping a growing run of it on
        # every chunk was quadratic (a model spewing blank lines: 64 KB in 16-char chunks, 0.04 s; 1 MB, 10 s).
        self._lead: list[str] = []
        self._call_parts: list[str] = []  # body of the current tool call (either kind)
        self._closed = False
        self._events: list[ParseEvent] = []

    @property
    def reasoning_closed(self) -> bool:
        """Whether `</think>` has been seen."""
        return self._state in (_State.CONTENT, _State.CALL)

    @property
    def answering(self) -> bool:
        """Whether the output is in its answer: past `</think>`, outside any tool call, and with no call
        written after the reasoning (so the text so far, cut here, is the turn's final answer)."""
        return self._state is _State.CONTENT and not any(
            isinstance(ev, ToolCallParsed | ToolCallError) for ev in self._events
        )

    @property
    def reasoning_only(self) -> bool:
        """Whether the output so far is all reasoning (no `</think>`) with no tool call written in it."""
        return self._state in (_State.START, _State.AFTER_OPEN, _State.REASONING) and not any(
            isinstance(ev, ToolCallInReasoning) for ev in self._events
        )

    def holding(self) -> bool:
        """Whether text is held back undecided (it may start a tag, such as a `</think>` cut in two)."""
        return bool(self._buf)

    def feed(self, chunk: str) -> list[ParseEvent]:
        """Consume the next piece of output; return the events it completes."""
        if self._closed:
            raise RuntimeError("StreamParser.feed() after close()")
        out: list[ParseEvent] = []
        self._buf += chunk
        self._run(out)
        self._events.extend(out)
        return out

    def close(self, *, length_limited: bool = False) -> list[ParseEvent]:
        """Signal the end of the output; return the remaining events. Idempotent.

        `length_limited`: the output stopped at the token limit (`finish_reason="length"`), so a call
        still open was cut off, not merely left without its closing tag.
        """
        if self._closed:
            return []
        self._closed = True
        out: list[ParseEvent] = []
        buf, self._buf = "".join(self._lead) + self._buf, ""
        self._lead = []
        state = self._state
        if state in (_State.START, _State.REASONING):
            self._emit_reasoning(out, buf)
        elif state is _State.REASONING_CALL:
            self._emit_reasoning(out, buf)
            self._call_parts.append(buf)
            out.append(ToolCallInReasoning(raw=self._take_call_body()))
        elif state is _State.CONTENT:
            if buf:
                out.append(ContentDelta(text=buf))
            if length_limited and not buf.strip():
                self._cut_off_last_call()
        elif state is _State.CALL:
            self._call_parts.append(buf)
            body = self._take_call_body()
            if length_limited:
                out.append(self._cut_off_call(body, "the output reached the token limit"))
            elif ends_inside_string(body):
                out.append(self._cut_off_call(body, "the output ended inside a string"))
            else:
                out.append(self._finish_call(body, [REPAIR_MISSING_CLOSE]))
        self._events.extend(out)
        return out

    def result(self) -> ParseResult:
        """The parse of everything fed so far (complete once `close()` has been called)."""
        return result_from_events(self._events, reasoning_closed=self.reasoning_closed)

    # -- internals -------------------------------------------------------------------------------

    def _run(self, out: list[ParseEvent]) -> None:
        while self._buf:
            state = self._state
            if state is _State.START:
                probe = self._buf.lstrip()
                if not probe:
                    self._lead.append(self._buf)
                    self._buf = ""
                    return
                if THINK_OPEN.startswith(probe):
                    return  # still could be an explicit <think>
                if probe.startswith(THINK_OPEN):
                    self._buf = probe[len(THINK_OPEN) :]
                    self._state = _State.AFTER_OPEN
                else:
                    self._buf = "".join(self._lead) + self._buf
                    self._state = _State.REASONING
                self._lead = []
                continue
            if state is _State.AFTER_OPEN:
                if self._buf.startswith("\n"):
                    self._buf = self._buf[1:]
                self._state = _State.REASONING
                continue

            self._scan(out)
            return

    def _scan(self, out: list[ParseEvent]) -> None:
        """Consume the buffer tag by tag, past the start of the output; keep only a possible tag prefix.

        The buffer is read with a position and cut once at the end: cutting it after every tag made one
        large feed cost tags x length. For the same reason each tag's next occurrence is remembered
        while it lies ahead: looking again for a `</think>` that never comes, after every `<tool_call>`
        of a reasoning that repeats one, would read the rest of the text each time.
        """
        buf, pos = self._buf, 0
        next_at: dict[str, int] = {}  # a tag's first index at or after where it was last looked for; -1: none
        while pos < len(buf):
            tags = _TERMINATORS[self._state]
            found_at, found_tag = -1, ""
            for tag in tags:
                i = next_at.get(tag)
                if i is None or 0 <= i < pos:
                    i = next_at[tag] = buf.find(tag, pos)
                if i >= 0 and (found_at < 0 or i < found_at):
                    found_at, found_tag = i, tag
            if found_at < 0:
                cut = _held_suffix_start(buf, tags, pos)
                self._consume_text(out, buf[pos:cut])
                self._buf = buf[cut:]
                return
            self._consume_text(out, buf[pos:found_at])
            pos = found_at + len(found_tag)
            self._on_tag(out, found_tag)
        self._buf = ""

    def _consume_text(self, out: list[ParseEvent], text: str) -> None:
        if not text:
            return
        state = self._state
        if state is _State.REASONING:
            self._emit_reasoning(out, text)
        elif state is _State.REASONING_CALL:
            self._emit_reasoning(out, text)
            self._call_parts.append(text)
        elif state is _State.CONTENT:
            out.append(ContentDelta(text=text))
        elif state is _State.CALL:
            self._call_parts.append(text)

    def _on_tag(self, out: list[ParseEvent], tag: str) -> None:
        state = self._state
        if tag == THINK_CLOSE:
            if state is _State.REASONING_CALL:
                out.append(ToolCallInReasoning(raw=self._take_call_body()))
            out.append(ReasoningEnd())
            self._state = _State.CONTENT
        elif state is _State.REASONING:  # <tool_call> inside the reasoning: still reasoning text
            self._emit_reasoning(out, tag)
            self._state = _State.REASONING_CALL
        elif state is _State.REASONING_CALL:  # </tool_call> inside the reasoning
            self._emit_reasoning(out, tag)
            out.append(ToolCallInReasoning(raw=self._take_call_body()))
            self._state = _State.REASONING
        elif state is _State.CONTENT:  # <tool_call>
            self._state = _State.CALL
        elif state is _State.CALL:  # </tool_call>
            out.append(self._finish_call(self._take_call_body(), []))
            self._state = _State.CONTENT

    @staticmethod
    def _emit_reasoning(out: list[ParseEvent], text: str) -> None:
        if text:
            out.append(ReasoningDelta(text=text))

    def _take_call_body(self) -> str:
        body = "".join(self._call_parts)
        self._call_parts = []
        return body

    def _new_id(self) -> str:
        call_id = f"{self._id_prefix}{self._next_id}"
        self._next_id += 1
        return call_id

    def _cut_off_call(self, raw: str, why: str) -> ToolCallError:
        name = _NAME.search(raw)
        return ToolCallError(
            id=self._new_id(),
            raw=raw,
            message=CUT_OFF_MESSAGE.format(why=why),
            name=name.group(1) if name else None,
            cut_off=True,
        )

    def _cut_off_last_call(self) -> None:
        """At the token limit, a call that ends the output and was not whole JSON was cut off.

        Its closing tag was written by a client that assembles calls from an API's argument deltas
        (OpenAI-style), not by the model; adding brackets would run it with its arguments cut short.
        """
        i = len(self._events) - 1
        while i >= 0 and isinstance(ev := self._events[i], ContentDelta) and not ev.text.strip():
            i -= 1  # only whitespace after the call
        last = self._events[i] if i >= 0 else None
        if isinstance(last, ToolCallParsed) and any("closing bracket" in r for r in last.repairs):
            cut = ToolCallError(
                id=last.call.id,
                raw=last.raw,
                message=CUT_OFF_MESSAGE.format(why="the output reached the token limit"),
                name=last.call.name,
                cut_off=True,
            )
        elif isinstance(last, ToolCallError) and not last.cut_off:
            why = "the output reached the token limit"
            cut = last.model_copy(update={"message": CUT_OFF_MESSAGE.format(why=why), "cut_off": True})
        else:
            return
        self._events[i] = cut

    def _finish_call(self, raw: str, repairs: list[str]) -> ToolCallParsed | ToolCallError:
        call_id = self._new_id()
        try:
            decoded = decode_call(raw)
        except CallDecodeError as exc:
            return ToolCallError(id=call_id, raw=raw, message=str(exc), name=exc.name)
        call = ToolCall(id=call_id, name=decoded.name, arguments=decoded.arguments)
        return ToolCallParsed(call=call, raw=raw, repairs=[*repairs, *decoded.repairs])


_DELTAS = (ReasoningDelta, ContentDelta)


def _delta_kind(ev: ParseEvent) -> type[ReasoningDelta] | type[ContentDelta] | None:
    """The class of a reasoning or content delta; None for the other events, which are never merged."""
    return type(ev) if isinstance(ev, _DELTAS) else None


def merge_deltas(events: list[ParseEvent]) -> list[ParseEvent]:
    """Join adjacent reasoning/content deltas: the chunking-independent form of an event list."""
    merged: list[ParseEvent] = []
    # One join per run of deltas: adding each delta to a growing text was quadratic in their number.
    for kind, run in groupby(events, key=_delta_kind):
        if kind is None:
            merged.extend(run)
        else:
            merged.append(kind(text="".join(ev.text for ev in run if isinstance(ev, _DELTAS))))
    return merged


def result_from_events(events: list[ParseEvent], *, reasoning_closed: bool | None = None) -> ParseResult:
    """Collect events into a `ParseResult`."""
    reasoning: list[str] = []
    content: list[str] = []
    res = ParseResult()
    saw_end = False
    for ev in events:
        if isinstance(ev, ReasoningDelta):
            reasoning.append(ev.text)
        elif isinstance(ev, ContentDelta):
            content.append(ev.text)
        elif isinstance(ev, ReasoningEnd):
            saw_end = True
        elif isinstance(ev, ToolCallParsed):
            res.tool_calls.append(ev.call)
            res.call_ids.append(ev.call.id)
            if ev.repairs:
                res.repairs[ev.call.id] = list(ev.repairs)
        elif isinstance(ev, ToolCallError):
            res.errors.append(ev)
            res.call_ids.append(ev.id)
        elif isinstance(ev, ToolCallInReasoning):
            res.reasoning_tool_calls.append(ev.raw)
    res.reasoning = "".join(reasoning).strip()
    res.content = "".join(content).strip()
    res.reasoning_closed = saw_end if reasoning_closed is None else reasoning_closed
    return res


def parse(
    text: str, *, id_prefix: str = "call_", first_id: int = 0, length_limited: bool = False
) -> ParseResult:
    """Parse a complete output (`length_limited`: it stopped at the token limit). Never raises."""
    parser = StreamParser(id_prefix=id_prefix, first_id=first_id)
    parser.feed(text)
    parser.close(length_limited=length_limited)
    return parser.result()


__all__ = [
    "CALL_CLOSE",
    "CALL_OPEN",
    "CUT_OFF_MESSAGE",
    "THINK_CLOSE",
    "THINK_OPEN",
    "ContentDelta",
    "ParseEvent",
    "ParseResult",
    "ReasoningDelta",
    "ReasoningEnd",
    "StreamParser",
    "ToolCallError",
    "ToolCallInReasoning",
    "ToolCallParsed",
    "merge_deltas",
    "parse",
    "result_from_events",
]
