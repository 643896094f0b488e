"""QwQ's chat format, rendered in Python: byte-identical to the official Jinja chat template.

`render` turns our `Message`s into the prompt text that QwQ-32B's template produces for the equivalent
Hugging Face message dicts. The mapping (the one the tests check against the template itself):

* an assistant `Message` with `reasoning` is the HF content ``"<think>\\n" + reasoning + "\\n</think>\\n\\n"
  + content`` (the whole turn as the model wrote it); without `reasoning` it is just `content`;
* `tool_calls` are ``{"type": "function", "function": {"name": ..., "arguments": {...}}}``;
* each `tool` message is one HF ``{"role": "tool", "content": ...}``;
* each `ToolSpec` is ``{"type": "function", "function": {"name", "description", "parameters"}}``.

Reasoning in history, and prefix caching
----------------------------------------
The official template keeps only the text after the last ``</think>`` of earlier assistant messages
(`keep_reasoning=False`, the default). That policy is *not* prefix-stable: the prompt of turn N ends with
``<|im_start|>assistant\\n<think>\\n`` and the model then writes its reasoning, but in the prompt of turn N+1
that turn reads ``<|im_start|>assistant\\n`` + content, so the two prompts share only the text up to and
including ``<|im_start|>assistant\\n`` of turn N; the forced ``<think>\\n``, the reasoning and everything
after are prefilled again. `render_assistant_turn` gives the exact text a turn becomes in history, from which
the loop can compute the shared prefix.

`keep_reasoning=True` keeps every assistant turn as the model wrote it: the generation prompt followed by
`Message.raw` verbatim when it is set (but for chat-template markers, defused: see below), else the canonical
form ``<think>\\n{reasoning}\\n</think>\\n\\n{content}`` followed by the tool calls. Then the prompt of
turn N+1 begins with exactly the prompt of turn N plus `model_output(message)`, the model's raw output of
turn N, so a prefix cache reuses all of it. Without `raw` this holds only for output in canonical form:
other whitespace around ``</think>`` or another serialisation of a tool call (key spacing, `\\uXXXX`
escapes) is re-serialised, and the shared prefix ends where the texts first differ.
In token ids (what SGLang's radix cache compares) the same holds when the output does not begin with
whitespace, which would merge with the ``\\n`` that ends the prompt, and the ids the server generated are the
canonical encoding of the output text (tests/test_tokenizer.py checks the first condition).
`render_segments` lifts both conditions: it gives kept turns as the ids the server generated (`exact_tokens`).

One exception to byte-identity: chat-template markers (``<|im_end|>``, ``</tool_response>``...) in a tool
result or a tool's spec are defused with a zero-width space (`qwq_agent.agent.markers`), so untrusted output
or an MCP server's tool descriptions cannot forge a turn. So are those in the model's own text written back
as text (content, reasoning, `raw`, a malformed call): SGLang shows no control token in its output, so such
a marker was spelt in ordinary tokens, and re-tokenized as it stands it would become the control token (a
prompt-injected file the model copied could open a system turn). A kept turn whose ids are spliced in
(`render_segments`) needs none: its ids are the ordinary tokens the model generated. In a tool call the
host re-serialises, a marker's ``<`` is written ``\\u003c`` instead (the same JSON value, see below).

Tool calls, more exceptions, none of which an ordinary call meets: a call's name is written as a JSON string
(the template splices it in as it stands, so a ``"`` in it would end the string), a ``</tool_call>`` inside a
call is written ``<\\/tool_call>`` and a chat-template marker's ``<`` is written ``\\u003c`` (the same JSON
value; raw, the tag would end the block mid-string for any parser, ours included, and the marker would become
a control token), and a call the model wrote that could not be decoded (`Message.malformed_calls`), which the
template has no form for, is written back as it was (markers defused), at its place among the calls, so that
each ``<tool_response>`` still follows the order of the calls it answers. Prompts were not rendered so before
`PromptOptions.written_order`; a trace recorded without that option is replayed the old way.

One more break of the default policy: the current template renders the *last* message of a conversation
whole (reasoning included), so a prompt that ends in an assistant message changes once more messages follow
(the v1-release profile, `qwq-32b-v1`, strips that message too).
"""

from __future__ import annotations

