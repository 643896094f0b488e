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

import httpx
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


# ----- the CA variables -------------------------------------------------------------------------------


def test_a_ca_variable_that_cannot_be_used_is_named_and_a_plain_http_run_does_not_need_it(tmp_path):
    """SSL_CERT_FILE=/nonexistent/x.pem made every `run` exit 2 with "cannot use: No such file or
    directory", naming neither the variable nor the file, a plain http:// model server on loopback
    included."""
    notpem = tmp_path / "notpem.txt"
    notpem.write_text("hello\n")
    missing = "/nonexistent/corp-ca.pem"
    with ScriptedModelServer([ANSWER, ANSWER]) as model:
        for value in (missing, str(notpem)):
            plain = run(tmp_path, model.url, SSL_CERT_FILE=value)
            assert plain.returncode == 0, plain.stderr
    cases = [
        ({"SSL_CERT_FILE": missing}, f"SSL_CERT_FILE={missing}: no such file"),
        ({"SSL_CERT_FILE": str(notpem)}, f"SSL_CERT_FILE={notpem}: cannot be read as CA certificates"),
        ({"SSL_CERT_DIR": "/nonexistent/certs"}, "SSL_CERT_DIR=/nonexistent/certs: no such folder"),
        ({"SSL_CERT_DIR": str(notpem)}, f"SSL_CERT_DIR={notpem}: not a folder"),
    ]
    for env, said in cases:
        tls = run(tmp_path, "https://127.0.0.1:1", **env)  # TLS is spoken: the CAs are needed
        assert tls.returncode == 2, tls.stderr
        what, fix = tls.stderr.splitlines()
        assert f"bad environment variable: {said}" in what, what
        assert fix.startswith("  fix: ") and f"point {next(iter(env))} at" in fix


def test_the_ca_files_are_read_only_for_a_client_that_speaks_tls():
    from qwq_agent.http_env import client_options
    from qwq_agent.settings import SettingsError

    bad = Settings(ssl_cert_file="/nonexistent/ca.pem")
    assert client_options("http://127.0.0.1:30000", settings=bad)["verify"] is True
    for urls in (("https://model.example",), ("http://a:1", "https://b:2"), ()):  # () : any server
        with pytest.raises(SettingsError, match=r"SSL_CERT_FILE=/nonexistent/ca\.pem: no such file"):
            client_options(*urls, settings=bad)
    # An https:// proxy is spoken to over TLS, whatever the server's scheme.
    through = Settings(ssl_cert_file="/nonexistent/ca.pem", http_proxy="https://proxy.example:3128")
    with pytest.raises(SettingsError, match="SSL_CERT_FILE"):
        client_options("http://model.example:30000", settings=through)


# ----- which hosts are reached directly -----------------------------------------------------------------


@contextmanager
def proxy_env(monkeypatch, **env: str) -> Iterator[None]:
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield


def test_no_proxy_reads_addresses_networks_and_ports_as_requests_and_curl_do():
    """`NO_PROXY=fd00::5` (unbracketed IPv6) was dropped, `10.0.0.0/8` read as the one host 10.0.0.0."""
    settings = Settings(
        http_proxy="http://p:1",
        no_proxy="fd00::5, 10.0.0.0/8, [fd00::7]:8080, 192.168.1.1:8080, fc00:1::/32, .corp.test, *.star.test, "
        "example.org, host:99",
    )
    direct = [
        "http://[fd00::5]:1", "http://10.9.9.9:1", "http://10.0.0.0", "http://[fd00::7]:8080",
        "http://192.168.1.1:8080", "http://[fc00:1:2::9]:1", "http://a.corp.test", "http://a.star.test",
        "http://example.org.", "http://x.example.org", "http://host:99",
    ]  # fmt: skip
    proxied = [
        "http://11.0.0.1", "http://[fd00::6]:1", "http://[fd00::7]:8081", "http://192.168.1.1",
        "http://corp.test", "http://star.test", "http://badexample.org", "http://host:98",
    ]  # fmt: skip
    for url in direct:
        assert proxy_for(url, settings) is None, url
    for url in proxied:
        assert proxy_for(url, settings) == Proxy("HTTP_PROXY", "http://p:1"), url


