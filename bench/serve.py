"""The server side of the scrape benchmarks, run in its own process.

Servers and the load generator live in separate processes so that they do not share a GIL: the
figures then show what one exporter process can serve. Modes:

- `exporter`: the exporter's own /metrics (server.py + exposition.py) on a ledger holding about
  `--series` series, rendered once as a poll cycle would.
- `baseline`: prometheus_client's own `start_http_server` on the same registry, which runs
  `generate_latest()` on every request.
- `catchup`: the whole daemon, polling `--api` (a stub serving a large history), so that scrapes
  can be timed while the catch-up is ingested.
- `rendering`: `exporter`, rendering again back to back in a worker thread, as a poll cycle
  does once per interval, so that scrapes can be timed while a render holds the GIL; it
  prints how long one render takes once it stops.

Each mode prints `port <N>` once it listens, then serves until stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from aiohttp import web
from prometheus_client import start_http_server

from bench import data
from leadflow_exporter.config import (
    ApiConfig,
    Config,
    LoggingConfig,
    MetricsConfig,
    PollConfig,
    Secret,
    ServerConfig,
    StateConfig,
)
from leadflow_exporter.daemon import SWITCH_INTERVAL_SECONDS, Daemon
from leadflow_exporter.ledger import STATUSES
from leadflow_exporter.logsetup import configure_logging
from leadflow_exporter.server import HANDLER_ARGS, ServerState, create_app
from leadflow_exporter.simulator import DEFAULT_CREDENTIALS

# Cardinality is raised the way users raise it: through metrics.extra_labels.
EXTRA_LABELS = ("affiliate", "phone_label")
SET_NAMES = ("Auto Insurance", "Medicare", "Home Services", "Debt Relief", "Legal Services")
# A catch-up reaches this far back: one 7-day slice, all of it served by the stub.
CATCHUP_SECONDS = 6 * 86400.0


def bench_config(*, api_url: str = "http://127.0.0.1:1/", requests_per_minute: int = 90) -> Config:
    return Config(
        api=ApiConfig(
            base_url=api_url,
            access_key=Secret(DEFAULT_CREDENTIALS.access_key),
            secret_access_key=Secret(DEFAULT_CREDENTIALS.secret_access_key),
            rate_limit_key=Secret(DEFAULT_CREDENTIALS.rate_limit_key),
            requests_per_minute=requests_per_minute,
        ),
        poll=PollConfig(interval_seconds=60.0),
        metrics=MetricsConfig(extra_labels=EXTRA_LABELS, max_series_per_metric=1_000_000),
        state=StateConfig(path=""),
        server=ServerConfig(listen="127.0.0.1:0"),
        logging=LoggingConfig(level="warning"),
    )


def fill(daemon: Daemon, series: int) -> int:
    """Give the ledger enough leadflow_calls_total series that the body has about `series`."""
    daemon.exposition.render()
    base = _samples(daemon)
    calls = daemon.ledger.totals.calls
    i = 0
    while len(calls) < max(0, series - base):
        set_name = SET_NAMES[i % len(SET_NAMES)]
        status = STATUSES[(i // len(SET_NAMES)) % len(STATUSES)]
        affiliate = f"Affiliate {i // 20 % 997:03d}"
        label = f"Line {i // 20:05d}"
        calls[(set_name, status, affiliate, label)] = i * 7 % 1000
        i += 1
    daemon.exposition.render()
    return _samples(daemon)


def _samples(daemon: Daemon) -> int:
    body, _ = daemon.exposition.body(openmetrics=False, gzip=False)
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


async def _until_stdin_closes() -> None:
    await asyncio.to_thread(sys.stdin.read)


async def serve_exporter(series: int, *, rerender: bool = False) -> None:
    daemon = Daemon(bench_config())
    samples = fill(daemon, series)
    # As `Daemon.start()` sets it (this mode builds the server without starting a poller).
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    state = ServerState(
        exposition=daemon.exposition,
        health=daemon.health,
        config_view=daemon.config.redacted,
        poller_alive=lambda: True,
    )
    runner = web.AppRunner(create_app(state), access_log=None, **HANDLER_ARGS)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"port {port} samples {samples}", flush=True)
    if not rerender:
        await _until_stdin_closes()
        await runner.cleanup()
        return
    renders: list[float] = []
    stop = asyncio.Event()

    async def rendering() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            await asyncio.to_thread(daemon.exposition.render)
            renders.append(time.perf_counter() - started)

    task = asyncio.create_task(rendering())
    await _until_stdin_closes()
    stop.set()
    await task
    await runner.cleanup()
    renders.sort()
    print(f"renders {len(renders)} median {renders[len(renders) // 2]:.6f}", flush=True)


def serve_baseline(series: int) -> None:
    daemon = Daemon(bench_config())
    samples = fill(daemon, series)
    # The same collectors as the exporter's body (business + health + process), collected on
    # every request by prometheus_client's own threaded server.
    registry = daemon.exposition._cached
    live = daemon.exposition._live
    assert live is not None
    for collector in list(live._collector_to_names):
        registry.register(collector)
    server, _thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    print(f"port {server.server_port} samples {samples}", flush=True)
    sys.stdin.read()
    server.shutdown()


async def serve_catchup(api_url: str) -> None:
    # As fast as the stub answers: the point is the scrape latency while the exporter is busy.
    # With a state file, as configured by default: the cycle's commit writes every new sid.
    with tempfile.TemporaryDirectory(prefix="leadflow-bench-") as workdir:
        config = bench_config(api_url=api_url, requests_per_minute=1_000_000)
        config = replace(config, state=StateConfig(path=str(Path(workdir) / "state.db")))
        await _catchup(Daemon(config))


async def _catchup(daemon: Daemon) -> None:
    # A saved watermark six days back: the first cycle counts everything since, like a
    # restart after downtime.
    daemon.ledger.watermark = time.time() - CATCHUP_SECONDS
    await daemon.start()
    print(f"port {daemon.port}", flush=True)
    await _until_stdin_closes()
    await daemon.stop()


async def serve_stub(records: int) -> None:
    """A History API stub: history pages of `records` realistic calls, nothing active.

    It prints `served <pages>` once the last page has gone out, so the caller knows when the
    catch-up's reading is over. In its own process, so that serving 80 MB of pages does not
    delay the load generator's clock.
    """
    pages = data.pages(data.finished_records(records))
    empty = b'{"response": []}'

    async def history(request: web.Request) -> web.Response:
        if request.query.get("active") == "1" or "sid" in request.query:
            return web.Response(body=empty, content_type="application/json")
        number = int(request.query.get("page", "1"))
        body = pages[number - 1] if number <= len(pages) else empty
        if number == len(pages):
            print(f"served {number}", flush=True)
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/history", history)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"port {port} pages {len(pages)}", flush=True)
    await _until_stdin_closes()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("exporter", "baseline", "catchup", "stub", "rendering"))
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--api", default="")
    args = parser.parse_args(argv)
    configure_logging("warning", "json")
    if args.mode in ("exporter", "rendering"):
        asyncio.run(serve_exporter(args.series, rerender=args.mode == "rendering"))
    elif args.mode == "baseline":
        serve_baseline(args.series)
    elif args.mode == "stub":
        asyncio.run(serve_stub(args.records))
    else:
        asyncio.run(serve_catchup(args.api))


if __name__ == "__main__":
    main()