import json
import weakref
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from qwq_agent.agent.exact_tokens import Segment, TokenSpan, ids_spell, segment_text
from qwq_agent.agent.markers import defuse, defuse_json, defuse_spec
from qwq_agent.agent.messages import MalformedCall, Message, ToolCall, ToolSpec
from qwq_agent.agent.parser import CALL_CLOSE
from qwq_agent.agent.profiles import DEFAULT_PROFILE, ChatProfile, get_profile

__all__ = [
    "ESCAPED_CALL_CLOSE",
    "GENERATION_PROMPT",
    "IM_END",
    "IM_START",
    "ChatProfile",
    "PromptOptions",
    "malformed_call_block",
    "model_output",
    "prompt_options_of",
    "recorded_prompt_options",
    "render",
    "render_assistant_turn",
    "render_segments",
    "safe_call_json",
    "tojson",
    "tool_call_json",
    "tool_spec_json",
]

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK_END = "</think>"

GENERATION_PROMPT = DEFAULT_PROFILE.generation_prompt
"""QwQ-32B's generation prompt, ``<|im_start|>assistant\\n<think>\\n``."""


class PromptOptions(BaseModel):
    """How a client renders its prompts (`render`'s options) and sends them: a setting of the client,
    not of the run's `AgentConfig`, so a trace records it apart (`run_started.prompt_options`). A
    replay renders with it, or every prompt after the first differs from the recorded one; a resumed
    run goes on under the same history policy (the other one would break its prefix cache)."""

    keep_reasoning: bool = False
    profile: str = DEFAULT_PROFILE.name
    # Malformed calls written back at their places, and tool results in the order the calls were
    # written (see the module docstring). A trace recorded before this option existed has no such key:
    # its prompts had neither (`recorded_prompt_options`), and a replay must render them the same way.
    written_order: bool = True
    # With `keep_reasoning`, kept turns go back as the ids the server generated (`render_segments`), so
    # the prompt holds other tokens than its text re-tokenized: a replay counts it as it was sent. A
    # trace recorded before this option was has no such key: its client sent ids, the default.
    exact_tokens: bool = True


def recorded_prompt_options(recorded: dict[str, Any], *, rendered_prompts: bool = True) -> PromptOptions:
    """The `PromptOptions` a trace's `run_started.prompt_options` describe (pydantic's ValidationError
    when they are not valid). Keys a trace lacks are options that did not exist when it was written:
    each takes the value that renders as the code of that time did, not today's default.

    `rendered_prompts` is False for a trace whose client rendered no prompts (an OpenAI-compatible API:
    its model calls record none). Until every trace recorded `written_order` such a trace recorded no
    options at all, whenever it was written; with no prompt to match byte for byte, its results go
    back in written order, the order QwQ's template pairs them with their calls.
    """
    return PromptOptions.model_validate({"written_order": not rendered_prompts, **recorded})


def prompt_options_of(model: Any) -> dict[str, Any]:
    """What `run_started.prompt_options` records of `model`.

    A model that renders no prompts itself (an OpenAI-compatible API) still records `written_order`:
    the loop puts its tool results in call order too, and without the key a resume would take the
    trace for one written before that order existed (`recorded_prompt_options`).
    """
    options = getattr(model, "prompt_options", None)
    if isinstance(options, PromptOptions):
        return options.model_dump(mode="json")
    return {"written_order": True}


_TOOLS_HEAD = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_TAIL = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call>" + IM_END + "\n"
)
_ASSISTANT_HEADER = IM_START + "assistant"


def tojson(value: Any) -> str:
    """Serialise like the `tojson` filter of Hugging Face's chat-template environment.

    Transformers replaces Jinja's own `tojson` (which HTML-escapes) with plain `json.dumps` and no options:
    insertion key order, ``", "``/``": "`` separators, non-ASCII kept as is.
    """
    return json.dumps(value, ensure_ascii=False)


def tool_spec_json(spec: ToolSpec) -> str:
    """One line of the `<tools>` block: the tool in OpenAI's `{"type": "function", ...}` wrapping."""
    return tojson(
        {
            "type": "function",
            "function": {"name": spec.name, "description": spec.description, "parameters": spec.parameters},
        }
    )


ESCAPED_CALL_CLOSE = "<\\/tool_call>"
"""``</tool_call>`` as it is written inside a JSON string of a call: ``\\/`` is JSON's escape for ``/``."""


