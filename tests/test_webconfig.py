"""Tests for the exporter-toolkit web config: parsing, TLS, mTLS, basic auth, headers, reload.

Certificates are made with the openssl command line for each test session; servers are real
aiohttp sites on 127.0.0.1 and clients are real TLS clients with explicit protocol versions.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import shutil
import socket
import ssl
import statistics
import subprocess
import time
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
import yaml
from aiohttp import web
from structlog.testing import capture_logs

from leadflow_exporter import webconfig
from leadflow_exporter.webconfig import (
    WebConfig,
    WebConfigError,
    WebConfigWatcher,
    auth_middleware,
    build_ssl_context,
    load_web_config,
)

TESTDATA = Path(__file__).parent / "testdata" / "webconfig"
PASSWORD = "correct horse battery staple"


# ---------------------------------------------------------------------------------------------
# Certificates


@dataclass(frozen=True)
class PKI:
    dir: Path

    def __getitem__(self, name: str) -> Path:
        return self.dir / name

    def pem(self, name: str) -> str:
        return (self.dir / name).read_text()

    def der(self, name: str) -> bytes:
        return ssl.PEM_cert_to_DER_cert(self.pem(name))


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(cwd: Path, name: str) -> None:
    _openssl(
        cwd, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip


def _make_leaf(cwd: Path, name: str, ca: str, san: str, usage: str) -> None:
    _openssl(
        cwd, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
    )  # fmt: skip
    ext = cwd / f"{name}.ext"
    ext.write_text(f"basicConstraints=CA:FALSE\nsubjectAltName={san}\nextendedKeyUsage={usage}\n")
    _openssl(
        cwd, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", ext.name,
    )  # fmt: skip


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    # A missing openssl must fail the run: skipping would hide that TLS went untested.
    assert shutil.which("openssl"), "the openssl command line is required by these tests"
    version = subprocess.run(["openssl", "version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith(("OpenSSL", "LibreSSL"))
    d = tmp_path_factory.mktemp("pki")
    _make_ca(d, "ca")
    _make_ca(d, "other-ca")
    _make_leaf(d, "server", "ca", "DNS:localhost,IP:127.0.0.1", "serverAuth")
    _make_leaf(d, "server2", "ca", "DNS:localhost,IP:127.0.0.1", "serverAuth")
    _make_leaf(d, "client", "ca", "DNS:scraper.example.net", "clientAuth")
    _make_leaf(d, "intruder", "ca", "DNS:intruder.example.net", "clientAuth")
    _make_leaf(d, "other-client", "other-ca", "DNS:scraper.example.net", "clientAuth")
    return PKI(d)


@pytest.fixture
def confdir(tmp_path: Path, pki: PKI) -> Path:
    """The fixture files next to the certificates they name, as a deployment would have them."""
    for f in TESTDATA.iterdir():
        shutil.copy(f, tmp_path / f.name)
    for name in ("server", "client"):
        shutil.copy(pki[f"{name}.crt"], tmp_path / f"{name}.crt")
        shutil.copy(pki[f"{name}.key"], tmp_path / f"{name}.key")
    shutil.copy(pki["ca.crt"], tmp_path / "ca.crt")
    return tmp_path


def write_config(directory: Path, data: dict[str, Any], name: str = "web.yml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tls_section(pki: PKI, **extra: Any) -> dict[str, Any]:
    return {"cert_file": str(pki["server.crt"]), "key_file": str(pki["server.key"]), **extra}


def hash_password(password: str = PASSWORD, rounds: int = 4) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()


# ---------------------------------------------------------------------------------------------
# Servers and clients


async def _ok(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _boom(_request: web.Request) -> web.Response:
    raise RuntimeError("internal detail that must not reach the client")


@asynccontextmanager
async def serve(
    get_config: Callable[[], WebConfig | None],
    ssl_context: ssl.SSLContext | None,
    **middleware_args: Any,
) -> AsyncIterator[str]:
    app = web.Application(middlewares=[auth_middleware(get_config, **middleware_args)])
    app.router.add_get("/", _ok)
    app.router.add_get("/metrics", _ok)
    app.router.add_get("/-/healthy", _ok)
    app.router.add_get("/boom", _boom)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    scheme = "https" if ssl_context else "http"
    try:
        yield f"{scheme}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def client_context(
    pki: PKI,
    cert: str | None = None,
    *,
    ca: str = "ca",
    min_version: ssl.TLSVersion | None = None,
    max_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki[f"{ca}.crt"]))
    if cert:
        ctx.load_cert_chain(pki[f"{cert}.crt"], pki[f"{cert}.key"])
    if min_version is not None:
        ctx.minimum_version = min_version
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


async def get(
    url: str, ctx: ssl.SSLContext | None = None, auth: tuple[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    headers = _basic(*auth) if auth else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, ssl=ctx if ctx is not None else False, headers=headers) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.text()


async def peer_certificate(url: str, ctx: ssl.SSLContext) -> bytes:
    host, port = url.removeprefix("https://").split(":")
    _reader, writer = await asyncio.open_connection(host, int(port), ssl=ctx)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert der is not None
        return der
    finally:
        writer.close()
        await writer.wait_closed()


def _handshake_blocking(url: str, ctx: ssl.SSLContext) -> str:
    """A blocking handshake, so a refusal surfaces as the server's TLS alert."""
    host, port = url.removeprefix("https://").split(":")
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        return tls.version() or ""


