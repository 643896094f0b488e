"""MCP servers' tools as ordinary qwq-agent tools: `Agent(tools=[*await mcp_tools("cmd args", URL)])`."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any

from qwq_agent.agent.chat_format import tool_spec_json
from qwq_agent.agent.messages import ToolSpec
from qwq_agent.deadline import Deadline
from qwq_agent.mcp.connection import (
    MAX_ERROR_CHARS,
    MCPConnection,
    MCPError,
    MCPServerDied,
    MCPServerSpec,
    MCPToolGone,
)
from qwq_agent.protocols import ToolContext, ToolOutput
from qwq_agent.tools.arg_check import run_check
from qwq_agent.tools.convert import (
    SUBSCHEMA_MANY,
    SUBSCHEMA_MAP,
    SUBSCHEMA_ONE,
    SchemaConversionError,
    spec_from_mcp,
)
from qwq_agent.tools.registry import schema_problems
from qwq_agent.tools.schema_patterns import ArgumentValidator
from qwq_agent.tools.schema_refs import LOCAL_ONLY
from qwq_agent.urls import redact_urls_in

__all__ = [
    "MAX_DESCRIPTION_CHARS",
    "MAX_SCHEMA_TEXT_CHARS",
    "MAX_SPEC_CHARS",
    "MCPTool",
    "MCPToolset",
    "ToolSpecTooLarge",
    "mcp_tools",
    "to_tool_output",
]

_PREFIX_SEP = "__"
_MAX_STRUCTURED_CHARS = 100_000
# A tool's description goes into every prompt of the run (the system turn lists every tool), and a
# server can write it as long as it likes: one of 1 MB would fill the context before the task.
MAX_DESCRIPTION_CHARS = 4_000
# The input schema goes into every prompt too, and its annotations are the server's free text as well
# (a property's description, a title): each is cut to this. They only describe; validation is unchanged
# (`_cut_annotations` cuts only a schema's own annotations, and `MCPTool` validates against the uncut one).
MAX_SCHEMA_TEXT_CHARS = 1_000
_ANNOTATIONS = ("description", "title", "$comment")
# What is left can still be large (hundreds of properties, a long enum or default): a tool whose spec,
# as the system turn writes it, is longer than this after the cuts is left out (`MCPToolset.skipped`).
MAX_SPEC_CHARS = 16_000
log = logging.getLogger(__name__)


class ToolSpecTooLarge(ValueError):
    """An MCP tool's spec is longer than `MAX_SPEC_CHARS` once its texts are cut; the tool is left out."""


def _cut(text: str, limit: int, what: str) -> str:
    return text[:limit] + f"\n[{what} cut at {limit:,} of {len(text):,} characters]"


# Where a JSON Schema holds subschemas, as `spec_from_mcp` leaves it (draft-7 `definitions`,
# `dependencies` and list-form `items` already rewritten); every other keyword's value is data (`const`,
# `enum`, `default`, `examples`, an unknown keyword) and is left as written, whatever keys it has.
_SUBSCHEMA = frozenset({*SUBSCHEMA_ONE, "contentSchema"})
_SUBSCHEMA_LISTS = frozenset(SUBSCHEMA_MANY)
_SUBSCHEMA_MAPS = frozenset(SUBSCHEMA_MAP)


def _cut_annotations(schema: Any) -> tuple[Any, int]:
    """`schema` with every annotation string (`_ANNOTATIONS`) of a schema or subschema cut to
    `MAX_SCHEMA_TEXT_CHARS`, and how many were cut. Only schema positions are walked: a property
    *named* "description" is a schema, not an annotation, and a "title" inside a `const` or `enum`
    value is data the arguments must match."""
    if not isinstance(schema, dict):
        return schema, 0
    out: dict[str, Any] = {}
    cuts = 0
    for key, value in schema.items():
        n = 0
        if key in _ANNOTATIONS and isinstance(value, str) and len(value) > MAX_SCHEMA_TEXT_CHARS:
            out[key], n = _cut(value, MAX_SCHEMA_TEXT_CHARS, key), 1
        elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
            items = [_cut_annotations(item) for item in value]
            out[key], n = [item for item, _ in items], sum(k for _, k in items)
        elif key in _SUBSCHEMA:
            out[key], n = _cut_annotations(value)
        elif key in _SUBSCHEMA_MAPS and isinstance(value, dict):
            cut = {name: _cut_annotations(sub) for name, sub in value.items()}
            out[key], n = {name: sub for name, (sub, _) in cut.items()}, sum(k for _, k in cut.values())
        else:
            out[key] = value
        cuts += n
    return out, cuts


