"""Scripts for the scripted model server that answer the loop detector's answer-stability probes."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

from qwq_agent.agent.loops.config import LoopDetectorConfig
from qwq_agent.testing.scripted.script import ScriptedRequest, Turn

__all__ = ["probe_aware"]


def probe_aware(texts: Sequence[str], probe_answer: str) -> Callable[[ScriptedRequest], str | Turn]:
    """A script that answers answer-stability probes (`qwq_agent.agent.loops.probe`) with
    `probe_answer` and every other request with the next of `texts`, cycling."""
    suffix = LoopDetectorConfig().probe_suffix
    turn = itertools.count()

    def answer(request: ScriptedRequest) -> str:
        if (request.prompt or "").endswith(suffix):
            return probe_answer
        return texts[next(turn) % len(texts)]

    return answer
