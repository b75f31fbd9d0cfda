"""The fast path of `decode_page` agrees with the tolerant reader on every page.

Random pages, from fixed seeds, mix the documented wire form with every variant the tolerant
reader accepts. Each page is read both ways in the same process, with the fast path's caches
warm from the pages before it (a value cached from one field must not change how another
field reads it), and the two results must be equal: the records, the invalid records by
reason and the unreadable values by field.
"""

from __future__ import annotations

import json
import random
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from leadflow_exporter import records
from leadflow_exporter.records import Page, _decode_fast, _decode_tolerant, decode_page
from leadflow_exporter.timeutil import CallDateParser

SEEDS = 200
PAGES_PER_SEED = 12
MAX_RECORDS_PER_PAGE = 30

_MISSING = object()

# A few sids, so pages repeat them (within a page and across pages); rarely padded or blank
# (a blank sid is wire form the fast path hands to the tolerant reader).
_SIDS = [f"{n:032x}" for n in range(0x1C876EC0, 0x1C876EC0 + 12)]
_WIRE_SIDS = [" 01c876ec ", "", "   ", "x", "0000000000000000000000001c876ec0 "]
_VARIANT_SIDS = [12345, 1.5, 7.0, True, None, _MISSING, 0]

# Dates around one minute, so the minute cache hits, with odd seconds and shapes beside it.
_WIRE_DATES = [
    "2026-11-17 10:00:00",
    "2026-11-17 10:00:59",
    "2026-11-17T10:00:30",
    "2026-11-17 10:00:60",
    "2026-11-17 10:00:5",
    "2026-11-17 10:00:5x",
    "2026-11-17 10:00 05",
    " 2026-11-17 10:00:07",
    "2026-11-17 10:00:07 ",
    "2026-11-17 10:01:00",
    "2026-11-01 01:30:15",  # the repeated hour in New York
    "2026-03-08 02:30:15",  # the skipped hour
    "2026-02-30 10:00:00",
    "2026-13-01 10:00:00",
    "2026-11-17T10:00:00Z",
    "2026-11-17T10:00:00+02:00",
    "2026-11-17 10:00:00.250",
    "2026-11-17",
    "2026-11-1",
    "yesterday",
    "",
    "０２０２６-11-17 10:00:00",
    "2026-11-17 10:00:٠٧",
]
_VARIANT_DATES = [1_763_370_000, 1.5e9, True, None, _MISSING]

_WIRE_DURATIONS = [0, 1, 85, 97, 3600, 10**12]
# Out of bounds: the fast path must leave these to the tolerant reader, which counts them.
_ODD_DURATIONS = [10**12 + 1, 10**15, 2**63, 2**64 + 5]
_VARIANT_DURATIONS = [
    -1,
    -(10**13),
    85.5,
    1e3,
    1e300,
    "85",
    " 97 ",
    "",
    "-5",
    "1e13",
    "abc",
    "nan",
    "inf",
    True,
    False,
    None,
    _MISSING,
]
_MINUTES = [1.4, "2.5", "", None, _MISSING, -1, "-1", "x", 0, 2e10, "1e11"]

_WIRE_MONEY = [
    "0.00",
    "12.50",
    "-12.50",
    "$12.50",
    "-$3.25",
    "(3.00)",
    "($4.10)",
    "1,234.56",
    " 7.25 ",
    "-0.00",
    "0.0001",
    "0.00005",
    "0.00015",
    "999999999999.99",
    "1000000000000",
    "-1000000000000",
    "1e13",
    "-1e13",
    "nan",
    "inf",
    "-inf",
    "abc",
    "",
    "  ",
    "()",
    "$",
    "--1",
]
_VARIANT_MONEY = [12.5, -3, 0, 1e13, -1e13, True, False]
# null and a missing key are the wire form for money (both read as no value).
_WIRE_ABSENT_MONEY = [None, _MISSING]

_WIRE_FLAGS = ["Y", "N", None, _MISSING]
_VARIANT_FLAGS = [
    "y",
    "n",
    "yes",
    "no",
    "YES",
    "true",
    "False",
    "1",
    "0",
    "t",
    "f",
    "",
    " Y ",
    "maybe",
    True,
    False,
    1,
    0,
    2.5,
]

_WIRE_TEXT = ["Auto Insurance", " Medicare ", "", "  ", "No Answer!", "Connected", None, _MISSING]
_VARIANT_TEXT = [5, 5.0, 2.5, True, False]

_FLAG_FIELDS = (
    "reroute",
    "repeat_affiliate_caller",
    "offer_qualified",
    "affiliate_qualified",
    "contest_qualification",
)
_LABEL_FIELDS = ("affiliate", "advertiser", "offer", "lf_state", "phone_label")


def _pick(
    rng: random.Random,
    common: list[Any],
    odd: list[Any],
    variant: list[Any],
    p_odd: float,
    p_variant: float,
) -> Any:
    draw = rng.random()
    if draw < p_variant and variant:
        return rng.choice(variant)
    if draw < p_variant + p_odd and odd:
        return rng.choice(odd)
    return rng.choice(common)


