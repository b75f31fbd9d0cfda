"""Scrape figures: /metrics over real HTTP on loopback, exporter beside prometheus_client."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

from bench.loadgen import LoadResult, load

# What a Prometheus server sends, minus OpenMetrics (the text format is the common case).
PLAIN = {"Accept": "text/plain;version=0.0.4"}
GZIP = {"Accept": "text/plain;version=0.0.4", "Accept-Encoding": "gzip"}


@dataclass
class ScrapeFigures:
    series: int
    exporter: LoadResult
    exporter_gzip: LoadResult
    baseline: LoadResult


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    """`python -m bench.serve ARGS` in a process of its own, talked to through stdin/stdout."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.serve",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )


@contextlib.asynccontextmanager
async def server(*args: str) -> AsyncIterator[int]:
    """Start `python -m bench.serve ARGS`; yields its port; stops it by closing its stdin."""
    proc = await _spawn(*args)
    assert proc.stdout is not None and proc.stdin is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=300)
        if not line.startswith(b"port "):
            raise RuntimeError(f"bench.serve {' '.join(args)} did not start: {line!r}")
        yield int(line.split()[1])
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), timeout=30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def measure(
    series: int, *, requests: int, seconds: float, connections: int = 4
) -> ScrapeFigures:
    async with server("exporter", "--series", str(series)) as port:
        # A short warm-up, so connection set-up and first-touch costs are not timed.
        await load(port, connections=connections, requests=50, seconds=2, headers=PLAIN)
        plain = await load(
            port, connections=connections, requests=requests, seconds=seconds, headers=PLAIN
        )
        gzipped = await load(
            port, connections=connections, requests=requests, seconds=seconds, headers=GZIP
        )
    async with server("baseline", "--series", str(series)) as port:
        await load(port, connections=1, requests=3, seconds=5, headers=PLAIN)
        baseline = await load(
            port,
            connections=connections,
            # Per-request rendering is slow; a bounded count keeps the 100k case short.
            requests=max(20, requests // 50),
            seconds=seconds,
            headers=PLAIN,
        )
    return ScrapeFigures(series, plain, gzipped, baseline)


@dataclass
class CatchupFigures:
    records: int
    pages: int
    ingest_seconds: float
    scrapes: LoadResult


async def catchup(records: int, *, rate: float = 50.0) -> CatchupFigures:
    """Scrape latency while the daemon ingests a catch-up of `records` calls.

    The daemon polls a stub History API (its own process) that serves the calls in pages of
    250; scrapes arrive at `rate` per second, open loop, as Prometheus servers send them, so
    what is measured is latency under that load rather than throughput.
    """
    proc = await _spawn("stub", "--records", str(records))
    assert proc.stdout is not None and proc.stdin is not None
    try:
        words = (await asyncio.wait_for(proc.stdout.readline(), timeout=300)).split()
        api_port, pages = int(words[1]), int(words[3])
        async with server("catchup", "--api", f"http://127.0.0.1:{api_port}/history") as port:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            started = loop.time()
            scrapes = asyncio.create_task(
                load(
                    port,
                    connections=2,
                    requests=10**9,
                    seconds=600,
                    headers=GZIP,
                    rate=rate / 2,
                    stop=stop,
                )
            )
            await asyncio.wait_for(proc.stdout.readline(), timeout=600)
            elapsed = loop.time() - started
            # The last page is decoded and the cycle committed just after it is served.
            await asyncio.sleep(0.5)
            stop.set()
            result = await scrapes
    finally:
        proc.stdin.close()
        await proc.wait()
    return CatchupFigures(records, pages, elapsed, result)


@dataclass
class RenderFigures:
    series: int
    render_seconds: float
    renders: int
    scrapes: LoadResult


async def during_renders(series: int, *, rate: float, seconds: float) -> RenderFigures:
    """Scrape latency while the exposition is rendered again and again, back to back.

    A poll cycle renders once per interval (30 s by default) in a worker thread; rendering is
    pure Python and holds the GIL, so a scrape arriving meanwhile waits for it to let go. Here
    the renders never stop, so every scrape meets one: the worst case, not the usual one.
    """
    proc = await _spawn("rendering", "--series", str(series))
    assert proc.stdout is not None and proc.stdin is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=300)
        if not line.startswith(b"port "):
            raise RuntimeError(f"bench.serve rendering did not start: {line!r}")
        port = int(line.split()[1])
        scrapes = await load(
            port,
            connections=2,
            requests=10**9,
            seconds=seconds,
            headers=GZIP,
            rate=rate / 2,
        )
        proc.stdin.close()
        words = (await asyncio.wait_for(proc.stdout.readline(), timeout=120)).split()
        renders, median = int(words[1]), float(words[3])
    finally:
        if not proc.stdin.is_closing():
            proc.stdin.close()
        await proc.wait()
    return RenderFigures(series, median, renders, scrapes)
