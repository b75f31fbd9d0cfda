"""Run every benchmark and print one table of figures beside their targets.

    python -m bench.run            # the full run (a few minutes)
    python -m bench.run --quick    # a smoke run for CI: same rows, smaller sizes

Every figure is measured in the same run as what it is compared with. `--quick` sizes are
too small to judge the targets by; the table says so.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
from dataclasses import dataclass

from bench import apicost, data, ingest, scrape
from leadflow_exporter.logsetup import configure_logging


@dataclass
class Sizes:
    records: int
    series: tuple[int, ...]
    requests: int
    seconds: float
    tracked: int
    minutes: int
    catchup: int


FULL = Sizes(100_000, (1_000, 10_000, 100_000), 20_000, 5.0, 1_000_000, 60, 100_000)
QUICK = Sizes(5_000, (1_000, 10_000, 100_000), 300, 1.0, 50_000, 5, 5_000)


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str]] = []

    def add(self, section: str, figure: str, value: str, compared: str, target: str) -> None:
        self.rows.append((section, figure, value, compared, target))

    def print(self) -> None:
        header = ("section", "figure", "measured", "compared with", "target")
        widths = [max(len(r[i]) for r in [header, *self.rows]) for i in range(5)]
        line = "  ".join("-" * w for w in widths)
        print(line)
        print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        print(line)
        for row in self.rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        print(line, flush=True)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    python = platform.python_version()
    return f"{os.cpu_count()} CPUs ({model}), Python {python}, {platform.system()}"


def run_ingest(table: Table, sizes: Sizes) -> None:
    pages = data.pages(data.finished_records(sizes.records))
    figures = ingest.measure(pages, sizes.records, repeat=3 if sizes is QUICK else 5)
    name = f"{figures.records:,} records ({figures.megabytes:.0f} MB)"
    reference = figures.orjson_rate
    if reference is None:
        table.add("1 ingest", name, f"{figures.exporter_rate:,.0f} rec/s", "orjson missing", "-")
        return
    ratio = figures.exporter_rate / reference
    table.add(
        "1 ingest",
        f"{name}: decode+normalise+dedup+totals",
        f"{figures.exporter_rate:,.0f} rec/s ({figures.exporter_seconds * 1000:.0f} ms)",
        f"orjson.loads alone {reference:,.0f} rec/s ({figures.orjson_seconds * 1000:.0f} ms)",
        f">= 1.0x: {ratio:.2f}x {verdict(ratio >= 1.0)}",
    )
    if figures.state_file_seconds is not None:
        rate = figures.records / figures.state_file_seconds
        table.add(
            "1 ingest",
            f"{name}: the same, and the state file written",
            f"{rate:,.0f} rec/s ({figures.state_file_seconds * 1000:.0f} ms)",
            f"orjson.loads alone: {rate / reference:.2f}x (the write runs in a worker thread)",
            "-",
        )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def run_scrape(table: Table, sizes: Sizes) -> None:
    for series in sizes.series:
        f = asyncio.run(scrape.measure(series, requests=sizes.requests, seconds=sizes.seconds))
        base = f.baseline
        for label, result in (("text", f.exporter), ("text+gzip", f.exporter_gzip)):
            ratio = result.rate / base.rate if base.rate else float("inf")
            p99 = result.percentile(99)
            target = "-"
            if series == 10_000:
                ok = ratio >= 100 and p99 < 0.010
                target = f">= 100x, p99 < 10 ms: {ratio:,.0f}x {verdict(ok)}"
            table.add(
                "2 scrape",
                f"{series:,} series, {label}",
                f"{result.rate:,.0f} req/s, p50 {_ms(result.percentile(50))}, p99 {_ms(p99)}",
                f"generate_latest per request: {base.rate:,.1f} req/s, "
                f"p99 {_ms(base.percentile(99))} ({ratio:,.0f}x)",
                target,
            )
    c = asyncio.run(scrape.catchup(sizes.catchup, rate=200.0))
    p99 = c.scrapes.percentile(99)
    table.add(
        "2 scrape",
        f"during a {c.records:,}-record catch-up ({c.pages} pages in {c.ingest_seconds:.1f} s)",
        f"{len(c.scrapes.latencies)} scrapes at 200/s, p50 {_ms(c.scrapes.percentile(50))}, "
        f"p99 {_ms(p99)}, max {_ms(max(c.scrapes.latencies, default=0.0))}",
        f"{c.scrapes.errors} errors",
        f"p99 < 10 ms: {verdict(p99 < 0.010 and not c.scrapes.errors)}",
    )
    for series in (10_000, 100_000):
        r = asyncio.run(scrape.during_renders(series, rate=200.0, seconds=sizes.seconds * 2))
        s = r.scrapes
        table.add(
            "2 scrape",
            f"{series:,} series, during back-to-back renders",
            f"{len(s.latencies)} scrapes at 200/s, p50 {_ms(s.percentile(50))}, "
            f"p99 {_ms(s.percentile(99))}, max {_ms(max(s.latencies, default=0.0))}",
            f"one render {_ms(r.render_seconds)}: {r.render_seconds / 30 * 100:.1f}% of a 30 s "
            f"poll interval; {s.errors} errors",
            "-",
        )


def run_memory(table: Table, sizes: Sizes) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.memory", str(sizes.tracked)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    per_call = float(out[out.index("per_call") + 1])
    table.add(
        "3 memory",
        f"RSS per tracked call at {sizes.tracked:,} tracked",
        f"{per_call:.0f} bytes",
        f"{int(out[out.index('rss_bytes') + 1]) / 1e6:.0f} MB in all",
        f"<= 120 bytes: {verdict(per_call <= 120)}",
    )


def run_apicost(table: Table, sizes: Sizes) -> None:
    for volume in (1.0, 10.0, 50.0):
        f = asyncio.run(apicost.measure(volume, minutes=sizes.minutes))
        within = f.max_per_minute <= apicost.REQUESTS_PER_MINUTE
        # A cost is only worth judging if the counts are right.
        if volume <= 10:
            ok = f.ratio <= 1.5 and within and f.matches_truth
            target = f"<= 1.5x: {f.ratio:.2f}x {verdict(ok)}"
        else:
            target = f"<= {apicost.REQUESTS_PER_MINUTE}/min: {verdict(within and f.matches_truth)}"
        kinds = ", ".join(f"{k} {v}" for k, v in f.requests.items())
        table.add(
            "4 API cost",
            f"{volume:g}x traffic, {f.minutes:.0f} min ({kinds})",
            f"{f.per_minute:.1f} req/min (busiest minute {f.max_per_minute}), "
            f"{f.read_per_counted:.1f} records read per counted "
            f"({f.finished_read_per_counted:.1f} without the live list)",
            f"minimum {f.minimum_per_minute:.1f} req/min ({f.ratio:.2f}x); "
            f"{f.long_calls / f.minutes:.1f}/min of the calls outlived the overlap; "
            f"truth: {f.truth_summary}",
            target,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run for CI")
    args = parser.parse_args(argv)
    configure_logging("warning", "console")
    sizes = QUICK if args.quick else FULL
    print(f"leadflow-exporter benchmark on {machine()}", flush=True)
    if args.quick:
        print("--quick: sizes too small to judge the targets by", flush=True)
    table = Table()
    run_ingest(table, sizes)
    run_scrape(table, sizes)
    run_memory(table, sizes)
    run_apicost(table, sizes)
    table.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
