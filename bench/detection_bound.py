"""How fast could any detector catch the backtest's spikes? An oracle bound.

For each spike of ``bench.backtest`` this runs the detector that is best placed to catch it: a
CUSUM (Page's cumulative sum of log-likelihood ratios, the fastest detector of a change for a
given false-alarm rate) over that one set's calls, told the set's **true** probability of the
status at every moment (the traffic model's, including buyers' hours) and the spike's exact
size. It reads what the exporter's counters read: each call at the poll after it finished.
Its limit is the lowest that stays silent over the normal week on that set, chosen after
seeing that week, and it is checked after every single call. No real detector has any of
these advantages (the rules must learn the usual share from history, cover every set and both
statuses with one limit, and see the counters through scrapes and evaluations), so a spike
the oracle cannot catch within a delay cannot be caught within it by any rule over the same
counts without a false alarm in that week.

    python -m bench.detection_bound               # seed 5, the backtest's week and spikes
    python -m bench.detection_bound --seed 6 --seed 7
    python -m bench.detection_bound --no-poll     # calls seen the second they finish

The rules' own delays are in docs/backtest.md; this gives the floor beside them.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from bench.backtest import DAY, DEFAULT_SPIKES, DEFAULT_START, MINUTE, Spike
from leadflow_exporter.config import PollConfig
from leadflow_exporter.simulator import TrafficModel
from leadflow_exporter.simulator.call import AFFILIATE_CAP, NO_BUYER, Call
from leadflow_exporter.simulator.catalog import SETS_BY_ID, LeadFlowSet
from leadflow_exporter.simulator.model import AFTER_HOURS_EXTRA_NO_BUYER
from leadflow_exporter.simulator.scenarios import Schedule, targeted

STATUS_OF_KIND = {"no-buyer-spike": NO_BUYER, "affiliate-cap-spike": AFFILIATE_CAP}


def usual_probability(lf_set: LeadFlowSet, status: str, start: int) -> float:
    """The traffic model's probability that a call of ``lf_set`` started at ``start`` ends with
    ``status`` on normal traffic."""
    if status == AFFILIATE_CAP:
        return lf_set.affiliate_cap_share
    extra = 0.0 if TrafficModel.buyers_open(start) else AFTER_HOURS_EXTRA_NO_BUYER
    return lf_set.no_buyer_share + extra


def spike_probability(lf_set: LeadFlowSet, spike: Spike, start: int) -> float:
    """The same during ``spike`` (scenarios.apply_scenario: a No Buyer spike refuses that share
    of the would-be connected calls, an Affiliate Cap spike that share of all others)."""
    status = STATUS_OF_KIND[spike.kind]
    usual = usual_probability(lf_set, status, start)
    if status == AFFILIATE_CAP:
        return usual + spike.share * (1.0 - usual)
    connected = 1.0 - lf_set.hang_up_share - lf_set.affiliate_cap_share - usual
    return usual + spike.share * max(0.0, connected)


def seen_at(end: int, first_poll: int, poll_interval: int) -> int:
    """When the exporter's counters first include a call that ended at ``end``: the first poll
    at or after it (``poll_interval`` 0: at once)."""
    if poll_interval <= 0:
        return end
    return first_poll + max(0, -(-(end - first_poll) // poll_interval)) * poll_interval


def cusum(
    calls: Iterable[tuple[int, bool, float, float]],
) -> Iterator[tuple[int, float]]:
    """Page's CUSUM over ``(seen, hit, p0, p1)`` in the order seen: ``(seen, statistic)`` after
    each call. A hit adds ``log(p1/p0)``, any other call ``log((1-p1)/(1-p0))``; the statistic
    never goes below 0."""
    total = 0.0
    for seen, hit, p0, p1 in calls:
        step = math.log(p1 / p0) if hit else math.log((1.0 - p1) / (1.0 - p0))
        total = max(0.0, total + step)
        yield seen, total


@dataclass(frozen=True)
class Bound:
    spike: Spike
    limit: float  # the lowest limit silent over the normal week
    delay: int | None  # seconds from onset to the first call that takes the statistic over it
    extra_per_minute: float  # expected extra calls of the status a minute at onset
    usual_per_minute: float  # expected calls of the status a minute at onset, normal traffic


def _rows(
    calls: Iterable[Call], spike: Spike, end: int, first_poll: int, poll_interval: int
) -> list[tuple[int, bool, float, float]]:
    """The oracle's input for ``spike``: its set's calls finished by ``end``, in the order the
    exporter's counters see them."""
    lf_set = SETS_BY_ID[spike.set_id]
    status = STATUS_OF_KIND[spike.kind]
    rows = [
        (
            seen_at(call.end, first_poll, poll_interval),
            call.lead_status == status,
            usual_probability(lf_set, status, call.start),
            spike_probability(lf_set, spike, call.start),
        )
        for call in calls
        if call.set_id == spike.set_id and call.end <= end
    ]
    rows.sort(key=lambda row: row[0])
    return rows


