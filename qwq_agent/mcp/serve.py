"""Our tools, and the sandbox behind them, as an MCP server: `qwq-agent mcp-serve --tools python,shell`.

Other agents (any MCP client) then run code in one of our hardened sandboxes. Calls go through a
`ToolRegistry`, so arguments are validated and every failure comes back as an `is_error` result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from qwq_agent.agent.messages import ToolCall
from qwq_agent.protocols import Tool, ToolContext
from qwq_agent.tools.registry import ToolRegistry
from qwq_agent.tools.sandbox_tools import MAX_TIMEOUT_S

# The sandbox tools enforce the caller's `timeout` (up to MAX_TIMEOUT_S) in the sandbox and report with
# the partial output; the registry's limit is only a backstop past that and the interrupt's grace.
# Its 60 s default cancelled a cell asked to run for 100 s, output lost.
CALL_LIMIT_S = MAX_TIMEOUT_S + 60.0

__all__ = ["CALL_LIMIT_S", "build_server", "serve_stdio"]


def build_server(tools: Sequence[Tool], *, sandbox: Any = None, name: str = "qwq-agent") -> Any:
    """A low-level MCP `Server` listing `tools` with their JSON Schemas and running them on `sandbox`."""
    from mcp import types
    from mcp.server.lowlevel import Server

    registry = ToolRegistry(tools, timeout=CALL_LIMIT_S)
    listed = [
        types.Tool(name=s.name, description=s.description or None, input_schema=s.parameters)
        for s in registry.specs()
    ]
    calls = 0

    async def list_tools(ctx: Any, params: Any) -> Any:
        return types.ListToolsResult(tools=listed)

    async def call_tool(ctx: Any, params: Any) -> Any:
        nonlocal calls
        calls += 1
        call = ToolCall(id=f"mcp_{calls}", name=params.name, arguments=params.arguments or {})
        context = ToolContext(sandbox=sandbox, run_id="mcp-serve", call_id=call.id)
        output = await registry.call(call, context)
        content: list[Any] = [types.TextContent(text=output.text)]
        content += [types.ImageContent(data=img, mime_type="image/png") for img in output.images]
        return types.CallToolResult(content=content, is_error=output.is_error)

    return Server(name, on_list_tools=list_tools, on_call_tool=call_tool)


async def serve_stdio(tool_names: Sequence[str], *, workspace: str | None = None) -> None:
    """Start a sandbox, then serve the named tools over stdio until the client goes away.

    Cancelling it (Ctrl-C under `asyncio.run`) ends it at once, the sandbox removed: stdin is read on
    the event loop (`StdinLines`), not by a thread whose read the cancellation would wait for.
    A request longer than a line may be (`LineTooLong`) ends it too, the sandbox removed, raising that.
    """
    from mcp.server.stdio import stdio_server

    from qwq_agent.agent.workspace import open_sandbox
    from qwq_agent.mcp._stdin import LineTooLong, StdinLines, claimed_stdin
    from qwq_agent.tools.catalog import build_tools

    tools = build_tools(tool_names)
    try:
        async with open_sandbox(workspace=workspace) as sandbox:
            server = build_server(tools, sandbox=sandbox)
            with claimed_stdin() as wire:
                # The SDK only iterates over `stdin`: our lines stand in for its threaded text file.
                async with stdio_server(stdin=cast(Any, StdinLines(wire))) as (read, write):
                    await server.run(read, write, server.create_initialization_options())
    except* LineTooLong as group:
        # The client's line is refused by our reader, inside the SDK's task group: raised as itself.
        first: BaseException = group
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
