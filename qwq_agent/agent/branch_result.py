"""What an exploration of parallel branches gives back: every branch's outcome, and the winner."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from qwq_agent.agent.config import RunResult
from qwq_agent.protocols import Usage

__all__ = ["BranchOutcome", "BranchResult"]


class BranchOutcome(BaseModel):
    """One branch: how its run ended, what the selection made of it, and where it is traced."""

    index: int
    seed: int
    status: str
    answer: str | None = None
    error: str | None = None
    # What the selection found (e.g. "tests passed (exit 0)"); `passed` is the verifier's verdict.
    verdict: str | None = None
    passed: bool | None = None
    # The protected paths (the tests, `selection.Verifier`) the branch's patch changes: a `tests:` check
    # ran with them as at the start. Its patch (`result.patch`) still holds those changes.
    protected_changes: list[str] = Field(default_factory=list)
    # The branch's container died after it began and was replaced by an empty one: what its sandbox
    # holds is not its work, so it cannot win under any selector (its run may still have completed).
    lost: bool = False
    trace_path: str | None = None
    first_turn_prompt_tokens: int = 0
    first_turn_cached_tokens: int = 0
    # Seconds to get the branch its sandbox, and of those, to restore the parent's snapshot into it
    # (None: no sandbox, or no snapshot to restore).
    sandbox_s: float | None = None
    restore_s: float | None = None
    # How the restore left the Python interpreter: "fresh", "replayed" (the parent's cells re-run) or
    # "partly_replayed" (re-run, but some that had run fine did not: `replay_failures`, one line each,
    # which the branch's model was also told in its first prompt); `restore_note` says it in words.
    python_state: str | None = None
    replay_failures: list[str] = Field(default_factory=list)
    restore_note: str | None = None
    result: RunResult | None = None


class BranchResult(BaseModel):
    """The outcome of `Agent.branch` / `Agent.explore`.

    `winner` is the index of the selected branch (None when no branch was selected: `reason` says
    why). The winner's sandbox stays open as `sandbox` for the caller until `await result.aclose()`
    (or the end of `async with result:`); every other branch's sandbox is already released. The
    agent branched from has taken the winner's transcript and files already (`adopt_error`: why not).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    winner: int | None
    reason: str
    select: str
    branches: list[BranchOutcome]
    trace_path: str | None = None
    snapshot_id: str | None = None
    # The one request that prefilled the shared prefix before the branches were sent (None: skipped).
    warmup: Usage | None = None
    # Why the parent agent did not take the winner's transcript and files, and what its sandbox holds:
    # its own files again when the hand-over failed midway (it is undone), or, should that undo fail
    # too, neither's (said here). It keeps its own transcript. None: it did, or there was no winner.
    adopt_error: str | None = None
    sandbox: Any = Field(default=None, exclude=True)
    _release: Callable[[], Awaitable[None]] | None = PrivateAttr(default=None)

    @property
    def won(self) -> BranchOutcome | None:
        """The winning branch's outcome, or None."""
        return self.branches[self.winner] if self.winner is not None else None

    @property
    def answer(self) -> str | None:
        won = self.won
        return won.answer if won is not None else None

    @property
    def status(self) -> str:
        """The winner's status, or "no_winner"."""
        won = self.won
        return won.status if won is not None else "no_winner"

    def keep(self, release: Callable[[], Awaitable[None]] | None) -> None:
        """Set how the winner's sandbox is released (called by the exploration)."""
        self._release = release

    async def aclose(self) -> None:
        """Release the winner's sandbox (back to its pool, or closed). Idempotent."""
        release, self._release = self._release, None
        self.sandbox = None
        if release is not None:
            await release()

    async def __aenter__(self) -> BranchResult:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
