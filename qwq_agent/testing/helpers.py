"""Small pieces that tests of agents keep writing: a tool call in QwQ's raw format, a trivial typed tool."""

from __future__ import annotations

import json

from qwq_agent.tools.base import tool


def call(name: str, **arguments: object) -> str:
    """`<tool_call>` block as QwQ writes it, for a scripted model's turn."""
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


@tool
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first addend
        b: the second addend
    """
    return a + b
