"""External tool definitions (MCP, OpenAI function specs, BFCL) to our `ToolSpec`.

The registry validates arguments with JSON Schema draft 2020-12, so every schema is brought to that
dialect here: `definitions` become `$defs`, draft-04's boolean `exclusiveMinimum`/`exclusiveMaximum`
and root `id`, array-form `items`, `dependencies`, OpenAPI's `nullable`, per-property `required: true`,
and the Python-flavoured type names some catalogues use (`dict`, `float`, `tuple`, `any`). Objects
that list their `properties` get `additionalProperties: false` unless the schema says otherwise: an
argument the tool does not know is an error to report to the model, not to drop silently.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from jsonschema.exceptions import SchemaError

from qwq_agent.agent.messages import ToolSpec
from qwq_agent.tools.schema_patterns import check_schema, schema_error_path
from qwq_agent.tools.schema_refs import unresolvable_refs

__all__ = [
    "SchemaConversionError",
    "normalize_schema",
    "spec_from_bfcl",
    "spec_from_mcp",
    "spec_from_openai",
    "to_tool_spec",
]


class SchemaConversionError(ValueError):
    """A tool definition that cannot be turned into a valid draft 2020-12 schema."""


# Type names seen in the wild (Python, OpenAPI, BFCL) mapped to JSON Schema's; None means "any type".
_TYPE_ALIASES: dict[str, str | None] = {
    "dict": "object",
    "object": "object",
    "map": "object",
    "float": "number",
    "double": "number",
    "number": "number",
    "int": "integer",
    "integer": "integer",
    "long": "integer",
    "str": "string",
    "string": "string",
    "bool": "boolean",
    "boolean": "boolean",
    "list": "array",
    "tuple": "array",
    "array": "array",
    "null": "null",
    "none": "null",
    "any": None,
}

# Keywords whose value is one schema, a list of schemas, or a {name: schema} map (the MCP tools'
# annotation cuts walk the same positions).
SUBSCHEMA_ONE = (
    "additionalProperties",
    "items",
    "contains",
    "not",
    "if",
    "then",
    "else",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
    "additionalItems",
)
SUBSCHEMA_MANY = ("allOf", "anyOf", "oneOf", "prefixItems")
SUBSCHEMA_MAP = ("properties", "patternProperties", "$defs", "dependentSchemas")
_OPEN_KEYS = ("additionalProperties", "patternProperties", "unevaluatedProperties")


def _convert_type(kind: Any, path: str) -> Any:
    """A type name or list of names in JSON Schema's spelling (None: no type constraint)."""
    names = kind if isinstance(kind, list) else [kind]
    out: list[str] = []
    for name in names:
        if not isinstance(name, str) or name.lower() not in _TYPE_ALIASES:
            raise SchemaConversionError(f"{path}: unknown type {name!r}")
        mapped = _TYPE_ALIASES[name.lower()]
        if mapped is None:
            return None
        if mapped not in out:
            out.append(mapped)
    return out if isinstance(kind, list) else out[0]


