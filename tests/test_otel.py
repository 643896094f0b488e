"""OpenTelemetry spans of runs: the SDK's in-memory exporter, and a real OTLP/HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.events import Final, ModelCall, ToolCallEvent
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.otel import OtelExport, SpanRecorder, traced
from qwq_agent.testing.otlp_receiver import OTLPReceiver
from qwq_agent.testing.scripted_server import ScriptedModelServer, Turn
from qwq_agent.tools.base import tool


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def explode(reason: str) -> str:
    """Always fails."""
    raise RuntimeError(f"boom: {reason}")


def call(name: str, **arguments: object) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


TURNS = [
    "Add, and try the other tool.\n</think>\n\n"
    + call("add", a=2, b=3)
    + "\n"
    + call("explode", reason="test"),
    "5, and the other failed.\n</think>\n\nThe sum is 5.",
]


def memory_tracer() -> tuple[InMemorySpanExporter, TracerProvider]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter, provider


async def run_traced(turns, recorder: SpanRecorder, **config):
    async with ScriptedModelServer(turns) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        agent = Agent(client, [add, explode], config=AgentConfig(check_language=False, **config))
        events = [ev async for ev in traced(agent.stream("What is 2 + 3?"), recorder)]
    return agent, events


async def test_spans_per_run_step_model_call_and_tool_call_follow_the_genai_conventions():
    exporter, provider = memory_tracer()
    agent, events = await run_traced(TURNS, SpanRecorder(provider.get_tracer("t"), provider="sglang"))
    spans = exporter.get_finished_spans()
    by_name: dict[str, list] = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)

    (run,) = by_name["invoke_agent qwq-agent"]
    assert run.parent is None
    assert run.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert run.attributes["qwq_agent.run_id"] == agent.run_id == run.attributes["gen_ai.conversation.id"]
    assert run.attributes["qwq_agent.status"] == "completed" and run.status.status_code != StatusCode.ERROR
    assert "qwq_agent.sandbox_id" not in run.attributes  # this run has no sandbox

    steps = sorted(by_name["step 1"] + by_name["step 2"], key=lambda s: s.attributes["qwq_agent.step"])
    assert [s.parent.span_id for s in steps] == [run.context.span_id] * 2

    model_calls = [e for e in events if isinstance(e, ModelCall)]
    chats = sorted(by_name[f"chat {agent.model.name}"], key=lambda s: s.start_time)
    assert len(chats) == len(model_calls) == 2
    for chat, step, mc in zip(chats, steps, model_calls, strict=True):
        assert chat.parent.span_id == step.context.span_id
        a = chat.attributes
        assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "sglang"
        assert a["gen_ai.request.model"] == agent.model.name
        assert a["gen_ai.usage.input_tokens"] == mc.usage.prompt_tokens > 0
        assert a["gen_ai.usage.output_tokens"] == mc.usage.completion_tokens > 0
        assert a["gen_ai.usage.cache_read.input_tokens"] == mc.usage.cached_tokens
        assert a["gen_ai.response.finish_reasons"] == (mc.usage.finish_reason,)
        assert a["gen_ai.request.temperature"] == 0.6
        # Spans nest in time as in the tree (times come from the events).
        assert step.start_time <= chat.start_time <= chat.end_time <= step.end_time
    # The second request reuses the first one's prompt: the radix cache's hits are on the span.
    assert chats[1].attributes["gen_ai.usage.cache_read.input_tokens"] > 0
    assert run.attributes["gen_ai.usage.cache_read.input_tokens"] == sum(
        m.usage.cached_tokens for m in model_calls
    )

    calls = {e.call.name: e.call.id for e in events if isinstance(e, ToolCallEvent)}
    (ok,) = by_name["execute_tool add"]
    (bad,) = by_name["execute_tool explode"]
    assert ok.parent.span_id == steps[0].context.span_id
    assert ok.attributes["gen_ai.tool.name"] == "add" and ok.attributes["gen_ai.tool.call.id"] == calls["add"]
    assert ok.status.status_code != StatusCode.ERROR and "error.type" not in ok.attributes
    assert bad.status.status_code == StatusCode.ERROR and bad.attributes["error.type"] == "exception"
    assert "boom: test" in bad.status.description
    assert steps[0].start_time <= ok.start_time <= ok.end_time <= steps[0].end_time

    # Content is not recorded unless asked for.
    for s in spans:
        assert not any(
            k in s.attributes
            for k in (
                "gen_ai.input.messages",
                "gen_ai.output.messages",
                "gen_ai.tool.call.arguments",
                "gen_ai.tool.call.result",
            )
        )


async def test_content_is_recorded_only_when_asked():
    exporter, provider = memory_tracer()
    await run_traced(TURNS, SpanRecorder(provider.get_tracer("t"), capture_content=True))
    spans = {s.name: s for s in exporter.get_finished_spans()}
    run = spans["invoke_agent qwq-agent"]
    assert "What is 2 + 3?" in run.attributes["gen_ai.input.messages"]
    assert json.loads(run.attributes["gen_ai.output.messages"])[0]["parts"][0]["content"] == "The sum is 5."
    chat = min(
        (s for s in exporter.get_finished_spans() if s.name.startswith("chat ")), key=lambda s: s.start_time
    )
    assert "What is 2 + 3?" in chat.attributes["gen_ai.input.messages"]
    assert "<tool_call>" in chat.attributes["gen_ai.output.messages"]
    assert json.loads(spans["execute_tool add"].attributes["gen_ai.tool.call.arguments"]) == {"a": 2, "b": 3}
    assert spans["execute_tool add"].attributes["gen_ai.tool.call.result"] == "5"


async def test_a_failed_model_call_and_a_failed_run_are_error_spans():
    exporter, provider = memory_tracer()
    turns = [Turn(http_status=500), Turn(http_status=500)]
    _agent, events = await run_traced(turns, SpanRecorder(provider.get_tracer("t")), model_retries=0)
    assert events[-1].status == "model_error"
    spans = exporter.get_finished_spans()
    run = next(s for s in spans if s.name.startswith("invoke_agent"))
    assert run.status.status_code == StatusCode.ERROR and run.attributes["error.type"] == "model_error"
    chat = next(s for s in spans if s.name.startswith("chat "))
    assert chat.status.status_code == StatusCode.ERROR and chat.attributes["error.type"]
    assert any(name == "qwq_agent.warning" for s in spans for name in (e.name for e in s.events))


async def test_a_request_cut_mid_stream_is_one_error_span_with_the_tokens_it_generated():
    exporter, provider = memory_tracer()
    cut = Turn(text="Thinking it over. " * 20, drop_after=7)
    _agent, events = await run_traced(
        [cut, TURNS[1]], SpanRecorder(provider.get_tracer("t")), model_retries=1, model_retry_backoff_s=0.0
    )
    assert events[-1].status == "completed"
    chats = sorted(
        (s for s in exporter.get_finished_spans() if s.name.startswith("chat ")), key=lambda s: s.start_time
    )
    assert len(chats) == 2  # one per request: the retry warning adds none
    failed, answered = chats
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes["error.type"] == "ModelConnectionError"
    assert failed.attributes["gen_ai.usage.output_tokens"] == 7
    assert answered.status.status_code != StatusCode.ERROR


async def test_a_stream_abandoned_midway_ends_its_spans_as_errors():
    exporter, provider = memory_tracer()
    recorder = SpanRecorder(provider.get_tracer("t"))
    async with ScriptedModelServer(TURNS) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        agent = Agent(client, [add, explode], config=AgentConfig(check_language=False))
        stream = traced(agent.stream("What is 2 + 3?"), recorder)
        async for ev in stream:
            if isinstance(ev, ToolCallEvent):
                break
        await stream.aclose()
    spans = exporter.get_finished_spans()
    run = next(s for s in spans if s.name.startswith("invoke_agent"))
    assert run.status.status_code == StatusCode.ERROR and run.attributes["error.type"] == "aborted"
    assert all(s.end_time is not None for s in spans)


async def test_an_abandoned_stream_aborts_only_its_own_run_of_a_shared_recorder():
    # One recorder for two concurrent runs (one tracer per service): client A goes away mid-run,
    # run B goes on to its end and must be recorded as it happened, not as an aborted run.
    exporter, provider = memory_tracer()
    recorder = SpanRecorder(provider.get_tracer("t"))
    turns = [
        "Add.\n</think>\n\n" + call("add", a=2, b=3),
        "Again.\n</think>\n\n" + call("add", a=5, b=5),
        "Done.\n</think>\n\nThe sums are 5 and 10.",
    ]
    async with (
        ScriptedModelServer(list(turns)) as sa,
        ScriptedModelServer(list(turns)) as sb,
        SGLangClient(sa.url, retry=NO_RETRY) as ca,
        SGLangClient(sb.url, retry=NO_RETRY) as cb,
    ):
        agent_a = Agent(ca, [add], config=AgentConfig(check_language=False))
        agent_b = Agent(cb, [add], config=AgentConfig(check_language=False))
        stream_a = traced(agent_a.stream("sums?"), recorder)
        stream_b = traced(agent_b.stream("sums?"), recorder)
        async for ev in stream_b:
            if isinstance(ev, ModelCall):
                break
        async for ev in stream_a:
            if isinstance(ev, ToolCallEvent):
                break
        await stream_a.aclose()
        rest_b = [ev async for ev in stream_b]
    assert isinstance(rest_b[-1], Final) and rest_b[-1].status == "completed"

    spans = exporter.get_finished_spans()
    assert all(s.end_time is not None for s in spans)
    runs = {s.attributes["qwq_agent.run_id"]: s for s in spans if s.name.startswith("invoke_agent")}
    run_a, run_b = runs[agent_a.run_id], runs[agent_b.run_id]
    assert run_a.status.status_code == StatusCode.ERROR and run_a.attributes["error.type"] == "aborted"
    (tool_a,) = [
        s
        for s in spans
        if s.name == "execute_tool add" and s.attributes["qwq_agent.run_id"] == agent_a.run_id
    ]
    assert tool_a.status.status_code == StatusCode.ERROR  # A's call never returned
    assert run_b.status.status_code != StatusCode.ERROR and "error.type" not in run_b.attributes
    assert run_b.attributes["qwq_agent.status"] == "completed"
    of_b = [s for s in spans if s.attributes.get("qwq_agent.run_id") == agent_b.run_id]
    assert sum(s.name.startswith("chat ") for s in of_b) == 3
    assert sum(s.name == "execute_tool add" for s in of_b) == 2
    assert all(s.status.status_code != StatusCode.ERROR for s in of_b)


async def test_spans_reach_a_real_otlp_http_receiver():
    with OTLPReceiver() as rx:
        export = OtelExport(rx.endpoint, service_name="otel-test")
        agent, _ = await run_traced(TURNS, SpanRecorder(export.tracer()))
        assert export.shutdown()
        spans = rx.wait_for(lambda got: any(s.name.startswith("invoke_agent") for s in got))
    names = sorted(s.name for s in spans)
    assert names.count("execute_tool add") == 1 and "step 2" in names
    run = next(s for s in spans if s.name.startswith("invoke_agent"))
    assert run.resource["service.name"] == "otel-test"
    assert run.attributes["qwq_agent.run_id"] == agent.run_id
    assert {s.trace_id for s in spans} == {run.trace_id}
    bad = next(s for s in spans if s.name == "execute_tool explode")
    assert bad.status_code == 2 and bad.attributes["error.type"] == "exception"
    chat = next(s for s in spans if s.name.startswith("chat "))
    assert chat.attributes["gen_ai.usage.input_tokens"] > 0 and chat.kind == 3  # SPAN_KIND_CLIENT


@pytest.mark.parametrize("given", ["/?key=K123", "?key=K123", "/v1/traces?key=K123", "/v1/traces/?key=K123"])
def test_an_endpoint_with_a_key_in_its_query_posts_to_v1_traces_with_the_key_intact(given):
    # `/v1/traces` goes on the path: appended to the whole URL it became part of the key
    # (`/?key=K123/v1/traces`), and a path-routed collector that checks the key refused every batch.
    with OTLPReceiver() as rx:
        export = OtelExport(rx.endpoint + given, timeout_s=5)
        assert export.endpoint == f"{rx.endpoint}/v1/traces?key=K123"
        export.tracer().start_span("step 1").end()
        assert export.shutdown()
        rx.wait_for(lambda got: len(got) == 1)
    assert rx.targets == ["/v1/traces?key=K123"]


def test_an_endpoint_keeps_its_own_path_before_v1_traces():
    with OTLPReceiver() as rx:
        assert OtelExport(rx.endpoint + "/otlp/").endpoint == f"{rx.endpoint}/otlp/v1/traces"
        assert OtelExport(rx.endpoint + "/v1/traces").endpoint == f"{rx.endpoint}/v1/traces"


def test_content_capture_follows_the_standard_variable_unless_told(monkeypatch):
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    assert SpanRecorder().capture_content is True
    assert SpanRecorder(capture_content=False).capture_content is False
    monkeypatch.delenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")
    assert SpanRecorder().capture_content is False


class HungCollector:
    """A collector that accepts connections and never answers (a stuck proxy, a wedged process)."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[object] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()  # type: ignore[attr-defined]


