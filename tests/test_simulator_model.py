"""The traffic model, scenarios and record rendering, without any web server."""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from leadflow_exporter.simulator import (
    MAX_CALL_SECONDS,
    SCENARIOS,
    Call,
    Schedule,
    TrafficModel,
    compute_truth,
    render,
)
from leadflow_exporter.simulator.catalog import (
    AFFILIATE_CAP_SPIKE_AFFILIATE,
    NO_BUYER_SPIKE_SET_ID,
)

EASTERN = ZoneInfo("America/New_York")
# A Wednesday, 15:00 US Eastern: business hours, no DST change nearby.
T0 = int(datetime(2026, 11, 25, 15, 0, tzinfo=EASTERN).timestamp())
HOUR = 3600
DAY = 86400

REFERENCE_FIELDS = {
    "call_date", "set_name", "affiliate", "phone_label", "affiliate_number", "advertiser",
    "offer", "transfer_number", "caller_id", "lead_status", "entered_zip", "lf_state",
    "first_name", "last_name", "street_address", "city", "state", "zipcode", "reroute",
    "repeat_affiliate_caller", "affiliate_cap", "offer_qualified", "offer_price",
    "affiliate_qualified", "affiliate_price", "margin", "talk_minutes", "talk_seconds",
    "total_minutes", "total_seconds", "call_duration", "recording_link",
    "contest_qualification", "sid",
}  # fmt: skip


def _cents(value: str) -> int:
    sign = -1 if value.startswith("-") else 1
    whole, frac = value.lstrip("-").split(".")
    return sign * (int(whole) * 100 + int(frac))


def test_same_seed_same_calls_and_other_seed_differs() -> None:
    a = list(TrafficModel(seed=7).calls_between(T0 - 6 * HOUR, T0))
    b = list(TrafficModel(seed=7).calls_between(T0 - 6 * HOUR, T0))
    c = list(TrafficModel(seed=8).calls_between(T0 - 6 * HOUR, T0))
    assert a == b
    assert len(a) > 100
    assert [x.sid for x in a] != [x.sid for x in c]


def test_windows_compose_regardless_of_generation_order() -> None:
    whole = list(TrafficModel(seed=3).calls_between(T0 - 2 * HOUR, T0))
    model = TrafficModel(seed=3)
    # Later window first: generation must not depend on what was generated before.
    second = list(model.calls_between(T0 - HOUR + 17, T0))
    first = list(model.calls_between(T0 - 2 * HOUR, T0 - HOUR + 17))
    assert first + second == whole


def test_ordering_is_by_start_then_sid_and_sids_are_unique() -> None:
    calls = list(TrafficModel(seed=1).calls_between(T0 - DAY, T0))
    assert [(c.start, c.sid) for c in calls] == sorted((c.start, c.sid) for c in calls)
    assert len({c.sid for c in calls}) == len(calls)


