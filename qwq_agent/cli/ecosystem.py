"""`qwq-agent run`'s MCP and OpenTelemetry options: `--mcp`, `--mcp-url`, `--otel`, `--otel-content`."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from qwq_agent.cli.safe_text import plain
from qwq_agent.protocols import Tool
from qwq_agent.urls import is_http_url, redact_url

__all__ = ["RunExtras", "add_arguments", "check_urls", "open_extras"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options, added to the `run` parser."""
    p.add_argument(
        "--mcp",
        action="append",
        default=[],
        metavar="'CMD ARGS'",
        help="tools of an MCP server started with this command (stdio); repeat for several",
    )
    p.add_argument(
        "--mcp-url",
        action="append",
        default=[],
        metavar="URL",
        help="tools of an MCP server at this streamable-HTTP URL; repeat for several",
    )
    p.add_argument(
        "--otel",
        nargs="?",
        const="",
        default=None,
        metavar="ENDPOINT",
        help="export OpenTelemetry spans over OTLP/HTTP (default endpoint: $OTEL_EXPORTER_OTLP_ENDPOINT, "
        "else http://127.0.0.1:4318); on by itself when OTEL_EXPORTER_OTLP_ENDPOINT is set",
    )
    p.add_argument(
        "--otel-content", action="store_true", help="record prompts, outputs and tool I/O in spans"
    )


class RunExtras:
    """What the options set up for one run: MCP connections and a span exporter; `aclose()` ends both."""

    def __init__(
        self,
        tools: list[Tool],
        toolset: Any = None,
        export: Any = None,
        recorder: Any = None,
        console: Any = None,
    ) -> None:
        self.tools = tools
        self._toolset = toolset
        self._export = export
        self._recorder = recorder
        self._console = console

    @property
    def mcp_tool_names(self) -> list[str]:
        """The names of the tools the MCP servers gave (recorded, so that a replay can ask for them)."""
        return [t.spec.name for t in self._toolset] if self._toolset is not None else []

    def observe(self, events: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """The run's events, passed through the span recorder when telemetry is on."""
        if self._recorder is None:
            return events
        from qwq_agent.otel import traced

        return traced(events, self._recorder)

    async def aclose(self) -> None:
        if self._toolset is not None:
            await self._toolset.aclose()
        if self._export is not None:
            export = self._export
            if not await asyncio.to_thread(export.shutdown) and self._console is not None:  # within timeout_s
                self._console.print(
                    plain(
                        f"OpenTelemetry: {export.lost} spans did not reach {redact_url(export.endpoint)}"
                        + (f" through the proxy {export.proxy}" if export.proxy is not None else "")
                        + f" (refused, or not taken within {export.timeout_s:g} s)",
                        "yellow",
                    ),
                    soft_wrap=True,
                )


def check_urls(args: argparse.Namespace) -> None:
    """Each `--mcp-url` and the OTLP endpoint (`--otel URL`, else the OTLP variables when telemetry is
    on) is an http:// or https:// URL: one that is not is refused at start-up, in one line naming where
    it came from, its credentials hidden. Found later, an --mcp-url was pydantic's validation dump
    and an ftp:// endpoint a warning per span batch, after a run that exported nothing."""
    from qwq_agent.cli.errors import CliError
    from qwq_agent.settings import get_settings

    for url in args.mcp_url:
        if not is_http_url(url.strip(), scheme_only=True):
            raise CliError(
                f"--mcp-url {redact_url(url.strip())}: an MCP server URL must start with http:// or https://",
                "pass the server's streamable-HTTP URL (e.g. --mcp-url http://127.0.0.1:8000/mcp), or "
                "--mcp 'CMD ARGS' for a server started as a command",
            )
    if args.otel:
        endpoint, source = args.otel, "--otel"
    elif args.otel is not None or get_settings().otel_endpoint:
        endpoint = get_settings().otel_endpoint or "http://127.0.0.1:4318"
        source = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT"
    else:
        return
    if not is_http_url(endpoint.strip()):
        where = "give --otel" if source == "--otel" else "set the variable to"
        raise CliError(
            f"{source} {redact_url(endpoint)}: the OTLP endpoint is not an http:// or https:// URL",
            f"{where} the collector's OTLP/HTTP URL, e.g. http://127.0.0.1:4318",
        )


def _mcp_fix(exc: Exception) -> str:
    """The fix line for an MCP start-up failure: about the URL (and its proxy) or the command that failed."""
    from qwq_agent.mcp import MCPConnectError

    if isinstance(exc, MCPConnectError) and exc.proxy is not None:
        return (
            "check that proxy (it must reach the --mcp-url server), or add the server's host to NO_PROXY, "
            f"or unset {exc.proxy.variable}"
        )
    if isinstance(exc, MCPConnectError) and exc.url is not None:
        return "check that the --mcp-url server is running at that URL and speaks MCP over streamable HTTP"
    if isinstance(exc, MCPConnectError):
        return "check the --mcp command (it must speak MCP on stdin/stdout)"
    return "check the --mcp command (it must speak MCP on stdin/stdout) or the --mcp-url server"


async def open_extras(args: argparse.Namespace, tools: Sequence[Tool], console: Any) -> RunExtras:
    """Connect the MCP servers and start telemetry as asked.

    A failure is a `CliError` (prefixed, with a fix line, exit 2) like every other bad input; the
    servers' own text in it is made safe for the terminal (it is untrusted).
    """
    from qwq_agent.cli.errors import CliError
    from qwq_agent.cli.safe_text import safe

    toolset = None
    if args.mcp or args.mcp_url:
        try:
            from qwq_agent.mcp import MCPError, MCPServerSpec, mcp_tools
        except ImportError:
            raise CliError(
                "--mcp and --mcp-url need the MCP SDK, which is not installed",
                "pip install -e '.[mcp]' (in the qwq-agent checkout)",
            ) from None
        try:
            # An --mcp-url is a URL, whatever it looks like: not run as a command (whose name, the URL
            # with its credentials, every error would then quote).
            servers = [*args.mcp, *(MCPServerSpec(url=url.strip()) for url in args.mcp_url)]
            toolset = await mcp_tools(*servers, reserved=[t.spec.name for t in tools])
        except (MCPError, ValueError) as exc:
            raise CliError(safe(str(exc)), _mcp_fix(exc)) from exc
        console.print(plain(f"MCP tools: {', '.join(t.spec.name for t in toolset) or 'none'}", "dim"))
        if toolset.skipped:
            console.print(plain("MCP tools skipped: " + "; ".join(toolset.skipped), style="yellow"))

    export = recorder = None
    from qwq_agent.settings import get_settings

    if args.otel is not None or get_settings().otel_endpoint:
        try:
            from qwq_agent.otel import OtelExport, SpanRecorder
        except ImportError:
            if toolset is not None:
                await toolset.aclose()
            raise CliError(
                "--otel needs OpenTelemetry, which is not installed",
                "pip install -e '.[otel]' (in the qwq-agent checkout)",
            ) from None
        export = OtelExport(args.otel or None)
        api = getattr(args, "api", None) or get_settings().api  # the flag, else QWQ_API
        provider = "sglang" if api == "native" else "openai"
        recorder = SpanRecorder(
            export.tracer(), provider=provider, capture_content=True if args.otel_content else None
        )
        console.print(plain(f"OpenTelemetry spans to {redact_url(export.endpoint)}", "dim"))
    return RunExtras([*tools, *(toolset or [])], toolset, export, recorder, console)
