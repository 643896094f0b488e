"""How one of several parallel branches is selected: a verifier command, a majority, or a function.

A `Selector` looks at the branches' outcomes (and their still-open sandboxes) and names a winner, or
none with a reason. Only branches that completed can win: one that crashed, timed out or ran out of
budget is a losing branch with its error. Nor can a branch whose sandbox was lost (`BranchOutcome.lost`:
its container died and an empty one replaced it), whatever the selector: its sandbox holds none of its
work, and handing it over would empty the parent's.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import shlex
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

from qwq_agent.agent.branch_result import BranchOutcome
from qwq_agent.agent.patch_text import PatchTextError
from qwq_agent.agent.protected import DEFAULT_PROTECTED, PatternError, matcher, split_patch

__all__ = [
    "SANDBOX_LOST",
    "Checkout",
    "FirstCompleted",
    "FunctionSelector",
    "Majority",
    "Selection",
    "SelectionError",
    "Selector",
    "Verifier",
    "checked",
    "parse_select",
]

VERIFY_TIMEOUT_S = 300.0
SANDBOX_LOST = "the branch's sandbox was lost (its container died; a replacement holds none of its files)"
NO_PATCH = "its patch could not be computed (a `patch_failed` warning in its trace says why)"
# How a verdict was reached: on what the branch delivers, or (no patch) in what it left.
ON_PATCH = "on the branch's patch in a fresh sandbox"
IN_PLACE = "in the branch's own sandbox (no patch: its processes stopped, a fresh HOME)"

Checkout = Callable[[str], AbstractAsyncContextManager[Any]]
"""`checkout(patch)`: a fresh sandbox holding the user's folder (else the exploration's start state's
tracked files) with `patch` applied."""


class SelectionError(ValueError):
    """A `select` that cannot be used (an unknown name, an empty verifier command)."""


class Selection(BaseModel):
    winner: int | None
    reason: str


@runtime_checkable
class Selector(Protocol):
    """Names the winning branch; may fill each outcome's `verdict` / `passed`."""

    label: str

    async def select(self, outcomes: Sequence[BranchOutcome], sandboxes: dict[int, Any]) -> Selection: ...


def _completed(outcomes: Sequence[BranchOutcome]) -> list[BranchOutcome]:
    """The branches that may win: completed, with their sandbox (not lost)."""
    return [o for o in outcomes if o.status == "completed" and not o.lost]


def _none_completed(outcomes: Sequence[BranchOutcome]) -> Selection:
    lost = sum(o.status == "completed" and o.lost for o in outcomes)
    if lost:
        return Selection(
            winner=None,
            reason=f"none of the {len(outcomes)} branches completed with its sandbox: {lost} that "
            f"completed lost it ({SANDBOX_LOST})",
        )
    return Selection(winner=None, reason=f"none of the {len(outcomes)} branches completed")


class FirstCompleted:
    """The first branch (by index) that completed."""

    label = "first"

    async def select(self, outcomes: Sequence[BranchOutcome], sandboxes: dict[int, Any]) -> Selection:
        done = _completed(outcomes)
        if not done:
            return _none_completed(outcomes)
        return Selection(winner=done[0].index, reason="the first branch that completed")


