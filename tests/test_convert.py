"""External tool definitions to `ToolSpec`: draft differences, closing objects, and the BFCL data set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwq_agent.agent.messages import ToolCall
from qwq_agent.testing.bfcl import BfclCase, check_case
from qwq_agent.tools.convert import (
    SchemaConversionError,
    normalize_schema,
    spec_from_mcp,
    spec_from_openai,
    to_tool_spec,
)
from qwq_agent.tools.registry import ToolRegistry

SAMPLE = Path(__file__).parent / "data" / "bfcl" / "bfcl_v4_sample.jsonl"


class _Echo:
    uses_sandbox = False

    def __init__(self, spec):
        self.spec = spec

    async def __call__(self, arguments, context):
        from qwq_agent.protocols import ToolOutput

        return ToolOutput(text=json.dumps(arguments))


async def _call(spec, arguments):
    return await ToolRegistry([_Echo(spec)]).call(ToolCall(id="1", name=spec.name, arguments=arguments))


def test_objects_are_closed_unless_the_schema_says_otherwise():
    schema = normalize_schema(
        {
            "type": "object",
            "properties": {
                "point": {"type": "object", "properties": {"x": {"type": "number"}}},
                "tags": {"type": "object", "additionalProperties": {"type": "string"}},
                "blob": {"type": "object"},
            },
        }
    )
    assert schema["additionalProperties"] is False
    assert schema["properties"]["point"]["additionalProperties"] is False
    assert schema["properties"]["tags"]["additionalProperties"] == {"type": "string"}
    assert "additionalProperties" not in schema["properties"]["blob"]  # a free-form map stays one
    open_root = normalize_schema({"type": "object", "properties": {}, "additionalProperties": True})
    assert open_root["additionalProperties"] is True


def test_all_of_branches_stay_open_so_their_union_still_validates():
    schema = normalize_schema(
        {
            "type": "object",
            "properties": {
                "p": {
                    "allOf": [
                        {"type": "object", "properties": {"a": {"type": "integer"}}},
                        {"type": "object", "properties": {"b": {"type": "integer"}}},
                    ]
                }
            },
        }
    )
    for branch in schema["properties"]["p"]["allOf"]:
        assert "additionalProperties" not in branch


async def test_draft_04_and_07_keywords_become_2020_12():
    spec = spec_from_mcp(
        {
            "name": "old",
            "description": "draft-04 style",
            "inputSchema": {
                "$schema": "http://json-schema.org/draft-04/schema#",
                "id": "urn:example:old",
                "type": "object",
                "definitions": {"pos": {"type": "integer", "minimum": 0, "exclusiveMinimum": True}},
                "properties": {
                    "n": {"$ref": "#/definitions/pos"},
                    "pair": {
                        "type": "array",
                        "items": [{"type": "string"}, {"type": "integer"}],
                        "additionalItems": False,
                    },
                    "card": {"type": "string"},
                    "cvv": {"type": "string"},
                },
                "dependencies": {"card": ["cvv"]},
                "required": ["n"],
            },
        }
    )
    params = spec.parameters
    assert "$schema" not in params and "definitions" not in params
    assert params["$id"] == "urn:example:old" and "id" not in params
    assert params["$defs"]["pos"] == {"type": "integer", "exclusiveMinimum": 0}
    assert params["properties"]["n"]["$ref"] == "#/$defs/pos"
    assert params["properties"]["pair"]["prefixItems"] == [{"type": "string"}, {"type": "integer"}]
    assert params["properties"]["pair"]["items"] is False
    assert params["dependentRequired"] == {"card": ["cvv"]}

    assert not (await _call(spec, {"n": 1, "pair": ["a", 2]})).is_error
    zero = await _call(spec, {"n": 0})
    assert zero.is_error and "$.n" in zero.text  # exclusive minimum kept its meaning
    long_pair = await _call(spec, {"n": 1, "pair": ["a", 2, 3]})
    assert long_pair.is_error and "$.pair" in long_pair.text
    no_cvv = await _call(spec, {"n": 1, "card": "4111"})
    assert no_cvv.is_error and "cvv" in no_cvv.text


async def test_openapi_nullable_and_python_type_names():
    spec = spec_from_openai(
        {
            "type": "function",
            "function": {
                "name": "f",
                "parameters": {
                    "type": "dict",
                    "properties": {
                        "ratio": {"type": "float"},
                        "pair": {"type": "tuple", "items": {"type": "integer"}},
                        "note": {"type": "string", "nullable": True},
                        "anything": {"type": "any"},
                        "when": {"type": "string", "default": None},
                        "flag": {"type": "boolean", "required": True},
                    },
                },
            },
        }
    )
    props = spec.parameters["properties"]
    assert spec.parameters["type"] == "object" and spec.parameters["required"] == ["flag"]
    assert props["ratio"]["type"] == "number" and props["pair"]["type"] == "array"
    assert props["note"]["type"] == ["string", "null"] and "type" not in props["anything"]
    assert props["when"]["type"] == ["string", "null"]
    ok = await _call(spec, {"flag": True, "ratio": 2, "note": None, "anything": [1], "when": None})
    assert not ok.is_error, ok.text
    missing = await _call(spec, {"ratio": 1.5})
    assert missing.is_error and "$.flag" in missing.text


def test_bad_definitions_fail_with_the_place_named():
    with pytest.raises(SchemaConversionError, match=r"\$\.x: unknown type 'decimal'"):
        normalize_schema({"type": "object", "properties": {"x": {"type": "decimal"}}})
    with pytest.raises(SchemaConversionError, match="must be an object"):
        normalize_schema({"type": "array"})
    with pytest.raises(SchemaConversionError, match="tool 'bad'"):
        spec_from_mcp(
            {"name": "bad", "inputSchema": {"type": "object", "properties": {"x": {"minimum": "zero"}}}}
        )
    with pytest.raises(SchemaConversionError, match=r"function\.name"):
        to_tool_spec({"type": "function", "function": {"parameters": {}}})


def test_an_empty_schema_means_no_arguments():
    spec = to_tool_spec({"name": "ping", "inputSchema": {}})
    assert spec.parameters == {"type": "object", "properties": {}, "additionalProperties": False}


def _sample() -> list[dict]:
    return [json.loads(line) for line in SAMPLE.read_text().splitlines()]


async def test_bfcl_sample_correct_calls_validate_and_wrong_ones_are_rejected_naming_the_argument():
    rows = _sample()
    assert len(rows) >= 250
    totals: dict[str, int] = {}
    flagged_rejected, unexpected = set(), []
    for row in rows:
        flagged = row.pop("ground_truth_violates_schema", False)
        report = await check_case(BfclCase(**row))
        for k, v in report.counts.items():
            totals[k] = totals.get(k, 0) + v
        rejected_correct = [f for f in report.failures if "correct call" in f]
        if flagged and rejected_correct:
            flagged_rejected.add(row["id"])
        unexpected += [f for f in report.failures if not (flagged and f in rejected_correct)]
    assert unexpected == []
    # Flagged: answers that break their own function's schema (checked by hand). An answer equal to the
    # parameter's documented default (e.g. `"default": "N/A"` outside the enum) is accepted, not flagged.
    assert flagged_rejected == {r["id"] for r in _sample() if r.get("ground_truth_violates_schema")}
    # Every kind of wrong call was exercised, many times.
    for kind in ("missing", "extra", "wrong_type", "bad_enum"):
        assert totals[f"{kind}_total"] >= 50 and totals[f"{kind}_ok"] == totals[f"{kind}_total"]


@pytest.fixture
def internal_url():
    """A URL of an HTTP service on the host, with the list of requests it received."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            body = b'{"type": "string"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}/internal-admin", hits
    srv.shutdown()
    srv.server_close()