def _https_get_blocking(url: str, ctx: ssl.SSLContext) -> tuple[int, str]:
    host, port = url.removeprefix("https://").split(":")
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        version = conn.sock.version() if isinstance(conn.sock, ssl.SSLSocket) else ""
        resp.read()
        return resp.status, version or ""
    finally:
        conn.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------------------------
# Parsing


def test_documented_example_file_is_accepted_as_is(confdir: Path, pki: PKI) -> None:
    # docs/web-config.yml from prometheus/exporter-toolkit, byte for byte.
    cfg = load_web_config(confdir / "web-config.yml")
    assert cfg.tls_server_config is not None
    assert cfg.tls_server_config.cert_file == confdir / "server.crt"
    assert cfg.tls_server_config.key_file == confdir / "server.key"
    assert cfg.tls_server_config.client_auth_type == "NoClientCert"
    assert sorted(cfg.basic_auth_users) == ["alice", "bob"]
    assert all(h.startswith("$2y$10$") for h in cfg.basic_auth_users.values())
    ctx = build_ssl_context(cfg)
    assert ctx is not None
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.maximum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.verify_mode == ssl.CERT_NONE


def test_all_options_file_is_accepted(confdir: Path) -> None:
    with capture_logs() as logs:
        cfg = load_web_config(confdir / "all-options.good.yml")
        ctx = build_ssl_context(cfg)
    tls = cfg.tls_server_config
    assert tls is not None and ctx is not None
    assert tls.client_auth_type == "RequireAndVerifyClientCert"
    assert tls.client_ca_file == confdir / "ca.crt"
    assert tls.client_allowed_sans == ("scraper.example.net",)
    assert len(tls.cipher_suites) == 17
    assert tls.curve_preferences == ("CurveP256", "CurveP384", "CurveP521", "X25519")
    assert tls.prefer_server_cipher_suites is False
    assert cfg.http_server_config.http2 is False
    assert cfg.rate_limit.interval_seconds == 1.0
    assert cfg.rate_limit.burst == 10
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert not ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    names = {c["name"] for c in ctx.get_ciphers()}
    assert {"ECDHE-RSA-AES128-SHA", "AES256-GCM-SHA384"} <= names
    # Python's ssl cannot take a curve preference list; that must be said, not hidden.
    assert any("curve_preferences" in entry["event"] for entry in logs)


