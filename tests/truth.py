"""Comparing what the exporter counted with the simulator's ground truth, exactly."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from leadflow_exporter.ledger import Ledger
from leadflow_exporter.records import MONEY_SCALE


def _usd(units: int) -> Decimal:
    return Decimal(units) / MONEY_SCALE


def exporter_view(ledger: Ledger) -> dict[str, dict[str, Any]]:
    """The ledger's totals in the shape of the simulator's truth, per set."""
    out: dict[str, dict[str, Any]] = {}
    for (set_name, status, *_), count in ledger.totals.calls.items():
        entry = out.setdefault(set_name, {"calls": {}})
        entry["calls"][status] = entry["calls"].get(status, 0) + count
    for name, t in ledger.totals.sets.items():
        entry = out.setdefault(name, {"calls": {}})
        entry.update(
            talk_seconds=t.talk_seconds,
            total_seconds=t.call_seconds,
            offer_price=_usd(t.revenue),
            affiliate_price=_usd(t.payout),
            margin=_usd(t.margin),
            offer_qualified=t.qualified_offer,
            affiliate_qualified=t.qualified_affiliate,
            reroute=t.reroute,
            repeat_affiliate_caller=t.repeat_affiliate_caller,
            contested=t.contested,
        )
    return out


def truth_view(truth: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, s in truth["sets"].items():
        if not s["calls_total"]:
            continue
        out[name] = {
            "calls": {k: v for k, v in s["calls"].items() if v},
            "talk_seconds": float(s["talk_seconds"]),
            "total_seconds": float(s["total_seconds"]),
            "offer_price": Decimal(s["offer_price"]),
            "affiliate_price": Decimal(s["affiliate_price"]),
            "margin": Decimal(s["margin"]),
            "offer_qualified": s["offer_qualified"],
            "affiliate_qualified": s["affiliate_qualified"],
            "reroute": s["reroute"],
            "repeat_affiliate_caller": s["repeat_affiliate_caller"],
            "contested": s["contested"],
        }
    return out


def counted_view(ledger: Ledger) -> dict[str, dict[str, Any]]:
    """The exporter's view without zero-valued series and sets that counted nothing."""
    out = {}
    for name, entry in exporter_view(ledger).items():
        calls = {k: v for k, v in entry["calls"].items() if v}
        if not calls:
            continue
        out[name] = {**entry, "calls": calls}
    return out


def assert_matches_truth(ledger: Ledger, truth: dict[str, Any]) -> None:
    expected = truth_view(truth)
    actual = counted_view(ledger)
    assert actual == expected
    assert sum(sum(e["calls"].values()) for e in actual.values()) == truth["calls_total"]
