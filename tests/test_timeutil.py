"""call_date parsing and API dates in US Eastern time, across both DST changes of 2026."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from leadflow_exporter.timeutil import (
    SEVEN_DAYS,
    CallDateParser,
    format_api_date,
    slices,
    zone,
)

EASTERN = ZoneInfo("America/New_York")
SPRING_FORWARD = date(2026, 3, 8)  # 02:00 EST -> 03:00 EDT
FALL_BACK = date(2026, 11, 1)  # 02:00 EDT -> 01:00 EST
ORDINARY = date(2026, 6, 15)


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def reference(text: str, tz: Any = EASTERN) -> float:
    """What the fast path must agree with: fromisoformat, then the zone for naive values."""
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return parsed.timestamp()


def minutes_of(day: date, sep: str = " ") -> list[str]:
    start = datetime(day.year, day.month, day.day)
    return [
        (start + timedelta(minutes=m)).strftime(f"%Y-%m-%d{sep}%H:%M:%S") for m in range(24 * 60)
    ]


@pytest.fixture
def parser() -> CallDateParser:
    return CallDateParser(EASTERN)


# -- DST ----------------------------------------------------------------------------------------


def test_spring_forward_last_standard_second_to_first_daylight_second_is_one_second(
    parser: CallDateParser,
) -> None:
    before = parser.parse("2026-03-08 01:59:59")
    after = parser.parse("2026-03-08 03:00:00")
    assert before == utc(2026, 3, 8, 6, 59, 59)
    assert after == utc(2026, 3, 8, 7, 0, 0)
    assert after - before == 1


def test_spring_forward_missing_hour_reads_with_the_standard_offset(
    parser: CallDateParser,
) -> None:
    # 02:30 does not exist on the wall clock; like zoneinfo (fold=0) it reads as 02:30 EST,
    # the same instant as 03:30 EDT.
    assert parser.parse("2026-03-08 02:30:00") == utc(2026, 3, 8, 7, 30)
    assert parser.parse("2026-03-08 02:30:00") == parser.parse("2026-03-08 03:30:00")


def test_spring_forward_day_is_23_hours(parser: CallDateParser) -> None:
    start = parser.parse("2026-03-08 00:00:00")
    end = parser.parse("2026-03-09 00:00:00")
    assert end - start == 23 * 3600


def test_fall_back_repeated_hour_takes_the_first_occurrence(parser: CallDateParser) -> None:
    assert parser.parse("2026-11-01 00:59:59") == utc(2026, 11, 1, 4, 59, 59)
    assert parser.parse("2026-11-01 01:00:00") == utc(2026, 11, 1, 5, 0, 0)
    assert parser.parse("2026-11-01 01:30:00") == utc(2026, 11, 1, 5, 30, 0)
    assert parser.parse("2026-11-01 01:59:59") == utc(2026, 11, 1, 5, 59, 59)
    assert parser.parse("2026-11-01 02:00:00") == utc(2026, 11, 1, 7, 0, 0)


def test_fall_back_repeated_hour_with_offsets_is_unambiguous(parser: CallDateParser) -> None:
    first = parser.parse("2026-11-01T01:30:00-04:00")
    second = parser.parse("2026-11-01T01:30:00-05:00")
    assert first == utc(2026, 11, 1, 5, 30)
    assert second == utc(2026, 11, 1, 6, 30)
    assert second - first == 3600


def test_fall_back_day_is_25_hours(parser: CallDateParser) -> None:
    start = parser.parse("2026-11-01 00:00:00")
    end = parser.parse("2026-11-02 00:00:00")
    assert end - start == 25 * 3600


@pytest.mark.parametrize("day", [SPRING_FORWARD, FALL_BACK, ORDINARY], ids=str)
@pytest.mark.parametrize("sep", [" ", "T"])
def test_fast_path_agrees_with_zoneinfo_every_minute(day: date, sep: str) -> None:
    shared = CallDateParser(EASTERN)  # exercises the per-hour offset cache
    for text in minutes_of(day, sep):
        expected = reference(text)
        assert shared.parse(text) == expected, text
        assert CallDateParser(EASTERN).parse(text) == expected, text


@pytest.mark.parametrize("day", [SPRING_FORWARD, FALL_BACK, ORDINARY], ids=str)
def test_fast_path_agrees_in_reverse_order(day: date) -> None:
    # The cache is filled by whichever value of an hour comes first.
    shared = CallDateParser(EASTERN)
    for text in reversed(minutes_of(day)):
        assert shared.parse(text) == reference(text), text


@pytest.mark.parametrize("second", [0, 1, 29, 30, 59])
def test_fast_path_agrees_on_seconds_around_transitions(second: int) -> None:
    parser = CallDateParser(EASTERN)
    for stamp in ("2026-03-08 01:59", "2026-03-08 02:00", "2026-03-08 03:00", "2026-11-01 00:59"):
        text = f"{stamp}:{second:02d}"
        assert parser.parse(text) == reference(text), text
    for stamp in ("2026-11-01 01:00", "2026-11-01 01:59", "2026-11-01 02:00"):
        text = f"{stamp}:{second:02d}"
        assert parser.parse(text) == reference(text), text


@pytest.mark.parametrize(
    ("tz_name", "days"),
    [
        # Lord Howe Island moves its clocks by half an hour at 02:00.
        ("Australia/Lord_Howe", [date(2026, 4, 5), date(2026, 10, 4)]),
        ("Europe/London", [date(2026, 3, 29), date(2026, 10, 25)]),
        ("America/St_Johns", [date(2026, 3, 8), date(2026, 11, 1)]),
        ("Asia/Kolkata", [ORDINARY]),
        ("UTC", [SPRING_FORWARD]),
    ],
)
def test_fast_path_agrees_in_other_zones(tz_name: str, days: list[date]) -> None:
    tz = ZoneInfo(tz_name)
    parser = CallDateParser(tz)
    for day in days:
        for text in minutes_of(day):
            assert parser.parse(text) == reference(text, tz), f"{tz_name} {text}"


def test_offset_cache_stays_correct_past_its_size_limit() -> None:
    parser = CallDateParser(EASTERN)
    start = datetime(2025, 1, 1, 0, 17, 42)
    for hour in range(2 * 366 * 24):  # more distinct hours than the cache keeps
        text = (start + timedelta(hours=hour)).strftime("%Y-%m-%d %H:%M:%S")
        assert parser.parse(text) == reference(text), text


def test_parsers_for_different_zones_do_not_share_offsets() -> None:
    eastern = CallDateParser(EASTERN)
    pacific = CallDateParser(ZoneInfo("America/Los_Angeles"))
    assert eastern.parse("2026-01-15 10:30:00") == utc(2026, 1, 15, 15, 30)
    assert pacific.parse("2026-01-15 10:30:00") == utc(2026, 1, 15, 18, 30)
    assert eastern.parse("2026-01-15 10:45:00") == utc(2026, 1, 15, 15, 45)


# -- other forms and garbage --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-07-15 10:30:00", utc(2026, 7, 15, 14, 30)),
        ("2026-07-15T10:30:00", utc(2026, 7, 15, 14, 30)),
        ("  2026-07-15 10:30:00\n", utc(2026, 7, 15, 14, 30)),
        ("2026-07-15T14:30:00Z", utc(2026, 7, 15, 14, 30)),
        ("2026-07-15 14:30:00Z", utc(2026, 7, 15, 14, 30)),
        ("2026-07-15T14:30:00+00:00", utc(2026, 7, 15, 14, 30)),
        ("2026-07-15T10:30:00-04:00", utc(2026, 7, 15, 14, 30)),
        ("2026-07-15T10:30-04", utc(2026, 7, 15, 14, 30)),  # 19 characters, not the wire form
        ("2026-07-15T10:30:00-0400", utc(2026, 7, 15, 14, 30)),
        ("2026-01-15T10:30:00-04:00", utc(2026, 1, 15, 14, 30)),  # the offset given wins
        ("2026-07-15T10:30:00.123456", utc(2026, 7, 15, 14, 30) + 0.123456),
        ("2026-07-15T10:30:00.5+00:00", utc(2026, 7, 15, 10, 30) + 0.5),
        ("2026-07-15T10:30", utc(2026, 7, 15, 14, 30)),
        ("2026-07-15", utc(2026, 7, 15, 4, 0)),
        ("2026-01-15", utc(2026, 1, 15, 5, 0)),
    ],
)
def test_iso_forms(parser: CallDateParser, text: str, expected: float) -> None:
    assert parser.parse(text) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "value",
    [
        None,
        20260115,
        1768491000.0,
        True,
        b"2026-01-15 10:30:00",
        ["2026-01-15 10:30:00"],
        {"date": "2026-01-15 10:30:00"},
        "",
        "   ",
        "2026",
        "2026-01",
        "yesterday",
        "not a date at all",
        "2026-13-15 10:30:00",
        "2026-00-15 10:30:00",
        "2026-02-29 10:30:00",
        "2026-01-32 10:30:00",
        "2026-01-15 24:00:00",
        "2026-01-15 10:60:00",
        "2026-01-15 10:30:60",
        "2026/01/15 10:30:00",
        "2026-01-15 10.30.00",
        "15-01-2026 10:30:00",
        "01/15/2026 10:30 AM",
        "20_6-01-15 10:30:00",
        "+026-01-15 10:30:00",
        "2026-01-15 +1:30:00",
        "2026-01-15  1:30:00",
        "2026-01-15 1 :30:00",
        "2026-0 -15 10:30:00",
        "٢٠٢٦-01-15 10:30:00",
        "2026-01-15 10:30:00 EST",
        "2026-01-15T10:30:00+25:00",
        "2026-01-15T10:30:00Zulu",
        "Thu, 15 Jan 2026 10:30:00 -0500",
    ],
)
def test_garbage_is_none(parser: CallDateParser, value: Any) -> None:
    assert parser.parse(value) is None


def test_garbage_does_not_poison_the_cache(parser: CallDateParser) -> None:
    assert parser.parse("2026-01-15 10:99:00") is None
    assert parser.parse("2026-01-15 10:30:00") == utc(2026, 1, 15, 15, 30)


# -- format_api_date ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("epoch", "text"),
    [
        (utc(2026, 1, 15, 15, 30), "2026-01-15T10:30:00-05:00"),
        (utc(2026, 7, 15, 14, 30), "2026-07-15T10:30:00-04:00"),
        (utc(2026, 3, 8, 6, 59, 59), "2026-03-08T01:59:59-05:00"),
        (utc(2026, 3, 8, 7, 0, 0), "2026-03-08T03:00:00-04:00"),
        (utc(2026, 11, 1, 5, 30), "2026-11-01T01:30:00-04:00"),
        (utc(2026, 11, 1, 6, 30), "2026-11-01T01:30:00-05:00"),
        (utc(2026, 1, 15, 15, 30) + 0.999, "2026-01-15T10:30:00-05:00"),
    ],
)
def test_format_api_date(epoch: float, text: str) -> None:
    assert format_api_date(epoch, EASTERN) == text


def test_format_api_date_in_utc() -> None:
    assert format_api_date(utc(2026, 7, 15, 14, 30, 5), UTC) == "2026-07-15T14:30:05+00:00"


@pytest.mark.parametrize("day", [SPRING_FORWARD, FALL_BACK], ids=str)
def test_format_api_date_round_trips_through_the_parser(day: date) -> None:
    parser = CallDateParser(EASTERN)
    start = utc(day.year, day.month, day.day) - 6 * 3600
    for step in range(0, 36 * 3600, 601):
        epoch = start + step
        text = format_api_date(epoch, EASTERN)
        assert parser.parse(text) == epoch, text


def test_format_api_date_distinct_for_every_second_of_the_repeated_hour() -> None:
    start = utc(2026, 11, 1, 5, 0)
    texts = {format_api_date(start + s, EASTERN) for s in range(0, 2 * 3600, 7)}
    assert len(texts) == len(range(0, 2 * 3600, 7))


def test_zone_is_cached() -> None:
    assert zone("America/New_York") is zone("America/New_York")
    assert zone("America/New_York") == EASTERN


# -- slices -------------------------------------------------------------------------------------


def check_slices(start: float, end: float, max_seconds: float) -> list[tuple[float, float]]:
    out = slices(start, end, max_seconds)
    assert out[0][0] == start
    assert out[-1][1] == end
    for (_, b), (c, _) in itertools.pairwise(out):
        assert b == c  # contiguous: no gap, no overlap
    for a, b in out:
        assert 0 < b - a <= max_seconds
    return out


@pytest.mark.parametrize(
    ("start", "end", "max_seconds", "pieces"),
    [
        (0, 10, 10, 1),
        (0, 10, 3, 4),
        (0, 9, 3, 3),
        (0, 1, 100, 1),
        (5, 6, 0.5, 2),
        (utc(2026, 1, 1), utc(2026, 1, 8), SEVEN_DAYS, 1),
        (utc(2026, 1, 1), utc(2026, 1, 8) + 1, SEVEN_DAYS, 2),
        (utc(2026, 1, 1), utc(2026, 3, 1), SEVEN_DAYS, 9),
        (utc(2026, 3, 1), utc(2026, 3, 15), SEVEN_DAYS, 2),  # across the March change
        (utc(2026, 10, 25), utc(2026, 11, 8, 0, 0, 1), SEVEN_DAYS, 3),
        (1_768_491_000.25, 1_768_491_000.25 + 3 * SEVEN_DAYS, SEVEN_DAYS, 3),
    ],
)
def test_slices_cover_the_range_exactly(
    start: float, end: float, max_seconds: float, pieces: int
) -> None:
    out = check_slices(start, end, max_seconds)
    assert len(out) == pieces
    assert len(out) == math.ceil((end - start) / max_seconds)


@pytest.mark.parametrize("length", [1, 59, 60, 61, 3599, 3600, 86_400, 604_799, 604_800, 604_801])
def test_slices_of_many_lengths(length: int) -> None:
    start = utc(2026, 3, 7)
    out = check_slices(start, start + length, 3600)
    assert len(out) == math.ceil(length / 3600)


@pytest.mark.parametrize(("start", "end"), [(10, 10), (10, 5), (0, -1)])
def test_empty_or_reversed_range_has_no_slices(start: float, end: float) -> None:
    assert slices(start, end, 3) == []


@pytest.mark.parametrize("max_seconds", [0, -1, -SEVEN_DAYS, math.nan])
def test_slices_refuse_a_non_positive_length(max_seconds: float) -> None:
    with pytest.raises(ValueError):
        slices(0, 10, max_seconds)


def test_seven_days() -> None:
    assert SEVEN_DAYS == 7 * 24 * 3600