def safe_call_json(json_text: str) -> str:
    """`json_text` (a call's JSON) with every ``</tool_call>`` written ``<\\/tool_call>`` and the ``<`` of
    every chat-template marker written ``\\u003c`` (`markers.defuse_json`): the same value.

    Outside its strings JSON has no ``<``, so only strings change. Raw, the tag would end the
    `<tool_call>` block in the middle of a string, for our parser and for the model reading its history;
    a marker (decoded from ``\\u003c|im_end|>`` the model wrote) would be tokenized as a control token.
    """
    return defuse_json(json_text.replace(CALL_CLOSE, ESCAPED_CALL_CLOSE))


def tool_call_json(call: ToolCall) -> str:
    """A call as the template writes it between `<tool_call>` tags, ``{"name": ..., "arguments": ...}``.

    The name is written as a JSON string, where the template splices it between quotes as it stands (the
    same text for any ordinary name); a ``"`` or ``</tool_call>`` in it would end the string or the block
    there, and one call the model wrote would read back as two. A ``</tool_call>`` or a chat-template
    marker inside the call is escaped (`safe_call_json`); the template leaves them raw.
    """
    return safe_call_json(tojson({"name": call.name, "arguments": call.arguments}))


def _tool_call_block(call: ToolCall) -> str:
    return "<tool_call>\n" + tool_call_json(call) + "\n</tool_call>"


def malformed_call_block(call: MalformedCall) -> str:
    """A call that could not be decoded, as the model wrote it (chat-template markers defused), framed
    like any `<tool_call>` block."""
    return "<tool_call>\n" + defuse(call.raw.strip("\n")) + "\n</tool_call>"


def _call_blocks(message: Message, written_order: bool = True) -> list[str]:
    """The turn's `<tool_call>` blocks in the order written: malformed calls back at their places
    (left out without `written_order`, as prompts were rendered before `PromptOptions.written_order`)."""
    blocks = [_tool_call_block(call) for call in message.tool_calls]
    if not written_order:
        return blocks
    for bad in sorted(message.malformed_calls, key=lambda c: c.position):
        blocks.insert(min(max(bad.position, 0), len(blocks)), malformed_call_block(bad))
    return blocks


def _system_turn(messages: Sequence[Message], tools: Sequence[ToolSpec], profile: ChatProfile) -> str:
    has_system = bool(messages) and messages[0].role == "system"
    text = messages[0].content if has_system else profile.default_system
    if tools:
        # A spec can come from an MCP server: its descriptions are untrusted text too (see `markers`).
        lines = "".join("\n" + defuse_spec(tool_spec_json(spec)) for spec in tools)
        return IM_START + "system\n" + text + _TOOLS_HEAD + lines + _TOOLS_TAIL
    if has_system or profile.default_system:
        return IM_START + "system\n" + text + IM_END + "\n"
    return ""


def _canonical_body(message: Message, written_order: bool = True) -> str:
    """Content and tool-call blocks, newline-separated, as the model writes them after its reasoning."""
    blocks = _call_blocks(message, written_order)
    content = defuse(message.content)
    if not blocks:
        return content
    parts = [content] if content else []
    parts.extend(blocks)
    return "\n".join(parts)


def _think_block(message: Message) -> str:
    if message.reasoning is None:
        return ""
    return "<think>\n" + defuse(message.reasoning) + "\n" + THINK_END + "\n\n"


def render_assistant_turn(
    message: Message,
    *,
    keep_reasoning: bool = False,
    last: bool = False,
    profile: str | ChatProfile = DEFAULT_PROFILE,
    written_order: bool = True,
) -> str:
    """The text one assistant message becomes in a prompt, from ``<|im_start|>assistant`` to ``<|im_end|>\\n``.

    With the default policy this is what the official template writes: for a message that is not the last
    of the conversation (`last=False`, the case of every earlier turn) only the text after the last
    ``</think>``, leading newlines removed. With `keep_reasoning` it is the turn in canonical form (see the
    module docstring): the generation prompt + `model_output(message)` + ``<|im_end|>\\n`` for a turn the model
    wrote (one with `raw`, or with `reasoning` in a thinking profile). Either way the model's text is written
    with its chat-template markers defused (see the module docstring).
    """
    prof = get_profile(profile)
    if keep_reasoning:
        if message.raw is not None:
            return prof.generation_prompt + defuse(message.raw) + IM_END + "\n"
        body = _canonical_body(message, written_order)
        return _ASSISTANT_HEADER + "\n" + _think_block(message) + body + IM_END + "\n"

    if prof.think:
        # The template sees reasoning and content as one string and splits it itself; emulating that on the
        # same string keeps edge cases identical (a `</think>` inside content, content that is all newlines).
        full = _think_block(message) + defuse(message.content)
        shown = full.split(THINK_END)[-1].lstrip("\n") if (not last or prof.strip_final_reasoning) else full
    else:
        full = shown = defuse(message.content)
    blocks = _call_blocks(message, written_order)
    if not blocks:
        return _ASSISTANT_HEADER + "\n" + shown + IM_END + "\n"
    # The template tests the unsplit content: reasoning followed by empty content still yields "\n".
    head = "\n" + shown if full else ""
    calls = "".join("\n" + block for block in blocks)
    return _ASSISTANT_HEADER + head + calls + IM_END + "\n"


