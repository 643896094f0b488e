"""`$ref`s in tool schemas resolve inside the schema itself, never over the network.

jsonschema's default resolver fetches a `$ref` to a URL (urllib: synchronous, no timeout, no address
policy), so a tool schema from a remote MCP server could make the host GET internal addresses.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable
from referencing.jsonschema import DRAFT202012

__all__ = ["LOCAL_ONLY", "relocated", "unresolvable_refs"]

# Keywords whose values are data, not schemas: a `$ref` key inside them is not a reference.
_DATA_KEYS = ("enum", "const", "default", "examples")


def _refuse(uri: str) -> Resource[Any]:
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]  # attrs-made __init__


# Pass as `registry=` to every validator of a tool schema: references to other documents fail.
LOCAL_ONLY: Registry[Any] = Registry(retrieve=_refuse)  # type: ignore[call-arg]  # attrs-made __init__


def unresolvable_refs(schema: Mapping[str, Any]) -> list[str]:
    """`path: $ref` for each reference in `schema` that does not resolve within it (empty: all do)."""
    root = DRAFT202012.create_resource(dict(schema))
    base = str(schema.get("$id", "")) if isinstance(schema.get("$id"), str) else ""
    resolver = LOCAL_ONLY.with_resource(base, root).resolver(base_uri=base)
    problems: list[str] = []

    def walk(node: Any, path: str, resolver: Any, depth: int) -> None:
        if depth > 200:  # deeper than any real schema; the validator's own checks report it
            return
        if isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]", resolver, depth + 1)
            return
        if not isinstance(node, Mapping):
            return
        if isinstance(node.get("$id"), str) and path != "$":
            resolver = resolver.in_subresource(DRAFT202012.create_resource(dict(node)))
        for key in ("$ref", "$dynamicRef"):
            ref = node.get(key)
            if isinstance(ref, str):
                try:
                    resolver.lookup(ref)
                except Unresolvable:
                    problems.append(f"{path}: {key} {ref!r} does not resolve within the schema")
        for key, value in node.items():
            if key == "properties" and isinstance(value, Mapping):  # named like the converter does: $.arg
                for name, sub in value.items():
                    walk(sub, f"{path}.{name}", resolver, depth + 1)
            elif key not in _DATA_KEYS:
                walk(value, f"{path}.{key}", resolver, depth + 1)

    walk(schema, "$", resolver, 0)
    return problems


def relocated(
    schema: Mapping[str, Any], pointer: str, defs_prefix: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`schema` made to work as the subschema at JSON pointer `pointer` of another document.

    Returns the subschema and the definitions to add to that document's root `$defs`: `schema`'s own
    `$defs` (and draft-7 `definitions`), renamed `defs_prefix + name`, with each local `$ref` rewritten
    to match (`#/$defs/Point` → `#/$defs/<prefix>Point`; any other, e.g. `#` or `#/properties/a`, to
    the same place under `pointer`). Left as they were: references to other documents (never fetched,
    see `LOCAL_ONLY`), and all of a schema with a root `$id`, whose references resolve against it.
    """
    out = copy.deepcopy(dict(schema))
    if isinstance(out.get("$id"), str):
        return out, {}
    hoisted: dict[str, Any] = {}
    renamed: dict[tuple[str, str], str] = {}
    for key in ("$defs", "definitions"):
        defs = out.get(key)
        if not isinstance(defs, dict):
            continue
        del out[key]
        for name, sub in defs.items():
            new = f"{defs_prefix}{name}"
            while new in hoisted:  # the same name in both `$defs` and `definitions`
                new += "_"
            hoisted[new] = sub
            renamed[(key, name)] = new

    def rewrite(ref: str) -> str:
        if not ref.startswith("#") or (len(ref) > 1 and not ref.startswith("#/")):
            return ref  # another document, or an anchor (`#name`)
        tokens = ref[2:].split("/") if len(ref) > 1 else []
        if len(tokens) >= 2:
            name = unquote(tokens[1]).replace("~1", "/").replace("~0", "~")
            if (tokens[0], name) in renamed:
                new = renamed[(tokens[0], name)].replace("~", "~0").replace("/", "~1")
                return "/".join(["#", "$defs", new, *tokens[2:]])
        return "#" + pointer + "".join("/" + t for t in tokens)

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
            return
        if not isinstance(node, dict) or isinstance(node.get("$id"), str):
            return  # a nested `$id`: references inside resolve against it
        if isinstance(node.get("$ref"), str):
            node["$ref"] = rewrite(node["$ref"])
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):  # names, not keywords
                for sub in value.values():
                    walk(sub)
            elif key not in _DATA_KEYS:
                walk(value)

    walk(out)
    for sub in hoisted.values():
        walk(sub)
    return out, hoisted