def test_refs_that_do_not_resolve_within_the_schema_are_refused_naming_the_tool(internal_url):
    from qwq_agent.agent.messages import ToolSpec

    url, hits = internal_url
    for ref in ("#/$defs/Missing", url, "other.json#/x"):
        schema = {"type": "object", "properties": {"q": {"$ref": ref}}}
        with pytest.raises(SchemaConversionError, match=r"tool 'bad'.*\$\.q.*does not resolve"):
            spec_from_mcp({"name": "bad", "inputSchema": schema})
        # A spec made by hand skips conversion; the registry refuses it all the same.
        with pytest.raises(ValueError, match=r"tool 'bad'.*does not resolve"):
            ToolRegistry([_Echo(ToolSpec(name="bad", parameters=schema))])
    assert hits == []  # the host never fetched the URL
    # References within the schema still work, under a nested `$id` too.
    spec = spec_from_mcp(
        {
            "name": "ok",
            "inputSchema": {
                "$id": "https://example.com/root",
                "type": "object",
                "$defs": {"Sub": {"$id": "sub", "$defs": {"Y": {"type": "integer"}}, "$ref": "#/$defs/Y"}},
                "properties": {"a": {"$ref": "sub"}, "e": {"enum": [{"$ref": url}]}},
            },
        }
    )
    assert spec.parameters["properties"]["a"] == {"$ref": "sub"}


async def test_a_schema_that_fails_while_validating_is_an_observation_not_a_crash():
    from qwq_agent.agent.messages import ToolSpec

    # Every ref resolves, but validating recurses forever: RecursionError from jsonschema.
    looping = {
        "type": "object",
        "$defs": {"a": {"$ref": "#/$defs/a"}},
        "properties": {"x": {"$ref": "#/$defs/a"}},
    }
    registry = ToolRegistry([_Echo(ToolSpec(name="loop", parameters=looping))])
    out = await registry.call(ToolCall(id="1", name="loop", arguments={"x": 1}))
    assert out.is_error and out.metadata["error"] == "bad_schema" and "RecursionError" in out.text
    assert (
        "RecursionError" in registry.argument_problems(ToolCall(id="2", name="loop", arguments={"x": 1}))[0]
    )


def test_a_schema_nested_past_the_recursion_limit_is_a_conversion_error_and_refused_by_the_registry():
    from qwq_agent.agent.messages import ToolSpec
    from qwq_agent.protocols import ToolOutput

    deep: dict = {"type": "string"}
    for _ in range(150):  # jsonschema's check_schema recurses a few frames per level
        deep = {"type": "array", "items": deep}
    schema = {"type": "object", "properties": {"a": deep}}
    with pytest.raises(SchemaConversionError, match=r"tool 'deep': .*nests too deeply"):
        spec_from_mcp({"name": "deep", "inputSchema": schema})

    class Deep:
        spec = ToolSpec(name="deep", description="", parameters=schema)
        uses_sandbox = False

        async def __call__(self, arguments, context):
            return ToolOutput(text="")

    with pytest.raises(ValueError, match="tool 'deep': its schema nests too deeply"):
        ToolRegistry([Deep()])