def test_shutdown_against_a_hung_collector_keeps_its_deadline_and_counts_the_lost_spans():
    import time

    collector = HungCollector()
    try:
        export = OtelExport(collector.endpoint, timeout_s=1.0)
        tracer = export.tracer()
        for i in range(2500):  # a long run: more than one 512-span batch, more than the 2048 queue
            tracer.start_span(f"s{i}").end()
        started = time.monotonic()
        assert export.shutdown() is False
        took = time.monotonic() - started
        assert took < 2.0, f"shutdown took {took:.1f} s with timeout_s=1"
        assert export.lost == 2500
    finally:
        collector.close()


def test_shutdown_with_a_collector_that_takes_everything_loses_nothing():
    with OTLPReceiver() as rx:
        export = OtelExport(rx.endpoint)
        tracer = export.tracer()
        for i in range(600):
            tracer.start_span(f"s{i}").end()
        assert export.shutdown() is True and export.lost == 0
        assert len(rx.wait_for(lambda got: len(got) >= 600)) == 600


async def test_the_cli_says_in_one_line_that_spans_were_lost():
    import io

    from rich.console import Console

    from qwq_agent.cli.ecosystem import RunExtras

    collector = HungCollector()
    out = io.StringIO()
    try:
        export = OtelExport(collector.endpoint, timeout_s=0.5)
        export.tracer().start_span("step 1").end()
        await RunExtras([], export=export, console=Console(file=out, width=200)).aclose()
    finally:
        collector.close()
    lines = out.getvalue().strip().splitlines()
    assert lines == [
        f"OpenTelemetry: 1 spans did not reach {export.endpoint} (refused, or not taken within 0.5 s)"
    ]


