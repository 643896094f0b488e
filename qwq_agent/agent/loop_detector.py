"""Detectors for the two ways an agent run spins without progress (compatibility front).

`ReasoningLoopDetector` watches QwQ's streamed reasoning for circular thinking and escalates: nudge
towards a tool, then force `</think>`, then stop. `ToolCallRepetitionDetector` watches the tool-call
steps for the same call (and the same result) coming back again and again. The code lives in
`qwq_agent.agent.loops` (one module per signal); this module keeps the old import path working.
"""

from __future__ import annotations

from qwq_agent.agent.loops.config import LoopDetectorConfig
from qwq_agent.agent.loops.detector import LoopSignal, ReasoningLoopDetector
from qwq_agent.agent.loops.texts import (
    CLOSE_REASONING_TEXT,
    NUDGE_TEXT,
    arithmetic_text,
    close_text,
    nudge_text,
)
from qwq_agent.agent.loops.tool_calls import (
    RepetitionConfig,
    RepetitionSignal,
    ToolCallRepetitionDetector,
    canonical_call,
)

__all__ = [
    "CLOSE_REASONING_TEXT",
    "NUDGE_TEXT",
    "LoopDetectorConfig",
    "LoopSignal",
    "ReasoningLoopDetector",
    "RepetitionConfig",
    "RepetitionSignal",
    "ToolCallRepetitionDetector",
    "arithmetic_text",
    "canonical_call",
    "close_text",
    "nudge_text",
]
