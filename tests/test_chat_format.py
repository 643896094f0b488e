"""The Python renderer against QwQ-32B's official Jinja template, byte for byte."""

from __future__ import annotations

import json
import string
from functools import cache
from typing import Any

import pytest
from conftest_reference import require_reference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwq_agent.agent.chat_format import (
    GENERATION_PROMPT,
    model_output,
    render,
    render_assistant_turn,
    safe_call_json,
)
from qwq_agent.agent.markers import defuse, defuse_spec
from qwq_agent.agent.messages import Message, ToolCall, ToolSpec
from qwq_agent.agent.profiles import PROFILES, ChatProfile, get_profile

PREVIEW_SYSTEM = "You are a helpful and harmless assistant. You are Qwen developed by Alibaba. You should think step-by-step."
# QwQ-32B-Preview's template is Qwen2.5's with this default system prompt. It is not in the reference folder;
# these edits turn the official QwQ-32B template into it (same output as the published Preview template:
# default system turn, no `</think>` split, no `<think>` in the generation prompt).
PREVIEW_EDITS = (
    ("{{- '' }}", "{{- '" + PREVIEW_SYSTEM + "' }}"),
    (
        "+ '<|im_end|>\\n' }}\n  {%- endif %}",
        "+ '<|im_end|>\\n' }}\n{%- else %}\n{{- '<|im_start|>system\\n"
        + PREVIEW_SYSTEM
        + "<|im_end|>\\n' }}\n{%- endif %}",
    ),
    ("message.content.split('</think>')[-1].lstrip('\\n')", "message.content"),
    ("'<|im_start|>assistant\\n<think>\\n'", "'<|im_start|>assistant\\n'"),
)
TEMPLATES: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "qwq-32b": ("chat_template.jinja", ()),
    "qwq-32b-v1": ("chat_template.v1_release.jinja", ()),
    "qwq-32b-preview": ("chat_template.jinja", PREVIEW_EDITS),
}


# --- the reference: the official template in Hugging Face's Jinja environment ----------------------------


@cache
def _template(profile: str) -> Any:
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def tojson(
        x: Any,
        ensure_ascii: bool = False,
        indent: Any = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        # transformers' override of Jinja's tojson (no HTML escaping, options passed to json.dumps)
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    filename, edits = TEMPLATES[profile]
    source = require_reference(filename).read_text(encoding="utf-8")
    for before, after in edits:
        assert before in source, f"template changed: {before!r} not found"
        source = source.replace(before, after)
    return env.from_string(source)


def to_hf(message: Message, think: bool = True) -> dict[str, Any]:
    """Our message as the HF dict the template expects: reasoning goes back in front of the content
    (`think=False`, the Preview: dropped, that model writes no think block)."""
    if message.role == "tool":
        return {"role": "tool", "content": message.content}
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.role == "assistant":
        if message.reasoning is not None and think:
            out["content"] = f"<think>\n{message.reasoning}\n</think>\n\n{message.content}"
        if message.tool_calls:
            out["tool_calls"] = [
                {"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in message.tool_calls
            ]
    return out


def hf_tool(spec: ToolSpec) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": spec.name, "description": spec.description, "parameters": spec.parameters},
    }


def reference(
    messages: list[Message], tools: list[ToolSpec], add_generation_prompt: bool, profile: str
) -> str:
    # The intended differences: markers in tool results and specs are defused (qwq_agent.agent.markers),
    # and so are those in the model's own text: escaped as `\u003c` in its calls, broken elsewhere; a
    # call's name is written as a JSON string, which the template splices in as it stands.
    messages = [_defused(m) for m in messages]
    tools = [
        ToolSpec(
            name=defuse_spec(t.name),
            description=defuse_spec(t.description),
            parameters=json.loads(defuse_spec(json.dumps(t.parameters, ensure_ascii=False))),
        )
        for t in tools
    ]
    return _template(profile).render(
        messages=[to_hf(m, think=profile != "qwq-32b-preview") for m in messages],
        tools=[hf_tool(t) for t in tools] or None,
        add_generation_prompt=add_generation_prompt,
    )


def _defused(message: Message) -> Message:
    if message.role == "tool":
        return message.model_copy(update={"content": defuse(message.content)})
    if message.role != "assistant":
        return message
    reasoning = None if message.reasoning is None else defuse(message.reasoning)
    calls = [
        c.model_copy(update={"name": safe_call_json(json.dumps(c.name, ensure_ascii=False))[1:-1]})
        for c in message.tool_calls
    ]
    return message.model_copy(
        update={"content": defuse(message.content), "reasoning": reasoning, "tool_calls": calls}
    )


# --- hand-written conversations ----------------------------------------------------------------------


def user(text: str) -> Message:
    return Message(role="user", content=text)


def system(text: str) -> Message:
    return Message(role="system", content=text)


def tool(text: str, name: str = "") -> Message:
    return Message(role="tool", content=text, name=name or None)


def assistant(content: str = "", reasoning: str | None = None, calls: tuple[ToolCall, ...] = ()) -> Message:
    return Message(role="assistant", content=content, reasoning=reasoning, tool_calls=list(calls))


WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather for a city.",
    parameters={
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "City name, e.g. Zürich"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city"],
    },
)
PYTHON = ToolSpec(
    name="python",
    description="Run Python code in a sandbox and return stdout. Use print() — «unicode» 🐍.",
    parameters={
        "type": "object",
        "properties": {"code": {"type": "string"}, "timeout": {"type": "number", "default": 30.5}},
        "required": ["code"],
    },
)
BARE = ToolSpec(name="noop")

