"""The record of Python cells run in a sandbox, so a snapshot can rebuild its interpreter by replay."""

from __future__ import annotations

from qwq_agent.sandbox.protocol import PythonResult
from qwq_agent.sandbox.snapshot import RecordedCell

MAX_CELLS = 2000
MAX_CODE_BYTES = 8 * 1024 * 1024


class CellLog:
    """Cells in the order they ran since the interpreter last started fresh.

    Past `MAX_CELLS` cells or `MAX_CODE_BYTES` of code the log stops (`overflowed`): a replay of part of
    a history would be a lie, so such a snapshot reports its interpreter as fresh instead.
    """

    def __init__(self) -> None:
        self.cells: list[RecordedCell] = []
        self.code_bytes = 0
        self.overflowed = False

    def record(self, code: str, result: PythonResult, timeout: float | None = None) -> None:
        """Note a cell that ran (under the in-sandbox limit `timeout`); a result saying the interpreter's
        state was lost starts the log over."""
        if result.state_lost:
            self.reset()
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

    def reset(self) -> None:
        """The interpreter starts fresh: forget every cell."""
        self.cells, self.code_bytes, self.overflowed = [], 0, False

    def recorded(self) -> list[RecordedCell] | None:
        """A copy of the cells, or None when the log overflowed."""
        return None if self.overflowed else list(self.cells)
