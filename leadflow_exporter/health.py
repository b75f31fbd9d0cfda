"""The exporter's own health: what it asked the API, what went wrong, how each poll went."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from leadflow_exporter.sightings import Sightings

QUERIES = ("history", "active", "sid")


@dataclass
class QueryStatus:
    last_attempt: float = 0.0
    last_success: float = 0.0
    last_duration: float = 0.0
    last_records: int = 0
    last_error: str = ""
    ok: bool | None = None


@dataclass
class Health:
    api_requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    api_errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    records: Counter[str] = field(default_factory=Counter)
    # Each bad record and value once, however often it is read again (`bad_data_seen`).
    invalid_records: Counter[str] = field(default_factory=Counter)
    invalid_values: Counter[str] = field(default_factory=Counter)
    bad_data_seen: Sightings = field(default_factory=Sightings)
    series_dropped: Counter[str] = field(default_factory=Counter)
    followups_abandoned: int = 0
    queries: dict[str, QueryStatus] = field(
        default_factory=lambda: {q: QueryStatus() for q in QUERIES}
    )
    cycles: int = 0
    last_cycle_ok: bool = False
    last_cycle_end: float = 0.0
    last_cycle_duration: float = 0.0
    last_cycle_error: str = ""
    ready: bool = False
    config_reload_ok: bool = True
    config_reload_time: float = 0.0
