"""Credentials in the URLs a user gives (MCP servers, the OTLP collector, search endpoints, a model
server or router checked by `serve`, Docker hosts) are shown nowhere: not on the console, not in an
observation (the model's prompt, the trace), not in a span.

httpx and the OTLP exporter send `user:password@` as basic auth, so such URLs work, and a hosted
server takes its key in the query (`?api_key=...`); every message naming one passes it through
`redact_url` (`user:***@host`, `?api_key=***`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from qwq_agent.agent.clients import NO_RETRY, ModelServerError, SGLangClient
from qwq_agent.testing.scripted_server import ScriptedModelServer

CLI = [sys.executable, "-m", "qwq_agent.cli.main"]
SECRET = "S3cretPw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_credentials(url: str, user: str = "alice") -> str:
    return url.replace("://", f"://{user}:{SECRET}@", 1)


def with_query_key(url: str) -> str:
    return f"{url}?region=eu&api_key={SECRET}"


# How a URL carries its secret, and how it is shown: basic auth in the userinfo, or a key in the query.
CARRIERS = {
    "userinfo": (with_credentials, lambda url: with_credentials(url).replace(SECRET, "***")),
    "query": (with_query_key, lambda url: with_query_key(url).replace(SECRET, "***")),
}


def tool_call(name: str, **arguments: object) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def cli(*argv: str, env: dict[str, str] | None = None, cwd: str | None = None) -> str:
    proc = subprocess.run(
        [*CLI, *argv], capture_output=True, text=True, timeout=240, cwd=cwd, env={**os.environ, **(env or {})}
    )
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    return out


# ----- MCP ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("carrier", CARRIERS)
async def test_an_mcp_server_gone_mid_run_is_named_without_its_password_in_prompt_trace_and_spans(
    tmp_path, carrier
):
    pytest.importorskip("mcp")
    pytest.importorskip("opentelemetry.sdk")
    from mcp_helpers import http_server
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from qwq_agent.agent.loop import Agent, AgentConfig
    from qwq_agent.mcp import mcp_tools
    from qwq_agent.otel import SpanRecorder, traced

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    recorder = SpanRecorder(provider.get_tracer("test"), capture_content=False)
    trace = tmp_path / "run.jsonl"
    turns = [  # the first call finds the connection ended; the second cannot reconnect
        "Add.\n</think>\n\n" + tool_call("add", a=1, b=2),
        "Again.\n</think>\n\n" + tool_call("add", a=1, b=2),
        "Down.\n</think>\n\nThe tool is down.",
    ]
    secured, shown = CARRIERS[carrier]
    with http_server("secure") as (url, proc):
        async with await mcp_tools(secured(url)) as tools:
            proc.kill()
            proc.wait(timeout=10)
            async with ScriptedModelServer(turns) as model, SGLangClient(model.url, retry=NO_RETRY) as client:
                agent = Agent(client, list(tools), config=AgentConfig(check_language=False), trace_path=trace)
                async for _ in traced(agent.stream("add 1 and 2"), recorder):
                    pass
                prompts = [r.prompt or "" for r in model.requests]

    assert len(prompts) == 3 and f"MCP server '{shown(url)}'" in prompts[2]  # still named
    assert not [p for p in prompts if SECRET in p]
    assert SECRET not in trace.read_text()
    tool_spans = [s for s in exporter.get_finished_spans() if s.name == "execute_tool add"]
    assert len(tool_spans) == 2 and shown(url) in (tool_spans[1].status.description or "")
    for span in exporter.get_finished_spans():
        assert SECRET not in json.dumps([dict(span.attributes or {}), span.status.description], default=str)


@pytest.mark.parametrize("carrier", CARRIERS)
@pytest.mark.parametrize("scheme", ["http", "ftp"])
def test_the_cli_names_an_mcp_url_it_cannot_use_without_its_password(scheme, carrier):
    pytest.importorskip("mcp")
    secured, shown = CARRIERS[carrier]
    url = f"{scheme}://127.0.0.1:{free_port()}/mcp"  # nothing listens there
    with ScriptedModelServer([]) as model:
        out = cli("run", "hi", "--model-url", model.url, "--mcp-url", secured(url))
    assert SECRET not in out
    assert shown(url) in out
    if scheme == "ftp":  # an --mcp-url is a URL: refused as one, not run as a command
        assert "must start with http:// or https://" in out
        # One line and a fix that is about --mcp-url, not pydantic's ValidationError dump.
        what, fix = out.strip().splitlines()
        assert what.startswith("qwq-agent run: --mcp-url ") and "validation error" not in out
        assert fix.startswith("  fix: ") and "--mcp-url" in fix and "--mcp command" not in fix


# ----- OpenTelemetry --------------------------------------------------------------------------------


def test_the_cli_names_the_otlp_endpoint_without_its_password(tmp_path):
    pytest.importorskip("opentelemetry.sdk")
    from qwq_agent.testing.otlp_receiver import OTLPReceiver

    with ScriptedModelServer(["ok\n</think>\n\nDone."]) as model, OTLPReceiver() as rx:
        out = cli("run", "hi", "--model-url", model.url, "--otel", with_credentials(rx.endpoint),
                  "--trace", str(tmp_path / "run.jsonl"), cwd=str(tmp_path))  # fmt: skip
        assert rx.wait_for(lambda got: len(got) >= 1)  # the endpoint was used as given
    assert SECRET not in out
    assert f"OpenTelemetry spans to {with_credentials(rx.endpoint).replace(SECRET, '***')}/v1/traces" in out


def test_the_otlp_exporters_own_warnings_do_not_print_the_endpoints_key(tmp_path):
    # The exporter logs its failures itself, quoting the request target (`url: /v1/traces?key=...`,
    # no scheme or host) or the whole URL: the CLI relays those records to stderr.
    pytest.importorskip("opentelemetry.sdk")
    endpoint = f"http://127.0.0.1:{free_port()}/?region=eu&key={SECRET}"  # nothing listens
    with ScriptedModelServer(["ok\n</think>\n\nDone."]) as model:
        out = cli("run", "hi", "--model-url", model.url, "--tools", "fetch_url", "--otel", endpoint,
                  "--trace", str(tmp_path / "run.jsonl"), cwd=str(tmp_path))  # fmt: skip
    assert "opentelemetry.exporter" in out and "?region=eu&key=***" in out  # the warning, redacted
    assert SECRET not in out


@pytest.mark.parametrize("debug", [False, True])
def test_log_lines_the_cli_prints_hide_secrets_of_urls_and_request_targets(capsys, debug):
    import logging

    from qwq_agent.cli.log_setup import configure_logging

    configure_logging(debug=debug)
    log = logging.getLogger("some.library")
    try:
        raise ConnectionError(f"Max retries exceeded with url: /v1/traces?token={SECRET} (refused)")
    except ConnectionError:
        log.exception("export to %s failed", f"ftp://bob:{SECRET}@127.0.0.1/?key={SECRET}")
    log.warning("retrying /x?a=1&api_key=%s&b=2 in 1s", SECRET)
    err = capsys.readouterr().err
    assert SECRET not in err
    assert "ftp://bob:***@127.0.0.1/?key=***" in err and "/v1/traces?token=***" in err
    assert "/x?a=1&api_key=***&b=2 in 1s" in err


def test_an_otlp_endpoint_that_is_not_http_is_refused_at_start_without_its_password(tmp_path):
    pytest.importorskip("opentelemetry.sdk")
    endpoint = f"ftp://bob:{SECRET}@127.0.0.1/?key={SECRET}"
    for how in (["--otel", endpoint], []):
        env = {} if how else {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
        proc = subprocess.run(
            [*CLI, "run", "hi", "--model-url", "http://127.0.0.1:1", "--tools", "fetch_url", *how],
            capture_output=True, text=True, timeout=60, cwd=tmp_path, env={**os.environ, **env},
        )  # fmt: skip
        # Refused before the model is asked (it would be exit 3: nothing listens at port 1).
        assert proc.returncode == 2, proc.stderr
        assert SECRET not in proc.stdout + proc.stderr
        what, fix = proc.stderr.splitlines()
        assert "ftp://bob:***@127.0.0.1/?key=***" in what and "not an http:// or https:// URL" in what
        assert ("--otel" if how else "OTEL_EXPORTER_OTLP_ENDPOINT") in what
        assert fix.startswith("  fix: ") and "http://127.0.0.1:4318" in fix


async def test_the_lost_spans_line_names_the_otlp_endpoint_without_its_password():
    pytest.importorskip("opentelemetry.sdk")
    import io

    from rich.console import Console

    from qwq_agent.cli.ecosystem import RunExtras
    from qwq_agent.otel import OtelExport

    out = io.StringIO()
    export = OtelExport(f"http://alice:{SECRET}@127.0.0.1:{free_port()}", timeout_s=0.5)  # refused
    export.tracer().start_span("step 1").end()
    await RunExtras([], export=export, console=Console(file=out, width=300)).aclose()
    assert "spans did not reach http://alice:***@127.0.0.1:" in out.getvalue()
    assert SECRET not in out.getvalue()


# ----- web search -----------------------------------------------------------------------------------


async def test_a_search_endpoint_that_fails_is_named_without_its_password():
    from qwq_agent.protocols import ToolContext
    from qwq_agent.tools.web.providers import SearxngProvider
    from qwq_agent.tools.web_search import WebSearch, WebSearchArgs

    searx = SearxngProvider(base_url=f"http://alice:{SECRET}@127.0.0.1:{free_port()}")  # refused
    out = await WebSearch(searx).run(WebSearchArgs(query="q"), ToolContext())
    assert out.is_error and "search request to http://alice:***@127.0.0.1:" in out.text
    assert SECRET not in out.text


# ----- a model server or router behind basic auth ---------------------------------------------------


@contextmanager
def router_refusing_its_workers_list() -> Iterator[str]:
    """A router (its own summary as server info) that answers 403 to `/workers`."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path in ("/server_info", "/get_server_info"):
                body, status = json.dumps({"router_manager": True, "workers_count": 1}).encode(), 200
            else:
                body, status = b"{}", 403
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


