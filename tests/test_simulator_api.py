"""The simulated History Report API over HTTP: parameters, errors, scenarios, truth, stats."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from leadflow_exporter.simulator import (
    DEFAULT_CREDENTIALS,
    HISTORY_PATH,
    STATE_KEY,
    SimulatorState,
    create_app,
    run_simulator,
    start_simulator,
)
from leadflow_exporter.simulator.catalog import NO_BUYER_SPIKE_SET_ID, SETS

EASTERN = ZoneInfo("America/New_York")
T0 = int(datetime(2026, 11, 25, 15, 0, tzinfo=EASTERN).timestamp())
HOUR = 3600
AUTH = {
    "Authorization": f"{DEFAULT_CREDENTIALS.access_key}:{DEFAULT_CREDENTIALS.secret_access_key}",
    "x-api-key": DEFAULT_CREDENTIALS.rate_limit_key,
}


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@asynccontextmanager
async def simulator(**kwargs: Any) -> AsyncIterator[tuple[TestClient, SimulatorState, FakeClock]]:
    clock = FakeClock(T0)
    kwargs.setdefault("clock", clock)
    kwargs.setdefault("rate_limit_per_minute", 0)
    kwargs.setdefault("history_hours", 6)
    app = create_app(**kwargs)
    async with TestClient(TestServer(app)) as client:
        yield client, app[STATE_KEY], clock


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


async def get(client: TestClient, **params: Any) -> aiohttp.ClientResponse:
    return await client.get(
        HISTORY_PATH, params={k: str(v) for k, v in params.items()}, headers=AUTH
    )


async def records(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    resp = await get(client, **params)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert set(body) == {"response"}
    return body["response"]


async def all_pages(
    client: TestClient, page_size: int = 250, **params: Any
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    page = 1
    while True:
        batch = await records(client, page=page, page_size=page_size, **params)
        out.extend(batch)
        if len(batch) < page_size:
            return out
        page += 1


def window(hours: float = 2) -> dict[str, str]:
    return {"start_date": iso(T0 - hours * HOUR), "end_date": iso(T0 + 1)}


# -- auth and validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-api-key": AUTH["x-api-key"]},
        {"Authorization": AUTH["Authorization"]},
        {**AUTH, "Authorization": "demo-access-key:wrong"},
        {**AUTH, "Authorization": f"Basic {AUTH['Authorization']}"},
        {**AUTH, "x-api-key": "wrong"},
    ],
)
async def test_bad_or_missing_credentials_get_401_json(headers: dict[str, str]) -> None:
    async with simulator() as (client, _, _):
        resp = await client.get(HISTORY_PATH, params=window(), headers=headers)
        assert resp.status == 401
        body = await resp.json()
        assert isinstance(body["error"], str) and body["error"]
        assert DEFAULT_CREDENTIALS.secret_access_key not in await resp.text()


async def test_custom_credentials_replace_the_defaults() -> None:
    from leadflow_exporter.simulator import Credentials

    creds = Credentials("access", "sekrit", "ratekey")
    async with simulator(credentials=creds) as (client, _, _):
        assert (await get(client, **window())).status == 401
        headers = {"Authorization": "access:sekrit", "x-api-key": "ratekey"}
        resp = await client.get(HISTORY_PATH, params=window(), headers=headers)
        assert resp.status == 200
        assert "sekrit" not in repr(creds) and "ratekey" not in repr(creds)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"start_date": iso(T0 - HOUR)},
        {"end_date": iso(T0)},
        {"start_date": "yesterday", "end_date": iso(T0)},
        {"start_date": iso(T0), "end_date": iso(T0 - HOUR)},
        {**window(), "active": "2"},
        {**window(), "active": "yes"},
        {**window(), "set_id": "abc"},
        {**window(), "page": "0"},
        {**window(), "page": "x"},
        {**window(), "page_size": "0"},
        {**window(), "page_size": "251"},
    ],
)
async def test_bad_queries_get_400_json(params: dict[str, str]) -> None:
    async with simulator() as (client, _, _):
        resp = await get(client, **params)
        assert resp.status == 400
        assert (await resp.json())["error"]


async def test_unencoded_plus_in_offset_is_explained() -> None:
    async with simulator() as (client, _, _):
        resp = await client.get(
            f"{HISTORY_PATH}?start_date=2026-11-25T10:00:00+00:00&end_date=2026-11-25T11:00:00Z",
            headers=AUTH,
        )
        assert resp.status == 400
        assert "%2B" in (await resp.json())["error"]


# -- parameters -----------------------------------------------------------------------------


async def test_date_range_is_inclusive_start_exclusive_end_on_call_date() -> None:
    async with simulator() as (client, state, _):
        calls = list(state.model.calls_between(T0 - HOUR, T0 - HOUR + 600))
        target = calls[len(calls) // 2]
        sids = {
            r["sid"] for r in await records(client, start_date=iso(target.start), end_date=iso(T0))
        }
        assert target.sid in sids
        sids = {
            r["sid"]
            for r in await records(client, start_date=iso(T0 - HOUR), end_date=iso(target.start))
        }
        assert target.sid not in sids
        everything = await all_pages(client, **window(1))
        expected = [c.sid for c in state.model.calls_between(T0 - HOUR, T0 + 1)]
        assert [r["sid"] for r in everything] == expected


async def test_dates_without_offset_are_us_eastern() -> None:
    async with simulator() as (client, _, _):
        start = datetime.fromtimestamp(T0 - HOUR, EASTERN)
        end = datetime.fromtimestamp(T0, EASTERN)
        naive = await records(
            client,
            start_date=start.strftime("%Y-%m-%dT%H:%M:%S"),
            end_date=end.strftime("%Y-%m-%d %H:%M:%S"),
        )
        with_offset = await records(client, start_date=iso(T0 - HOUR), end_date=iso(T0))
        assert naive and naive == with_offset


async def test_future_calls_are_never_served() -> None:
    async with simulator() as (client, _, clock):
        served = await all_pages(client, start_date=iso(T0 - HOUR), end_date=iso(T0 + 4 * HOUR))
        assert served
        assert all(
            datetime.strptime(r["call_date"], "%Y-%m-%d %H:%M:%S")
            .replace(tzinfo=EASTERN)
            .timestamp()
            <= T0
            for r in served
        )
        clock.t += HOUR
        later = await all_pages(client, start_date=iso(T0 - HOUR), end_date=iso(T0 + 4 * HOUR))
        assert len(later) > len(served)


async def test_set_id_filters_to_one_set() -> None:
    async with simulator() as (client, _, _):
        lf_set = SETS[1]
        served = await all_pages(client, set_id=lf_set.set_id, **window(3))
        assert served
        assert {r["set_name"] for r in served} == {lf_set.name}
        assert await records(client, set_id=999, **window(3)) == []


async def test_active_filter() -> None:
    async with simulator() as (client, state, _):
        active = await all_pages(client, active=1, **window(4))
        finished = await all_pages(client, active=0, **window(4))
        both = await all_pages(client, **window(4))
        assert {r["sid"] for r in active} == {c.sid for c in state.model.active_at(T0)}
        assert active and finished
        assert all(r["offer_price"] is None for r in active)
        assert all(r["offer_price"] is not None for r in finished)
        assert {r["sid"] for r in both} == {r["sid"] for r in active} | {r["sid"] for r in finished}


async def test_paging_is_stable_and_the_last_page_is_short() -> None:
    async with simulator() as (client, _, _):
        one_page = await records(client, page_size=250, **window(0.5))
        assert 20 < len(one_page) < 250
        paged = await all_pages(client, page_size=7, **window(0.5))
        assert paged == one_page
        last = len(one_page) // 7 + 1
        assert (
            len(await records(client, page=last, page_size=7, **window(0.5))) == len(one_page) % 7
        )
        assert await records(client, page=last + 5, page_size=7, **window(0.5)) == []
        default = await records(client, **window(0.5))
        assert default == one_page


async def test_sid_lookup_ignores_dates() -> None:
    async with simulator() as (client, state, clock):
        call = state.model.active_at(T0)[0]
        found = await records(client, sid=call.sid, start_date="garbage")
        assert [r["sid"] for r in found] == [call.sid]
        assert found[0]["offer_price"] is None
        assert await records(client, sid=call.sid, active=0) == []
        clock.t = call.end
        done = await records(client, sid=call.sid)
        assert done[0]["total_seconds"] == call.total_seconds
        assert await records(client, sid="0" * 32) == []
        assert await records(client, sid="nonsense") == []


async def test_history_hours_bounds_the_past() -> None:
    async with simulator(history_hours=1) as (client, state, _):
        assert state.traffic_start == T0 - HOUR
        served = await all_pages(client, start_date=iso(T0 - 5 * HOUR), end_date=iso(T0 + 1))
        assert served
        assert await records(client, start_date=iso(T0 - 5 * HOUR), end_date=iso(T0 - HOUR)) == []


# -- rate limit -----------------------------------------------------------------------------


async def test_rate_limit_answers_429_with_retry_after() -> None:
    async with simulator(rate_limit_per_minute=3) as (client, _, clock):
        for _ in range(3):
            assert (await get(client, **window())).status == 200
        clock.t += 20
        resp = await get(client, **window())
        assert resp.status == 429
        assert int(resp.headers["Retry-After"]) == 40
        assert "error" in await resp.json()
        clock.t += 41
        assert (await get(client, **window())).status == 200


async def test_rate_limit_zero_disables_it() -> None:
    async with simulator(rate_limit_per_minute=0) as (client, _, _):
        statuses = {(await get(client, **window(0.1))).status for _ in range(120)}
        assert statuses == {200}


# -- scenarios, clock, truth, stats ---------------------------------------------------------


async def test_scenario_switching_endpoints() -> None:
    async with simulator() as (client, state, clock):
        body = await (await client.get("/_sim/scenario")).json()
        assert body["name"] == "steady" and "messy-data" in body["scenarios"]
        clock.t += 10
        resp = await client.post("/_sim/scenario", json={"name": "no-buyer-spike"})
        assert resp.status == 200 and (await resp.json())["name"] == "no-buyer-spike"
        clock.t += 10
        resp = await client.post("/_sim/scenario", params={"name": "slow"})
        assert (await resp.json())["name"] == "slow"
        assert state.scenario == "slow"
        assert (await client.post("/_sim/scenario", json={"name": "nope"})).status == 400
        assert (await client.post("/_sim/scenario", data="{")).status == 400
        body = await (await client.get("/_sim/scenario")).json()
        assert [e["name"] for e in body["schedule"]] == ["steady", "no-buyer-spike", "slow"]


async def test_unknown_start_scenario_is_refused() -> None:
    with pytest.raises(ValueError):
        create_app(scenario="nope")


async def test_api_outage_returns_5xx_some_html() -> None:
    async with simulator(scenario="api-outage") as (client, _, _):
        kinds = set()
        for _ in range(30):
            resp = await get(client, **window())
            assert resp.status >= 500
            kinds.add(resp.content_type)
        assert kinds == {"application/json", "text/html"}
        # Ground truth keeps flowing: the outage hides the traffic, it does not stop it.
        assert (await (await client.get("/_sim/truth")).json())["calls_total"] > 0


async def test_rate_limited_scenario_refuses_a_share() -> None:
    async with simulator(scenario="rate-limited") as (client, _, _):
        statuses = []
        for _ in range(60):
            resp = await get(client, **window(0.2))
            statuses.append(resp.status)
            if resp.status == 429:
                assert 1 <= int(resp.headers["Retry-After"]) <= 3
        assert 5 < statuses.count(429) < 40
        assert statuses.count(200) == 60 - statuses.count(429)


async def test_slow_scenario_delays_responses() -> None:
    async with simulator(scenario="slow", slow_seconds=0.3) as (client, _, _):
        started = time.monotonic()
        assert (await get(client, **window(0.2))).status == 200
        assert time.monotonic() - started >= 0.3
        # Admin endpoints stay fast so tests can always steer the simulator.
        assert (await client.get("/_sim/stats")).status == 200


async def test_scenario_affects_only_calls_starting_after_the_switch() -> None:
    async with simulator() as (client, state, clock):
        before = await all_pages(client, set_id=NO_BUYER_SPIKE_SET_ID, active=0, **window(5))
        await client.post("/_sim/scenario", json={"name": "no-buyer-spike"})
        switched = clock.t
        clock.t += 3 * HOUR
        again = await all_pages(
            client,
            set_id=NO_BUYER_SPIKE_SET_ID,
            active=0,
            start_date=iso(T0 - 5 * HOUR),
            end_date=iso(T0),
        )
        old = {r["sid"]: r["lead_status"] for r in before}
        assert {r["sid"]: r["lead_status"] for r in again if r["sid"] in old} == old
        truth = await (
            await client.get("/_sim/truth", params={"since": str(switched + 600)})
        ).json()
        medicare = next(s for s in truth["sets"].values() if s["set_id"] == NO_BUYER_SPIKE_SET_ID)
        assert medicare["calls"]["no_buyer"] > 2 * medicare["calls"]["connected"]
        assert state.scenario == "no-buyer-spike"


async def test_pause_freezes_the_traffic() -> None:
    async with simulator() as (client, state, clock):
        body = await (await client.post("/_sim/pause")).json()
        assert body["paused"] is True and body["now"] == T0
        frozen = await all_pages(client, **window(3))
        truth = await (await client.get("/_sim/truth")).json()
        clock.t += 600
        assert state.now() == T0
        assert await all_pages(client, **window(3)) == frozen
        assert await (await client.get("/_sim/truth")).json() == truth
        body = await (await client.post("/_sim/resume")).json()
        # Calls that started during the pause now show up, as after an API lag.
        assert body["paused"] is False and body["now"] == T0 + 600
        wider = {"start_date": iso(T0 - 3 * HOUR), "end_date": iso(T0 + HOUR)}
        assert len(await all_pages(client, **wider)) > len(frozen)
        clock.t += 60
        assert state.now() == T0 + 660
        assert (await (await client.get("/_sim/clock")).json())["now"] == T0 + 660


def _money(value: Any) -> Decimal:
    if value in (None, ""):
        return Decimal(0)
    return Decimal(str(value).replace("$", ""))


def _int(value: Any) -> int:
    return 0 if value in (None, "") else int(value)


def _flag(value: Any) -> bool:
    return str(value).strip().lower() in ("y", "1", "true", "yes")


def _epoch(call_date: Any) -> float | None:
    try:
        parsed = datetime.fromisoformat(str(call_date))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=EASTERN)
    return parsed.timestamp()


def _totals_from_records(served: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What a correct exporter would count from these finished-call records."""
    out: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for r in served:
        if not r.get("sid") or _epoch(r.get("call_date")) is None or r["sid"] in seen:
            continue
        seen.add(r["sid"])
        s = out.setdefault(
            r["set_name"],
            {"calls": {}, "talk_seconds": 0, "total_seconds": 0, "offer_price": Decimal(0),
             "affiliate_price": Decimal(0), "margin": Decimal(0), "offer_qualified": 0,
             "affiliate_qualified": 0, "reroute": 0, "repeat_affiliate_caller": 0, "contested": 0},
        )  # fmt: skip
        status = r["lead_status"].lower().replace(" ", "_")
        s["calls"][status] = s["calls"].get(status, 0) + 1
        s["talk_seconds"] += _int(r["talk_seconds"])
        s["total_seconds"] += _int(r["total_seconds"])
        for key in ("offer_price", "affiliate_price", "margin"):
            s[key] += _money(r[key])
        s["offer_qualified"] += _flag(r["offer_qualified"])
        s["affiliate_qualified"] += _flag(r["affiliate_qualified"])
        s["reroute"] += _flag(r["reroute"])
        s["repeat_affiliate_caller"] += _flag(r["repeat_affiliate_caller"])
        s["contested"] += _flag(r["contest_qualification"])
    return out


