"""API cost: what the exporter asks of the LeadFlow API, beside the least any poller could.

The exporter's own client and poller poll the simulator over HTTP on loopback, on a manual
clock that moves one poll interval per cycle (a busy weekday morning, so no minute is idle).
The poll settings are the config defaults (`PollConfig()`, 30 s cycles) unless a `PollConfig`
is passed. The simulator counts every request by kind (`GET /_sim/stats`) and knows the truth:

- minimum per interval: the pages needed to read each call that finished in it once,
  `max(1, ceil(finished / 250))` (a poller has to ask to learn there was nothing), plus the
  active poll, `max(1, ceil(active / 250))`;
- records read per record counted: records the API served / calls the exporter counted, all
  of them (the live list included) and finished calls only (history and sid queries);
- calls that outlived the overlap: finished calls longer than `overlap_seconds`. The minimum
  reads each of them on the page of the interval it finished in, but no poller can know which
  page that is: a window by start time reaches back to each one's start (pages of other
  calls), or it is asked for by sid (one request each; the API takes one sid per request).

The first cycle (a baseline of the overlap window, not counted) is left out of both sides.
The busiest minute is the most requests sent in any 60 s, the window `requests_per_minute`
applies to: the most in any run of consecutive cycles that fits in a minute.

The counts are checked against the truth too, call by call, when the run stops. A call that
outlived the overlap and finished in the last cycle is not counted yet: it started before the
short window, so it is asked for by sid, and only once it has missed two live-call polls (one
miss can be a call that shifted to an already-read page). So the check at the stop is:

- every countable call that finished more than `SETTLE_INTERVALS` poll intervals before the
  stop is counted, and the ones finished later that are not yet counted ("pending") are
  reported with their age;
- the exporter's counts per set and status equal the truth of exactly the calls it has seen
  finished in the run: nothing counted twice, nothing from outside the run, no wrong status;
- after `SETTLE_INTERVALS` more cycles (traffic still flowing, not part of the cost figures),
  every pending call has been counted.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
from aiohttp.test_utils import TestServer

from leadflow_exporter.client import LeadFlowClient
from leadflow_exporter.clock import ManualClock
from leadflow_exporter.config import ApiConfig, PollConfig, Secret
from leadflow_exporter.health import Health
from leadflow_exporter.ledger import Ledger, MemoryStore
from leadflow_exporter.poller import Poller
from leadflow_exporter.ratebudget import WINDOW_SECONDS, RateBudget
from leadflow_exporter.records import sid_key
from leadflow_exporter.simulator import DEFAULT_CREDENTIALS, HISTORY_PATH, STATE_KEY, create_app
from leadflow_exporter.simulator.truth import countable

# Tuesday 10:00 US Eastern: business hours, every set busy.
BUSY = datetime(2026, 11, 17, 15, 0, tzinfo=UTC).timestamp()
PAGE_SIZE = 250
REQUESTS_PER_MINUTE = ApiConfig().requests_per_minute  # the config default
# A followed call that left the live list is asked for by sid at its second missed live poll:
# it is counted at most this many poll intervals after it finished.
SETTLE_INTERVALS = 2


@dataclass
class CostFigures:
    volume: float
    minutes: float
    requests: dict[str, int]
    minimum: int
    max_per_minute: int
    records_served: int
    counted: int
    # Per set and status, |exporter - truth of the calls it has seen finished|, summed.
    off_by: int
    # Calls that finished in the run and were not counted at the stop, and the oldest one's
    # age then (seconds before the stop); how many of them finished more than the margin
    # before the stop, and how many were still not counted after the settle cycles.
    pending: int
    pending_oldest: float
    pending_late: int
    unsettled: int
    margin_seconds: float
    long_calls: int = 0
    # Of `records_served`, those of history and sid queries (finished calls, not the live list).
    finished_served: int = 0

    @property
    def matches_truth(self) -> bool:
        return not self.off_by and not self.pending_late and not self.unsettled

    @property
    def truth_summary(self) -> str:
        if not self.matches_truth:
            return (
                f"counts off by {self.off_by}, {self.pending_late} uncounted older than "
                f"{self.margin_seconds:.0f} s, {self.unsettled} still uncounted after settle"
            )
        if not self.pending:
            return "counts exact"
        return (
            f"counts exact, {self.pending} pending at the stop "
            f"(<= {self.pending_oldest:.0f} s old, counted in settle)"
        )

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    @property
    def per_minute(self) -> float:
        return self.total / self.minutes

    @property
    def minimum_per_minute(self) -> float:
        return self.minimum / self.minutes

    @property
    def ratio(self) -> float:
        return self.total / self.minimum

    @property
    def read_per_counted(self) -> float:
        return self.records_served / self.counted if self.counted else float("nan")

    @property
    def finished_read_per_counted(self) -> float:
        return self.finished_served / self.counted if self.counted else float("nan")


def _pages(count: int) -> int:
    return max(1, math.ceil(count / PAGE_SIZE))


async def measure(
    volume: float, *, minutes: int, seed: int = 3, poll: PollConfig | None = None
) -> CostFigures:
    """Poll for `minutes` of simulated time (whole cycles) after the baseline cycle."""
    poll = poll or PollConfig()
    cycles = max(1, round(minutes * 60.0 / poll.interval_seconds))
    # Cycle instants that fit in one half-open 60 s window of the request budget.
    per_window = max(1, math.ceil(WINDOW_SECONDS / poll.interval_seconds - 1e-9))
    clock = ManualClock(BUSY)
    app = create_app(
        seed=seed, volume=volume, clock=clock.now, rate_limit_per_minute=0, slow_seconds=0.0
    )
    sim = app[STATE_KEY]
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    health = Health()
    ledger = Ledger(MemoryStore(), health, retention_seconds=poll.overlap_seconds + 14400.0)
    api = ApiConfig(
        base_url=str(server.make_url(HISTORY_PATH)),
        access_key=Secret(DEFAULT_CREDENTIALS.access_key),
        secret_access_key=Secret(DEFAULT_CREDENTIALS.secret_access_key),
        rate_limit_key=Secret(DEFAULT_CREDENTIALS.rate_limit_key),
        requests_per_minute=REQUESTS_PER_MINUTE,
    )
    budget = RateBudget(api.requests_per_minute, clock)
    try:
        async with aiohttp.ClientSession() as session:
            client = LeadFlowClient(api, session, budget, clock, health)
            poller = Poller(
                poll, client, ledger, health, clock, requests_per_minute=api.requests_per_minute
            )

            async def stats() -> dict[str, object]:
                async with session.get(str(server.make_url("/_sim/stats"))) as response:
                    return await response.json()  # type: ignore[no-any-return]

            await poller.run_cycle()  # the baseline cycle
            # What the baseline cycle counted (calls live at its live poll that finished):
            # they finished before the run, so they are left out of the check.
            baseline_calls = dict(ledger.totals.calls)
            start = clock.now()
            before = await stats()
            minimum = 0
            per_cycle: list[int] = []
            previous_total = before["requests_total"]
            for _ in range(cycles):
                cycle_start = clock.now()
                clock.advance(poll.interval_seconds)
                await poller.run_cycle()
                truth = sim.truth(since=cycle_start, until=cycle_start + poll.interval_seconds)
                minimum += _pages(truth["calls_total"]) + _pages(truth["active_total"])
                now_stats = await stats()
                per_cycle.append(now_stats["requests_total"] - previous_total)
                previous_total = now_stats["requests_total"]
            max_per_minute = max(sum(per_cycle[i : i + per_window]) for i in range(len(per_cycle)))
            after = await stats()
            end = clock.now()
            counted = sum(ledger.totals.calls.values()) - sum(baseline_calls.values())
            # Every countable call that finished in the run, once per sid.
            finished: dict[str, tuple[str, str, float, int]] = {}
            for call in sim.model.calls_ending_between(start, end):
                if countable(call):
                    finished.setdefault(
                        call.sid, (call.set_name, call.status_key, call.start, call.end)
                    )
            pending = {
                sid: call
                for sid, call in finished.items()
                if not ledger.is_seen(sid_key(sid), call[2])
            }
            expected = Counter(
                (name, status)
                for sid, (name, status, _, _) in finished.items()
                if sid not in pending
            )
            actual = _per_set_status(ledger) - _per_set_status_of(baseline_calls)
            off_by = sum(abs(actual[k] - expected[k]) for k in actual.keys() | expected.keys())
            margin = SETTLE_INTERVALS * poll.interval_seconds
            pending_late = sum(1 for *_, call_end in pending.values() if end - call_end > margin)
            pending_oldest = max((end - call_end for *_, call_end in pending.values()), default=0)
            long_calls = sum(
                1
                for call in sim.model.calls_ending_between(start, end)
                if call.end - call.start > poll.overlap_seconds
            )
            # Settle cycles, out of the cost figures: every pending call must get counted.
            for _ in range(SETTLE_INTERVALS):
                clock.advance(poll.interval_seconds)
                await poller.run_cycle()
            unsettled = sum(
                1 for sid, call in pending.items() if not ledger.is_seen(sid_key(sid), call[2])
            )
    finally:
        await server.close()
    requests = {
        kind: after["requests"][kind] - before["requests"][kind]  # type: ignore[index]
        for kind in ("history", "active", "sid")
    }
    return CostFigures(
        volume=volume,
        minutes=(end - start) / 60.0,
        requests=requests,
        minimum=minimum,
        max_per_minute=max_per_minute,
        records_served=after["records_served"] - before["records_served"],  # type: ignore[operator]
        counted=counted,
        off_by=off_by,
        pending=len(pending),
        pending_oldest=pending_oldest,
        pending_late=pending_late,
        unsettled=unsettled,
        margin_seconds=margin,
        long_calls=long_calls,
        finished_served=sum(
            after["records_served_by_kind"].get(kind, 0)  # type: ignore[attr-defined]
            - before["records_served_by_kind"].get(kind, 0)  # type: ignore[attr-defined]
            for kind in ("history", "sid")
        ),
    )


def _per_set_status(ledger: Ledger) -> Counter[tuple[str, str]]:
    return _per_set_status_of(ledger.totals.calls)


def _per_set_status_of(calls: dict[tuple[str, ...], int]) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for (set_name, status, *_), count in calls.items():
        out[set_name, status] += count
    return out