def bounds(
    spikes: Iterable[Spike] = DEFAULT_SPIKES,
    seed: int = 5,
    volume: float = 10.0,
    days: int = 7,
    poll_interval: int | None = None,
    poll_offset: int = 10,
) -> list[Bound]:
    """The oracle CUSUM's delay for each of ``spikes``, each alone in the backtest's week."""
    if poll_interval is None:
        poll_interval = int(PollConfig().interval_seconds)
    begin = int(DEFAULT_START.timestamp())
    end = begin + days * DAY
    first_poll = begin + poll_offset
    normal = TrafficModel(seed=seed, volume=volume, traffic_start=begin - DAY)
    week = list(normal.calls_between(begin, end))
    out = []
    for spike in spikes:
        onset = spike.onset(DEFAULT_START)
        over = onset + spike.minutes * MINUTE
        if not begin <= onset < end:
            raise ValueError(f"spike at day {spike.day} {spike.at} is outside the {days} days")
        spiked = TrafficModel(
            seed=seed,
            volume=volume,
            traffic_start=begin - DAY,
            schedule=Schedule(
                [
                    (onset, targeted(spike.kind, set_id=spike.set_id, share=spike.share)),
                    (over, "steady"),
                ]
            ),
        )
        # A scenario applies to the calls that start while it is in force; the others are
        # the normal week's.
        spike_week = [c for c in week if not onset <= c.start < over]
        spike_week += spiked.calls_between(onset, over)
        limit = max(
            (s for _, s in cusum(_rows(week, spike, end, first_poll, poll_interval))),
            default=0.0,
        )
        delay = None
        for seen, statistic in cusum(_rows(spike_week, spike, end, first_poll, poll_interval)):
            if seen >= onset and statistic > limit:
                delay = seen - onset
                break
        lf_set = SETS_BY_ID[spike.set_id]
        status = STATUS_OF_KIND[spike.kind]
        calls_per_minute = normal.arrival_rate(onset) * lf_set.weight
        p0 = usual_probability(lf_set, status, onset)
        p1 = spike_probability(lf_set, spike, onset)
        out.append(Bound(spike, limit, delay, calls_per_minute * (p1 - p0), calls_per_minute * p0))
    return out


def _minutes(delay: int | None) -> str:
    return "not caught" if delay is None else f"{delay / 60:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, action="append",
                        help="a week of traffic (repeatable; default 5)")  # fmt: skip
    parser.add_argument("--seeds", type=int, metavar="N",
                        help="N weeks from seed 5 on, summarised per spike")  # fmt: skip
    parser.add_argument("--volume", type=float, default=10.0)
    parser.add_argument("--no-poll", action="store_true",
                        help="see each call as it finishes, not at the next poll")  # fmt: skip
    args = parser.parse_args(argv)
    poll_interval = 0 if args.no_poll else None
    seen = "calls seen as they finish" if args.no_poll else "calls seen at the next poll"
    seeds = list(range(5, 5 + args.seeds)) if args.seeds else (args.seed or [5])
    per_spike: list[list[int | None]] = [[] for _ in DEFAULT_SPIKES]
    for seed in seeds:
        found = bounds(seed=seed, volume=args.volume, poll_interval=poll_interval)
        for i, b in enumerate(found):
            per_spike[i].append(b.delay)
        if args.seeds:
            continue
        print(f"seed {seed}, volume {args.volume:g}, {seen}")
        print("  # | kind                | set            | share | onset    | usual/min "
              "| extra/min | limit | oracle delay (min)")  # fmt: skip
        for number, b in enumerate(found, 1):
            s = b.spike
            print(
                f" {number:2d} | {s.kind:19s} | {s.set_name:14s} | {s.share:5.2f} | "
                f"d{s.day} {s.at} | {b.usual_per_minute:9.2f} | {b.extra_per_minute:9.2f} | "
                f"{b.limit:5.1f} | {_minutes(b.delay)}"
            )
    if args.seeds:
        print(f"seeds {seeds[0]}-{seeds[-1]} ({len(seeds)} weeks), volume {args.volume:g}, {seen}")
        print("  # | kind                | set            | share | median (min) | max (min) "
              "| weeks within 5 min")  # fmt: skip
        for number, (spike, delays) in enumerate(zip(DEFAULT_SPIKES, per_spike, strict=True), 1):
            known = sorted(d if d is not None else 10**9 for d in delays)
            median = known[len(known) // 2]
            within = sum(d is not None and d <= 5 * MINUTE for d in delays)
            print(
                f" {number:2d} | {spike.kind:19s} | {spike.set_name:14s} | {spike.share:5.2f} | "
                f"{_minutes(None if median == 10**9 else median):>12s} | "
                f"{_minutes(None if known[-1] == 10**9 else known[-1]):>9s} | "
                f"{within}/{len(delays)}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
