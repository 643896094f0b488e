"""Chat-template markers in untrusted text, defused before the text enters a prompt.

A tool's output is written by whatever the tool touched: a file in the sandbox, a web page, an MCP server.
QwQ's prompt is text, and the server tokenizes it with its added tokens recognised (the official template
and Hugging Face's tokenizer do the same), so an output that contains ``<|im_end|>\\n<|im_start|>assistant``
would close the tool turn and open a forged assistant (or system) turn: the model would read the
attacker's text as its own earlier words. `defuse` breaks every such marker with a zero-width space
after its ``<``, so it tokenizes as ordinary text and the model still reads what was written.

Defused: every ``<|...|>`` control token of QwQ's vocabulary (turn boundaries, end of text, vision and
FIM tokens) and ``<tool_response>``/``</tool_response>``, the frame around each tool result; in a tool's
spec (`defuse_spec`), also ``<tools>``/``</tools>``, the frame around the list of tools. Left alone:
``<tool_call>`` and ``<think>`` (in a result they only quote what a model writes; our parser reads model
output, never results), so source code that mentions them is shown as it is.

The model's own text is untrusted the same way when the host writes it back into a later prompt: SGLang
shows no control token in its output text (it skips special tokens), so a marker there was spelt in
ordinary tokens, or as a JSON escape (``\\u003c|im_end|>``) that decoding made a ``<``; re-tokenized as
written, it would become the control token. Its text is defused with `defuse` too; JSON that the host
re-serialises (a tool call) is defused with `defuse_json`, which breaks the same markers by writing their
``<`` as the escape ``\\u003c``, so the JSON value stays the same; except where a server decodes that JSON
before its template writes it (the OpenAI client's arguments), which would undo the escape: there the
values are defused with `defuse`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from importlib import resources

__all__ = ["ZWSP", "defuse", "defuse_json", "defuse_spec"]

TOOL_RESPONSE_TEXT = "<tool_response>"
TOOL_RESPONSE_END_TEXT = "</tool_response>"

ZWSP = "\u200b"
JSON_LT = "\\u003c"
"""``<`` as a JSON string escape: the same character to a JSON reader, ordinary text to the tokenizer."""

# The control tokens of QwQ's vocabulary (`<|im_end|>`, `<|endoftext|>`, `<|vision_pad|>`...) and the frame
# of a result; `<|` + other text is ordinary text to the tokenizer and stays as written.
# Read from the package data directly: the tokenizer module needs the optional `tokenizer` extra.
_ADDED = json.loads(resources.files("qwq_agent.agent").joinpath("qwen_added_tokens.json").read_text("utf-8"))
_DEFUSED = frozenset(
    [t["content"] for t in _ADDED if t["content"].startswith("<|")]
    + [TOOL_RESPONSE_TEXT, TOOL_RESPONSE_END_TEXT]
)
# Candidates only; `_breaker` keeps those that are real markers (a set lookup beats a 26-way lookahead).
_CANDIDATE = re.compile(r"<(?:\|[a-z_]{1,40}\|>|/?tool_response>)")


def _breaker(lt: str) -> Callable[[re.Match[str]], str]:
    """A substitution that writes the ``<`` of a real marker as `lt` and leaves other candidates alone."""

    def one(match: re.Match[str]) -> str:
        marker = match.group()
        return lt + marker[1:] if marker in _DEFUSED else marker

    return one


_WITH_ZWSP = _breaker("<" + ZWSP)
_WITH_JSON_LT = _breaker(JSON_LT)


def _break_markers(text: str, one: Callable[[re.Match[str]], str]) -> str:
    if "<|" not in text and "tool_response>" not in text:
        return text
    return _CANDIDATE.sub(one, text)


def defuse(text: str) -> str:
    """`text` with each chat-template marker broken by a zero-width space after its ``<`` (idempotent)."""
    return _break_markers(text, _WITH_ZWSP)


def defuse_json(json_text: str) -> str:
    """`json_text` (JSON) with the ``<`` of each marker `defuse` breaks written ``\\u003c`` (idempotent).

    JSON has no ``<`` outside its strings, and inside one the escape is the same character: the text
    decodes to the same value, and no control token is left in it for the tokenizer to find.
    """
    return _break_markers(json_text, _WITH_JSON_LT)


_TOOLS_FRAME = re.compile(r"</?tools>")


def defuse_spec(text: str) -> str:
    """`defuse`, and the ``<tools>``/``</tools>`` frame too, for a tool's spec (idempotent).

    A spec (an MCP server wrote its name and descriptions) is rendered inside that frame in the
    system turn: a ``</tools>`` in a description would end the list there, and what follows would
    read as the system prompt's own instructions.
    """
    text = defuse(text)
    if "tools>" not in text:
        return text
    return _TOOLS_FRAME.sub(lambda m: "<" + ZWSP + m.group()[1:], text)