@pytest.mark.parametrize("scenario", ["steady", "messy-data"])
async def test_truth_matches_the_records_served(scenario: str) -> None:
    async with simulator(scenario=scenario) as (client, state, clock):
        clock.t += 1800
        await client.post("/_sim/pause")
        now = state.now()
        served = await all_pages(
            client,
            page_size=100,
            active=0,
            start_date=iso(state.traffic_start),
            end_date=iso(now + 1),
        )
        truth = await (
            await client.get("/_sim/truth", params={"since": str(state.traffic_start)})
        ).json()
        assert truth["until"] == now
        counted = _totals_from_records(served)
        assert truth["calls_total"] > 300
        assert truth["calls_total"] == sum(sum(s["calls"].values()) for s in counted.values())
        for name, expected in truth["sets"].items():
            got = counted.get(name)
            if expected["calls_total"] == 0:
                assert got is None
                continue
            assert got is not None
            assert {k: v for k, v in expected["calls"].items() if v} == got["calls"]
            for key in ("talk_seconds", "total_seconds", "offer_qualified", "affiliate_qualified",
                        "reroute", "repeat_affiliate_caller", "contested"):  # fmt: skip
                assert expected[key] == got[key], (name, key)
            for key in ("offer_price", "affiliate_price", "margin"):
                assert Decimal(expected[key]) == got[key], (name, key)
        active = await all_pages(
            client, active=1, start_date=iso(now - 4 * HOUR), end_date=iso(now + 1)
        )
        active_sids = {r["sid"] for r in active if r.get("sid") and _epoch(r.get("call_date"))}
        assert truth["active_total"] == len(active_sids)
        if scenario == "messy-data":
            # Malformed records were served but are not in the truth; duplicates were served twice.
            assert len(served) > truth["calls_total"]
            sids = [r.get("sid") for r in served if r.get("sid")]
            assert len(sids) > len(set(sids))


