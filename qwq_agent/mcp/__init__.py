"""Tools of MCP servers (official `mcp` SDK, `pip install -e '.[mcp]'`) as qwq-agent tools."""

from qwq_agent.mcp.connection import (
    MCPConnectError,
    MCPConnection,
    MCPError,
    MCPServerDied,
    MCPServerSpec,
    MCPToolGone,
)
from qwq_agent.mcp.tools import MCPTool, MCPToolset, mcp_tools, to_tool_output

__all__ = [
    "MCPConnectError",
    "MCPConnection",
    "MCPError",
    "MCPServerDied",
    "MCPServerSpec",
    "MCPTool",
    "MCPToolGone",
    "MCPToolset",
    "mcp_tools",
    "to_tool_output",
]
