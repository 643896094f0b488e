"""`qwq-agent mcp-serve`: our sandbox tools as an MCP server over stdio, for other agents."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mcp-serve", help="serve sandbox tools to MCP clients over stdio")
    p.add_argument("--tools", default="python,shell,str_replace_editor", help="comma-separated tool names")
    p.add_argument("--workspace", type=Path, help="a folder copied into the sandbox's /workspace")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from qwq_agent.cli.errors import CliError
    from qwq_agent.cli.preflight import tool_names

    # fd 0 closed (`<&-`): sys.stdin is None, and the stdio transport would fail only once the
    # sandbox had started, as an internal error. The client's requests come on stdin: say so first.
    if sys.stdin is None:
        raise CliError(
            "stdin is closed: an MCP client must talk on stdin", "start mcp-serve from an MCP client"
        )
    try:
        from qwq_agent.mcp._stdin import LineTooLong
        from qwq_agent.mcp.serve import serve_stdio
    except ImportError:
        raise CliError(
            "mcp-serve needs the MCP SDK, which is not installed",
            "pip install -e '.[mcp]' (in the qwq-agent checkout)",
        ) from None
    names = tool_names(args.tools)
    check_serve(names, args.workspace)
    try:
        asyncio.run(serve_stdio(names, workspace=str(args.workspace) if args.workspace else None))
    except LineTooLong as exc:
        # Nothing after that line can be read as a message: the server stopped, as our client stops a
        # server that does the same.
        raise CliError(f"{exc}; mcp-serve stopped", "send large contents in several smaller calls") from exc
    return 0


def check_serve(names: list[str], workspace: Path | None) -> None:
    """`mcp-serve`'s start-up checks: the tools, the workspace, then Docker, before its sandbox starts.

    The server always starts a sandbox (seconds, and Docker): a bad flag found only when that sandbox
    refused the upload was reported as Docker's failure, or with the fix of another command's flags.
    Raises `CliError`.
    """
    from qwq_agent.cli import preflight
    from qwq_agent.cli.errors import CliError
    from qwq_agent.tools.catalog import TOOL_NAMES

    servable = [name for name in TOOL_NAMES if name != "search_docs"]  # mcp-serve takes no --docs-db
    for name in names:
        if name not in servable:
            what = (
                "search_docs needs a document index, and mcp-serve takes none"
                if name == "search_docs"
                else f"unknown tool {name!r}"
            )
            raise CliError(what, f"choose from {', '.join(servable)}")
    preflight.check_tools(names, docs_db=None)  # what the tools need (web_search: a provider)
    preflight.check_workspace(workspace, None, sandbox=True)
    preflight.check_docker()
    preflight.check_sandbox_image()
