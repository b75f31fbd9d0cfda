"""The daemon in-process against the simulator, scraped over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families

from leadflow_exporter import __version__
from leadflow_exporter.collector import METRIC_NAMES
from leadflow_exporter.config import load_config
from leadflow_exporter.daemon import Daemon
from leadflow_exporter.simulator import DEFAULT_CREDENTIALS, HISTORY_PATH, start_simulator
from tests.harness import wait_for, write_daemon_config

ACCESS = "AKIA-distinctive-access-7731"


def write_config(path: Path, sim_url: str, **sections: dict[str, Any]) -> Path:
    return write_daemon_config(path, sim_url + HISTORY_PATH, **sections)


class Running:
    def __init__(self, daemon: Daemon, session: aiohttp.ClientSession, sim: Any) -> None:
        self.daemon = daemon
        self.session = session
        self.sim = sim
        self.url = f"http://127.0.0.1:{daemon.port}"

    async def get(self, path: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
        # aiohttp asks for gzip by default; tests that want it ask explicitly.
        headers = {"Accept-Encoding": "identity", **kwargs.pop("headers", {})}
        async with self.session.get(self.url + path, headers=headers, **kwargs) as response:
            return response.status, dict(response.headers), await response.read()

    async def metrics_show(self, line: bytes) -> None:
        async def shown() -> bool:
            return line in (await self.get("/metrics"))[2]

        await wait_for(shown)

    async def cycles(self, n: int) -> None:
        target = self.daemon.health.cycles + n

        async def done() -> bool:
            return self.daemon.health.cycles >= target and self.daemon.exposition.renders > 1

        await wait_for(done)


async def _start(tmp_path: Path, **sections: dict[str, Any]) -> AsyncIterator[Running]:
    sim = await start_simulator("127.0.0.1", 0, seed=3, volume=30.0, rate_limit_per_minute=0)
    config_path = write_config(tmp_path / "config.yaml", sim.url, **sections)
    daemon = Daemon(load_config(config_path), config_path=config_path)
    await daemon.start()
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            yield Running(daemon, session, sim)
    finally:
        await daemon.stop()
        await sim.close()


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    async for r in _start(tmp_path):
        yield r


async def test_metrics_exposes_every_metric_with_help_and_no_timestamps(running: Running) -> None:
    await running.cycles(3)
    status, headers, body = await running.get("/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    exposed = {s.name for f in families.values() for s in f.samples}
    # Labelled counters with nothing counted yet (API errors, say) have HELP and TYPE but
    # no sample; the family still declares the name.
    exposed |= {f.name + "_total" for f in families.values() if f.type == "counter"}
    missing = METRIC_NAMES - exposed
    assert not missing, missing
    for family in families.values():
        if family.name.startswith("leadflow"):
            assert family.documentation, family.name
            assert all(s.timestamp is None for s in family.samples), family.name
    calls = [s for s in families["leadflow_calls"].samples if s.name == "leadflow_calls_total"]
    statuses = {s.labels["lead_status"] for s in calls}
    assert {"connected", "no_buyer", "affiliate_cap", "hang_up"} <= statuses
    up = families["leadflow_up"].samples[0].value
    assert up == 1.0
    build = families["leadflow_exporter_build_info"].samples[0]
    assert build.labels == {"version": __version__}
    for name in ("caller_id", "sid", "zipcode", "recording_link", "first_name"):
        assert f'{name}="' not in text


async def test_promtool_check_metrics_reports_nothing(running: Running) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian's prometheus package) is required"
    await running.cycles(2)
    _, _, body = await running.get("/metrics")
    result = await asyncio.to_thread(
        subprocess.run,
        [promtool, "check", "metrics"],
        input=body,
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == b"" and result.stderr.strip() == b""


async def test_openmetrics_by_accept_header(running: Running) -> None:
    await running.cycles(2)
    status, headers, body = await running.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    text = body.decode()
    assert text.endswith("# EOF\n")
    assert text.count("# EOF") == 1
    names = {f.name for f in parse_om(text)}
    assert {"leadflow_calls", "leadflow_talk_duration_seconds", "process_cpu_seconds"} <= names


async def test_gzip_when_asked_and_identical_content(running: Running) -> None:
    await running.cycles(2)
    _, plain_headers, plain = await running.get("/metrics")
    status, headers, packed = await running.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert "Content-Encoding" not in plain_headers
    unpacked = gzip.decompress(packed).decode()

    def business(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith("leadflow_calls_total")]

    assert business(unpacked) == business(plain.decode())
    assert len(packed) < len(plain) / 3


async def test_health_ready_landing_and_config(tmp_path: Path) -> None:
    async for r in _start(tmp_path, api={"access_key": ACCESS}):
        # The simulator refuses this access key: the daemon is alive but never ready.
        await asyncio.sleep(0.5)
        status, _, _ = await r.get("/-/healthy")
        assert status == 200
        status, _, _ = await r.get("/-/ready")
        assert status == 503
        assert r.daemon.health.api_errors[("active", "unauthorized")] >= 1
        status, headers, page = await r.get("/")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        html = page.decode()
        assert __version__ in html
        for link in ('href="metrics"', 'href="-/healthy"', 'href="-/ready"', 'href="config"'):
            assert link in html
        assert "unauthorized" in html
        status, _, config = await r.get("/config")
        assert status == 200
        shown = yaml.safe_load(config)
        assert shown["api"]["access_key"] == "<secret>"
        assert ACCESS not in config.decode()
        assert DEFAULT_CREDENTIALS.secret_access_key not in config.decode()
        _, _, metrics = await r.get("/metrics")
        assert ACCESS not in metrics.decode()
        assert b"leadflow_up 0.0" in metrics


async def test_ready_after_first_cycle(running: Running) -> None:
    await running.cycles(1)
    status, _, body = await running.get("/-/ready")
    assert status == 200 and body == b"Ready\n"


async def test_reload_is_refused_unless_enabled(running: Running) -> None:
    async with running.session.post(running.url + "/-/reload") as response:
        assert response.status == 403
        assert "reload_enabled" in await response.text()


async def test_reload_applies_good_config_keeps_totals_and_refuses_bad(tmp_path: Path) -> None:
    async for r in _start(tmp_path, server={"reload_enabled": True}):
        await r.cycles(3)
        before = sum(r.daemon.ledger.totals.calls.values())
        path = tmp_path / "config.yaml"
        config = yaml.safe_load(path.read_text())
        config["poll"]["interval_seconds"] = 0.3
        path.write_text(yaml.safe_dump(config))
        async with r.session.post(r.url + "/-/reload") as response:
            assert response.status == 200, await response.text()
        assert r.daemon.config.poll.interval_seconds == 0.3
        assert sum(r.daemon.ledger.totals.calls.values()) >= before
        await r.cycles(2)
        # Scrape responses may be reused for up to a second; wait for a fresh one.
        await r.metrics_show(b"leadflow_exporter_poll_interval_seconds 0.3")
        _, _, body = await r.get("/metrics")
        assert b"leadflow_exporter_config_last_reload_successful 1.0" in body

        config["poll"]["interval_seconds"] = -1
        config["poll"]["bogus"] = 1
        path.write_text(yaml.safe_dump(config))
        async with r.session.post(r.url + "/-/reload") as response:
            assert response.status == 500
            message = await response.text()
        assert "poll.interval_seconds: must be > 0" in message
        assert "poll.bogus: unknown key" in message
        assert r.daemon.config.poll.interval_seconds == 0.3
        await r.metrics_show(b"leadflow_exporter_config_last_reload_successful 0.0")

        config["poll"]["interval_seconds"] = 0.3
        del config["poll"]["bogus"]
        config["state"]["path"] = str(tmp_path / "other.db")
        path.write_text(yaml.safe_dump(config))
        async with r.session.post(r.url + "/-/reload") as response:
            assert response.status == 500
            assert "state.path needs a restart" in await response.text()


async def test_a_stop_during_a_reload_leaves_no_poller_behind(tmp_path: Path) -> None:
    # SIGHUP and SIGTERM close together: the reload restarts the poller, and the stop must
    # stop that one too, before the state file is closed.
    sim = await start_simulator("127.0.0.1", 0, seed=3, volume=30.0, rate_limit_per_minute=0)
    try:
        config_path = write_config(
            tmp_path / "config.yaml", sim.url, state={"path": str(tmp_path / "state.db")}
        )
        daemon = Daemon(load_config(config_path), config_path=config_path)
        await daemon.start()

        async def two_cycles() -> bool:
            return daemon.health.cycles >= 2

        await wait_for(two_cycles)
        reload = asyncio.create_task(daemon.reload())
        await asyncio.sleep(0)
        await daemon.stop()
        assert await reload == (True, "config reloaded")
        assert not daemon.poller_alive()
        running = [t for t in asyncio.all_tasks() if t.get_name() == "poller" and not t.done()]
        assert running == []
        assert await daemon.reload() == (False, "stopping")
    finally:
        await sim.close()


async def test_series_cap_counts_what_it_drops(tmp_path: Path) -> None:
    async for r in _start(tmp_path, metrics={"max_series_per_metric": 6}):
        await r.cycles(4)
        _, _, body = await r.get("/metrics")
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        calls = [s for s in families["leadflow_calls"].samples if s.name.endswith("_total")]
        assert len(calls) <= 6
        dropped = {
            s.labels["metric"]: s.value
            for s in families["leadflow_exporter_series_dropped"].samples
            if s.name.endswith("_total")
        }
        assert dropped.get("leadflow_calls_total", 0) > 0


async def test_basic_auth_from_web_config(tmp_path: Path) -> None:
    import bcrypt

    hashed = bcrypt.hashpw(b"s3cret-pass", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"basic_auth_users": {"prom": hashed}}))
    async for r in _start(tmp_path, server={"web_config_file": str(web)}):
        status, headers, _ = await r.get("/metrics")
        assert status == 401
        assert headers["WWW-Authenticate"].startswith("Basic")
        wrong = {"Authorization": aiohttp.encode_basic_auth("prom", "wrong")}
        status, _, _ = await r.get("/metrics", headers=wrong)
        assert status == 401
        right = {"Authorization": aiohttp.encode_basic_auth("prom", "s3cret-pass")}
        status, _, body = await r.get("/metrics", headers=right)
        assert status == 200 and b"leadflow_up" in body
        for path in ("/config", "/", "/-/reload"):
            status, _, _ = await r.get(path)
            assert status == 401, path
        # Orchestrators' probes carry no credentials: the two probe paths answer without them.
        status, _, body = await r.get("/-/healthy")
        assert status == 200 and body == b"Healthy\n"
        status, _, _ = await r.get("/-/ready")
        assert status in (200, 503)
