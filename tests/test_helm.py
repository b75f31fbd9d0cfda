"""The Helm chart: lint, render, validate against Kubernetes schemas, and check the contract.

Helm runs in-process through helm-python-sdk (Helm's Go SDK, no helm binary, no network);
core manifests are validated by kubernetes-validate against a pinned Kubernetes version,
and the prometheus-operator kinds structurally here.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART_DIR = ROOT / "helm" / "leadflow-exporter"
RULES_FILE = ROOT / "rules" / "leadflow-exporter.rules.yaml"
DASHBOARDS_DIR = ROOT / "grafana" / "dashboards"
KUBE_VERSION = "1.30.0"
RELEASE = "lf"
NAMESPACE = "monitoring"
FULLNAME = "lf-leadflow-exporter"
CI_VALUES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
SCENARIOS: dict[str, dict[str, Any]] = {"defaults": {}} | {
    path.name: yaml.safe_load(path.read_text(encoding="utf-8")) or {} for path in CI_VALUES
}
CORE_KINDS = {
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "Service"),
    ("v1", "ServiceAccount"),
    ("v1", "PersistentVolumeClaim"),
    ("apps/v1", "Deployment"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
}
MONITORING_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
DNS_1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def exporter_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


# --- the chart ships the project's rules and dashboards, not copies --------------------


def test_rules_and_dashboards_are_links_to_their_one_source() -> None:
    rules_link = CHART_DIR / "files" / "leadflow-exporter.rules.yaml"
    dashboards_link = CHART_DIR / "files" / "dashboards"
    assert rules_link.is_symlink() and dashboards_link.is_symlink()
    assert RULES_FILE.is_file(), f"{RULES_FILE.relative_to(ROOT)} is missing"
    assert DASHBOARDS_DIR.is_dir(), f"{DASHBOARDS_DIR.relative_to(ROOT)} is missing"
    assert rules_link.resolve() == RULES_FILE.resolve()
    assert dashboards_link.resolve() == DASHBOARDS_DIR.resolve()
    assert sorted(DASHBOARDS_DIR.glob("*.json")), "no dashboards in grafana/dashboards"


def test_helm_package_includes_the_linked_files(tmp_path: Path) -> None:
    archive = Path(helm.package(CHART_DIR, destination=tmp_path))
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
        rules = members["leadflow-exporter/files/leadflow-exporter.rules.yaml"]
        assert rules.isfile(), "the package must hold the rules file itself, not a link"
        extracted = tar.extractfile(rules)
        assert extracted is not None
        assert extracted.read() == RULES_FILE.read_bytes()
        for dashboard in DASHBOARDS_DIR.glob("*.json"):
            member = members[f"leadflow-exporter/files/dashboards/{dashboard.name}"]
            data = tar.extractfile(member)
            assert data is not None and data.read() == dashboard.read_bytes()
        assert not any(name.startswith("leadflow-exporter/ci/") for name in members)


# --- lint and schema -------------------------------------------------------------------


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_lint_is_clean(scenario: str) -> None:
    report = helm.lint(
        CHART_DIR, SCENARIOS[scenario], strict=True, namespace=NAMESPACE, kube_version=KUBE_VERSION
    )
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [], problems


def test_ci_values_cover_the_documented_cases() -> None:
    names = {path.name for path in CI_VALUES}
    assert names == {
        "existing-secret-values.yaml",
        "persistence-values.yaml",
        "monitors-on-values.yaml",
        "network-policy-values.yaml",
    }


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCount": 2},
        {"image": {"tga": "1.0"}},
        {"persistence": {"enable": True}},
        {"config": {"poll": {"interval_secs": 30}}},
        {"config": {"api": {"access_key": "inline-secrets-belong-in-a-secret"}}},
        {"config": {"state": {"path": "/elsewhere.db"}}},
        {"config": {"metrics": {"extra_labels": ["caller_id"]}}},
        {"serviceMonitor": {"interval": "thirty seconds"}},
    ],
)
def test_schema_rejects_typos_and_chart_owned_keys(
    chart: helm.Chart, values: dict[str, Any]
) -> None:
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)


def test_every_value_is_documented(chart: helm.Chart) -> None:
    readme = (CHART_DIR / "README.md").read_text(encoding="utf-8")
    schema = chart.schema
    assert schema is not None and schema["additionalProperties"] is False

    def leaves(node: dict[str, Any], prefix: str) -> Iterator[str]:
        for key, sub in node.get("properties", {}).items():
            path = f"{prefix}{key}"
            if sub.get("type") == "object" and "properties" in sub:
                yield from leaves(sub, path + ".")
            else:
                yield path

    missing = [p for p in leaves(schema, "") if p != "global" and f"`{p}`" not in readme]
    assert missing == [], f"values missing from the chart README: {missing}"
    assert set(chart.values) <= set(schema["properties"])


# --- rendering -------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_manifests_validate(chart: helm.Chart, scenario: str) -> None:
    docs = render(chart, SCENARIOS[scenario])
    assert docs
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        assert key in CORE_KINDS | MONITORING_KINDS, f"unexpected kind {key}"
        name = doc["metadata"]["name"]
        assert DNS_1123.fullmatch(name) and len(name) <= 63, name
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
        if key in CORE_KINDS:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        elif doc["kind"] == "ServiceMonitor":
            check_service_monitor(doc, docs)
        else:
            check_prometheus_rule(doc)


def check_service_monitor(doc: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    spec = doc["spec"]
    service = one(docs, "Service")
    assert spec["selector"]["matchLabels"] == service["spec"]["selector"]
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in spec["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"
        assert endpoint["scheme"] in {"http", "https"}
        for key in ("interval", "scrapeTimeout"):
            assert re.fullmatch(r"([0-9]+(ms|s|m|h))+", endpoint[key]), endpoint[key]
        for relabel in endpoint.get("relabelings", []) + endpoint.get("metricRelabelings", []):
            assert isinstance(relabel, dict)


def test_scraped_series_get_the_job_the_rules_select(chart: helm.Chart) -> None:
    # The operator would name the job after the Service (lf-leadflow-exporter), and
    # LeadFlowExporterDown (`absent(up{job="leadflow"})`) would fire for good.
    rules = yaml.safe_load((ROOT / "rules" / "leadflow-exporter.rules.yaml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert any('up{job="leadflow"}' in expr for expr in exprs)
    values = {"serviceMonitor": {"enabled": True, "relabelings": [{"targetLabel": "team"}]}}
    endpoint = one(render(chart, values), "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["relabelings"] == [
        {"targetLabel": "job", "replacement": "leadflow"},
        {"targetLabel": "team"},
    ]
    values = {"serviceMonitor": {"enabled": True, "job": ""}}
    endpoint = one(render(chart, values), "ServiceMonitor")["spec"]["endpoints"][0]
    assert "relabelings" not in endpoint


def test_schema_takes_every_api_key_the_chart_does_not_own(chart: helm.Chart) -> None:
    chart.validate_schema({"config": {"api": {"max_pages": 500, "max_retries": 2}}})
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema({"config": {"api": {"page_size": 500}}})


def check_prometheus_rule(doc: dict[str, Any]) -> None:
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(doc["spec"]) == {"groups"}
    names = [group["name"] for group in doc["spec"]["groups"]]
    assert len(names) == len(set(names)), "rule group names must be unique"
    for group in doc["spec"]["groups"]:
        assert isinstance(group["rules"], list) and group["rules"]
        for rule in group["rules"]:
            assert isinstance(rule["expr"], str | int | float)
            assert ("record" in rule) != ("alert" in rule), rule


def test_default_deployment_is_hardened(chart: helm.Chart) -> None:
    docs = render(chart, {})
    deployment = one(docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = exporter_container(docs)
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["ports"] == [
        {"name": "http-metrics", "containerPort": 10151, "protocol": "TCP"}
    ]
    assert container["image"] == "leadflow-exporter:0.1.0"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["config"]["readOnly"] is True and mounts["secrets"]["readOnly"] is True
    assert mounts["tmp"]["mountPath"] == "/tmp" and "emptyDir" in volumes["tmp"]
    assert mounts["state"]["mountPath"] == "/var/lib/leadflow-exporter"
    assert "emptyDir" in volumes["state"]
    assert container["args"] == ["run", "--config", f"{mounts['config']['mountPath']}/config.yaml"]
    annotations = spec["template"]["metadata"]["annotations"]
    assert {"checksum/config", "checksum/secret"} <= set(annotations)
    assert one(docs, "ServiceAccount")["automountServiceAccountToken"] is False
    kinds = {doc["kind"] for doc in docs}
    assert kinds == {"ConfigMap", "Secret", "Service", "ServiceAccount", "Deployment"}


def test_config_changes_roll_the_pod(chart: helm.Chart) -> None:
    def checksums(values: dict[str, Any]) -> dict[str, str]:
        annotations = one(render(chart, values), "Deployment")["spec"]["template"]["metadata"]
        return dict(annotations["annotations"])

    base = checksums({})
    changed = checksums({"config": {"poll": {"interval_seconds": 120}}})
    assert changed["checksum/config"] != base["checksum/config"]
    rekeyed = checksums({"secrets": {"accessKey": "another-key"}})
    assert rekeyed["checksum/secret"] != base["checksum/secret"]


def rendered_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    configmaps = [cm for cm in by_kind(docs, "ConfigMap") if cm["metadata"]["name"] == FULLNAME]
    assert len(configmaps) == 1
    config: dict[str, Any] = yaml.safe_load(configmaps[0]["data"]["config.yaml"])
    return config


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_config_points_at_the_mounted_secret_and_state(chart: helm.Chart, scenario: str) -> None:
    docs = render(chart, SCENARIOS[scenario])
    config = rendered_config(docs)
    container = exporter_container(docs)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    secret_volume = next(v for v in pod["volumes"] if v["name"] == "secrets")["secret"]
    items = {item["key"]: item["path"] for item in secret_volume["items"]}
    assert set(items) == {"access-key", "secret-access-key", "rate-limit-key"}
    for key, file_name in {
        "access_key_file": "access-key",
        "secret_access_key_file": "secret-access-key",
        "rate_limit_key_file": "rate-limit-key",
    }.items():
        assert config["api"][key] == f"{mounts['secrets']}/{items[file_name]}"
        assert key.removesuffix("_file") not in config["api"]
    assert config["state"]["path"] == f"{mounts['state']}/state.db"
    assert config["server"]["listen"] == "0.0.0.0:10151"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_config_passes_the_exporters_validator(
    chart: helm.Chart, scenario: str, tmp_path: Path
) -> None:
    from leadflow_exporter.config import load_config

    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(rendered_config(render(chart, SCENARIOS[scenario]))))
    environ = {
        "LEADFLOW_ACCESS_KEY": "k",
        "LEADFLOW_SECRET_ACCESS_KEY": "s",
        "LEADFLOW_RATE_LIMIT_KEY": "r",
    }
    # The secret files exist only in the pod; the environment stands in for them here.
    load_config(config_file, environ=environ)


def test_existing_secret_suppresses_the_secret(chart: helm.Chart) -> None:
    docs = render(chart, SCENARIOS["existing-secret-values.yaml"])
    assert by_kind(docs, "Secret") == []
    pod = one(docs, "Deployment")["spec"]["template"]
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "secrets")
    assert volume["secret"]["secretName"] == "leadflow-api-keys"
    assert "checksum/secret" not in pod["metadata"]["annotations"]


def test_secret_holds_the_three_keys(chart: helm.Chart) -> None:
    secret = one(render(chart, SCENARIOS["persistence-values.yaml"]), "Secret")
    assert set(secret["data"]) == {"access-key", "secret-access-key", "rate-limit-key"}


def test_persistence_creates_a_claim(chart: helm.Chart) -> None:
    docs = render(chart, SCENARIOS["persistence-values.yaml"])
    pvc = one(docs, "PersistentVolumeClaim")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert pvc["spec"]["storageClassName"] == "standard"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    state = next(v for v in volumes if v["name"] == "state")
    assert state == {"name": "state", "persistentVolumeClaim": {"claimName": FULLNAME}}


def test_existing_claim_is_used_not_created(chart: helm.Chart) -> None:
    docs = render(chart, {"persistence": {"enabled": True, "existingClaim": "lf-state"}})
    assert by_kind(docs, "PersistentVolumeClaim") == []
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    state = next(v for v in volumes if v["name"] == "state")
    assert state["persistentVolumeClaim"] == {"claimName": "lf-state"}


def test_prometheus_rule_groups_are_exactly_the_rules_file(chart: helm.Chart) -> None:
    docs = render(chart, SCENARIOS["monitors-on-values.yaml"])
    rule = one(docs, "PrometheusRule")
    source = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    assert rule["spec"]["groups"] == source["groups"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboards_are_exactly_the_json_files(chart: helm.Chart) -> None:
    docs = render(chart, SCENARIOS["monitors-on-values.yaml"])
    dashboards = [
        cm for cm in by_kind(docs, "ConfigMap") if "grafana_dashboard" in cm["metadata"]["labels"]
    ]
    shipped: dict[str, str] = {}
    for cm in dashboards:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "LeadFlow"}
        assert len(cm["data"]) == 1
        shipped.update(cm["data"])
    sources = {
        path.name: path.read_text(encoding="utf-8") for path in DASHBOARDS_DIR.glob("*.json")
    }
    assert shipped == sources
    for text in shipped.values():
        json.loads(text)


def test_dashboard_label_is_configurable(chart: helm.Chart) -> None:
    docs = render(chart, {"dashboards": {"enabled": True, "label": "dash", "labelValue": "yes"}})
    dashboards = [cm for cm in by_kind(docs, "ConfigMap") if "dash" in cm["metadata"]["labels"]]
    assert dashboards and all(cm["metadata"]["labels"]["dash"] == "yes" for cm in dashboards)


def test_monitors_are_off_by_default(chart: helm.Chart) -> None:
    kinds = {doc["kind"] for doc in render(chart, {})}
    assert not kinds & {"ServiceMonitor", "PrometheusRule", "NetworkPolicy"}


def test_network_policy(chart: helm.Chart) -> None:
    values = SCENARIOS["network-policy-values.yaml"]
    policy = one(render(chart, values), "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == RELEASE
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "http-metrics", "protocol": "TCP"}]
    assert ingress["from"] == values["networkPolicy"]["ingressFrom"]
    egress_ports = [
        (port["port"], port["protocol"]) for rule in policy["egress"] for port in rule["ports"]
    ]
    assert sorted(egress_ports) == [(53, "TCP"), (53, "UDP"), (443, "TCP")]
    assert policy["egress"][0]["to"] == values["networkPolicy"]["dnsTo"]


def test_notes_warn_when_no_keys_are_given(chart: helm.Chart) -> None:
    notes = chart.render({}, name=RELEASE, namespace=NAMESPACE)
    text = next(v for k, v in notes.items() if k.endswith("NOTES.txt"))
    assert "WARNING" in text
    with_keys = chart.render(SCENARIOS["existing-secret-values.yaml"], name=RELEASE)
    assert "WARNING" not in next(v for k, v in with_keys.items() if k.endswith("NOTES.txt"))
