"""Ingest figures: records/s through decode -> normalise -> dedup -> totals, beside orjson."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from leadflow_exporter.health import Health
from leadflow_exporter.ledger import CycleBatch, Ledger, MemoryStore, Store
from leadflow_exporter.records import decode_page
from leadflow_exporter.state import SQLiteStore
from leadflow_exporter.timeutil import CallDateParser, zone

try:
    import orjson
except ImportError:  # pragma: no cover - the benchmark says what it needs
    orjson = None  # type: ignore[assignment]


@dataclass
class IngestFigures:
    records: int
    megabytes: float
    exporter_seconds: float
    orjson_seconds: float | None
    # The same path with the state file written, as configured by default.
    state_file_seconds: float | None = None

    @property
    def exporter_rate(self) -> float:
        return self.records / self.exporter_seconds

    @property
    def orjson_rate(self) -> float | None:
        return self.records / self.orjson_seconds if self.orjson_seconds else None


def _exporter_pass(pages: list[bytes], expected: int, state_dir: Path | None = None) -> float:
    """One catch-up through the exporter's own path; seconds taken. With `state_dir`, the
    commit writes a new state file there, as the default config does (the daemon runs that
    write in a worker thread: off the event loop, but the same CPU)."""
    # A fresh parser and ledger each pass: nothing carried over from a previous pass.
    dates = CallDateParser(zone("America/New_York"))
    store: Store = MemoryStore()
    if state_dir is not None:
        path = state_dir / "state.db"
        for leftover in state_dir.glob("state.db*"):
            leftover.unlink()
        store = SQLiteStore(path)
    ledger = Ledger(store, Health(), max_series_per_metric=1_000_000)
    ledger.watermark = 0.0  # a saved state: the calls are counted, not taken as a baseline
    started = time.perf_counter()
    batch = CycleBatch()
    for body in pages:
        ledger.add(batch, decode_page(body, dates).records, count=True)
    ledger.commit(batch, watermark=1.0, followed={}, active=None)
    elapsed = time.perf_counter() - started
    ledger.close()
    if batch.counted != expected:
        raise AssertionError(f"counted {batch.counted} of {expected} records")
    return elapsed


def _orjson_pass(pages: list[bytes]) -> float:
    started = time.perf_counter()
    for body in pages:
        orjson.loads(body)
    return time.perf_counter() - started


def measure(pages: list[bytes], records: int, *, repeat: int = 5) -> IngestFigures:
    """Best of `repeat` interleaved passes of each, so both see the same machine state."""
    exporter: list[float] = []
    reference: list[float] = []
    with_state: list[float] = []
    with tempfile.TemporaryDirectory(prefix="leadflow-bench-") as state_dir:
        for _ in range(repeat):
            exporter.append(_exporter_pass(pages, records))
            if orjson is not None:
                reference.append(_orjson_pass(pages))
            with_state.append(_exporter_pass(pages, records, Path(state_dir)))
    return IngestFigures(
        records=records,
        megabytes=sum(map(len, pages)) / 1e6,
        exporter_seconds=min(exporter),
        orjson_seconds=min(reference) if reference else None,
        state_file_seconds=min(with_state),
    )
