"""Approval questions on one terminal: asked one at a time, each answer goes to the question shown,
and a withdrawn question (its wait timed out) reads no further line.

stdin is a real pipe (the test types into it); the console writes to a buffer the test reads.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import time

import pytest
from rich.console import Console

from qwq_agent.agent.approval import ApprovalRequest
from qwq_agent.agent.messages import ToolCall
from qwq_agent.cli.approval_prompt import TerminalApprover

TITLE = "approve tool call"
PROMPT = "[a]llow, [d]eny, [e]dit"


@pytest.fixture
def terminal(monkeypatch):
    """(approver, type, screen, hang_up): write lines to the prompt's stdin, read what it printed,
    close stdin."""
    r, w = os.pipe()
    stdin = os.fdopen(r, "r")
    monkeypatch.setattr(sys, "stdin", stdin)
    out = io.StringIO()
    approver = TerminalApprover(Console(file=out, width=120), lambda call: [])
    closed = []

    def hang_up() -> None:
        if not closed:
            closed.append(True)
            os.close(w)  # EOF: a reader still waiting ends

    try:
        yield approver, (lambda text: os.write(w, text.encode())), out.getvalue, hang_up
    finally:
        hang_up()


def request(run_id: str, call_id: str, command: str) -> ApprovalRequest:
    return ApprovalRequest(
        run_id=run_id, call=ToolCall(id=call_id, name="shell", arguments={"command": command})
    )


async def shown(screen, text: str, count: int = 1, timeout: float = 10) -> str:
    """Wait until the screen shows `text` `count` times (the prompt runs in a thread of its own)."""
    deadline = time.monotonic() + timeout
    while screen().count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} x{count} not shown:\n{screen()}"
        await asyncio.sleep(0.01)  # polling a buffer another thread writes; nothing to wait on
    return screen()


async def test_concurrent_questions_are_asked_one_at_a_time_and_answered_in_order(terminal):
    approver, type_, screen, _ = terminal
    rm = asyncio.create_task(approver(request("x.b0", "c0", "rm -rf /workspace")))
    ls = asyncio.create_task(approver(request("x.b1", "c1", "ls")))
    first = await shown(screen, PROMPT)
    assert first.count(TITLE) == 1, first
    first_is_rm = "rm -rf" in first
    type_("d\nnot that\n")  # for the one panel on screen
    decided = await asyncio.wait_for(rm if first_is_rm else ls, 10)
    assert decided.action == "deny" and decided.reason == "not that"
    second = await shown(screen, PROMPT, count=2)
    # the second panel came only after the first question was answered, naming its run
    after = second.split("reason (the model reads it)", 1)[1]
    assert after.count(TITLE) == 1 and ("run x.b1" if first_is_rm else "run x.b0") in after
    type_("a\n")
    other = await asyncio.wait_for(ls if first_is_rm else rm, 10)
    assert other.action == "allow"


async def test_a_withdrawn_question_does_not_take_the_next_answer(terminal):
    approver, type_, screen, _ = terminal
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await approver(request("r", "c0", "rm -rf /workspace"))
    await shown(screen, "was withdrawn")
    nxt = asyncio.create_task(approver(request("r", "c1", "ls")))
    await shown(screen, PROMPT, count=2)
    type_("d\n\n")
    decided = await asyncio.wait_for(nxt, 10)
    assert decided.action == "deny"  # not swallowed by the reader of the withdrawn question
    assert "ls" in screen().split("was withdrawn", 1)[1]


async def test_enter_takes_the_default_and_end_of_input_defers(terminal):
    approver, type_, screen, hang_up = terminal
    task = asyncio.create_task(approver(request("r", "c0", "ls")))
    await shown(screen, PROMPT)
    type_("\n")
    assert (await asyncio.wait_for(task, 10)).action == "allow"
    hang_up()
    waiting = approver(request("r", "c1", "ls"))
    assert (await asyncio.wait_for(waiting, 10)).action == "defer"  # nobody can answer: the run waits
