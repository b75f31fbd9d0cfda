"""An exporter pipeline polling an in-process simulator on a manual clock."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp.test_utils import TestServer

from leadflow_exporter.client import LeadFlowClient
from leadflow_exporter.clock import ManualClock
from leadflow_exporter.config import ApiConfig, PollConfig, Secret
from leadflow_exporter.health import Health
from leadflow_exporter.ledger import Ledger, MemoryStore, Store
from leadflow_exporter.poller import Poller
from leadflow_exporter.ratebudget import RateBudget
from leadflow_exporter.simulator import (
    DEFAULT_CREDENTIALS,
    HISTORY_PATH,
    STATE_KEY,
    TrafficModel,
    create_app,
)
from leadflow_exporter.simulator.app import SimulatorState


@dataclass
class Harness:
    """An exporter pipeline (without the HTTP server) polling an in-process simulator."""

    clock: ManualClock
    sim: SimulatorState
    poller: Poller
    ledger: Ledger
    health: Health
    start: float

    async def cycle(self, advance: float | None = None) -> Any:
        if advance:
            self.clock.advance(advance)
        return await self.poller.run_cycle()

    async def run_for(self, seconds: float) -> None:
        interval = self.poller.poll.interval_seconds
        for _ in range(int(seconds // interval)):
            await self.cycle(interval)

    async def settle(self) -> None:
        """Freeze the simulator and poll twice: a call is taken as ended only after it was
        missing from two live-call polls, so the last one to end needs a cycle more."""
        self.sim.pause()
        for _ in range(2):
            await self.cycle(self.poller.poll.interval_seconds)

    def truth(self) -> dict[str, Any]:
        return self.sim.truth(since=self.start, until=self.sim.now())


def volume_for(calls_per_second: float, now: float) -> float:
    """The simulator volume at which calls arrive about `calls_per_second` at `now`: its
    traffic follows an Eastern-time day, 30 times busier in the afternoon than before dawn, so
    a fixed volume gives a test too few calls at some hours."""
    per_minute_at_volume_1 = TrafficModel(volume=1.0).arrival_rate(now)
    return round(calls_per_second * 60 / per_minute_at_volume_1, 1)


def api_config(base_url: str, **overrides: Any) -> ApiConfig:
    values: dict[str, Any] = {
        "base_url": base_url,
        "access_key": Secret(DEFAULT_CREDENTIALS.access_key),
        "secret_access_key": Secret(DEFAULT_CREDENTIALS.secret_access_key),
        "rate_limit_key": Secret(DEFAULT_CREDENTIALS.rate_limit_key),
        "requests_per_minute": 100_000,
        "max_retries": 2,
        "timeout_seconds": 10.0,
    }
    values.update(overrides)
    return ApiConfig(**values)


@contextlib.asynccontextmanager
async def harness(
    start: float,
    *,
    poll: PollConfig | None = None,
    store: Store | None = None,
    extra_labels: tuple[str, ...] = (),
    api: dict[str, Any] | None = None,
    sim: dict[str, Any] | None = None,
    max_series: int = 5000,
) -> AsyncIterator[Harness]:
    clock = ManualClock(start)
    sim_kwargs: dict[str, Any] = {"seed": 7, "rate_limit_per_minute": 0, "slow_seconds": 0.0}
    sim_kwargs.update(sim or {})
    app = create_app(clock=clock.now, **sim_kwargs)
    server = TestServer(app)
    await server.start_server()
    # One-minute cycles (the tests advance the clock in minutes) with the default 10-minute
    # full read: full_overlap_every counts cycles, and its default of 20 is for 30 s cycles.
    poll = poll or PollConfig(
        interval_seconds=60, overlap_seconds=900, max_call_seconds=14400, full_overlap_every=10
    )
    health = Health()
    ledger = Ledger(
        store or MemoryStore(),
        health,
        extra_labels=extra_labels,
        max_series_per_metric=max_series,
        retention_seconds=poll.overlap_seconds + poll.max_call_seconds,
    )
    config = api_config(str(server.make_url(HISTORY_PATH)), **(api or {}))
    budget = RateBudget(config.requests_per_minute, clock)
    async with aiohttp.ClientSession() as session:
        client = LeadFlowClient(config, session, budget, clock, health, extra_labels=extra_labels)
        poller = Poller(
            poll, client, ledger, health, clock, requests_per_minute=config.requests_per_minute
        )
        try:
            yield Harness(clock, app[STATE_KEY], poller, ledger, health, start)
        finally:
            await server.close()


def run_exporter(tmp_path: Path, state: Path) -> subprocess.CompletedProcess[str]:
    """`leadflow-exporter run` on `state` as a process of its own, to see how it refuses."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "api:\n  access_key: a\n  secret_access_key: b\n  rate_limit_key: c\n"
        f"state:\n  path: {state}\nserver:\n  listen: 127.0.0.1:0\n"
    )
    return subprocess.run(
        [sys.executable, "-m", "leadflow_exporter", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_daemon_config(path: Path, base_url: str, **sections: dict[str, Any]) -> Path:
    """A config for an in-process daemon polling ``base_url`` fast; ``sections`` update it,
    and a key set to None is left out."""
    config: dict[str, Any] = {
        "api": {
            "base_url": base_url,
            "access_key": DEFAULT_CREDENTIALS.access_key,
            "secret_access_key": DEFAULT_CREDENTIALS.secret_access_key,
            "rate_limit_key": DEFAULT_CREDENTIALS.rate_limit_key,
            "requests_per_minute": 6000,
            "timeout_seconds": 5,
        },
        "poll": {"interval_seconds": 0.2, "overlap_seconds": 900},
        "state": {"path": ""},
        "server": {"listen": "127.0.0.1:0"},
        "logging": {"level": "warning"},
    }
    for name, values in sections.items():
        section = config.setdefault(name, {})
        section.update(values)
        for key in [k for k, v in section.items() if v is None]:
            del section[key]
    path.write_text(yaml.safe_dump(config))
    return path


async def wait_for(predicate: Any, limit: float = 15.0) -> None:
    """Until the async ``predicate`` holds; AssertionError after ``limit`` seconds."""
    deadline = asyncio.get_running_loop().time() + limit
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)