def _record(rng: random.Random, p: float, p_odd: float) -> Any:
    if p and rng.random() < p / 4:
        return rng.choice([None, 5, "record", [], [1, 2]])
    record: dict[str, Any] = {
        "sid": _pick(rng, _SIDS, _WIRE_SIDS, _VARIANT_SIDS, p_odd, p),
        "call_date": _pick(rng, _WIRE_DATES[:2], _WIRE_DATES, _VARIANT_DATES, 0.2, p),
        "talk_seconds": _pick(rng, _WIRE_DURATIONS, _ODD_DURATIONS, _VARIANT_DURATIONS, p_odd, p),
        "total_seconds": _pick(rng, _WIRE_DURATIONS, _ODD_DURATIONS, _VARIANT_DURATIONS, p_odd, p),
        "talk_minutes": rng.choice(_MINUTES),
        "total_minutes": rng.choice(_MINUTES),
        "set_name": _pick(rng, _WIRE_TEXT, [], _VARIANT_TEXT, 0.0, p),
        "lead_status": _pick(rng, _WIRE_TEXT, [], _VARIANT_TEXT, 0.0, p),
        "caller_id": "4045550102",
    }
    for name in ("offer_price", "affiliate_price", "margin"):
        record[name] = _pick(rng, _WIRE_MONEY, _WIRE_ABSENT_MONEY, _VARIANT_MONEY, 0.15, p)
    for name in _FLAG_FIELDS:
        record[name] = _pick(rng, _WIRE_FLAGS, [], _VARIANT_FLAGS, 0.0, p)
    for name in _LABEL_FIELDS:
        record[name] = _pick(rng, _WIRE_TEXT, [], _VARIANT_TEXT, 0.0, p)
    if rng.random() < 0.2:
        # Keys in another order: the decoders must not depend on it.
        record = dict(rng.sample(list(record.items()), len(record)))
    return {key: value for key, value in record.items() if value is not _MISSING}


def _body(rng: random.Random) -> bytes:
    # Most pages are all wire form, so the fast path reads them; the rest carry variants.
    p = rng.choice([0.0, 0.0, 0.0, 0.01, 0.05, 0.3])
    # Wire-form values the fast path cannot take as they are (a blank sid, a huge duration).
    p_odd = rng.choice([0.0, 0.0, 0.01])
    items = [_record(rng, p, p_odd) for _ in range(rng.randint(0, MAX_RECORDS_PER_PAGE))]
    shape = rng.random()
    if shape < 0.6:
        return json.dumps(items).encode()
    if shape < 0.8:
        return json.dumps({"response": items, "total": len(items)}).encode()
    return json.dumps({"response": None, "data": items}).encode()


def _summary(page: Page) -> tuple[Any, ...]:
    return (
        page.size,
        page.records,
        {k: v for k, v in page.invalid.items() if v},
        {k: v for k, v in page.bad_values.items() if v},
        # A record nothing identifies gets a key of its own (a bare object) on every read.
        sorted(((r, "<own>" if type(k) is object else k) for r, k in page.invalid_keys), key=repr),
        sorted(page.bad_value_keys, key=repr),
    )


def _reset_caches() -> None:
    records._price_cache.clear()
    records._margin_cache.clear()
    records._status_cache.clear()
    records._minute_bases.clear()


@pytest.mark.parametrize("seed", range(SEEDS))
def test_fast_path_agrees_with_tolerant_reader(seed: int) -> None:
    rng = random.Random(seed)
    _reset_caches()
    dates = CallDateParser(ZoneInfo("America/New_York"))
    extra_labels = rng.choice([(), (), ("affiliate",), _LABEL_FIELDS])
    for index in range(PAGES_PER_SEED):
        body = _body(rng)
        expected = _summary(_decode_tolerant(body, dates, extra_labels))
        fast = _decode_fast(body, dates, extra_labels)
        where = f"seed {seed}, page {index}, labels {extra_labels}: {body.decode()[:3000]}"
        if fast is not None:
            got = _summary(fast)
            assert got[2:] == expected[2:], where
            assert (got[0], len(got[1])) == (expected[0], len(expected[1])), where
            for number, (mine, theirs) in enumerate(zip(got[1], expected[1], strict=True)):
                assert mine == theirs, f"record {number} of {where}"
        assert _summary(decode_page(body, dates, extra_labels)) == expected, where


def test_fuzz_pages_often_take_the_fast_path() -> None:
    """The comparison above is only worth something when the fast path reads the page."""
    fast = total = 0
    for seed in range(SEEDS):
        rng = random.Random(seed)
        dates = CallDateParser(ZoneInfo("America/New_York"))
        extra_labels = rng.choice([(), (), ("affiliate",), _LABEL_FIELDS])
        for _ in range(PAGES_PER_SEED):
            body = _body(rng)
            total += 1
            page = _decode_fast(body, dates, extra_labels)
            if page is not None and page.records:
                fast += 1
    assert fast >= total * 0.3, (fast, total)
