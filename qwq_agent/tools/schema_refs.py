"""`$ref`s in tool schemas resolve inside the schema itself, never over the network.

jsonschema's default resolver fetches a `$ref` to a URL (urllib: synchronous, no timeout, no address
policy), so a tool schema from a remote MCP server could make the host GET internal addresses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable
from referencing.jsonschema import DRAFT202012

__all__ = ["LOCAL_ONLY", "unresolvable_refs"]

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
