"""Tolerant decoding of History Report pages into call records.

The API's value types are not documented precisely (see the reference's "Unknowns"), so every
field accepts every plausible form. A record that cannot be counted at all (no `sid`, no
readable `call_date`, not an object) is reported with a reason and skipped; an unreadable value
in any other field reads as zero and is reported by field name, and the call still counts.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Any, Literal

import msgspec

from leadflow_exporter.sightings import Sighting
from leadflow_exporter.timeutil import CallDateParser

Scalar = str | int | float | bool | None

# Money is summed exactly in ten-thousandths of a dollar: float sums drift, and these totals
# are reconciled against invoices.
MONEY_SCALE = 10_000
# Largest magnitude a number field may have; beyond it the value is unreadable.
MAX_ABS_VALUE = 1e12
_NON_NEGATIVE_MONEY = frozenset({"offer_price", "affiliate_price"})


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


_WireFlag = Literal["Y", "N"]
# Every int in these bounds reads exactly as a float, and as itself in `_Reader.number`.
_WireDuration = Annotated[int, msgspec.Meta(ge=0, le=int(MAX_ABS_VALUE))]


class _WireRecord(msgspec.Struct, gc=False):
    """The counted fields, narrowed to the form the API documents and normally sends.

    A page decodes into this in one pass when every record is in that form (almost always),
    and the converter can then skip the per-value type checks. A variant anywhere in the page
    makes the decode fail, and the page is read again through `RawRecord`, field by field.
    Every value this accepts is one `RawRecord` accepts too, read to the same result. Fewer
    fields than `RawRecord` make a faster decoder: the label fields are only decoded when
    labels are configured (`_WireLabelledRecord`).
    """

    sid: str
    call_date: str
    # Checked by the decoder, in C: a null, missing, negative or out-of-bounds duration
    # (beyond MAX_ABS_VALUE), or a flag other than "Y", "N" or null, sends the page to the
    # tolerant reader, which counts the unreadable ones (`_convert`).
    talk_seconds: _WireDuration
    total_seconds: _WireDuration
    set_name: str | None = None
    lead_status: str | None = None
    reroute: _WireFlag | None = None
    repeat_affiliate_caller: _WireFlag | None = None
    offer_qualified: _WireFlag | None = None
    offer_price: str | None = None
    affiliate_qualified: _WireFlag | None = None
    affiliate_price: str | None = None
    margin: str | None = None
    contest_qualification: _WireFlag | None = None


class _WireLabelledRecord(_WireRecord, gc=False):
    affiliate: str | None = None
    advertiser: str | None = None
    offer: str | None = None
    lf_state: str | None = None
    phone_label: str | None = None


class _WireEnvelope(msgspec.Struct, gc=False):
    response: list[_WireRecord] | None = None
    data: list[_WireRecord] | None = None


class _WireLabelledEnvelope(msgspec.Struct, gc=False):
    response: list[_WireLabelledRecord] | None = None
    data: list[_WireLabelledRecord] | None = None


_wire_decoder = msgspec.json.Decoder(list[_WireRecord] | _WireEnvelope)
_wire_labelled_decoder = msgspec.json.Decoder(list[_WireLabelledRecord] | _WireLabelledEnvelope)


class _NotWireForm(Exception):
    """A record needs the tolerant reader; the page is read again that way."""


class EnvelopeError(ValueError):
    """The body is not one of the three accepted shapes."""


class CallRecord(msgspec.Struct, gc=False):
    """One call, normalised. A Struct rather than a dataclass: built in C, and left out of the
    garbage collector's work (it holds no references that could form a cycle), which matters
    when a catch-up creates a hundred thousand of them."""

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
    # Each with what it is about, so a record read again is not counted again (`Sightings`):
    # (reason, the record's key) per skipped record, (field, sid) per unreadable value.
    invalid_keys: list[Sighting] = field(default_factory=list)
    bad_value_keys: list[Sighting] = field(default_factory=list)

    @property
    def invalid(self) -> Counter[str]:
        """Skipped records by reason."""
        return Counter(reason for reason, _ in self.invalid_keys)

    @property
    def bad_values(self) -> Counter[str]:
        """Unreadable values by field."""
        return Counter(name for name, _ in self.bad_value_keys)


_TRUE = frozenset({"y", "yes", "true", "1", "t"})
_FALSE = frozenset({"n", "no", "false", "0", "f", ""})
_status_cache: dict[str, str] = {}
_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def sid_key(sid: str) -> int:
    """The in-memory dedup key of a sid: Python's own str hash (64-bit SipHash).

    An int takes a third of a sid's memory, and this hash is computed in C once per str and
    cached on it, where a blake2b digest cost 0.45 µs a call. It is salted per process
    (PYTHONHASHSEED), so it must never be written anywhere: the state file keeps the sids
    themselves and hashes them again when it is loaded.
    """
    return hash(sid)


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

    __slots__ = ("keys", "sid")

    def __init__(self, keys: list[Sighting]) -> None:
        self.keys = keys
        self.sid = ""  # the record being read

    def note(self, name: str) -> None:
        self.keys.append((name, self.sid))

    def number(self, value: Scalar, name: str) -> float:
        if value is None:
            return 0.0
        if isinstance(value, bool):
            self.note(name)
            return 0.0
        if isinstance(value, int | float):
            return self._bounded(float(value), name)
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
            self.note(name)
            return 0.0
        return self._bounded(-number if negative else number, name)

    def _bounded(self, number: float, name: str) -> float:
        # NaN, infinities and absurd magnitudes read as unreadable: one such value must not
        # overflow the exact money sums and stop every later cycle at the same record.
        if not -MAX_ABS_VALUE <= number <= MAX_ABS_VALUE:
            self.note(name)
            return 0.0
        return number

    def money(self, value: Scalar, name: str) -> int:
        amount = self.number(value, name)
        if amount < 0 and name in _NON_NEGATIVE_MONEY:
            # A negative price would make a revenue or payout counter go down, which
            # Prometheus reads as a counter reset. Margins may be negative; prices not.
            self.note(name)
            return 0
        return round(amount * MONEY_SCALE)

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
            self.note(name)
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
        page.invalid_keys.append(("missing_sid", unnamed_call_key(partial(getattr, raw), dates)))
        return
    sid_text = sid.strip() if isinstance(sid, str) else _label(sid)
    call_ts = dates.parse(raw.call_date)
    if call_ts is None:
        page.invalid_keys.append(("bad_call_date", sid_text))
        return
    reader.sid = sid_text
    talk = reader.number(raw.talk_seconds, "talk_seconds")
    if raw.talk_seconds in (None, "") and raw.talk_minutes not in (None, ""):
        talk = reader.number(raw.talk_minutes, "talk_minutes") * 60.0
    total = reader.number(raw.total_seconds, "total_seconds")
    if raw.total_seconds in (None, "") and raw.total_minutes not in (None, ""):
        total = reader.number(raw.total_minutes, "total_minutes") * 60.0
    if talk < 0:
        reader.note("talk_seconds")
        talk = 0.0
    if total < 0:
        reader.note("total_seconds")
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


_FIXED_AT_START = ("call_date", "set_name", "affiliate", "phone_label", "lf_state")


def unnamed_call_key(field_of: Callable[[str], object], dates: CallDateParser) -> Hashable:
    """A key for a call record without a sid: the fields set when the call starts, which stay
    the same while the live list shows it and once it has finished (its durations and status
    change). Without a readable start time nothing tells such records apart, and merging them
    would hide how many there are: each then gets a key of its own, counted at every read."""
    if dates.parse(field_of("call_date")) is None:
        return object()
    values = (field_of(name) for name in _FIXED_AT_START[1:])
    return (field_of("call_date"), *(v if _is_scalar(v) else repr(v) for v in values))


def malformed_key(item: object, dates: CallDateParser) -> Hashable:
    """A key for an item that is not a readable record: its sid when it has one, else the
    fields set when the call starts, as for a record without a sid."""
    if not isinstance(item, dict):
        return object()
    sid = item.get("sid")
    if isinstance(sid, str) and sid.strip():
        return sid.strip()
    if isinstance(sid, int) and not isinstance(sid, bool):
        return str(sid)
    return unnamed_call_key(item.get, dates)


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, str | int | float)


def _raw_records(body: bytes) -> tuple[list[RawRecord], list[object]]:
    """The page's records, and the items in it that could not be read as records at all."""
    try:
        decoded = _decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return _raw_records_one_by_one(body)
    if isinstance(decoded, list):
        return decoded, []
    items = decoded.response if decoded.response is not None else decoded.data
    if items is None:
        raise EnvelopeError("JSON object without a 'response' or 'data' array")
    return items, []


