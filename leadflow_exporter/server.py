"""The HTTP side: /metrics, health endpoints, the landing page and the running config."""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
import yaml
from aiohttp import web

from leadflow_exporter import __version__
from leadflow_exporter.exposition import Exposition, wants_gzip, wants_openmetrics
from leadflow_exporter.health import QUERIES, Health

log = structlog.get_logger("leadflow_exporter.server")

MAX_CONCURRENT_SCRAPES = 16
SCRAPE_QUEUE_SECONDS = 5.0
MAX_REQUEST_BYTES = 64 * 1024


@dataclass
class ServerState:
    """What the handlers read; the daemon owns and updates it."""

    exposition: Exposition
    health: Health
    config_view: Callable[[], dict[str, Any]]
    poller_alive: Callable[[], bool]
    reload: Callable[[], Awaitable[tuple[bool, str]]] | None = None
    reload_enabled: Callable[[], bool] = lambda: False
    tracked: Callable[[], int] = lambda: 0
    followed: Callable[[], int] = lambda: 0
    budget: Callable[[], tuple[int, int]] = lambda: (0, 0)
    watermark: Callable[[], float | None] = lambda: None
    started: float = field(default_factory=time.time)
    middlewares: list[Any] = field(default_factory=list)


STATE_KEY = web.AppKey("state", ServerState)
SCRAPES_KEY = web.AppKey("scrapes", asyncio.Semaphore)


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    # Clients get a status line, never a stack trace; the log gets the details.
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("request_failed", path=request.path, method=request.method)
        return web.Response(status=500, text="internal server error\n")


async def metrics(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    scrapes = request.app[SCRAPES_KEY]
    try:
        await asyncio.wait_for(scrapes.acquire(), timeout=SCRAPE_QUEUE_SECONDS)
    except TimeoutError:
        return web.Response(status=503, text="too many concurrent scrapes\n")
    try:
        openmetrics = wants_openmetrics(request.headers.get("Accept", ""))
        gzip = wants_gzip(request.headers.get("Accept-Encoding", ""))
        body, content_type = state.exposition.body(openmetrics=openmetrics, gzip=gzip)
    finally:
        scrapes.release()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    response.headers["Vary"] = "Accept, Accept-Encoding"
    if gzip:
        response.headers["Content-Encoding"] = "gzip"
    return response


async def healthy(request: web.Request) -> web.Response:
    if request.app[STATE_KEY].poller_alive():
        return web.Response(text="Healthy\n")
    return web.Response(status=503, text="poll loop is not running\n")


async def ready(request: web.Request) -> web.Response:
    health = request.app[STATE_KEY].health
    if health.ready:
        return web.Response(text="Ready\n")
    return web.Response(status=503, text="waiting for a first successful poll cycle\n")


async def config(request: web.Request) -> web.Response:
    view = request.app[STATE_KEY].config_view()
    return web.Response(
        text=yaml.safe_dump(view, sort_keys=False), content_type="text/plain", charset="utf-8"
    )


async def reload(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    if state.reload is None or not state.reload_enabled():
        return web.Response(
            status=403, text="reload is disabled: set server.reload_enabled: true\n"
        )
    ok, message = await state.reload()
    return web.Response(status=200 if ok else 500, text=message + "\n")


def _when(epoch: float) -> str:
    if not epoch:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


async def landing(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    health = state.health
    rows = []
    for query in QUERIES:
        status = health.queries[query]
        outcome = "—" if status.ok is None else ("ok" if status.ok else "failed")
        rows.append(
            "<tr>"
            f"<td>{query}</td><td>{outcome}</td><td>{_when(status.last_attempt)}</td>"
            f"<td>{_when(status.last_success)}</td><td>{status.last_duration:.2f} s</td>"
            f"<td>{status.last_records}</td><td>{html.escape(status.last_error) or '—'}</td>"
            "</tr>"
        )
    used, limit = state.budget()
    watermark = state.watermark()
    cycle = "ok" if health.last_cycle_ok else ("failed" if health.cycles else "not yet run")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>LeadFlow Exporter</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}
</style></head><body>
<h1>LeadFlow Exporter</h1>
<p>Version {html.escape(__version__)}. Prometheus exporter for DialogTech LeadFlow call history.</p>
<ul>
<li><a href="metrics">Metrics</a></li>
<li><a href="-/healthy">Health</a> and <a href="-/ready">readiness</a></li>
<li><a href="config">Running configuration</a> (secrets redacted)</li>
</ul>
<h2>Last poll cycle: {cycle}</h2>
<p>Ended {_when(health.last_cycle_end)}, took {health.last_cycle_duration:.2f} s.
{html.escape(health.last_cycle_error)}</p>
<table><tr><th>query</th><th>status</th><th>last attempt</th><th>last success</th>
<th>duration</th><th>records</th><th>error</th></tr>
{"".join(rows)}
</table>
<h2>State</h2>
<ul>
<li>History read up to: {_when(watermark or 0)}</li>
<li>Rate budget: {used} of {limit} requests in the last minute</li>
<li>Tracked call ids: {state.tracked()}; calls followed in progress: {state.followed()}</li>
<li>Poll cycles run: {health.cycles}</li>
</ul>
</body></html>
"""
    return web.Response(text=page, content_type="text/html", charset="utf-8")


def create_app(state: ServerState) -> web.Application:
    app = web.Application(
        middlewares=[_errors, *state.middlewares], client_max_size=MAX_REQUEST_BYTES
    )
    app[STATE_KEY] = state
    app[SCRAPES_KEY] = asyncio.Semaphore(MAX_CONCURRENT_SCRAPES)
    app.router.add_get("/", landing)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_get("/config", config)
    app.router.add_post("/-/reload", reload)
    return app


# Limits on what a client may send; /metrics needs none of this headroom.
HANDLER_ARGS = {"max_line_size": 8190, "max_field_size": 8190, "max_headers": 64}