def test_headers_file_is_accepted(confdir: Path) -> None:
    cfg = load_web_config(confdir / "headers.good.yml")
    assert dict(cfg.http_server_config.headers) == {
        "X-Frame-Options": "deny",
        "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
        "X-Content-Type-Options": "nosniff",
        "X-XSS-Protection": "1",
        "Content-Security-Policy": "default-src 'self'",
    }
    assert cfg.tls_server_config is None
    assert build_ssl_context(cfg) is None


def test_empty_file_means_plain_http_without_auth(confdir: Path) -> None:
    cfg = load_web_config(confdir / "empty.good.yml")
    assert cfg.tls_server_config is None
    assert not cfg.basic_auth_enabled
    assert build_ssl_context(cfg) is None


BAD_FIXTURES: list[tuple[str, str]] = [
    ("unknown-top-key", "tls_config: unknown key"),
    ("unknown-tls-key", "tls_server_config.certfile: unknown key"),
    ("tls-version-unknown", 'tls_server_config.min_version: unknown TLS version "TLS9"'),
    ("tls-version-old", "tls_server_config.min_version:"),
    ("tls-max-below-min", "tls_server_config.max_version:"),
    ("client-auth-unknown", "tls_server_config.client_auth_type:"),
    ("client-auth-unverified", "tls_server_config.client_auth_type:"),
    ("client-auth-without-ca", "tls_server_config.client_ca_file:"),
    ("client-ca-without-auth", "tls_server_config.client_auth_type:"),
    ("client-ca-no-certs", "tls_server_config.client_ca_file:"),
    ("cert-missing", "tls_server_config.cert_file:"),
    ("key-missing", "tls_server_config.key_file:"),
    ("cert-file-not-found", "tls_server_config.cert_file:"),
    ("cert-not-pem", "tls_server_config.cert_file:"),
    ("cert-inline-and-file", "tls_server_config.cert:"),
    ("key-mismatch", "tls_server_config.key_file:"),
    ("options-without-cert", "tls_server_config:"),
    ("cipher-unknown", 'tls_server_config.cipher_suites[0]: unknown cipher suite "TLS_RSA'),
    ("curve-unknown", 'tls_server_config.curve_preferences[1]: unknown curve "CurveP999"'),
    ("sans-without-verification", "tls_server_config.client_allowed_sans:"),
    ("prefer-not-bool", "tls_server_config.prefer_server_cipher_suites:"),
    ("header-not-allowed", "http_server_config.headers.X-Powered-By:"),
    ("header-bad-value", "http_server_config.headers.X-Frame-Options:"),
    ("http2-not-bool", "http_server_config.http2:"),
    ("http-unknown-key", "http_server_config.header: unknown key"),
    ("user-bad-hash", "basic_auth_users.alice:"),
    ("users-not-mapping", "basic_auth_users: expected a mapping"),
    ("user-duplicate", "basic_auth_users.alice: duplicate key"),
    ("rate-limit-bad-interval", 'rate_limit.interval: invalid duration "5 seconds"'),
    ("rate-limit-zero-burst", "rate_limit.burst:"),
    ("invalid-yaml", "(file): invalid YAML at line 3"),
    ("top-level-list", "(top level): expected a mapping"),
]


def test_every_bad_fixture_is_listed() -> None:
    on_disk = {p.name.removesuffix(".bad.yml") for p in TESTDATA.glob("*.bad.yml")}
    assert on_disk == {name for name, _ in BAD_FIXTURES}


@pytest.mark.parametrize(("name", "expected"), BAD_FIXTURES)
def test_bad_fixture_names_its_key(confdir: Path, name: str, expected: str) -> None:
    path = confdir / f"{name}.bad.yml"
    with pytest.raises(WebConfigError) as info:
        load_web_config(path)
    err = info.value
    assert any(p.startswith(expected) for p in err.problems), err.problems
    assert str(path) in str(err)
    # Nothing from a password hash or an unknown secret value leaks into the message.
    for secret in ("mDwo.lAisC94iLAyP81MCesa29", "hLqFl9jSjoAAy95Z", "hunter2"):
        assert secret not in str(err)


