"""An OTLP/HTTP trace pipeline for the CLI (or a script): on with an endpoint, off otherwise."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Tracer

if TYPE_CHECKING:
    from qwq_agent.http_env import Proxy

__all__ = ["DEFAULT_ENDPOINT", "OtelExport", "endpoint_from_env"]

DEFAULT_ENDPOINT = "http://127.0.0.1:4318"
ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
TRACES_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"


def endpoint_from_env() -> str | None:
    """The endpoint the standard OTLP variables name, or None (telemetry stays off)."""
    from qwq_agent.settings import get_settings

    return get_settings().otel_endpoint


def traces_url(base: str) -> str:
    """`base` with `/v1/traces` added to its path, unless the path already ends so; its query (a hosted
    collector's `?key=...`) and fragment kept after it, not taken into the key."""
    parts = urlsplit(base)
    path = parts.path.rstrip("/")
    if not path.endswith("/v1/traces"):
        path += "/v1/traces"
    return urlunsplit(parts._replace(path=path))


def _session(endpoint: str) -> tuple[Any, dict[str, Any]]:
    """The exporter's requests session, and `requests_options(endpoint)`: proxies and CA certificates
    from `Settings`, as every client of ours takes them (`qwq_agent.http_env`), not read by requests
    from the environment itself. `verify` is for the exporter's `certificate_file` (which it sets on the
    session, over anything set there)."""
    import requests

    from qwq_agent.http_env import requests_options

    options = requests_options(endpoint)
    proxy: Proxy | None = options["proxy"]

    class Session(requests.Session):
        """Names the proxy in the error of a post it did not take: the exporter logs that error
        ("Transient error ... Unable to connect to proxy host='...'"), which did not say which variable
        set that proxy."""

        def request(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().request(*args, **kwargs)
            except requests.exceptions.ProxyError as exc:
                raise requests.exceptions.ProxyError(
                    f"through the proxy {proxy}: {exc}", request=exc.request, response=exc.response
                ) from exc

    session = Session()
    session.trust_env = False
    session.proxies.update(options["proxies"])
    return session, options


class _Delivered(SpanExporter):
    """Counts the spans `exporter` delivered (the collector answered success)."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter
        self.spans = 0
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.exporter.export(spans)
        if result is SpanExportResult.SUCCESS:
            with self._lock:
                self.spans += len(spans)
        return result

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


class _Ended(SpanProcessor):
    """Counts the spans ended: what should reach the collector (the batch queue drops when full)."""

    def __init__(self) -> None:
        self.spans = 0
        self._lock = threading.Lock()

    def on_end(self, span: ReadableSpan) -> None:
        with self._lock:
            self.spans += 1


class OtelExport:
    """A tracer provider exporting to an OTLP/HTTP collector; `shutdown()` flushes within a deadline.

    `endpoint` is the collector's base URL (`/v1/traces` is added to its path, as the OTLP spec says
    for `OTEL_EXPORTER_OTLP_ENDPOINT`), unless the path already ends with `/v1/traces`.
    """

    def __init__(
        self, endpoint: str | None = None, *, service_name: str = "qwq-agent", timeout_s: float = 10.0
    ):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        from qwq_agent.settings import get_settings

        settings = get_settings()
        base = endpoint or settings.otel_endpoint or DEFAULT_ENDPOINT
        self.endpoint = traces_url(base)
        self.timeout_s = timeout_s
        self.lost = 0
        """After `shutdown()`: how many spans did not reach the collector."""
        resource = Resource.create({"service.name": settings.otel_service_name or service_name})
        # Not shut down at exit: that would export every queued batch again, one timeout each, with no
        # deadline; `shutdown()` is the one place that ends the export, within `timeout_s`.
        self.provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self._ended = _Ended()
        session, options = _session(self.endpoint)
        self.proxy: Proxy | None = options["proxy"]
        """The proxy the spans go through (None: posted directly), to name when they are lost."""
        # A CA path from our variables; else (True) the OTEL_EXPORTER_OTLP_*CERTIFICATE variables
        # the exporter reads itself, then the default CAs.
        verify = options["verify"]
        self._exporter = OTLPSpanExporter(
            endpoint=self.endpoint,
            timeout=timeout_s,
            session=session,
            certificate_file=verify if isinstance(verify, str) else None,
        )
        self._delivered = _Delivered(self._exporter)
        self.provider.add_span_processor(self._ended)
        self.provider.add_span_processor(BatchSpanProcessor(self._delivered))

    def tracer(self) -> Tracer:
        """A tracer of this provider, for `SpanRecorder`."""
        return self.provider.get_tracer("qwq_agent")

    def shutdown(self) -> bool:
        """Export what is pending and stop, within `timeout_s` in all; False when spans were lost.

        Against a collector that accepts connections and never answers, each batch would take a
        full exporter timeout: the flush runs in a daemon thread given `timeout_s`, after which the
        exporter is shut down so the batches still queued fail at once. `lost` then says how many
        spans (ended, but not acknowledged by the collector) are missing.
        """
        done = threading.Event()

        def finish() -> None:
            try:
                self.provider.force_flush(timeout_millis=int(self.timeout_s * 1000))
                self.provider.shutdown()
            finally:
                done.set()

        threading.Thread(target=finish, name="otel-shutdown", daemon=True).start()
        if not done.wait(self.timeout_s):
            self._exporter.shutdown()  # the rest fails fast; the request in flight ends at its timeout
        self.lost = max(0, self._ended.spans - self._delivered.spans)
        return self.lost == 0