CALL_ZH = ToolCall(name="get_weather", arguments={"city": "北京", "unit": "celsius"})
CALL_PY = ToolCall(
    name="python",
    arguments={
        "code": 'print("héllo\\n\\t\\"quoted\\"")\nfor i in range(3):\n    print(i)',
        "opts": {"nested": {"list": [1, 2.5, None, True, False, "ü"], "empty": {}}, "emoji": "😀"},
    },
)
CALL_EMPTY = ToolCall(name="noop", arguments={})

CONVERSATIONS: dict[str, tuple[list[Message], list[ToolSpec]]] = {
    "user only": ([user("Hello!")], []),
    "system and user": ([system("You are terse."), user("2+2?")], []),
    "empty system": ([system(""), user("hi")], []),
    "tools, no system": ([user("Weather in Paris?")], [WEATHER]),
    "tools and system": ([system("Be careful."), user("Run it")], [WEATHER, PYTHON, BARE]),
    "empty user": ([user("")], [BARE]),
    "multi-turn with reasoning": (
        [
            system("sys"),
            user("q1"),
            assistant("a1", reasoning="Let me think.\nOK."),
            user("q2"),
            assistant("a2", reasoning=""),
            user("q3"),
        ],
        [],
    ),
    "parallel calls and folded results": (
        [
            user("Weather in Beijing, and run code"),
            assistant("", reasoning="Two calls needed.", calls=(CALL_ZH, CALL_PY)),
            tool('{"temp": 21}', "get_weather"),
            tool("héllo\n0\n1\n2", "python"),
            assistant("It is 21 °C.", reasoning="Done."),
            user("thanks"),
        ],
        [WEATHER, PYTHON],
    ),
    "calls with content, no reasoning": (
        [user("go"), assistant("Calling now.", calls=(CALL_EMPTY,)), tool("")],
        [BARE],
    ),
    "calls without reasoning or content": (
        [user("go"), assistant("", calls=(CALL_EMPTY, CALL_EMPTY)), tool("a"), tool("b"), tool("c")],
        [BARE],
    ),
    "three tool rounds": (
        [
            user("loop"),
            assistant("", reasoning="r1", calls=(CALL_PY,)),
            tool("out1"),
            assistant("partial", reasoning="r2", calls=(CALL_ZH,)),
            tool("out2"),
            assistant("", reasoning="r3", calls=(CALL_EMPTY,)),
            tool("out3"),
        ],
        [PYTHON, WEATHER, BARE],
    ),
    "unicode": (
        [
            system("システム 🌏"),
            user("¿Qué tal? 你好 👋🏽 e\u0301 \u200b"),
            assistant("答案是 42 ✅", reasoning="思考中… 🤔"),
            user("Ωμέγα"),
        ],
        [PYTHON],
    ),
    "think tag inside content": (
        [user("x"), assistant("before</think>\n\nafter</think>\nend"), user("y")],
        [],
    ),
    "content starting with newlines": (
        [user("x"), assistant("\n\nanswer\n", reasoning="r"), user("y")],
        [],
    ),
    "system in the middle": ([user("a"), system("new rules"), user("b")], [WEATHER]),
    "tool message first": ([tool("orphan result"), user("and?")], []),
    "ends with assistant": ([user("q"), assistant("final", reasoning="because")], []),
    "ends with assistant calls": ([user("q"), assistant("", reasoning="r", calls=(CALL_ZH,))], [WEATHER]),
    "ends with tool results": (
        [user("q"), assistant("", calls=(CALL_ZH,)), tool("r1"), tool("r2")],
        [WEATHER],
    ),
}