class Verifier:
    """The first completed branch whose work passes `command` (exit status 0: e.g. the tests pass).

    What is checked is what the branch delivers. With a `checkout` (the exploration started from a
    sandbox with a baseline, so each branch's run ends with its patch), the command runs in a fresh
    sandbox holding what the user's checkout will once the branch's patch is applied, under a fresh,
    empty HOME without user site-packages: nothing outside the patch counts (what the branch or the
    parent's earlier runs left in a HOME or in ignored files, a process left running); a branch
    whose patch could not be computed fails ("could not be run"). Only without a baseline at all (no
    `checkout`) is a branch checked in its own sandbox, after its processes are stopped (the
    interpreter too, with none started in its place) and under a fresh, empty HOME without user
    site-packages; the verdict says which way.

    Nor do the patch's changes to `protect`ed paths count (globs, `qwq_agent.agent.protected`; default
    `DEFAULT_PROTECTED`, the usual places of tests; empty: none): they are left out of the patch the
    check applies, so those files are as at the start (the user's folder) when `command` runs, and a
    branch cannot pass by editing the tests. Its verdict (and the selection's reason, for a winner)
    names them; `BranchOutcome.protected_changes` lists them. The branch's own patch is not changed.
    What the tests reach through the start state's links (`links`) under protected paths is protected
    too (`protected.through_links`).
    Checked in place (no baseline), nothing is put back: there is no start state to take them from.
    """

    def __init__(
        self,
        command: str,
        *,
        timeout_s: float = VERIFY_TIMEOUT_S,
        kind: str = "tests",
        protect: Sequence[str] | None = None,
    ) -> None:
        if not command.strip():
            raise SelectionError(f"'{kind}:' needs a command, e.g. '{kind}:python3 -m pytest -q'")
        self.command = command
        self.timeout_s = timeout_s
        self.label = f"{kind}:{command}"
        self.protect = tuple(DEFAULT_PROTECTED if protect is None else protect)
        try:
            self._protected = matcher(self.protect)
        except PatternError as exc:
            raise SelectionError(f"protected path pattern {exc}") from None

    def _not_run(self, outcome: BranchOutcome, why: str) -> str:
        outcome.passed, outcome.verdict = False, f"`{self.command}` could not be run: {why}"
        return why

    async def _verify(
        self,
        outcome: BranchOutcome,
        sandbox: Any,
        *,
        checkout: Checkout | None,
        timeout_s: float | None,
        links: Mapping[str, str] | None = None,
    ) -> str | None:
        """Fill `outcome.passed` / `verdict` of a completed branch; why the command could not be run
        for it, or None when it ran (a branch it could not run in has not failed it: the selection's
        reason must not say so).

        Never in a replacement of the branch's container: one that died (`outcome.lost`, or found dead now)
        holds none of the branch's files, and a test command may well pass there (no test found).
        """
        if outcome.lost:
            return self._not_run(outcome, SANDBOX_LOST)
        patch = _patch_of(outcome, checkout)
        if checkout is not None and patch is None:
            # Never in place instead: a branch could dodge the check of what it delivers by breaking its
            # own patch (its baseline's git directory is in its HOME), and it delivers nothing anyway.
            return self._not_run(outcome, NO_PATCH)
        if patch is None and sandbox is None:
            return self._not_run(outcome, "no sandbox")
        if patch is not None and self.protect:
            try:
                # Up to patch.MAX_PATCH_BYTES of the branch's text: not on the event loop.
                patch, outcome.protected_changes = await asyncio.to_thread(
                    split_patch, patch, self._protected, links
                )
            except PatchTextError as exc:
                return self._not_run(outcome, f"its patch could not be read: {exc}")
        limit = asyncio.timeout(timeout_s)
        try:
            async with limit:
                if checkout is not None and patch is not None:
                    async with checkout(patch) as fresh:
                        res = await _run(fresh, self.command, self.timeout_s)
                else:
                    res = await _run(sandbox, self.command, self.timeout_s, in_place=True)
        except Exception as exc:  # a dead sandbox is a failed verification, not a failed exploration
            if isinstance(exc, TimeoutError) and limit.expired():
                return self._not_run(outcome, f"the check ran past the branch's {timeout_s:g} s limit")
            dead = patch is None and not getattr(sandbox, "alive", True)
            return self._not_run(
                outcome, (f"{SANDBOX_LOST}: " if dead else "") + f"{type(exc).__name__}: {exc}"
            )
        if getattr(res, "sandbox_replaced", False) or getattr(res, "state_lost", False):
            return self._not_run(outcome, SANDBOX_LOST)  # a sandbox without `no_replacement` replaced it
        code = getattr(res, "exit_code", None)
        outcome.passed = code == 0
        where = (ON_PATCH if patch is not None else IN_PLACE) + _without(outcome)
        if getattr(res, "timed_out", False):
            outcome.verdict = f"`{self.command}` timed out after {self.timeout_s:g} s {where}"
        else:
            tail = _last_line(getattr(res, "stdout", "") or getattr(res, "stderr", ""))
            outcome.verdict = f"`{self.command}` exited {code} {where}" + (f": {tail}" if tail else "")
        return None

    async def select(
        self,
        outcomes: Sequence[BranchOutcome],
        sandboxes: dict[int, Any],
        *,
        checkout: Checkout | None = None,
        timeout_s: float | None = None,
        links: Mapping[str, str] | None = None,
    ) -> Selection:
        """The first completed branch whose check passes (see the class doc).

        `checkout(patch)`: a fresh sandbox holding the user's folder (else the start state's tracked
        files) with `patch` applied (None: check in place). A branch whose sandbox died after it began
        (`BranchOutcome.lost`) fails its check. `links`: the start state's links, path to target
        (`patch.Baseline.links`): a protected link's target is protected too.
        `timeout_s` bounds each branch's whole check (a fresh sandbox's start included).
        """
        # Lost ones too: their check "could not be run", which the reason must say.
        done = [o for o in outcomes if o.status == "completed"]
        for o in outcomes:
            if o.status != "completed":
                o.passed, o.verdict = False, f"not verified: the branch ended {o.status}"
        not_run = await asyncio.gather(
            *(
                self._verify(
                    o,
                    sandboxes.get(o.index),
                    checkout=checkout,
                    timeout_s=timeout_s,
                    links=links,
                )
                for o in done
            )
        )
        passed = [o for o in done if o.passed]
        if passed:
            won = passed[0]
            where = (
                "on its patch in a fresh sandbox"
                if _patch_of(won, checkout) is not None
                else "in its sandbox"
            )
            return Selection(winner=won.index, reason=f"`{self.command}` exited 0 {where}{_without(won)}")
        if not done:
            return _none_completed(outcomes)
        whys = [why for why in not_run if why is not None]
        if len(whys) == len(done):
            return Selection(
                winner=None,
                reason=f"`{self.command}` could not be run in any branch that completed: {whys[0]}",
            )
        if whys:
            return Selection(
                winner=None,
                reason=f"`{self.command}` failed in every branch where it ran, and could not be run in "
                f"{len(whys)} of the {len(done)} that completed",
            )
        return Selection(winner=None, reason=f"`{self.command}` failed in every branch that completed")


