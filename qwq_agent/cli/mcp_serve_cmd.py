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
    try:
        from qwq_agent.mcp.serve import serve_stdio
    except ImportError:
        print(
            "mcp-serve needs the MCP SDK: pip install -e '.[mcp]' (in the qwq-agent checkout)",
            file=sys.stderr,
        )
        return 2
    names = [n for n in args.tools.split(",") if n.strip()]
    try:
        asyncio.run(serve_stdio(names, workspace=str(args.workspace) if args.workspace else None))
    except ValueError as exc:  # an unknown tool name
        print(str(exc), file=sys.stderr)
        return 2
    return 0
