"""The streaming parser of QwQ output and the tool-call repairs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwq_agent.agent.parser import (
    ContentDelta,
    ReasoningDelta,
    ReasoningEnd,
    StreamParser,
    ToolCallError,
    ToolCallInReasoning,
    ToolCallParsed,
    merge_deltas,
    parse,
)


def call_block(name: str, arguments: dict) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def feed_chunks(text: str, sizes: list[int]) -> list:
    parser = StreamParser()
    events, pos, i = [], 0, 0
    while pos < len(text):
        size = sizes[i % len(sizes)] if sizes else len(text)
        events += parser.feed(text[pos : pos + size])
        pos += size
        i += 1
    return events + parser.close()


def feed_whole(text: str) -> list:
    parser = StreamParser()
    return parser.feed(text) + parser.close()


# -- the format ------------------------------------------------------------------------------------


def test_reasoning_content_and_calls_with_text_around_them():
    text = (
        "I should look it up.\n</think>\n\nLet me check. "
        + call_block("search", {"q": "qwq"})
        + "\nand also\n"
        + call_block("fetch", {"url": "http://x", "n": [1, 2]})
        + " done."
    )
    r = parse(text)
    assert r.reasoning == "I should look it up."
    assert r.reasoning_closed
    assert r.content == "Let me check. \nand also\n done."
    assert [(c.id, c.name, c.arguments) for c in r.tool_calls] == [
        ("call_0", "search", {"q": "qwq"}),
        ("call_1", "fetch", {"url": "http://x", "n": [1, 2]}),
    ]
    assert r.errors == [] and r.reasoning_tool_calls == [] and r.repairs == {}


def test_output_without_close_tag_is_all_reasoning():
    r = parse("still thinking <tool_call>")
    assert r.reasoning == "still thinking <tool_call>"
    assert not r.reasoning_closed
    assert r.content == "" and r.tool_calls == []
    assert r.reasoning_tool_calls == [""]


def test_explicit_think_open_tag_is_tolerated():
    r = parse("<think>\nhmm\n</think>\n\nanswer")
    assert (r.reasoning, r.content) == ("hmm", "answer")
    events = merge_deltas(feed_whole("  <think>\nhmm</think>x"))
    assert events[0] == ReasoningDelta(text="hmm")


def test_think_open_later_in_reasoning_is_text():
    assert parse("a <think> b</think>").reasoning == "a <think> b"


def test_tool_call_in_reasoning_is_reported_not_called():
    text = 'Maybe <tool_call>\n{"name": "f", "arguments": {}}\n</tool_call> no.\n</think>\n\nDone.'
    r = parse(text)
    assert r.tool_calls == [] and r.errors == []
    assert r.reasoning_tool_calls == ['\n{"name": "f", "arguments": {}}\n']
    assert "<tool_call>" in r.reasoning  # the reasoning keeps what the model wrote
    assert r.content == "Done."


def test_unclosed_tool_call_in_reasoning_ends_at_think_close():
    events = feed_whole('x <tool_call>{"name": "f"}</think>' + call_block("g", {}))
    kinds = [type(e) for e in merge_deltas(events)]
    assert kinds == [ReasoningDelta, ToolCallInReasoning, ReasoningEnd, ToolCallParsed]
    assert events[-1].call.name == "g"


def test_empty_reasoning_and_call_right_after_think():
    r = parse("</think>" + call_block("f", {"a": 1}))
    assert r.reasoning == "" and r.content == "" and r.reasoning_closed
    assert r.tool_calls[0].arguments == {"a": 1}


def test_ids_count_across_calls_and_errors_and_take_a_prefix():
    text = "</think>" + call_block("a", {}) + "<tool_call>oops</tool_call>" + call_block("b", {})
    r = parse(text, id_prefix="t1_", first_id=5)
    assert [c.id for c in r.tool_calls] == ["t1_5", "t1_7"]
    assert r.errors[0].id == "t1_6"


def test_deltas_never_contain_partial_tags():
    text = "abc</thi" + "nk>\n\nhello <tool_" + 'call>{"name": "f"}</tool_call> bye <tool_ca'
    parser = StreamParser()
    first = parser.feed(text[:8])
    assert first == [ReasoningDelta(text="abc")]  # "</thi" is held back
    rest = parser.feed(text[8:])
    contents = [e.text for e in rest if isinstance(e, ContentDelta)]
    assert all("<" not in t for t in contents)
    tail = parser.close()
    assert tail == [ContentDelta(text="<tool_ca")]  # the end of the output decides: it was text


def test_feed_after_close_is_an_error_and_close_is_idempotent():
    p = StreamParser()
    assert p.feed("<th") == []  # could still be an explicit <think>
    assert p.close() == [ReasoningDelta(text="<th")]
    assert p.close() == []
    with pytest.raises(RuntimeError):
        p.feed("more")


def test_result_is_consistent_with_events():
    p = StreamParser()
    p.feed("r</think>c" + call_block("f", {"x": "y"}))
    p.close()
    r = p.result()
    assert r.content == "c" and r.tool_calls[0].arguments == {"x": "y"}


# -- repairs ---------------------------------------------------------------------------------------


def only_call(body: str) -> ToolCallParsed:
    events = [
        e for e in feed_whole("</think>\n\n<tool_call>" + body + "</tool_call>") if e.kind == "tool_call"
    ]
    assert len(events) == 1, events
    return events[0]


def only_error(body: str) -> ToolCallError:
    errors = [
        e for e in feed_whole("</think><tool_call>" + body + "</tool_call>") if e.kind == "tool_call_error"
    ]
    assert len(errors) == 1
    return errors[0]


def test_missing_close_tool_call_at_end_is_repaired():
    r = parse('</think>\n\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n')
    assert r.tool_calls[0].arguments == {"a": 1}
    assert r.repairs["call_0"] == ["added the missing </tool_call> at the end of the output"]


def test_truncated_json_at_end_is_closed():
    r = parse('</think><tool_call>\n{"name": "f", "arguments": {"a": [1, 2')
    assert r.tool_calls[0].arguments == {"a": [1, 2]}
    assert "added missing closing bracket(s) at the end" in r.repairs["call_0"]


def test_a_call_cut_off_inside_a_string_is_reported_not_repaired():
    # Before: the string was closed and the brackets added, so an edit ran with half of its text.
    r = parse(
        '</think>\n\n<tool_call>\n{"name": "str_replace_editor", "arguments": {"command": "create", '
        '"path": "a.py", "file_text": "def f():\\n    return'
    )
    assert r.tool_calls == []
    (err,) = r.errors
    assert err.cut_off and err.name == "str_replace_editor"
    assert "cut off" in err.message and "ended inside a string" in err.message and "again" in err.message


def test_a_call_open_at_the_token_limit_is_cut_off_even_between_values():
    text = '</think><tool_call>\n{"name": "f", "arguments": {"a": [1, 2'
    r = parse(text, length_limited=True)
    assert r.tool_calls == [] and r.errors[0].cut_off and "token limit" in r.errors[0].message
    # A call that was closed before the limit is complete and runs.
    r = parse('</think><tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>', length_limited=True)
    assert r.tool_calls[0].arguments == {"a": 1} and not r.errors


def test_a_string_holding_the_close_tag_is_an_error_with_a_hint_not_a_repair():
    body = '{"name": "python", "arguments": {"code": "print(\'</tool_call>\')"}}'
    r = parse("</think><tool_call>\n" + body + "\n</tool_call>")
    assert r.tool_calls == []
    assert not r.errors[0].cut_off and "<\\/tool_call>" in r.errors[0].message


@pytest.mark.parametrize(
    ("body", "arguments", "repair"),
    [
        ('{"name": "f", "arguments": {"a": 1, "b": [1, 2,],},}', {"a": 1, "b": [1, 2]}, "trailing comma"),
        ("{'name': 'f', 'arguments': {'a': True, 'b': None}}", {"a": True, "b": None}, "Python literal"),
        ("{'name': 'f', 'arguments': {'a': true, 'b': null}}", {"a": True, "b": None}, "Python literal"),
        ('{"name": "f", "arguments": "{\\"a\\": 1}"}', {"a": 1}, "JSON string"),
        ('{"name": "f", "arguments": ""}', {}, "JSON string"),
        ('{"name": "f", "parameters": {"a": 1}}', {"a": 1}, '"parameters"'),
        ('```json\n{"name": "f", "arguments": {"a": 1}}\n```', {"a": 1}, "code fence"),
        ('\n\n   {"name": "f", "arguments": {"a": 1}}   \n\n', {"a": 1}, "whitespace"),
        ('{"name": "f", "arguments": {"a": 1}}}', {"a": 1}, "surplus closing"),
        ('{"name": "f"}', {}, 'no "arguments"'),
        ('{"name": "f", "arguments": null}', {}, "null"),
        ('[{"name": "f", "arguments": {"a": 1}}]', {"a": 1}, "one-element array"),
        ('{"function": {"name": "f", "arguments": {"a": 1}}}', {"a": 1}, '"function"'),
    ],
)
def test_repairs_are_applied_and_named(body, arguments, repair):
    ev = only_call(body)
    assert ev.call.name == "f"
    assert ev.call.arguments == arguments
    assert ev.raw == body
    assert any(repair in r for r in ev.repairs), ev.repairs


def test_canonical_call_has_no_repairs():
    assert only_call('\n{"name": "f", "arguments": {"a": "</think>"}}\n').repairs == []


def test_json_error_points_at_the_offending_text():
    body = '\n{"name": "f",\n "arguments": {"a": 1 "b": 2}}\n'
    err = only_error(body)
    assert err.raw == body
    assert "not valid JSON" in err.message
    assert "line 2 column 23" in err.message
    excerpt, caret = err.message.splitlines()[-2:]
    assert excerpt.strip() == '"arguments": {"a": 1 "b": 2}}'
    assert excerpt[caret.index("^")] == '"'  # the caret sits under the unexpected "b"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("", "empty <tool_call>"),
        ('{"arguments": {"a": 1}}', 'no "name"'),
        ('{"name": "", "arguments": {}}', '"name" must be a non-empty string'),
        ('{"name": 3, "arguments": {}}', '"name" must be a non-empty string'),
        ('{"name": "f", "arguments": [1, 2]}', '"arguments" must be a JSON object'),
        ('{"name": "f", "arguments": "[1]"}', '"arguments" must be a JSON object'),
        ('"just a string"', "must be a JSON object"),
        ("call f with a=1", "not valid JSON"),
        ("[" * 100_000, "nested too deeply"),
    ],
)
def test_unrepairable_calls_are_reported_precisely(body, needle):
    assert needle in only_error(body).message


def test_arguments_nested_past_the_limit_are_a_malformed_call_that_keeps_the_name():
    deep = json.dumps({"name": "store", "arguments": {"data": json.loads("[" * 300 + "]" * 300)}})
    err = only_error(deep)
    assert err.name == "store"
    assert "nest deeper than 100 levels" in err.message
    # depth 100 counting the arguments object itself is still a call
    ok = "think</think>\n\n" + call_block("store", {"data": json.loads("[" * 99 + "]" * 99)})
    result = parse(ok)
    assert [c.name for c in result.tool_calls] == ["store"] and result.errors == []


def test_error_keeps_the_name_when_known():
    err = only_error('{"name": "f", "arguments": "{oops"}')
    assert err.name == "f"
    assert "arguments" in err.message


# -- chunking equivalence and robustness -----------------------------------------------------------

TAGS = [
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<",
    "</",
    "<tool",
    "</think",
    "\n",
    "{",
    "}",
    '"',
]
TEXT = st.lists(
    st.one_of(st.sampled_from(TAGS), st.text(max_size=8), st.just('{"name": "f", "arguments": {"a": 1}}')),
    max_size=25,
).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXT, sizes=st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=6))
def test_any_chunking_gives_the_same_events(text, sizes):
    whole = merge_deltas(feed_whole(text))
    assert merge_deltas(feed_chunks(text, sizes)) == whole
    assert merge_deltas(feed_chunks(text, [1])) == whole


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_random_text_never_raises_and_loses_nothing(text):
    events = feed_whole(text)
    result = parse(text)
    # Everything outside tags and call bodies reaches the deltas: reasoning + content lengths bound.
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    if "</think>" not in text and not text.lstrip().startswith("<think>"):
        assert reasoning == text
    assert result.reasoning == reasoning.strip()


@settings(max_examples=100, deadline=None)
@given(
    args=st.dictionaries(
        st.text(max_size=10),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=10),
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
            ),
            max_leaves=8,
        ),
        max_size=4,
    ),
    sizes=st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=4),
)
def test_valid_calls_round_trip_under_any_chunking(args, sizes):
    text = "think</think>\n\n" + call_block("f", args)
    events = [e for e in feed_chunks(text, sizes) if isinstance(e, ToolCallParsed)]
    assert len(events) == 1
    assert events[0].call.arguments == args and events[0].repairs == []


# -- the CLI ---------------------------------------------------------------------------------------


def run_cli(*args: str, stdin: str = "") -> "subprocess.CompletedProcess[str]":
    return subprocess.run(
        [sys.executable, "-m", "qwq_agent.cli.main", "parse", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )


SAMPLE = (
    "hmm <tool_call>x</tool_call>\n</think>\n\nOK " + '<tool_call>\n{"name": "f", "arguments": {"a": 1,}}\n'
)


def test_cli_parses_stdin_to_json():
    proc = run_cli(stdin=SAMPLE)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["reasoning"] == "hmm <tool_call>x</tool_call>"
    assert out["content"] == "OK"
    assert out["tool_calls"] == [{"id": "call_0", "name": "f", "arguments": {"a": 1}}]
    assert out["reasoning_tool_calls"] == ["x"]
    assert out["repairs"]["call_0"] == [
        "added the missing </tool_call> at the end of the output",
        "removed a trailing comma",
    ]


def test_cli_reads_a_file_and_prints_events(tmp_path):
    f = tmp_path / "out.txt"
    f.write_text(SAMPLE, encoding="utf-8")
    proc = run_cli(str(f), "--events", "--compact")
    assert proc.returncode == 0, proc.stderr
    kinds = [e["kind"] for e in json.loads(proc.stdout)]
    assert kinds == [
        "reasoning",
        "tool_call_in_reasoning",
        "reasoning",
        "reasoning_end",
        "content",
        "tool_call",
    ]
    assert len(proc.stdout.strip().splitlines()) == 1


def test_cli_missing_file_is_a_clear_error(tmp_path):
    proc = run_cli(str(tmp_path / "nope.txt"))
    assert proc.returncode == 2
    assert "cannot read" in proc.stderr and proc.stdout == ""


def test_at_the_token_limit_a_call_closed_by_the_client_but_not_whole_is_cut_off():
    # An OpenAI-style client writes the closing tag around argument deltas that stopped mid-way.
    cut_between_values = '</think>\n\n<tool_call>\n{"name": "f", "arguments": {"a": 1, "b": 2}\n</tool_call>'
    cut_between_values += "\n"  # whitespace after the call changes nothing
    r = parse(cut_between_values, length_limited=True)
    assert r.tool_calls == [] and r.errors[0].cut_off and r.errors[0].name == "f"
    cut_in_string = '</think>\n\n<tool_call>\n{"name": "f", "arguments": {"s": "abc}\n</tool_call>'
    r = parse(cut_in_string, length_limited=True)
    assert r.tool_calls == [] and r.errors[0].cut_off and "token limit" in r.errors[0].message
    # Without the limit, the missing bracket around complete values is still repaired.
    assert parse(cut_between_values).tool_calls[0].arguments == {"a": 1, "b": 2}


def test_a_long_blank_start_is_held_in_linear_time():
    # Blank output before the first word was re-stripped whole on every chunk: 1 MB in 16-character
    # chunks took about 10 s. It is still held back (it may precede <think>) and then kept.
    import time

    t0 = time.process_time()
    blank = " \n" * (1 << 19)
    for tail, reasoning in (("<think>\nabc</think>\n\nok", "abc"), ("abc</think>\n\nok", blank + "abc")):
        parser, events = StreamParser(), []
        text = blank + tail
        for i in range(0, len(text), 16):
            events += parser.feed(text[i : i + 16])
        events += parser.close()
        merged = merge_deltas(events)
        assert merged[0] == ReasoningDelta(text=reasoning) and merged[-1] == ContentDelta(text="\n\nok")
    parser = StreamParser()
    for i in range(0, len(blank), 16):
        assert parser.feed(blank[i : i + 16]) == []
    assert parser.close() == [ReasoningDelta(text=blank)]
    assert time.process_time() - t0 < 10  # a bound on runaway work (ms expected), not a timing measurement


def test_a_huge_call_body_is_refused_without_the_tokenizer():
    # The last repair tokenized any body that failed JSON (pure Python, ~2.5 µs a character) even with
    # no true/false/null in it to map.
    import time

    t0 = time.process_time()
    for body in ("(" * 200_000, "([{" * 60_000, "1^" * 100_000):
        result = parse("</think>\n<tool_call>\n" + body + "\n</tool_call>")
        assert not result.tool_calls and result.errors[0].message.startswith(
            "the tool call is not valid JSON"
        )
    assert time.process_time() - t0 < 10  # a bound on runaway work (ms expected), not a timing measurement


def test_brackets_are_only_added_after_a_complete_value():
    # Ending on a comma means another value was coming: closing the brackets would drop it silently.
    r = parse('</think><tool_call>\n{"name": "f", "arguments": {"a": 1, "b": [1, 2,')
    assert r.tool_calls == [] and len(r.errors) == 1
    r = parse('</think><tool_call>\n{"name": "f", "arguments": {"a": 1,')
    assert r.tool_calls == [] and len(r.errors) == 1


@pytest.mark.parametrize(
    ("arguments", "needle"),
    [
        ('{"timeout": NaN}', 'argument "timeout" is NaN'),
        ('{"timeout": Infinity}', 'argument "timeout" is Infinity'),
        ('{"timeout": -Infinity}', 'argument "timeout" is -Infinity'),
        (
            '{"timeout": 1e999}',
            'argument "timeout" is Infinity (or a number too large for JSON, such as 1e999)',
        ),
        ("{'timeout': 1e999,}", 'argument "timeout" is Infinity'),  # through the Python-literal repair
        ('{"opts": {"limits": [1, NaN]}}', 'argument "opts"["limits"][1] is NaN'),
        ('"{\\"timeout\\": NaN}"', 'argument "timeout" is NaN'),  # arguments given as a JSON string
    ],
)
def test_a_number_json_has_not_is_a_malformed_call_naming_the_argument(arguments, needle):
    """Python's json reads NaN, Infinity and 1e999; the tool got them and the trace recorded null."""
    result = parse(
        'x\n</think>\n\n<tool_call>\n{"name": "shell", "arguments": ' + arguments + "}\n</tool_call>"
    )
    assert not result.tool_calls
    (error,) = result.errors
    assert error.name == "shell" and needle in error.message and "so the call was not run" in error.message
    # The largest finite numbers are numbers like any other.
    fine = parse("x\n</think>\n\n" + call_block("shell", {"timeout": 1.7976931348623157e308, "n": -1e-320}))
    assert fine.tool_calls[0].arguments == {"timeout": 1.7976931348623157e308, "n": -1e-320}