def _without(outcome: BranchOutcome) -> str:
    """What a verdict adds when the check left out the branch's changes to protected paths."""
    changed = outcome.protected_changes
    if not changed:
        return ""
    more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
    return f", without its changes to protected files ({', '.join(changed[:3])}{more}: as at the start)"


def _patch_of(outcome: BranchOutcome, checkout: Checkout | None) -> str | None:
    """The patch a branch delivers when there is a checkout to check it in; else None."""
    if checkout is None or outcome.result is None:
        return None
    return outcome.result.patch


async def _run(sandbox: Any, command: str, timeout_s: float, *, in_place: bool = False) -> Any:
    """`command` in `sandbox` under a fresh HOME, never in a replacement of it. `in_place`: in a
    branch's own sandbox, so first stop what the branch left running."""
    replacing = getattr(sandbox, "no_replacement", None)
    with replacing() if replacing is not None else contextlib.nullcontext():
        if not in_place:
            return await sandbox.shell(_with_clean_home(command), timeout=timeout_s)
        reset = getattr(sandbox, "reset_python", None)
        if reset is not None:  # shell calls' processes died with them; the interpreter's live on
            # Stopped, not restarted: a fresh interpreter would run what the branch left in its HOME
            # (a `usercustomize.py`) while the command runs. The next python call starts one.
            await reset(restart=False)
        return await sandbox.shell(_with_clean_home(command), timeout=timeout_s)


def _with_clean_home(command: str) -> str:
    """`command` under a fresh, empty HOME (removed afterwards) without user site-packages: nothing the
    branch left in its HOME (a `usercustomize.py`, a `.pth` file, shell or git settings) takes part."""
    return (
        "h=$(mktemp -d) || exit 125\n"
        f'HOME="$h" PYTHONNOUSERSITE=1 bash -c {shlex.quote(command)}\n'
        'rc=$?\nrm -rf "$h"\nexit $rc\n'
    )


