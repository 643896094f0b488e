"""The viewer answers only requests addressed to it: a `Host` from DNS rebinding is refused."""

from __future__ import annotations

import http.client
import json

import pytest

from qwq_agent.viewer import TraceViewer
from qwq_agent.viewer.hosts import host_allowed


def _get(port: int, path: str, host: str | None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture
def viewer(tmp_path):
    (tmp_path / "secret.jsonl").write_text(
        json.dumps({"type": "run_started", "run_id": "r", "task": "deploy with sk-live-SECRET", "ts": 1.0})
        + "\n"
    )
    with TraceViewer(tmp_path) as v:
        yield v


def _port(viewer: TraceViewer) -> int:
    return int(viewer.url.rstrip("/").rsplit(":", 1)[1])


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}", "[::1]:{port}"])
def test_local_names_are_answered(viewer, host):
    port = _port(viewer)
    for path in ("/", "/api/runs", "/api/events?file=secret.jsonl"):
        status, body = _get(port, path, host.format(port=port))
        assert status == 200, (path, body)
    assert b"sk-live-SECRET" in _get(port, "/api/runs", f"localhost:{port}")[1]


@pytest.mark.parametrize(
    "host",
    [
        "attacker.example:{port}",  # a rebound name
        "localhost.attacker.example:{port}",
        "127.0.0.1.nip.io:{port}",
        "127.0.0.1:{other}",  # the right address, another port: some other local service's origin
        "localhost",  # no port: port 80
        "",
        "127.0.0.1:notaport",
    ],
)
def test_other_hosts_are_refused_and_get_nothing(viewer, host):
    port = _port(viewer)
    for path in ("/", "/api/runs", "/api/events?file=secret.jsonl"):
        status, body = _get(port, path, host.format(port=port, other=port + 1))
        assert status == 421, (host, path)
        assert b"sk-live-SECRET" not in body and b"<script>" not in body
        assert b"Host header" in body


def test_a_viewer_bound_to_a_name_answers_that_name_and_addresses():
    assert host_allowed("viewer-box:8765", "viewer-box", 8765)
    assert host_allowed("VIEWER-BOX:8765", "viewer-box", 8765)
    assert host_allowed("10.1.2.3:8765", "0.0.0.0", 8765)  # an address cannot be rebound
    assert not host_allowed("viewer-box.attacker.example:8765", "viewer-box", 8765)
    assert not host_allowed("viewer-box:8766", "viewer-box", 8765)


def _ipv6_loopback() -> str | None:
    """Why this machine cannot listen on ::1 (no IPv6, or no loopback address for it), or None."""
    import socket

    if not socket.has_ipv6:
        return "Python was built without IPv6"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError as exc:
        return f"no IPv6 loopback here: {exc}"
    return None


def _get_at(address: str, port: int, path: str = "/api/runs") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(address, port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_a_viewer_listens_on_an_ipv6_address(tmp_path, host):
    """It bound IPv4 only: `--host ::1` failed as a host that "does not resolve to an address"."""
    why = _ipv6_loopback()
    if why:
        pytest.skip(why)
    with TraceViewer(tmp_path, host=host) as v:
        assert v.url.startswith("http://[::1]:")
        port = _port(v)
        # http.client sends `Host: [::1]:PORT`, an address: answered.
        status, body = _get_at("::1", port)
        assert status == 200 and json.loads(body)["runs"] == []


def test_the_ipv6_wildcard_takes_ipv4_too(tmp_path):
    why = _ipv6_loopback()
    if why:
        pytest.skip(why)
    with TraceViewer(tmp_path, host="::") as v:
        port = _port(v)
        assert _get_at("::1", port)[0] == 200
        assert _get_at("127.0.0.1", port)[0] == 200


def test_localhost_binds_an_address_it_resolves_to_and_is_answered(tmp_path):
    with TraceViewer(tmp_path, host="localhost") as v:
        assert v.url.startswith("http://localhost:")
        # What the printed URL names: the client tries each address localhost resolves to.
        status, body = _get_at("localhost", _port(v))
        assert status == 200 and json.loads(body)["runs"] == []


def test_trace_serve_takes_an_ipv6_host(tmp_path):
    """`qwq-agent trace serve --host ::1` said ::1 "does not resolve to an address to listen on"."""
    import signal
    import subprocess
    import sys

    why = _ipv6_loopback()
    if why:
        pytest.skip(why)
    cmd = [sys.executable, "-m", "qwq_agent.cli.main", "trace", "serve", str(tmp_path), "--host", "::1"]
    proc = subprocess.Popen([*cmd, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert " at http://[::1]:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        port = int(line.split("http://[::1]:", 1)[1].split("/", 1)[0])
        assert _get_at("::1", port)[0] == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
