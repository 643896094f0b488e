"""Requests the viewer must survive quietly: any web page can send them (an IP-literal `Host` passes the
rebinding check), so none may cost the operator's terminal a traceback or the client its answer."""

from __future__ import annotations

import http.client
import json
import socket
import struct
import threading

from qwq_agent.viewer import TraceViewer


def _join_request_threads() -> None:
    """Wait for the viewer's request threads, so whatever they print has been printed."""
    for thread in threading.enumerate():
        if "process_request_thread" in thread.name:
            thread.join(timeout=60)
            assert not thread.is_alive()


def test_a_nul_in_the_file_name_is_a_404_and_prints_nothing(tmp_path, capfd):
    (tmp_path / "x.jsonl").write_text(json.dumps({"type": "final", "status": "completed"}) + "\n")
    with TraceViewer(tmp_path) as viewer:
        port = int(viewer.url.rsplit(":", 1)[1].strip("/"))
        for query in ("file=x%00.jsonl", "file=%00", "file=x.jsonl%00&from=0"):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/api/events?" + query)
            response = conn.getresponse()  # the old viewer closed the connection without an answer
            assert response.status == 404, query
            assert json.loads(response.read()) == {"error": "no such trace"}
            conn.close()
        _join_request_threads()
    out, err = capfd.readouterr()
    assert err == "" and out == ""


def test_a_client_that_hangs_up_mid_answer_prints_nothing(tmp_path, capfd):
    # One event of 32 MiB: its answer outgrows what the sockets buffer, so the viewer is still
    # writing it when the client resets the connection.
    event = {"type": "content", "run_id": "r", "step": 1, "text": "x" * (32 << 20)}
    (tmp_path / "big.jsonl").write_text(json.dumps(event) + "\n")
    with TraceViewer(tmp_path) as viewer:
        port = int(viewer.url.rsplit(":", 1)[1].strip("/"))
        for _ in range(3):
            client = socket.create_connection(("127.0.0.1", port), timeout=30)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.sendall(
                f"GET /api/events?file=big.jsonl HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
            )
            head = b""
            while b"\r\n\r\n" not in head:  # the answer has begun
                head += client.recv(1)
            assert head.startswith(b"HTTP/1.0 200")
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # a reset, not a polite close: the viewer's next write fails
        _join_request_threads()
        # and it still answers
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/api/runs")
        assert conn.getresponse().status == 200
        conn.close()
        _join_request_threads()
    err = capfd.readouterr().err
    assert "Traceback" not in err and err == "", err
