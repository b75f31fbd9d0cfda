"""The fake History Report API: an aiohttp app over a :class:`TrafficModel`.

Simulated time is the injected clock, except that it stands still while paused: a test can
freeze the traffic, let the exporter catch up, and compare its totals with ``/_sim/truth``
exactly. On resume it jumps back to the clock rather than running behind it for good: a
permanent lag would make every later call look late to an exporter that windows its queries by
wall-clock time. Rate limiting always uses the clock: pausing the traffic must not freeze the
requests-per-minute window.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
from aiohttp import web

from leadflow_exporter.simulator.call import Call
from leadflow_exporter.simulator.model import EASTERN, TrafficModel
from leadflow_exporter.simulator.render import render
from leadflow_exporter.simulator.scenarios import OWN_PAGE_SIZE, SCENARIOS, Schedule, unit
from leadflow_exporter.simulator.truth import compute_truth

HISTORY_PATH = "/report/v1/leadflow/v2/history"
MAX_PAGE_SIZE = 250
DEFAULT_PAGE_SIZE = 250
RATE_WINDOW_SECONDS = 60.0
# Share of requests refused in the rate-limited scenario.
RATE_LIMITED_SHARE = 0.3
# Share of successful responses cut off in the truncated-bodies scenario; the first half of
# them end early with an honest Content-Length, the rest drop the connection mid-body.
TRUNCATED_SHARE = 0.3
# In messy-data, a duplicated record is served again this many seconds further down the
# ordering, which usually lands it on a later page or in the next polling window.
DUPLICATE_OFFSET_SECONDS = 300

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key: str
    secret_access_key: str = field(repr=False)
    rate_limit_key: str = field(repr=False)

    @property
    def authorization(self) -> str:
        return f"{self.access_key}:{self.secret_access_key}"


DEFAULT_CREDENTIALS = Credentials(
    access_key="demo-access-key",
    secret_access_key="demo-secret-access-key",
    rate_limit_key="demo-rate-limit-key",
)


class BadRequest(Exception):
    pass


@dataclass(slots=True)
class Stats:
    requests: Counter[str] = field(default_factory=Counter)
    status_codes: Counter[str] = field(default_factory=Counter)
    records: Counter[str] = field(default_factory=Counter)

    def as_json(self) -> dict[str, Any]:
        kinds = ("history", "active", "sid")
        return {
            "requests": {k: self.requests[k] for k in kinds},
            "requests_total": sum(self.requests.values()),
            "status_codes": dict(sorted(self.status_codes.items())),
            "records_served": sum(self.records.values()),
            "records_served_by_kind": {k: self.records[k] for k in kinds},
        }


class SimulatorState:
    """Everything the running simulator knows: model, simulated clock, scenario, counters."""

    def __init__(
        self,
        seed: int = 1,
        scenario: str = "steady",
        volume: float = 1.0,
        clock: Clock = time.time,
        rate_limit_per_minute: int = 100,
        credentials: Credentials = DEFAULT_CREDENTIALS,
        slow_seconds: float = 3.0,
        history_hours: float = 24,
        buyers_always_open: bool = False,
    ) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
        if rate_limit_per_minute < 0:
            raise ValueError("rate_limit_per_minute must not be negative")
        if history_hours < 0:
            raise ValueError("history_hours must not be negative")
        self.seed = seed
        self.clock = clock
        self.rate_limit_per_minute = rate_limit_per_minute
        self.credentials = credentials
        self.slow_seconds = slow_seconds
        self._paused_at: float | None = None
        self.started_at = clock()
        self.traffic_start = int(self.started_at - history_hours * 3600)
        # The starting scenario covers the generated history too, so a messy-data or spike
        # simulator shows its effect from the first query.
        self.model = TrafficModel(
            seed=seed,
            volume=volume,
            schedule=Schedule([(self.traffic_start, scenario)]),
            traffic_start=self.traffic_start,
            buyers_always_open=buyers_always_open,
        )
        self.stats = Stats()
        self._request_number = 0
        self._recent: dict[str, deque[float]] = {}

    # -- simulated clock --------------------------------------------------------------------

    def now(self) -> float:
        if self._paused_at is not None:
            return self._paused_at
        return self.clock()

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = self.clock()

    def resume(self) -> None:
        self._paused_at = None

    # -- scenarios --------------------------------------------------------------------------

    @property
    def scenario(self) -> str:
        return self.model.schedule.at(self.now())

    def set_scenario(self, name: str) -> None:
        entries = self.model.schedule.entries()
        at = max(self.now(), entries[-1][0]) if entries else self.now()
        self.model.schedule.switch(at, name)

    # -- requests ---------------------------------------------------------------------------

    def next_request_number(self) -> int:
        self._request_number += 1
        return self._request_number

    def rate_limit_retry_after(self, key: str) -> int | None:
        """Seconds to wait when ``key`` is over its budget; otherwise records the request."""
        if self.rate_limit_per_minute == 0:
            return None
        now = self.clock()
        recent = self._recent.setdefault(key, deque())
        while recent and recent[0] <= now - RATE_WINDOW_SECONDS:
            recent.popleft()
        if len(recent) >= self.rate_limit_per_minute:
            return max(1, math.ceil(recent[0] + RATE_WINDOW_SECONDS - now))
        recent.append(now)
        return None

    def truth(self, since: float | None = None, until: float | None = None) -> dict[str, Any]:
        now = self.now()
        until = now if until is None else min(until, now)
        since = self.traffic_start if since is None else since
        out = compute_truth(self.model, since, until)
        out["now"] = now
        out["paused"] = self.paused
        out["scenario"] = self.scenario
        return out


STATE_KEY = web.AppKey("leadflow_simulator_state", SimulatorState)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(data),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json({"error": message}, status=status, headers=headers)


def _kind(query: Any) -> str:
    if query.get("sid"):
        return "sid"
    if query.get("active") == "1":
        return "active"
    return "history"


def parse_api_datetime(value: str, name: str) -> float:
    """An ISO-8601 query datetime as epoch seconds; without an offset it is US Eastern."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        hint = " (a '+' in an offset must be URL-encoded as %2B)" if " " in value else ""
        raise BadRequest(f"{name} is not an ISO-8601 datetime: {value!r}{hint}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=EASTERN)
    return parsed.timestamp()


def _int_param(query: Any, name: str, default: int | None, lo: int, hi: int | None) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {raw!r}") from None
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise BadRequest(f"{name} must be {bound}, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    sid: str | None
    start: float | None
    end: float | None
    set_id: int | None
    active: int | None
    page: int
    page_size: int

    @classmethod
    def parse(cls, query: Any) -> HistoryQuery:
        sid = query.get("sid") or None
        start = end = None
        if sid is None:
            if not query.get("start_date") or not query.get("end_date"):
                raise BadRequest("either sid, or both start_date and end_date, are required")
            start = parse_api_datetime(query["start_date"], "start_date")
            end = parse_api_datetime(query["end_date"], "end_date")
            if end < start:
                raise BadRequest("end_date must not be before start_date")
        active_raw = query.get("active")
        if active_raw not in (None, "", "0", "1"):
            raise BadRequest(f"active must be 0 or 1, got {active_raw!r}")
        return cls(
            sid=sid,
            start=start,
            end=end,
            set_id=_int_param(query, "set_id", None, 0, None),
            active=int(active_raw) if active_raw else None,
            page=_int_param(query, "page", 1, 1, None) or 1,
            page_size=_int_param(query, "page_size", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
            or DEFAULT_PAGE_SIZE,
        )


def select_calls(state: SimulatorState, q: HistoryQuery, now: float) -> list[Call]:
    """The calls a query matches at ``now``, in serving order (duplicates included)."""
    if q.sid is not None:
        found = state.model.find(q.sid)
        candidates = [found] if found is not None and found.start <= now else []
    else:
        assert q.start is not None and q.end is not None
        candidates = list(state.model.calls_between(q.start, min(q.end, math.floor(now) + 1)))
    keyed: list[tuple[tuple[int, str, int], Call]] = []
    for call in candidates:
        if q.set_id is not None and call.set_id != q.set_id:
            continue
        if q.active == 1 and not call.is_active(now):
            continue
        if q.active == 0 and not call.is_finished(now):
            continue
        keyed.append(((call.start, call.sid, 0), call))
        if call.duplicated and q.sid is None:
            keyed.append(((call.start + DUPLICATE_OFFSET_SECONDS, call.sid, 1), call))
    keyed.sort(key=lambda kc: kc[0])
    return [call for _, call in keyed]


def _outage_response(state: SimulatorState, n: int) -> web.Response:
    u = unit(state.seed, str(n), "outage")
    if u < 0.3:
        return _error(503, "Service Unavailable")
    if u < 0.55:
        html = "<html><head><title>502 Bad Gateway</title></head><body>Bad Gateway</body></html>"
        return web.Response(text=html, status=502, content_type="text/html")
    if u < 0.8:
        return _json({"message": "Internal server error"}, status=500)
    html = "<html><body><h1>504 Gateway Time-out</h1></body></html>"
    return web.Response(text=html, status=504, content_type="text/html")


async def _serve_history(request: web.Request, state: SimulatorState, kind: str) -> web.Response:
    n = state.next_request_number()
    scenario = state.scenario
    if scenario == "slow" and state.slow_seconds > 0:
        await asyncio.sleep(state.slow_seconds)
    if scenario == "api-outage":
        return _outage_response(state, n)

    creds = state.credentials
    authorization = request.headers.get("Authorization")
    api_key = request.headers.get("x-api-key")
    if not authorization:
        return _error(401, "missing Authorization header (ACCESS_KEY:SECRET_ACCESS_KEY)")
    if not hmac.compare_digest(authorization.encode(), creds.authorization.encode()):
        return _error(401, "invalid access key or secret access key")
    if not api_key:
        return _error(401, "missing x-api-key header")
    if not hmac.compare_digest(api_key.encode(), creds.rate_limit_key.encode()):
        return _error(401, "invalid rate limit key")

    retry_after = state.rate_limit_retry_after(api_key)
    if retry_after is not None:
        return _error(429, "Too Many Requests", headers={"Retry-After": str(retry_after)})
    if scenario == "rate-limited" and unit(state.seed, str(n), "rate-limited") < (
        RATE_LIMITED_SHARE
    ):
        wait = 1 + int(unit(state.seed, str(n), "retry-after") * 3)
        return _error(429, "Too Many Requests", headers={"Retry-After": str(wait)})

    try:
        q = HistoryQuery.parse(request.query)
    except BadRequest as exc:
        return _error(400, str(exc))
    now = state.now()
    calls = select_calls(state, q, now)
    page_size = OWN_PAGE_SIZE if scenario == "own-page-size" else q.page_size
    first = (q.page - 1) * page_size
    records = [render(c, now, state.seed) for c in calls[first : first + page_size]]
    state.stats.records[kind] += len(records)
    if scenario == "truncated-bodies":
        u = unit(state.seed, str(n), "truncated")
        if u < TRUNCATED_SHARE:
            return await _truncated(request, msgspec.json.encode({"response": records}), u)
    return _json({"response": records})


class _Truncated(web.StreamResponse):
    """A response that announces its full length, sends part of the body and hangs up."""

    async def write_eof(self, data: bytes = b"") -> None:
        return None


async def _truncated(request: web.Request, body: bytes, u: float) -> web.StreamResponse:
    cut = max(1, len(body) // 2)
    if u < TRUNCATED_SHARE / 2:
        # Complete as far as HTTP goes: the JSON just ends half way.
        return web.Response(body=body[:cut], status=200, content_type="application/json")
    response = _Truncated(status=200, headers={"Content-Type": "application/json"})
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[:cut])
    if request.transport is not None:
        request.transport.close()
    return response


async def handle_history(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    kind = _kind(request.query)
    state.stats.requests[kind] += 1
    response = await _serve_history(request, state, kind)
    state.stats.status_codes[str(response.status)] += 1
    return response


def _scenario_json(state: SimulatorState) -> dict[str, Any]:
    return {
        "name": state.scenario,
        "now": state.now(),
        "paused": state.paused,
        "schedule": [{"from": at, "name": name} for at, name in state.model.schedule.entries()],
        "scenarios": {name: s.description for name, s in SCENARIOS.items()},
    }


async def handle_get_scenario(request: web.Request) -> web.Response:
    return _json(_scenario_json(request.app[STATE_KEY]))


async def handle_set_scenario(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    name = request.query.get("name")
    if name is None and request.can_read_body:
        try:
            body = msgspec.json.decode(await request.read())
        except msgspec.DecodeError:
            return _error(400, 'body must be JSON like {"name": "steady"}')
        if isinstance(body, dict):
            name = body.get("name")
    if not isinstance(name, str) or name not in SCENARIOS:
        return _error(400, f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    state.set_scenario(name)
    return _json(_scenario_json(state))


def _clock_json(state: SimulatorState) -> dict[str, Any]:
    return {"now": state.now(), "paused": state.paused, "real_now": state.clock()}


async def handle_pause(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    state.pause()
    return _json(_clock_json(state))


async def handle_resume(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    state.resume()
    return _json(_clock_json(state))


async def handle_clock(request: web.Request) -> web.Response:
    return _json(_clock_json(request.app[STATE_KEY]))


def _epoch_param(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be epoch seconds, got {raw!r}") from None
    if not math.isfinite(value):
        raise BadRequest(f"{name} must be finite")
    return value


async def handle_truth(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        since = _epoch_param(request, "since")
        until = _epoch_param(request, "until")
    except BadRequest as exc:
        return _error(400, str(exc))
    if since is not None and until is not None and until < since:
        return _error(400, "until must not be before since")
    return _json(state.truth(since, until))


async def handle_stats(request: web.Request) -> web.Response:
    return _json(request.app[STATE_KEY].stats.as_json())


def app_for_state(state: SimulatorState) -> web.Application:
    app = web.Application()
    app[STATE_KEY] = state
    app.router.add_get(HISTORY_PATH, handle_history)
    app.router.add_get("/_sim/scenario", handle_get_scenario)
    app.router.add_post("/_sim/scenario", handle_set_scenario)
    app.router.add_post("/_sim/pause", handle_pause)
    app.router.add_post("/_sim/resume", handle_resume)
    app.router.add_get("/_sim/clock", handle_clock)
    app.router.add_get("/_sim/truth", handle_truth)
    app.router.add_get("/_sim/stats", handle_stats)
    return app


def create_app(
    seed: int = 1,
    scenario: str = "steady",
    volume: float = 1.0,
    clock: Clock = time.time,
    rate_limit_per_minute: int = 100,
    credentials: Credentials = DEFAULT_CREDENTIALS,
    slow_seconds: float = 3.0,
    history_hours: float = 24,
    buyers_always_open: bool = False,
) -> web.Application:
    """The simulator as an aiohttp app; its state is ``app[STATE_KEY]``."""
    return app_for_state(
        SimulatorState(
            seed=seed,
            scenario=scenario,
            volume=volume,
            clock=clock,
            rate_limit_per_minute=rate_limit_per_minute,
            credentials=credentials,
            slow_seconds=slow_seconds,
            history_hours=history_hours,
            buyers_always_open=buyers_always_open,
        )
    )


@dataclass(slots=True)
class RunningSimulator:
    runner: web.AppRunner
    state: SimulatorState
    host: str
    port: int

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT``; the API lives at ``url + HISTORY_PATH``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_simulator(
    host: str = "127.0.0.1", port: int = 0, **kwargs: Any
) -> RunningSimulator:
    """Start serving in the background; ``port=0`` picks a free port (see ``.port``)."""
    app = create_app(**kwargs)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = port
    server = site._server  # aiohttp exposes the bound port only through the server sockets
    if server is not None and getattr(server, "sockets", None):
        bound = server.sockets[0].getsockname()[1]
    return RunningSimulator(runner=runner, state=app[STATE_KEY], host=host, port=bound)


async def run_simulator(host: str = "127.0.0.1", port: int = 8080, **kwargs: Any) -> None:
    """Serve the simulator until cancelled. Prints nothing; ``kwargs`` as for create_app."""
    running = await start_simulator(host, port, **kwargs)
    try:
        await asyncio.Event().wait()
    finally:
        await running.close()
