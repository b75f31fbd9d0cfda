"""bench.ingest_bound: its columnar design counts what the exporter counts, and it prints
every row. Timings are not asserted (docs/performance.md has the figures of a full run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench import data
from bench.ingest_bound import (
    Columnar,
    _decode,
    _exporter_totals,
    _minute_bases,
    check_same_totals,
)
from leadflow_exporter.timeutil import CallDateParser, zone

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pages() -> list[bytes]:
    return data.pages(data.finished_records(3_000), page_size=250)


def _columnar_totals(pages: list[bytes]):
    columnar = Columnar(_minute_bases(pages, CallDateParser(zone("America/New_York"))))
    for records in _decode(pages):
        columnar.add_page(records)
    return columnar.totals()


def test_columnar_totals_equal_the_exporters(pages: list[bytes]) -> None:
    exporter = _exporter_totals(pages)
    columnar = _columnar_totals(pages)
    check_same_totals(columnar, exporter)
    assert sum(exporter.calls.values()) == 3_000
    assert len(exporter.sets) >= 3
    assert any(t.revenue for t in exporter.sets.values())


@pytest.mark.parametrize("change", ["calls", "revenue", "talk_buckets", "set"])
def test_a_difference_in_any_total_is_caught(pages: list[bytes], change: str) -> None:
    exporter = _exporter_totals(pages)
    columnar = _columnar_totals(pages)
    name = next(iter(columnar.sets))
    if change == "calls":
        series = next(iter(columnar.calls))
        columnar.calls[series] += 1
    elif change == "revenue":
        columnar.sets[name].revenue += 1
    elif change == "talk_buckets":
        columnar.sets[name].talk_buckets[0] += 1
    else:
        columnar.sets["another set"] = columnar.sets[name]
    with pytest.raises(AssertionError):
        check_same_totals(columnar, exporter)


def test_a_repeated_sid_is_refused(pages: list[bytes]) -> None:
    columnar = Columnar(_minute_bases(pages, CallDateParser(zone("America/New_York"))))
    first = next(_decode(pages))
    columnar.add_page(first)
    with pytest.raises(ValueError, match="repeated sid"):
        columnar.add_page(first)


def test_cli_prints_every_row() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.ingest_bound", "--records", "2000", "--repeat", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("2,000 records")
    for label in (
        "orjson.loads alone (the reference)",
        "msgspec decode of the counted fields",
        "every counted field read once",
        "columnar design",
        "the exporter's path",
    ):
        row = next((line for line in lines if line.startswith(label) or label in line), None)
        assert row is not None, (label, run.stdout)
        assert row.rstrip().endswith("x"), row