@pytest.mark.parametrize("profile", sorted(TEMPLATES))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_matches_official_template(name: str, add_generation_prompt: bool, profile: str) -> None:
    messages, tools = CONVERSATIONS[name]
    expected = reference(messages, tools, add_generation_prompt, profile)
    ours = render(messages, tools, add_generation_prompt=add_generation_prompt, profile=profile)
    assert ours == expected


def test_known_prompt_literally() -> None:
    """Pins the format itself, independent of the reference folder."""
    prompt = render([user("hi")], [BARE])
    assert prompt == (
        "<|im_start|>system\n\n\n# Tools\n\nYou may call one or more functions to assist with the user query."
        "\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        '{"type": "function", "function": {"name": "noop", "description": "", "parameters": '
        '{"type": "object", "properties": {}}}}\n</tools>\n\nFor each function call, return a json object '
        "with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n"
    )
    assert prompt.endswith(GENERATION_PROMPT)


def test_earlier_reasoning_dropped_last_kept() -> None:
    messages = [user("q"), assistant("A1", reasoning="SECRET1"), user("q2"), assistant("A2", reasoning="R2")]
    prompt = render(messages, add_generation_prompt=False)
    assert "SECRET1" not in prompt
    assert "<|im_start|>assistant\nA1<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n<think>\nR2\n</think>\n\nA2<|im_end|>\n")
    # the first release drops it from the last message too
    assert render(messages, add_generation_prompt=False, profile="qwq-32b-v1").endswith(
        "<|im_start|>assistant\nA2<|im_end|>\n"
    )


# --- generated conversations --------------------------------------------------------------------------

_MARKUP = ["</think>", "<think>", "<tool_call>", "<|im_end|>", "</tool_response>"]
_FRAGMENTS = st.sampled_from([*_MARKUP, "\n", "\n\n", " ", '"', "\\", "{}", "😀", "é", "\t"])
TEXT = st.lists(st.one_of(st.text(max_size=12), _FRAGMENTS), max_size=5).map("".join)
NAMES = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=12)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
ARGUMENTS = st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4)
# Call names are spliced into the template unescaped; we write them as JSON strings (the same for these).
CALLS = st.builds(ToolCall, name=NAMES | TEXT, arguments=ARGUMENTS)
SPECS = st.builds(
    ToolSpec,
    name=NAMES,
    description=TEXT,
    parameters=st.fixed_dictionaries(
        {"type": st.just("object"), "properties": st.dictionaries(NAMES, JSON_VALUES, max_size=3)}
    ),
)
ASSISTANTS = st.builds(
    Message,
    role=st.just("assistant"),
    content=TEXT,
    reasoning=st.none() | TEXT,
    tool_calls=st.lists(CALLS, max_size=3),
)
MESSAGES = st.one_of(
    st.builds(Message, role=st.sampled_from(["user", "system", "tool"]), content=TEXT),
    ASSISTANTS,
)
CONVERSATION = st.lists(MESSAGES, min_size=1, max_size=8)
TOOLSETS = st.lists(SPECS, max_size=3)
QUICK = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@QUICK
@given(
    messages=CONVERSATION,
    tools=TOOLSETS,
    add_generation_prompt=st.booleans(),
    profile=st.sampled_from(sorted(TEMPLATES)),
)
def test_generated_conversations_match(
    messages: list[Message], tools: list[ToolSpec], add_generation_prompt: bool, profile: str
) -> None:
    expected = reference(messages, tools, add_generation_prompt, profile)
    assert render(messages, tools, add_generation_prompt=add_generation_prompt, profile=profile) == expected


