"""The oracle detector of bench/detection_bound.py: its statistic, its model of the traffic, and
a one-day run."""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime

import pytest

from bench import detection_bound as db
from bench.backtest import EASTERN, Spike
from leadflow_exporter.simulator import TrafficModel
from leadflow_exporter.simulator.call import AFFILIATE_CAP, NO_BUYER
from leadflow_exporter.simulator.catalog import SETS, SETS_BY_ID
from leadflow_exporter.simulator.scenarios import Schedule, targeted


def test_cusum_adds_log_likelihood_ratios_and_never_goes_below_zero() -> None:
    p0, p1 = 0.1, 0.5
    hit, miss = math.log(p1 / p0), math.log((1 - p1) / (1 - p0))
    rows = [(1, False, p0, p1), (2, True, p0, p1), (3, True, p0, p1), (4, False, p0, p1)]
    out = list(db.cusum(rows))
    assert [t for t, _ in out] == [1, 2, 3, 4]
    assert out[0][1] == 0.0  # a miss from 0 stays at 0
    assert out[1][1] == pytest.approx(hit)
    assert out[2][1] == pytest.approx(2 * hit)
    assert out[3][1] == pytest.approx(2 * hit + miss)


def test_calls_are_seen_at_the_first_poll_at_or_after_they_end() -> None:
    assert db.seen_at(100, first_poll=10, poll_interval=30) == 100
    assert db.seen_at(101, first_poll=10, poll_interval=30) == 130
    assert db.seen_at(5, first_poll=10, poll_interval=30) == 10
    assert db.seen_at(101, first_poll=10, poll_interval=0) == 101


@pytest.mark.parametrize(
    ("kind", "status", "share"),
    [("no-buyer-spike", NO_BUYER, 0.6), ("affiliate-cap-spike", AFFILIATE_CAP, 0.5)],
)
def test_probabilities_are_the_simulators(kind: str, status: str, share: float) -> None:
    """The oracle's p0 and p1 are what the traffic model produces: a day of the busiest set's
    calls, normal and spiked all day, has each share within 4 standard deviations."""
    start = int(datetime(2026, 10, 6, tzinfo=EASTERN).timestamp())  # a Tuesday
    lf_set = SETS[0]
    spike = Spike(kind, lf_set.set_id, share, day=1, at="00:00")
    runs = {
        "normal": (TrafficModel(seed=3, volume=20), db.usual_probability),
        "spiked": (
            TrafficModel(
                seed=3,
                volume=20,
                schedule=Schedule([(0, targeted(kind, set_id=lf_set.set_id, share=share))]),
            ),
            lambda s, st, t: db.spike_probability(s, spike, t),
        ),
    }
    for model, probability in runs.values():
        observed: Counter[bool] = Counter()
        expected = variance = 0.0
        for call in model.calls_between(start, start + 86_400):
            if call.set_id != lf_set.set_id:
                continue
            p = probability(lf_set, status, call.start)
            observed[call.lead_status == status] += 1
            expected += p
            variance += p * (1 - p)
        assert observed[True] + observed[False] > 5_000
        assert abs(observed[True] - expected) < 4 * math.sqrt(variance)


def test_a_large_spike_is_caught_within_minutes_and_the_limit_is_silent_without_it() -> None:
    spike = Spike("no-buyer-spike", 102, 0.85, day=0, at="10:20")
    (found,) = db.bounds([spike], seed=5, days=1)
    assert found.limit > 0
    assert found.delay is not None and 0 < found.delay <= 3 * 60
    medicare = SETS_BY_ID[102]
    assert found.extra_per_minute > 5 * found.usual_per_minute > 0
    assert found.usual_per_minute == pytest.approx(
        TrafficModel(volume=10).arrival_rate(spike.onset(db.DEFAULT_START))
        * medicare.weight
        * medicare.no_buyer_share
    )


def test_spikes_outside_the_days_are_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        db.bounds([Spike("no-buyer-spike", 102, 0.85, day=3, at="10:20")], days=1)


def test_main_prints_a_row_per_spike(capsys: pytest.CaptureFixture[str]) -> None:
    assert db.main(["--seed", "5"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.strip()[:2].strip().isdigit()]
    assert len(rows) == len(db.DEFAULT_SPIKES)