def _normalize(schema: Any, path: str, *, close: bool, in_all_of: bool = False) -> Any:
    if isinstance(schema, bool):  # `true`/`false` are schemas too
        return schema
    if not isinstance(schema, Mapping):
        raise SchemaConversionError(f"{path}: a schema must be an object, got {type(schema).__name__}")
    s: dict[str, Any] = dict(schema)
    s.pop("$schema", None)  # always read as 2020-12 from here on
    if isinstance(s.get("title"), str):  # generated titles ("addArguments", "A") are prompt noise
        del s["title"]

    if "definitions" in s:  # draft-07 and earlier; refs are rewritten below
        s.setdefault("$defs", {}).update(s.pop("definitions"))
    if isinstance(s.get("$ref"), str) and s["$ref"].startswith("#/definitions/"):
        s["$ref"] = "#/$defs/" + s["$ref"][len("#/definitions/") :]

    if "type" in s:
        kind = _convert_type(s["type"], path)
        if kind is None:
            del s["type"]
        else:
            s["type"] = kind
    if s.pop("nullable", False) is True:  # OpenAPI 3.0 (OpenAI, Gemini specs)
        kind = s.get("type")
        if isinstance(kind, str):
            s["type"] = [kind, "null"]
        elif isinstance(kind, list) and "null" not in kind:
            s["type"] = [*kind, "null"]
        if "enum" in s and None not in s["enum"]:
            s["enum"] = [*s["enum"], None]

    # A declared default of null means null is a value the tool takes (Python's `x: str = None`).
    if "default" in s and s["default"] is None:
        kind = s.get("type")
        if isinstance(kind, str) and kind != "null":
            s["type"] = [kind, "null"]
        elif isinstance(kind, list) and "null" not in kind:
            s["type"] = [*kind, "null"]
        if "enum" in s and None not in s["enum"]:
            s["enum"] = [*s["enum"], None]

    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(s.get(bound), bool):  # draft-04: a flag on minimum/maximum
            if s.pop(bound) and limit in s:
                s[bound] = s.pop(limit)

    if isinstance(s.get("items"), list):  # draft 2019-09 and earlier tuple form
        s["prefixItems"] = s.pop("items")
        if "additionalItems" in s:
            s["items"] = s.pop("additionalItems")
    if isinstance(s.get("dependencies"), Mapping):
        for name, dep in s.pop("dependencies").items():
            key = "dependentRequired" if isinstance(dep, list) else "dependentSchemas"
            s.setdefault(key, {})[name] = dep

    if isinstance(s.get("properties"), Mapping):
        required = list(s["required"]) if isinstance(s.get("required"), list) else []
        props: dict[str, Any] = {}
        for name, sub in s["properties"].items():
            if isinstance(sub, Mapping) and isinstance(sub.get("required"), bool):
                sub = dict(sub)  # draft-03/OpenAPI-style `required: true` on the property itself
                if sub.pop("required") and name not in required:
                    required.append(name)
            props[name] = sub
        s["properties"] = props
        if required or "required" in s:
            s["required"] = required

    for key in SUBSCHEMA_ONE:
        if key in s and isinstance(s[key], Mapping | bool):
            s[key] = _normalize(s[key], f"{path}.{key}", close=close)
    for key in SUBSCHEMA_MANY:
        if isinstance(s.get(key), list):
            s[key] = [
                _normalize(sub, f"{path}.{key}[{i}]", close=close, in_all_of=key == "allOf")
                for i, sub in enumerate(s[key])
            ]
    for key in SUBSCHEMA_MAP:
        if isinstance(s.get(key), Mapping):
            s[key] = {
                name: _normalize(
                    sub, f"{path}.{name}" if key == "properties" else f"{path}.{key}.{name}", close=close
                )
                for name, sub in s[key].items()
            }

    # Closing a branch of `allOf` would reject the other branches' properties; leave those open.
    if (
        close
        and not in_all_of
        and "allOf" not in s
        and "properties" in s
        and s.get("type", "object") == "object"
        and not any(k in s for k in _OPEN_KEYS)
    ):
        s["additionalProperties"] = False
    return s


