"""Ground truth: what a correct exporter must have counted over a window."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from leadflow_exporter.simulator.call import STATUS_KEYS, Call
from leadflow_exporter.simulator.catalog import SETS
from leadflow_exporter.simulator.model import TrafficModel
from leadflow_exporter.simulator.render import money


@dataclass(slots=True)
class SetTotals:
    set_id: int
    calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUS_KEYS.values(), 0))
    talk_seconds: int = 0
    total_seconds: int = 0
    offer_price_cents: int = 0
    affiliate_price_cents: int = 0
    margin_cents: int = 0
    offer_qualified: int = 0
    affiliate_qualified: int = 0
    reroute: int = 0
    repeat_affiliate_caller: int = 0
    contested: int = 0
    active: int = 0
    last_call_date: int | None = None

    def add(self, call: Call) -> None:
        self.calls[call.status_key] += 1
        self.talk_seconds += call.talk_seconds
        self.total_seconds += call.total_seconds
        self.offer_price_cents += call.offer_price_cents
        self.affiliate_price_cents += call.affiliate_price_cents
        self.margin_cents += call.margin_cents
        self.offer_qualified += call.offer_qualified
        self.affiliate_qualified += call.affiliate_qualified
        self.reroute += call.reroute
        self.repeat_affiliate_caller += call.repeat_affiliate_caller
        self.contested += call.contested
        if self.last_call_date is None or call.start > self.last_call_date:
            self.last_call_date = call.start

    def as_json(self) -> dict[str, Any]:
        return {
            "set_id": self.set_id,
            "calls": dict(self.calls),
            "calls_total": sum(self.calls.values()),
            "talk_seconds": self.talk_seconds,
            "total_seconds": self.total_seconds,
            "offer_price": money(self.offer_price_cents),
            "affiliate_price": money(self.affiliate_price_cents),
            "margin": money(self.margin_cents),
            "offer_qualified": self.offer_qualified,
            "affiliate_qualified": self.affiliate_qualified,
            "reroute": self.reroute,
            "repeat_affiliate_caller": self.repeat_affiliate_caller,
            "contested": self.contested,
            "active": self.active,
            "last_call_date": self.last_call_date,
        }


def countable(call: Call) -> bool:
    """Whether a correct exporter can count this call at all (malformed records it cannot)."""
    return call.malformed is None


def totals(finished: Iterable[Call], active: Iterable[Call] = ()) -> dict[str, SetTotals]:
    """Per set name, the totals of ``finished`` calls and the number of ``active`` ones.

    Duplicates (the same sid twice) are counted once, as a correct exporter counts them.
    """
    out = {s.name: SetTotals(set_id=s.set_id) for s in SETS}
    seen: set[str] = set()
    for call in finished:
        if countable(call) and call.sid not in seen:
            seen.add(call.sid)
            out[call.set_name].add(call)
    seen.clear()
    for call in active:
        if countable(call) and call.sid not in seen:
            seen.add(call.sid)
            out[call.set_name].active += 1
    return out


def compute_truth(model: TrafficModel, since: float, until: float) -> dict[str, Any]:
    """Totals of the calls that finished in ``(since, until]``, and the calls active at until."""
    per_set = totals(model.calls_ending_between(since, until), model.active_at(until))
    sets = {name: t.as_json() for name, t in per_set.items()}
    calls = dict.fromkeys(STATUS_KEYS.values(), 0)
    for s in sets.values():
        for key, n in s["calls"].items():
            calls[key] += n
    return {
        "since": since,
        "until": until,
        "calls": calls,
        "calls_total": sum(calls.values()),
        "active_total": sum(s["active"] for s in sets.values()),
        "sets": sets,
    }