def test_a_week_of_traffic_is_believable() -> None:
    model = TrafficModel(seed=11)
    calls = list(model.calls_between(T0 - 7 * DAY, T0))
    assert 10_000 < len(calls) < 60_000
    shares = {k: v / len(calls) for k, v in Counter(c.lead_status for c in calls).items()}
    assert 0.55 < shares["Connected"] < 0.80
    assert 0.10 < shares["Hang Up"] < 0.25
    assert 0.05 < shares["No Buyer"] < 0.25
    assert 0.01 < shares["Affiliate Cap"] < 0.08
    assert len({c.set_name for c in calls}) >= 4
    durations = [c.total_seconds for c in calls]
    assert max(durations) < MAX_CALL_SECONDS
    assert sum(d > 15 * 60 for d in durations) > 50
    assert 0 < sum(d > HOUR for d in durations) < len(calls) * 0.02
    hang_ups = [c.total_seconds for c in calls if c.lead_status == "Hang Up"]
    connected = [c.talk_seconds for c in calls if c.lead_status == "Connected"]
    assert sorted(hang_ups)[len(hang_ups) // 2] < 60
    assert sorted(connected)[len(connected) // 2] > 90
    assert any(c.margin_cents < 0 for c in calls)
    assert sum(c.margin_cents for c in calls) > 0


def test_nights_are_quieter_than_days() -> None:
    model = TrafficModel(seed=2)
    night = datetime(2026, 11, 25, 3, 0, tzinfo=EASTERN).timestamp()
    day = datetime(2026, 11, 25, 12, 0, tzinfo=EASTERN).timestamp()
    n_night = len(list(model.calls_between(night, night + 2 * HOUR)))
    n_day = len(list(model.calls_between(day, day + 2 * HOUR)))
    assert n_day > 5 * max(n_night, 1)


def test_volume_scales_arrivals() -> None:
    base = len(list(TrafficModel(seed=5, volume=1).calls_between(T0 - DAY, T0)))
    double = len(list(TrafficModel(seed=5, volume=2).calls_between(T0 - DAY, T0)))
    none = list(TrafficModel(seed=5, volume=0).calls_between(T0 - DAY, T0))
    assert 1.7 < double / base < 2.3
    assert none == []


def test_call_outcomes_are_consistent() -> None:
    for c in TrafficModel(seed=4).calls_between(T0 - DAY, T0):
        assert c.end == c.start + c.ivr_seconds + c.talk_seconds
        assert c.margin_cents == c.offer_price_cents - c.affiliate_price_cents
        if c.lead_status != "Connected":
            assert c.advertiser is None and c.offer is None and c.talk_seconds == 0
            assert c.offer_price_cents == 0 and c.affiliate_price_cents == 0
        else:
            assert c.advertiser and c.offer and c.transfer_number
        if c.offer_qualified:
            assert c.offer_price_cents > 0 and c.talk_seconds >= 30
        assert not c.contested or c.offer_qualified
        assert len(c.caller_id) == 10 and c.caller_id.isdigit()


def test_find_returns_the_call_by_sid() -> None:
    model = TrafficModel(seed=9)
    calls = list(model.calls_between(T0 - HOUR, T0))
    assert model.find(calls[5].sid) == calls[5]
    assert model.find("not-a-sid") is None
    assert model.find(calls[5].sid[:-1] + "x") is None


def test_traffic_start_bounds_history() -> None:
    model = TrafficModel(seed=1, traffic_start=T0 - HOUR)
    assert list(model.calls_between(T0 - 3 * HOUR, T0 - HOUR)) == []
    calls = list(model.calls_between(T0 - 3 * HOUR, T0))
    assert calls and min(c.start for c in calls) >= T0 - HOUR


def test_active_and_ending_windows_agree_with_call_lifetimes() -> None:
    model = TrafficModel(seed=6)
    active = model.active_at(T0)
    assert active
    assert all(c.start <= T0 < c.end for c in active)
    ended = list(model.calls_ending_between(T0 - HOUR, T0))
    assert ended and all(T0 - HOUR < c.end <= T0 for c in ended)
    # Long calls that started before the window but ended inside it are included.
    assert any(c.start < T0 - HOUR for c in ended)


def _share(calls: list[Call], status: str) -> float:
    return sum(c.lead_status == status for c in calls) / max(len(calls), 1)


def test_no_buyer_spike_hits_its_set_only_while_scheduled() -> None:
    spike = (T0 - 4 * HOUR, T0 - 2 * HOUR)
    model = TrafficModel(seed=1, schedule=[(spike[0], "no-buyer-spike"), (spike[1], "steady")])
    plain = TrafficModel(seed=1)
    during = [c for c in model.calls_between(*spike) if c.set_id == NO_BUYER_SPIKE_SET_ID]
    after = [c for c in model.calls_between(spike[1], T0) if c.set_id == NO_BUYER_SPIKE_SET_ID]
    assert _share(during, "No Buyer") > 0.5
    assert _share(after, "No Buyer") < 0.3
    others = [c for c in model.calls_between(*spike) if c.set_id != NO_BUYER_SPIKE_SET_ID]
    plain_others = [c for c in plain.calls_between(*spike) if c.set_id != NO_BUYER_SPIKE_SET_ID]
    assert [c.lead_status for c in others] == [c.lead_status for c in plain_others]
    truth = compute_truth(model, spike[0] + 600, spike[1])
    medicare = next(s for s in truth["sets"].values() if s["set_id"] == NO_BUYER_SPIKE_SET_ID)
    assert medicare["calls"]["no_buyer"] > medicare["calls"]["connected"]


def test_affiliate_cap_spike_hits_one_affiliate() -> None:
    model = TrafficModel(seed=1, schedule=[(T0 - 3 * HOUR, "affiliate-cap-spike")])
    calls = list(model.calls_between(T0 - 3 * HOUR, T0))
    mine = [c for c in calls if c.affiliate == AFFILIATE_CAP_SPIKE_AFFILIATE]
    rest = [c for c in calls if c.affiliate != AFFILIATE_CAP_SPIKE_AFFILIATE]
    assert _share(mine, "Affiliate Cap") > 0.8
    assert _share(rest, "Affiliate Cap") < 0.1
    assert all(c.affiliate_price_cents == 0 for c in mine if c.lead_status == "Affiliate Cap")


def test_schedule_rejects_unknown_names_and_out_of_order_switches() -> None:
    schedule = Schedule([(100, "slow")])
    assert schedule.at(99) == "steady" and schedule.at(100) == "slow"
    with pytest.raises(ValueError):
        schedule.switch(200, "nope")
    with pytest.raises(ValueError):
        schedule.switch(50, "steady")
    assert set(SCENARIOS) == {
        "steady", "no-buyer-spike", "affiliate-cap-spike", "api-outage", "rate-limited",
        "slow", "messy-data", "truncated-bodies", "own-page-size",
    }  # fmt: skip


def test_finished_record_carries_every_reference_field() -> None:
    calls = list(TrafficModel(seed=1).calls_between(T0 - 2 * HOUR, T0 - HOUR))
    connected = next(c for c in calls if c.lead_status == "Connected" and c.offer_qualified)
    hang_up = next(c for c in calls if c.lead_status == "Hang Up")
    rec = render(connected, T0, seed=1)
    assert set(rec) == REFERENCE_FIELDS
    local = datetime.strptime(rec["call_date"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=EASTERN)
    assert local.timestamp() == connected.start
    assert rec["sid"] == connected.sid
    assert rec["advertiser"] == connected.advertiser
    assert _cents(rec["margin"]) == _cents(rec["offer_price"]) - _cents(rec["affiliate_price"])
    assert rec["talk_seconds"] == connected.talk_seconds
    assert rec["talk_minutes"] == pytest.approx(connected.talk_seconds / 60, abs=0.05)
    assert rec["call_duration"] == math.ceil(connected.total_seconds / 60)
    assert rec["offer_qualified"] == "Y"
    assert rec["recording_link"].startswith("https://")
    hung = render(hang_up, T0, seed=1)
    assert hung["advertiser"] is None and hung["offer"] is None
    assert hung["lead_status"] == "Hang Up"


def test_active_record_has_partial_values() -> None:
    model = TrafficModel(seed=1)
    call = next(c for c in model.active_at(T0) if c.lead_status == "Connected")
    t = call.start + call.ivr_seconds + 5
    rec = render(call, t, seed=1)
    assert rec["total_seconds"] == call.ivr_seconds + 5
    assert rec["talk_seconds"] == 5
    assert rec["lead_status"] == "Connected"
    assert rec["offer_price"] is None and rec["margin"] is None
    assert rec["offer_qualified"] == "N"
    early = render(call, call.start + 1, seed=1)
    assert early["lead_status"] is None and early["advertiser"] is None


def test_messy_data_uses_every_variant() -> None:
    model = TrafficModel(seed=1, schedule=[(0, "messy-data")])
    calls = list(model.calls_between(T0 - 6 * HOUR, T0 - 4 * HOUR))
    records = [render(c, T0, seed=1) for c in calls]
    dates = [r.get("call_date") for r in records]
    assert any(isinstance(d, str) and d.endswith("Z") for d in dates)
    assert any(isinstance(d, str) and d[-6:] in ("-05:00", "-04:00") for d in dates)
    assert any(isinstance(d, str) and "T" in d and d[-6] not in "+-" for d in dates)
    assert any(isinstance(d, str) and " " in d for d in dates)
    prices = [r.get("offer_price") for r in records]
    assert any(isinstance(p, str) and p.startswith("$") for p in prices)
    assert any(isinstance(p, float) for p in prices)
    assert "" in prices and None in prices
    assert any(isinstance(r.get("talk_seconds"), str) for r in records)
    assert any(isinstance(r.get("talk_seconds"), int) for r in records)
    flags = {repr(r["offer_qualified"]) for r in records}
    assert {"'Y'", "'N'", "'1'", "'0'", "'true'", "'false'", "'yes'", "'no'"} <= flags
    assert {"True", "False"} <= flags
    assert all("lf_call_uuid" in r for r in records)
    assert any("first_name" not in r for r in records)
    malformed = [c for c in calls if c.malformed]
    assert {c.malformed for c in malformed} == {"no_sid", "bad_call_date"}
    for c in malformed:
        rec = render(c, T0, seed=1)
        if c.malformed == "no_sid":
            assert not rec.get("sid")
        else:
            assert rec["call_date"] in ("0000-00-00 00:00:00", "", "N/A", "2026-13-45 99:99:99")
    assert any(c.duplicated for c in calls)


def test_truth_excludes_malformed_calls() -> None:
    model = TrafficModel(seed=1, schedule=[(0, "messy-data")])
    truth = compute_truth(model, T0 - 6 * HOUR, T0)
    ended = list(model.calls_ending_between(T0 - 6 * HOUR, T0))
    assert any(c.malformed for c in ended)
    assert truth["calls_total"] == sum(1 for c in ended if not c.malformed)


def test_buyers_always_open_keeps_the_daytime_mix_after_hours() -> None:
    # Friday 23:00 Eastern: buyers closed at 21:00.
    night = datetime(2026, 11, 28, 4, 0, tzinfo=UTC).timestamp()
    closed = TrafficModel(seed=3, volume=200.0)
    open_ = TrafficModel(seed=3, volume=200.0, buyers_always_open=True)

    def no_buyer_share(model: TrafficModel) -> float:
        calls = list(model.calls_between(night, night + 600))
        return sum(c.lead_status == "No Buyer" for c in calls) / len(calls)

    assert not TrafficModel.buyers_open(night)
    assert no_buyer_share(closed) > 0.3
    assert no_buyer_share(open_) < 0.15