def normalize_schema(schema: Mapping[str, Any] | None, *, close: bool = True) -> dict[str, Any]:
    """A tool's argument schema as JSON Schema 2020-12, checked; raises `SchemaConversionError`.

    The root is always an object schema (a missing or empty schema means "no arguments"). With
    `close`, object schemas that list `properties` and say nothing about other keys are closed.
    """
    try:
        return _normalize_schema(schema, close=close)
    except SchemaConversionError:
        raise
    except RecursionError:
        # check_schema and the walks recurse a few frames per level: ~150 levels pass Python's limit
        raise SchemaConversionError("$: the schema nests too deeply to be checked") from None
    except Exception as exc:  # whatever else jsonschema trips on in a schema from outside
        raise SchemaConversionError(
            f"$: the schema could not be checked ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None


def _normalize_schema(schema: Mapping[str, Any] | None, *, close: bool) -> dict[str, Any]:
    if not schema:
        schema = {"type": "object", "properties": {}}
    out = _normalize(copy.deepcopy(dict(schema)), "$", close=close)
    # Draft-04's `id`, at the root only: a nested one would move the base URI of the refs below it.
    if isinstance(out.get("id"), str) and "$id" not in out:
        out["$id"] = out.pop("id")
    if out.get("type") is None:
        out["type"] = "object"
    if out["type"] != "object":
        raise SchemaConversionError(f"$: a tool's arguments must be an object, got type {out['type']!r}")
    out.setdefault("properties", {})
    if close and not any(k in out for k in (*_OPEN_KEYS, "allOf")):
        out["additionalProperties"] = False
    try:
        check_schema(out)  # its patterns must compile (schema_patterns.py)
    except SchemaError as exc:
        raise SchemaConversionError(f"{schema_error_path(exc)}: {exc.message}") from None
    # A dangling `$ref` (a generator bug) or one to another document (fetched from the host) would
    # fail, or worse, at the first call: refuse the schema now.
    dangling = unresolvable_refs(out)
    if dangling:
        more = f" (and {len(dangling) - 1} more)" if len(dangling) > 1 else ""
        raise SchemaConversionError(
            f"{dangling[0]}{more}; only references into the schema itself are supported"
        )
    return out


def _get(obj: Any, *names: str) -> Any:
    """The first present field among `names`, from a mapping or an object (SDK models)."""
    for name in names:
        value = obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
        if value is not None:
            return value
    return None


def spec_from_mcp(tool: Any, *, name: str | None = None, close: bool = True) -> ToolSpec:
    """An MCP tool (the SDK's `Tool` or its JSON: `name`, `description`, `inputSchema`)."""
    tool_name = name or _get(tool, "name")
    if not tool_name:
        raise SchemaConversionError("an MCP tool without a name")
    try:
        params = normalize_schema(_get(tool, "input_schema", "inputSchema"), close=close)
    except SchemaConversionError as exc:
        raise SchemaConversionError(f"tool {tool_name!r}: {exc}") from None
    return ToolSpec(name=tool_name, description=_get(tool, "description") or "", parameters=params)


def spec_from_openai(definition: Mapping[str, Any], *, close: bool | None = None) -> ToolSpec:
    """An OpenAI function spec: `{"type": "function", "function": {...}}` or the inner object.

    `strict: true` specs are closed already by OpenAI's rules; non-strict ones are closed too unless
    `close=False`.
    """
    fn = definition.get("function", definition)
    if not isinstance(fn, Mapping) or not fn.get("name"):
        raise SchemaConversionError("an OpenAI tool definition without function.name")
    try:
        params = normalize_schema(fn.get("parameters"), close=True if close is None else close)
    except SchemaConversionError as exc:
        raise SchemaConversionError(f"tool {fn['name']!r}: {exc}") from None
    return ToolSpec(name=fn["name"], description=fn.get("description") or "", parameters=params)


def spec_from_bfcl(definition: Mapping[str, Any], *, close: bool = True) -> ToolSpec:
    """A Berkeley Function Calling Leaderboard function (`type: "dict"`, `float`, `tuple`, `any`)."""
    return spec_from_openai(definition, close=close)


def to_tool_spec(definition: Any, *, close: bool = True) -> ToolSpec:
    """Any supported definition, recognised by its shape (MCP `inputSchema`, OpenAI `function`/`parameters`)."""
    if isinstance(definition, ToolSpec):
        return definition.model_copy(
            update={"parameters": normalize_schema(definition.parameters, close=close)}
        )
    if _get(definition, "input_schema", "inputSchema") is not None:
        return spec_from_mcp(definition, close=close)
    if isinstance(definition, Mapping):
        return spec_from_openai(definition, close=close)
    raise SchemaConversionError(f"not a tool definition: {type(definition).__name__}")