def model_output(message: Message, *, profile: str | ChatProfile = DEFAULT_PROFILE) -> str:
    """The raw text the model wrote after the generation prompt to produce `message`, as a prompt writes it.

    `message.raw` when set (the exact output, stop token excluded); otherwise the canonical form, for a
    thinking profile: ``reasoning + "\\n</think>\\n\\n" + content`` and the tool-call blocks (the stop
    token ``<|im_end|>`` not included). Chat-template markers in it are defused (see the module docstring).
    With `keep_reasoning=True`, a prompt that contains this turn begins with the prompt that asked for it
    followed by this text. Raises ValueError for a thinking profile when `message.reasoning` is None: such a
    turn has no form that continues a prompt ending in ``<think>\\n``.
    """
    prof = get_profile(profile)
    if message.role != "assistant":
        raise ValueError(f"model_output needs an assistant message, got role {message.role!r}")
    if message.raw is not None:
        return defuse(message.raw)
    if not prof.think:
        return _think_block(message) + _canonical_body(message)
    if message.reasoning is None:
        raise ValueError("a thinking profile's turn needs reasoning (it may be empty, not None)")
    return defuse(message.reasoning) + "\n" + THINK_END + "\n\n" + _canonical_body(message)


_V = TypeVar("_V")


class _MessageCache(Generic[_V]):
    """Values worked out from a message, each kept while its message lives (and `size` entries at most).

    An entry must not keep its message alive: a service running one run after another would keep every
    finished run's turns (raw output, reasoning, token ids) for good, the count cap being no bound in
    bytes. `Message` is a pydantic model, compared by value and so unhashable, which rules out a
    `WeakKeyDictionary`: entries are keyed by the message's id() and hold a weak reference to it whose
    callback drops them when it is collected (until then its id() cannot be reused).
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[tuple[int, Hashable], tuple[weakref.ref[Message], _V]] = OrderedDict()

    def get(self, message: Message, key: Hashable = ()) -> _V | None:
        entry = self._entries.get((id(message), key))
        if entry is None or entry[0]() is not message:
            return None
        return entry[1]

    def put(self, message: Message, value: _V, key: Hashable = ()) -> None:
        full = (id(message), key)
        self._entries[full] = (weakref.ref(message, lambda dead: self._forget(full, dead)), value)
        if len(self._entries) > self._size:
            # The evicted entry's reference goes with it, and with the reference its callback.
            self._entries.popitem(last=False)

    def _forget(self, key: tuple[int, Hashable], dead: weakref.ref[Message]) -> None:
        # Only if the entry is still this reference's: an entry put for another message under the same
        # id() (once this one is gone) must stay.
        if (entry := self._entries.get(key)) is not None and entry[0] is dead:
            del self._entries[key]


# An agent re-renders its whole history every step; an earlier assistant turn always renders the same
# way, and serialising its tool calls is most of the cost. Messages are treated as immutable once sent.
_HISTORY_CACHE_SIZE = 8192
_HISTORY_CACHE: _MessageCache[str] = _MessageCache(_HISTORY_CACHE_SIZE)


def _history_turn(message: Message, keep_reasoning: bool, profile: ChatProfile, written_order: bool) -> str:
    key = (keep_reasoning, profile.name, written_order)
    text = _HISTORY_CACHE.get(message, key)
    if text is not None:
        return text
    text = render_assistant_turn(
        message, keep_reasoning=keep_reasoning, last=False, profile=profile, written_order=written_order
    )
    _HISTORY_CACHE.put(message, text, key)
    return text


def render(
    messages: Sequence[Message],
    tools: Sequence[ToolSpec] = (),
    *,
    add_generation_prompt: bool = True,
    keep_reasoning: bool = False,
    profile: str | ChatProfile = DEFAULT_PROFILE,
    written_order: bool = True,
) -> str:
    """Render a conversation as the official chat template of `profile` does.

    A leading system message goes into the system turn (before the `# Tools` preamble when there are
    tools); later system messages are rendered as turns of their own. Consecutive `tool` messages are
    folded into one user turn of `<tool_response>` blocks. `keep_reasoning` is the history policy described
    in the module docstring. An empty conversation renders as the system turn (if any) and the generation
    prompt, where the Jinja template would fail. `written_order` is `PromptOptions.written_order`.
    """
    prof = get_profile(profile)
    parts = _render_parts(messages, tools, add_generation_prompt, keep_reasoning, prof, False, written_order)
    return "".join(segment_text(part) for part in parts)


def render_segments(
    messages: Sequence[Message],
    tools: Sequence[ToolSpec] = (),
    *,
    add_generation_prompt: bool = True,
    keep_reasoning: bool = False,
    profile: str | ChatProfile = DEFAULT_PROFILE,
    written_order: bool = True,
) -> list[Segment]:
    """`render`, with kept assistant turns as the ids the server generated (see `exact_tokens`).

    With `keep_reasoning`, an assistant message whose `token_ids` spell its `raw` text becomes the
    generation prompt, a `TokenSpan` of those ids, and ``<|im_end|>\n``; every other piece is text. The
    texts of the segments concatenate to `render(...)` with the same arguments, but for a chat-template
    marker in a span's text: `render` defuses it, the span holds the ordinary tokens the model generated
    for it (neither is a control token). Without `keep_reasoning` (or when no turn has ids) the result is
    text only.
    """
    prof = get_profile(profile)
    return _render_parts(messages, tools, add_generation_prompt, keep_reasoning, prof, True, written_order)


# Checking that a turn's ids still spell its text costs a decode; each (message, ids, raw) is checked
# once. Entries hold the ids and raw they were checked on, so an edit that replaces `raw` or `token_ids`
# (assignment) is a miss and is checked again; a copy is another message.
_SPAN_CACHE: _MessageCache[tuple[list[int], str, TokenSpan | None]] = _MessageCache(_HISTORY_CACHE_SIZE)


def _kept_span(message: Message) -> TokenSpan | None:
    """The message's ids as a span, or None when it has none or they no longer spell `raw` (edited)."""
    ids, raw = message.token_ids, message.raw
    if ids is None or raw is None:
        return None
    hit = _SPAN_CACHE.get(message)
    if hit is not None and hit[0] is ids and hit[1] is raw:
        return hit[2]
    span = TokenSpan(tuple(ids), raw) if ids_spell(ids, raw) else None
    _SPAN_CACHE.put(message, (ids, raw, span))
    return span