async def test_a_router_that_refuses_its_workers_list_is_named_without_its_password():
    with router_refusing_its_workers_list() as url:
        async with SGLangClient(with_credentials(url, "ops"), retry=NO_RETRY) as client:
            with pytest.raises(ModelServerError) as err:
                await client.server_info()
    assert "403" in str(err.value) and "ops:***@127.0.0.1" in str(err.value)
    assert SECRET not in str(err.value)


def test_serve_checks_a_server_behind_basic_auth_and_prints_its_url_without_the_password(capsys):
    from qwq_agent.cli.main import main

    with ScriptedModelServer(max_total_num_tokens=777) as server:
        assert main(["serve", "--model-url", with_credentials(server.url, "ops")]) == 0
    out = capsys.readouterr().out
    shown = with_credentials(server.url, "ops").replace(SECRET, "***")
    assert f"ready: {shown}" in out and f"--model-url {shown} " in out
    assert SECRET not in out


def test_serve_checks_a_router_behind_basic_auth_and_prints_its_url_without_the_password(tmp_path, capsys):
    pytest.importorskip("sglang_router", reason="sglang-router is not installed (pip install -e '.[router]')")
    from router_helpers import Router, scripted

    from qwq_agent.cli.main import main

    with scripted(tmp_path, 1000) as worker, Router([worker], "cache_aware", tmp_path) as router:
        assert main(["serve", "--model-url", with_credentials(router.url, "ops")]) == 0
    out = capsys.readouterr().out
    shown = with_credentials(router.url, "ops").replace(SECRET, "***")
    assert f"ready: {shown} (router)" in out and f"--model-url {shown} " in out
    assert "total KV capacity: 1000 tokens" in out and SECRET not in out


