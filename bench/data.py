"""Realistic History API pages, rendered by the simulator's traffic model."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from leadflow_exporter.simulator import TrafficModel, render

PAGE_SIZE = 250
# A Tuesday, midnight Eastern: a week of traffic from here has busy days and quiet nights.
START = datetime(2026, 11, 17, 5, 0, tzinfo=UTC).timestamp()
_encoder = msgspec.json.Encoder()


def finished_records(count: int, *, seed: int = 1, volume: float = 40.0) -> list[dict[str, object]]:
    """`count` finished calls in start order, as the API serves them once they have ended."""
    model = TrafficModel(seed=seed, volume=volume, traffic_start=int(START))
    calls = []
    for call in model.calls_between(START, START + 30 * 86400):
        calls.append(call)
        if len(calls) >= count:
            break
    now = max(call.end for call in calls) + 1
    return [render(call, now, seed) for call in calls]


def pages(records: list[dict[str, object]], page_size: int = PAGE_SIZE) -> list[bytes]:
    """The records as response bodies of `page_size` records each, as the API pages them."""
    return [
        _encoder.encode({"response": records[i : i + page_size]})
        for i in range(0, len(records), page_size)
    ]