async def test_closing_the_traced_stream_ends_the_run_it_wraps_there_and_then():
    """`aclosing(traced(agent.stream(t)))` left early ended the spans but left the run's own stream to the
    garbage collector: the run (its sandbox, its KV room) went on being held past the block."""
    exporter, provider = memory_tracer()
    recorder = SpanRecorder(provider.get_tracer("t"))
    async with ScriptedModelServer(TURNS) as server, SGLangClient(server.url, retry=NO_RETRY) as client:
        agent = Agent(client, [add, explode], config=AgentConfig(check_language=False))
        async with contextlib.aclosing(traced(agent.stream("What is 2 + 3?"), recorder)) as stream:
            async for ev in stream:
                if isinstance(ev, ToolCallEvent):
                    break
        assert agent.result is not None and agent.result.status == "interrupted"
    run = next(s for s in exporter.get_finished_spans() if s.name.startswith("invoke_agent"))
    assert run.status.status_code == StatusCode.ERROR


def _no_ca_variables(monkeypatch) -> None:
    for var in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "HTTPS_PROXY",
                "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy",
                "OTEL_EXPORTER_OTLP_CERTIFICATE", "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_spans_reach_an_https_collector_whose_ca_a_variable_names(tmp_path, monkeypatch, variable):
    """The exporter's session was given SSL_CERT_FILE, and the exporter set its own `verify` over it;
    REQUESTS_CA_BUNDLE, which requests read before its session stopped reading the environment, was
    dropped. Both are honoured, and a bundle that is not there is named."""
    import ssl

    from qwq_agent.settings import SettingsError
    from qwq_agent.testing.tls_docker import make_certs

    tls = make_certs(tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "server.pem", tmp_path / "server-key.pem")
    _no_ca_variables(monkeypatch)
    with OTLPReceiver(ssl_context=server) as rx:
        assert rx.endpoint.startswith("https://")
        unknown = OtelExport(rx.endpoint, timeout_s=2)  # the default CAs: this collector's is unknown
        unknown.tracer().start_span("refused").end()
        assert unknown.shutdown() is False
        monkeypatch.setenv(variable, str(tls.ca_cert))
        export = OtelExport(rx.endpoint, timeout_s=10)
        export.tracer().start_span("delivered").end()
        assert export.shutdown() is True
        assert [s.name for s in rx.wait_for(lambda got: len(got) == 1)] == ["delivered"]
        monkeypatch.setenv(variable, str(tmp_path / "missing.pem"))
        with pytest.raises(SettingsError, match=f"{variable}={tmp_path / 'missing.pem'}: no such file"):
            OtelExport(rx.endpoint)


