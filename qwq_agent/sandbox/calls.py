"""`SandboxCalls`: requests over a sandbox's supervisor channel, with their time limits; python and shell."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator
from typing import Any, TypeVar

from pydantic import ValidationError

from qwq_agent.deadline import Deadline
from qwq_agent.sandbox.channel import OnEvent
from qwq_agent.sandbox.container import SandboxContainer
from qwq_agent.sandbox.errors import InvalidRequest, SandboxDead, SandboxTimeout
from qwq_agent.sandbox.output_stream import DEFAULT_STREAM_LIMIT, OnOutput, OutputRelay
from qwq_agent.sandbox.protocol import (
    PythonRequest,
    PythonResetRequest,
    PythonResetResult,
    PythonResult,
    Request,
    Result,
    ShellRequest,
    ShellResult,
)

R = TypeVar("R", bound=Result)


# Against a deadline, the layers give up in this order: the supervisor interrupts the code (interrupt
# grace + this slack before the deadline), the host stops waiting for a reply and kills the container
# (half this slack before it), and the tool registry cancels the call (at the deadline itself).
DEADLINE_SLACK_S = 1.0
MIN_TIMEOUT_S = 0.05


@contextlib.contextmanager
def _checked() -> Generator[None, None, None]:
    """Bad arguments become `InvalidRequest` (still naming each field and problem)."""
    try:
        yield
    except ValidationError as exc:
        raise InvalidRequest(str(exc)) from None


class SandboxCalls(SandboxContainer):
    """Calls multiplexed over the channel: each replaces a dead container first (when allowed), and a
    call whose supervisor does not answer in time kills the container."""

    async def _call_raw(
        self,
        request: Request,
        reply_timeout: float | None,
        on_event: OnEvent | None = None,
        blob: bytes | memoryview | None = None,
    ) -> tuple[dict[str, Any], bool]:
        replaced = await self._ensure_alive()
        assert self._channel is not None
        try:
            args = request.model_dump(exclude={"op"})
            if blob is None:
                raw = await self._channel.call(request.op, args, reply_timeout, on_event)
            else:
                raw = await self._channel.call(request.op, args, reply_timeout, on_event, blob=blob)
        except SandboxTimeout as exc:
            # An unresponsive supervisor cannot be trusted with the next call: kill it now.
            await self._discard()
            raise SandboxTimeout(f"sandbox {self.id}: {exc}; the container was killed") from None
        except SandboxDead as exc:
            raise await self._dead(f"sandbox {self.id}: {exc}") from None
        if isinstance(raw, dict) and raw.get("state_lost") is True:
            # Whatever the call, the supervisor restarted the interpreter (the pids limit reclaimed
            # before a shell or any request): the cells recorded so far are not its state any more.
            self.cells.reset()
        return raw, replaced

    async def _call(
        self,
        request: Request,
        result_type: type[R],
        reply_timeout: float | None,
        on_event: OutputRelay | None = None,
    ) -> R:
        raw, replaced = await self._call_raw(request, reply_timeout, on_event)
        result = result_type.model_validate(raw)
        if replaced:
            result.sandbox_replaced = result.state_lost = True
        return result

    def _grace(self, timeout: float, deadline: Deadline | None = None) -> float:
        reply = timeout + self.config.interrupt_grace_s + self.config.reply_grace_s
        if deadline is None:
            return reply
        return max(MIN_TIMEOUT_S, deadline.clamp(reply, reserve=DEADLINE_SLACK_S / 2) or 0.0)

    def clamp_timeout(
        self, timeout: float | None, deadline: Deadline | None, default: float | None = None
    ) -> float:
        """The in-sandbox time limit of a call: `timeout` (or `default`, or the config's python limit),
        shortened so that the interrupt, its grace and the reply all fit before `deadline`."""
        limit = timeout or default or self.config.python_timeout_s
        if deadline is not None:
            limit = deadline.clamp(limit, reserve=self.config.interrupt_grace_s + DEADLINE_SLACK_S) or 0.0
        return max(MIN_TIMEOUT_S, limit)

    def _limit(self, timeout: float | None, deadline: Deadline | None, default: float) -> float:
        """The in-sandbox limit a call runs under: `timeout` (else `default`), clamped to `deadline`."""
        if deadline is not None:
            return self.clamp_timeout(timeout, deadline, default)
        return timeout or default

    # ------------------------------------------------------------------------------------------ operations

    # `timeout` is enforced inside the sandbox (interrupt, then kill), which asyncio.timeout cannot do.

    async def python(
        self,
        code: str,
        *,
        timeout: float | None = None,
        deadline: Deadline | None = None,
        on_output: OnOutput | None = None,
        stream_limit: int = DEFAULT_STREAM_LIMIT,
    ) -> PythonResult:
        """Run a cell in the persistent interpreter (notebook-style: the last expression's repr is `value`).

        With `deadline`, the time limit is shortened so that the result comes back before it. With
        `on_output`, output is passed to it while the cell runs (coalesced, at most `stream_limit`
        bytes); the result holds all of it regardless.
        """
        # The limit it runs under is recorded with it: a replay of the cell gets the same.
        limit = self._limit(timeout, deadline, self.config.python_timeout_s)
        try:
            result = await self._timed_call(
                PythonRequest, PythonResult, {"code": code}, self.config.python_timeout_s,
                limit, deadline, on_output, stream_limit,
            )  # fmt: skip
        except asyncio.CancelledError:
            # The sandbox interrupts the cell and keeps its interpreter, with what the cell did so far.
            self.cells.record_cancelled(code, limit)
            raise
        self.cells.record(code, result, limit)
        return result

    async def reset_python(self, *, timeout: float = 60.0, restart: bool = True) -> PythonResetResult:
        """Stop the Python interpreter with every thread and process it started, and start a fresh one
        (its variables are gone). An interpreter that never ran a cell is left as it is: it runs nothing
        of the user's. A cell running meanwhile is ended at once (its result says the reset stopped it
        and `state_lost`); one that had not begun waits for the reset and runs after it. Shell calls need
        no such stop: what they start dies when they return.

        `restart=False` stops it (whether or not it ran a cell) and starts none: nothing of Python runs
        until the next python call starts a fresh interpreter, as usual, and says that earlier state is
        gone. A fresh interpreter runs what the HOME holds at its start (`usercustomize.py`, `.pth`
        files), so a check that must run none of it stops the interpreter this way.
        """
        result = await self._call(
            PythonResetRequest(restart=restart, timeout=timeout), PythonResetResult, self._grace(timeout)
        )
        self.cells.reset()
        return result

    async def shell(
        self,
        command: str,
        *,
        timeout: float | None = None,
        cwd: str | None = None,
        deadline: Deadline | None = None,
        on_output: OnOutput | None = None,
        stream_limit: int = DEFAULT_STREAM_LIMIT,
    ) -> ShellResult:
        """Run `bash -c command` in its own process group; background jobs are killed when it returns.

        With `deadline`, the time limit is shortened so that the result comes back before it. With
        `on_output`, output is passed to it while the command runs (coalesced, at most `stream_limit`
        bytes); the result holds all of it regardless.
        """
        return await self._timed_call(
            ShellRequest, ShellResult, {"command": command, "cwd": cwd}, self.config.shell_timeout_s,
            timeout, deadline, on_output, stream_limit,
        )  # fmt: skip

    async def _timed_call(
        self,
        request_type: type[PythonRequest] | type[ShellRequest],
        result_type: type[R],
        fields: dict[str, Any],
        default_timeout: float,
        timeout: float | None,
        deadline: Deadline | None,
        on_output: OnOutput | None,
        stream_limit: int,
    ) -> R:
        """A python or shell call: its time limit clamped to `deadline`, its output relayed if asked."""
        with _checked():
            req = request_type(
                **fields,
                timeout=self._limit(timeout, deadline, default_timeout),
                stream_limit=stream_limit if on_output is not None else None,
            )
        relay = OutputRelay(on_output, stream_limit) if on_output is not None else None
        return await self._call(req, result_type, self._grace(req.timeout, deadline), relay)
