"""Turning a call into the JSON record the History Report API returns at a given moment."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from leadflow_exporter.simulator.call import (
    CONNECTED,
    MALFORMED_BAD_DATE,
    MALFORMED_NO_SID,
    Call,
)
from leadflow_exporter.simulator.model import EASTERN
from leadflow_exporter.simulator.scenarios import unit

Record = dict[str, Any]

# Fields a correct exporter does not count, so messy-data may leave them out without changing
# the ground truth.
_OPTIONAL_FIELDS: tuple[str, ...] = (
    "phone_label",
    "affiliate_number",
    "transfer_number",
    "entered_zip",
    "first_name",
    "last_name",
    "street_address",
    "city",
    "state",
    "zipcode",
    "recording_link",
)
_NUMBER_FIELDS = ("talk_minutes", "talk_seconds", "total_minutes", "total_seconds", "call_duration")
_BAD_CALL_DATES: tuple[str, ...] = ("0000-00-00 00:00:00", "", "N/A", "2026-13-45 99:99:99")


def money(cents: int) -> str:
    """Exact decimal string for an amount in cents: ``1250 -> "12.50"``, ``-300 -> "-3.00"``."""
    sign = "-" if cents < 0 else ""
    whole, frac = divmod(abs(cents), 100)
    return f"{sign}{whole}.{frac:02d}"


def tenths_of_minutes(seconds: int) -> float:
    # Half-up rounding as billing systems do, not Python's banker's rounding.
    return math.floor(seconds * 10 / 60 + 0.5) / 10


def eastern_call_date(start: int) -> str:
    return datetime.fromtimestamp(start, EASTERN).strftime("%Y-%m-%d %H:%M:%S")


def _yn(flag: bool) -> str:
    return "Y" if flag else "N"


def render(call: Call, t: float, seed: int) -> Record:
    """The record for ``call`` as served at simulated time ``t`` (active or finished)."""
    record = _render_clean(call, t)
    if call.scenario == "messy-data":
        record = _mess_up(record, call, seed)
    return record


def _render_clean(call: Call, t: float) -> Record:
    finished = call.is_finished(t)
    if finished:
        elapsed = call.total_seconds
        talk = call.talk_seconds
        status: str | None = call.lead_status
        transferred = call.lead_status == CONNECTED
    else:
        # In progress: durations so far; the outcome is only known once the call is transferred.
        elapsed = max(0, int(t) - call.start)
        talk = max(0, elapsed - call.ivr_seconds) if call.lead_status == CONNECTED else 0
        transferred = call.lead_status == CONNECTED and elapsed >= call.ivr_seconds
        status = CONNECTED if transferred else None
    return {
        "call_date": eastern_call_date(call.start),
        "set_name": call.set_name,
        "affiliate": call.affiliate,
        "phone_label": call.phone_label,
        "affiliate_number": call.affiliate_number,
        "advertiser": call.advertiser if transferred else None,
        "offer": call.offer if transferred else None,
        "transfer_number": call.transfer_number if transferred else None,
        "caller_id": call.caller_id,
        "lead_status": status,
        "entered_zip": call.entered_zip,
        "lf_state": call.lf_state,
        "first_name": call.first_name,
        "last_name": call.last_name,
        "street_address": call.street_address,
        "city": call.city,
        "state": call.state,
        "zipcode": call.zipcode,
        "reroute": _yn(call.reroute),
        "repeat_affiliate_caller": _yn(call.repeat_affiliate_caller),
        "affiliate_cap": _yn(call.affiliate_cap and finished),
        "offer_qualified": _yn(call.offer_qualified and finished),
        "offer_price": money(call.offer_price_cents) if finished else None,
        "affiliate_qualified": _yn(call.affiliate_qualified and finished),
        "affiliate_price": money(call.affiliate_price_cents) if finished else None,
        "margin": money(call.margin_cents) if finished else None,
        "talk_minutes": tenths_of_minutes(talk),
        "talk_seconds": talk,
        "total_minutes": tenths_of_minutes(elapsed),
        "total_seconds": elapsed,
        "call_duration": math.ceil(elapsed / 60),
        "recording_link": call.recording_link if finished else None,
        "contest_qualification": _yn(call.contested and finished),
        "sid": call.sid,
    }


def _pick(call: Call, seed: int, field: str, options: tuple[Any, ...]) -> Any:
    return options[int(unit(seed, call.sid, field) * len(options))]


def _messy_call_date(call: Call, seed: int) -> str:
    local = datetime.fromtimestamp(call.start, EASTERN)
    utc = datetime.fromtimestamp(call.start, UTC)
    variants = (
        local.strftime("%Y-%m-%d %H:%M:%S"),
        local.strftime("%Y-%m-%dT%H:%M:%S"),
        local.isoformat(),
        utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        utc.isoformat(),
    )
    return _pick(call, seed, "call_date", variants)


def _messy_number(call: Call, seed: int, field: str, value: int | float) -> Any:
    if value == 0:
        return _pick(call, seed, field, (0, "0", "", None))
    return _pick(call, seed, field, (value, str(value)))


def _messy_money(call: Call, seed: int, field: str, value: str | None) -> Any:
    if value is None:
        return _pick(call, seed, field, (None, ""))
    if value == "0.00":
        return _pick(call, seed, field, ("0.00", "$0.00", 0, "", None))
    if value.startswith("-"):
        return _pick(call, seed, field, (value, float(value)))
    return _pick(call, seed, field, (value, f"${value}", float(value)))


_FLAG_VARIANTS: dict[str, tuple[tuple[Any, ...], ...]] = {
    "Y": (("Y",), ("1",), ("true",), ("yes",), (True,)),
    "N": (("N",), ("0",), ("false",), ("no",), (False,)),
}


def _messy_flag(call: Call, seed: int, field: str, value: str) -> Any:
    return _pick(call, seed, field, _FLAG_VARIANTS[value])[0]


def _mess_up(record: Record, call: Call, seed: int) -> Record:
    out: Record = {}
    for key, value in record.items():
        if key in _OPTIONAL_FIELDS and unit(seed, call.sid, f"drop:{key}") < 0.15:
            continue
        if key == "call_date":
            value = _messy_call_date(call, seed)
        elif key in _NUMBER_FIELDS:
            value = _messy_number(call, seed, key, value)
        elif key in ("offer_price", "affiliate_price", "margin"):
            value = _messy_money(call, seed, key, value)
        elif key in (
            "reroute",
            "repeat_affiliate_caller",
            "affiliate_cap",
            "offer_qualified",
            "affiliate_qualified",
            "contest_qualification",
        ):
            value = _messy_flag(call, seed, key, value)
        elif value is None and key != "lead_status":
            value = _pick(call, seed, f"empty:{key}", (None, ""))
        out[key] = value
    # Fields the reference does not list; a tolerant decoder ignores them.
    out["set_id"] = _pick(call, seed, "set_id", (call.set_id, str(call.set_id)))
    out["lf_call_uuid"] = f"{call.sid[:8]}-{call.sid[8:12]}-{call.sid[12:16]}-{call.sid[16:]}"
    if unit(seed, call.sid, "extra") < 0.5:
        out["custom_fields"] = {"source": "simulator", "campaign": call.phone_label}
    if call.malformed == MALFORMED_NO_SID:
        variant = _pick(call, seed, "no_sid", ("missing", None, ""))
        if variant == "missing":
            del out["sid"]
        else:
            out["sid"] = variant
    elif call.malformed == MALFORMED_BAD_DATE:
        out["call_date"] = _pick(call, seed, "bad_date", _BAD_CALL_DATES)
    return out
