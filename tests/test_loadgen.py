"""The benchmark's load generator: percentiles by nearest rank, and paced requests timed from
when they were due (a stall delays the requests due meanwhile, and shows in their latency)."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.loadgen import LoadResult, load


def test_percentile_is_the_nearest_rank() -> None:
    result = LoadResult(latencies=[float(i) for i in range(1, 101)])
    assert result.percentile(99) == 99.0
    assert result.percentile(50) == 50.0
    assert result.percentile(100) == 100.0
    three_hundred = LoadResult(latencies=[float(i) for i in range(1, 301)])
    assert three_hundred.percentile(99) == 297.0
    assert LoadResult(latencies=[5.0]).percentile(99) == 5.0


async def test_a_stall_shows_in_the_latency_of_every_request_due_during_it() -> None:
    served = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal served
        served += 1
        if served == 5:
            await asyncio.sleep(0.5)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/metrics", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        result = await load(server.port, connections=1, requests=60, seconds=5.0, rate=50.0)
    finally:
        await server.close()
    assert result.errors == 0
    slow = [latency for latency in result.latencies if latency >= 0.2]
    # At 50/s, about 25 requests fall due during the half-second stall; timed from their due
    # time, each waited for it (at least the first dozen by 0.2 s or more).
    assert len(slow) >= 10, sorted(result.latencies)[-15:]
    assert max(result.latencies) >= 0.45
