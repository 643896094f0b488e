"""Helpers to write an example's recorded completions in QwQ's raw output format."""

from __future__ import annotations

import json


def call(name: str, **arguments: object) -> str:
    """One `<tool_call>` block, as QwQ writes it."""
    return (
        "<tool_call>\n"
        + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
        + "\n</tool_call>"
    )


def turn(reasoning: str, content: str = "", *calls: str) -> str:
    """A whole completion: reasoning (the prompt already opened `<think>`), then content and calls."""
    body = "\n".join(part for part in (content, *calls) if part)
    return reasoning.strip() + "\n</think>\n\n" + body