# --- history policies and prefix caching --------------------------------------------------------------

REPLIES = st.lists(
    st.one_of(
        st.builds(Message, role=st.just("tool"), content=TEXT),
        st.builds(Message, role=st.just("user"), content=TEXT),
    ),
    min_size=1,
    max_size=3,
)
MODEL_TURNS = st.builds(
    Message,
    role=st.just("assistant"),
    content=TEXT,
    reasoning=TEXT,
    tool_calls=st.lists(CALLS, max_size=2),
    raw=st.none() | TEXT,
)
# A prompt asks the model for a turn after a user or tool message, never after its own turn.
HISTORIES = CONVERSATION.filter(lambda messages: messages[-1].role != "assistant")


@QUICK
@given(history=CONVERSATION, tools=TOOLSETS, turn=MODEL_TURNS, replies=REPLIES)
def test_keep_reasoning_is_prefix_stable(
    history: list[Message], tools: list[ToolSpec], turn: Message, replies: list[Message]
) -> None:
    before = render(history, tools, keep_reasoning=True)
    after = render([*history, turn, *replies], tools, keep_reasoning=True)
    assert after.startswith(before + model_output(turn) + "<|im_end|>\n")


@QUICK
@given(history=HISTORIES, tools=TOOLSETS, turn=MODEL_TURNS, replies=REPLIES)
def test_default_policy_history_text(
    history: list[Message], tools: list[ToolSpec], turn: Message, replies: list[Message]
) -> None:
    """Turn N+1 shares turn N's prompt only up to `<|im_start|>assistant\\n`; then comes the history text."""
    before = render(history, tools)
    after = render([*history, turn, *replies], tools)
    stem = before.removesuffix(GENERATION_PROMPT)
    assert after.startswith(stem + render_assistant_turn(turn))


def test_default_policy_breaks_prefix_where_documented() -> None:
    turn = assistant("The answer is 4.", reasoning="2+2=4")
    before = render([user("2+2?")])
    after = render([user("2+2?"), turn, user("and 3+3?")])
    assert not after.startswith(before + model_output(turn))
    assert after.startswith(before.removesuffix("<think>\n"))
    assert render_assistant_turn(turn) == "<|im_start|>assistant\nThe answer is 4.<|im_end|>\n"


def test_keep_reasoning_writes_raw_verbatim() -> None:
    raw = 'odd  spacing</think>\n<tool_call>\n{"name":"noop","arguments":{}}\n</tool_call>'
    turn = Message(role="assistant", content="", reasoning="odd  spacing", tool_calls=[CALL_EMPTY], raw=raw)
    before = render([user("go")], [BARE], keep_reasoning=True)
    after = render([user("go"), turn, tool("done")], [BARE], keep_reasoning=True)
    assert after.startswith(before + raw + "<|im_end|>\n")
    # the default policy follows the official template and ignores raw
    assert render_assistant_turn(turn) == (
        '<|im_start|>assistant\n\n<tool_call>\n{"name": "noop", "arguments": {}}\n</tool_call><|im_end|>\n'
    )


def test_model_output_canonical_form() -> None:
    turn = assistant("", reasoning="need weather", calls=(CALL_ZH,))
    assert model_output(turn) == (
        'need weather\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "北京", "unit": "celsius"}}\n</tool_call>'
    )
    with pytest.raises(ValueError):
        model_output(assistant("x"))
    with pytest.raises(ValueError):
        model_output(user("x"))


# --- QwQ-32B-Preview -------------------------------------------------------------------------------------


