"""The endpoint as an attacker or a careless operator meets it: secrets, limits, TLS, signals."""

from __future__ import annotations

import http.client as httpclient
import json
import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from leadflow_exporter.simulator import DEFAULT_CREDENTIALS, HISTORY_PATH
from tests.test_e2e import free_port, http, wait_until

pytestmark = pytest.mark.e2e

ACCESS = "AK-distinctive-0d7f3a"
SECRET = "SK-distinctive-9b21c4e8"
RATE_KEY = "RK-distinctive-55e1aa"


def _start_simulator() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "leadflow_exporter", "simulate", "--listen", f"127.0.0.1:{port}",
         "--rate-limit", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http("GET", url + "/_sim/clock")[0] == 200, 20, "the simulator")
    return process, url


def _start_exporter(
    tmp_path: Path, config: dict[str, Any], env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    log = tmp_path / "exporter.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "leadflow_exporter", "run", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        env={**os.environ, **(env or {})},
    )
    return process, log


def _stop(*processes: subprocess.Popen[bytes]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_rejected_keys_never_leak(tmp_path: Path) -> None:
    simulator, sim_url = _start_simulator()
    port = free_port()
    (tmp_path / "secret").write_text(SECRET)
    config = {
        "api": {
            "base_url": sim_url + HISTORY_PATH,
            "secret_access_key_file": "secret",
            "timeout_seconds": 2,
            "max_retries": 1,
        },
        "poll": {"interval_seconds": 0.5},
        "state": {"path": ""},
        "server": {"listen": f"127.0.0.1:{port}"},
        "logging": {"level": "debug", "format": "json"},
    }
    exporter, log = _start_exporter(
        tmp_path, config, {"LEADFLOW_ACCESS_KEY": ACCESS, "LEADFLOW_RATE_LIMIT_KEY": RATE_KEY}
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def refused_twice() -> bool:
            status, body = http("GET", base + "/metrics")
            return status == 200 and b'reason="unauthorized"} 2.0' in body

        wait_until(refused_twice, 30, "the API to refuse the keys twice")
        pages = {path: http("GET", base + path)[1] for path in ("/metrics", "/config", "/")}
        cmdline = Path(f"/proc/{exporter.pid}/cmdline").read_bytes()
        environ_listing = subprocess.run(["ps", "-eo", "args"], capture_output=True).stdout
    finally:
        _stop(exporter, simulator)
    assert exporter.returncode == 0
    logged = log.read_bytes()
    assert b"unauthorized" in logged and b"api_query_failed" in logged
    for value in (ACCESS, SECRET, RATE_KEY):
        secret = value.encode()
        for where, content in {**pages, "log": logged, "cmdline": cmdline}.items():
            assert secret not in content, f"{value} leaked into {where}"
        assert secret not in environ_listing
    assert yaml.safe_load(pages["/config"])["api"]["secret_access_key"] == "<secret>"
    for line in logged.splitlines():
        if line.startswith(b"{"):
            json.loads(line)  # every log line is one JSON event


def test_bad_config_is_refused_before_the_daemon_starts(tmp_path: Path) -> None:
    port = free_port()
    config = {
        "api": {"access_key": "a", "secret_access_key": SECRET, "rate_limit_key": "r"},
        "poll": {"interval_seconds": 0},
        "server": {"listen": f"127.0.0.1:{port}"},
        "colour": "blue",
    }
    exporter, log = _start_exporter(tmp_path, config)
    assert exporter.wait(timeout=30) == 1
    output = log.read_text()
    assert "poll.interval_seconds: must be > 0" in output
    assert "colour: unknown key" in output
    assert SECRET not in output
    with pytest.raises(OSError):
        http("GET", f"http://127.0.0.1:{port}/metrics")


def test_sighup_reloads_and_abuse_limits_hold(tmp_path: Path) -> None:
    simulator, sim_url = _start_simulator()
    port = free_port()
    config = {
        "api": {
            "base_url": sim_url + HISTORY_PATH,
            "access_key": DEFAULT_CREDENTIALS.access_key,
            "secret_access_key": DEFAULT_CREDENTIALS.secret_access_key,
            "rate_limit_key": DEFAULT_CREDENTIALS.rate_limit_key,
        },
        "poll": {"interval_seconds": 0.5},
        "state": {"path": str(tmp_path / "state.db")},
        "server": {"listen": f"127.0.0.1:{port}"},
    }
    exporter, _ = _start_exporter(tmp_path, config)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http("GET", base + "/-/ready")[0] == 200, 30, "ready")
        config["poll"]["interval_seconds"] = 0.7
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        exporter.send_signal(signal.SIGHUP)
        wait_until(
            lambda: (
                b"leadflow_exporter_poll_interval_seconds 0.7" in http("GET", base + "/metrics")[1]
            ),
            20,
            "the reload to take effect",
        )
        # Oversized headers and bodies are refused, and the daemon keeps serving.

        conn = httpclient.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/metrics", headers={"X-Big": "x" * 20000})
        assert conn.getresponse().status in (400, 431)
        conn.close()
        conn = httpclient.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/-/reload", body=b"x" * (1 << 20))
        response = conn.getresponse()
        assert response.status in (403, 413)
        conn.close()
        status, body = http("GET", base + "/nope")
        assert status == 404 and b"Traceback" not in body
        assert http("GET", base + "/-/healthy")[0] == 200
    finally:
        _stop(exporter, simulator)
    assert exporter.returncode == 0


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls_endpoint_with_mtls(tmp_path: Path) -> None:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ca",
            "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    for name, cn in (("server", "127.0.0.1"), ("client", "prometheus")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        (tmp_path / f"{name}.ext").write_text(f"subjectAltName=IP:127.0.0.1,DNS:{cn}\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                "-out", f"{name}.crt")  # fmt: skip
    web = {
        "tls_server_config": {
            "cert_file": "server.crt",
            "key_file": "server.key",
            "client_auth_type": "RequireAndVerifyClientCert",
            "client_ca_file": "ca.crt",
        }
    }
    (tmp_path / "web.yml").write_text(yaml.safe_dump(web))
    simulator, sim_url = _start_simulator()
    port = free_port()
    config = {
        "api": {
            "base_url": sim_url + HISTORY_PATH,
            "access_key": DEFAULT_CREDENTIALS.access_key,
            "secret_access_key": DEFAULT_CREDENTIALS.secret_access_key,
            "rate_limit_key": DEFAULT_CREDENTIALS.rate_limit_key,
        },
        "state": {"path": ""},
        "server": {"listen": f"127.0.0.1:{port}", "web_config_file": "web.yml"},
    }
    exporter, _ = _start_exporter(tmp_path, config)
    try:

        def context(with_cert: bool) -> ssl.SSLContext:
            ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
            if with_cert:
                ctx.load_cert_chain(tmp_path / "client.crt", tmp_path / "client.key")
            return ctx

        def get(ctx: ssl.SSLContext) -> int:
            conn = httpclient.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
            try:
                conn.request("GET", "/metrics")
                return conn.getresponse().status
            finally:
                conn.close()

        wait_until(lambda: get(context(True)) == 200, 30, "the TLS endpoint")
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            get(context(False))
        old = context(True)
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.minimum_version = ssl.TLSVersion.TLSv1
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            get(old)
    finally:
        _stop(exporter, simulator)
