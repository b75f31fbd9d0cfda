"""The benchmark runs end to end in --quick mode and prints every figure beside its target.

Timings are not asserted here: the targets are judged on the printed table of a full run
(docs/performance.md), on a quiet machine, not on a shared CI runner.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The ingest figure compares with orjson.loads: a missing orjson fails the run here.
import orjson  # noqa: E402,F401

ROWS = [
    ("1 ingest", "decode+normalise+dedup+totals", "orjson.loads alone", ">= 1.0x"),
    ("1 ingest", "the state file written", "orjson.loads alone", None),
    ("2 scrape", "1,000 series, text ", "generate_latest per request", None),
    ("2 scrape", "1,000 series, text+gzip", "generate_latest per request", None),
    ("2 scrape", "10,000 series, text ", "generate_latest per request", ">= 100x, p99 < 10 ms"),
    ("2 scrape", "10,000 series, text+gzip", "generate_latest per request", ">= 100x, p99 < 10 ms"),
    ("2 scrape", "100,000 series, text ", "generate_latest per request", None),
    ("2 scrape", "100,000 series, text+gzip", "generate_latest per request", None),
    ("2 scrape", "-record catch-up", "errors", "p99 < 10 ms"),
    ("2 scrape", "10,000 series, during back-to-back renders", "one render", None),
    ("2 scrape", "100,000 series, during back-to-back renders", "one render", None),
    ("3 memory", "RSS per tracked call", "in all", "<= 120 bytes"),
    ("4 API cost", "1x traffic", "minimum", "<= 1.5x"),
    ("4 API cost", "10x traffic", "minimum", "<= 1.5x"),
    ("4 API cost", "50x traffic", "minimum", "<= 90/min"),
]


def test_quick_benchmark_prints_every_figure_and_target() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("leadflow-exporter benchmark on ") and "Python 3." in lines[0]
    header = next(line for line in lines if line.startswith("section"))
    assert header.split() == ["section", "figure", "measured", "compared", "with", "target"]
    for section, figure, compared, target in ROWS:
        matches = [line for line in lines if line.startswith(section) and figure in line]
        assert len(matches) == 1, (section, figure, run.stdout)
        row = matches[0]
        assert compared in row, row
        if target is not None:
            assert target in row and (" met" in row or "MISSED" in row), row
        if section == "4 API cost":
            # Every call that finished more than two poll intervals before the stop is
            # counted, per set and status exactly, and the rest are counted in settle cycles.
            assert "truth: counts exact" in row, row
