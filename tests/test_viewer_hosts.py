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
