"""One MCP server, over stdio or streamable HTTP, kept connected by a task of its own.

The SDK's transports are anyio context managers that must be entered and left in the same task, so
each connection owns a background task holding them open; tool calls from any task go through its
session. A server that dies (its process exits, its HTTP endpoint goes away) fails the calls in
flight with `MCPServerDied`; the next call starts it again.

Every session lists the server's tools before it is used, the first and every restarted one alike:
the SDK checks a result against its tool's output schema, and for a tool its session has not listed
it first asks for the list, after the answer came; a server that exits right after answering (or
crashes) then lost the answer it gave, and the call, which had run, was reported as a dead server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, model_validator

from qwq_agent.mcp._stdio import STOP_BOUND_S, StderrTail, stdio_transport
from qwq_agent.urls import is_http_url, redact_url, redact_urls_in

if TYPE_CHECKING:
    from qwq_agent.http_env import Proxy

__all__ = [
    "MCPConnectError",
    "MCPConnection",
    "MCPError",
    "MCPServerDied",
    "MCPServerSpec",
    "MCPToolGone",
]

log = logging.getLogger(__name__)

_STDERR_TAIL_CHARS = 800
# A server's error text is its own free text, as long as it likes: cut to this (head and tail) before
# its URLs are redacted on the event loop and it becomes an observation or an error line.
MAX_ERROR_CHARS = 16_000
_MCP_SESSION_ID = "mcp-session-id"
# How long a holder task gets to leave its transport before it is cancelled, and again after: a stdio
# server's stop takes at most `STOP_BOUND_S` (`_stdio.stop()`'s own steps), plus a margin.
_SHUTDOWN_S = STOP_BOUND_S + 3.0


class MCPError(RuntimeError):
    """Base of the errors of the MCP client."""


class MCPConnectError(MCPError):
    """The server could not be started or did not complete the MCP handshake in time.

    `url`: the server's URL (None for a command); `proxy`: the proxy it was asked through, if any."""

    def __init__(self, message: str, *, url: str | None = None, proxy: Proxy | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.proxy = proxy


class MCPServerDied(MCPError):
    """The connection to the server ended during a call; the next call reconnects."""


class MCPToolGone(MCPError):
    """The server, restarted, no longer lists a tool it listed before; the tool was not called."""


class MCPServerSpec(BaseModel):
    """How to reach one MCP server: a command (stdio) or a URL (streamable HTTP).

    A URL may carry credentials (`http://user:password@host/mcp`: httpx sends them as basic auth);
    `label`, and so every message naming the server, shows it through `redact_url`.
    """

    # A validation error would quote the URL, the headers or the environment given: secrets, often.
    model_config = ConfigDict(hide_input_in_errors=True)

    command: list[str] | None = None
    url: str | None = None
    name: str | None = Field(default=None, description="overrides the name the server gives itself")
    env: dict[str, str] | None = None
    headers: dict[str, str] | None = None
    connect_timeout_s: float = 30.0
    call_timeout_s: float | None = Field(
        default=660.0,
        gt=0,
        description="the longest a tool call may take when its caller sets no deadline (a direct "
        "`MCPTool` call); under the agent loop the call's deadline governs. None: no limit",
    )

    @model_validator(mode="after")
    def _one_transport(self) -> MCPServerSpec:
        if (self.command is None) == (self.url is None):
            raise ValueError(
                "an MCP server needs exactly one of `command` (stdio) or `url` (streamable HTTP)"
            )
        if self.command is not None and not self.command:
            raise ValueError("an MCP server's command is empty")
        if self.url is not None and not is_http_url(self.url, scheme_only=True):
            raise ValueError(
                f"an MCP server URL must start with http:// or https://, got {redact_url(self.url)!r}"
            )
        return self

    @classmethod
    def parse(cls, value: str | Sequence[str] | MCPServerSpec) -> MCPServerSpec:
        """A spec from a URL, a shell-quoted command line (`'npx -y server /tmp'`) or an argv list."""
        if isinstance(value, MCPServerSpec):
            return value
        if isinstance(value, str):
            if is_http_url(value.strip(), scheme_only=True):
                return cls(url=value.strip())
            return cls(command=shlex.split(value))
        return cls(command=list(value))

    @property
    def label(self) -> str:
        """What to call the server in messages before it has told us its name (its URL's credentials
        hidden: the messages reach the model, the trace, the spans and the console)."""
        if self.name:
            return self.name
        return redact_url(self.url) if self.url is not None else shlex.join(self.command or [])


class MCPConnection:
    """A live session with one server; `call` reconnects if the previous session ended."""

    def __init__(self, spec: MCPServerSpec) -> None:
        self.spec = spec
        self.server_name: str = spec.name or ""
        self._session: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._read: _WatchedReadStream | None = None
        self._http_session: _HTTPSession | None = None
        self._tools: list[Any] = []
        self._listed: set[str] = set()  # every tool name any session listed
        self._handshaken = False
        self._ended_why = ""  # why the transport ended the session, when it did so on its own
        self._lock = asyncio.Lock()
        self._stderr = StderrTail(_STDERR_TAIL_CHARS) if spec.command else None
        self.starts = 0

    @property
    def alive(self) -> bool:
        """Whether the session is up: its task runs and the server has not closed its side."""
        return (
            self._session is not None
            and self._task is not None
            and not self._task.done()
            and not (self._read is not None and self._read.ended)
            and not (self._http_session is not None and self._http_session.lost)
        )

    async def connect(self) -> None:
        """Start the server (or reconnect), complete the MCP handshake and list the server's tools, all
        within `connect_timeout_s`; raises `MCPConnectError`."""
        async with self._lock:
            if self.alive:
                return
            await self._shutdown()
            ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._stop = asyncio.Event()
            self._task = asyncio.create_task(self._hold(ready, self._stop), name=f"mcp:{self.spec.label}")
            self._handshaken = False
            self._ended_why = ""
            try:
                init, tools = await asyncio.wait_for(asyncio.shield(ready), self.spec.connect_timeout_s)
            except TimeoutError:
                # The holder is stuck in the handshake, not in `stop.wait()`: asking it to stop would
                # only wait out `_SHUTDOWN_S`. Cancel it now; `ready` first, so that the holder does
                # not put an exception on it that no one will read (asyncio would print it at exit).
                ready.cancel()
                await self._shutdown(cancel=True)
                what = "list its tools" if self._handshaken else "answer the handshake"
                proxy = self._proxy()
                raise MCPConnectError(
                    f"MCP server {self.spec.label!r} did not {what} within "
                    f"{self.spec.connect_timeout_s:g} s{_through(proxy)}{self._stderr_tail()}",
                    url=self.spec.url,
                    proxy=proxy,
                ) from None
            except Exception as exc:
                await self._shutdown()
                proxy = self._proxy()
                raise MCPConnectError(
                    f"MCP server {self.spec.label!r} could not be started{_through(proxy)}: "
                    f"{_describe(exc)}{self._stderr_tail()}",
                    url=self.spec.url,
                    proxy=proxy,
                ) from None
            except asyncio.CancelledError:
                # Our caller gave up: the same as a timeout, but without waiting for the holder
                # (it winds the transport down on its own once cancelled).
                ready.cancel()
                self._abandon()
                raise
            self.starts += 1
            if not self.spec.name:
                self.server_name = init.server_info.name or self.spec.label
            if self.starts > 1:
                _log_changes(self.server_name, self._tools, tools)
            self._tools = tools
            self._listed.update(tool.name for tool in tools)

    async def _hold(self, ready: asyncio.Future[Any], stop: asyncio.Event) -> None:
        from mcp import ClientSession

        try:
            async with contextlib.AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(self._transport())
                self._read = _WatchedReadStream(read)
                session = await stack.enter_async_context(ClientSession(self._read, write))
                init = await session.initialize()
                self._handshaken = True
                tools = await _list_all(session)
                self._session = session
                ready.set_result((init, tools))
                await stop.wait()
        except BaseException as exc:  # includes anyio's exception groups; reported through `ready`
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else MCPError(repr(exc)))
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._session = None

    @contextlib.asynccontextmanager
    async def _transport(self) -> AsyncIterator[tuple[Any, Any]]:
        if self.spec.url is not None:
            import httpx2
            from mcp.client.streamable_http import streamable_http_client
            from mcp.shared._httpx_utils import MCP_DEFAULT_SSE_READ_TIMEOUT, MCP_DEFAULT_TIMEOUT

            from qwq_agent.http_env import client_options

            # Our own client to send headers and to see the HTTP status of every answer; it keeps the
            # SDK's default timeouts (`create_mcp_http_client`'s), and takes proxies as all ours do.
            timeout = httpx2.Timeout(MCP_DEFAULT_TIMEOUT, read=MCP_DEFAULT_SSE_READ_TIMEOUT)
            async with httpx2.AsyncClient(
                timeout=timeout, headers=self.spec.headers, **client_options(self.spec.url, http=httpx2)
            ) as client:
                self._http_session = session = _HTTPSession()
                client.event_hooks["response"].append(session.on_response)
                async with streamable_http_client(self.spec.url, http_client=client) as streams:
                    yield streams
            return
        assert self.spec.command is not None and self._stderr is not None
        async with stdio_transport(
            self.spec.command, self.spec.env, self._stderr, on_protocol_error=self._protocol_error
        ) as streams:
            yield streams

    async def list_tools(self) -> list[Any]:
        """All the server's tools (every page), as the SDK's `Tool` models, as the session listed them
        when it started (`connect`)."""
        await self.connect()
        return list(self._tools)

    async def call(self, name: str, arguments: dict[str, Any]) -> Any:
        """Call a tool; returns the SDK's `CallToolResult`.

        An HTTP server that no longer knows our session (it answers 404: restarted, or it expired the
        session) gets the call again, once, on a new session. Raises `MCPServerDied` when the
        connection ends during the call (the next call reconnects), `MCPConnectError` when it cannot
        be re-established, `MCPToolGone` (the tool is not called) when the server, restarted, no longer
        lists a tool it listed before, and the SDK's `MCPError` for a protocol error the server sent
        (e.g. an unknown tool).
        """
        try:
            return await self._call_once(name, arguments)
        except _SessionLost:
            # The server answered 404 to our session id: it no longer knows the session (it was
            # restarted, or it expired the session) and turned the request away unread, so the tool
            # did not run and the call can go again, once, on a new session (the spec: a client that
            # gets 404 for its session MUST start a new one).
            pass
        try:
            return await self._call_once(name, arguments)
        except _SessionLost:
            raise self._died() from None

    async def _call_once(self, name: str, arguments: dict[str, Any]) -> Any:
        from mcp.shared.exceptions import MCPError as SDKError

        await self.connect()
        session, task, http = self._session, self._task, self._http_session
        if session is None or task is None:  # it died again between connecting and calling
            raise self._died()
        if name in self._listed and not any(tool.name == name for tool in self._tools):
            raise MCPToolGone(
                f"MCP server {self.server_name or self.spec.label!r} no longer offers tool {name!r}: it "
                "was restarted, and its tools are not those it listed before"
            )
        call = asyncio.create_task(session.call_tool(name, arguments))
        try:
            # The holder task ending means the transport is gone; don't wait on a reply that can't come.
            await asyncio.wait({call, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not call.done():
                call.cancel()
                with contextlib.suppress(BaseException):
                    await call
        if not call.done() or call.cancelled():
            raise self._died()
        exc = call.exception()
        if exc is None:
            return call.result()
        if isinstance(exc, SDKError) and http is not None and http.lost:
            self._session = None
            raise _SessionLost
        if (isinstance(exc, SDKError) and "connection closed" in str(exc).lower()) or not self.alive:
            raise self._died() from None
        raise exc

    def _died(self) -> MCPServerDied:
        self._session = None  # the next call reconnects
        why = f": {self._ended_why}" if self._ended_why else ""
        return MCPServerDied(
            f"the connection to MCP server {self.server_name or self.spec.label!r} ended{why}{self._stderr_tail()}"
        )

    def _protocol_error(self, why: str) -> None:
        """The transport stopped the server for breaking the protocol; `why` says how."""
        self._ended_why = why

    def _proxy(self) -> Proxy | None:
        """The proxy the server's URL is asked through (None for a command, or a proxy that cannot be
        used: the error in hand says why)."""
        if self.spec.url is None:
            return None
        from qwq_agent.http_env import proxy_for
        from qwq_agent.settings import SettingsError

        try:
            return proxy_for(self.spec.url)
        except SettingsError:
            return None

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        try:
            tail = self._stderr.tail().strip()
        except OSError:
            return ""
        return f"; its stderr ends with:\n{tail}" if tail else ""

    async def _shutdown(self, *, cancel: bool = False) -> None:
        """End the holder task: politely (its `stop` event), or at once with `cancel`; bounded."""
        task, self._task = self._task, None
        if task is None:
            return
        if self._stop is not None:
            self._stop.set()
        if cancel:
            task.cancel()
        # A stdio transport bounds its own shutdown (`_stdio.stop()`: EOF, SIGTERM, SIGKILL); these
        # deadlines only guard against a holder that ignores its stop event or a transport that ignores
        # a cancel.
        done, _ = await asyncio.wait({task}, timeout=_SHUTDOWN_S)
        if not done:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=_SHUTDOWN_S)
        if done and not task.cancelled():
            task.exception()  # `_hold` reports through `ready`; this only marks it read
        self._session = None

    def _abandon(self) -> None:
        """Cancel the holder task without waiting for it (our caller is being cancelled)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        self._session = None

    async def aclose(self) -> None:
        """Stop the server (stdio) or end the session (HTTP)."""
        async with self._lock:
            await self._shutdown()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


class _SessionLost(Exception):
    """The HTTP server answered 404 to a request of our session: the session is gone."""


class _HTTPSession:
    """Notes, from the HTTP status of its answers, that the server no longer knows our session.

    A server that restarted between two calls took its sessions with it and answers the old
    `Mcp-Session-Id` with 404; nothing else ends the client's side (no stream closes, no task ends).
    Only a POST (a JSON-RPC message: the requests our calls wait on) counts: the SDK's optional GET
    stream for the server's own messages gets 404 from many a live server that routes only POST /mcp
    (a web framework's answer to a method it was not given), and the SDK goes on without that stream.
    """

    def __init__(self) -> None:
        self.lost = False

    async def on_response(self, response: Any) -> None:
        request = response.request
        if response.status_code == 404 and request.method == "POST" and _MCP_SESSION_ID in request.headers:
            self.lost = True


class _WatchedReadStream:
    """The transport's read stream (the SDK's `ReadStream` protocol), noting when it ends.

    A stdio server that exits while no call is in flight ends it (its stdout closes, or the transport
    sees the process exit); seeing that here lets the next call start it again instead of failing on
    the dead session first.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.ended = False

    @property
    def last_context(self) -> Any:
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> Any:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.ended = True
            raise

    async def aclose(self) -> None:
        self.ended = True
        await self._inner.aclose()

    def __aiter__(self) -> _WatchedReadStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._inner.__anext__()
        except StopAsyncIteration:
            self.ended = True
            raise

    async def __aenter__(self) -> _WatchedReadStream:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        self.ended = True
        return await self._inner.__aexit__(*exc)


async def _list_all(session: Any) -> list[Any]:
    """Every page of a session's tool list."""
    from mcp.types import PaginatedRequestParams

    tools: list[Any] = []
    cursor: str | None = None
    while True:
        page = await session.list_tools(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            return tools


def _log_changes(server: str, before: list[Any], after: list[Any]) -> None:
    """Warn when a restarted server lists other tools than before (the run's tools were made from the
    first list: one gone fails its calls with `MCPToolGone`, a new one cannot be called)."""
    old = {tool.name: (tool.input_schema, tool.output_schema) for tool in before}
    new = {tool.name: (tool.input_schema, tool.output_schema) for tool in after}
    if old == new:
        return
    gone = sorted(old.keys() - new.keys())
    added = sorted(new.keys() - old.keys())
    changed = sorted(name for name in old.keys() & new.keys() if old[name] != new[name])
    log.warning(
        "MCP server %r lists other tools since its restart: gone %s, new %s, schema changed %s",
        server,
        gone,
        added,
        changed,
    )


def _through(proxy: Proxy | None) -> str:
    return f" through the proxy {proxy}" if proxy is not None else ""


def _describe(exc: BaseException) -> str:
    """The first leaf of an exception group (anyio wraps transport errors), as `Type: message`, any
    URL in it redacted (httpx's status errors quote the request's URL, credentials and all)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return redact_urls_in(f"{type(exc).__name__}: {exc}", max_chars=MAX_ERROR_CHARS)
