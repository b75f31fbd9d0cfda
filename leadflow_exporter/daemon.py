"""The running exporter: wires config → client → poller → ledger → collector → server."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
)

from leadflow_exporter import __version__
from leadflow_exporter.client import LeadFlowClient
from leadflow_exporter.clock import Clock, SystemClock
from leadflow_exporter.collector import HealthCollector, LedgerCollector
from leadflow_exporter.config import Config, ConfigError, load_config
from leadflow_exporter.exposition import Exposition
from leadflow_exporter.health import Health, QueryStatus
from leadflow_exporter.ledger import EXPIRY_MARGIN_SECONDS, Ledger, MemoryStore, Store
from leadflow_exporter.logsetup import configure_logging
from leadflow_exporter.poller import Poller
from leadflow_exporter.ratebudget import RateBudget
from leadflow_exporter.server import HANDLER_ARGS, ServerState, create_app
from leadflow_exporter.state import SQLiteStore
from leadflow_exporter.webconfig import WebConfigWatcher, auth_middleware

PROBE_PATHS = ("/-/healthy", "/-/ready")
SWITCH_INTERVAL_SECONDS = 0.001

log = structlog.get_logger("leadflow_exporter.daemon")

STOP_GRACE_SECONDS = 8.0
# Changing these means a different ledger or socket: they need a restart, not a reload.
RESTART_ONLY = (
    ("state", "path"),
    ("metrics", "extra_labels"),
    ("server", "listen"),
    ("server", "web_config_file"),
    # Calls are remembered by the hour of their start in this zone.
    ("api", "timezone"),
)


def open_store(config: Config) -> Store:
    return SQLiteStore(config.state.path) if config.state.path else MemoryStore()


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        config_path: Path | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.environ = environ
        self.clock = clock or SystemClock()
        self.health = Health()
        self.health.config_reload_time = self.clock.now()
        store = open_store(config)
        try:
            self.ledger = Ledger(
                store,
                self.health,
                extra_labels=config.metrics.extra_labels,
                max_series_per_metric=config.metrics.max_series_per_metric,
                retention_seconds=config.poll.overlap_seconds + config.poll.max_call_seconds,
                timezone=config.api.timezone,
            )
        except BaseException:
            # A state file refused at load (other extra labels, say) lets go of its lock now.
            store.close()
            raise
        self.budget = RateBudget(config.api.requests_per_minute, self.clock)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(LedgerCollector(self.ledger, extra_labels=config.metrics.extra_labels))
        self.collector = HealthCollector(
            self.ledger, self.health, self.budget, interval_seconds=config.poll.interval_seconds
        )
        live = CollectorRegistry(auto_describe=False)
        for collector in (self.collector, PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            live.register(collector)
        self.exposition = Exposition(registry, live)
        self._session: aiohttp.ClientSession | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._poll_stop = asyncio.Event()
        self._runner: web.AppRunner | None = None
        # Read before anything listens: a bad web config must stop the start, not serve
        # /metrics unprotected.
        self.web_config = (
            WebConfigWatcher(config.server.web_config_file)
            if config.server.web_config_file
            else None
        )
        self._reload_lock = asyncio.Lock()
        self._reload_tasks: set[asyncio.Task[tuple[bool, str]]] = set()
        self._stopping = False
        self._render_lock = asyncio.Lock()
        self.port: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        # A reload (SIGHUP, or POST /-/reload once the server listens) waits until the start
        # is done: one arriving half-way would start a second poller that nothing stops.
        async with self._reload_lock:
            await self._start()

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=4, ttl_dns_cache=300),
            trust_env=True,
        )
        await asyncio.to_thread(self.exposition.render)
        state = ServerState(
            exposition=self.exposition,
            health=self.health,
            config_view=self.config.redacted,
            poller_alive=self.poller_alive,
            reload=self.reload,
            reload_enabled=lambda: self.config.server.reload_enabled,
            tracked=self.ledger.tracked,
            followed=lambda: len(self.ledger.followed),
            budget=lambda: (self.budget.used(), self.budget.per_minute),
            watermark=lambda: self.ledger.watermark,
            # Liveness and readiness say only "Healthy" or "Ready" (or why not): orchestrators'
            # probes, which carry no credentials, must reach them behind basic auth too.
            middlewares=[
                auth_middleware(self.web_config.get_config, unauthenticated_paths=PROBE_PATHS)
            ]
            if self.web_config
            else [],
        )
        self._server_state = state
        app = create_app(state)
        self._runner = web.AppRunner(app, access_log=None, **HANDLER_ARGS)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            self.config.server.host,
            self.config.server.port,
            ssl_context=self.web_config.ssl_context if self.web_config else None,
        )
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.config.server.port
        log.info(
            "started",
            version=__version__,
            listen=f"{self.config.server.host}:{self.port}",
            state=self.config.state.path or "(memory)",
            set_ids=list(self.config.poll.set_ids) or "all",
            interval_seconds=self.config.poll.interval_seconds,
        )
        # The modules, config, collectors and server objects made so far live as long as the
        # process. Left to the collector, every full collection walks them all again (20-30 ms
        # with the GIL held, enough to hold up scrapes during a catch-up); frozen, they are
        # left out of collections. They hold no garbage, so nothing is kept alive by this.
        gc.collect()
        gc.freeze()
        # Rendering and large page decodes run in worker threads, in pure Python; each time the
        # event loop lets go of the GIL (every send and receive) it then waits up to the switch
        # interval to get it back. At the default 5 ms a scrape during a 10k-series render
        # took 15 ms at the median; at 1 ms, 3 ms. A lone thread never pays for it.
        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        self._start_poller()

    def _start_poller(self) -> None:
        assert self._session is not None
        client = LeadFlowClient(
            self.config.api,
            self._session,
            self.budget,
            self.clock,
            self.health,
            extra_labels=self.config.metrics.extra_labels,
        )
        poller = Poller(
            self.config.poll,
            client,
            self.ledger,
            self.health,
            self.clock,
            requests_per_minute=self.config.api.requests_per_minute,
            on_cycle=self._render,
        )
        self._poll_stop = asyncio.Event()
        self._poll_task = asyncio.create_task(poller.run(self._poll_stop), name="poller")

    async def _render(self) -> None:
        # Rendering 100k series takes a while; a worker thread keeps scrapes flowing. One at a
        # time: an older snapshot published after a newer one would show as a counter reset.
        async with self._render_lock:
            await asyncio.to_thread(self.exposition.render)

    async def _stop_poller(self) -> None:
        task = self._poll_task
        if task is None:
            return
        self._poll_stop.set()
        try:
            # The cycle in flight commits or, if it overruns, is cancelled: before its commit,
            # or, once its transaction is being written, after the write is done and applied.
            # Either way the state file holds whole cycles only.
            await asyncio.wait_for(asyncio.shield(task), timeout=STOP_GRACE_SECONDS)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._poll_task = None

    def poller_alive(self) -> bool:
        return self._poll_task is not None and not self._poll_task.done()

    async def stop(self) -> None:
        # After a reload in progress, which would otherwise start a new poller once this one
        # has stopped, on a store about to be closed.
        self._stopping = True
        async with self._reload_lock:
            await self._stop_poller()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        self.ledger.close()
        log.info("stopped")

    # -- reload ----------------------------------------------------------------------------

    def reload_in_background(self) -> None:
        """A reload for SIGHUP: nobody awaits it, so its task is kept and its end looked at."""
        task = asyncio.create_task(self.reload(), name="reload")
        self._reload_tasks.add(task)
        task.add_done_callback(self._reload_done)

    def _reload_done(self, task: asyncio.Task[tuple[bool, str]]) -> None:
        self._reload_tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            # `reload` reports its own failures; this is the last resort against asyncio's
            # unstructured "Task exception was never retrieved" at exit.
            log.error("reload_failed", exc_info=error)

    async def reload(self) -> tuple[bool, str]:
        """Re-read the config file; a bad one is refused and the running one kept."""
        async with self._reload_lock:
            if self._stopping:
                return False, "stopping"
            if self.config_path is None:
                return False, "no config file to reload"
            try:
                return await self._reload(self.config_path)
            except Exception as exc:
                # A bug met while reloading must not answer /-/reload with a 500 and a bare
                # traceback, nor leave the reload metric at 1 or the exporter without a poller.
                self._refused()
                log.exception("reload_failed")
                if self._poll_task is None and self._session is not None and not self._stopping:
                    self._start_poller()
                return False, f"reload failed: internal error ({type(exc).__name__}), see the log"

    def _refused(self) -> None:
        self.health.config_reload_ok = False
        # The reload metric must show the refusal at once, not from a kept response.
        self.exposition.forget_responses()

    async def _reload(self, config_path: Path) -> tuple[bool, str]:
        try:
            new = await asyncio.to_thread(load_config, config_path, environ=self.environ)
        except ConfigError as exc:
            self._refused()
            log.error("reload_refused", problems=exc.problems)
            return False, "config refused: " + "; ".join(exc.problems)
        old = self.config
        changed = [
            f"{section}.{key}"
            for section, key in RESTART_ONLY
            if getattr(getattr(new, section), key) != getattr(getattr(old, section), key)
        ]
        if changed:
            self._refused()
            message = "config refused: changing " + ", ".join(changed) + " needs a restart"
            log.error("reload_refused", changed=changed)
            return False, message
        if self.web_config is not None:
            self.web_config.maybe_reload(force=True)
        await self._stop_poller()
        self.config = new
        configure_logging(new.logging.level, new.logging.format)
        self.budget.per_minute = new.api.requests_per_minute
        self.ledger.max_series = new.metrics.max_series_per_metric
        # A longer retention only applies going forward: the ledger's dedup floor keeps
        # windows away from sids that were already expired.
        self.ledger.retention_seconds = (
            new.poll.overlap_seconds + new.poll.max_call_seconds + EXPIRY_MARGIN_SECONDS
        )
        self.collector.interval_seconds = new.poll.interval_seconds
        self._server_state.config_view = new.redacted
        if not new.poll.active:
            self._forget_active()
        self.health.config_reload_ok = True
        self.exposition.forget_responses()
        self.health.config_reload_time = self.clock.now()
        self._start_poller()
        log.info("reloaded")
        # The new config is in force from here on: a failed render is not a refused reload.
        try:
            await self._render()
        except Exception:
            log.exception("render_failed")
        return True, "config reloaded"

    def _forget_active(self) -> None:
        """Show what a start with `poll.active: false` shows: no live-call figures.

        Once the live list is no longer polled, its last counts and its last success would
        stay as they were, and an alert on a stale `last_success` would fire until a restart.
        The followed calls stay: they are counting state, not a report (and kept in the state
        file, so a restart shows them too). History windows count those that end within their
        reach as before; turning `active` back on follows up the rest, by sid if need be.
        """
        self.ledger.active = {}
        self.health.queries["active"] = QueryStatus()


async def run_daemon(config: Config, config_path: Path | None) -> int:
    """Run until SIGTERM or SIGINT; SIGHUP reloads the config."""
    daemon = Daemon(config, config_path=config_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload_in_background)
    try:
        await daemon.start()
        await stop.wait()
        log.info("stopping")
    finally:
        await daemon.stop()
    return 0
