"""Tolerant decoding of History Report pages: envelopes, value forms, invalid records."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from leadflow_exporter.records import (
    MONEY_SCALE,
    CallRecord,
    EnvelopeError,
    Page,
    _decode_fast,
    decode_page,
    sid_key,
    snake_status,
)
from leadflow_exporter.timeutil import CallDateParser

EASTERN = ZoneInfo("America/New_York")


@pytest.fixture
def dates() -> CallDateParser:
    return CallDateParser(EASTERN)


def record(**overrides: Any) -> dict[str, Any]:
    """A complete, valid record as the documentation describes it; overrides replace fields,
    a value of `...` removes the field."""
    base: dict[str, Any] = {
        "call_date": "2026-01-15 10:30:00",
        "set_name": "Auto Insurance",
        "affiliate": "Acme Media",
        "phone_label": "Radio spot",
        "affiliate_number": "8005550100",
        "advertiser": "Big Insurer",
        "offer": "Auto - National",
        "transfer_number": "8005550199",
        "caller_id": "3125550123",
        "lead_status": "Connected",
        "entered_zip": "60601",
        "lf_state": "IL",
        "first_name": "Pat",
        "last_name": "Doe",
        "street_address": "1 Main St",
        "city": "Chicago",
        "state": "IL",
        "zipcode": "60601",
        "reroute": "N",
        "repeat_affiliate_caller": "N",
        "affiliate_cap": "N",
        "offer_qualified": "Y",
        "offer_price": "25.00",
        "affiliate_qualified": "Y",
        "affiliate_price": "15.00",
        "margin": "10.00",
        "talk_minutes": "2.5",
        "talk_seconds": "150",
        "total_minutes": "3.0",
        "total_seconds": "180",
        "call_duration": "3",
        "recording_link": "https://example.invalid/rec/1",
        "contest_qualification": "N",
        "sid": "CA0001",
    }
    for key, value in overrides.items():
        if value is ...:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def body(items: Any, envelope: str | None = None) -> bytes:
    payload = items if envelope is None else {envelope: items}
    return json.dumps(payload).encode()


def one(dates: CallDateParser, extra_labels: tuple[str, ...] = (), **overrides: Any) -> Page:
    return decode_page(body([record(**overrides)]), dates, extra_labels)


def only(page: Page) -> CallRecord:
    assert len(page.records) == 1, page
    return page.records[0]


def epoch(*args: int, tz: Any = UTC) -> float:
    return datetime(*args, tzinfo=tz).timestamp()


# -- envelopes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("envelope", [None, "response", "data"])
def test_every_envelope_is_accepted(dates: CallDateParser, envelope: str | None) -> None:
    items = [record(sid=f"CA{i}") for i in range(3)]
    page = decode_page(body(items, envelope), dates)
    assert [r.sid for r in page.records] == ["CA0", "CA1", "CA2"]
    assert page.size == 3
    assert not page.invalid
    assert not page.bad_values


@pytest.mark.parametrize("envelope", [None, "response", "data"])
def test_empty_array_in_every_envelope(dates: CallDateParser, envelope: str | None) -> None:
    page = decode_page(body([], envelope), dates)
    assert page.records == []
    assert page.size == 0


@pytest.mark.parametrize("envelope", ["response", "data"])
def test_envelope_with_sibling_fields(dates: CallDateParser, envelope: str) -> None:
    payload = {"status": "ok", "meta": {"page": 1, "total": 1}, envelope: [record()]}
    page = decode_page(json.dumps(payload).encode(), dates)
    assert only(page).sid == "CA0001"


def test_response_wins_over_data_when_both_are_arrays(dates: CallDateParser) -> None:
    payload = {"response": [record(sid="R")], "data": [record(sid="D")]}
    assert only(decode_page(json.dumps(payload).encode(), dates)).sid == "R"


def test_data_used_when_response_is_null(dates: CallDateParser) -> None:
    payload = {"response": None, "data": [record(sid="D")]}
    assert only(decode_page(json.dumps(payload).encode(), dates)).sid == "D"


@pytest.mark.parametrize("envelope", [None, "response", "data"])
def test_envelope_with_a_malformed_item_keeps_the_rest(
    dates: CallDateParser, envelope: str | None
) -> None:
    items = [record(sid="A"), "not a record", record(sid="B")]
    page = decode_page(body(items, envelope), dates)
    assert [r.sid for r in page.records] == ["A", "B"]
    assert page.invalid == {"malformed": 1}
    assert page.size == 3


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"{}", "without a 'response' or 'data' array"),
        (b'{"records": [{"sid": "a"}]}', "without a 'response' or 'data' array"),
        (b'{"response": null}', "without a 'response' or 'data' array"),
        (b'{"response": null, "data": null}', "without a 'response' or 'data' array"),
        (b'{"response": "nope"}', "without a 'response' or 'data' array"),
        (b'{"data": {"sid": "a"}}', "without a 'response' or 'data' array"),
        (b'{"error": "Invalid API key"}', "without a 'response' or 'data' array"),
        (b'"a string"', "expected a JSON array of records, got str"),
        (b"42", "expected a JSON array of records, got int"),
        (b"3.5", "expected a JSON array of records, got float"),
        (b"true", "expected a JSON array of records, got bool"),
        (b"null", "expected a JSON array of records, got NoneType"),
        (b"", "not valid JSON"),
        (b"   ", "not valid JSON"),
        (b"<html><body>502 Bad Gateway</body></html>", "not valid JSON"),
        (b"Internal Server Error", "not valid JSON"),
        (b'[{"sid": "a", "call_date": "2026-01-15 10:30:00"}', "not valid JSON"),
        (b'[{"sid": "a", "call_date": "2026-01-1', "not valid JSON"),
        (b'{"response": [', "not valid JSON"),
        (b'{"response": [{"sid": "a"}, "x"', "not valid JSON"),
        (b"[1, 2,]", "not valid JSON"),
        (b"\xff\xfe[]", "not valid JSON"),
    ],
)
def test_unusable_bodies_raise_envelope_error(
    dates: CallDateParser, raw: bytes, fragment: str
) -> None:
    with pytest.raises(EnvelopeError) as info:
        decode_page(raw, dates)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_envelope_error_for_a_truncated_real_page(dates: CallDateParser) -> None:
    full = body([record(sid=f"CA{i}") for i in range(20)], "response")
    for cut in (1, len(full) // 3, len(full) // 2, len(full) - 1):
        with pytest.raises(EnvelopeError):
            decode_page(full[:cut], dates)


# -- records that cannot be counted -------------------------------------------------------------


@pytest.mark.parametrize(
    "item",
    [
        "CA0001",
        42,
        None,
        True,
        [record()],
        record(set_name={"name": "Auto"}),
        record(offer_price={"amount": "1.00"}),
        record(sid=["CA1"]),
        record(call_date={"date": "2026-01-15"}),
        record(lead_status=["Connected"]),
    ],
    ids=[
        "string",
        "number",
        "null",
        "bool",
        "array",
        "nested-set-name",
        "nested-price",
        "array-sid",
        "nested-call-date",
        "array-status",
    ],
)
def test_malformed_item_counted_and_rest_kept(dates: CallDateParser, item: Any) -> None:
    items = [record(sid="first"), item, record(sid="last")]
    page = decode_page(body(items), dates)
    assert [r.sid for r in page.records] == ["first", "last"]
    assert page.invalid == {"malformed": 1}
    assert page.size == 3


@pytest.mark.parametrize("sid", [..., None, "", "   ", True, False])
def test_record_without_sid_is_skipped(dates: CallDateParser, sid: Any) -> None:
    items = [record(sid="ok-1"), record(sid=sid), record(sid="ok-2")]
    page = decode_page(body(items), dates)
    assert [r.sid for r in page.records] == ["ok-1", "ok-2"]
    assert page.invalid == {"missing_sid": 1}
    assert page.size == 3


@pytest.mark.parametrize(
    "call_date",
    [
        ...,
        None,
        "",
        "yesterday",
        "2026-13-01 10:00:00",
        "2026-02-30 10:00:00",
        "2026-01-15 25:00:00",
        "2026-01-15 10:61:00",
        "15/01/2026 10:30:00",
        "2026/01/15 10:30:00",
        1768491000,
        1768491000.5,
        True,
    ],
)
def test_record_with_bad_call_date_is_skipped(dates: CallDateParser, call_date: Any) -> None:
    items = [record(sid="ok-1"), record(sid="bad", call_date=call_date), record(sid="ok-2")]
    page = decode_page(body(items), dates)
    assert [r.sid for r in page.records] == ["ok-1", "ok-2"]
    assert page.invalid == {"bad_call_date": 1}


def test_invalid_reasons_are_counted_together(dates: CallDateParser) -> None:
    items = [
        record(sid=None),
        record(sid=""),
        record(sid="x", call_date="garbage"),
        "junk",
        {"sid": {"nested": 1}},
        record(sid="good"),
    ]
    page = decode_page(body(items, "data"), dates)
    assert only(page).sid == "good"
    assert page.invalid == {"missing_sid": 2, "bad_call_date": 1, "malformed": 2}
    assert page.size == 6


@pytest.mark.parametrize(("sid", "text"), [(12345, "12345"), (12.0, "12"), ("  CA9 ", "CA9")])
def test_sid_forms(dates: CallDateParser, sid: Any, text: str) -> None:
    rec = only(one(dates, sid=sid))
    assert rec.sid == text
    assert rec.sid_key == sid_key(text)


# -- numbers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "units", "bad"),
    [
        (12.5, 125_000, 0),
        (12, 120_000, 0),
        (0, 0, 0),
        ("12.50", 125_000, 0),
        ("12.5", 125_000, 0),
        (" 12.50 ", 125_000, 0),
        ("$12.50", 125_000, 0),
        ("$1,234.50", 12_345_000, 0),
        ("1,234,567.89", 12_345_678_900, 0),
        ("0.0001", 1, 0),
        ("", 0, 0),
        ("   ", 0, 0),
        (None, 0, 0),
        (..., 0, 0),
        ("-3.25", -32_500, 0),
        ("(3.25)", -32_500, 0),
        ("($3.25)", -32_500, 0),
        ("-$3.25", -32_500, 0),
        (-3.25, -32_500, 0),
        ("abc", 0, 1),
        ("12.50 USD", 0, 1),
        ("1.2.3", 0, 1),
        ("NaN", 0, 1),
        ("Infinity", 0, 1),
        ("-inf", 0, 1),
        ("()", 0, 1),
        ("$", 0, 1),
        (True, 0, 1),
        (False, 0, 1),
    ],
)
def test_money_values(dates: CallDateParser, value: Any, units: int, bad: int) -> None:
    page = one(dates, offer_price=value, affiliate_price="0", margin=value)
    rec = only(page)
    assert rec.margin == units
    assert isinstance(rec.offer_price, int)
    if units >= 0:
        assert rec.offer_price == units
        assert page.bad_values["offer_price"] == bad
    else:
        # Margins may be negative; a negative price would make a counter go down.
        assert rec.offer_price == 0
        assert page.bad_values["offer_price"] == 1
    assert page.bad_values["margin"] == bad


@pytest.mark.parametrize("value", ["1e308", 1e308, "-1e13", "9" * 400])
def test_absurd_numbers_read_as_unreadable_not_overflow(dates: CallDateParser, value: Any) -> None:
    page = one(dates, offer_price=value, affiliate_price="1.00", talk_seconds=value)
    rec = only(page)
    assert rec.offer_price == 0
    assert rec.talk_seconds == 0
    assert page.bad_values["offer_price"] == 1


def wire_record(**overrides: Any) -> dict[str, Any]:
    """A record in the exact form the API sends, which the fast path reads."""
    fields: dict[str, Any] = {
        "talk_seconds": 150,
        "total_seconds": 180,
        "talk_minutes": 2.5,
        "total_minutes": 3.0,
    }
    return record(**{**fields, **overrides})


def test_a_negative_margin_read_before_does_not_pass_as_a_price(dates: CallDateParser) -> None:
    # The fast path caches money strings; "-7.3125" read as a margin must still be an
    # unreadable price when it comes again in a price field.
    first = body([wire_record(sid="a", margin="-7.3125")])
    assert _decode_fast(first, dates, ()) is not None
    assert only(decode_page(first, dates)).margin == -73_125
    again = body(
        [wire_record(sid="b", offer_price="-7.3125", affiliate_price="-7.3125", margin="-7.3125")]
    )
    assert _decode_fast(again, dates, ()) is not None
    page = decode_page(again, dates)
    rec = only(page)
    assert (rec.offer_price, rec.affiliate_price, rec.margin) == (0, 0, -73_125)
    assert page.bad_values == {"offer_price": 1, "affiliate_price": 1}


@pytest.mark.parametrize(
    ("value", "seconds", "bad"),
    [(10**12, 1e12, 0), (10**12 + 1, 0.0, 1), (10**15, 0.0, 1), (2**64 + 1, 0.0, 1)],
)
def test_durations_beyond_the_bound_are_unreadable_in_wire_form(
    dates: CallDateParser, value: int, seconds: float, bad: int
) -> None:
    page = decode_page(body([wire_record(talk_seconds=value, total_seconds=value)]), dates)
    rec = only(page)
    assert (rec.talk_seconds, rec.total_seconds) == (seconds, seconds)
    assert page.bad_values == ({"talk_seconds": 1, "total_seconds": 1} if bad else {})


def test_a_number_beyond_a_double_costs_one_value_not_the_page(dates: CallDateParser) -> None:
    body = (
        b'[{"sid": "a", "call_date": "2026-01-01 10:00:00", "offer_price": 1e400,'
        b' "talk_seconds": 5, "total_seconds": 6},'
        b' {"sid": "b", "call_date": "2026-01-01 10:00:00", "offer_price": "2.50",'
        b' "talk_seconds": 5, "total_seconds": 6}]'
    )
    page = decode_page(body, dates)
    assert [r.offer_price for r in page.records] == [0, 25_000]
    assert page.bad_values["offer_price"] == 1


def test_unparseable_numbers_counted_per_field(dates: CallDateParser) -> None:
    items = [
        record(sid="a", offer_price="x", talk_seconds="long"),
        record(sid="b", offer_price="y", affiliate_price="z"),
        record(sid="c"),
    ]
    page = decode_page(body(items), dates)
    assert len(page.records) == 3
    assert page.bad_values == {"offer_price": 2, "talk_seconds": 1, "affiliate_price": 1}
    assert [r.offer_price for r in page.records] == [0, 0, 250_000]
    assert page.records[0].talk_seconds == 0.0
    assert not page.invalid


def test_margin_taken_as_sent_even_when_it_disagrees(dates: CallDateParser) -> None:
    rec = only(one(dates, offer_price="20.00", affiliate_price="25.00", margin="-4.00"))
    assert (rec.offer_price, rec.affiliate_price, rec.margin) == (200_000, 250_000, -40_000)


@pytest.mark.parametrize("margin", [..., None, ""])
def test_missing_margin_is_offer_minus_affiliate(dates: CallDateParser, margin: Any) -> None:
    rec = only(one(dates, offer_price="20.00", affiliate_price="$25.50", margin=margin))
    assert rec.margin == -55_000


def test_money_sum_is_exact(dates: CallDateParser) -> None:
    n = 10_000
    items = [
        record(sid=f"CA{i}", offer_price="0.10", affiliate_price="0.07", margin=...)
        for i in range(n)
    ]
    page = decode_page(body(items), dates)
    assert len(page.records) == n
    assert sum(r.offer_price for r in page.records) == n * MONEY_SCALE // 10
    assert sum(r.affiliate_price for r in page.records) == n * 700
    assert sum(r.margin for r in page.records) == n * 300
    # a float sum of the same values is not exact: the reason for integer units
    assert sum(0.1 for _ in range(n)) != n / 10


@pytest.mark.parametrize(
    "price", ["0.01", "0.10", "0.29", "1.15", "2.675", "19.99", "123.4567", "9999999.9999"]
)
def test_money_units_match_decimal(dates: CallDateParser, price: str) -> None:
    rec = only(one(dates, offer_price=price, affiliate_price=price, margin=...))
    assert rec.offer_price == int(Decimal(price) * MONEY_SCALE)
    assert rec.margin == 0


@pytest.mark.parametrize(
    ("fields", "talk"),
    [
        ({"talk_seconds": "150", "talk_minutes": "9.9"}, 150.0),
        ({"talk_seconds": 42, "talk_minutes": ...}, 42.0),
        ({"talk_seconds": "0", "talk_minutes": "2.5"}, 0.0),
        ({"talk_seconds": ..., "talk_minutes": "2.5"}, 150.0),
        ({"talk_seconds": None, "talk_minutes": 0.1}, 6.0),
        ({"talk_seconds": "", "talk_minutes": "1.5"}, 90.0),
        ({"talk_seconds": ..., "talk_minutes": ...}, 0.0),
        ({"talk_seconds": None, "talk_minutes": ""}, 0.0),
    ],
)
def test_talk_seconds_and_minutes_fallback(
    dates: CallDateParser, fields: dict[str, Any], talk: float
) -> None:
    page = one(dates, **fields)
    assert only(page).talk_seconds == pytest.approx(talk)
    assert not page.bad_values


@pytest.mark.parametrize(
    ("fields", "total"),
    [
        ({"total_seconds": "180", "total_minutes": "1"}, 180.0),
        ({"total_seconds": ..., "total_minutes": "3.5"}, 210.0),
        ({"total_seconds": "", "total_minutes": 2}, 120.0),
        ({"total_seconds": None, "total_minutes": None}, 0.0),
    ],
)
def test_total_seconds_and_minutes_fallback(
    dates: CallDateParser, fields: dict[str, Any], total: float
) -> None:
    assert only(one(dates, **fields)).total_seconds == pytest.approx(total)


@pytest.mark.parametrize(
    ("field", "counted"), [("talk_seconds", "talk_seconds"), ("total_seconds", "total_seconds")]
)
def test_negative_durations_read_as_zero_and_are_counted(
    dates: CallDateParser, field: str, counted: str
) -> None:
    page = one(dates, **{field: "-5"})
    assert getattr(only(page), field) == 0.0
    assert page.bad_values == {counted: 1}


def test_negative_minutes_fallback_is_counted(dates: CallDateParser) -> None:
    page = one(dates, talk_seconds=..., talk_minutes="-1")
    assert only(page).talk_seconds == 0.0
    assert page.bad_values == {"talk_seconds": 1}


# -- flags --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected", "bad"),
    [
        ("Y", True, 0),
        ("y", True, 0),
        (" Y ", True, 0),
        ("N", False, 0),
        ("n", False, 0),
        ("1", True, 0),
        ("0", False, 0),
        ("true", True, 0),
        ("TRUE", True, 0),
        ("false", False, 0),
        ("False", False, 0),
        ("yes", True, 0),
        ("Yes", True, 0),
        ("no", False, 0),
        ("NO", False, 0),
        (True, True, 0),
        (False, False, 0),
        (1, True, 0),
        (0, False, 0),
        (1.0, True, 0),
        (0.0, False, 0),
        ("", False, 0),
        (None, False, 0),
        (..., False, 0),
        ("maybe", False, 1),
        ("2", False, 1),
        ("Yep", False, 1),
    ],
)
def test_flags(dates: CallDateParser, value: Any, expected: bool, bad: int) -> None:
    flag_fields = {
        "offer_qualified": "offer_qualified",
        "affiliate_qualified": "affiliate_qualified",
        "reroute": "reroute",
        "repeat_affiliate_caller": "repeat_affiliate_caller",
        "contest_qualification": "contested",
    }
    page = one(dates, **dict.fromkeys(flag_fields, value))
    rec = only(page)
    for wire, attribute in flag_fields.items():
        assert getattr(rec, attribute) is expected, wire
        assert page.bad_values[wire] == bad


def test_flags_are_independent(dates: CallDateParser) -> None:
    rec = only(
        one(
            dates,
            offer_qualified="Y",
            affiliate_qualified="N",
            reroute="1",
            repeat_affiliate_caller="0",
            contest_qualification="true",
        )
    )
    assert (
        rec.offer_qualified,
        rec.affiliate_qualified,
        rec.reroute,
        rec.repeat_affiliate_caller,
        rec.contested,
    ) == (True, False, True, False, True)


# -- null, missing and extra fields -------------------------------------------------------------


def test_minimal_record_has_safe_defaults(dates: CallDateParser) -> None:
    page = decode_page(body([{"sid": "S", "call_date": "2026-01-15 10:30:00"}]), dates)
    rec = only(page)
    assert rec.set_name == "unknown"
    assert rec.lead_status == "unknown"
    assert (rec.talk_seconds, rec.total_seconds) == (0.0, 0.0)
    assert (rec.offer_price, rec.affiliate_price, rec.margin) == (0, 0, 0)
    assert not any(
        (rec.offer_qualified, rec.affiliate_qualified, rec.reroute, rec.repeat_affiliate_caller)
    )
    assert not page.bad_values


def test_every_field_null_except_sid_and_date(dates: CallDateParser) -> None:
    nulls = {key: None for key in record() if key not in ("sid", "call_date")}
    page = one(dates, ("affiliate", "offer"), **nulls)
    rec = only(page)
    assert rec.set_name == "unknown"
    assert rec.lead_status == "unknown"
    assert rec.extra == {"affiliate": "", "offer": ""}
    assert rec.margin == 0
    assert not page.bad_values


def test_unknown_extra_fields_are_ignored(dates: CallDateParser) -> None:
    extras = {
        "new_field": "x",
        "nested_unknown": {"a": [1, 2, {"b": None}]},
        "list_unknown": [1, "two"],
        "Offer_Price": "999",
    }
    page = one(dates, **extras)
    rec = only(page)
    assert rec.offer_price == 250_000
    assert not page.invalid
    assert not page.bad_values


def test_set_name_forms(dates: CallDateParser) -> None:
    items = [
        record(sid="a", set_name="  Auto Insurance "),
        record(sid="b", set_name=""),
        record(sid="c", set_name=17),
        record(sid="d", set_name=17.0),
        record(sid="e", set_name=True),
    ]
    page = decode_page(body(items), dates)
    assert [r.set_name for r in page.records] == [
        "Auto Insurance",
        "unknown",
        "17",
        "17",
        "unknown",
    ]


# -- call_date ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call_date", "expected"),
    [
        ("2026-01-15 10:30:00", epoch(2026, 1, 15, 15, 30)),
        ("2026-07-15 10:30:00", epoch(2026, 7, 15, 14, 30)),
        ("2026-07-15T10:30:00", epoch(2026, 7, 15, 14, 30)),
        (" 2026-07-15 10:30:00 ", epoch(2026, 7, 15, 14, 30)),
        ("2026-07-15T10:30:00-04:00", epoch(2026, 7, 15, 14, 30)),
        ("2026-07-15T10:30:00-0400", epoch(2026, 7, 15, 14, 30)),
        ("2026-07-15T14:30:00Z", epoch(2026, 7, 15, 14, 30)),
        ("2026-07-15T14:30:00+00:00", epoch(2026, 7, 15, 14, 30)),
        ("2026-07-15T16:30:00+02:00", epoch(2026, 7, 15, 14, 30)),
        ("2026-07-15T10:30:00.250-04:00", epoch(2026, 7, 15, 14, 30) + 0.25),
        ("2026-07-15 10:30:00.5", epoch(2026, 7, 15, 14, 30) + 0.5),
        ("2026-01-15T10:30", epoch(2026, 1, 15, 15, 30)),
    ],
)
def test_call_date_forms(dates: CallDateParser, call_date: str, expected: float) -> None:
    assert only(one(dates, call_date=call_date)).call_ts == expected


def test_call_date_in_another_configured_zone() -> None:
    chicago = CallDateParser(ZoneInfo("America/Chicago"))
    rec = only(one(chicago, call_date="2026-01-15 10:30:00"))
    assert rec.call_ts == epoch(2026, 1, 15, 16, 30)


# -- lead_status --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("Connected", "connected"),
        ("Affiliate Cap", "affiliate_cap"),
        ("No Buyer", "no_buyer"),
        ("Hang Up", "hang_up"),
        ("CONNECTED", "connected"),
        ("  No   Buyer  ", "no_buyer"),
        ("Hang-Up", "hang_up"),
        ("No Buyer (timeout)", "no_buyer_timeout"),
        ("Duplicate/Blocked", "duplicate_blocked"),
        ("Voicemail!", "voicemail"),
        ("ÜberCall", "bercall"),
        ("3rd party", "3rd_party"),
        ("already_snake", "already_snake"),
        ("", "unknown"),
        ("---", "unknown"),
        (None, "unknown"),
        (..., "unknown"),
        (True, "unknown"),
        (7, "7"),
    ],
)
def test_lead_status_snake_case(dates: CallDateParser, status: Any, expected: str) -> None:
    assert only(one(dates, lead_status=status)).lead_status == expected


@pytest.mark.parametrize(
    ("status", "expected"), [("Affiliate Cap", "affiliate_cap"), ("Weird -- Value", "weird_value")]
)
def test_snake_status_is_stable_across_calls(status: str, expected: str) -> None:
    assert snake_status(status) == expected
    assert snake_status(status) == expected


def test_snake_status_many_distinct_values() -> None:
    values = [f"Status {i}" for i in range(1500)]
    assert [snake_status(v) for v in values] == [f"status_{i}" for i in range(1500)]
    assert snake_status("Status 1499") == "status_1499"


# -- sid_key ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sid", ["CA0001", "", "a", "CAe0c1f6d33b7a4f2a8b1d", "ünïcödé", "x" * 500])
def test_sid_key_is_the_str_hash(sid: str) -> None:
    # Only ever kept in memory (tests/test_state.py checks the file holds the sids).
    assert sid_key(sid) == hash(sid)
    assert sid_key(sid) == sid_key("".join(sid))


def test_sid_keys_are_distinct_and_use_the_whole_64_bit_range() -> None:
    keys = [sid_key(f"CA{i:08x}") for i in range(20_000)]
    assert len(set(keys)) == len(keys)
    assert all(-(2**63) <= k < 2**63 for k in keys)
    assert max(keys) > 2**62
    assert min(keys) < -(2**62)


def test_record_carries_its_sid_key(dates: CallDateParser) -> None:
    rec = only(one(dates, sid="CA-xyz"))
    assert rec.sid_key == sid_key("CA-xyz")


# -- extra labels -------------------------------------------------------------------------------


def test_extra_labels_are_read(dates: CallDateParser) -> None:
    labels = ("affiliate", "advertiser", "offer", "lf_state", "phone_label")
    rec = only(one(dates, labels))
    assert rec.extra == {
        "affiliate": "Acme Media",
        "advertiser": "Big Insurer",
        "offer": "Auto - National",
        "lf_state": "IL",
        "phone_label": "Radio spot",
    }


def test_no_extra_labels_by_default(dates: CallDateParser) -> None:
    assert only(one(dates)).extra == {}


@pytest.mark.parametrize(
    ("value", "label"),
    [(None, ""), (..., ""), (" Acme ", "Acme"), (42, "42"), (42.0, "42"), (4.5, "4.5"), (True, "")],
)
def test_extra_label_values(dates: CallDateParser, value: Any, label: str) -> None:
    assert only(one(dates, ("affiliate",), affiliate=value)).extra == {"affiliate": label}


def test_pii_is_not_kept_on_the_record(dates: CallDateParser) -> None:
    rec = only(one(dates, ("affiliate",)))
    text = repr(rec)
    for pii in ("3125550123", "Pat", "1 Main St", "60601", "example.invalid"):
        assert pii not in text


# -- what each bad record and value is about (for counting each once) -----------------------------


def test_unreadable_values_are_noted_against_their_calls_sid(dates: CallDateParser) -> None:
    # Tolerant path (a value the documented form does not allow) and fast path alike.
    tolerant = decode_page(body([record(sid="a", offer_price="x", talk_seconds="long")]), dates)
    assert sorted(tolerant.bad_value_keys) == [("offer_price", "a"), ("talk_seconds", "a")]
    fast_body = body([wire_record(sid="b"), wire_record(sid="c", affiliate_price="-1.00")])
    assert _decode_fast(fast_body, dates, ()) is not None
    assert decode_page(fast_body, dates).bad_value_keys == [("affiliate_price", "c")]
    # Read again, the same keys: a money string's cache must not hide a later bad read's sid.
    assert decode_page(fast_body, dates).bad_value_keys == [("affiliate_price", "c")]


def test_skipped_records_keep_one_key_from_live_to_finished(dates: CallDateParser) -> None:
    live = record(sid="", talk_seconds=10, total_seconds=20, lead_status=None)
    done = record(sid="", talk_seconds=300, total_seconds=340, lead_status="Connected")
    other = record(sid=None, call_date="2026-01-01 10:00:01")
    bad_date = record(sid="d", call_date="yesterday")
    pages = [decode_page(body(items), dates) for items in ([live, bad_date], [done, other, 42])]
    assert [k for k, _ in pages[0].invalid_keys] == ["missing_sid", "bad_call_date"]
    assert pages[0].invalid_keys[1] == ("bad_call_date", "d")
    unnamed = [key for key in pages[1].invalid_keys if key[0] == "missing_sid"]
    assert len(unnamed) == 2 and [k for k, _ in pages[1].invalid_keys].count("malformed") == 1
    # The same call, live then finished: one key; another call: another key.
    assert pages[0].invalid_keys[0] == unnamed[0]
    assert unnamed[1] != unnamed[0]
    assert pages[1].invalid == {"missing_sid": 2, "malformed": 1}


def test_records_that_nothing_identifies_are_not_merged(dates: CallDateParser) -> None:
    # No sid and no readable start: fifty such records are fifty, not one.
    items = [record(sid=None, call_date=date) for date in (None, "", "0000-00-00 00:00:00") * 50]
    page = decode_page(body(items), dates)
    assert len(set(page.invalid_keys)) == 150


def test_a_malformed_record_keeps_its_sid_as_key_while_live(dates: CallDateParser) -> None:
    # Not a readable record (an object where a scalar belongs), read live and then finished.
    live = record(sid=" S1 ", set_name={"id": 7}, talk_seconds=10)
    done = record(sid="S1", set_name={"id": 7}, talk_seconds=300, lead_status="Connected")
    unnamed = record(sid=None, set_name={"id": 7})
    keys = [decode_page(body([item, unnamed]), dates).invalid_keys for item in (live, done)]
    assert keys[0][0] == keys[1][0] == ("malformed", "S1")
    assert keys[0][1] == keys[1][1] != keys[0][0]  # the fields set at the start, as a key
