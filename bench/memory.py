"""Memory figure: RSS per tracked call, measured in a fresh process.

`python -m bench.memory N` fills a ledger with N counted calls through the exporter's own path
(CallRecord -> Ledger.add -> commit) and prints the growth of the resident set, per call. The
records are made in chunks and dropped, so what stays is what the ledger keeps.
"""

from __future__ import annotations

import gc
import os
import sys

from leadflow_exporter.health import Health
from leadflow_exporter.ledger import CycleBatch, Ledger, MemoryStore
from leadflow_exporter.records import CallRecord, sid_key

# Calls spread over the retention window the ledger keeps (overlap + max_call_seconds + margin).
START = 1_795_000_000.0
SPREAD_SECONDS = 5 * 3600.0
CHUNK = 50_000


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fill(ledger: Ledger, calls: int) -> None:
    ledger.watermark = START
    for first in range(0, calls, CHUNK):
        batch = CycleBatch()
        records = []
        for i in range(first, min(calls, first + CHUNK)):
            sid = f"{i:08x}{i * 2654435761 % 2**32:08x}{i * 40503 % 2**64:016x}"
            records.append(
                CallRecord(
                    sid,
                    sid_key(sid),
                    START + i * SPREAD_SECONDS / calls,
                    "Auto Insurance",
                    "connected",
                    {},
                    60.0,
                    90.0,
                    250_000,
                    150_000,
                    100_000,
                    True,
                    True,
                    False,
                    False,
                    False,
                )
            )
        ledger.add(batch, records, count=True)
        ledger.commit(batch, watermark=START, followed={}, active=None)


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    ledger = Ledger(
        MemoryStore(), Health(), retention_seconds=10 * SPREAD_SECONDS, max_series_per_metric=10
    )
    gc.collect()
    before = rss_bytes()
    fill(ledger, calls)
    gc.collect()
    after = rss_bytes()
    tracked = ledger.tracked()
    if tracked != calls:
        raise SystemExit(f"tracked {tracked} of {calls} calls")
    print(f"tracked {tracked} rss_bytes {after - before} per_call {(after - before) / tracked:.1f}")


if __name__ == "__main__":
    main()
