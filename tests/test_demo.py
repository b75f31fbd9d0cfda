"""The README's first command: the demo shows calls of every status and live calls at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.test_e2e import free_port, http, wait_until

pytestmark = pytest.mark.e2e


def test_demo_shows_all_statuses_within_two_polls_and_stops_cleanly() -> None:
    port, sim_port = free_port(), free_port()
    interval = 2.0
    demo = subprocess.Popen(
        [sys.executable, "-m", "leadflow_exporter", "demo",
         "--listen", f"127.0.0.1:{port}", "--simulator-listen", f"127.0.0.1:{sim_port}",
         "--interval", str(interval), "--volume", "40"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        # The first poll reads the hour of backfill (tens of pages at a busy hour); the
        # simulator builds every page afresh, which takes a while on a loaded machine.
        wait_until(lambda: http("GET", base + "/-/ready")[0] == 200, 120, "the first poll")
        started = time.monotonic()

        def everything_shows() -> bool:
            _, body = http("GET", base + "/metrics")
            calls: dict[str, float] = {}
            active = 0.0
            for family in text_string_to_metric_families(body.decode()):
                for s in family.samples:
                    if s.name == "leadflow_calls_total":
                        calls[s.labels["lead_status"]] = (
                            calls.get(s.labels["lead_status"], 0) + s.value
                        )
                    if s.name == "leadflow_active_calls":
                        active += s.value
            statuses = ("connected", "affiliate_cap", "no_buyer", "hang_up")
            return all(calls.get(k, 0) > 0 for k in statuses) and active > 0

        wait_until(everything_shows, 2 * interval + 5, "calls of all four statuses")
        assert time.monotonic() - started <= 2 * interval + 5
        status, page = http("GET", base + "/")
        assert status == 200 and b"LeadFlow Exporter" in page
        assert http("GET", f"http://127.0.0.1:{sim_port}/_sim/truth")[0] == 200
    finally:
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=30)
    assert demo.returncode == 0, err.decode()[-2000:]
    printed = out.decode()
    assert f"{base}/metrics" in printed and "/_sim/scenario" in printed
    with pytest.raises(OSError):
        http("GET", base + "/metrics")