def to_tool_output(result: Any, *, server: str) -> ToolOutput:
    """An MCP `CallToolResult` as an observation: text blocks joined, images kept, the rest described."""
    texts: list[str] = []
    images: list[str] = []
    mime_types: list[str] = []
    for block in result.content:
        kind = getattr(block, "type", None)
        if kind == "text":
            texts.append(block.text)
        elif kind == "image":
            images.append(block.data)
            mime_types.append(block.mime_type)
        elif kind == "audio":
            texts.append(f"[audio ({block.mime_type}) returned; not shown]")
        elif kind == "resource_link":
            texts.append(f"[resource {block.name}: {block.uri}]")
        elif kind == "resource":
            res = block.resource
            text = getattr(res, "text", None)
            texts.append(
                text if text is not None else f"[binary resource {res.uri} ({res.mime_type or '?'})]"
            )
    structured = result.structured_content
    if not texts and structured is not None:
        texts.append(json.dumps(structured, ensure_ascii=False))
    text = "\n".join(texts) if texts else ("(no output)" if not images else "")
    metadata: dict[str, Any] = {"mcp_server": server}
    if structured is not None:
        # Kept for the trace when small; the text (capped by the registry) already carries it.
        size = len(json.dumps(structured, ensure_ascii=False, default=str))
        if size <= _MAX_STRUCTURED_CHARS:
            metadata["structured_content"] = structured
        else:
            metadata["structured_content_chars"] = size
    if mime_types:
        metadata["image_mime_types"] = mime_types
    if result.is_error:
        metadata["error"] = "mcp_tool_error"
    return ToolOutput(text=text, images=images, is_error=bool(result.is_error), metadata=metadata)


