"""Whose turn it is with the interpreter: cells, resets, restores and reclaims, one at a time.

A reset ends the cell that holds the interpreter when the reset is asked for (that cell's loop watches
`abort_fd`, and its result says the reset ended it), and goes before every cell that had not got the
interpreter by then: such a cell waits for the reset, then runs in the interpreter the reset left. So a
reset's abort reaches only the cell it was asked during. Before, it was a byte left for whichever cell
ran next: asked while a cell was ending (past the point where it watched for it), it killed the cell
queued behind that one as it started, though that cell had not run when the reset was asked.
"""

import contextlib
import os
import threading
import time

from .framing import RequestError


class Turns:
    """The interpreter's lock, with the order between cells and resets and a reset's abort of a cell."""

    def __init__(self):
        # Held by whoever uses the interpreter: a cell (`take`), a reset (`resetting`), a restore or a
        # reclaim (both take it directly: a reset waits for them, and ends neither).
        self.lock = threading.Lock()
        self._state = threading.Condition()  # guards the two below and what the abort pipe holds
        self._resets = 0  # resets asked for and not done: a cell whose turn comes lets them go first
        self._cell = False  # a cell holds the lock: a reset asked now ends it
        self._abort_r, self._abort_w = os.pipe()
        for fd in (self._abort_r, self._abort_w):
            os.set_blocking(fd, False)

    @property
    def abort_fd(self):
        """Readable once a reset asks the cell that holds the interpreter to end (for its select loop)."""
        return self._abort_r

    def take(self, ends):
        """The interpreter for a cell by `ends` (monotonic), after every reset asked before; False if it
        was not free by then."""
        while True:
            if not self.lock.acquire(timeout=max(0.0, ends - time.monotonic())):
                return False
            with self._state:
                if not self._resets:
                    self._cell = True
                    return True
            self.lock.release()  # to the reset, which is waiting for it
            with self._state:
                if not self._state.wait_for(lambda: not self._resets, max(0.0, ends - time.monotonic())):
                    return False

    def end(self):
        """The cell is done with the interpreter; an abort it did not see (asked as it ended) goes too."""
        with self._state:
            self._cell = False
            self._clear()
        self.lock.release()

    @contextlib.contextmanager
    def resetting(self, deadline=None):
        """Held while a reset replaces the interpreter: the cell holding it now is asked to end at once,
        cells that come meanwhile wait. RequestError("ToolError") when the interpreter is not free by
        `deadline` (monotonic; None: no limit)."""
        with self._state:
            self._resets += 1
            if self._cell:
                try:
                    os.write(self._abort_w, b"x")
                except BlockingIOError:
                    pass  # one is pending already
        try:
            wait = -1 if deadline is None else max(0.0, deadline - time.monotonic())
            if not self.lock.acquire(timeout=wait):
                raise RequestError(
                    "ToolError", "Python could not be reset: the cell it was running did not end in time"
                )
            try:
                yield
            finally:
                self.lock.release()
        finally:
            with self._state:
                self._resets -= 1
                if not self._resets:
                    self._clear()  # a reset that gave up does not end the cell later
                self._state.notify_all()

    def _clear(self):
        try:
            while os.read(self._abort_r, 4096):
                pass
        except BlockingIOError:
            pass