# ----- Docker hosts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["ssh", "tcp"])
def test_a_docker_host_url_with_a_password_is_refused_without_showing_it(scheme):
    from qwq_agent.sandbox.errors import SandboxError
    from qwq_agent.sandbox.transport import DockerHost

    with pytest.raises(SandboxError) as err:
        DockerHost(url=f"{scheme}://qwq:{SECRET}@127.0.0.1:1")  # ssh would not send it: refused
    assert SECRET not in str(err.value) and f"{scheme}://qwq:***@127.0.0.1:1" in str(err.value)
    assert DockerHost(url=f"{scheme}://qwq@127.0.0.1:1").url == f"{scheme}://qwq@127.0.0.1:1"


@pytest.mark.parametrize("host", ["ssh://qwq:{}@127.0.0.1:1", "http://qwq:{}@127.0.0.1:1"])
def test_the_cli_names_docker_host_without_its_password(host):
    out = cli("run", "hi", "--tools", "python", "--model-url", "http://127.0.0.1:1",
              env={"DOCKER_HOST": host.format(SECRET)})  # fmt: skip
    assert SECRET not in out
    assert host.format("***") in out


def test_log_lines_hide_tokens_in_fragments_one_word_keys_and_json_escaped_urls(capsys):
    """These kept their secret in the CLI's log lines: an OAuth token in a fragment, keys spelled as
    one word, a URL whose slashes a JSON encoder escaped, a query whose `&` Go's wrote as `\\u0026`."""
    import logging

    from qwq_agent.cli.log_setup import configure_logging

    configure_logging(debug=False)
    log = logging.getLogger("some.library")
    lines = {
        f"redirected to https://app.example/cb#access_token={SECRET}&token_type=bearer":
            "redirected to https://app.example/cb#access_token=***&token_type=bearer",
        f"callback /cb#access_token={SECRET}&state=1 seen": "callback /cb#access_token=***&state=1 seen",
        f"GET https://api.example/v1?accesstoken={SECRET}&apitoken={SECRET}&authtoken={SECRET} failed":
            "GET https://api.example/v1?accesstoken=***&apitoken=***&authtoken=*** failed",
        f'upstream {{"db":"https:\\/\\/bob:{SECRET}@db.example\\/q"}}':
            'upstream {"db":"https:\\/\\/bob:***@db.example\\/q"}',
        f'next {{"next":"https://api.example/x?page=2\\u0026token={SECRET}"}}':
            'next {"next":"https://api.example/x?page=2\\u0026token=***"}',
        # the punctuation after a value is kept; `name=value` in text that is no query is no secret
        f"see https://h/x?token={SECRET}. Then /y?key={SECRET}, done": "see https://h/x?token=***. Then /y?key=***, done",
        "worker exit;code=1 status=0": "worker exit;code=1 status=0",
    }  # fmt: skip
    for line in lines:
        log.warning(line)
    err = capsys.readouterr().err
    assert SECRET not in err
    for shown in lines.values():
        assert f"{shown}\n" in err, (shown, err)


@pytest.mark.parametrize(
    "text",
    [
        "?" * 200_000,
        "#a=1" * 50_000,
        "https:\\/\\/" * 50_000,
        "x?a=" + "\\u0026token=K" * 20_000,
        "see https://h/?token=K" + "." * 100_000,
    ],
)
def test_log_line_redaction_takes_time_linear_in_the_text(text):
    import time

    from qwq_agent.urls import redact_secrets_in

    began = time.process_time()  # CPU time of this process: the scan itself, not the loaded machine
    shown = redact_secrets_in(text)
    assert time.process_time() - began < 2.0
    assert "token=K" not in shown
