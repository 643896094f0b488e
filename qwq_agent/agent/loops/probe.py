"""The answer-stability probe: ask the model for its answer now, on the side, without stopping it.

Past a length of reasoning, every so often, a short greedy request is sent on the same prefix (the
turn's prompt, the reasoning so far, then `**Final answer:**` after a closed `</think>`). SGLang serves
most of its prefill from the radix cache: the prompt and everything up to the previous probe's point
are already there (a finished request's tokens are inserted in the tree), so a probe prefills roughly
the reasoning written since the last one and decodes at most `probe_max_new_tokens`. The probes run as
tasks beside the streamed turn; the turn never waits for one. When the answers taken after the nudge
agree while the reasoning keeps circling, the detector closes the reasoning (`observe_probe`).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from pydantic import BaseModel

from qwq_agent.agent.loops.config import LoopDetectorConfig
from qwq_agent.agent.messages import Message, ToolSpec
from qwq_agent.protocols import Completion, SamplingParams

__all__ = ["AnswerProbe", "ProbeModel", "ProbeResult", "PromptRenderer", "normalise_answer"]


@runtime_checkable
class PromptRenderer(Protocol):
    """A client that can tell the raw prompt it streams a conversation from (the probe's prefix)."""

    def render_prompt(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> str:
        """The prompt `stream` sends for this conversation (before any `prefix`)."""
        ...


@runtime_checkable
class ProbeModel(Protocol):
    """What a probe needs from a client: one non-streamed completion of a raw prompt."""

    async def generate(self, prompt: str | list[int], params: SamplingParams | None = None) -> Completion:
        """Generate to the end and return the completion (text and usage)."""
        ...


class ProbeResult(BaseModel):
    """One probe: where in the reasoning it was taken, what it answered and what it cost."""

    at_chars: int  # where, in UTF-8 bytes of reasoning (characters for ASCII), like the length thresholds
    answer: str  # normalised (`normalise_answer`); "" when the model gave nothing usable
    text: str
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    error: str | None = None


_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_MARKUP = re.compile(r"[*$`_]|\\\(|\\\)|\\\[|\\\]")
_OPTION = re.compile(r"^\(?([A-J])\)?(?:[.:)\s]|$)")
_MAX_ANSWER = 40


def normalise_answer(text: str) -> str:
    """The answer a probe gave, in a form two probes can be compared by: its first line, without
    markup (`**`, `$`, `\\boxed{}`), a leading option letter alone, lower-cased, trailing dot dropped."""
    boxed = _BOXED.search(text)
    line = boxed.group(1) if boxed else next((ln for ln in text.splitlines() if ln.strip()), "")
    line = _MARKUP.sub("", line).strip()
    option = _OPTION.match(line)
    if option:
        return option.group(1)
    return line.rstrip(".").strip().lower()[:_MAX_ANSWER]


class AnswerProbe:
    """Schedules probes as the reasoning grows and collects their answers as they finish.

    `maybe_launch` is given the probe's prompt to build: the turn's prompt (the rendered chat plus any
    prefix the turn already carries), the reasoning so far, then the probe's suffix.
    """

    def __init__(self, model: ProbeModel, config: LoopDetectorConfig) -> None:
        self.model = model
        self.config = config
        self.results: list[ProbeResult] = []
        self.pending: set[asyncio.Task[ProbeResult]] = set()
        self._launched_at: dict[asyncio.Task[ProbeResult], int] = {}
        self._next_at = config.probe_min_reasoning_chars

    def due(self, reasoning_chars: int) -> bool:
        """Whether a probe should be taken at this much reasoning (one in flight at a time)."""
        return self.config.probe_enabled and not self.pending and reasoning_chars >= self._next_at

    def maybe_launch(self, prompt: Callable[[str], str | list[int]], reasoning_chars: int) -> bool:
        """Start a probe if one is due, on `prompt(suffix)`: the turn's prompt, the reasoning so far,
        then `suffix` (`probe_suffix`), as the client sends it (text, or ids where its requests go as
        ids), so that the probe extends what the server has cached of the turn."""
        if not self.due(reasoning_chars):
            return False
        self._next_at = reasoning_chars + self.config.probe_every_chars
        task = asyncio.ensure_future(self._probe(prompt(self.config.probe_suffix), reasoning_chars))
        self.pending.add(task)
        self._launched_at[task] = reasoning_chars
        return True

    def collect(self) -> list[ProbeResult]:
        """The probes that finished since the last call, oldest first."""
        done = sorted((t for t in self.pending if t.done()), key=lambda t: t.result().at_chars)
        for task in done:
            self.pending.discard(task)
            self._launched_at.pop(task, None)
        out = [t.result() for t in done]
        self.results.extend(out)
        return out

    async def aclose(self) -> None:
        """Cancel the probes still in flight (the stream they rode on ended) and wait for them.

        A cancelled probe gave no answer, so the schedule goes back to its point: the turn's next
        request (after a nudge, say) probes again at once.
        """
        tasks, self.pending = self.pending, set()
        for task in tasks:
            task.cancel()
            self._next_at = min(self._next_at, self._launched_at.pop(task, self._next_at))
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _probe(self, prompt: str | list[int], at_chars: int) -> ProbeResult:
        params = SamplingParams(
            max_new_tokens=self.config.probe_max_new_tokens, temperature=0.0, top_p=1.0, top_k=-1
        )
        started = time.perf_counter()
        try:
            done = await self.model.generate(prompt, params)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failed probe is no answer, never a failed turn
            return ProbeResult(
                at_chars=at_chars,
                answer="",
                text="",
                seconds=time.perf_counter() - started,
                error=f"{type(exc).__name__}: {exc}",
            )
        usage = done.usage
        return ProbeResult(
            at_chars=at_chars,
            answer=normalise_answer(done.text),
            text=done.text,
            prompt_tokens=usage.prompt_tokens,
            cached_tokens=usage.cached_tokens,
            completion_tokens=usage.completion_tokens,
            seconds=time.perf_counter() - started,
        )
