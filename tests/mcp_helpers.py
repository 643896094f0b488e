"""Starting the test MCP server (tests/mcp_server.py) as a real process, over stdio or streamable HTTP."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SERVER = str(Path(__file__).parent / "mcp_server.py")


def stdio_command(name: str) -> list[str]:
    return [sys.executable, SERVER, "--name", name]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, deadline_s: float = 30.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the MCP test server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"the MCP test server did not listen on {port} within {deadline_s} s")


@contextlib.contextmanager
def http_server(name: str, port: int | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """A server on 127.0.0.1; yields (its /mcp URL, its process)."""
    port = port or free_port()
    proc = subprocess.Popen(
        [sys.executable, SERVER, "--name", name, "--http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port, proc)
        yield f"http://127.0.0.1:{port}/mcp", proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class PostOnlyServer:
    """A stateful streamable-HTTP MCP server on 127.0.0.1 (stdlib, in a thread) that routes only POST:
    a GET, the SDK's optional stream for the server's own messages, gets the 404 a web framework gives
    to a method it was not given. Its one tool, `count`, says which session it ran in and how many calls
    that session has had. `gets` counts the GETs answered."""

    def __init__(self) -> None:
        self.sessions: dict[str, int] = {}
        self.gets = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/mcp"

    def __enter__(self) -> PostOnlyServer:
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, body: object = None, headers: dict[str, str] | None = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(code)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                if body is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(404)
                server.gets.release()

            def do_DELETE(self) -> None:
                self._send(200)

            def do_POST(self) -> None:
                message = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                sid, mid, method = (
                    self.headers.get("Mcp-Session-Id"),
                    message.get("id"),
                    message.get("method"),
                )
                if mid is None:
                    return self._send(202)
                if method == "initialize":
                    with server._lock:
                        sid = f"s{len(server.sessions) + 1}"
                        server.sessions[sid] = 0
                    result = {
                        "protocolVersion": message["params"]["protocolVersion"],
                        "capabilities": {"tools": {}},
                        "serverInfo": {"name": "postonly", "version": "1"},
                    }
                    return self._send(
                        200, {"jsonrpc": "2.0", "id": mid, "result": result}, {"Mcp-Session-Id": sid}
                    )
                if sid not in server.sessions:
                    return self._send(404)
                if method == "tools/list":
                    tool = {"name": "count", "description": "Count.", "inputSchema": {"type": "object"}}
                    return self._send(200, {"jsonrpc": "2.0", "id": mid, "result": {"tools": [tool]}})
                if method == "tools/call":
                    with server._lock:
                        server.sessions[sid] += 1
                        text = f"session {sid} call #{server.sessions[sid]}"
                    result = {"content": [{"type": "text", "text": text}]}
                    return self._send(200, {"jsonrpc": "2.0", "id": mid, "result": result})
                return self._send(200, {"jsonrpc": "2.0", "id": mid, "result": {}})

        return Handler
