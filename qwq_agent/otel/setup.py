"""An OTLP/HTTP trace pipeline for the CLI (or a script): on with an endpoint, off otherwise."""

from __future__ import annotations

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Tracer

__all__ = ["DEFAULT_ENDPOINT", "OtelExport", "endpoint_from_env"]

DEFAULT_ENDPOINT = "http://127.0.0.1:4318"
ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
TRACES_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"


def endpoint_from_env() -> str | None:
    """The endpoint the standard OTLP variables name, or None (telemetry stays off)."""
    from qwq_agent.settings import get_settings

    return get_settings().otel_endpoint


class OtelExport:
    """A tracer provider exporting to an OTLP/HTTP collector; `shutdown()` flushes within a deadline.

    `endpoint` is the collector's base URL (`/v1/traces` is added, as the OTLP spec says for
    `OTEL_EXPORTER_OTLP_ENDPOINT`), unless it already ends with `/v1/traces`.
    """

    def __init__(
        self, endpoint: str | None = None, *, service_name: str = "qwq-agent", timeout_s: float = 10.0
    ):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        from qwq_agent.settings import get_settings

        settings = get_settings()
        base = endpoint or settings.otel_endpoint or DEFAULT_ENDPOINT
        self.endpoint = base if base.rstrip("/").endswith("/v1/traces") else base.rstrip("/") + "/v1/traces"
        self.timeout_s = timeout_s
        resource = Resource.create({"service.name": settings.otel_service_name or service_name})
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=self.endpoint, timeout=timeout_s))
        )

    def tracer(self) -> Tracer:
        """A tracer of this provider, for `SpanRecorder`."""
        return self.provider.get_tracer("qwq_agent")

    def shutdown(self) -> bool:
        """Export what is pending and stop; False if the collector did not take it in time."""
        flushed = self.provider.force_flush(timeout_millis=int(self.timeout_s * 1000))
        self.provider.shutdown()
        return flushed