def test_preview_default_system_and_plain_generation_prompt() -> None:
    assert render([user("hi")], profile="qwq-32b-preview") == (
        f"<|im_start|>system\n{PREVIEW_SYSTEM}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    with_tools = render([user("hi")], [BARE], profile="qwq-32b-preview")
    assert with_tools.startswith(f"<|im_start|>system\n{PREVIEW_SYSTEM}\n\n# Tools\n")
    assert render([system("S"), user("hi")], profile="qwq-32b-preview").startswith(
        "<|im_start|>system\nS<|im_end|>"
    )


def test_preview_keeps_content_verbatim() -> None:
    messages = [user("q"), assistant("x</think>\n\ny", reasoning="hidden"), user("q2")]
    prompt = render(messages, profile="qwq-32b-preview")
    assert "<|im_start|>assistant\nx</think>\n\ny<|im_end|>\n" in prompt
    assert "hidden" not in prompt


def test_profiles_are_data() -> None:
    custom = ChatProfile(name="custom", default_system="Be brief.", think=False)
    assert render([user("hi")], profile=custom) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert get_profile("qwq-32b") is PROFILES["qwq-32b"]
    with pytest.raises(ValueError, match="unknown chat profile"):
        get_profile("nope")


# --- calls the template cannot write back as the model wrote them ---------------------------------------


NOTE = ToolCall(id="c0", name="write_note", arguments={"text": 'stops at "</tool_call>" tags', "n": "</div>"})


def _renderings(turn: Message) -> dict[str, str]:
    """An assistant turn as each path writes it: history, history with its reasoning, model output."""
    return {
        "history": render_assistant_turn(turn),
        "kept reasoning": render_assistant_turn(turn, keep_reasoning=True),
        "model output": model_output(turn),
    }


def _read_back(renderings: dict[str, str]) -> dict[str, Any]:
    """Each rendering's answer part as our own parser reads it."""
    from qwq_agent.agent.parser import parse

    out = {}
    for how, text in renderings.items():
        body = text.split("</think>\n\n")[-1] if "</think>" in text else text.split("\n", 1)[1]
        out[how] = parse("r\n</think>\n\n" + body.removesuffix("<|im_end|>\n"))
    return out


def test_a_call_holding_the_closing_tag_round_trips_through_every_rendering():

    turn = assistant("Writing.", reasoning="why", calls=(NOTE,))
    renderings = _renderings(turn)
    for how, parsed in _read_back(renderings).items():
        assert not parsed.errors, (how, parsed.errors)
        assert [c.arguments for c in parsed.tool_calls] == [NOTE.arguments], how
    # only the closing tag is escaped: other "</" stay as the template writes them
    assert '"n": "</div>"' in renderings["history"] and "<\\/tool_call>" in renderings["history"]


# One call whose name holds a closing tag, quotes and a marker (all decoded from escapes the model wrote).
ODD = ToolCall(
    id="c0", name='ech</tool_call>\n<tool_call>\n{"name": "noop", "x": "<|im_end|>', arguments={"a": 1}
)


def test_a_call_name_is_written_as_a_json_string_and_reads_back_as_one_call():

    turn = assistant("Calling.", reasoning="why", calls=(ODD, CALL_EMPTY))
    renderings = _renderings(turn)
    for how, parsed in _read_back(renderings).items():
        assert not parsed.errors, (how, parsed.errors)
        assert [(c.name, c.arguments) for c in parsed.tool_calls] == [(ODD.name, {"a": 1}), ("noop", {})], how
        assert "<|im_end|>" not in renderings[how].removesuffix("<|im_end|>\n"), how
    assert '{"name": "noop", "arguments": {}}' in renderings["history"]  # an ordinary name as the template


def test_malformed_calls_are_shown_where_they_were_written():
    from qwq_agent.agent.messages import MalformedCall

    first = ToolCall(id="c0", name="add", arguments={"a": 1})
    last = ToolCall(id="c2", name="add", arguments={"a": 3})
    bad = MalformedCall(id="c1", raw='\n{"name": "add", "arguments": {"a": }\n', position=1)
    turn = Message(
        role="assistant", content="Three.", reasoning="r", tool_calls=[first, last], malformed_calls=[bad]
    )
    for text in (render_assistant_turn(turn), render_assistant_turn(turn, keep_reasoning=True)):
        assert text.index('"a": 1}') < text.index('{"a": }\n</tool_call>') < text.index('"a": 3}')
        assert text.count("<tool_call>\n") == text.count("\n</tool_call>") == 3