class MCPTool:
    """One tool of an MCP server; satisfies the `Tool` protocol.

    Arguments are checked against the converted schema (the registry does so too; this covers direct
    callers). Every failure (a tool error, a protocol error, a server that died, no answer by the
    call's deadline: the context's, else the server's `call_timeout_s`) is an observation.
    A description longer than `MAX_DESCRIPTION_CHARS` is cut, with a note saying so, and so is every
    annotation in the input schema longer than `MAX_SCHEMA_TEXT_CHARS`; raises `ToolSpecTooLarge` when
    the spec is still longer than `MAX_SPEC_CHARS`.
    """

    uses_sandbox = False

    def __init__(self, connection: MCPConnection, remote: Any, *, name: str | None = None) -> None:
        self.connection = connection
        self.remote_name: str = remote.name
        spec = spec_from_mcp(remote, name=name)
        if len(spec.description) > MAX_DESCRIPTION_CHARS:
            log.warning(
                "MCP tool %r: its description of %d characters is cut to %d",
                spec.name,
                len(spec.description),
                MAX_DESCRIPTION_CHARS,
            )
            spec = spec.model_copy(
                update={"description": _cut(spec.description, MAX_DESCRIPTION_CHARS, "description")}
            )
        # Arguments are validated against the schema as the server wrote it: the cuts only shorten the
        # prompt's copy, and must never change what is accepted.
        uncut = spec.parameters
        parameters, cuts = _cut_annotations(spec.parameters)
        if cuts:
            log.warning(
                "MCP tool %r: %d text(s) of its input schema cut to %d characters",
                spec.name,
                cuts,
                MAX_SCHEMA_TEXT_CHARS,
            )
            spec = spec.model_copy(update={"parameters": parameters})
        size = len(tool_spec_json(spec))
        if size > MAX_SPEC_CHARS:
            raise ToolSpecTooLarge(
                f"tool {remote.name!r}: its spec is {size:,} characters long after the cuts, over the "
                f"{MAX_SPEC_CHARS:,} every prompt could carry for it"
            )
        self._spec = spec
        # The server's patterns, which the model's arguments are matched against, run under a time
        # limit (schema_patterns.py).
        self._validator = ArgumentValidator(uncut, registry=LOCAL_ONLY)

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        deadline = context.deadline if context is not None else None
        if deadline is None:
            # Called directly: the server's own limit, or a server that never answers holds the caller
            # forever (a registry or the loop stops the call by their limit or deadline as well).
            deadline = Deadline.after(self.connection.spec.call_timeout_s)
        # Off the event loop, on the argument checks' own threads, like the registry's check.
        try:
            problems = await run_check(lambda: self._problems(arguments), limit=deadline.left())
        except TimeoutError:
            problems = ["the arguments could not be checked against the tool's schema in time"]
        if problems:
            return ToolOutput(
                text=f"Invalid arguments for tool '{self._spec.name}':\n"
                + "\n".join(f"- {p}" for p in problems),
                is_error=True,
                metadata={"error": "invalid_arguments"},
            )
        server = self.connection.server_name or self.connection.spec.label
        limit = deadline.left()
        timer = asyncio.timeout(limit)
        try:
            async with timer:
                result = await self.connection.call(self.remote_name, arguments)
        except TimeoutError:
            if not timer.expired():
                raise
            return ToolOutput(
                text=f"Tool '{self._spec.name}' did not answer within {limit:g} s, the time limit of "
                "the call, and was cancelled.",
                is_error=True,
                metadata={"error": "timeout", "mcp_server": server},
            )
        except MCPServerDied as exc:
            return ToolOutput(
                text=f"Tool '{self._spec.name}' failed: {exc}. The server will be restarted on the next call.",
                is_error=True,
                metadata={"error": "mcp_server_died", "mcp_server": server},
            )
        except MCPToolGone as exc:
            return ToolOutput(
                text=f"Tool '{self._spec.name}' cannot be called: {exc}.",
                is_error=True,
                metadata={"error": "mcp_tool_gone", "mcp_server": server},
            )
        except MCPError as exc:  # could not (re)connect
            return ToolOutput(
                text=f"Tool '{self._spec.name}' failed: {exc}",
                is_error=True,
                metadata={"error": "mcp_unavailable", "mcp_server": server},
            )
        except Exception as exc:  # the SDK's MCPError: the server refused the request
            # Or an httpx error that escaped the SDK, quoting the server's URL with its credentials.
            return ToolOutput(
                text=f"Tool '{self._spec.name}': the MCP server {server!r} answered with an error: "
                + redact_urls_in(str(exc), max_chars=MAX_ERROR_CHARS),
                is_error=True,
                metadata={"error": "mcp_protocol_error", "mcp_server": server},
            )
        return to_tool_output(result, server=server)

    def _problems(self, arguments: dict[str, Any]) -> list[str]:
        return schema_problems(self._validator, arguments)

    def __repr__(self) -> str:
        return f"MCPTool(name={self._spec.name!r}, server={self.connection.server_name!r})"


class MCPToolset(list[MCPTool]):
    """The tools of some MCP servers (a list) that also owns their connections: `aclose()` them.

    `skipped` says which offered tools were left out and why (a schema that cannot be converted, a spec
    longer than `MAX_SPEC_CHARS`, a name the server listed twice).
    """

    def __init__(
        self, tools: Iterable[MCPTool], connections: Sequence[MCPConnection], skipped: Sequence[str] = ()
    ) -> None:
        super().__init__(tools)
        self.connections = list(connections)
        self.skipped = list(skipped)

    async def aclose(self) -> None:
        """Stop every server; bounded by the SDK's own shutdown deadlines."""
        await asyncio.gather(*(c.aclose() for c in self.connections), return_exceptions=True)

    async def __aenter__(self) -> MCPToolset:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "server"