def _raw_records_one_by_one(body: bytes) -> tuple[list[RawRecord], list[object]]:
    try:
        value: Any = _generic_decoder.decode(body)
    except msgspec.DecodeError as exc:
        # msgspec refuses numbers beyond a double (1e400); the standard library reads them
        # as infinity, which the field readers then count as unreadable values. Without
        # this, one such number would fail its whole page on every retry, for good.
        try:
            value = json.loads(body)
        except (ValueError, RecursionError):
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
    malformed: list[object] = []
    for item in value:
        try:
            records.append(msgspec.convert(item, RawRecord))
        except msgspec.ValidationError:
            malformed.append(item)
    return records, malformed


def _wire_records(body: bytes, labelled: bool) -> list[_WireRecord] | None:
    """The page's records when all of them are in the documented form, else None."""
    try:
        decoded = (_wire_labelled_decoder if labelled else _wire_decoder).decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    if isinstance(decoded, list):
        return decoded
    return decoded.response if decoded.response is not None else decoded.data


# Conversion caches for the hot path. Money strings and statuses repeat across calls (a
# set's offers have few prices); call dates repeat their minute. Each is bounded.
_CACHE_LIMIT = 100_000
# Money strings read to units, one cache per reading rule: a price and a margin do not read
# the same string alike ("-5.00" is a margin, but an unreadable price). Only readable values
# are cached, so a hit needs no check.
_price_cache: dict[str, int] = {}
_margin_cache: dict[str, int] = {}
_SECONDS = {f"{s:02d}": s for s in range(60)}
# Epoch of each "YYYY-MM-DD HH:MM" (either separator), per date parser: its time zone.
_minute_bases: dict[CallDateParser, dict[str, float]] = {}


