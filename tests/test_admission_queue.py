"""KV admission's queue: a session that gives up while queued leaves it, and those behind go in."""

from __future__ import annotations

import asyncio

import pytest

from qwq_agent.agent.admission import KVAdmission


async def queued(admission: KVAdmission, count: int) -> None:
    """Yield once, so the tasks just created take their first step (and enqueue); check they did."""
    await asyncio.sleep(0)  # tasks scheduled before us run first: a yield, not a wait for time
    assert admission.waiting == count


async def test_a_cancelled_waiter_at_the_head_lets_a_fitting_session_in_at_once():
    admission = KVAdmission(100, headroom=1.0)
    await admission.acquire(90)  # a long run holds 90 of 100
    big = asyncio.create_task(admission.acquire(50))  # does not fit: queued
    await queued(admission, 1)
    big.cancel()  # that session gives up (Ctrl-C, its own deadline)
    with pytest.raises(asyncio.CancelledError):
        await big
    assert admission.waiting == 0
    async with asyncio.timeout(1):
        assert await admission.acquire(5) == 5  # 90 + 5 <= 100: no wait behind the dead entry
    assert admission.in_use == 95


async def test_cancelling_the_head_wakes_those_behind_it_that_now_fit():
    admission = KVAdmission(100, headroom=1.0)
    await admission.acquire(60)
    head = asyncio.create_task(admission.acquire(50))  # does not fit
    behind = asyncio.create_task(admission.acquire(30))  # would fit, but FIFO keeps it behind the head
    await queued(admission, 2)
    assert not behind.done()
    head.cancel()
    async with asyncio.timeout(1):
        assert await behind == 30
    assert admission.in_use == 90 and admission.waiting == 0


async def test_a_cancelled_waiter_in_the_middle_leaves_the_queue_and_order_holds():
    admission = KVAdmission(100, headroom=1.0)
    await admission.acquire(100)
    first = asyncio.create_task(admission.acquire(40))
    await queued(admission, 1)
    middle = asyncio.create_task(admission.acquire(40))
    await queued(admission, 2)
    last = asyncio.create_task(admission.acquire(40))
    await queued(admission, 3)
    middle.cancel()
    with pytest.raises(asyncio.CancelledError):
        await middle
    assert admission.waiting == 2
    admission.release(100)
    async with asyncio.timeout(1):
        assert await first == 40 and await last == 40
    assert admission.in_use == 80 and admission.waiting == 0


@pytest.mark.parametrize(
    ("capacity", "headroom"),
    [(1, 0.9), (100_000, 0.0), (1000, 5.0), (1000, -0.5), (1000, float("nan"))],
)
def test_a_capacity_that_could_never_admit_or_overcommits_is_refused(capacity, headroom):
    # 1 token at 0.9 rounds to 0 usable: every reservation (at least 1 token) would wait forever;
    # a headroom above 1 would admit more than the KV cache holds
    with pytest.raises(ValueError):
        KVAdmission(capacity, headroom=headroom)


def test_workers_with_no_usable_capacity_are_refused():
    with pytest.raises(ValueError):
        KVAdmission.for_workers([1], headroom=0.5)