async def mcp_tools(
    *servers: str | Sequence[str] | MCPServerSpec,
    reserved: Iterable[str] = (),
) -> MCPToolset:
    """Connect to MCP servers and return their tools, ready for `Agent(tools=...)`.

    Each server is a URL (streamable HTTP), a command line, an argv list or an `MCPServerSpec`.
    A tool name that more than one server offers, or that is in `reserved` (the run's other tools),
    is prefixed with its server's name: `server__tool`. The names handed back are unique: a tool whose
    prefixed name another tool already has, a tool whose schema cannot be converted or whose spec is too
    long (`MCPTool`), and a second
    tool of one server under the same name are left out with a warning (`MCPToolset.skipped`).
    Raises `MCPConnectError` (naming the server)
    if one cannot be reached; those already started are stopped again.
    """
    specs = [MCPServerSpec.parse(s) for s in servers]
    connections = [MCPConnection(spec) for spec in specs]
    try:
        await asyncio.gather(*(c.connect() for c in connections))
        listed = await asyncio.gather(*(c.list_tools() for c in connections))
        tools, skipped = _build(connections, listed, set(reserved))
    except BaseException:
        # Nothing is handed back to close them: stop every server started so far.
        await asyncio.gather(*(c.aclose() for c in connections), return_exceptions=True)
        raise
    for line in skipped:
        log.warning("MCP tool skipped: %s", line)
    return MCPToolset(tools, connections, skipped)


def _build(
    connections: Sequence[MCPConnection], listed: Sequence[Sequence[Any]], taken: set[str]
) -> tuple[list[MCPTool], list[str]]:
    # Servers may share a name (two instances of one server): number them so prefixes differ.
    seen: dict[str, int] = {}
    for conn in connections:
        base = _slug(conn.server_name)
        seen[base] = seen.get(base, 0) + 1
        conn.server_name = base if seen[base] == 1 else f"{base}_{seen[base]}"

    # A name one server lists twice is counted once: it is not a clash between servers.
    counts: dict[str, int] = {}
    for remote_tools in listed:
        for remote_name in {remote.name for remote in remote_tools}:
            counts[remote_name] = counts.get(remote_name, 0) + 1
    # Every offered tool in order, with its final name, or the reason it is left out.
    planned: list[tuple[MCPConnection, Any, str, bool] | str] = []
    for conn, remote_tools in zip(connections, listed, strict=True):
        own: set[str] = set()
        for remote in remote_tools:
            if remote.name in own:
                planned.append(f"{conn.server_name}: {remote.name!r} is listed twice; the first is kept")
                continue
            own.add(remote.name)
            clash = counts[remote.name] > 1 or remote.name in taken
            name = f"{conn.server_name}{_PREFIX_SEP}{remote.name}" if clash else remote.name
            planned.append((conn, remote, name, clash))

    # Final names must be unique. Names kept as offered cannot clash (a shared or reserved one is
    # prefixed), but a prefixed name can equal a name some server really offers (server `raw` lists
    # `python` and `raw__python`, next to our own `python`), or another prefixed one (`a` + `b__c`,
    # `a__b` + `c`). The prefixed name is our invention, so the tools keeping their names are placed
    # first and a prefixed tool whose name is taken by then is left out.
    built: dict[int, MCPTool | str] = {i: p for i, p in enumerate(planned) if isinstance(p, str)}
    used = set(taken)
    for prefixed_pass in (False, True):
        for i, plan in enumerate(planned):
            if isinstance(plan, str) or plan[3] != prefixed_pass:
                continue
            conn, remote, name, _ = plan
            if name in used:
                built[i] = (
                    f"{conn.server_name}: tool {remote.name!r} would be named {name!r}, "
                    "which another tool already has"
                )
                continue
            built[i] = _make_tool(conn, remote, name)
            if isinstance(built[i], MCPTool):
                used.add(name)
    ordered = [built[i] for i in sorted(built)]
    return [t for t in ordered if isinstance(t, MCPTool)], [t for t in ordered if isinstance(t, str)]


def _make_tool(conn: MCPConnection, remote: Any, name: str) -> MCPTool | str:
    """The tool, or why it is left out: one tool with a schema we cannot check must not take the
    server's others with it."""
    try:
        return MCPTool(conn, remote, name=name)
    except (SchemaConversionError, ToolSpecTooLarge) as exc:  # its message names the tool
        return f"{conn.server_name}: {exc}"
    except Exception as exc:
        why = f"{type(exc).__name__}: {str(exc)[:300]}"
        return f"{conn.server_name}: tool {remote.name!r} could not be set up ({why})"
