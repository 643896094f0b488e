"""Conversation data shared by the renderer, the parser, the clients and the loop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from qwq_agent.surrogates import replace_surrogates_in


class ToolSpec(BaseModel):
    """What the model is told about a tool: the `function` object of the `# Tools` preamble."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolCall(BaseModel):
    """One function call the model asked for."""

    id: str = ""
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class MalformedCall(BaseModel):
    """A `<tool_call>` block of an assistant turn that could not be decoded: never run, answered by an error.

    Kept in the turn so that a renderer can show it where it was written, at `position` among the
    turn's calls (parsed and malformed, counted from 0): QwQ's template matches tool results to calls
    by position, and each error must follow the block it answers. `raw` is the text between the tags
    (or to the end of the output, for a call that was cut off), as written.
    """

    id: str = ""
    raw: str
    position: int


class Message(BaseModel):
    """One turn of a conversation.

    `reasoning` holds an assistant turn's thinking (the text before `</think>`); renderers decide
    whether it is shown again in later prompts (QwQ's template drops it). A `tool` message carries one
    tool result in `content`; `tool_call_id`/`name` say which call it answers.
    """

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    reasoning: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    # The turn's calls that could not be decoded (see `MalformedCall`); their errors are tool messages.
    malformed_calls: list[MalformedCall] = Field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None
    # The model's exact output for an assistant turn, when known. Renderers that keep reasoning in
    # history write it verbatim, so the next prompt extends this one token for token.
    raw: str | None = None
    # The token ids the server generated for `raw`, stop token excluded (decode(token_ids) == raw). A
    # native client that keeps reasoning splices them into later prompts verbatim, so the server sees
    # exactly what it generated instead of a re-tokenization of the text. None when unknown (OpenAI API,
    # an old trace, a turn the loop continued with injected text); then the text is tokenized instead.
    token_ids: list[int] | None = None


def replace_surrogates_in_messages(messages: Sequence[Message]) -> list[Message]:
    """`messages` with each lone surrogate in their text replaced by U+FFFD (see `qwq_agent.surrogates`);
    a message without one is kept as the same object.

    For a conversation handed in (`history`), which goes into the prompt as it is: a surrogate there
    renders, but no request holding it can be encoded.
    """
    return [_without_surrogates(m) for m in messages]


def _without_surrogates(message: Message) -> Message:
    data = message.model_dump(exclude={"token_ids"})  # ints only: not walked
    clean = replace_surrogates_in(data)
    if clean is data:
        return message
    # The ids decode to the old `raw`; with `raw` changed they no longer do, so the text is tokenized.
    ids = message.token_ids if clean["raw"] == message.raw else None
    return Message.model_validate({**clean, "token_ids": ids})
