"""RateBudget: a sliding 60 s request log shared by every query, driven by a ManualClock."""

from __future__ import annotations

import asyncio
import random

import pytest

from leadflow_exporter.clock import ManualClock
from leadflow_exporter.ratebudget import WINDOW_SECONDS, RateBudget


def max_in_any_window(times: list[float], window: float = WINDOW_SECONDS) -> int:
    """The most acquisitions inside any half-open window [t, t + window)."""
    ordered = sorted(times)
    return max((sum(1 for u in ordered if t <= u < t + window) for t in ordered), default=0)


async def acquire_all(budget: RateBudget, clock: ManualClock, n: int) -> list[float]:
    """Start n acquisitions at once; return when each got through, in start order."""
    times: list[float | None] = [None] * n

    async def one(i: int) -> None:
        await budget.acquire()
        times[i] = clock.monotonic()

    await asyncio.gather(*(one(i) for i in range(n)))
    assert all(t is not None for t in times)
    return [t for t in times if t is not None]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def test_window_helper_counts_half_open_windows() -> None:
    assert max_in_any_window([0, 0, 59.9, 60]) == 3
    assert max_in_any_window([0, 60, 120]) == 1
    assert max_in_any_window([]) == 0


async def test_burst_never_exceeds_per_minute_in_any_window(clock: ManualClock) -> None:
    budget = RateBudget(5, clock)
    times = await acquire_all(budget, clock, 23)
    assert max_in_any_window(times) == 5
    # Work-conserving: each group goes as soon as the oldest request leaves the window.
    assert times == [0.0] * 5 + [60.0] * 5 + [120.0] * 5 + [180.0] * 5 + [240.0] * 3
    assert clock.slept == [60.0, 60.0, 60.0, 60.0]
    assert budget.waited_seconds == pytest.approx(240.0)


async def test_under_the_limit_nothing_waits(clock: ManualClock) -> None:
    budget = RateBudget(10, clock)
    times = await acquire_all(budget, clock, 10)
    assert times == [0.0] * 10
    assert clock.slept == []
    assert budget.waited_seconds == 0.0


async def test_window_slides_instead_of_resetting(clock: ManualClock) -> None:
    # A fixed per-minute bucket would let the 4th request through at t=50 or hold the
    # 5th until t=120; the sliding log releases each slot 60 s after it was used.
    budget = RateBudget(3, clock)
    await budget.acquire()  # t=0
    clock.advance(30)
    await budget.acquire()  # t=30
    await budget.acquire()  # t=30
    clock.advance(20)  # t=50
    await budget.acquire()
    assert clock.monotonic() == 60.0
    await budget.acquire()
    assert clock.monotonic() == 90.0
    assert clock.slept == [10.0, 30.0]


async def test_random_arrivals_respect_the_window_and_go_as_early_as_allowed(
    clock: ManualClock,
) -> None:
    rng = random.Random(20240611)
    per_minute = 7
    budget = RateBudget(per_minute, clock)
    times: list[float] = []
    for _ in range(300):
        clock.advance(rng.choice([0.0, 0.0, 0.5, 3.0, 8.0, 25.0]))
        arrival = clock.monotonic()
        await budget.acquire()
        got = clock.monotonic()
        earliest = arrival
        if len(times) >= per_minute:
            earliest = max(arrival, times[-per_minute] + WINDOW_SECONDS)
        assert got == pytest.approx(earliest)
        times.append(got)
    assert max_in_any_window(times) <= per_minute
    assert max_in_any_window(times) == per_minute  # the test did push the limit


async def test_waiters_are_served_in_arrival_order(clock: ManualClock) -> None:
    budget = RateBudget(1, clock)
    order: list[int] = []
    times: list[float] = []

    async def one(i: int) -> None:
        await budget.acquire()
        order.append(i)
        times.append(clock.monotonic())

    tasks = []
    for i in range(6):
        tasks.append(asyncio.create_task(one(i)))
        await asyncio.sleep(0)  # each task reaches acquire() before the next starts
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4, 5]
    assert times == [0.0, 60.0, 120.0, 180.0, 240.0, 300.0]


async def test_pause_holds_every_waiter(clock: ManualClock) -> None:
    budget = RateBudget(100, clock)
    budget.pause(10)
    times = await acquire_all(budget, clock, 4)
    assert times == [10.0] * 4
    assert clock.slept == [10.0]
    # The pause is over: the next request goes at once.
    await budget.acquire()
    assert clock.monotonic() == 10.0
    assert budget.used() == 5


async def test_shorter_pause_does_not_cut_a_longer_one(clock: ManualClock) -> None:
    budget = RateBudget(100, clock)
    budget.pause(10)
    budget.pause(3)
    await budget.acquire()
    assert clock.monotonic() == 10.0
    budget.pause(5)
    clock.advance(2)
    budget.pause(1)
    await budget.acquire()
    assert clock.monotonic() == 15.0


async def test_pause_arriving_while_waiting_for_the_window_extends_the_wait() -> None:
    class PausingClock(ManualClock):
        """Simulates a 429 with Retry-After: 100 arriving during the first wait."""

        budget: RateBudget | None = None

        async def sleep(self, seconds: float) -> None:
            await super().sleep(seconds)
            if self.budget is not None and len(self.slept) == 1:
                self.budget.pause(100)

    clock = PausingClock()
    budget = RateBudget(1, clock)
    clock.budget = budget
    await budget.acquire()  # t=0
    await budget.acquire()  # waits for the window (60), then for the pause (until 160)
    assert clock.monotonic() == 160.0
    assert clock.slept == [60.0, 100.0]


async def test_pause_and_full_window_wait_for_the_later_of_the_two(clock: ManualClock) -> None:
    budget = RateBudget(2, clock)
    await acquire_all(budget, clock, 2)  # window full until t=60
    budget.pause(20)
    await budget.acquire()
    assert clock.monotonic() == 60.0
    budget.pause(90)  # until t=150, later than the window (t=120)
    await budget.acquire()
    assert clock.monotonic() == 150.0


async def test_used_counts_only_the_last_minute(clock: ManualClock) -> None:
    budget = RateBudget(10, clock)
    assert budget.used() == 0
    await acquire_all(budget, clock, 3)  # t=0
    clock.advance(30)
    await acquire_all(budget, clock, 2)  # t=30
    assert budget.used() == 5
    clock.advance(29.9)  # t=59.9
    assert budget.used() == 5
    clock.advance(0.1)  # t=60: the t=0 requests are a minute old
    assert budget.used() == 2
    clock.advance(29.9)
    assert budget.used() == 2
    clock.advance(0.1)
    assert budget.used() == 0


async def test_one_budget_shared_by_two_queries(clock: ManualClock) -> None:
    budget = RateBudget(4, clock)
    got: list[tuple[str, float]] = []

    async def query(name: str, n: int) -> None:
        for _ in range(n):
            await budget.acquire()
            got.append((name, clock.monotonic()))
            await asyncio.sleep(0)

    await asyncio.gather(query("history", 5), query("sid", 5))
    times = [t for _, t in got]
    assert max_in_any_window(times) == 4
    assert sorted(times) == [0.0] * 4 + [60.0] * 4 + [120.0] * 2
    # Both queries got requests in the first minute: neither starves the other.
    assert {name for name, t in got if t == 0.0} == {"history", "sid"}
