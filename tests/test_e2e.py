"""The real daemon as a process against the simulator as a process, over real HTTP.

Each case ends with /metrics equal to the simulator's ground truth exactly: every finished
call since the exporter's first (baseline) poll, per set and status, with its talk time and
money, and the calls in progress.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from leadflow_exporter.simulator import DEFAULT_CREDENTIALS, HISTORY_PATH
from tests.harness import volume_for

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until(predicate: Any, limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Stack:
    sim_url: str
    exporter_url: str
    exporter: subprocess.Popen[bytes]
    simulator: subprocess.Popen[bytes]
    log_path: Path
    t0: float = 0.0

    def sim(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        status, data = http(method, self.sim_url + path, body)
        assert status == 200, (path, status, data)
        return json.loads(data) if data else None

    def scrape(self) -> str:
        status, body = http("GET", self.exporter_url + "/metrics")
        assert status == 200
        return body.decode()

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        out = {}
        for family in text_string_to_metric_families(self.scrape()):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def settle(self) -> None:
        """Freeze the simulator, then wait for two whole cycles that started after the freeze.

        A cycle polls the live calls first and history second, and the business metrics are
        rendered when it ends. A call counts as ended once it was missing from two live-call
        polls, so the second cycle run entirely on the frozen simulator is the one to compare;
        it is on /metrics once the live-call poll after it has happened.
        """
        self.sim("POST", "/_sim/pause")
        paused_at = time.time()
        marks: list[float] = []

        def caught_up() -> bool:
            samples = self.samples()

            def success(query: str) -> float:
                key = ("leadflow_exporter_last_success_timestamp_seconds", (("query", query),))
                return samples.get(key, 0.0)

            active = success("active")
            if active > max([paused_at, *marks]):
                marks.append(active)
            return (
                len(marks) >= 4
                and success("history") > marks[-2]
                and samples.get(("leadflow_up", ()), 0) == 1
            )

        wait_until(caught_up, 90, "a whole successful cycle after the pause")


# About what volume 100 gives on a weekday afternoon, whatever the hour the tests run at.
CALLS_PER_SECOND = 4.0


def start_stack(tmp_path: Path, *, scenario: str = "steady", seed: int = 11) -> Stack:
    sim_port, exporter_port = free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "exporter.log"
    simulator = subprocess.Popen(
        [
            sys.executable, "-m", "leadflow_exporter", "simulate",
            "--listen", f"127.0.0.1:{sim_port}", "--scenario", "steady", "--seed", str(seed),
            "--volume", str(volume_for(CALLS_PER_SECOND, time.time())),
            "--rate-limit", "0", "--slow-seconds", "0.3",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    sim_url = f"http://127.0.0.1:{sim_port}"
    wait_until(lambda: http("GET", sim_url + "/_sim/clock")[0] == 200, 20, "the simulator")
    http("POST", sim_url + "/_sim/pause")
    config = {
        "api": {
            "base_url": sim_url + HISTORY_PATH,
            "access_key_file": "access",
            "secret_access_key_file": "secret",
            "requests_per_minute": 6000,
            "timeout_seconds": 5,
            "max_retries": 3,
        },
        "poll": {"interval_seconds": 1, "overlap_seconds": 900, "max_call_seconds": 14400},
        "state": {"path": str(tmp_path / "state.db")},
        "server": {"listen": f"127.0.0.1:{exporter_port}"},
        "logging": {"level": "info", "format": "json"},
    }
    (tmp_path / "access").write_text(DEFAULT_CREDENTIALS.access_key + "\n")
    (tmp_path / "secret").write_text(DEFAULT_CREDENTIALS.secret_access_key)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    exporter = subprocess.Popen(
        [sys.executable, "-m", "leadflow_exporter", "run", "--config", str(config_path)],
        stdout=subprocess.DEVNULL,
        stderr=log_path.open("wb"),
        # The rate limit key comes from the environment, as in a container.
        env={**env, "LEADFLOW_RATE_LIMIT_KEY": DEFAULT_CREDENTIALS.rate_limit_key},
    )
    stack = Stack(sim_url, f"http://127.0.0.1:{exporter_port}", exporter, simulator, log_path)
    wait_until(lambda: http("GET", stack.exporter_url + "/-/ready")[0] == 200, 30, "exporter ready")
    # The first cycle ran on the frozen simulator: its moment is where counting starts.
    stack.t0 = stack.sim("GET", "/_sim/clock")["now"]
    if scenario != "steady":
        stack.sim("POST", "/_sim/scenario", {"name": scenario})
    stack.sim("POST", "/_sim/resume")
    return stack


def stop_stack(stack: Stack) -> None:
    for process in (stack.exporter, stack.simulator):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in (stack.exporter, stack.simulator):
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def stacks(tmp_path: Path) -> Iterator[list[Stack]]:
    started: list[Stack] = []
    yield started
    for stack in started:
        stop_stack(stack)


def assert_metrics_equal_truth(stack: Stack) -> dict[str, Any]:
    truth = stack.sim("GET", f"/_sim/truth?since={stack.t0}")
    samples = stack.samples()

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    total = 0.0
    for set_name, s in truth["sets"].items():
        for status, count in s["calls"].items():
            got = value("leadflow_calls_total", set_name=set_name, lead_status=status)
            assert got == count, (set_name, status, got, count)
            total += got
        assert value("leadflow_talk_seconds_total", set_name=set_name) == s["talk_seconds"]
        assert value("leadflow_call_seconds_total", set_name=set_name) == s["total_seconds"]
        for metric, key in (
            ("leadflow_offer_revenue_usd_total", "offer_price"),
            ("leadflow_affiliate_payout_usd_total", "affiliate_price"),
            ("leadflow_margin_usd", "margin"),
        ):
            got_usd = Decimal(str(value(metric, set_name=set_name))).quantize(Decimal("0.01"))
            assert got_usd == Decimal(s[key]), (set_name, metric)
        assert value("leadflow_contested_calls_total", set_name=set_name) == s["contested"]
        assert (
            value("leadflow_qualified_calls_total", set_name=set_name, party="offer")
            == s["offer_qualified"]
        )
        assert value("leadflow_active_calls", set_name=set_name) == s["active"], set_name
        assert value("leadflow_talk_duration_seconds_count", set_name=set_name) == sum(
            s["calls"].values()
        )
    all_calls = sum(v for (n, _), v in samples.items() if n == "leadflow_calls_total")
    assert all_calls == total == truth["calls_total"]
    return truth


def test_daemon_counts_exactly_what_the_api_served(stacks: list[Stack], tmp_path: Path) -> None:
    stack = start_stack(tmp_path)
    stacks.append(stack)
    time.sleep(6)
    stack.settle()
    truth = assert_metrics_equal_truth(stack)
    assert truth["calls_total"] > 20, "too little traffic to prove anything"
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian's prometheus package) is required"
    check = subprocess.run(
        [promtool, "check", "metrics"], input=stack.scrape().encode(), capture_output=True
    )
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), (
        check.stdout + check.stderr
    )
    log = stack.log_path.read_text()
    cycles = [json.loads(line) for line in log.splitlines() if '"poll_cycle"' in line]
    assert cycles and all("duration_seconds" in c and "records" in c for c in cycles)
    for secret in (DEFAULT_CREDENTIALS.secret_access_key, DEFAULT_CREDENTIALS.rate_limit_key):
        assert secret not in log
    cmdline = Path(f"/proc/{stack.exporter.pid}/cmdline").read_bytes()
    assert DEFAULT_CREDENTIALS.secret_access_key.encode() not in cmdline


@pytest.mark.parametrize(
    "scenario",
    [
        "no-buyer-spike",
        "affiliate-cap-spike",
        "messy-data",
        "slow",
        "rate-limited",
        "api-outage",
        "truncated-bodies",
    ],
)
def test_each_scenario_ends_equal_to_truth(
    scenario: str, stacks: list[Stack], tmp_path: Path
) -> None:
    stack = start_stack(tmp_path, scenario=scenario, seed=5)
    stacks.append(stack)
    time.sleep(6)
    if scenario in ("rate-limited", "api-outage", "truncated-bodies"):

        def errors_seen() -> bool:
            samples = stack.samples()
            return any(
                v > 0 for (n, _), v in samples.items() if n == "leadflow_exporter_api_errors_total"
            )

        wait_until(errors_seen, 30, f"API errors under {scenario}")
        # Faults end; what was missed while they lasted must be caught up exactly.
        stack.sim("POST", "/_sim/scenario", {"name": "steady"})
        time.sleep(2)
    if scenario == "messy-data":

        def invalid_seen() -> bool:
            samples = stack.samples()
            return any(
                v > 0
                for (n, _), v in samples.items()
                if n == "leadflow_exporter_invalid_records_total"
            )

        # Only calls that start under the scenario are messy; wait for a malformed one. About
        # five start a minute, but the traffic is a function of the wall clock, so a minute
        # without any lasts for every run in it: wait long enough to outlast such a lull.
        wait_until(invalid_seen, 180, "a malformed record to be reported")
    stack.settle()
    truth = assert_metrics_equal_truth(stack)
    assert truth["calls_total"] > 0