async def test_spans_lost_through_a_dead_proxy_name_the_proxy_s_variable(monkeypatch, caplog):
    """The README says a server that does not answer through a proxy is reported naming the variable:
    the lost-spans line named the collector only, the exporter's warnings an address."""
    import io
    import logging
    import socket

    from rich.console import Console

    from qwq_agent.cli.ecosystem import RunExtras

    _no_ca_variables(monkeypatch)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    monkeypatch.setenv("HTTP_PROXY", f"http://ops:S3CRETPW@127.0.0.1:{port}")
    export = OtelExport("http://collector.invalid:4318", timeout_s=5)
    export.tracer().start_span("step 1").end()
    out = io.StringIO()
    with caplog.at_level(logging.WARNING):
        await RunExtras([], export=export, console=Console(file=out, width=300)).aclose()
    through = f"through the proxy HTTP_PROXY=http://ops:***@127.0.0.1:{port}"
    assert out.getvalue().strip().splitlines() == [
        f"OpenTelemetry: 1 spans did not reach http://collector.invalid:4318/v1/traces {through} "
        "(refused, or not taken within 5 s)"
    ]
    assert any(through in r.getMessage() for r in caplog.records)  # the exporter's own warning
    assert "S3CRETPW" not in out.getvalue() + caplog.text