class Majority:
    """The most common final answer (compared without case, surrounding space or a final period)."""

    label = "majority"

    async def select(self, outcomes: Sequence[BranchOutcome], sandboxes: dict[int, Any]) -> Selection:
        done = [o for o in _completed(outcomes) if o.answer]
        if not done:
            return (
                _none_completed(outcomes)
                if not _completed(outcomes)
                else Selection(winner=None, reason="no completed branch gave an answer")
            )
        keys = {o.index: normalize_answer(o.answer or "") for o in done}
        counts = Counter(keys.values())
        for o in done:
            o.verdict = f"{counts[keys[o.index]]} of {len(done)} completed branches gave this answer"
        best = max(counts.values())
        # Ties go to the answer given first (lowest branch index).
        winner = next(o for o in done if counts[keys[o.index]] == best)
        return Selection(
            winner=winner.index, reason=f"majority: {best} of {len(done)} completed branches agree"
        )


class FunctionSelector:
    """A user's function of the outcomes (sync or async) returning the winner's index, or None."""

    def __init__(self, fn: Callable[[list[BranchOutcome]], Any]) -> None:
        self.fn = fn
        self.label = f"function:{getattr(fn, '__name__', type(fn).__name__)}"

    async def select(self, outcomes: Sequence[BranchOutcome], sandboxes: dict[int, Any]) -> Selection:
        try:
            choice = self.fn(list(outcomes))
            if inspect.isawaitable(choice):
                choice = await choice
        except Exception as exc:  # the user's bug is reported in the result; the branches are kept
            return Selection(winner=None, reason=f"the select function raised {type(exc).__name__}: {exc}")
        if choice is None:
            return Selection(winner=None, reason="the select function chose no branch")
        # bool is an int to Python, but `True` is a yes, not "branch 1".
        if isinstance(choice, bool) or not isinstance(choice, int) or not 0 <= choice < len(outcomes):
            return Selection(
                winner=None, reason=f"the select function returned {choice!r}, not a branch index"
            )
        return Selection(winner=choice, reason=f"chosen by {self.label}")


def checked(selection: Selection, outcomes: Sequence[BranchOutcome]) -> Selection:
    """`selection` if its winner may win, else no winner with the reason.

    Applied to every selector's choice (a user's function or `Selector` included): a winner that is
    no branch index, a branch that did not complete (e.g. a scorer's NaN for a failed branch) or one
    whose sandbox was lost would hand the caller (and the parent) a dead branch's state as the result of
    the exploration.
    """
    winner = selection.winner
    if winner is None:
        return selection
    if isinstance(winner, bool) or not 0 <= winner < len(outcomes):
        return Selection(winner=None, reason=f"{selection.reason}, but {winner!r} is not a branch index")
    status = outcomes[winner].status
    if status != "completed":
        return Selection(
            winner=None,
            reason=f"{selection.reason}, but branch {winner} ended {status}: only a completed branch can win",
        )
    if outcomes[winner].lost:
        return Selection(
            winner=None,
            reason=f"{selection.reason}, but branch {winner} cannot win: {SANDBOX_LOST}",
        )
    return selection


def normalize_answer(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip()).rstrip(".").casefold()


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:120] if lines else ""


def parse_select(
    select: str | Selector | Callable[..., Any], *, protect: Sequence[str] | None = None
) -> Selector:
    """`"tests:CMD"` / `"verify:CMD"`, `"majority"`, `"first"`, a `Selector`, or a function of the outcomes.

    `protect`: the paths a `tests:` / `verify:` check takes from the start state (`Verifier`; None: the
    default ones); given with any other `select`, a `SelectionError`.
    """
    if isinstance(select, str):
        name, sep, rest = select.partition(":")
        if sep and name in ("tests", "verify"):
            return Verifier(rest, kind=name, protect=protect)
    if protect is not None:
        raise SelectionError("protected paths apply to 'tests:COMMAND' or 'verify:COMMAND' only")
    if isinstance(select, str):
        if select == "majority":
            return Majority()
        if select == "first":
            return FirstCompleted()
        raise SelectionError(
            f"unknown select {select!r}: use 'tests:COMMAND' (e.g. 'tests:python3 -m pytest -q'), "
            "'majority' or 'first'"
        )
    if isinstance(select, Selector):
        return select
    if callable(select):
        return FunctionSelector(select)
    raise SelectionError(f"select must be a string, a Selector or a function, not {type(select).__name__}")
