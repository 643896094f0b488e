"""The viewer's HTTP server: stdlib `http.server`, bound to 127.0.0.1 unless asked otherwise (an IPv6
address or a name too: see `address.py`).

Routes: `/` the page (everything inline, nothing fetched from elsewhere), `/api/runs` the run list,
`/api/events?file=F&from=C` a page of a run's events after the cursor C (0: from the start; `next`
says where the following page starts, `more` whether one is there already, `reset` that C was taken
in another file at that name, so these events are from the start). The page asks again while `more`
is true, then polls once a second while the run is running (no final event, and a writer still holds
the trace: one that nobody holds is `cut_short`), so a run in progress grows on screen; after a `reset`
it drops what it showed and starts over.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlparse

from qwq_agent.viewer.address import listen_address, url_host
from qwq_agent.viewer.hosts import host_allowed
from qwq_agent.viewer.page import PAGE
from qwq_agent.viewer.summary import (
    PAGE_BYTES,
    PAGE_EVENTS,
    BadCursorError,
    Cursor,
    EventPage,
    SummaryCache,
    open_trace,
    read_page,
    unreadable,
)

__all__ = ["TraceViewer"]


class TraceViewer:
    """Serves the traces (`*.jsonl`, searched recursively) under `root`.

    `start()` serves from a background thread (tests, notebooks); `serve_forever()` blocks (the CLI).
    `port=0` picks a free port; `url` says which. An answer of `/api/events` holds about `page_bytes`
    of trace lines and `page_events` events at most (one line at least).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        page_bytes: int = PAGE_BYTES,
        page_events: int = PAGE_EVENTS,
    ) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"trace folder {root} does not exist or is not a folder")
        handler = type(
            "Handler",
            (_Handler,),
            {
                "root": self.root,
                "bind_host": host,
                "summaries": SummaryCache(),
                "page_bytes": page_bytes,
                "page_events": page_events,
            },
        )
        family, address = listen_address(host, port)
        self._host = url_host(host, family)
        self._server = _Server(address, handler, family)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._server.server_port}/"

    def start(self) -> TraceViewer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="trace-viewer", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
        self._server.server_close()

    def __enter__(self) -> TraceViewer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _printable(text: str, limit: int = 200) -> str:
    """`text` fit for one terminal line: a request's path is chosen by whatever page sent it."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text[:limit])


# A client that hung up: the page moved on (a tab closed, a poll superseded), nothing went wrong here.
_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


def _report(what: str, exc: BaseException) -> None:
    """One line on the operator's terminal for a request that failed; a client that left, nothing."""
    if isinstance(exc, _GONE):
        return
    print(f"trace viewer: {what} failed: {type(exc).__name__}: {_printable(str(exc))}", file=sys.stderr)


class _Server(ThreadingHTTPServer):
    def __init__(
        self, address: tuple[Any, ...], handler: type[_Handler], family: socket.AddressFamily
    ) -> None:
        self.address_family = family  # read by the constructor to make the socket
        super().__init__(address, handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.server_address[0] == "::":
            # Every interface means IPv4 too (as `0.0.0.0` would), whatever the system's default.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a whole traceback for what escapes a handler (a client that hung up
        # while its request was read or answered): any web page could flood the terminal with them.
        exc = sys.exc_info()[1]
        if exc is not None:
            _report(f"a request from {client_address[0]}", exc)


class _Handler(BaseHTTPRequestHandler):
    root: Path
    bind_host: str
    summaries: SummaryCache
    page_bytes: int
    page_events: int
    _answered = False  # whether a status line went out, so an error cannot send a second one

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per poll would drown the terminal

    def do_GET(self) -> None:
        self._answered = False
        try:
            self._route()
        except Exception as exc:
            _report(f"GET {_printable(self.path)}", exc)
            if not self._answered and not isinstance(exc, _GONE):
                try:
                    self._json({"error": f"{type(exc).__name__}: {exc}"}, HTTPStatus.INTERNAL_SERVER_ERROR)
                except OSError:
                    pass  # the client is gone too

    def _route(self) -> None:
        port = cast(ThreadingHTTPServer, self.server).server_port
        if not host_allowed(self.headers.get("Host"), self.bind_host, port):
            self._json(
                {"error": "unexpected Host header: open the viewer at the address it printed"},
                HTTPStatus.MISDIRECTED_REQUEST,
            )
            return
        url = urlparse(self.path)
        # surrogateescape: `file` is the bytes of a name (the list's `ref`), UTF-8 or not
        query = parse_qs(url.query, errors="surrogateescape")
        if url.path == "/":
            self._send(HTTPStatus.OK, PAGE.encode("utf-8"), "text/html; charset=utf-8")
        elif url.path == "/api/runs":
            runs = []
            paths = sorted(self.root.rglob("*.jsonl"))
            for path in paths:
                try:
                    runs.append(self.summaries.summarize(path, self.root).model_dump())
                except FileNotFoundError:
                    continue  # removed while listing
                except Exception as exc:  # one file must not empty the list: it is listed, saying why
                    runs.append(unreadable(path, self.root, exc).model_dump())
            self.summaries.keep_only(set(paths))
            runs.sort(key=lambda r: r["modified"], reverse=True)
            self._json({"root": str(self.root), "runs": runs})
        elif url.path == "/api/events":
            trace = self._trace(query.get("file", [""])[0])
            if trace is None:
                self._json({"error": "no such trace"}, HTTPStatus.NOT_FOUND)
                return
            after = query.get("from", [""])[0]
            try:
                cursor = Cursor.parse(after)
            except BadCursorError as exc:
                self._json({"error": str(exc)}, HTTPStatus.BAD_REQUEST)
                return
            try:
                with open_trace(trace) as f:  # the page and the summary read the same file
                    page = read_page(f, cursor, max_bytes=self.page_bytes, max_events=self.page_events)
                    summary, summarized_to = self.summaries.summarize_to(trace, self.root, f)
                # Lines written after the page stopped reading are counted in the summary (its status may
                # be final already): `more` makes the page ask for them instead of ending its polling.
                page_end = Cursor.parse(page.next)
                if summarized_to > (page_end.offset if page_end else 0):
                    page.more = True
            except Exception as exc:
                page, summary = EventPage(events=[], next=after or "0"), unreadable(trace, self.root, exc)
            self._json({**page.model_dump(), "summary": summary.model_dump()})
        else:
            self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)

    def _trace(self, name: str) -> Path | None:
        """The trace `name` under the root; None for anything else (`..`, absolute paths, non-traces)."""
        if not name:
            return None
        try:
            path = (self.root / name).resolve()
            if not path.is_relative_to(self.root) or path.suffix != ".jsonl" or not path.is_file():
                return None
        except (ValueError, OSError):  # a NUL in the name, a link loop, a name too long
            return None
        return path

    def _json(self, data: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(data).encode("utf-8"), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self._answered = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)