def test_all_problems_are_reported_together(tmp_path: Path, pki: PKI) -> None:
    path = write_config(
        tmp_path,
        {
            "tls_server_config": tls_section(pki, min_version="TLS9", cipher_suites=["NOPE"]),
            "http_server_config": {"headers": {"Server": "x"}},
            "basic_auth_users": {"bob": "not-a-hash"},
            "extra": True,
        },
    )
    with pytest.raises(WebConfigError) as info:
        load_web_config(path)
    prefixes = [p.split(":")[0] for p in info.value.problems]
    assert prefixes == [
        "tls_server_config.min_version",
        "tls_server_config.cipher_suites[0]",
        "http_server_config.headers.Server",
        "basic_auth_users.bob",
        "extra",
    ]


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(WebConfigError, match="cannot read"):
        load_web_config(tmp_path / "missing.yml")


def test_inline_certificate_and_key_are_accepted(tmp_path: Path, pki: PKI) -> None:
    path = write_config(
        tmp_path,
        {
            "tls_server_config": {
                "cert": pki.pem("server.crt"),
                "key": pki.pem("server.key"),
                "client_ca": pki.pem("ca.crt"),
                "client_auth_type": "VerifyClientCertIfGiven",
            }
        },
    )
    cfg = load_web_config(path)
    ctx = build_ssl_context(cfg)
    assert ctx is not None and ctx.verify_mode == ssl.CERT_OPTIONAL
    assert len(ctx.get_ca_certs()) == 1
    # The private key is a secret: never shown by repr, so configs can be logged.
    assert "PRIVATE KEY" not in repr(cfg)


def test_secrets_stay_out_of_repr(tmp_path: Path) -> None:
    hashed = hash_password()
    cfg = load_web_config(write_config(tmp_path, {"basic_auth_users": {"alice": hashed}}))
    assert hashed not in repr(cfg)
    assert "alice" in webconfig.describe(cfg)["basic_auth_users"]
    assert hashed not in str(webconfig.describe(cfg))


def test_relative_paths_resolve_against_the_config_directory(confdir: Path) -> None:
    elsewhere = confdir / "sub"
    elsewhere.mkdir()
    shutil.copy(confdir / "web-config.yml", elsewhere / "web-config.yml")
    with pytest.raises(WebConfigError) as info:
        load_web_config(elsewhere / "web-config.yml")
    assert any(str(elsewhere / "server.crt") in p for p in info.value.problems)


# ---------------------------------------------------------------------------------------------
# TLS


async def test_tls_serves_tls12_and_tls13_clients(tmp_path: Path, pki: PKI) -> None:
    cfg = load_web_config(write_config(tmp_path, {"tls_server_config": tls_section(pki)}))
    async with serve(lambda: cfg, build_ssl_context(cfg)) as url:
        for version, name in (
            (ssl.TLSVersion.TLSv1_2, "TLSv1.2"),
            (ssl.TLSVersion.TLSv1_3, "TLSv1.3"),
        ):
            ctx = client_context(pki, min_version=version, max_version=version)
            status, negotiated = await asyncio.to_thread(_https_get_blocking, url, ctx)
            assert (status, negotiated) == (200, name)


