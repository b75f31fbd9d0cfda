"""Prometheus recording/alerting rules: promtool checks, unit tests, metadata, fast variant."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules" / "leadflow-exporter.rules.yaml"
RULE_TESTS = sorted((ROOT / "rules" / "tests").glob("*.yaml"))
ALERTS_DOC = ROOT / "docs" / "alerts.md"
EXAMPLE_CONFIG = ROOT / "examples" / "prometheus.yml"
RUNBOOK_BASE = "https://github.com/leadflow-exporter/leadflow-exporter/blob/main/docs/alerts.md"
# Test files whose assertions are all counts or ratios: they must pass time-compressed too.
SCALE_FREE_TESTS = ("calls.test.yaml", "seasonal.test.yaml")
SEVERITIES = {"critical", "warning", "info"}


def _promtool(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required (Debian/Ubuntu: apt-get install prometheus)"
    return subprocess.run(
        [promtool, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def _rules_doc() -> dict:
    return yaml.safe_load(RULES.read_text(encoding="utf-8"))


def _all_rules() -> list[dict]:
    return [rule for group in _rules_doc()["groups"] for rule in group["rules"]]


def _alerts() -> list[dict]:
    return [rule for rule in _all_rules() if "alert" in rule]


def _render_module():
    path = ROOT / "rules" / "render.py"
    spec = importlib.util.spec_from_file_location("leadflow_rules_render", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_promtool_check_rules_succeeds_without_warnings():
    result = _promtool("check", "rules", RULES)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    match = re.search(r"SUCCESS: (\d+) rules found", output)
    assert match, output
    assert int(match.group(1)) == len(_all_rules())
    assert "warning" not in output.lower(), output


def test_promtool_unit_tests_pass():
    assert RULE_TESTS, "no promtool tests in rules/tests/"
    result = _promtool("test", "rules", *RULE_TESTS)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "FAILED" not in output, output
    # one SUCCESS per test file
    assert output.count("SUCCESS") == len(RULE_TESTS), output


def test_every_alert_has_severity_and_annotations():
    alerts = _alerts()
    assert len(alerts) >= 6
    for rule in alerts:
        name = rule["alert"]
        assert re.fullmatch(r"LeadFlow[A-Z][A-Za-z]+", name), name
        assert rule.get("labels", {}).get("severity") in SEVERITIES, name
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            assert annotations.get(key, "").strip(), f"{name}: missing annotation {key}"
        assert annotations["runbook_url"] == f"{RUNBOOK_BASE}#{name.lower()}", name


def test_every_alert_has_a_runbook_section():
    doc = ALERTS_DOC.read_text(encoding="utf-8")
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in doc.splitlines()
        if line.startswith("## ")
    }
    for rule in _alerts():
        assert rule["alert"].lower() in headings, f"docs/alerts.md has no section {rule['alert']}"


def test_expected_alerts_exist():
    names = {rule["alert"] for rule in _alerts()}
    assert names >= {
        "LeadFlowNoBuyerSpike",
        "LeadFlowAffiliateCapSpike",
        "LeadFlowExporterDown",
        "LeadFlowApiErrors",
        "LeadFlowDataStale",
        "LeadFlowNoCalls",
    }


def test_every_alert_is_tested_firing_and_silent():
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for group in doc["tests"]:
            for case in group.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    for rule in _alerts():
        assert rule["alert"] in firing, f"no promtool test case where {rule['alert']} fires"
        assert rule["alert"] in silent, f"no promtool test case where {rule['alert']} is silent"


def test_recording_rule_names_follow_convention():
    records = [rule["record"] for rule in _all_rules() if "record" in rule]
    assert records
    assert len(records) == len(set(records)), "duplicate recording rule"
    for name in records:
        # level:metric:operations
        assert re.fullmatch(r"[a-z_]+:leadflow_[a-z_]+:[a-z0-9_]+", name), name
        assert not name.split(":")[1].endswith("_total"), name


def test_example_prometheus_config_is_valid_and_loads_the_rules():
    result = _promtool("check", "config", EXAMPLE_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    rule_files = [(EXAMPLE_CONFIG.parent / f).resolve() for f in config["rule_files"]]
    assert RULES.resolve() in rule_files
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert "leadflow" in jobs
    targets = [t for sc in jobs["leadflow"]["static_configs"] for t in sc["targets"]]
    assert targets and all(t.endswith(":10151") for t in targets)


def test_render_scale_one_is_identity():
    render = _render_module()
    text = RULES.read_text(encoding="utf-8")
    assert render.scale_durations(text, Fraction(1)) == text


@pytest.mark.parametrize(
    ("duration", "scale", "expected"),
    [
        ("10m", "1/60", "10s"),
        ("1d", "1/60", "24m"),
        ("170m", "1/60", "2m50s"),
        ("30s", "1/60", "500ms"),
        ("5m", "2", "10m"),
        ("1w", "1/60", "2h48m"),
        ("6d23h30m", "1/60", "2h47m30s"),
    ],
)
def test_render_scales_durations(duration, scale, expected):
    render = _render_module()
    assert render.scale_durations(f"x[{duration}]", Fraction(scale)) == f"x[{expected}]"


def test_fast_variant_is_valid_and_behaves_the_same(tmp_path):
    render = _render_module()
    scale = Fraction(1, 60)
    fast_rules = tmp_path / RULES.name
    fast_rules.write_text(render.scale_durations(RULES.read_text(encoding="utf-8"), scale))
    fast_text = fast_rules.read_text()
    # no production window is left anywhere in an expression or a name
    for window in ("4m", "10m", "15m", "30m", "1d", "6d23h30m", "23h30m"):
        assert not re.search(rf"(?<![0-9.]){window}(?![0-9A-Za-z])", fast_text), window
    assert "set_name:leadflow_calls_no_buyer:ratio4s" in fast_text
    assert "set_name:leadflow_calls_no_buyer:zscore4s" in fast_text
    # the spike group's own interval and the fallback baseline's subquery, scaled
    assert "interval: 250ms" in fast_text
    assert "[24m:10s]" in fast_text
    # the seasonal baseline's offsets: one week (minus 30m) and one day (minus 30m), scaled
    assert "[1m] offset 2h47m30s" in fast_text
    assert "[1m] offset 23m30s" in fast_text

    result = _promtool("check", "rules", fast_rules)
    assert result.returncode == 0, result.stdout + result.stderr

    # the scale-free promtool tests, compressed the same way, still pass
    (tmp_path / "tests").mkdir()
    fast_tests = []
    for name in SCALE_FREE_TESTS:
        source = ROOT / "rules" / "tests" / name
        target = tmp_path / "tests" / name
        target.write_text(render.scale_durations(source.read_text(encoding="utf-8"), scale))
        fast_tests.append(target)
    result = _promtool("test", "rules", *fast_tests)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("SUCCESS") == len(fast_tests), output
