"""Each request's prompt is tokenized once: the count that fits it to the context is of the prompt it sends.

Before every request the turn counts its prompt against the model's context (`prompt_size`); the native
client then sends that prompt. A long transcript re-tokenized for the send cost as much again, on the
event loop, every step. Here a real run against the scripted server (in a thread of its own) counts the
texts QwQ's tokenizer encodes on the run's thread, through Python's profiling hook: nothing of ours is
replaced.
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

import pytest

from qwq_agent.agent.chat_format import render_segments
from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.exact_tokens import encode_segments
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.messages import Message
from qwq_agent.agent.tokenizer import QwenTokenizer, get_tokenizer
from qwq_agent.testing.helpers import add, call
from qwq_agent.testing.scripted_server import ScriptedModelServer, Turn

TOK = get_tokenizer()
ENCODE = QwenTokenizer.encode.__code__
CONTEXT = 4096  # no more than the 4096 new tokens asked for: each request asks for the room its count leaves


def sampled(reasoning: str, rest: str) -> Turn:
    """A turn generated as ids the tokenizer would not choose (the reasoning one character per token):
    kept with its ids, it goes back spliced in, so later prompts go as ids, not text."""
    return Turn(ids=[i for ch in reasoning for i in TOK.encode(ch)] + TOK.encode(rest))


TURNS = [
    sampled("First add two and three.", "\n</think>\n\n" + call("add", a=2, b=3)),
    sampled("Now add ten to five.", "\n</think>\n\n" + call("add", a=5, b=10)),
    sampled("Fifteen answers it.", "\n</think>\n\n15"),
]


class EncodedTexts:
    """The texts `QwenTokenizer.encode` is called with on this thread while it is active."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self._before: Any = None

    def _profile(self, frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code is ENCODE:
            self.texts.append(frame.f_locals["text"])

    def __enter__(self) -> EncodedTexts:
        self._before = sys.getprofile()
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(self._before)


@pytest.mark.parametrize("keep_reasoning", [True, False], ids=["ids", "text"])
async def test_each_request_tokenizes_its_prompt_once(keep_reasoning: bool) -> None:
    # The server reports its context length, so every request is counted before it is sent.
    with ScriptedModelServer(TURNS, context_length=CONTEXT) as server:
        async with SGLangClient(server.url, retry=NO_RETRY, keep_reasoning=keep_reasoning) as client:
            agent = Agent(client, [add], config=AgentConfig(check_language=False))
            with EncodedTexts() as encoded:
                result = await agent.run("What is 2 + 3 + 10?")
        requests = list(server.requests)
    assert result.status == "completed" and result.answer == "15"
    assert len(requests) == 3
    # Later prompts go as ids with the kept turns spliced in (their tokenizing is what was doubled).
    assert [r.input_ids is not None for r in requests] == [False, keep_reasoning, keep_reasoning]
    # What one tokenization of each prompt encodes: its text, the kept turns' ids spliced in aside.
    spliced = [sum(len(t.ids or []) for t in TURNS[:k]) if keep_reasoning else 0 for k in range(3)]
    needed = sum(len(r.prompt_ids) - n for r, n in zip(requests, spliced, strict=True))
    # The prompt's text runs: from its start, or from the `<|im_end|>` after a kept turn.
    prompt_texts = [t for t in encoded.texts if t.startswith(("<|im_start|>", "<|im_end|>"))]
    assert sum(len(TOK.encode(t)) for t in prompt_texts) == needed
    # Counted before it was sent, and counted as sent: each asked for all the room its prompt left.
    assert [len(r.prompt_ids) + r.sampling_params["max_new_tokens"] for r in requests] == [CONTEXT - 1] * 3


async def test_a_prepared_prompt_is_what_the_client_rendered_and_sent_before() -> None:
    # A kept turn in which the model spelt a chat-template marker in ordinary tokens: its ids go back as
    # they are, while the prompt's text (what traces record and replays compare) is `render`'s, defused.
    raw = "Spell <|im_end|> out.\n</think>\n\nDone."
    messages = [
        Message(role="user", content="Say it."),
        Message(role="assistant", raw=raw, token_ids=TOK.encode(raw, allow_special=False), content="Done."),
        Message(role="user", content="Again."),
    ]
    prefix = "Let me see.\n</think>\n\n"
    for keep_reasoning, exact_tokens in ((True, True), (True, False), (False, True)):
        async with SGLangClient(
            "http://127.0.0.1:9", keep_reasoning=keep_reasoning, exact_tokens=exact_tokens
        ) as client:
            prepared = client.prepare_prompt(messages, [add.spec], prefix=prefix)
            text = client.render_prompt(messages, [add.spec]) + prefix
        assert prepared.text == text and "<|im_end|> out" not in text
        if keep_reasoning and exact_tokens:
            segments = render_segments(messages, [add.spec], keep_reasoning=True)
            assert prepared.ids == encode_segments([*segments, prefix])
            assert prepared.tokens == len(prepared.ids)
        else:
            assert prepared.ids is None and prepared.tokens == len(TOK.encode(text))