async def test_tls11_client_is_refused(tmp_path: Path, pki: PKI) -> None:
    cfg = load_web_config(write_config(tmp_path, {"tls_server_config": tls_section(pki)}))
    server_ctx = build_ssl_context(cfg)
    assert server_ctx is not None
    assert server_ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(pki["ca.crt"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
            old.set_ciphers("DEFAULT:@SECLEVEL=0")
        except (ValueError, ssl.SSLError):
            return  # this OpenSSL cannot build such a client; the minimum above must do
    async with serve(lambda: cfg, server_ctx) as url:
        with pytest.raises(ssl.SSLError) as info:
            await asyncio.to_thread(_handshake_blocking, url, old)
        # Control: the same server completes a TLS 1.2 handshake, so the refusal above is
        # about the version and not a broken listener.
        modern = client_context(pki, max_version=ssl.TLSVersion.TLSv1_2)
        assert await asyncio.to_thread(_handshake_blocking, url, modern) == "TLSv1.2"
    # NO_PROTOCOLS_AVAILABLE would mean the client never offered TLS 1.1: not a real test.
    # asyncio's server closes without flushing its alert, so the client may only see EOF.
    assert info.value.reason in ("TLSV1_ALERT_PROTOCOL_VERSION", "UNEXPECTED_EOF_WHILE_READING")


async def test_min_version_tls13_refuses_a_tls12_client(tmp_path: Path, pki: PKI) -> None:
    cfg = load_web_config(
        write_config(tmp_path, {"tls_server_config": tls_section(pki, min_version="TLS13")})
    )
    async with serve(lambda: cfg, build_ssl_context(cfg)) as url:
        tls12 = client_context(pki, max_version=ssl.TLSVersion.TLSv1_2)
        with pytest.raises(ssl.SSLError) as info:
            await asyncio.to_thread(_handshake_blocking, url, tls12)
        assert info.value.reason in ("TLSV1_ALERT_PROTOCOL_VERSION", "UNEXPECTED_EOF_WHILE_READING")
        status, negotiated = await asyncio.to_thread(_https_get_blocking, url, client_context(pki))
        assert (status, negotiated) == (200, "TLSv1.3")


async def test_mtls_requires_a_certificate_signed_by_the_ca(tmp_path: Path, pki: PKI) -> None:
    section = tls_section(
        pki, client_auth_type="RequireAndVerifyClientCert", client_ca_file=str(pki["ca.crt"])
    )
    cfg = load_web_config(write_config(tmp_path, {"tls_server_config": section}))
    async with serve(lambda: cfg, build_ssl_context(cfg)) as url:
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            no_cert = client_context(pki, max_version=version)
            with pytest.raises(aiohttp.ClientError):
                await get(url, no_cert)
            foreign = client_context(pki, "other-client", max_version=version)
            with pytest.raises(aiohttp.ClientError):
                await get(url, foreign)
            status, _, body = await get(url, client_context(pki, "client", max_version=version))
            assert (status, body) == (200, "ok")


async def test_client_allowed_sans(tmp_path: Path, pki: PKI) -> None:
    section = tls_section(
        pki,
        client_auth_type="RequireAndVerifyClientCert",
        client_ca_file=str(pki["ca.crt"]),
        client_allowed_sans=["scraper.example.net"],
    )
    cfg = load_web_config(
        write_config(
            tmp_path,
            {
                "tls_server_config": section,
                "http_server_config": {"headers": {"X-Frame-Options": "deny"}},
            },
        )
    )
    async with serve(lambda: cfg, build_ssl_context(cfg)) as url:
        assert (await get(url, client_context(pki, "client")))[0] == 200
        status, headers, _ = await get(url, client_context(pki, "intruder"))
        assert status == 403
        assert headers["X-Frame-Options"] == "deny"


# ---------------------------------------------------------------------------------------------
# Basic auth and headers


@pytest.fixture
def count_bcrypt(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls[0] += 1
        return real(password, hashed)

    monkeypatch.setattr(webconfig.bcrypt, "checkpw", counting)
    return calls


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def test_basic_auth(tmp_path: Path, pki: PKI, count_bcrypt: list[int]) -> None:
    # $2y$ is what htpasswd writes (the toolkit's documented tool); it must verify too.
    hashed = "$2y$" + hash_password()[4:]
    cfg = load_web_config(
        write_config(
            tmp_path,
            {
                "tls_server_config": tls_section(pki),
                "basic_auth_users": {"alice": hashed},
                "http_server_config": {"headers": {"X-Content-Type-Options": "nosniff"}},
            },
        )
    )
    ctx = client_context(pki)
    async with serve(lambda: cfg, build_ssl_context(cfg), realm="leadflow") as url:
        for auth in (None, ("alice", "wrong"), ("mallory", PASSWORD), ("alice", "")):
            status, headers, body = await get(f"{url}/metrics", ctx, auth)
            assert status == 401, auth
            assert headers["WWW-Authenticate"].startswith('Basic realm="leadflow"')
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert "ok" not in body
        status, headers, body = await get(f"{url}/metrics", ctx, ("alice", PASSWORD))
        assert (status, body) == (200, "ok")
        assert headers["X-Content-Type-Options"] == "nosniff"


async def test_successful_checks_are_cached_and_unknown_users_still_pay_bcrypt(
    tmp_path: Path, count_bcrypt: list[int]
) -> None:
    cfg = load_web_config(write_config(tmp_path, {"basic_auth_users": {"alice": hash_password()}}))
    async with serve(lambda: cfg, None) as url, aiohttp.ClientSession() as session:

        async def status(user: str, password: str) -> int:
            async with session.get(url, headers=_basic(user, password)) as resp:
                return resp.status

        assert await status("alice", PASSWORD) == 200
        assert count_bcrypt[0] == 1
        for _ in range(5):
            assert await status("alice", PASSWORD) == 200
        assert count_bcrypt[0] == 1, "a cached success must not run bcrypt again"
        # Failures are never cached: each wrong guess costs a full bcrypt check.
        assert await status("alice", "guess") == 401
        assert await status("alice", "guess") == 401
        assert count_bcrypt[0] == 3
        # A user that does not exist gets the same dummy check, not an early 401.
        assert await status("nobody", PASSWORD) == 401
        assert count_bcrypt[0] == 4
        # A wrong password must not evict or bypass the cached success.
        assert await status("alice", PASSWORD) == 200
        assert count_bcrypt[0] == 4


async def test_unknown_user_takes_about_as_long_as_a_wrong_password(tmp_path: Path) -> None:
    cfg = load_web_config(
        write_config(tmp_path, {"basic_auth_users": {"alice": hash_password(rounds=8)}})
    )
    async with serve(lambda: cfg, None) as url, aiohttp.ClientSession() as session:

        async def timed(user: str) -> float:
            start = time.perf_counter()
            async with session.get(url, headers=_basic(user, "wrong")) as resp:
                assert resp.status == 401
            return time.perf_counter() - start

        await timed("nobody")  # builds the dummy hash once
        known = statistics.median([await timed("alice") for _ in range(5)])
        unknown = statistics.median([await timed("nobody") for _ in range(5)])
    assert 1 / 3 < unknown / known < 3, (known, unknown)


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(b"no-colon-here").decode(),
        "Basic " + base64.b64encode(b"alice:\xff\xfe").decode(),
        "Basic " + base64.b64encode(b"\xff:" + PASSWORD.encode()).decode(),
        "Bearer " + PASSWORD,
        "Basic " + base64.b64encode(b"alice:" + b"x" * 100).decode(),
    ],
)
async def test_malformed_credentials_get_401(tmp_path: Path, authorization: str) -> None:
    cfg = load_web_config(write_config(tmp_path, {"basic_auth_users": {"alice": hash_password()}}))
    async with (
        serve(lambda: cfg, None) as url,
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Authorization": authorization}) as resp,
    ):
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Basic realm=")


async def test_password_longer_than_72_bytes_is_not_truncated(tmp_path: Path) -> None:
    long_password = "p" * 72
    cfg = load_web_config(
        write_config(tmp_path, {"basic_auth_users": {"alice": hash_password(long_password)}})
    )
    async with serve(lambda: cfg, None) as url:
        assert (await get(url, auth=("alice", long_password)))[0] == 200
        assert (await get(url, auth=("alice", long_password + "extra")))[0] == 401


async def test_headers_on_every_response_and_no_stack_traces(tmp_path: Path) -> None:
    cfg = load_web_config(
        write_config(
            tmp_path,
            {
                "http_server_config": {
                    "headers": {
                        "X-Frame-Options": "sameorigin",
                        "Content-Security-Policy": "default-src 'none'",
                    }
                }
            },
        )
    )
    expected = {"X-Frame-Options": "sameorigin", "Content-Security-Policy": "default-src 'none'"}
    with capture_logs() as logs:
        async with serve(lambda: cfg, None) as url:
            for path, code in (("/", 200), ("/does-not-exist", 404), ("/boom", 500)):
                status, headers, body = await get(url + path)
                assert status == code
                assert {k: headers.get(k) for k in expected} == expected
                assert "Traceback" not in body
                assert "internal detail" not in body
    assert any(e["event"] == "request handler failed" for e in logs)


async def test_unauthenticated_paths(tmp_path: Path) -> None:
    cfg = load_web_config(write_config(tmp_path, {"basic_auth_users": {"alice": hash_password()}}))
    async with serve(lambda: cfg, None, unauthenticated_paths={"/-/healthy"}) as url:
        assert (await get(url + "/-/healthy"))[0] == 200
        assert (await get(url + "/metrics"))[0] == 401


async def test_no_web_config_passes_requests_through() -> None:
    async with serve(lambda: None, None) as url:
        status, headers, body = await get(url)
    assert (status, body) == (200, "ok")
    assert "WWW-Authenticate" not in headers


async def test_rate_limit(tmp_path: Path) -> None:
    cfg = load_web_config(write_config(tmp_path, {"rate_limit": {"interval": "1h", "burst": 2}}))
    clock = FakeClock()
    async with serve(lambda: cfg, None, clock=clock) as url:
        assert [(await get(url))[0] for _ in range(3)] == [200, 200, 429]
        clock.now += 3600
        assert (await get(url))[0] == 200


# ---------------------------------------------------------------------------------------------
# Reloading


def test_reload_picks_up_changes_and_keeps_the_last_good_config(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"basic_auth_users": {"alice": hash_password()}})
    clock = FakeClock()
    watcher = WebConfigWatcher(path, clock=clock)
    assert set(watcher.config.basic_auth_users) == {"alice"}

    write_config(tmp_path, {"basic_auth_users": {"bob": hash_password()}})
    assert watcher.maybe_reload() is False, "checked at most once a second"
    clock.now += 1.0
    assert watcher.maybe_reload() is True
    assert set(watcher.get_config().basic_auth_users) == {"bob"}
    assert watcher.error is None

    secret = "plaintext-hunter2"
    path.write_text(f"basic_auth_users:\n  carol: {secret}\n")
    clock.now += 1.0
    with capture_logs() as logs:
        assert watcher.maybe_reload() is False
        clock.now += 1.0
        assert watcher.maybe_reload() is False
    assert set(watcher.config.basic_auth_users) == {"bob"}
    assert watcher.error is not None
    assert any(p.startswith("basic_auth_users.carol:") for p in watcher.error.problems)
    assert len(logs) == 1, "a persisting error is logged once"
    assert secret not in str(logs) and secret not in str(watcher.error)

    write_config(tmp_path, {"basic_auth_users": {"dave": hash_password()}})
    clock.now += 1.0
    assert watcher.maybe_reload() is True
    assert set(watcher.config.basic_auth_users) == {"dave"}
    assert watcher.error is None


