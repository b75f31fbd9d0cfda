"""Faults lose and double nothing: each case ends with /metrics equal to the ground truth.

The process cases run the real daemon (`leadflow-exporter run`) and the simulator
(`leadflow-exporter simulate`) as separate processes, kill or stop the exporter at seeded
random moments, restart it on the same state file, and compare its /metrics with
`/_sim/truth?since=T0`, T0 being the simulated time of the exporter's first (baseline) poll.
The API faults run the same pipeline in process on a manual clock, where an hour of traffic
takes a second, and render /metrics with the real collector.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from leadflow_exporter.collector import LeadFlowCollector
from leadflow_exporter.config import PollConfig
from leadflow_exporter.daemon import STOP_GRACE_SECONDS
from leadflow_exporter.ratebudget import RateBudget
from leadflow_exporter.simulator import DEFAULT_CREDENTIALS, HISTORY_PATH
from leadflow_exporter.state import SQLiteStore
from tests.harness import Harness, harness, volume_for
from tests.truth import truth_view

# A Tuesday morning, Eastern time: busy enough that every status appears.
BUSY = datetime(2026, 11, 17, 15, 0, tzinfo=UTC).timestamp()
EXPORTER = [sys.executable, "-m", "leadflow_exporter"]


# -- /metrics in the truth's shape ---------------------------------------------------------------


def metrics_view(text: str) -> dict[str, dict[str, Any]]:
    """The business metrics of a /metrics page, per set, in the shape of `truth_view`."""
    out: dict[str, dict[str, Any]] = {}

    def entry(name: str) -> dict[str, Any]:
        return out.setdefault(name, {"calls": {}})

    money = {
        "leadflow_offer_revenue_usd_total": "offer_price",
        "leadflow_affiliate_payout_usd_total": "affiliate_price",
        "leadflow_margin_usd": "margin",
    }
    seconds = {
        "leadflow_talk_seconds_total": "talk_seconds",
        "leadflow_call_seconds_total": "total_seconds",
    }
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels, value = sample.labels, sample.value
            if sample.name == "leadflow_calls_total":
                if value:
                    entry(labels["set_name"])["calls"][labels["lead_status"]] = int(value)
            elif sample.name in money:
                entry(labels["set_name"])[money[sample.name]] = Decimal(repr(value))
            elif sample.name in seconds:
                entry(labels["set_name"])[seconds[sample.name]] = value
            elif sample.name == "leadflow_qualified_calls_total":
                entry(labels["set_name"])[f"{labels['party']}_qualified"] = int(value)
            elif sample.name == "leadflow_repeat_calls_total":
                entry(labels["set_name"])[labels["kind"]] = int(value)
            elif sample.name == "leadflow_contested_calls_total":
                entry(labels["set_name"])["contested"] = int(value)
    return {name: e for name, e in out.items() if e["calls"]}


def assert_metrics_match(text: str, truth: dict[str, Any]) -> int:
    """Every business series on the page equals the truth; returns the calls compared."""
    expected = truth_view(truth)
    actual = metrics_view(text)
    assert actual == expected
    total = sum(sum(e["calls"].values()) for e in actual.values())
    assert total == truth["calls_total"]
    return total


def render(h: Harness) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        LeadFlowCollector(
            h.ledger,
            h.health,
            RateBudget(100, h.clock),
            interval_seconds=h.poller.poll.interval_seconds,
        )
    )
    return generate_latest(registry).decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


# -- API faults, in process ----------------------------------------------------------------------


async def test_api_outage_of_several_cycles(tmp_path: Path) -> None:
    async with harness(BUSY, store=SQLiteStore(tmp_path / "s.db"), sim={"volume": 3.0}) as h:
        await h.cycle()
        await h.run_for(900)
        before = render(h)
        watermark = h.ledger.watermark
        h.sim.set_scenario("api-outage")
        for _ in range(8):
            report = await h.cycle(60)
            assert not report.ok
            page = render(h)
            assert sample(page, "leadflow_up") == 0
            # The last good totals are still served, unchanged.
            assert metrics_view(page) == metrics_view(before)
        assert h.ledger.watermark == watermark
        errors = {reason for (_, reason) in h.health.api_errors}
        assert "server_error" in errors
        h.sim.set_scenario("steady")
        await h.run_for(900)
        await h.settle()
        page = render(h)
        assert sample(page, "leadflow_up") == 1
        assert assert_metrics_match(page, h.truth()) > 100
        h.ledger.close()


async def test_429_storm(tmp_path: Path) -> None:
    async with harness(
        BUSY,
        store=SQLiteStore(tmp_path / "s.db"),
        api={"max_retries": 4},
        sim={"volume": 3.0, "scenario": "rate-limited"},
    ) as h:
        await h.cycle()
        await h.run_for(3600)
        assert h.health.api_errors[("history", "rate_limited")] > 10
        assert h.health.api_requests[("history", "429")] > 10
        # Retry-After was honoured: the client waited before trying again.
        assert sum(h.clock.slept) > 10
        h.sim.set_scenario("steady")
        await h.run_for(120)
        await h.settle()
        assert assert_metrics_match(render(h), h.truth()) > 100
        h.ledger.close()


async def test_truncated_bodies(tmp_path: Path) -> None:
    async with harness(
        BUSY,
        store=SQLiteStore(tmp_path / "s.db"),
        api={"max_retries": 5},
        sim={"volume": 3.0, "scenario": "truncated-bodies"},
    ) as h:
        await h.cycle()
        await h.run_for(3600)
        # Both kinds of cut: a short body with an honest length (bad JSON) and a connection
        # dropped before the announced length.
        assert h.health.api_errors[("history", "bad_envelope")] > 5
        assert h.health.api_errors[("history", "truncated_body")] > 5
        h.sim.set_scenario("steady")
        await h.run_for(120)
        await h.settle()
        assert assert_metrics_match(render(h), h.truth()) > 100
        h.ledger.close()


async def test_duplicate_and_malformed_records(tmp_path: Path) -> None:
    async with harness(
        BUSY,
        store=SQLiteStore(tmp_path / "s.db"),
        sim={"volume": 3.0, "scenario": "messy-data"},
    ) as h:
        await h.cycle()
        await h.run_for(3600)
        await h.settle()
        page = render(h)
        truth = h.truth()
        assert assert_metrics_match(page, truth) > 100
        invalid = {
            s.labels["reason"]: s.value
            for f in text_string_to_metric_families(page)
            for s in f.samples
            if s.name == "leadflow_exporter_invalid_records_total"
        }
        assert invalid.get("missing_sid", 0) > 0 and invalid.get("bad_call_date", 0) > 0
        # Calls served twice finished in the compared span, and were counted once.
        calls = h.sim.model.calls_between(BUSY - 4 * 3600, h.clock.now())
        assert sum(1 for c in calls if c.duplicated and c.end > BUSY) > 10
        h.ledger.close()


async def test_long_calls_outliving_the_overlap_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    poll = PollConfig(interval_seconds=60, overlap_seconds=120, max_call_seconds=14400)
    async with harness(BUSY, poll=poll, store=SQLiteStore(path), sim={"volume": 3.0}) as h:
        await h.cycle()
        await h.run_for(3600)
        stopped_at = h.clock.now()
        followed = dict(h.ledger.followed)
        old = [c for c in followed.values() if c.call_ts < stopped_at - poll.overlap_seconds]
        assert old, "no followed call older than the overlap at the stop"
        h.ledger.close()
    async with harness(BUSY, poll=poll, store=SQLiteStore(path), sim={"volume": 3.0}) as h:
        # Down for 40 minutes: calls followed at the stop finish meanwhile, and started
        # long before the first window after the restart.
        h.clock.set(stopped_at + 2400)
        assert h.ledger.followed == followed
        await h.cycle()
        await h.run_for(3600)
        assert h.health.records["sid"] > 0
        assert h.health.followups_abandoned == 0
        await h.settle()
        assert assert_metrics_match(render(h), h.truth()) > 100
        h.ledger.close()


# -- real processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=b"" if method == "POST" else None, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until(predicate: Callable[[], object], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out after {limit:g}s waiting for {what}")


@dataclass
class Stack:
    """A simulator process and the exporter processes run against it, one at a time."""

    tmp: Path
    sim_url: str
    simulator: subprocess.Popen[bytes]
    exporter_port: int = field(default_factory=free_port)
    exporter: subprocess.Popen[bytes] | None = None
    runs: int = 0
    t0: float = 0.0

    @property
    def state_path(self) -> Path:
        return self.tmp / "state.db"

    @property
    def exporter_url(self) -> str:
        return f"http://127.0.0.1:{self.exporter_port}"

    def sim(self, method: str, path: str) -> Any:
        status, body = http(method, self.sim_url + path)
        assert status == 200, (path, status, body)
        return json.loads(body)

    def write_config(self, base_url: str) -> Path:
        config = {
            "api": {
                "base_url": base_url,
                "access_key": DEFAULT_CREDENTIALS.access_key,
                "secret_access_key": DEFAULT_CREDENTIALS.secret_access_key,
                "rate_limit_key": DEFAULT_CREDENTIALS.rate_limit_key,
                "requests_per_minute": 100000,
                "timeout_seconds": 10,
            },
            "poll": {"interval_seconds": 1, "overlap_seconds": 900},
            "state": {"path": str(self.state_path)},
            "server": {"listen": f"127.0.0.1:{self.exporter_port}"},
            "logging": {"level": "info", "format": "json"},
        }
        path = self.tmp / f"config-{self.runs}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def start_exporter(self, base_url: str | None = None) -> subprocess.Popen[bytes]:
        assert self.exporter is None or self.exporter.poll() is not None
        self.runs += 1
        config = self.write_config(base_url or self.sim_url + HISTORY_PATH)
        log = open(self.tmp / f"exporter-{self.runs}.log", "wb")  # noqa: SIM115
        self.exporter = subprocess.Popen(
            [*EXPORTER, "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        wait_until(self.healthy, 20, "the exporter's /-/healthy")
        return self.exporter

    def healthy(self) -> bool:
        assert self.exporter is not None
        if self.exporter.poll() is not None:
            raise AssertionError(f"exporter exited with {self.exporter.returncode}: {self.log()}")
        return http("GET", self.exporter_url + "/-/healthy")[0] == 200

    def ready(self) -> bool:
        return self.healthy() and http("GET", self.exporter_url + "/-/ready")[0] == 200

    def log(self) -> str:
        return (self.tmp / f"exporter-{self.runs}.log").read_text()[-3000:]

    def scrape(self) -> str:
        status, body = http("GET", self.exporter_url + "/metrics")
        assert status == 200
        return body.decode()

    def last_success(self) -> float:
        return (
            sample(
                self.scrape(), "leadflow_exporter_last_success_timestamp_seconds", query="history"
            )
            or 0.0
        )

    def wait_cycles(self, count: int, limit: float = 30) -> None:
        """Wait until `count` more history queries succeeded (and were rendered)."""
        for _ in range(count):
            mark = self.last_success()
            wait_until(lambda mark=mark: self.last_success() > mark, limit, "a successful cycle")

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.exporter is not None
        self.exporter.send_signal(sig)
        return self.exporter.wait(timeout=STOP_GRACE_SECONDS + 15)

    def first_run(self) -> None:
        """Start the exporter with the simulator paused, so T0 is its baseline's time."""
        self.sim("POST", "/_sim/pause")
        self.start_exporter()
        wait_until(self.ready, 30, "the exporter's first cycle")
        self.t0 = self.sim("GET", "/_sim/clock")["now"]
        self.sim("POST", "/_sim/resume")

    def finish_and_compare(self) -> int:
        """Freeze the traffic, let the exporter catch up, compare /metrics with the truth."""
        wait_until(self.ready, 30, "the exporter's first cycle")
        self.sim("POST", "/_sim/pause")
        try:
            self.wait_cycles(2)
            page = self.scrape()
            truth = self.sim("GET", f"/_sim/truth?since={self.t0}")
        finally:
            self.sim("POST", "/_sim/resume")
        assert sample(page, "leadflow_up") == 1
        return assert_metrics_match(page, truth)

    def close(self) -> None:
        for proc in (self.exporter, self.simulator):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    port = free_port()
    simulator = subprocess.Popen(
        [
            *EXPORTER,
            "simulate",
            "--listen",
            f"127.0.0.1:{port}",
            "--scenario",
            "steady",
            "--rate-limit",
            "0",
            "--volume",
            # About what volume 20 gives on a weekday afternoon, whatever the hour (at 20 an
            # evening run counted no call at all).
            str(volume_for(1.0, time.time())),
            "--seed",
            "11",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    s = Stack(tmp=tmp_path, sim_url=f"http://127.0.0.1:{port}", simulator=simulator)
    try:
        wait_until(lambda: http("GET", s.sim_url + "/_sim/clock")[0] == 200, 20, "the simulator")
        yield s
    finally:
        s.close()


def saved_calls(path: Path) -> dict[tuple[str, ...], int]:
    store = SQLiteStore(path)
    try:
        snapshot = store.load(())
    finally:
        store.close()
    assert snapshot is not None
    return {k: v for k, v in snapshot.totals.calls.items() if v}


def page_calls(page: str) -> dict[tuple[str, ...], int]:
    return {
        (s.labels["set_name"], s.labels["lead_status"]): int(s.value)
        for f in text_string_to_metric_families(page)
        for s in f.samples
        if s.name == "leadflow_calls_total" and s.value
    }


@pytest.mark.e2e
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_random_moments(stack: Stack, seed: int) -> None:
    rng = random.Random(seed)
    stack.first_run()
    kills = 4
    for _ in range(kills):
        # From the moment the server answers: the first cycle after a restart (the catch-up)
        # and later cycles, at any instant of reading, staging or committing.
        time.sleep(rng.uniform(0.0, 2.0))
        assert stack.kill(signal.SIGKILL) == -signal.SIGKILL
        stack.start_exporter()
    counted = stack.finish_and_compare()
    assert counted > 0
    db = sqlite3.connect(stack.state_path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()


@pytest.mark.e2e
def test_sigterm_then_downtime_while_calls_keep_finishing(stack: Stack) -> None:
    rng = random.Random(7)
    stack.first_run()
    # Something counted and saved first (a fixed sleep was not always enough on a busy
    # machine), then a stop in the middle of whatever the exporter is doing.
    wait_until(lambda: sum(page_calls(stack.scrape()).values()) > 0, 30, "a counted call")
    time.sleep(rng.uniform(0.0, 1.0))
    started = time.monotonic()
    assert stack.kill(signal.SIGTERM) == 0
    assert time.monotonic() - started < 5
    assert '"event": "stopped"' in stack.log() or '"event":"stopped"' in stack.log()
    # The file was closed cleanly: WAL checkpointed away, nothing half written.
    wal = stack.state_path.with_name(stack.state_path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    saved = saved_calls(stack.state_path)
    assert sum(saved.values()) > 0

    # A restart shows the same totals: with the API unreachable no cycle can add to them.
    dead = f"http://127.0.0.1:{free_port()}{HISTORY_PATH}"
    stack.start_exporter(dead)
    assert page_calls(stack.scrape()) == saved
    time.sleep(1.5)
    page = stack.scrape()
    assert sample(page, "leadflow_up") == 0
    assert page_calls(page) == saved
    # Stopping while the cycle waits out its retry backoff: the cycle gets the grace period
    # to finish, then is cancelled before its commit; either way exit 0.
    started = time.monotonic()
    assert stack.kill(signal.SIGTERM) == 0
    assert time.monotonic() - started < STOP_GRACE_SECONDS + 5
    assert saved_calls(stack.state_path) == saved

    # Down for a while as calls keep finishing, then back: they are caught up, once.
    down_from = stack.sim("GET", "/_sim/clock")["now"]
    time.sleep(12)
    ended = stack.sim("GET", f"/_sim/truth?since={down_from}")["calls_total"]
    assert ended > 0, "no call finished while the exporter was down"
    stack.start_exporter()
    counted = stack.finish_and_compare()
    assert counted >= sum(saved.values()) + ended