def test_every_form_of_loopback_is_never_proxied():
    settings = Settings(http_proxy="http://p:1", https_proxy="http://p:1")
    for url in (
        "http://127.0.0.2:30000", "http://127.255.255.254", "http://[0:0:0:0:0:0:0:1]:8000",
        "http://localhost.:1", "https://LOCALHOST:1", "http://[::ffff:127.0.0.1]:1", "http://127.1:1",
    ):  # fmt: skip
        assert proxy_for(url, settings) is None, url
    assert proxy_for("http://128.0.0.1:1", settings) is not None
    assert proxy_for("http://localhost.example:1", settings) is not None


def test_a_model_server_on_another_loopback_address_is_not_sent_to_the_proxy(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    with ScriptedModelServer([ANSWER], host="127.0.0.2") as model:
        proc = run(tmp_path, model.url, HTTP_PROXY=dead)
    assert "127.0.0.2" in model.url
    assert proc.returncode == 0, proc.stderr


def test_the_httpx_clients_and_the_otlp_exporter_route_a_no_proxy_network_alike(monkeypatch):
    """The model/MCP clients (httpx) and the OTLP exporter (requests) honour the same NO_PROXY: a CIDR
    entry sent the exporter's spans through the proxy, and httpx's mounts cannot express one."""
    pytest.importorskip("opentelemetry.sdk")
    from qwq_agent.http_probe import get_within
    from qwq_agent.otel import OtelExport
    from qwq_agent.testing.otlp_receiver import OTLPReceiver

    with ScriptedModelServer([ANSWER]) as model, forward_proxy(model.url) as (proxy, seen):
        port = urlsplit(model.url).port
        with proxy_env(monkeypatch, HTTP_PROXY=proxy):
            assert get_within(f"http://10.9.9.9:{port}/health", 30).status_code == 200  # proxied
        assert seen == [f"http://10.9.9.9:{port}/health"]
        with proxy_env(monkeypatch, HTTP_PROXY=proxy, NO_PROXY="10.0.0.0/8, fd00::/8"):
            for url in (f"http://10.9.9.9:{port}/health", f"http://[fd00::5]:{port}/health"):
                with pytest.raises((httpx.HTTPError, TimeoutError)):
                    get_within(url, 2)  # directly: no such host here, the request fails
            with OTLPReceiver() as rx:
                export = OtelExport(f"http://10.9.9.9:{urlsplit(rx.endpoint).port}", timeout_s=1)
                export.tracer().start_span("s").end()
                export.shutdown()  # the spans are lost: posted directly, to no one
                assert export.proxy is None
        assert len(seen) == 1  # neither client asked the proxy


def test_the_lower_case_proxy_variable_is_read_first_and_named(monkeypatch, tmp_path):
    """With only `http_proxy` set, the error named HTTP_PROXY (not set: `unset HTTP_PROXY` changed
    nothing); with both set, the one used depended on their order in the environment."""
    dead = f"http://127.0.0.1:{free_port()}"
    clean = {k: v for k, v in os.environ.items() if k.upper() not in PROXY_VARS}
    proc = subprocess.run(
        [*CLI, "run", "hi", "--model-url", "http://model.invalid:30000", "--tools", "fetch_url",
         "--trace", str(tmp_path / "t.jsonl")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**clean, "http_proxy": dead},
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    what, fix = proc.stderr.splitlines()
    assert f"through the proxy http_proxy={dead}" in what and "unset http_proxy" in fix
    assert "HTTP_PROXY" not in proc.stderr
    for first, second in (("http_proxy", "HTTP_PROXY"), ("HTTP_PROXY", "http_proxy")):
        with proxy_env(monkeypatch):
            monkeypatch.setenv(first, f"http://{first}:1")
            monkeypatch.setenv(second, f"http://{second}:1")
            assert proxy_for("http://model.example:1") == Proxy("http_proxy", "http://http_proxy:1")
    with proxy_env(monkeypatch, HTTPS_PROXY="http://upper:1", all_proxy="http://all:1"):
        assert proxy_for("https://model.example") == Proxy("HTTPS_PROXY", "http://upper:1")
        assert proxy_for("http://model.example") == Proxy("all_proxy", "http://all:1")
