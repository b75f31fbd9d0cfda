"""The alert backtest (bench/backtest.py): targeted spikes, the modelled counters, promtool
output parsing, and a shortened backtest of the real rules (8 days of warm-up so that the
seasonal baseline exists, then one evaluated Monday with two spikes).

The full-week figures are in docs/backtest.md. The shortened run evaluates the spike run only
(half the cost): its day is normal traffic apart from the two spikes, so any alert that matches
no spike is a false alarm. It asserts the issue's two requirements on that day: no false spike
alert, each spike alerted within 5 minutes of onset. The exporter polls at the config default
and promtool evaluates every group as often as the rules file's shortest group interval (the
spike group's 15s), so the run is the production timing; the full-week figures, where one of
the ten spikes takes longer, are in docs/backtest.md.
"""

from __future__ import annotations

import itertools
import math
from datetime import datetime
from pathlib import Path

import pytest

from bench import backtest as bt
from bench import rules_replay as rr
from leadflow_exporter.simulator import TrafficModel
from leadflow_exporter.simulator.call import AFFILIATE_CAP, CONNECTED, NO_BUYER
from leadflow_exporter.simulator.scenarios import Schedule, parse_scenario, targeted

EASTERN = bt.EASTERN
T0 = int(datetime(2026, 10, 6, 10, 0, tzinfo=EASTERN).timestamp())  # a Tuesday, 10:00


# -- targeted spike scenarios ----------------------------------------------------------------


def test_targeted_names_round_trip_and_validate() -> None:
    name = targeted("no-buyer-spike", set_id=103, share=0.5)
    assert name == "no-buyer-spike:set=103,share=0.5"
    assert parse_scenario(name) == ("no-buyer-spike", {"set": 103, "share": 0.5})
    assert parse_scenario("steady") == ("steady", {})
    assert targeted("affiliate-cap-spike") == "affiliate-cap-spike"
    for bad in ("no-buyer-spike:set=999", "no-buyer-spike:share=0", "no-buyer-spike:share=1.5",
                "no-buyer-spike:color=red", "steady:set=101", "nope:set=101"):  # fmt: skip
        with pytest.raises(ValueError):
            parse_scenario(bad)
        with pytest.raises(ValueError):
            Schedule([(0, bad)])
    with pytest.raises(ValueError):
        targeted("messy-data", set_id=101)


