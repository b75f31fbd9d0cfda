"""Soak: simulated days of traffic through the exporter, watching memory and the state file.

The exporter pipeline (client, poller, ledger, SQLite state) polls an in-process simulator on
a manual clock, so a simulated day takes minutes. Every simulated hour it prints the calls it
tracks, the process RSS, the state file and WAL sizes and the records read; at the end it
checks the totals against the simulator's ground truth and says whether memory and file size
stayed flat once the retention window (overlap + max_call_seconds + 1 h) was full.

Traffic follows a daily curve, so "flat" is judged day over day: the peaks of the tracked
calls, the state file (+ WAL) and the RSS in the first 24 hours after the window filled are
the reference, and no later hour may exceed them by more than a small tolerance (5 % for the
file, 10 % for RSS). A leak grows with elapsed time and fails that; a bounded ledger does not.
The default run starts at midnight Eastern on a Tuesday and lasts three simulated days.

    .venv/bin/python bench/soak.py                 # 72 simulated hours at 10x volume
    .venv/bin/python bench/soak.py --hours 12      # shorter: a weaker first/last comparison
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
from aiohttp.test_utils import TestServer

from leadflow_exporter.client import LeadFlowClient
from leadflow_exporter.clock import ManualClock
from leadflow_exporter.config import ApiConfig, PollConfig, Secret
from leadflow_exporter.health import Health
from leadflow_exporter.ledger import EXPIRY_MARGIN_SECONDS, Ledger
from leadflow_exporter.logsetup import configure_logging
from leadflow_exporter.poller import Poller
from leadflow_exporter.ratebudget import RateBudget
from leadflow_exporter.records import MONEY_SCALE
from leadflow_exporter.simulator import DEFAULT_CREDENTIALS, HISTORY_PATH, STATE_KEY, create_app
from leadflow_exporter.simulator.truth import compute_truth
from leadflow_exporter.state import SQLiteStore

EASTERN = ZoneInfo("America/New_York")
HOUR = 3600
FILE_TOLERANCE = 1.05
RSS_TOLERANCE = 1.10


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def file_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def mib(n: float) -> str:
    return f"{n / 2**20:8.2f}"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )


def exact(ledger: Ledger, truth: dict) -> bool:
    """The counted calls and money equal the truth, per set and status."""
    counted: Counter[tuple[str, str]] = Counter()
    for (set_name, status, *_), n in ledger.totals.calls.items():
        counted[(set_name, status)] += n
    expected: Counter[tuple[str, str]] = Counter()
    for set_name, s in truth["sets"].items():
        for status, n in s["calls"].items():
            expected[(set_name, status)] += n
        t = ledger.totals.sets.get(set_name)
        if s["calls_total"] and t is None:
            return False
        if t is not None and (
            t.talk_seconds != s["talk_seconds"]
            or f"{t.revenue / MONEY_SCALE:.2f}" != s["offer_price"]
            or f"{t.payout / MONEY_SCALE:.2f}" != s["affiliate_price"]
        ):
            return False
    return +counted == +expected


async def soak(args: argparse.Namespace) -> int:
    start = datetime.fromisoformat(args.start).replace(tzinfo=EASTERN).timestamp()
    db_path: Path = args.db_path
    wal_path = Path(f"{db_path}-wal")

    clock = ManualClock(start)
    app = create_app(
        seed=args.seed,
        volume=args.volume,
        clock=clock.now,
        rate_limit_per_minute=100,
        slow_seconds=0.0,
        history_hours=24,
    )
    sim = app[STATE_KEY]
    # The simulator shares this process; bound its per-minute call cache to what the queries
    # reach back to (the active window plus a margin), so its memory does not blur the
    # exporter's. The traffic is the same: minutes are regenerated from the seed.
    cache_minutes = int((args.max_call_seconds + args.overlap + 4 * HOUR) // 60)
    sim.model._base_minute = functools.lru_cache(maxsize=cache_minutes)(sim.model._generate)

    server = TestServer(app)
    await server.start_server()
    poll = PollConfig(
        interval_seconds=args.interval,
        overlap_seconds=args.overlap,
        max_call_seconds=args.max_call_seconds,
    )
    api = ApiConfig(
        base_url=str(server.make_url(HISTORY_PATH)),
        access_key=Secret(DEFAULT_CREDENTIALS.access_key),
        secret_access_key=Secret(DEFAULT_CREDENTIALS.secret_access_key),
        rate_limit_key=Secret(DEFAULT_CREDENTIALS.rate_limit_key),
        requests_per_minute=90,
    )
    health = Health()
    store = SQLiteStore(db_path)
    ledger = Ledger(store, health, retention_seconds=args.overlap + args.max_call_seconds)
    retention = args.overlap + args.max_call_seconds + EXPIRY_MARGIN_SECONDS
    # Entries expire by whole hours of call start: the window is full one bucket later.
    full_at = retention + HOUR

    print(f"machine: {machine()}")
    print(
        f"soak: {args.hours:g} simulated hours from {args.start} Eastern, volume {args.volume:g}, "
        f"poll every {args.interval:g}s, overlap {args.overlap:g}s, max_call_seconds "
        f"{args.max_call_seconds:g}s; retention window {retention / HOUR:.2f} h "
        f"(full from hour {full_at / HOUR:.2f}); state file {db_path}"
    )
    header = (
        f"{'hour':>4} {'local':>11} {'tracked':>8} {'seen rows':>9} {'followed':>8} "
        f"{'RSS MiB':>8} {'db MiB':>8} {'wal MiB':>8} {'records':>8} {'rec/s':>7} {'cycles':>6}"
    )
    print(header)
    print("-" * len(header))

    rows: list[dict[str, float]] = []
    failed_cycles = 0
    wall_start = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        budget = RateBudget(api.requests_per_minute, clock)
        client = LeadFlowClient(api, session, budget, clock, health)
        poller = Poller(
            poll, client, ledger, health, clock, requests_per_minute=api.requests_per_minute
        )
        cycles_per_hour = int(HOUR // args.interval)
        # The first cycle, at the start, is the baseline: recorded, not counted.
        failed_cycles += not (await poller.run_cycle()).ok
        for hour in range(1, int(args.hours) + 1):
            hour_wall = time.perf_counter()
            records_before = sum(health.records.values())
            for cycle in range(1, cycles_per_hour + 1):
                # ManualClock.sleep (rate budget, Retry-After) may already have moved time on.
                target = start + ((hour - 1) * cycles_per_hour + cycle) * args.interval
                if clock.now() < target:
                    clock.set(target)
                report = await poller.run_cycle()
                failed_cycles += not report.ok
            gc.collect()
            records = sum(health.records.values()) - records_before
            elapsed = time.perf_counter() - hour_wall
            row = {
                "hour": hour,
                "tracked": ledger.tracked(),
                "seen_rows": store.stats()["seen"],
                "followed": len(ledger.followed),
                "rss": rss_bytes(),
                "db": file_size(db_path),
                "wal": file_size(wal_path),
                "records": records,
                "rate": records / elapsed if elapsed else 0.0,
            }
            rows.append(row)
            local = datetime.fromtimestamp(clock.now(), EASTERN).strftime("%a %H:%M")
            print(
                f"{hour:>4} {local:>11} {row['tracked']:>8} {row['seen_rows']:>9} "
                f"{row['followed']:>8} {mib(row['rss'])} {mib(row['db'])} {mib(row['wal'])} "
                f"{records:>8} {row['rate']:>7.0f} {cycles_per_hour:>6}",
                flush=True,
            )
        # Everything that finished by `end` is read by a cycle that starts at or after it.
        end = clock.now()
        failed_cycles += not (await poller.run_cycle()).ok
    wall = time.perf_counter() - wall_start
    truth = compute_truth(sim.model, start, end)
    is_exact = exact(ledger, truth)
    ledger.close()
    await server.close()

    print("-" * len(header))
    print(
        f"{len(rows) * cycles_per_hour + 2} cycles ({failed_cycles} failed) in {wall:.0f} s wall; "
        f"{truth['calls_total']} calls finished; totals equal the ground truth: "
        f"{'yes' if is_exact else 'NO'}"
    )
    return verdict(rows, full_at, is_exact)


def verdict(rows: list[dict[str, float]], full_at: float, is_exact: bool) -> int:
    full_hour = int(-(-full_at // HOUR))
    after = [r for r in rows if r["hour"] >= full_hour]
    if len(after) < 2:
        print(
            f"VERDICT: inconclusive: the retention window is full from hour {full_hour}; "
            "run longer (--hours)"
        )
        return 2
    first_day = [r for r in after if r["hour"] < full_hour + 24]
    rest = [r for r in after if r["hour"] >= full_hour + 24]
    if rest:
        reference, later = first_day, rest
        basis = (
            f"the first 24 h after the window filled (hours {full_hour}-{full_hour + 23}) vs "
            f"every hour after them (hours {full_hour + 24}-{rows[-1]['hour']:.0f})"
        )
    else:
        # No second day: compare the first and last thirds after the window filled.
        third = max(1, len(after) // 3)
        reference, later = after[:third], after[-third:]
        basis = "first vs last third of the hours after the window filled (traffic varies by "
        basis += "time of day: use --hours 32 or more for a day-over-day comparison)"

    def peak(rs: list[dict[str, float]], key: str) -> float:
        return max(r[key] for r in rs)

    ref_file = peak(reference, "db") + peak(reference, "wal")
    later_file = peak(later, "db") + peak(later, "wal")
    ref_rss, later_rss = peak(reference, "rss"), peak(later, "rss")
    ref_tracked, later_tracked = peak(reference, "tracked"), peak(later, "tracked")
    file_ok = later_file <= ref_file * FILE_TOLERANCE
    rss_ok = later_rss <= ref_rss * RSS_TOLERANCE
    print(f"basis: {basis}")
    print(f"  tracked calls, peak: {ref_tracked:.0f} -> {later_tracked:.0f}")
    print(
        f"  state file + WAL, peak: {mib(ref_file).strip()} -> {mib(later_file).strip()} MiB "
        f"(limit x{FILE_TOLERANCE}): {'flat' if file_ok else 'GROWING'}"
    )
    print(
        f"  RSS, peak: {mib(ref_rss).strip()} -> {mib(later_rss).strip()} MiB "
        f"(limit x{RSS_TOLERANCE}): {'flat' if rss_ok else 'GROWING'}"
    )
    ok = file_ok and rss_ok and is_exact
    print(
        "VERDICT: "
        + (
            "memory and state file flat once the retention window is full; counts exact"
            if ok
            else "FAIL"
        )
    )
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=72.0, help="simulated hours")
    parser.add_argument("--volume", type=float, default=10.0, help="traffic multiplier")
    parser.add_argument(
        "--interval",
        type=float,
        default=PollConfig().interval_seconds,
        help="poll interval, seconds (default: the config default, %(default)s)",
    )
    parser.add_argument("--overlap", type=float, default=900.0, help="overlap, seconds")
    parser.add_argument("--max-call-seconds", type=float, default=14400.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--start", default="2026-11-17T00:00:00", help="start, Eastern wall time (a Tuesday)"
    )
    parser.add_argument("--state-dir", default="", help="where the state file goes (temp dir)")
    args = parser.parse_args(argv)
    if args.hours <= 0 or args.volume <= 0 or args.interval <= 0:
        parser.error("--hours, --volume and --interval must be positive")
    workdir = Path(args.state_dir or tempfile.mkdtemp(prefix="leadflow-soak-"))
    args.db_path = workdir / "soak-state.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{args.db_path}{suffix}").unlink(missing_ok=True)
    # One log line per poll cycle would drown the table.
    configure_logging("warning", "console")
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