def test_unchanged_file_is_not_reloaded(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"basic_auth_users": {"alice": hash_password()}})
    watcher = WebConfigWatcher(path)
    before = watcher.config
    assert watcher.maybe_reload(force=True) is False
    assert watcher.config is before


def test_bad_initial_file_raises(confdir: Path) -> None:
    with pytest.raises(WebConfigError, match=r"tls_server_config\.min_version"):
        WebConfigWatcher(confdir / "tls-version-unknown.bad.yml")


def test_turning_tls_on_needs_a_restart(tmp_path: Path, pki: PKI) -> None:
    path = write_config(tmp_path, {"basic_auth_users": {"alice": hash_password()}})
    watcher = WebConfigWatcher(path)
    assert watcher.ssl_context is None
    write_config(tmp_path, {"tls_server_config": tls_section(pki)})
    assert watcher.maybe_reload(force=True) is False
    assert watcher.error is not None
    assert watcher.error.problems[0].startswith("tls_server_config:")
    assert watcher.config.tls_server_config is None


async def test_certificate_rotation_applies_to_new_handshakes(tmp_path: Path, pki: PKI) -> None:
    for name in ("server.crt", "server.key"):
        shutil.copy(pki[name], tmp_path / name)
    path = write_config(
        tmp_path, {"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"}}
    )
    watcher = WebConfigWatcher(path)
    ctx = client_context(pki)
    async with serve(watcher.get_config, watcher.ssl_context) as url:
        assert await peer_certificate(url, ctx) == pki.der("server.crt")
        # Only the certificate files change, as with cert-manager; the YAML stays the same.
        shutil.copy(pki["server2.crt"], tmp_path / "server.crt")
        shutil.copy(pki["server2.key"], tmp_path / "server.key")
        assert watcher.maybe_reload(force=True) is True
        assert await peer_certificate(url, ctx) == pki.der("server2.crt")
        assert (await get(url, ctx))[0] == 200