def _render_parts(
    messages: Sequence[Message],
    tools: Sequence[ToolSpec],
    add_generation_prompt: bool,
    keep_reasoning: bool,
    prof: ChatProfile,
    splice: bool,
    written_order: bool = True,
) -> list[Segment]:
    out: list[Segment] = [_system_turn(messages, tools, prof)]
    count = len(messages)
    for index, message in enumerate(messages):
        role = message.role
        if role == "user" or (role == "system" and index > 0):
            out.append(IM_START + role + "\n" + message.content + IM_END + "\n")
        elif role == "assistant":
            last = index == count - 1
            span = _kept_span(message) if splice and keep_reasoning else None
            if span is not None:
                # The same text render_assistant_turn writes for a turn with `raw`, the output as ids.
                out.extend([prof.generation_prompt, span, IM_END + "\n"])
            elif last:
                out.append(
                    render_assistant_turn(
                        message,
                        keep_reasoning=keep_reasoning,
                        last=True,
                        profile=prof,
                        written_order=written_order,
                    )
                )
            else:
                out.append(_history_turn(message, keep_reasoning, prof, written_order))
        elif role == "tool":
            if index == 0 or messages[index - 1].role != "tool":
                out.append(IM_START + "user")
            # A result is untrusted text: markers in it must not close the turn (see `markers`).
            out.append("\n<tool_response>\n" + defuse(message.content) + "\n</tool_response>")
            if index == count - 1 or messages[index + 1].role != "tool":
                out.append(IM_END + "\n")
    if add_generation_prompt:
        out.append(prof.generation_prompt)
    return out
