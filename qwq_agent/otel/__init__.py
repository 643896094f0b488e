"""OpenTelemetry spans of agent runs (GenAI semantic conventions); `pip install -e '.[otel]'`."""

from qwq_agent.otel.setup import DEFAULT_ENDPOINT, OtelExport, endpoint_from_env
from qwq_agent.otel.spans import CAPTURE_CONTENT_ENV, SpanRecorder, traced

__all__ = [
    "CAPTURE_CONTENT_ENV",
    "DEFAULT_ENDPOINT",
    "OtelExport",
    "SpanRecorder",
    "endpoint_from_env",
    "traced",
]
