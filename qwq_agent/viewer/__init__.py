"""A local trace viewer in the browser: `qwq-agent trace serve [DIR]` (see `server.py`)."""

from qwq_agent.viewer.server import TraceViewer
from qwq_agent.viewer.summary import EventPage, RunSummary, SummaryCache, read_events, summarize

__all__ = ["EventPage", "RunSummary", "SummaryCache", "TraceViewer", "read_events", "summarize"]