async def test_truth_window_is_by_end_time_and_validated() -> None:
    async with simulator() as (client, state, _):
        since, until = T0 - 2 * HOUR, T0 - HOUR
        truth = await (
            await client.get("/_sim/truth", params={"since": since, "until": until})
        ).json()
        expected = [c for c in state.model.calls_ending_between(since, until)]
        assert truth["calls_total"] == len(expected) > 0
        assert truth["since"] == since and truth["until"] == until
        later = await (await client.get("/_sim/truth", params={"until": T0 + HOUR})).json()
        assert later["until"] == T0
        assert (await client.get("/_sim/truth", params={"since": "x"})).status == 400
        assert (
            await client.get("/_sim/truth", params={"since": T0, "until": T0 - 1})
        ).status == 400


async def test_stats_count_requests_codes_and_records() -> None:
    async with simulator() as (client, _, _):
        history = await records(client, **window(1))
        active = await records(client, active=1, **window(1))
        sid = await records(client, sid=history[0]["sid"])
        await client.get(HISTORY_PATH, params=window(1))
        await get(client)
        stats = await (await client.get("/_sim/stats")).json()
        assert stats["requests"] == {"history": 3, "active": 1, "sid": 1}
        assert stats["requests_total"] == 5
        assert stats["status_codes"] == {"200": 3, "400": 1, "401": 1}
        assert stats["records_served"] == len(history) + len(active) + len(sid)
        assert stats["records_served_by_kind"]["sid"] == 1


async def test_same_seed_serves_identical_responses() -> None:
    bodies = []
    for seed in (5, 5, 6):
        async with simulator(seed=seed, scenario="messy-data") as (client, _, _):
            resp = await get(client, **window(2))
            bodies.append(await resp.read())
    assert bodies[0] == bodies[1]
    assert bodies[0] != bodies[2]


async def test_start_and_run_simulator_serve_over_tcp(capsys: pytest.CaptureFixture[str]) -> None:
    running = await start_simulator("127.0.0.1", 0, seed=1, rate_limit_per_minute=0)
    try:
        assert running.port > 0
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                running.url + HISTORY_PATH,
                params={"start_date": iso(time.time() - 600), "end_date": iso(time.time())},
                headers=AUTH,
            ) as resp,
        ):
            assert resp.status == 200
            assert "response" in await resp.json()
    finally:
        await running.close()

    task = asyncio.create_task(run_simulator("127.0.0.1", 0, seed=1))
    await asyncio.sleep(0.2)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
