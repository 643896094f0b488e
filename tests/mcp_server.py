"""A real MCP server for the tests, written with the official SDK; stdio or streamable HTTP.

python tests/mcp_server.py [--name NAME] [--http PORT]
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
from subprocess import DEVNULL
from typing import Annotated, Literal

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.utilities.types import Image
from pydantic import Field

# The smallest valid PNG (1x1, transparent): an image travels as MCP ImageContent.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


HELPER: subprocess.Popen[bytes] | None = None


def build(name: str) -> MCPServer:
    server = MCPServer(name=name, log_level="WARNING")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def shout(text: str, mode: Literal["upper", "lower"] = "upper") -> str:
        """Change the case of a text."""
        return text.upper() if mode == "upper" else text.lower()

    @server.tool()
    def whoami() -> str:
        """The server's name and process id."""
        return f"{name} pid={os.getpid()}"

    @server.tool()
    def header(key: str, ctx: Context) -> str:
        """A header of the HTTP request that carried this call ("" over stdio)."""
        return (ctx.headers or {}).get(key.lower(), "")

    @server.tool()
    def picture() -> Image:
        """A 1x1 PNG."""
        return Image(data=PNG, format="png")

    @server.tool()
    def fail(reason: Annotated[str, Field(description="why")]) -> str:
        """Raise, so the result is an MCP error result."""
        raise ToolError(f"failed on purpose: {reason}")

    @server.tool()
    async def nap(seconds: float) -> str:
        """Sleep, then answer."""
        await anyio.sleep(seconds)
        return f"slept {seconds}"

    @server.tool()
    def chatter(kib: int, last: str) -> str:
        """Log `kib` KiB to stderr, then the line `last`."""
        sys.stderr.write(("debug: " + "x" * 1016 + "\n") * kib + last + "\n")
        sys.stderr.flush()
        return "logged"

    @server.tool()
    def spawn(mib: int = 0) -> int:
        """Start a long-lived child that keeps no pipe of ours (a browser, a worker); its pid. With `mib`,
        it holds that much memory (written to), which its death takes a while to free."""
        if not mib:
            return subprocess.Popen(["sleep", "600"], stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL).pid
        code = "import sys, time; held = b'x' * (int(sys.argv[1]) << 20); print(flush=True); time.sleep(600)"
        child = subprocess.Popen(
            [sys.executable, "-c", code, str(mib)], stdin=DEVNULL, stdout=subprocess.PIPE, stderr=DEVNULL
        )
        assert child.stdout is not None
        child.stdout.readline()  # it holds the memory now
        child.stdout.close()
        return child.pid

    @server.tool()
    def helper() -> int:
        """The pid of the child started with `--helper` (0 without)."""
        return HELPER.pid if HELPER is not None else 0

    @server.tool()
    def die() -> str:
        """End the server process in the middle of the call."""
        os._exit(3)

    return server


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="testsrv")
    ap.add_argument("--http", type=int, help="serve streamable HTTP on 127.0.0.1:PORT/mcp")
    ap.add_argument(
        "--helper",
        action="store_true",
        help="start a long-lived child first, with our stdio (children inherit it by default)",
    )
    args = ap.parse_args()
    if args.helper:
        # Before the server takes over stdout: the child holds the very pipe the client reads.
        HELPER = subprocess.Popen(["sleep", "600"])
    srv = build(args.name)
    if args.http:
        srv.run("streamable-http", host="127.0.0.1", port=args.http)
    else:
        srv.run()
