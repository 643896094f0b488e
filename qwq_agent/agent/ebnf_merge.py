"""One schema for the values valid against all of several (an `allOf`, a `$ref` beside other keywords, a
union branch beside its siblings), for the EBNF writer; None where they cannot be merged exactly.

Keywords of JSON Schema are a conjunction, so schemas that share no keyword merge by putting their
keywords side by side. Where they share one: `type` intersects, `required` adds up, bounds take the
stricter, `items` and properties listed by several parts become an `allOf` of theirs, and a property one
part lists meets the other parts' `additionalProperties`. Any other shared keyword with different
values, and the merge fails: the writer then relaxes (writes one part, open to other properties).

The merged object lists every part's properties; like any object that lists its properties and says
nothing of others, the writer calls it with those alone (the parts together describe the arguments).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

__all__ = ["ANNOTATIONS", "merged"]

# Keywords that constrain nothing the grammar must follow (annotations, and what `$ref` resolution uses).
ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "$schema",
        "$id",
        "$anchor",
        "$dynamicAnchor",
        "$vocabulary",
        "$defs",
        "definitions",
        "format",  # not asserted by the argument check either
        "contentMediaType",
        "contentEncoding",
        "contentSchema",
        "discriminator",  # OpenAPI's hint on a oneOf; the branches say the same
    }
)
_LOWER = frozenset({"minLength", "minItems", "minProperties", "minContains"})
_UPPER = frozenset({"maxLength", "maxItems", "maxProperties", "maxContains"})
_OBJECT = ("properties", "additionalProperties")


def merged(parts: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """A schema whose valid values are those valid against every one of `parts`; None if not found.

    `parts` hold no `$ref` or `allOf` (the writer resolves and flattens those first) and share one
    resource: their own `$ref`s resolve alike wherever they end up.
    """
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if key in ANNOTATIONS or key in _OBJECT:
                continue
            if key not in out:
                out[key] = value
                continue
            joined = _join(key, out[key], value)
            if joined is None:
                return None
            out[key] = joined
    if any(key in part for part in parts for key in _OBJECT):
        return _objects(parts, out)
    return out


def _join(key: str, a: Any, b: Any) -> Any:
    """One value for `key` meaning both `a` and `b`; None if there is none to write."""
    if _same(a, b):
        return a
    if key == "type":
        return _types(a, b)
    if key == "required" and isinstance(a, list) and isinstance(b, list):
        return list(dict.fromkeys([*a, *b]))
    if key in _LOWER | _UPPER and _count(a) and _count(b):
        return max(a, b) if key in _LOWER else min(a, b)
    if key == "items" and isinstance(a, dict | bool) and isinstance(b, dict | bool):
        return {"allOf": [a, b]}
    return None


def _types(a: Any, b: Any) -> Any:
    def kinds(t: Any) -> list[str] | None:
        if isinstance(t, str):
            return [t]
        return t if isinstance(t, list) and all(isinstance(k, str) for k in t) else None

    left, right = kinds(a), kinds(b)
    if left is None or right is None:
        return None
    both = [k for k in left if k in right or (k == "integer" and "number" in right)]
    both += [k for k in right if k == "integer" and "number" in left and k not in both]
    if not both:
        return None  # no value has both types: the writer relaxes, the check refuses every call
    return both[0] if len(both) == 1 else both


def _objects(parts: Sequence[dict[str, Any]], out: dict[str, Any]) -> dict[str, Any] | None:
    """`out` with the parts' `properties` and `additionalProperties` merged."""
    if any(not isinstance(p.get("properties", {}), dict) for p in parts):
        return None
    names = list(dict.fromkeys(n for p in parts for n in p.get("properties", {})))
    required: list[Any] = out["required"] if isinstance(out.get("required"), list) else []
    props: dict[str, Any] = {}
    for name in names:
        # A part that does not list the name still holds it to its `additionalProperties`.
        subs = [
            p["properties"][name] if name in p.get("properties", {}) else p["additionalProperties"]
            for p in parts
            if name in p.get("properties", {}) or "additionalProperties" in p
        ]
        subs = [s for s in subs if s is not True and s != {}]
        if any(s is False for s in subs):
            if name in required:
                return None  # no valid value: left to the check
            continue  # a part forbids it
        props[name] = {} if not subs else subs[0] if len(subs) == 1 else {"allOf": subs}
    out = dict(out)
    if any("properties" in p for p in parts):
        out["properties"] = props
    extras = [p["additionalProperties"] for p in parts if "additionalProperties" in p]
    if extras:
        out["additionalProperties"] = (
            False if any(e is False for e in extras) else extras[0] if len(extras) == 1 else {"allOf": extras}
        )
    return out


def _same(a: Any, b: Any) -> bool:
    try:
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    except (TypeError, ValueError):
        return False


def _count(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