def _statuses(model: TrafficModel, set_id: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for call in model.calls_between(T0, T0 + 3600):
        if call.set_id == set_id:
            out[call.lead_status] = out.get(call.lead_status, 0) + 1
    return out


def test_targeted_no_buyer_spike_hits_one_set_with_its_share() -> None:
    steady = TrafficModel(seed=4, volume=5)
    spiky = TrafficModel(
        seed=4, volume=5, schedule=[(T0, targeted("no-buyer-spike", set_id=104, share=0.5))]
    )
    for set_id in (101, 102, 103, 105):  # untouched, including the default target 102
        assert _statuses(spiky, set_id) == _statuses(steady, set_id)
    before, after = _statuses(steady, 104), _statuses(spiky, 104)
    moved = after[NO_BUYER] - before[NO_BUYER]
    assert moved == before[CONNECTED] - after[CONNECTED]
    assert abs(moved / before[CONNECTED] - 0.5) < 0.1
    assert sum(after.values()) == sum(before.values())


def test_targeted_affiliate_cap_spike_hits_every_affiliate_of_one_set() -> None:
    steady = TrafficModel(seed=4, volume=5)
    spiky = TrafficModel(
        seed=4, volume=5, schedule=[(T0, targeted("affiliate-cap-spike", set_id=105, share=0.8))]
    )
    for set_id in (101, 102, 103, 104):  # ClickSpring Media's sets 101 and 103 untouched
        assert _statuses(spiky, set_id) == _statuses(steady, set_id)
    before, after = _statuses(steady, 105), _statuses(spiky, 105)
    total = sum(before.values())
    share = (after[AFFILIATE_CAP] - before[AFFILIATE_CAP]) / (total - before[AFFILIATE_CAP])
    assert abs(share - 0.8) < 0.1
    affiliates = {c.affiliate for c in spiky.calls_between(T0, T0 + 3600)
                  if c.set_id == 105 and c.lead_status == AFFILIATE_CAP}  # fmt: skip
    assert len(affiliates) == 2


# -- the modelled exporter counters -------------------------------------------------------------


def test_counters_step_once_a_minute_and_count_every_finished_call() -> None:
    model = TrafficModel(seed=2, volume=3, traffic_start=T0)
    end = T0 + 2 * 3600
    samples, calls = bt.counter_samples(model, T0, end, scrape_interval=15, poll_offset=10)
    finished = [c for c in model.calls_between(T0, end) if c.end <= end]
    assert calls == len(finished) > 100
    n = len(range(T0, end + 1, 15))
    assert all(len(v) == n for v in samples.values())
    assert len(samples) == 5 * 4
    for values in samples.values():
        assert values[0] == 0
        assert all(b >= a for a, b in itertools.pairwise(values))
        # a value can change only at the first scrape after a poll (:10 -> the :15 scrape)
        for i in range(1, n):
            if values[i] != values[i - 1]:
                assert (T0 + 15 * i) % 60 == 15
    # The last scrape has seen every call that finished by the last poll before it.
    last_poll = end - (end - T0 - 10) % 60
    by_key: dict[tuple[str, str], int] = {}
    for c in finished:
        if c.end <= last_poll:
            key = (c.set_name, bt.STATUS_KEYS[c.lead_status])
            by_key[key] = by_key.get(key, 0) + 1
    assert {k: v[-1] for k, v in samples.items() if v[-1]} == by_key


# -- promtool evaluation and parsing --------------------------------------------------------------

TOY_RULES = """
groups:
  - name: leadflow-exporter.rules
    rules: []
  - name: leadflow-exporter.alerts
    rules:
      - alert: LeadFlowNoBuyerSpike
        expr: sum by (set_name) (leadflow_calls_total{lead_status="no_buyer"}) > 5
        for: 2m
        labels: {severity: critical}
        annotations: {summary: 'set {{ $labels.set_name }}: {{ $value }}'}
"""


def test_promtool_alerts_are_parsed_into_episodes(tmp_path: Path) -> None:
    rules = tmp_path / "toy.rules.yaml"
    rules.write_text(TOY_RULES)
    minutes = 20
    zero = [0] * (minutes + 1)
    # "A" above 5 from minute 3 to 9 and again from 14; "B" from minute 6 only for one minute.
    # (The toy rule sums the instance away, hence the empty instance in the keys.)
    a = [0, 0, 0, 9, 9, 9, 9, 9, 9, 9, 0, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9]
    b = [0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    samples = {("A", "no_buyer"): a, ("B", "no_buyer"): b, ("A", "connected"): zero}
    text = bt.unit_test_file(rules, samples, 60, range(0, (minutes + 1) * 60, 60))
    firing = bt.run_promtool(text, tmp_path)
    # for: 2m -> firing from the third true evaluation on
    assert firing == {("LeadFlowNoBuyerSpike", "", "A"): [5 * 60, 6 * 60, 7 * 60, 8 * 60, 9 * 60,
                                                       16 * 60, 17 * 60, 18 * 60, 19 * 60,
                                                       20 * 60]}  # fmt: skip
    found = bt.episodes(firing, 1000)
    assert [(e.set_name, e.start - 1000, e.end - 1000) for e in found] == [
        ("A", 300, 540),
        ("A", 960, 1200),
    ]


def test_series_values_are_compressed_losslessly() -> None:
    assert bt.compress([0, 0, 0, 0, 3, 3, 5, 7, 7]) == "0x3 3x1 5 7x1"
    assert bt.compress([4]) == "4"


def test_two_instances_are_evaluated_apart(tmp_path: Path) -> None:
    rules = tmp_path / "toy.rules.yaml"
    rules.write_text(TOY_RULES.replace("sum by (set_name)", "sum by (instance, set_name)"))
    quiet = {("A", "no_buyer"): [0] * 6}
    loud = {("A", "no_buyer"): [9] * 6}
    text = bt.unit_test_file(rules, {"q:1": quiet, "l:1": loud}, 60, range(0, 360, 60))
    firing = bt.run_promtool(text, tmp_path)
    assert firing == {("LeadFlowNoBuyerSpike", "l:1", "A"): [2 * 60, 3 * 60, 4 * 60, 5 * 60]}


def test_evaluation_follows_the_rules_files_groups() -> None:
    # promtool runs every group at one interval: the shortest the rules file asks for, so
    # the spike group is evaluated as often as Prometheus would evaluate it.
    groups = bt.rule_groups(bt.RULES)
    assert [name for name, _ in groups] == [
        "leadflow-exporter.rules",
        "leadflow-exporter.spikes",
        "leadflow-exporter.alerts",
    ]
    assert dict(groups)["leadflow-exporter.spikes"] == 15
    assert bt.shortest_interval(bt.RULES) == 15
    text = bt.unit_test_file(
        bt.RULES, {("A", "no_buyer"): [0] * 9}, 15, range(0, 120, 15), eval_interval=15
    )
    assert "evaluation_interval: 15s\n" in text
    assert "  - leadflow-exporter.rules\n  - leadflow-exporter.spikes\n" in text
    # spike alerts at every evaluation, the slower alerts once a minute
    assert text.count("alertname: LeadFlowNoBuyerSpike,") == 8
    assert text.count("alertname: LeadFlowNoCalls,") == 2


def test_counters_follow_the_poll_interval() -> None:
    model = TrafficModel(seed=3, volume=2)
    end = T0 + 600
    every_minute, calls = bt.counter_samples(model, T0, end, 15, 10, poll_interval=60)
    every_half, calls_half = bt.counter_samples(model, T0, end, 15, 10, poll_interval=30)
    assert calls == calls_half > 0
    for key, values in every_half.items():
        # a 30s poll never shows a call later than a 60s poll, and at the polls they share
        # (every other one) both show the same count
        assert all(h >= m for h, m in zip(values, every_minute[key], strict=True))
        changes = {i for i in range(1, len(values)) if values[i] != values[i - 1]}
        assert all((i * 15 - 10) % 30 < 15 for i in changes)


def test_backtest_needs_a_warm_up_day_and_a_known_run() -> None:
    with pytest.raises(ValueError, match="warm-up"):
        bt.backtest(days=1, spikes=[], warmup_days=0)
    with pytest.raises(ValueError, match="runs"):
        bt.backtest(days=1, spikes=[], runs=("weekly",))


def test_promtool_errors_are_not_taken_for_alerts(tmp_path: Path) -> None:
    rules = tmp_path / "broken.rules.yaml"
    rules.write_text("groups:\n  - name: x\n    rules:\n      - alert: A\n        expr: sum(\n")
    text = bt.unit_test_file(rules, {("A", "no_buyer"): [0, 1]}, 60, range(0, 120, 60))
    with pytest.raises(RuntimeError, match="promtool failed"):
        bt.run_promtool(text, tmp_path)


# -- a shortened backtest of the real rules ------------------------------------------------------

SHORT_SPIKES = [bt.DEFAULT_SPIKES[0], bt.DEFAULT_SPIKES[1]]


@pytest.fixture(scope="module")
def short_result() -> bt.Result:
    return bt.backtest(days=1, spikes=SHORT_SPIKES, warmup_days=8, runs=("spikes",))


def test_short_backtest_detects_every_spike(short_result: bt.Result) -> None:
    assert short_result.rules == str(bt.RULES)
    assert short_result.warmup_days == 8
    assert short_result.calls_spikes > 25_000
    assert short_result.calls_normal == 0 and short_result.normal_episodes == []
    assert [s["set_id"] for s in short_result.spikes] == [102, 101]
    for spike in short_result.spikes:
        assert spike["detected"], spike
        # The alert cannot fire before the spike's calls have finished, been polled and scraped.
        assert 60 < spike["delay_seconds"] < 30 * 60, spike
    matched = [e for e in short_result.spike_episodes if e.spike is not None]
    assert {(e.alert, e.set_name) for e in matched} == {
        ("LeadFlowNoBuyerSpike", "Medicare"),
        ("LeadFlowAffiliateCapSpike", "Auto Insurance"),
    }
    precision = short_result.precision
    assert precision is not None and 0 < precision <= 1
    assert math.isclose(
        precision,
        len(matched)
        / sum(e.alert != "LeadFlowNoCalls"
              for e in [*short_result.normal_episodes, *short_result.spike_episodes]),
    )  # fmt: skip


def test_short_backtest_normal_traffic_fires_no_spike_alert(short_result: bt.Result) -> None:
    # the spike run's day outside the two spikes is normal traffic: no alert there
    unmatched = [e for e in short_result.spike_episodes if e.spike is None]
    assert unmatched == []
    assert short_result.false_alarms == []
    assert short_result.precision == 1


def test_short_backtest_detects_within_five_minutes(short_result: bt.Result) -> None:
    assert all(s["delay_seconds"] <= 5 * 60 for s in short_result.spikes), short_result.spikes


# -- the quick replay of the spike rules (bench/rules_replay.py) ----------------------------------


def test_replay_finds_the_episodes_promtool_finds(short_result: bt.Result) -> None:
    """The replay over the shortened backtest's counters: the same spike-alert episodes, to
    the evaluation, as promtool running the rules file."""
    week_start = int(bt.DEFAULT_START.timestamp())
    begin = week_start - 8 * bt.DAY
    (model,) = bt.run_models(SHORT_SPIKES, 5, 10.0, bt.DEFAULT_START, 8, ("spikes",)).values()
    samples, _ = bt.counter_samples(
        model, begin, week_start + bt.DAY, rr.SCRAPE, 10, short_result.poll_interval
    )
    replayed = rr.replay(samples, begin, week_start)
    expected = [e for e in short_result.spike_episodes if e.alert != "LeadFlowNoCalls"]
    assert expected, "the shortened backtest found no spike alert to compare with"
    assert [(e.alert, e.set_name, e.start, e.end) for e in replayed] == [
        (e.alert, e.set_name, e.start, e.end) for e in expected
    ]


def test_replay_settings_are_the_rules_files() -> None:
    text = bt.RULES.read_text()
    s = rr.Settings()
    for alert in rr.STATUS_OF_ALERT:
        rule = text[text.index(f"- alert: {alert}") :]
        rule = rule[: rule.index("annotations:")]
        assert f"zscore{s.window // 60}m > {s.z:g}" in rule
        assert f"leadflow_calls:increase{s.window // 60}m >= {s.min_calls}" in rule
        assert f"keep_firing_for: {s.keep_firing // 60}m" in rule
        assert "for: 0m" in rule
    assert text.count(f"ratio_baseline + {s.margin:.2f}") == 2
    assert (
        text.count(f"ratio{s.baseline_window // 60}m[{s.baseline_range // 3600}h] offset 6d23h30m")
        == 2
    )
    assert (
        text.count(
            f"* (1 - set_name:leadflow_calls_no_buyer:ratio_baseline) + {s.variance_extra:g}"
        )
        == 1
    )


def test_sliding_max_ignores_absent_samples() -> None:
    assert rr._sliding_max([None, 3.0, 1.0, None, 2.0, None, None, None], 3) == [
        None, 3.0, 3.0, 3.0, 2.0, 2.0, 2.0, None,
    ]  # fmt: skip
