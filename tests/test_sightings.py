"""Sightings: each bad record or value is counted once, however often it is read."""

from __future__ import annotations

from leadflow_exporter.sightings import Sightings


def test_a_key_counts_once_while_it_keeps_being_seen() -> None:
    seen = Sightings()
    assert seen.first([("missing_sid", 1), ("bad_call_date", "a")], now=0.0, ttl=100) == {
        "missing_sid": 1,
        "bad_call_date": 1,
    }
    # Read again and again, each time within the ttl of the last sighting: never again.
    for now in (60.0, 120.0, 180.0, 240.0):
        assert seen.first([("missing_sid", 1), ("bad_call_date", "a")], now=now, ttl=100) == {}
    # The same key under another reason, and a repeat within one batch.
    assert seen.first([("offer_price", "a"), ("offer_price", "a")], now=240.0, ttl=100) == {
        "offer_price": 1
    }
    assert len(seen) == 3


def test_a_key_not_seen_for_longer_than_the_ttl_is_forgotten() -> None:
    seen = Sightings()
    seen.first([("malformed", 7)], now=0.0, ttl=100)
    seen.first([("malformed", 8)], now=90.0, ttl=100)
    assert seen.first([], now=150.0, ttl=100) == {}
    assert len(seen) == 1  # 7 expired at 100, 8 is kept until 190
    assert seen.first([("malformed", 7), ("malformed", 8)], now=150.0, ttl=100) == {"malformed": 1}


def test_the_oldest_keys_go_first_beyond_the_cap() -> None:
    seen = Sightings(max_keys=3)
    for i in range(5):
        seen.first([("missing_sid", i)], now=float(i), ttl=1000)
    assert len(seen) == 3
    # 0 and 1 were dropped; 2, 3, 4 are still known.
    assert seen.first([("missing_sid", i) for i in range(5)], now=5.0, ttl=1000) == {
        "missing_sid": 2
    }
