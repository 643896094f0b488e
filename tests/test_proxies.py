"""Proxies from the environment: read through `Settings`, listed by `--help`, never used for loopback,
named when they fail, and refused in one line when they cannot be used.

httpx read HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY by itself: a dead proxy made a live model
server on 127.0.0.1 "no model server answers" without naming the variable, and ALL_PROXY=socks5://
ended in an ImportError reported as a bug of ours (exit 70).
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from qwq_agent.http_env import Proxy, proxy_for
from qwq_agent.settings import Settings
from qwq_agent.testing.scripted_server import ScriptedModelServer

CLI = [sys.executable, "-m", "qwq_agent.cli.main"]
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
ANSWER = "ok\n</think>\n\nDone."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def forward_proxy(upstream: str) -> Iterator[tuple[str, list[str]]]:
    """An HTTP forward proxy on 127.0.0.1 sending every request to `upstream`, whatever host it names
    (`model.invalid` resolves nowhere: only through the proxy can it answer); yields its URL and the
    absolute URLs it was asked for."""
    seen: list[str] = []
    up = urlsplit(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def forward(self) -> None:
            seen.append(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            target = urlsplit(self.path)
            skip = {"host", "connection", "proxy-connection", "content-length"}
            headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
            conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
            try:
                path = target.path + (f"?{target.query}" if target.query else "")
                conn.request(self.command, path, body=body or None, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
            finally:
                conn.close()
            self.send_response(answer.status)
            for key, value in answer.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = forward

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def run(tmp_path, model_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k.upper() not in PROXY_VARS}
    return subprocess.run(
        [*CLI, "run", "hi", "--model-url", model_url, "--tools", "fetch_url",
         "--trace", str(tmp_path / f"t{len(list(tmp_path.iterdir()))}.jsonl")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**clean, **env},
    )  # fmt: skip


def test_help_lists_the_proxy_variables():
    out = subprocess.run([*CLI, "--help"], capture_output=True, text=True, timeout=60).stdout
    for var in (*PROXY_VARS, "SSL_CERT_FILE", "SSL_CERT_DIR"):
        assert var in out


def test_a_model_server_on_loopback_is_never_proxied(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # a proxy that is not there
    with ScriptedModelServer([ANSWER, ANSWER]) as model:
        plain = run(tmp_path, model.url, HTTP_PROXY=dead, ALL_PROXY=dead)
        named = run(tmp_path, model.url.replace("127.0.0.1", "localhost"), http_proxy=dead)
    assert plain.returncode == 0, plain.stderr
    assert named.returncode == 0, named.stderr


def test_a_remote_model_server_is_reached_through_the_proxy_unless_no_proxy_names_it(tmp_path):
    with ScriptedModelServer([ANSWER]) as model, forward_proxy(model.url) as (proxy, seen):
        remote = f"http://model.invalid:{urlsplit(model.url).port}"
        through = run(tmp_path, remote, HTTP_PROXY=proxy)
        asked = list(seen)
        direct = run(tmp_path, remote, HTTP_PROXY=proxy, NO_PROXY="example.org, .invalid")
    assert through.returncode == 0, through.stderr
    assert f"{remote}/health" in asked and len(asked) >= 2  # the probe, then the run's requests
    assert direct.returncode == 3 and "proxy" not in direct.stderr  # resolved directly: nowhere
    assert len(seen) == len(asked)


def test_a_dead_proxy_is_named_with_its_variable(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    proc = run(tmp_path, "http://model.invalid:30000", HTTP_PROXY=dead)
    assert proc.returncode == 3, proc.stderr
    what, fix = proc.stderr.splitlines()
    assert (
        f"no model server answers at http://model.invalid:30000 through the proxy HTTP_PROXY={dead}" in what
    )
    assert fix.startswith("  fix: ") and "NO_PROXY" in fix and "unset HTTP_PROXY" in fix


@pytest.mark.parametrize(
    ("var", "value", "said"),
    [
        ("ALL_PROXY", "socks5://127.0.0.1:9", "needs the socksio package"),
        (
            "HTTPS_PROXY",
            "ftp://bob:pw-S3cret@proxy.example:21",
            "not an http://, https:// or socks5:// proxy URL",
        ),
        ("HTTP_PROXY", "proxy.example:3128", "not an http://, https:// or socks5:// proxy URL"),
    ],
)
def test_a_proxy_that_cannot_be_used_is_a_bad_variable_not_a_bug(tmp_path, var, value, said):
    if said.startswith("needs") and importlib.util.find_spec("socksio") is not None:
        pytest.skip("socksio is installed: a SOCKS proxy can be used")
    with ScriptedModelServer([ANSWER]) as model:
        proc = run(tmp_path, model.url, **{var: value})
    assert proc.returncode == 2, proc.stderr
    what, fix = proc.stderr.splitlines()
    assert f"bad environment variable: {var}=" in what and said in what and "pw-S3cret" not in what
    assert fix.startswith("  fix: ") and var in fix


def test_which_proxy_a_url_goes_through(monkeypatch):
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)
    both = Settings(
        http_proxy="http://p1:1", all_proxy="http://p2:2", no_proxy="example.org,.corp.test,10.0.0.7"
    )
    assert proxy_for("http://model.example:30000", both) == Proxy("HTTP_PROXY", "http://p1:1")
    assert proxy_for("https://api.example/v1", both) == Proxy("ALL_PROXY", "http://p2:2")
    for direct in (
        "http://127.0.0.1:30000", "http://localhost:1", "http://[::1]:8000",  # loopback
        "https://example.org/x", "https://api.example.org/x",  # a domain and its subdomains
        "http://gpu.corp.test:1", "http://10.0.0.7:30000",
    ):  # fmt: skip
        assert proxy_for(direct, both) is None, direct
    assert proxy_for("http://corp.test:1", both) is not None  # `.corp.test`: its subdomains only
    assert proxy_for("http://model.example:1", Settings(https_proxy="http://p:1")) is None
    assert proxy_for("http://model.example:1", Settings(all_proxy="http://p:1", no_proxy="*")) is None
    assert str(Proxy("HTTP_PROXY", "http://u:pw@p:1")) == "HTTP_PROXY=http://u:***@p:1"


def test_otlp_spans_go_through_the_proxy_and_loopback_does_not(monkeypatch):
    pytest.importorskip("opentelemetry.sdk")
    from qwq_agent.otel import OtelExport
    from qwq_agent.testing.otlp_receiver import OTLPReceiver

    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)
    with OTLPReceiver() as rx, forward_proxy(rx.endpoint) as (proxy, seen):
        monkeypatch.setenv("HTTP_PROXY", proxy)
        remote = f"http://collector.invalid:{urlsplit(rx.endpoint).port}"
        for endpoint in (remote, rx.endpoint):
            export = OtelExport(endpoint, timeout_s=10)
            export.tracer().start_span("s").end()
            assert export.shutdown(), endpoint
        rx.wait_for(lambda got: len(got) == 2)
    assert seen == [f"{remote}/v1/traces"]  # the loopback collector was posted to directly