def _money_units(value: str | None, name: str, reader: _Reader, cache: dict[str, int]) -> int:
    """`reader.money(value, name)`, kept in `cache` (the one for `name`'s rule) when readable."""
    if value is None:
        return 0
    bad_before = len(reader.keys)
    units = reader.money(value, name)
    if len(reader.keys) == bad_before:
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[value] = units
    return units


def _call_ts(value: str, dates: CallDateParser, minutes: dict[str, float]) -> float | None:
    """`dates.parse(value)`, remembering the minute's epoch when the value is the wire form."""
    call_ts = dates.parse(value)
    if call_ts is not None and len(value) == 19 and value[16] == ":":
        seconds = _SECONDS.get(value[17:])
        if seconds is not None:
            if len(minutes) >= _CACHE_LIMIT:
                minutes.clear()
            minutes[value[:16]] = call_ts - seconds
    return call_ts


def _convert_wire(
    raws: list[_WireRecord],
    dates: CallDateParser,
    extra_labels: tuple[str, ...],
    page: Page,
    reader: _Reader,
) -> None:
    """`_convert` for records in the documented form: the same results, far fewer checks.

    This loop is most of the exporter's CPU time during a catch-up, hence the local names and
    the inlined look-ups. Durations and flags were checked by the decoder; a record it cannot
    take as it is (a blank sid) raises `_NotWireForm`, and the caller reads the whole page the
    tolerant way.
    """
    minutes = _minute_bases.get(dates)
    if minutes is None:
        if len(_minute_bases) >= 16:
            _minute_bases.clear()
        minutes = _minute_bases[dates] = {}
    minute_get = minutes.get
    seconds_get = _SECONDS.get
    price_get = _price_cache.get
    margin_get = _margin_cache.get
    status_get = _status_cache.get
    append = page.records.append
    key_of = hash
    for raw in raws:
        sid = raw.sid.strip()
        if not sid:
            raise _NotWireForm
        call_date = raw.call_date
        base = minute_get(call_date[:16])
        seconds = seconds_get(call_date[17:]) if len(call_date) == 19 else None
        if base is not None and seconds is not None and call_date[16] == ":":
            call_ts = base + seconds
        else:
            parsed = _call_ts(call_date, dates, minutes)
            if parsed is None:
                page.invalid_keys.append(("bad_call_date", sid))
                continue
            call_ts = parsed
        # A money string not in its cache may be unreadable, noted against the record's sid.
        value = raw.offer_price
        offer_price = price_get(value) if value is not None else 0
        if offer_price is None:
            reader.sid = sid
            offer_price = _money_units(value, "offer_price", reader, _price_cache)
        value = raw.affiliate_price
        affiliate_price = price_get(value) if value is not None else 0
        if affiliate_price is None:
            reader.sid = sid
            affiliate_price = _money_units(value, "affiliate_price", reader, _price_cache)
        value = raw.margin
        if value is None or value == "":
            margin = offer_price - affiliate_price
        else:
            margin = margin_get(value)
            if margin is None:
                reader.sid = sid
                margin = _money_units(value, "margin", reader, _margin_cache)
        value = raw.lead_status
        status = status_get(value) if value is not None else "unknown"
        if status is None:
            status = snake_status(value)
        value = raw.set_name
        set_name = (value.strip() if value is not None else "") or "unknown"
        # The decoder let through only "Y", "N" and null.
        offer_qualified = raw.offer_qualified == "Y"
        affiliate_qualified = raw.affiliate_qualified == "Y"
        reroute = raw.reroute == "Y"
        repeat = raw.repeat_affiliate_caller == "Y"
        contested = raw.contest_qualification == "Y"
        append(
            CallRecord(
                sid,
                key_of(sid),
                call_ts,
                set_name,
                status,
                {name: _label(getattr(raw, name)) for name in extra_labels} if extra_labels else {},
                float(raw.talk_seconds),
                float(raw.total_seconds),
                offer_price,
                affiliate_price,
                margin,
                offer_qualified,
                affiliate_qualified,
                reroute,
                repeat,
                contested,
            )
        )


