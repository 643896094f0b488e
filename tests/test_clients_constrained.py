"""Constrained tool calls: the constraint built from the tools, and the call made through SGLangClient."""

from __future__ import annotations

import http.server
import json
import threading

import pytest
from ebnf_match import accepts

from qwq_agent.agent.clients import SGLangClient
from qwq_agent.agent.constrained import (
    UnsupportedSchema,
    constrained_tool_call,
    grammar_ignored,
    relaxation_warning,
    tool_call_ebnf,
    tool_call_schema,
    validate_tool_call,
)
from qwq_agent.agent.messages import ToolSpec
from qwq_agent.testing.scripted_server import ScriptedModelServer

TOOLS = [
    ToolSpec(
        name="read_file",
        parameters={
            "type": "object",
            "required": ["path"],
            "properties": {
                "path": {"type": "string", "maxLength": 40},
                "offset": {"type": "integer", "minimum": 0, "maximum": 9},
            },
        },
    ),
    ToolSpec(
        name="search",
        parameters={
            "type": "object",
            "required": ["query"],
            "properties": {
                "query": {"type": "string"},
                "lang": {"enum": ["en", "zh"]},
                "tags": {"type": "array", "items": {"type": "boolean"}},
            },
        },
    ),
    ToolSpec(name="now", parameters={"type": "object", "properties": {}}),
]


def test_schema_accepts_calls_of_any_tool_and_rejects_the_rest():
    assert (
        validate_tool_call('{"name": "read_file", "arguments": {"path": "a.txt", "offset": 3}}', TOOLS)
        is None
    )
    assert validate_tool_call('<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>', TOOLS) is None
    assert "invalid" in validate_tool_call('{"name": "read_file", "arguments": {"offset": 3}}', TOOLS)
    assert "invalid" in validate_tool_call('{"name": "rm", "arguments": {}}', TOOLS)
    assert "invalid" in validate_tool_call(
        '{"name": "read_file", "arguments": {"path": "a", "offset": 10}}', TOOLS
    )
    assert "not JSON" in validate_tool_call('{"name": "now", "arguments": {', TOOLS)
    assert [b["properties"]["name"]["const"] for b in tool_call_schema(TOOLS)["anyOf"]] == [
        "read_file",
        "search",
        "now",
    ]


def test_validating_a_call_never_fetches_a_ref_and_never_raises() -> None:
    # A tool schema from a remote MCP server with `$ref` to a URL once made the host GET it (urllib,
    # no timeout, no address policy) while checking a constrained call.
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"type": "string"}')

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/schema.json"
        spec = ToolSpec(name="lookup", parameters={"type": "object", "properties": {"key": {"$ref": url}}})
        why = validate_tool_call('{"name": "lookup", "arguments": {"key": "a"}}', [spec])
        assert why is not None and why.startswith("invalid")
        dangling = ToolSpec(
            name="d", parameters={"type": "object", "properties": {"k": {"$ref": "#/$defs/No"}}}
        )
        assert (validate_tool_call('{"name": "d", "arguments": {"k": 1}}', [dangling]) or "").startswith(
            "invalid"
        )
    finally:
        server.shutdown()
        server.server_close()
    assert hits == []


def test_hostile_json_is_a_reason_not_an_exception():
    # json.loads raises a plain ValueError past 4300 digits and RecursionError when nested too deeply.
    huge = '{"name": "now", "arguments": {"n": ' + "1" * 5000 + "}}"
    assert "not JSON" in validate_tool_call(huge, TOOLS)
    assert "not JSON" in validate_tool_call("[" * 100_000, TOOLS)
    assert "ignored the tool-call grammar" in grammar_ignored(huge, TOOLS, "stop")
    assert "ignored the tool-call grammar" in grammar_ignored("[" * 100_000, TOOLS, "stop")


