"""Sightings: each bad record or value is counted once, however often it is read."""

from __future__ import annotations

from leadflow_exporter.sightings import Sightings


def test_a_key_counts_once_while_it_keeps_being_seen() -> None:
    seen = Sightings()
    assert seen.first([("missing_sid", 1), ("bad_call_date", "a")]) == {
        "missing_sid": 1,
        "bad_call_date": 1,
    }
    # Read again cycle after cycle, each time within the kept cycles of the last sighting.
    for _ in range(10):
        seen.cycle_done(keep_cycles=3)
        assert seen.first([("missing_sid", 1), ("bad_call_date", "a")]) == {}
    # The same key under another reason, and a repeat within one batch.
    assert seen.first([("offer_price", "a"), ("offer_price", "a")]) == {"offer_price": 1}
    assert len(seen) == 3


def test_keys_age_by_successful_cycles_only() -> None:
    seen = Sightings()
    seen.first([("malformed", 7)])
    seen.cycle_done(keep_cycles=3)
    seen.first([("malformed", 8)])
    # However long an outage, no cycle ends and nothing is forgotten.
    for _ in range(2):
        seen.cycle_done(keep_cycles=3)
    assert len(seen) == 2
    seen.cycle_done(keep_cycles=3)  # 7 was last seen 4 cycles ago, 8 three
    assert len(seen) == 1
    assert seen.first([("malformed", 7), ("malformed", 8)]) == {"malformed": 1}


def test_the_least_recently_seen_keys_go_first_beyond_the_cap() -> None:
    seen = Sightings(max_keys=3)
    for i in range(5):
        seen.first([("missing_sid", i)])
    assert len(seen) == 3
    seen.first([("missing_sid", 2)])  # 2 is now the most recent
    seen.first([("missing_sid", 5)])
    # 0, 1 and then 3 were dropped; 2, 4 and 5 are still known.
    assert seen.first([("missing_sid", i) for i in (2, 4, 5)]) == {}
    assert seen.first([("missing_sid", 3)]) == {"missing_sid": 1}


def test_many_keys_are_forgotten_at_once_and_the_rest_kept() -> None:
    seen = Sightings()
    seen.first(("bad_call_date", i) for i in range(50_000))
    seen.cycle_done(keep_cycles=5)
    seen.first(("bad_call_date", i) for i in range(50_000, 60_000))
    for _ in range(5):
        seen.cycle_done(keep_cycles=5)
    assert len(seen) == 10_000
    assert seen.first([("bad_call_date", 0), ("bad_call_date", 59_999)]) == {"bad_call_date": 1}
