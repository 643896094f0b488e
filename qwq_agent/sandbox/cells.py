"""The record of Python cells run in a sandbox, so a snapshot can rebuild its interpreter by replay."""

from __future__ import annotations

from qwq_agent.sandbox.protocol import PythonResult
from qwq_agent.sandbox.snapshot import RecordedCell

MAX_CELLS = 2000
MAX_CODE_BYTES = 8 * 1024 * 1024


class CellLog:
    """Cells in the order they ran since the interpreter last started fresh: exactly those whose effects
    the interpreter running now holds.

    Each result names the interpreter that holds what its cell did (`PythonResult.interpreter`); a cell
    run in another one than the cells before it starts the log over, and one that cost its interpreter
    is not kept. Past `MAX_CELLS` cells or `MAX_CODE_BYTES` of code the log stops (`overflowed`): a
    replay of part of a history would be a lie, so such a snapshot reports its interpreter as fresh
    instead.
    """

    def __init__(self) -> None:
        self.cells: list[RecordedCell] = []
        self.code_bytes = 0
        self.overflowed = False
        self.interpreter: str | None = None  # the one the cells ran in, once a result named it

    def record(self, code: str, result: PythonResult, timeout: float | None = None) -> None:
        """Note a cell that ran (under the in-sandbox limit `timeout`); a result saying the interpreter's
        state was lost starts the log over, and one whose cell went with its interpreter is not kept."""
        if result.state_lost:
            self.reset()
            if result.interpreter is None:
                return  # the cell cost its interpreter: nothing it did is in the one running now
        if result.interpreter is not None and result.interpreter != self.interpreter:
            self.reset()  # the cells so far ran in an interpreter that is gone
            self.interpreter = result.interpreter
        if self.overflowed:
            return
        self.code_bytes += len(code.encode("utf-8", "surrogatepass"))
        if len(self.cells) >= MAX_CELLS or self.code_bytes > MAX_CODE_BYTES:
            self.cells, self.overflowed = [], True
            return
        completed = not (result.timed_out or result.cancelled)
        self.cells.append(
            RecordedCell(code=code, ok=result.ok and completed, completed=completed, timeout=timeout)
        )

    def running(self, interpreter: str | None) -> None:
        """The sandbox says `interpreter` is the one running now (None: none, or a dead one): the cells
        recorded in another are gone with it (a cancelled cell, whose reply the host drops, may have
        cost it, as may a thread that killed it between cells)."""
        if self.interpreter is not None and interpreter != self.interpreter:
            self.reset()

    def reset(self) -> None:
        """The interpreter starts fresh: forget every cell."""
        self.cells, self.code_bytes, self.overflowed = [], 0, False
        self.interpreter = None

    def recorded(self) -> list[RecordedCell] | None:
        """A copy of the cells, or None when the log overflowed."""
        return None if self.overflowed else list(self.cells)
