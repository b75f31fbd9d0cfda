"""Grafana dashboards and provisioning; metric names used by dashboards and rules."""

from __future__ import annotations

import json
import re
from itertools import combinations
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = {
    "overview": ROOT / "grafana" / "dashboards" / "leadflow-overview.json",
    "health": ROOT / "grafana" / "dashboards" / "leadflow-exporter-health.json",
}
RULES = ROOT / "rules" / "leadflow-exporter.rules.yaml"
PROVISIONING = ROOT / "grafana" / "provisioning"
DATASOURCE_REF = "${datasource}"

# The exporter's own list of every sample name it exposes (histogram suffixes included).
from leadflow_exporter.collector import METRIC_NAMES  # noqa: E402

# Series Prometheus itself provides.
PROMETHEUS_METRICS = frozenset({"up"})


KNOWN_SERIES = METRIC_NAMES | PROMETHEUS_METRICS

_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_IDENT_RE = re.compile(r"(?<![\w:$.])[a-zA-Z_][\w:]*")


def _load(name: str) -> dict:
    return json.loads(DASHBOARDS[name].read_text(encoding="utf-8"))


def _panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _visual_panels(dashboard: dict) -> list[dict]:
    return [p for p in _panels(dashboard) if p["type"] != "row"]


def _targets(dashboard: dict) -> list[dict]:
    return [t for p in _visual_panels(dashboard) for t in p.get("targets", [])]


def _series_names(expr: str) -> set[str]:
    """Metric and recording-rule names referenced by a PromQL expression."""
    names = set()
    for token in _IDENT_RE.findall(_STRING_RE.sub('""', expr)):
        if ":" in token or token.startswith("leadflow_") or token in PROMETHEUS_METRICS:
            names.add(token)
    return names


def _rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _recorded() -> set[str]:
    return {rule["record"] for rule in _rules() if "record" in rule}


def _variables(dashboard: dict) -> dict[str, dict]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


@pytest.fixture(params=sorted(DASHBOARDS))
def dashboard(request) -> dict:
    return _load(request.param)


def test_dashboard_basics(dashboard):
    assert dashboard["uid"] and dashboard["title"].startswith("LeadFlow")
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert _visual_panels(dashboard)


def test_panel_ids_unique(dashboard):
    ids = [p["id"] for p in _panels(dashboard)]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids)), ids


def test_grid_positions_do_not_overlap(dashboard):
    boxes = []
    for panel in _panels(dashboard):
        g = panel["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0, panel["title"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        boxes.append((panel["title"], g))
    for (ta, a), (tb, b) in combinations(boxes, 2):
        overlap_x = a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
        overlap_y = a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]
        assert not (overlap_x and overlap_y), f"{ta!r} overlaps {tb!r}"


def test_datasource_variable_used_everywhere(dashboard):
    variables = _variables(dashboard)
    ds = variables.get("datasource")
    assert ds and ds["type"] == "datasource" and ds["query"] == "prometheus"
    for panel in _visual_panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_REF}, panel["title"]
        assert panel.get("targets"), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE_REF, panel["title"]
    for name, var in variables.items():
        if var["type"] == "query":
            assert var["datasource"]["uid"] == DATASOURCE_REF, name


def test_every_panel_has_a_unit(dashboard):
    for panel in _visual_panels(dashboard):
        assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]


def test_template_variables(dashboard):
    variables = _variables(dashboard)
    required = ["job", "instance"]
    if dashboard["uid"] == "leadflow-overview":
        required.append("set_name")  # the health metrics carry no set_name
    for name in required:
        var = variables.get(name)
        assert var, f"missing variable {name}"
        assert var["type"] == "query" and var["multi"] and var["includeAll"], name


def test_queries_filter_by_variables(dashboard):
    has_set = "set_name" in _variables(dashboard)
    for target in _targets(dashboard):
        expr = target["expr"]
        assert 'job=~"$job"' in expr and 'instance=~"$instance"' in expr, expr
        if has_set and "leadflow_exporter_" not in expr:
            assert 'set_name=~"$set_name"' in expr, expr


def test_rate_windows_use_grafana_intervals(dashboard):
    for target in _targets(dashboard):
        windows = re.findall(r"\b(?:rate|irate|increase)\([^()\[]*\[([^\]]+)\]", target["expr"])
        assert windows or "rate(" not in target["expr"], target["expr"]
        for window in windows:
            assert window in ("$__rate_interval", "$__range"), target["expr"]


def test_overview_draws_alert_thresholds():
    exprs = " ".join(t["expr"] for t in _targets(_load("overview")))
    for status in ("no_buyer", "affiliate_cap"):
        assert f"set_name:leadflow_calls_{status}:ratio_threshold" in exprs
        assert f"set_name:leadflow_calls_{status}:ratio4m" in exprs
        assert f"set_name:leadflow_calls_{status}:ratio_baseline" in exprs
    assert "leadflow_talk_duration_seconds_bucket" in exprs
    assert "by (affiliate)" in exprs and "by (advertiser)" in exprs


def test_dashboard_metric_names_are_exposed_or_recorded(dashboard):
    recorded = _recorded()
    names = set().union(*(_series_names(t["expr"]) for t in _targets(dashboard)))
    assert names
    for name in names:
        if ":" in name:
            assert name in recorded, f"{name} is not a recording rule in {RULES.name}"
        else:
            assert name in KNOWN_SERIES, f"{name} is not exposed by the exporter"


def test_rule_metric_names_are_exposed_or_recorded():
    recorded = _recorded()
    seen = set()
    for rule in _rules():
        text = rule["expr"] + " ".join(rule.get("annotations", {}).values())
        for name in _series_names(rule["expr"]) | set(re.findall(r"\w+:\w+:\w+", text)):
            seen.add(name)
            if ":" in name:
                assert name in recorded, f"{name} is not a recording rule"
            else:
                assert name in KNOWN_SERIES, f"{name} is not exposed by the exporter"
    # the extraction itself works on raw metrics, recording rules and Prometheus' own `up`
    assert {"leadflow_calls_total", "up", "set_name:leadflow_calls:increase10m"} <= seen


def test_series_name_extraction():
    expr = (
        'sum by (le) (rate(leadflow_talk_duration_seconds_bucket{job=~"$job", '
        'set_name="a:b"}[$__rate_interval])) / set_name:leadflow_calls:rate10m'
    )
    assert _series_names(expr) == {
        "leadflow_talk_duration_seconds_bucket",
        "set_name:leadflow_calls:rate10m",
    }


def test_exposed_metric_names_are_sane():
    for name in METRIC_NAMES:
        assert re.fullmatch(r"leadflow_[a-z0-9_]+", name), name
    counters = {n for n in METRIC_NAMES if n.endswith("_total")}
    assert "leadflow_calls_total" in counters
    histogram_series = {n for n in METRIC_NAMES if n.endswith(("_count", "_sum", "_bucket"))}
    # Only the talk-duration histogram has such series.
    assert {n.rsplit("_", 1)[0] for n in histogram_series} == {"leadflow_talk_duration_seconds"}


def test_provisioning_files():
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())
    assert datasources["apiVersion"] == 1
    assert [d["type"] for d in datasources["datasources"]] == ["prometheus"]
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "leadflow.yaml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    uids = [_load(name)["uid"] for name in DASHBOARDS]
    assert len(uids) == len(set(uids))
