"""End to end: the simulator, the exporter and a real Prometheus server with the rules loaded.

Everything runs as subprocesses on 127.0.0.1: ``leadflow-exporter simulate``, two
``leadflow-exporter run`` daemons polling it every second, and Debian's ``prometheus`` scraping
both every second and evaluating the rules rendered with ``rules/render.py --scale 1/60``
(the 4m spike window becomes 4s, the 1d baseline 24m, the weekly offset 2h47m30s).

* ``main`` is the exporter under test: affiliate and advertiser as extra labels, so the
  dashboard panels that group by them have data.
* ``capped`` polls the same simulator with ``metrics.max_series_per_metric`` set low, so the
  "Dropped series" panel has something to show. It is a second instance of job ``leadflow``,
  which also checks that the dashboards and rules cope with more than one exporter.

The simulator's arrival rate follows a US Eastern daily curve in wall-clock time. The volume is
chosen when the test starts so that the spike targets finish more than the alerts' minimum of
10 calls per (compressed) 4-minute window, whatever the time of day.

The test cannot build a (compressed) week or day of history, so the spike alerts run on their
last fallback baseline: the volume-weighted share since Prometheus started (the 1d records;
45 s or more of steady traffic when the first spike starts). Before the spike it equals the
current share, so the threshold (baseline + 0.10) is above the steady share and the
significance guard (z > 4.25) keeps noise quiet. During a spike the baseline absorbs the spike
only in proportion to its duration: after ``s`` seconds of a spike of share ``r`` over a steady
share ``b`` with ``H`` seconds of history, the baseline is about ``(H*b + s*r) / (H + s)``; the
condition ``r > baseline + 0.10`` holds for ``s < H * ((r - b) / 0.10 - 1)`` seconds, minutes
for the spikes here, and the alert has no ``for``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from leadflow_exporter.simulator import DEFAULT_CREDENTIALS, HISTORY_PATH
from leadflow_exporter.simulator.catalog import SETS_BY_ID
from tests.harness import volume_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules" / "leadflow-exporter.rules.yaml"
RENDER = ROOT / "rules" / "render.py"
_spec = importlib.util.spec_from_file_location("leadflow_rules_render", RENDER)
assert _spec and _spec.loader
render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render)
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
PROMETHEUS = "/usr/bin/prometheus"
HOST = "127.0.0.1"

SCALE = "1/60"
# Finished calls per second the whole simulated account should produce during the test.
TARGET_CALLS_PER_SECOND = 12.0
# Spikes fire 30-60 s after the switch (refused calls finish 20-57 s after they start); a
# busy CI machine, where two exporters, the simulator and Prometheus share two CPUs, adds more.
SPIKE_WAIT_SECONDS = 150
MIN_CALLS = 10  # the spike alerts' volume guard (checked against the rendered rules below)

# Grafana template variables for the Prometheus HTTP API. "All" of a multi-value variable with
# allValue ".+" is the regex ".+"; $__rate_interval is at least four scrape intervals.
RATE_INTERVAL = "4s"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 20) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        payload = response.read()
    return json.loads(payload) if payload else None


def wait_until(what: str, check: Any, limit: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + limit
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not reached within {limit:g}s (last: {last!r})")


@dataclass
class Stack:
    tmp: Path
    sim_url: str = ""
    prom_url: str = ""
    main_target: str = ""
    capped_target: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    volume: float = 0.0
    scraped_since: float = 0.0  # epoch seconds: both targets up

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp, start_new_session=True
        )
        log.close()
        self.procs[name] = proc
        return proc

    def stop(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.prom_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        body = http("GET", url)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Any]:
        params = {"query": expr, "start": start, "end": end, "step": step}
        body = http("GET", f"{self.prom_url}/api/v1/query_range?" + urllib.parse.urlencode(params))
        assert body["status"] == "success", body
        return body["data"]["result"]

    def alerts(self) -> list[dict[str, Any]]:
        return http("GET", f"{self.prom_url}/api/v1/alerts")["data"]["alerts"]

    def firing(self, name: str, **labels: str) -> list[dict[str, Any]]:
        return [
            a
            for a in self.alerts()
            if a["labels"].get("alertname") == name
            and a["state"] == "firing"
            and all(a["labels"].get(k) == v for k, v in labels.items())
        ]

    def scenario(self, name: str) -> None:
        http("POST", f"{self.sim_url}/_sim/scenario", {"name": name})


def exporter_config(
    path: Path, sim_url: str, port: int, poll: dict[str, Any], **metrics: Any
) -> Path:
    config = {
        "api": {
            "base_url": sim_url + HISTORY_PATH,
            "access_key": DEFAULT_CREDENTIALS.access_key,
            "secret_access_key": DEFAULT_CREDENTIALS.secret_access_key,
            "rate_limit_key": DEFAULT_CREDENTIALS.rate_limit_key,
            "requests_per_minute": 100_000,
            "timeout_seconds": 5,
        },
        "poll": poll,
        "metrics": metrics,
        "state": {"path": ""},
        "server": {"listen": f"{HOST}:{port}"},
        "logging": {"level": "warning"},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def render_fast_rules(out: Path) -> str:
    subprocess.run(
        [sys.executable, str(RENDER), "--scale", SCALE, "-o", str(out)], check=True, cwd=ROOT
    )
    return out.read_text()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # A missing Prometheus is a failure: this test exists to prove the rules and dashboards
    # against the real server.
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.fail(f"{PROMETHEUS} not found: install Debian's prometheus package")
    exe = shutil.which("leadflow-exporter", path=str(Path(sys.executable).parent))
    cli = [exe] if exe else [sys.executable, "-m", "leadflow_exporter"]

    tmp = tmp_path_factory.mktemp("e2e")
    stack = Stack(tmp)
    try:
        volume = volume_for(TARGET_CALLS_PER_SECOND, time.time())
        sim_port = free_port()
        stack.sim_url = f"http://{HOST}:{sim_port}"
        stack.spawn(
            "simulator",
            [*cli, "simulate", "--listen", f"{HOST}:{sim_port}", "--scenario", "steady",
             "--seed", "11", "--volume", str(volume), "--rate-limit", "0",
             # After buyers' hours a third of the calls already find no buyer, and a spike of
             # the size the rules can see in 4 s at this volume would not stand out: keep the
             # daytime mix at any hour (docs/backtest.md covers detection after hours).
             "--buyers-always-open"],
        )  # fmt: skip
        wait_until("simulator up", lambda: http("GET", stack.sim_url + "/_sim/clock"), 20)

        main_port, capped_port = free_port(), free_port()
        stack.main_target = f"{HOST}:{main_port}"
        stack.capped_target = f"{HOST}:{capped_port}"
        # Short overlap and call-follow horizon: at this volume the defaults would make every
        # one-second poll read thousands of records.
        main_cfg = exporter_config(
            tmp / "main.yaml",
            stack.sim_url,
            main_port,
            {"interval_seconds": 1, "overlap_seconds": 30, "max_call_seconds": 1800},
            extra_labels=["affiliate", "advertiser"],
        )
        # The capped exporter only has to drop series: it polls finished calls every 5s.
        capped_cfg = exporter_config(
            tmp / "capped.yaml",
            stack.sim_url,
            capped_port,
            {"interval_seconds": 5, "overlap_seconds": 5, "active": False},
            max_series_per_metric=8,
        )
        stack.spawn("exporter-main", [*cli, "run", "--config", str(main_cfg)])
        stack.spawn("exporter-capped", [*cli, "run", "--config", str(capped_cfg)])

        rules_text = render_fast_rules(tmp / "fast.rules.yaml")
        # The rendered spike alerts keep their 10-call volume guard over the 4s window.
        assert rules_text.count(f"set_name:leadflow_calls:increase4s >= {MIN_CALLS}") == 2
        # ... and their seasonal baseline, with the offsets scaled (absent during the test).
        assert rules_text.count(":ratio30s[1m] offset 2h47m30s") == 2
        prom_port = free_port()
        stack.prom_url = f"http://{HOST}:{prom_port}"
        (tmp / "prometheus.yml").write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(tmp / "fast.rules.yaml")],
                    "scrape_configs": [
                        {
                            "job_name": "leadflow",
                            "scrape_timeout": "1s",
                            "static_configs": [
                                {"targets": [stack.main_target, stack.capped_target]}
                            ],
                        }
                    ],
                }
            )
        )
        stack.spawn(
            "prometheus",
            [PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address={HOST}:{prom_port}",
             "--web.enable-lifecycle", "--log.level=warn"],
        )  # fmt: skip

        def targets_up() -> bool:
            body = http("GET", stack.prom_url + "/api/v1/targets")
            active = body["data"]["activeTargets"]
            return len(active) == 2 and all(t["health"] == "up" for t in active)

        try:
            wait_until("both targets up", targets_up, 40)
        except AssertionError as exc:
            logs = {n: stack.log(n) for n in stack.procs}
            raise AssertionError(f"{exc}\n{logs}") from None
        stack.volume = volume
        stack.scraped_since = time.time()
        yield stack
    finally:
        for name in reversed(list(stack.procs)):
            stack.stop(name)


SPIKE_ALERTS = ("LeadFlowNoBuyerSpike", "LeadFlowAffiliateCapSpike")
# Seconds of traffic since the stack started before spike tests switch scenarios.
WARM_SECONDS = 45


def _warm(stack: Stack) -> None:
    """Wait until the busy sets of main fill the short window well above the volume guard.

    The exporter's first poll only records what it sees, so for the first tens of seconds it
    counts mostly short calls (refused calls and hang-ups last under a minute, connected calls
    several): the early call mix is skewed, and the 24m baseline starts from it. The wait also
    gives the baseline steady history: 45 s of it, since with 25 s a baseline inflated by the
    early No Buyer calls occasionally kept the z-score of a real spike under its limit.
    """
    # Medicare (No Buyer spike) and Auto Insurance (the busiest set of the capped affiliate).
    busy = {SETS_BY_ID[i].name for i in (101, 102)}

    def ready() -> bool:
        result = stack.query(
            f'set_name:leadflow_calls:increase10s{{instance="{stack.main_target}"}} >= 25'
        )
        return busy <= {r["metric"]["set_name"] for r in result}

    wait_until("busy sets above the volume guard", ready, 60)
    time.sleep(max(0.0, WARM_SECONDS - (time.monotonic() - stack.started)))

    # The skewed early mix can trip a spike alert while the since-start baseline is young;
    # `keep_firing_for` (10 s here) then holds it a little longer. Warm means it has cleared.
    def quiet() -> bool:
        return not any(stack.firing(alert) for alert in SPIKE_ALERTS)

    wait_until("spike alerts of the warm-up cleared", quiet, 45)


def test_rules_loaded_and_healthy(stack: Stack) -> None:
    _warm(stack)
    groups = http("GET", stack.prom_url + "/api/v1/rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert {r["health"] for r in rules} == {"ok"}, [r for r in rules if r["health"] != "ok"]
    names = {r["name"] for r in rules}
    assert {"LeadFlowNoBuyerSpike", "LeadFlowAffiliateCapSpike", "LeadFlowExporterDown"} <= names
    assert "set_name:leadflow_calls_no_buyer:ratio4s" in names
    assert "set_name:leadflow_calls_no_buyer:zscore4s" in names
    # Steady traffic, watched for a while: no business alert, and the exporters are up.
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        for alert in (*SPIKE_ALERTS, "LeadFlowExporterDown"):
            assert not stack.firing(alert), alert
        time.sleep(0.5)
    assert [r["value"][1] for r in stack.query('up{job="leadflow"}')] == ["1", "1"]


def _spike(stack: Stack, scenario: str, alert: str, set_names: set[str]) -> float:
    """Switch the simulator to ``scenario`` until ``alert`` fires for main; the delay."""
    _warm(stack)
    assert not stack.firing(alert), f"{alert} firing before {scenario}"
    onset = time.monotonic()
    stack.scenario(scenario)
    try:
        # Refused calls finish 20-57 s after they start (IVR plus a recorded message) and are
        # counted when they finish: the spike reaches the counters about half a minute after
        # the switch, then the 4s window has to fill with enough of them.
        fired = wait_until(
            f"{alert} firing after {scenario}",
            lambda: stack.firing(alert, instance=stack.main_target, job="leadflow"),
            SPIKE_WAIT_SECONDS,
        )
        delay = time.monotonic() - onset
    finally:
        stack.scenario("steady")
    print(f"{alert}: firing {delay:.1f}s after the switch to {scenario}")
    assert {a["labels"]["set_name"] for a in fired} <= set_names
    for a in fired:
        assert a["labels"]["severity"] == "critical"
        assert "alert threshold" in a["annotations"]["description"]
    return delay


def test_no_buyer_spike_fires(stack: Stack) -> None:
    target = SETS_BY_ID[102].name  # the scenario's set
    delay = _spike(stack, "no-buyer-spike", "LeadFlowNoBuyerSpike", {target})
    assert delay < SPIKE_WAIT_SECONDS, delay


def test_affiliate_cap_spike_fires(stack: Stack) -> None:
    # "ClickSpring Media" sends calls to these two sets.
    sets = {SETS_BY_ID[101].name, SETS_BY_ID[103].name}
    delay = _spike(stack, "affiliate-cap-spike", "LeadFlowAffiliateCapSpike", sets)
    assert delay < SPIKE_WAIT_SECONDS, delay


def test_api_outage_is_counted(stack: Stack) -> None:
    # A short outage gives the error panels something to show; polls recover afterwards.
    stack.scenario("api-outage")
    try:
        wait_until(
            "api errors counted",
            lambda: stack.query(
                f'leadflow_exporter_api_errors_total{{instance="{stack.main_target}"}} > 0'
            ),
            20,
        )
    finally:
        stack.scenario("steady")
    wait_until(
        "polls succeed again",
        lambda: [r["value"][1] for r in stack.query('min(leadflow_up{job="leadflow"})')] == ["1"],
        20,
    )


def _dashboard_targets() -> list[tuple[str, str, str, bool]]:
    out = []

    def walk(panels: list[dict[str, Any]], dashboard: str) -> None:
        for panel in panels:
            walk(panel.get("panels", []), dashboard)
            for target in panel.get("targets", []):
                if target.get("expr"):
                    out.append(
                        (dashboard, panel["title"], target["expr"], bool(target.get("instant")))
                    )

    for path in DASHBOARDS:
        walk(json.loads(path.read_text())["panels"], path.stem)
    return out


def substitute(expr: str, instance: str, range_seconds: int) -> str:
    """The query Grafana would send, for the time-compressed rules.

    Recording-rule names and literal windows are scaled like the rules (``ratio10m`` becomes
    ``ratio10s``, ``[15m]`` becomes ``[15s]``), then the template variables are filled in.
    """
    expr = render.scale_durations(expr, render.parse_scale(SCALE))
    values = {
        "job": "leadflow",
        "instance": instance,
        "set_name": ".+",
        "__rate_interval": RATE_INTERVAL,
        "__interval": "1s",
        "__range": f"{range_seconds}s",
        "__range_s": str(range_seconds),
    }
    out = re.sub(
        r"\$\{?(\w+)\}?",
        lambda m: values[m.group(1)] if m.group(1) in values else m.group(0),
        expr,
    )
    assert "$" not in out, f"unsubstituted template variable in {expr}"
    return out


def test_every_dashboard_panel_returns_data(stack: Stack) -> None:
    targets = _dashboard_targets()
    assert len(targets) > 30 and len(DASHBOARDS) == 2

    def empty_panels() -> list[str]:
        # The dashboard's time range: from when both targets were first scraped until now
        # (panels with `@ start()` need their series to exist at the start of the range).
        end = time.time()
        range_seconds = int(end - stack.scraped_since) - 2
        empty = []
        for dashboard, title, expr, instant in targets:
            # $instance = All (".+"): both exporters, as Grafana sends it.
            query = substitute(expr, ".+", range_seconds)
            if instant:
                ok = bool(stack.query(query))
            else:
                series = stack.query_range(query, end - range_seconds, end, 1)
                ok = any(s["values"] for s in series)
            if not ok:
                empty.append(f"{dashboard} / {title}: {query}")
        return empty

    # Series born late (the API errors of the outage above) need a few scrapes for rate().
    deadline = time.monotonic() + 20
    while (empty := empty_panels()) and time.monotonic() < deadline:
        time.sleep(2)
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_exporter_down_fires_when_main_is_killed(stack: Stack) -> None:
    assert not stack.firing("LeadFlowExporterDown")
    stack.procs["exporter-main"].kill()
    stack.procs["exporter-main"].wait(timeout=10)
    fired = wait_until(
        "LeadFlowExporterDown firing",
        lambda: stack.firing("LeadFlowExporterDown", instance=stack.main_target),
        30,
    )
    assert fired[0]["labels"]["severity"] == "critical"
    # The other exporter is still scraped fine.
    assert not stack.firing("LeadFlowExporterDown", instance=stack.capped_target)
