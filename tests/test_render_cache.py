"""The renderer's per-turn caches: a turn is rendered once while its message lives, and no longer kept after.

A service runs one agent after another in one process; the caches that spare each step a re-render of the
whole history must not keep what finished runs wrote (raw output, reasoning, token ids) alive after them.
"""

from __future__ import annotations

import gc
import random
import weakref

import pytest

from qwq_agent.agent.chat_format import render
from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.messages import Message, ToolCall
from qwq_agent.testing.helpers import add, call
from qwq_agent.testing.scripted_server import ScriptedModelServer

RUNS = 6
# Reasoning of some length that does not repeat itself (the loop detector would cut it short).
_WORDS = random.Random(1).choices(
    ["alpha", "bravo", "cargo", "delta", "ember", "fable", "gamma", "harbor"], k=600
)
TOOL_TURN = " ".join(_WORDS) + "\n</think>\n\n" + call("add", a=2, b=3)
ANSWER = "It is 5.\n</think>\n\n5"


@pytest.mark.parametrize("keep_reasoning", [False, True], ids=["history-text", "kept-ids"])
async def test_finished_runs_leave_none_of_their_messages_alive(keep_reasoning: bool) -> None:
    # keep_reasoning=False renders earlier turns as text (the history cache); True splices their
    # token ids (the span cache). Both were process-wide and held every assistant turn ever rendered.
    refs: list[weakref.ref[Message]] = []
    async with (
        ScriptedModelServer([TOOL_TURN, ANSWER], when_exhausted="repeat") as server,
        SGLangClient(server.url, keep_reasoning=keep_reasoning, retry=NO_RETRY) as client,
    ):
        for i in range(RUNS):
            agent = Agent(client, [add], config=AgentConfig(check_language=False))
            result = await agent.run(f"task {i}: add 2 and 3")
            assert result.status == "completed", (result.status, result.error)
            turns = [m for m in result.messages if m.role == "assistant"]
            assert len(turns) == 2 and turns[0].token_ids  # the first went back in the second prompt
            refs.extend(weakref.ref(m) for m in result.messages)
            del agent, result, turns
        gc.collect()
        alive = [m.role for r in refs if (m := r()) is not None]
        assert alive == []


def test_a_live_turn_is_rendered_once_and_forgotten_with_its_message() -> None:
    turn = Message(
        role="assistant", reasoning="r", tool_calls=[ToolCall(name="add", arguments={"a": 2, "b": 3})]
    )
    conversation = [
        Message(role="user", content="q"),
        turn,
        Message(role="tool", content="5"),
        Message(role="user", content="again"),
    ]
    first = render(conversation)
    assert '"a": 2' in first
    # Messages are taken as immutable once sent, so an edit in place is not seen while the turn lives:
    # each step reuses the turn's text instead of rendering the whole history again.
    turn.tool_calls[0].arguments["a"] = 7
    assert render(conversation) == first

    ref = weakref.ref(turn)
    del turn, conversation
    gc.collect()
    assert ref() is None
    # A new message may get the collected one's id(): it is rendered for itself.
    again = Message(
        role="assistant", reasoning="r", tool_calls=[ToolCall(name="add", arguments={"a": 7, "b": 3})]
    )
    assert '"a": 7' in render([Message(role="user", content="q"), again, Message(role="user", content="x")])
