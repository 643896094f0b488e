"""A stand-in for a hung SGLang (a stuck CUDA call, a slow NCCL teardown): it ignores SIGTERM, so only
SIGKILL stops it. It answers /health and /server_info on the port given as its only argument."""

from __future__ import annotations

import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/health":
            body = b"ok"
        elif self.path in ("/server_info", "/get_server_info"):
            body = json.dumps({"model_path": "stubborn", "max_total_num_tokens": 1}).encode()
        else:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # before /health answers: ready means stubborn
    HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
