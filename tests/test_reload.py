"""Reloads that go wrong, and a reload that turns the live-call poll off."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import leadflow_exporter.daemon as daemon_module
from leadflow_exporter.config import load_config
from leadflow_exporter.daemon import Daemon
from leadflow_exporter.exposition import Exposition
from leadflow_exporter.simulator import DEFAULT_CREDENTIALS, HISTORY_PATH, start_simulator
from tests.harness import wait_for, write_daemon_config

RELOAD_OK = "leadflow_exporter_config_last_reload_successful"


def write_config(path: Path, base_url: str, **sections: dict[str, Any]) -> Path:
    # The access key from a file, so that a reload can meet a bad one.
    (path.parent / "access").write_text(DEFAULT_CREDENTIALS.access_key + "\n")
    merged: dict[str, dict[str, Any]] = {
        "api": {"access_key": None, "access_key_file": "access"},
        "server": {"reload_enabled": True},
    }
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    return write_daemon_config(path, base_url, **merged)


class Running:
    def __init__(self, daemon: Daemon, session: aiohttp.ClientSession, config: Path) -> None:
        self.daemon = daemon
        self.session = session
        self.config = config
        self.url = f"http://127.0.0.1:{daemon.port}"

    async def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with self.session.get(self.url + "/metrics") as response:
            text = await response.text()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    async def reload(self) -> tuple[int, str]:
        async with self.session.post(self.url + "/-/reload") as response:
            return response.status, await response.text()

    async def cycles(self, n: int) -> None:
        target = self.daemon.health.cycles + n

        async def done() -> bool:
            return self.daemon.health.cycles >= target

        await wait_for(done)

    def edit(self, section: str, **values: Any) -> None:
        config = yaml.safe_load(self.config.read_text())
        config[section].update(values)
        self.config.write_text(yaml.safe_dump(config))


async def start(tmp_path: Path, **sections: dict[str, Any]) -> AsyncIterator[Running]:
    sim = await start_simulator("127.0.0.1", 0, seed=3, volume=30.0, rate_limit_per_minute=0)
    config_path = write_config(tmp_path / "config.yaml", sim.url + HISTORY_PATH, **sections)
    daemon = Daemon(load_config(config_path), config_path=config_path)
    await daemon.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield Running(daemon, session, config_path)
    finally:
        await daemon.stop()
        await sim.close()


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    async for r in start(tmp_path):
        yield r


# -- a reload that fails is refused, whatever the failure -------------------------------------


async def test_a_secret_file_that_is_not_utf8_is_refused_like_any_bad_config(
    running: Running, tmp_path: Path
) -> None:
    await running.cycles(2)
    config = running.daemon.config
    (tmp_path / "access").write_bytes(b"caf\xe9-key\n")
    status, text = await running.reload()
    assert status == 500
    assert text == "config refused: api.access_key_file: access: not UTF-8 text\n"
    assert running.daemon.config is config
    assert (await running.samples())[(RELOAD_OK, ())] == 0
    assert running.daemon.poller_alive()
    await running.cycles(2)
    assert running.daemon.health.last_cycle_ok

    (tmp_path / "access").write_text(DEFAULT_CREDENTIALS.access_key)
    assert await running.reload() == (200, "config reloaded\n")
    assert (await running.samples())[(RELOAD_OK, ())] == 1


async def test_an_unexpected_error_while_loading_is_a_failed_reload(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    await running.cycles(1)
    config = running.daemon.config

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(daemon_module, "load_config", broken)
    status, text = await running.reload()
    assert status == 500
    assert text == "reload failed: internal error (RuntimeError), see the log\n"
    assert running.daemon.config is config
    assert (await running.samples())[(RELOAD_OK, ())] == 0
    assert running.daemon.poller_alive()


async def test_an_unexpected_error_after_the_poller_stopped_leaves_one_running(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    await running.cycles(1)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(daemon_module, "configure_logging", broken)
    ok, message = await running.daemon.reload()
    assert not ok
    assert message == "reload failed: internal error (RuntimeError), see the log"
    assert not running.daemon.health.config_reload_ok
    assert running.daemon.poller_alive()
    await running.cycles(2)


async def test_sighup_reloads_that_fail_leave_no_task_behind(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken() -> tuple[bool, str]:
        raise RuntimeError("a bug below reload's own handling")

    daemon = running.daemon
    daemon.reload_in_background()
    assert len(daemon._reload_tasks) == 1
    await wait_for(lambda: _true(not daemon._reload_tasks))
    assert daemon.health.config_reload_ok

    loop = asyncio.get_running_loop()
    complaints: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: complaints.append(context))
    try:
        monkeypatch.setattr(daemon, "reload", broken)
        daemon.reload_in_background()
        await wait_for(lambda: _true(not daemon._reload_tasks))
        # A task whose exception nobody looked at complains when it is collected.
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert complaints == []


async def _true(value: bool) -> bool:
    return value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        return response.read().decode()


def test_sighup_with_a_secret_file_that_is_not_utf8_is_refused_in_one_log_line(
    tmp_path: Path,
) -> None:
    # The API is never reached (a closed port): the reload is what is looked at.
    port = free_port()
    config_path = write_config(
        tmp_path / "config.yaml",
        f"http://127.0.0.1:{free_port()}{HISTORY_PATH}",
        api={"max_retries": 0},
        poll={"interval_seconds": 1},
        server={"listen": f"127.0.0.1:{port}"},
        logging={"level": "info", "format": "json"},
    )
    log_path = tmp_path / "exporter.log"
    with log_path.open("wb") as log:
        exporter = subprocess.Popen(
            [sys.executable, "-m", "leadflow_exporter", "run", "--config", str(config_path)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert f"{RELOAD_OK} 1.0" in scrape(url)
                break
            except OSError:
                assert time.monotonic() < deadline, "exporter did not start"
                time.sleep(0.1)
        (tmp_path / "access").write_bytes(b"\xff\xfe")
        exporter.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while f"{RELOAD_OK} 0.0" not in scrape(url):
            assert time.monotonic() < deadline, "the reload was not refused"
            time.sleep(0.1)
    finally:
        exporter.send_signal(signal.SIGTERM)
        exporter.wait(timeout=20)
    assert exporter.returncode == 0
    text = log_path.read_text()
    assert "Traceback" not in text
    assert "never retrieved" not in text
    refused = [
        json.loads(line) for line in text.splitlines() if '"event": "reload_refused"' in line
    ]
    assert [r["problems"] for r in refused] == [["api.access_key_file: access: not UTF-8 text"]]


# -- turning the live-call poll off ---------------------------------------------------------------


def _active(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[str, float]:
    return {
        dict(labels)["set_name"]: v
        for (name, labels), v in samples.items()
        if name == "leadflow_active_calls"
    }


def _success(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], query: str) -> float:
    return samples[("leadflow_exporter_last_success_timestamp_seconds", (("query", query),))]


async def test_a_reload_to_active_false_leaves_what_a_fresh_start_shows(
    running: Running, tmp_path: Path
) -> None:
    r = running
    daemon = r.daemon

    async def live_calls_shown() -> bool:
        samples = await r.samples()
        return sum(_active(samples).values()) > 0 and _success(samples, "active") > 0

    await wait_for(live_calls_shown)

    r.edit("poll", active=False)
    assert await r.reload() == (200, "config reloaded\n")
    # Taken once the last cycle with the live-call poll has committed.
    followed = dict(daemon.ledger.followed)
    assert followed
    await r.cycles(3)
    samples = await r.samples()
    assert _active(samples) == {}
    assert _success(samples, "active") == 0
    assert _success(samples, "history") > 0
    assert daemon.health.queries["active"].last_attempt == 0
    # The followed calls are kept for counting: each one let go of was counted.
    for sid, call in followed.items():
        if sid not in daemon.ledger.followed:
            assert daemon.ledger.is_seen(call.sid_key, call.call_ts), sid
    assert set(daemon.ledger.followed) <= set(followed)

    # What a start with `active: false` shows, for comparison.
    fresh_dir = tmp_path / "fresh"
    fresh_dir.mkdir()
    fresh_config = fresh_dir / "config.yaml"
    fresh_config.write_text(r.config.read_text())
    (fresh_dir / "access").write_text(DEFAULT_CREDENTIALS.access_key)
    fresh = Daemon(load_config(fresh_config), config_path=fresh_config)
    await fresh.start()
    try:
        await wait_for(lambda: _true(fresh.health.cycles >= 2))
        async with r.session.get(f"http://127.0.0.1:{fresh.port}/metrics") as response:
            text = await response.text()
    finally:
        await fresh.stop()
    fresh_samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert _active(fresh_samples) == {}
    assert _success(fresh_samples, "active") == 0

    # And back on: the live list is polled and shown again.
    r.edit("poll", active=True)
    assert await r.reload() == (200, "config reloaded\n")
    await wait_for(live_calls_shown)


@pytest.mark.parametrize("slow_first_render", [False, True])
async def test_a_reload_asked_for_during_the_start_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow_first_render: bool
) -> None:
    """SIGHUP (or POST /-/reload) while the daemon starts: one poller after, none after stop.
    Before, the reload could start a poller of its own that the start then replaced, and that
    nothing stopped."""
    config_path = write_config(tmp_path / "config.yaml", "http://127.0.0.1:9/history")
    daemon = Daemon(load_config(config_path), config_path=config_path)
    render = Exposition.render
    renders = 0

    def slow(self: Exposition) -> None:
        nonlocal renders
        renders += 1
        if slow_first_render and renders == 1:
            time.sleep(0.3)  # the reload runs meanwhile
        render(self)

    monkeypatch.setattr(Exposition, "render", slow)
    daemon.reload_in_background()
    await daemon.start()
    try:
        await asyncio.sleep(0.5)
        pollers = [t for t in asyncio.all_tasks() if t.get_name() == "poller" and not t.done()]
        assert len(pollers) == 1
        assert daemon.health.config_reload_ok
    finally:
        await daemon.stop()
    await asyncio.sleep(0.1)
    assert [t for t in asyncio.all_tasks() if t.get_name() == "poller" and not t.done()] == []


async def test_a_render_failing_after_the_new_config_applies_is_not_a_refusal(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    await running.cycles(1)

    async def broken(self: Daemon) -> None:
        raise RuntimeError("a bug while rendering")

    monkeypatch.setattr(Daemon, "_render", broken)
    write_config(running.config, running.daemon.config.api.base_url, poll={"interval_seconds": 0.3})
    ok, message = await running.daemon.reload()
    # The new interval is in force, and the reload says so.
    assert (ok, message) == (True, "config reloaded")
    assert running.daemon.config.poll.interval_seconds == 0.3
    assert running.daemon.health.config_reload_ok
    assert running.daemon.poller_alive()