def test_ebnf_fixes_names_spacing_and_bounds():
    grammar = tool_call_ebnf(TOOLS, max_string_length=16)
    assert grammar.startswith("root ::= call_")
    for name in ("read_file", "search", "now"):
        assert f'"\\"{name}\\""' in grammar
    assert '"{\\"name\\": "' in grammar and '", \\"arguments\\": "' in grammar
    assert "str_char{0,40}" in grammar and "str_char{0,16}" in grammar  # maxLength wins over the default
    offset = '{"name": "read_file", "arguments": {"path": "a", "offset": %s}}'
    assert accepts(grammar, offset % 9) and not accepts(grammar, offset % 10)  # bounds written exactly
    assert '"{}"' in grammar  # a tool without parameters is called with none


def test_ebnf_refuses_what_it_cannot_express():
    with pytest.raises(UnsupportedSchema):
        tool_call_ebnf(
            [ToolSpec(name="f", parameters={"type": "object", "properties": {"x": {"$ref": "#/defs/x"}}})]
        )
    with pytest.raises(UnsupportedSchema):
        tool_call_ebnf(
            [ToolSpec(name="f", parameters={"properties": {"x": {"type": "string", "pattern": "a+"}}})]
        )


def test_ebnf_parses_in_xgrammar():
    xgrammar = pytest.importorskip("xgrammar")
    xgrammar.Grammar.from_ebnf(tool_call_ebnf(TOOLS, max_string_length=16))


async def test_constrained_call_sends_grammar_and_stop_and_returns_the_call_text():
    def model(request):
        params = request.sampling_params
        assert request.prompt.endswith("<tool_call>\n")
        assert (
            params["stop"] == ["</tool_call>"]
            and "root ::=" in params["ebnf"]
            and "json_schema" not in params
        )
        return '{"name": "read_file", "arguments": {"path": "notes.md"}}'

    prompt = "<|im_start|>assistant\n<think>\nI need the file.\n</think>\n\n<tool_call>"
    async with ScriptedModelServer(model) as server, SGLangClient(server.url) as client:
        text = await constrained_tool_call(client, prompt, TOOLS)
    assert text == '\n{"name": "read_file", "arguments": {"path": "notes.md"}}\n</tool_call>'
    assert validate_tool_call(text, TOOLS) is None
    assert len(server.requests) == 1


async def test_a_schema_the_grammar_cannot_express_is_sent_as_ebnf_relaxed_there():
    # Once, any such schema made the whole tool set fall back to the json_schema constraint.
    tools = [
        ToolSpec(
            name="f",
            parameters={
                "type": "object",
                "properties": {
                    "x": {"type": "string", "pattern": "^h"},
                    "n": {"type": "integer", "maximum": 3},
                },
            },
        )
    ]

    def model(request):
        assert "json_schema" not in request.sampling_params
        grammar = request.sampling_params["ebnf"]
        assert accepts(grammar, '{"name": "f", "arguments": {"x": "anything", "n": 3}}')
        assert not accepts(grammar, '{"name": "f", "arguments": {"x": "anything", "n": 4}}')
        return '{"name": "f", "arguments": {"x": "https://example.com"}}'

    async with ScriptedModelServer(model) as server, SGLangClient(server.url) as client:
        text = await constrained_tool_call(client, "...<tool_call>\n", tools)
    assert text.startswith('{"name": "f"') and validate_tool_call(text, tools) is None
    assert "f.x: pattern not enforced" in (relaxation_warning(tools) or "")


async def test_the_json_schema_mode_sends_the_tools_schema():
    tools = [ToolSpec(name="f", parameters={"type": "object", "properties": {"x": {"type": "string"}}})]

    def model(request):
        assert json.loads(request.sampling_params["json_schema"]) == tool_call_schema(tools)
        return '{"name": "f", "arguments": {"x": "a"}}'

    async with ScriptedModelServer(model) as server, SGLangClient(server.url) as client:
        text = await constrained_tool_call(client, "...<tool_call>\n", tools, mode="json_schema")
    assert validate_tool_call(text, tools) is None