def _decode_fast(body: bytes, dates: CallDateParser, extra_labels: tuple[str, ...]) -> Page | None:
    """The page read through the fast path, or None when it needs the tolerant reader."""
    wire = _wire_records(body, bool(extra_labels))
    if wire is None:
        return None
    page = Page(size=len(wire))
    try:
        _convert_wire(wire, dates, extra_labels, page, _Reader(page.bad_value_keys))
    except _NotWireForm:
        return None
    return page


def _decode_tolerant(body: bytes, dates: CallDateParser, extra_labels: tuple[str, ...]) -> Page:
    """The page read field by field: the reference `_decode_fast` must agree with."""
    raws, malformed = _raw_records(body)
    page = Page(size=len(raws) + len(malformed))
    page.invalid_keys.extend(("malformed", malformed_key(item, dates)) for item in malformed)
    reader = _Reader(page.bad_value_keys)
    for raw in raws:
        _convert(raw, dates, extra_labels, page, reader)
    return page


def decode_page(body: bytes, dates: CallDateParser, extra_labels: tuple[str, ...] = ()) -> Page:
    """Decode one page. Raises EnvelopeError when the body as a whole is unusable."""
    page = _decode_fast(body, dates, extra_labels)
    return page if page is not None else _decode_tolerant(body, dates, extra_labels)
