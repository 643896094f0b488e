"""The record of Python cells run in a sandbox, so a snapshot can rebuild its interpreter by replay."""

from __future__ import annotations

from dataclasses import dataclass

from qwq_agent.sandbox.protocol import PythonResult
from qwq_agent.sandbox.snapshot import RecordedCell

MAX_CELLS = 2000
MAX_CODE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class LogState:
    """What a `CellLog` held at one moment (`CellLog.as_of`): its cells then, and their interpreter."""

    generation: int
    interpreter: str | None
    cells: list[RecordedCell] | None


class CellLog:
    """Cells in the order they ran since the interpreter last started fresh: exactly those whose effects
    the interpreter running now holds.

    Each result names the interpreter that holds what its cell did (`PythonResult.interpreter`); a cell
    run in another one than the cells before it starts the log over, and one that cost its interpreter
    is not kept. Past `MAX_CELLS` cells or `MAX_CODE_BYTES` of code the log stops (`overflowed`): a
    replay of part of a history would be a lie, so such a snapshot reports its interpreter as fresh
    instead.

    A cell the host cancelled is kept too, as one that did not run to its end (`completed=False`, as a
    cell that timed out): the sandbox interrupts it and keeps the interpreter, so what it did before
    the interrupt stays there, but the host drops its reply. A replay skips it like a timed-out cell
    and says so (`RestoreResult.skipped_cells`); should the cancel have cost the interpreter, the next
    result or snapshot says so and the log starts over.
    """

    def __init__(self) -> None:
        self.cells: list[RecordedCell] = []
        self.code_bytes = 0
        self.overflowed = False
        self.interpreter: str | None = None  # the one the cells ran in, once a result named it
        self.generation = 0  # counts the changes: a snapshot's reply may come after newer ones

    def record(self, code: str, result: PythonResult, timeout: float | None = None) -> None:
        """Note a cell that ran (under the in-sandbox limit `timeout`); a result saying the interpreter's
        state was lost starts the log over, and one whose cell went with its interpreter is not kept."""
        self.generation += 1
        if result.state_lost:
            self.reset()
            if result.interpreter is None:
                return  # the cell cost its interpreter: nothing it did is in the one running now
        if result.interpreter is not None and result.interpreter != self.interpreter:
            if self.interpreter is not None:
                self.reset()  # the cells so far ran in an interpreter that is gone
            # (None: no result has named one since the log started; cells cancelled meanwhile ran in
            # this one, or a loss, which the result would have said, started the log over.)
            self.interpreter = result.interpreter
        self._append(
            code, ok=result.ok, completed=not (result.timed_out or result.cancelled), timeout=timeout
        )

    def record_cancelled(self, code: str, timeout: float | None = None) -> None:
        """Note a cell whose call the host cancelled (its reply is never read): it may have begun, and
        then what it did up to the interrupt stays in the interpreter; it never ran to its end."""
        self.generation += 1
        self._append(code, ok=False, completed=False, timeout=timeout)

    def _append(self, code: str, *, ok: bool, completed: bool, timeout: float | None) -> None:
        if self.overflowed:
            return
        self.code_bytes += len(code.encode("utf-8", "surrogatepass"))
        if len(self.cells) >= MAX_CELLS or self.code_bytes > MAX_CODE_BYTES:
            self.cells, self.overflowed = [], True
            return
        self.cells.append(RecordedCell(code=code, ok=ok and completed, completed=completed, timeout=timeout))

    def running(self, interpreter: str | None) -> None:
        """The sandbox says `interpreter` is the one running now (None: none, or a dead one): the cells
        recorded in another are gone with it (a cancelled cell, whose reply the host drops, may have
        cost it, as may a thread that killed it between cells)."""
        if self.interpreter is not None and interpreter != self.interpreter:
            self.reset()

    def reset(self) -> None:
        """The interpreter starts fresh: forget every cell."""
        self.generation += 1
        self.cells, self.code_bytes, self.overflowed = [], 0, False
        self.interpreter = None

    def as_of(self) -> LogState:
        """The log now, for a snapshot about to be asked for (`for_snapshot`)."""
        return LogState(self.generation, self.interpreter, self.recorded())

    def for_snapshot(self, asked: LogState, interpreter: str | None) -> list[RecordedCell] | None:
        """The cells of a snapshot asked for when the log was `asked`, whose reply says `interpreter`
        runs (None: none, or a dead one): the cells then, or none when they ran in another interpreter.

        The reply comes back after the archive is checked, and a reset and cells may have been recorded
        meanwhile: the log is brought in line with the reply only when nothing changed it since. A stale
        id would otherwise wipe the record of an interpreter started after it.
        """
        if self.generation == asked.generation:
            self.running(interpreter)
        if asked.interpreter is not None and interpreter != asked.interpreter:
            return []
        return asked.cells

    def recorded(self) -> list[RecordedCell] | None:
        """A copy of the cells, or None when the log overflowed."""
        return None if self.overflowed else list(self.cells)
