"""JSONL traces of agent runs: writing, reading, replaying and resuming.

Each line is one event (see `qwq_agent.agent.events`). `model_call` events hold the exact prompt and
completion of every model request, so the recorded completions can serve as the model again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import IO

from qwq_agent.agent.events import EVENT_ADAPTER, Event, ModelCall, RunStarted
from qwq_agent.agent.messages import Message, ToolSpec
from qwq_agent.protocols import Completion, ModelEvent, SamplingParams, TextDelta


class TraceWriter:
    """Appends events to a JSONL file, one flushed line each, so a crash loses at most one event.

    Each prompt extends the previous one almost entirely, so a `model_call` line stores only what
    follows the prefix it shares with the previous prompt (`prompt_shared_prefix_chars` says how
    long that is); `read_trace` puts the whole prompt back. A trace grows with the conversation,
    not with its square.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] | None = self.path.open("a", encoding="utf-8")
        self._last_prompt = ""

    def write(self, event: Event) -> None:
        if self._fh is None:
            return
        if isinstance(event, ModelCall) and event.prompt is not None:
            shared = common_prefix_len(self._last_prompt, event.prompt)
            self._last_prompt = event.prompt
            event = event.model_copy(
                update={"prompt": event.prompt[shared:], "prompt_shared_prefix_chars": shared}
            )
        self._fh.write(event.model_dump_json(exclude_none=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def common_prefix_len(a: str, b: str) -> int:
    """Length of the longest common prefix, by bisection over C-level slice compares.

    A character loop in Python (`os.path.commonprefix`) costs milliseconds on a long prompt, on
    every step; this costs O(log n) compares.
    """
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def read_trace(path: str | Path) -> list[Event]:
    """Events of a trace file; a torn last line (an interrupted write) is skipped."""
    events: list[Event] = []
    last_prompt = ""
    # JSON lines end at "\n" only; splitlines() would also split inside strings at U+0085, U+2028, ...
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            event = EVENT_ADAPTER.validate_json(line)
        except ValueError:
            if i == len(lines) - 1:
                break
            raise
        if isinstance(event, ModelCall) and event.prompt is not None:
            shared = event.prompt_shared_prefix_chars or 0
            event.prompt = last_prompt[:shared] + event.prompt
            last_prompt = event.prompt
        events.append(event)
    return events


def recorded_completions(events: Iterable[Event]) -> list[ModelCall]:
    return [e for e in events if isinstance(e, ModelCall)]


def task_of(events: Sequence[Event]) -> str:
    for e in events:
        if isinstance(e, RunStarted):
            return e.task
    raise ValueError("trace has no run_started event")


class ReplayExhausted(RuntimeError):
    """The replay model was asked for more completions than the trace recorded."""


class ReplayModel:
    """A `Model` that answers with the completions recorded in a trace, in order.

    With `then`, it hands over to a live model once the recording runs out: that is how an
    interrupted run resumes (the recorded turns are replayed, tools re-run in a fresh sandbox so its
    state is rebuilt, and the live model continues from where the trace ends).
    """

    def __init__(self, calls: Sequence[ModelCall], *, then: object | None = None, chunk: int = 16) -> None:
        self._calls = list(calls)
        self._next = 0
        self._then = then
        self._chunk = chunk
        self.name = f"replay({len(self._calls)} completions)"

    @classmethod
    def from_trace(cls, path: str | Path, **kw: object) -> ReplayModel:
        return cls(recorded_completions(read_trace(path)), **kw)  # type: ignore[arg-type]

    @property
    def remaining(self) -> int:
        return len(self._calls) - self._next

    async def stream(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        params: SamplingParams,
        *,
        prefix: str = "",
    ) -> AsyncIterator[ModelEvent]:
        if self._next >= len(self._calls):
            if self._then is None:
                raise ReplayExhausted(f"the trace recorded {len(self._calls)} completions; all were used")
            async for ev in self._then.stream(messages, tools, params, prefix=prefix):  # type: ignore[attr-defined]
                yield ev
            return
        call = self._calls[self._next]
        self._next += 1
        text = call.completion
        for i in range(0, len(text), self._chunk):
            yield TextDelta(text=text[i : i + self._chunk])
        yield Completion(text=text, prompt=call.prompt, usage=call.usage)

    def render_prompt(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> str:
        """The prompt a native client would send (replayed constrained calls ask for it)."""
        if self._next >= len(self._calls) and self._then is not None:
            return self._then.render_prompt(messages, tools)  # type: ignore[attr-defined]
        from qwq_agent.agent.chat_format import render

        return render(list(messages), list(tools))

    async def generate(self, prompt: str, params: SamplingParams | None = None) -> Completion:
        """The next recorded completion as a whole (a constrained tool call, when replaying one)."""
        if self._next >= len(self._calls):
            if self._then is None:
                raise ReplayExhausted(f"the trace recorded {len(self._calls)} completions; all were used")
            return await self._then.generate(prompt, params)  # type: ignore[attr-defined]
        call = self._calls[self._next]
        self._next += 1
        return Completion(text=call.completion, prompt=call.prompt, usage=call.usage)

    async def aclose(self) -> None:
        if self._then is not None:
            await self._then.aclose()  # type: ignore[attr-defined]
