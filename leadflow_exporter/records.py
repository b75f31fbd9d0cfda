"""Tolerant decoding of History Report pages into call records.

The API's value types are not documented precisely (see the reference's "Unknowns"), so every
field accepts every plausible form. A record that cannot be counted at all (no `sid`, no
readable `call_date`, not an object) is reported with a reason and skipped; an unreadable value
in any other field reads as zero and is reported by field name, and the call still counts.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgspec

from leadflow_exporter.timeutil import CallDateParser

Scalar = str | int | float | bool | None

# Money is summed exactly in ten-thousandths of a dollar: float sums drift, and these totals
# are reconciled against invoices.
MONEY_SCALE = 10_000


class RawRecord(msgspec.Struct, gc=False):
    """The fields the exporter uses; any others in the payload are ignored."""

    sid: Scalar = None
    call_date: Scalar = None
    set_name: Scalar = None
    lead_status: Scalar = None
    affiliate: Scalar = None
    advertiser: Scalar = None
    offer: Scalar = None
    lf_state: Scalar = None
    phone_label: Scalar = None
    reroute: Scalar = None
    repeat_affiliate_caller: Scalar = None
    offer_qualified: Scalar = None
    offer_price: Scalar = None
    affiliate_qualified: Scalar = None
    affiliate_price: Scalar = None
    margin: Scalar = None
    talk_seconds: Scalar = None
    talk_minutes: Scalar = None
    total_seconds: Scalar = None
    total_minutes: Scalar = None
    contest_qualification: Scalar = None


class _Envelope(msgspec.Struct, gc=False):
    response: list[RawRecord] | None = None
    data: list[RawRecord] | None = None


_PAGE_TYPE = list[RawRecord] | _Envelope
_decoder = msgspec.json.Decoder(_PAGE_TYPE)
_generic_decoder = msgspec.json.Decoder()


class EnvelopeError(ValueError):
    """The body is not one of the three accepted shapes."""


@dataclass(slots=True)
class CallRecord:
    sid: str
    sid_key: int
    call_ts: float
    set_name: str
    lead_status: str
    extra: dict[str, str]
    talk_seconds: float
    total_seconds: float
    offer_price: int
    affiliate_price: int
    margin: int
    offer_qualified: bool
    affiliate_qualified: bool
    reroute: bool
    repeat_affiliate_caller: bool
    contested: bool


@dataclass
class Page:
    records: list[CallRecord] = field(default_factory=list)
    size: int = 0
    invalid: Counter[str] = field(default_factory=Counter)
    bad_values: Counter[str] = field(default_factory=Counter)


_TRUE = frozenset({"y", "yes", "true", "1", "t"})
_FALSE = frozenset({"n", "no", "false", "0", "f", ""})
_status_cache: dict[str, str] = {}
_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def sid_key(sid: str) -> int:
    """A stable 63-bit key for a sid: a third of a str's memory, and it fits SQLite's INTEGER."""
    digest = hashlib.blake2b(sid.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def snake_status(value: Scalar) -> str:
    if value is None or isinstance(value, bool):
        return "unknown"
    text = str(value)
    cached = _status_cache.get(text)
    if cached is None:
        cached = _NON_ALNUM.sub("_", text.strip().lower()).strip("_") or "unknown"
        if len(_status_cache) < 1000:
            _status_cache[text] = cached
    return cached


def _label(value: Scalar) -> str:
    if value is None or isinstance(value, bool):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


class _Reader:
    """Per-record field readers that note unreadable values instead of failing."""

    __slots__ = ("bad",)

    def __init__(self, bad: Counter[str]) -> None:
        self.bad = bad

    def number(self, value: Scalar, name: str) -> float:
        if value is None:
            return 0.0
        if isinstance(value, bool):
            self.bad[name] += 1
            return 0.0
        if isinstance(value, int | float):
            return float(value)
        text = value.strip()
        if not text:
            return 0.0
        negative = False
        if text[0] == "(" and text[-1] == ")":
            negative, text = True, text[1:-1]
        text = text.replace("$", "").replace(",", "").strip()
        try:
            number = float(text)
        except ValueError:
            self.bad[name] += 1
            return 0.0
        if number != number or number in (float("inf"), float("-inf")):
            self.bad[name] += 1
            return 0.0
        return -number if negative else number

    def money(self, value: Scalar, name: str) -> int:
        return round(self.number(value, name) * MONEY_SCALE)

    def flag(self, value: Scalar, name: str) -> bool:
        if value is None:
            return False
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float):
            return value != 0
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text not in _FALSE:
            self.bad[name] += 1
        return False


def _convert(
    raw: RawRecord,
    dates: CallDateParser,
    extra_labels: tuple[str, ...],
    page: Page,
    reader: _Reader,
) -> None:
    sid = raw.sid
    if isinstance(sid, bool) or sid is None or (isinstance(sid, str) and not sid.strip()):
        page.invalid["missing_sid"] += 1
        return
    sid_text = sid.strip() if isinstance(sid, str) else _label(sid)
    call_ts = dates.parse(raw.call_date)
    if call_ts is None:
        page.invalid["bad_call_date"] += 1
        return
    talk = reader.number(raw.talk_seconds, "talk_seconds")
    if raw.talk_seconds in (None, "") and raw.talk_minutes not in (None, ""):
        talk = reader.number(raw.talk_minutes, "talk_minutes") * 60.0
    total = reader.number(raw.total_seconds, "total_seconds")
    if raw.total_seconds in (None, "") and raw.total_minutes not in (None, ""):
        total = reader.number(raw.total_minutes, "total_minutes") * 60.0
    if talk < 0:
        reader.bad["talk_seconds"] += 1
        talk = 0.0
    if total < 0:
        reader.bad["total_seconds"] += 1
        total = 0.0
    offer_price = reader.money(raw.offer_price, "offer_price")
    affiliate_price = reader.money(raw.affiliate_price, "affiliate_price")
    margin = (
        offer_price - affiliate_price
        if raw.margin is None or raw.margin == ""
        else reader.money(raw.margin, "margin")
    )
    page.records.append(
        CallRecord(
            sid=sid_text,
            sid_key=sid_key(sid_text),
            call_ts=call_ts,
            set_name=_label(raw.set_name) or "unknown",
            lead_status=snake_status(raw.lead_status),
            extra={name: _label(getattr(raw, name)) for name in extra_labels},
            talk_seconds=talk,
            total_seconds=total,
            offer_price=offer_price,
            affiliate_price=affiliate_price,
            margin=margin,
            offer_qualified=reader.flag(raw.offer_qualified, "offer_qualified"),
            affiliate_qualified=reader.flag(raw.affiliate_qualified, "affiliate_qualified"),
            reroute=reader.flag(raw.reroute, "reroute"),
            repeat_affiliate_caller=reader.flag(
                raw.repeat_affiliate_caller, "repeat_affiliate_caller"
            ),
            contested=reader.flag(raw.contest_qualification, "contest_qualification"),
        )
    )


def _raw_records(body: bytes) -> tuple[list[RawRecord], int]:
    """The page's records, and how many items in it could not be read as records at all."""
    try:
        decoded = _decoder.decode(body)
    except msgspec.ValidationError:
        return _raw_records_one_by_one(body)
    except msgspec.DecodeError as exc:
        raise EnvelopeError(f"body is not valid JSON: {exc}") from None
    if isinstance(decoded, list):
        return decoded, 0
    items = decoded.response if decoded.response is not None else decoded.data
    if items is None:
        raise EnvelopeError("JSON object without a 'response' or 'data' array")
    return items, 0