async def test_client_ca_rotation_drops_the_old_ca(tmp_path: Path, pki: PKI) -> None:
    shutil.copy(pki["ca.crt"], tmp_path / "clients.crt")
    path = write_config(
        tmp_path,
        {
            "tls_server_config": tls_section(
                pki, client_auth_type="RequireAndVerifyClientCert", client_ca_file="clients.crt"
            )
        },
    )
    watcher = WebConfigWatcher(path)
    async with serve(watcher.get_config, watcher.ssl_context) as url:
        assert (await get(url, client_context(pki, "client")))[0] == 200
        shutil.copy(pki["other-ca.crt"], tmp_path / "clients.crt")
        assert watcher.maybe_reload(force=True) is True
        with pytest.raises(aiohttp.ClientError):
            await get(url, client_context(pki, "client"))
        assert (await get(url, client_context(pki, "other-client")))[0] == 200


async def test_versions_and_client_auth_change_on_reload(tmp_path: Path, pki: PKI) -> None:
    path = write_config(tmp_path, {"tls_server_config": tls_section(pki)})
    watcher = WebConfigWatcher(path)
    tls12 = client_context(pki, max_version=ssl.TLSVersion.TLSv1_2)
    async with serve(watcher.get_config, watcher.ssl_context) as url:
        assert (await get(url, tls12))[0] == 200
        assert (await get(url, client_context(pki)))[0] == 200
        section = tls_section(
            pki,
            min_version="TLS13",
            client_auth_type="RequireAndVerifyClientCert",
            client_ca_file=str(pki["ca.crt"]),
        )
        write_config(tmp_path, {"tls_server_config": section})
        assert watcher.maybe_reload(force=True) is True
        with pytest.raises(ssl.SSLError):
            await asyncio.to_thread(_handshake_blocking, url, tls12)
        with pytest.raises(aiohttp.ClientError):
            await get(url, client_context(pki))
        assert (await get(url, client_context(pki, "client")))[0] == 200


async def test_bad_certificate_on_reload_keeps_serving_the_old_one(
    tmp_path: Path, pki: PKI
) -> None:
    for name in ("server.crt", "server.key"):
        shutil.copy(pki[name], tmp_path / name)
    path = write_config(
        tmp_path, {"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"}}
    )
    watcher = WebConfigWatcher(path)
    ctx = client_context(pki)
    async with serve(watcher.get_config, watcher.ssl_context) as url:
        # A half-finished rotation: new certificate, old key.
        shutil.copy(pki["server2.crt"], tmp_path / "server.crt")
        assert watcher.maybe_reload(force=True) is False
        assert watcher.error is not None
        assert any(p.startswith("tls_server_config.key_file:") for p in watcher.error.problems)
        assert await peer_certificate(url, ctx) == pki.der("server.crt")


def test_error_message_lists_every_problem(confdir: Path) -> None:
    with pytest.raises(WebConfigError) as info:
        load_web_config(confdir / "tls-max-below-min.bad.yml")
    text = str(info.value)
    for problem in info.value.problems:
        assert f"  - {problem}" in text