def _raw_records_one_by_one(body: bytes) -> tuple[list[RawRecord], int]:
    try:
        value: Any = _generic_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise EnvelopeError(f"body is not valid JSON: {exc}") from None
    if isinstance(value, dict):
        for key in ("response", "data"):
            if isinstance(value.get(key), list):
                value = value[key]
                break
        else:
            keys = ", ".join(sorted(map(str, value))[:5])
            raise EnvelopeError(f"JSON object without a 'response' or 'data' array (keys: {keys})")
    if not isinstance(value, list):
        raise EnvelopeError(f"expected a JSON array of records, got {type(value).__name__}")
    records: list[RawRecord] = []
    malformed = 0
    for item in value:
        try:
            records.append(msgspec.convert(item, RawRecord))
        except msgspec.ValidationError:
            malformed += 1
    return records, malformed


def decode_page(body: bytes, dates: CallDateParser, extra_labels: tuple[str, ...] = ()) -> Page:
    """Decode one page. Raises EnvelopeError when the body as a whole is unusable."""
    raws, malformed = _raw_records(body)
    page = Page(size=len(raws) + malformed)
    if malformed:
        page.invalid["malformed"] += malformed
    reader = _Reader(page.bad_values)
    for raw in raws:
        _convert(raw, dates, extra_labels, page, reader)
    return page
