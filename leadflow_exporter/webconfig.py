"""Prometheus exporter-toolkit web configuration for the aiohttp server.

The file format is the one documented in prometheus/exporter-toolkit
(docs/web-configuration.md), so a file written for any Go exporter works here. Where Python's
``ssl`` module cannot do what Go's ``crypto/tls`` does, the file is refused with a message saying
so rather than silently served with weaker settings; docs/security.md lists those differences.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import bcrypt
import structlog
import yaml
from aiohttp import web

__all__ = [
    "HTTPServerConfig",
    "RateLimitConfig",
    "TLSServerConfig",
    "WebConfig",
    "WebConfigError",
    "WebConfigWatcher",
    "auth_middleware",
    "build_ssl_context",
    "load_web_config",
]

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]

# Python's ssl can only ask for a client certificate and then verify it against loaded CAs;
# it has no hook to accept an unverified one, so these three Go policies cannot be honoured.
_VERIFY_MODES: Final[Mapping[str, ssl.VerifyMode]] = MappingProxyType(
    {
        "NoClientCert": ssl.CERT_NONE,
        "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
        "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
    }
)
_UNVERIFIED_CLIENT_AUTH: Final = frozenset(
    {"RequestClientCert", "RequireAnyClientCert", "RequireClientCert"}
)

_TLS_VERSIONS: Final[Mapping[str, ssl.TLSVersion]] = MappingProxyType(
    {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
)
_REFUSED_TLS_VERSIONS: Final = frozenset({"TLS10", "TLS11"})
_VERSION_NAMES: Final = {v: k for k, v in _TLS_VERSIONS.items()}

# Go's names (tls.CipherSuites()) mapped to OpenSSL's. TLS 1.3 suites map to None: neither Go
# nor Python lets a server choose them, so they are accepted and have no effect, as in Go.
_CIPHER_SUITES: Final[Mapping[str, str | None]] = MappingProxyType(
    {
        "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
        "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
        "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
        "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
        "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
        "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
        "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_AES_128_GCM_SHA256": None,
        "TLS_AES_256_GCM_SHA384": None,
        "TLS_CHACHA20_POLY1305_SHA256": None,
    }
)

_CURVES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "CurveP256": "prime256v1",
        "CurveP384": "secp384r1",
        "CurveP521": "secp521r1",
        "X25519": "X25519",
    }
)

# The toolkit keeps this list closed on purpose (consistency across the Prometheus ecosystem);
# an empty tuple means any value is allowed.
_ALLOWED_HEADERS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "Strict-Transport-Security": (),
        "X-Content-Type-Options": ("nosniff",),
        "X-Frame-Options": ("deny", "sameorigin"),
        "X-XSS-Protection": (),
        "Content-Security-Policy": (),
    }
)

_BCRYPT_HASH: Final = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
# bcrypt only reads the first 72 bytes; longer passwords are refused rather than truncated so
# two different passwords can never both be accepted.
_BCRYPT_MAX_PASSWORD: Final = 72
_GO_DURATION: Final = re.compile(r"(?:(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+")
_GO_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS: Final[Mapping[str, float]] = MappingProxyType(
    {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
)


class WebConfigError(Exception):
    """A web config file that cannot be used; ``problems`` lists each with its key path."""

    def __init__(self, problems: Collection[str], source: str | Path | None = None) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        self.source = str(source) if source is not None else None
        where = f"invalid web config file {self.source}" if self.source else "invalid web config"
        super().__init__(where + ":\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass(frozen=True)
class TLSServerConfig:
    """``tls_server_config`` with relative paths already joined to the file's directory."""

    cert_file: Path | None = None
    key_file: Path | None = None
    cert: str | None = field(default=None, repr=False)
    key: str | None = field(default=None, repr=False)
    client_ca: str | None = field(default=None, repr=False)
    client_ca_file: Path | None = None
    client_auth_type: str = "NoClientCert"
    client_allowed_sans: tuple[str, ...] = ()
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    cipher_suites: tuple[str, ...] = ()
    curve_preferences: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True

    @property
    def verify_mode(self) -> ssl.VerifyMode:
        return _VERIFY_MODES[self.client_auth_type]

    def files(self) -> tuple[Path, ...]:
        """The files this section reads, for change detection."""
        return tuple(p for p in (self.cert_file, self.key_file, self.client_ca_file) if p)


@dataclass(frozen=True)
class HTTPServerConfig:
    # Accepted for compatibility; aiohttp serves HTTP/1.1 only, so it changes nothing.
    http2: bool = True
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class RateLimitConfig:
    """A token bucket: one request per ``interval_seconds``, bursts of ``burst``; 0 disables."""

    interval_seconds: float = 0.0
    burst: int = 0


@dataclass(frozen=True)
class WebConfig:
    """A parsed exporter-toolkit web config file."""

    path: Path | None = None
    tls_server_config: TLSServerConfig | None = None
    http_server_config: HTTPServerConfig = field(default_factory=HTTPServerConfig)
    # Hashes are secrets: kept out of repr so the config can be logged.
    basic_auth_users: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), repr=False
    )
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)

    @property
    def tls_enabled(self) -> bool:
        return self.tls_server_config is not None

    @property
    def basic_auth_enabled(self) -> bool:
        return bool(self.basic_auth_users)

    def files(self) -> tuple[Path, ...]:
        own = (self.path,) if self.path else ()
        tls = self.tls_server_config.files() if self.tls_server_config else ()
        return own + tls


# --------------------------------------------------------------------------------------------
# Parsing


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _mapping(node: yaml.Node, path: str, problems: _Problems) -> list[tuple[str, yaml.Node]]:
    if _is_null(node):
        return []
    if not isinstance(node, yaml.MappingNode):
        problems.add(path or "(top level)", "expected a mapping")
        return []
    items: list[tuple[str, yaml.Node]] = []
    seen: set[str] = set()
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            problems.add(path or "(top level)", "keys must be plain strings")
            continue
        key = key_node.value
        if key in seen:
            problems.add(_join(path, key), "duplicate key")
            continue
        seen.add(key)
        items.append((key, value_node))
    return items


def _string(node: yaml.Node, path: str, problems: _Problems) -> str | None:
    # Like yaml.v2 decoding into a Go string: any scalar is taken as its text.
    if _is_null(node):
        return None
    if not isinstance(node, yaml.ScalarNode):
        problems.add(path, "expected a string")
        return None
    return str(node.value)


def _bool(node: yaml.Node, path: str, problems: _Problems) -> bool | None:
    if _is_null(node):
        return None
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:bool":
        return bool(yaml.SafeLoader.bool_values[node.value.lower()])
    problems.add(path, "expected true or false")
    return None


def _int(node: yaml.Node, path: str, problems: _Problems) -> int | None:
    if _is_null(node):
        return None
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:int":
        try:
            return int(node.value.replace("_", ""), 0)
        except ValueError:
            pass
    problems.add(path, "expected an integer")
    return None


def _string_list(node: yaml.Node, path: str, problems: _Problems) -> list[tuple[str, str]]:
    if _is_null(node):
        return []
    if not isinstance(node, yaml.SequenceNode):
        problems.add(path, "expected a list of strings")
        return []
    out: list[tuple[str, str]] = []
    for i, item in enumerate(node.value):
        value = _string(item, f"{path}[{i}]", problems)
        if value is not None:
            out.append((f"{path}[{i}]", value))
    return out


def _resolve(base_dir: Path, value: str | None) -> Path | None:
    if not value:
        return None
    p = Path(value)
    return p if p.is_absolute() else base_dir / p


def _parse_duration(text: str) -> float | None:
    if text == "0":
        return 0.0
    if not _GO_DURATION.fullmatch(text):
        return None
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _GO_DURATION_PART.findall(text))


_TLS_KEYS: Final = frozenset(
    {
        "cert",
        "key",
        "client_ca",
        "cert_file",
        "key_file",
        "client_auth_type",
        "client_ca_file",
        "client_allowed_sans",
        "min_version",
        "max_version",
        "cipher_suites",
        "prefer_server_cipher_suites",
        "curve_preferences",
    }
)


def _parse_tls(node: yaml.Node, base_dir: Path, problems: _Problems) -> TLSServerConfig | None:
    path = "tls_server_config"
    raw: dict[str, yaml.Node] = {}
    for key, value in _mapping(node, path, problems):
        if key not in _TLS_KEYS:
            problems.add(_join(path, key), "unknown key")
        else:
            raw[key] = value

    def text(key: str) -> str | None:
        return _string(raw[key], f"{path}.{key}", problems) if key in raw else None

    cert, key, client_ca = text("cert"), text("key"), text("client_ca")
    cert_file, key_file, ca_file = text("cert_file"), text("key_file"), text("client_ca_file")
    client_auth = text("client_auth_type")

    enabled = any((cert, key, client_ca, cert_file, key_file, ca_file, client_auth))
    if not enabled:
        # The toolkit silently serves plain HTTP here; a file that sets TLS options but no
        # certificate almost certainly meant to enable TLS, so say so instead.
        if any(not _is_null(v) for v in raw.values()):
            problems.add(path, "TLS options are set but no certificate: set cert_file and key_file")
        return None

    for inline, file_key, value_inline, value_file in (
        ("cert", "cert_file", cert, cert_file),
        ("key", "key_file", key, key_file),
        ("client_ca", "client_ca_file", client_ca, ca_file),
    ):
        if value_inline and value_file:
            problems.add(f"{path}.{inline}", f"set only one of {inline} and {file_key}")
    if not cert and not cert_file:
        problems.add(f"{path}.cert_file", "missing one of cert or cert_file")
    if not key and not key_file:
        problems.add(f"{path}.key_file", "missing one of key or key_file")

    auth_type = client_auth or "NoClientCert"
    if auth_type in _UNVERIFIED_CLIENT_AUTH:
        problems.add(
            f"{path}.client_auth_type",
            f'"{auth_type}" accepts client certificates without verifying them, which this '
            "exporter cannot do; use RequireAndVerifyClientCert (or VerifyClientCertIfGiven) "
            "with client_ca_file",
        )
    elif auth_type not in _VERIFY_MODES:
        problems.add(
            f"{path}.client_auth_type",
            f'unknown client auth type "{auth_type}"; expected one of '
            + ", ".join(sorted(_VERIFY_MODES | dict.fromkeys(_UNVERIFIED_CLIENT_AUTH))),
        )
    has_ca = bool(client_ca or ca_file)
    if has_ca and auth_type == "NoClientCert":
        problems.add(
            f"{path}.client_auth_type",
            "a client CA is configured but client_auth_type is NoClientCert; "
            "use RequireAndVerifyClientCert",
        )
    if not has_ca and auth_type in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert"):
        problems.add(f"{path}.client_ca_file", f"required when client_auth_type is {auth_type}")

    sans = (
        [
            v
            for _, v in _string_list(
                raw["client_allowed_sans"], f"{path}.client_allowed_sans", problems
            )
        ]
        if "client_allowed_sans" in raw
        else []
    )
    if sans and auth_type != "RequireAndVerifyClientCert":
        problems.add(
            f"{path}.client_allowed_sans", "requires client_auth_type RequireAndVerifyClientCert"
        )

    versions: dict[str, ssl.TLSVersion] = {}
    for vkey, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        name = text(vkey) or default
        if name in _TLS_VERSIONS:
            versions[vkey] = _TLS_VERSIONS[name]
        elif name in _REFUSED_TLS_VERSIONS:
            problems.add(f"{path}.{vkey}", f'"{name}" is older than TLS 1.2; use TLS12 or TLS13')
        else:
            problems.add(f"{path}.{vkey}", f'unknown TLS version "{name}"')
    min_v = versions.get("min_version", ssl.TLSVersion.TLSv1_2)
    max_v = versions.get("max_version", ssl.TLSVersion.TLSv1_3)
    if len(versions) == 2 and max_v < min_v:
        problems.add(f"{path}.max_version", "is lower than min_version")

    ciphers: list[str] = []
    if "cipher_suites" in raw:
        for item_path, name in _string_list(
            raw["cipher_suites"], f"{path}.cipher_suites", problems
        ):
            if name in _CIPHER_SUITES:
                ciphers.append(name)
            else:
                problems.add(item_path, f'unknown cipher suite "{name}"')
    curves: list[str] = []
    if "curve_preferences" in raw:
        for item_path, name in _string_list(
            raw["curve_preferences"], f"{path}.curve_preferences", problems
        ):
            if name in _CURVES:
                curves.append(name)
            else:
                problems.add(item_path, f'unknown curve "{name}"')
    prefer = True
    if "prefer_server_cipher_suites" in raw:
        value = _bool(
            raw["prefer_server_cipher_suites"], f"{path}.prefer_server_cipher_suites", problems
        )
        prefer = True if value is None else value

    return TLSServerConfig(
        cert_file=_resolve(base_dir, cert_file),
        key_file=_resolve(base_dir, key_file),
        cert=cert or None,
        key=key or None,
        client_ca=client_ca or None,
        client_ca_file=_resolve(base_dir, ca_file),
        client_auth_type=auth_type if auth_type in _VERIFY_MODES else "NoClientCert",
        client_allowed_sans=tuple(sans),
        min_version=min_v,
        max_version=max_v,
        cipher_suites=tuple(ciphers),
        curve_preferences=tuple(curves),
        prefer_server_cipher_suites=prefer,
    )


def _parse_http(node: yaml.Node, problems: _Problems) -> HTTPServerConfig:
    path = "http_server_config"
    http2 = True
    headers: dict[str, str] = {}
    for key, value in _mapping(node, path, problems):
        if key == "http2":
            parsed = _bool(value, f"{path}.http2", problems)
            http2 = True if parsed is None else parsed
        elif key == "headers":
            for name, value_node in _mapping(value, f"{path}.headers", problems):
                hpath = f"{path}.headers.{name}"
                if name not in _ALLOWED_HEADERS:
                    problems.add(
                        hpath,
                        "this header cannot be configured; allowed: "
                        + ", ".join(sorted(_ALLOWED_HEADERS)),
                    )
                    continue
                header_value = _string(value_node, hpath, problems)
                if not header_value:
                    continue  # documented as "unset if blank"
                allowed = _ALLOWED_HEADERS[name]
                if "\r" in header_value or "\n" in header_value:
                    problems.add(hpath, "must not contain line breaks")
                elif allowed and header_value not in allowed:
                    problems.add(
                        hpath,
                        f'invalid value "{header_value}"; expected one of '
                        + ", ".join(f'"{a}"' for a in allowed),
                    )
                else:
                    headers[name] = header_value
        else:
            problems.add(_join(path, key), "unknown key")
    return HTTPServerConfig(http2=http2, headers=MappingProxyType(headers))


def _parse_users(node: yaml.Node, problems: _Problems) -> Mapping[str, str]:
    path = "basic_auth_users"
    users: dict[str, str] = {}
    for name, value in _mapping(node, path, problems):
        upath = _join(path, name)
        if not name:
            problems.add(path, "empty user name")
            continue
        if ":" in name:
            problems.add(upath, "user names cannot contain ':' in basic authentication")
            continue
        hashed = _string(value, upath, problems) if not _is_null(value) else None
        # The value is never echoed: it is a secret even when it is malformed.
        if hashed is None or not _BCRYPT_HASH.fullmatch(hashed):
            problems.add(upath, "not a bcrypt hash (expected $2a$, $2b$ or $2y$ hashes)")
            continue
        cost = int(hashed[4:6])
        if not 4 <= cost <= 31:
            problems.add(upath, "bcrypt cost must be between 4 and 31")
            continue
        users[name] = hashed
    return MappingProxyType(users)


def _parse_rate_limit(node: yaml.Node, problems: _Problems) -> RateLimitConfig:
    path = "rate_limit"
    interval = 0.0
    burst = 0
    for key, value in _mapping(node, path, problems):
        if key == "interval":
            if isinstance(value, yaml.ScalarNode) and value.tag == "tag:yaml.org,2002:int":
                if _int(value, f"{path}.interval", problems) != 0:
                    # yaml.v2 would read a bare number as nanoseconds, which nobody means.
                    problems.add(f"{path}.interval", 'needs a unit, e.g. "1s" or "500ms"')
                continue
            text = _string(value, f"{path}.interval", problems)
            if text is None:
                continue
            parsed = _parse_duration(text)
            if parsed is None:
                problems.add(f"{path}.interval", f'invalid duration "{text}"')
            else:
                interval = parsed
        elif key == "burst":
            parsed_burst = _int(value, f"{path}.burst", problems)
            if parsed_burst is not None:
                if parsed_burst < 0:
                    problems.add(f"{path}.burst", "must not be negative")
                else:
                    burst = parsed_burst
        else:
            problems.add(_join(path, key), "unknown key")
    if interval > 0 and burst < 1:
        # Go's limiter with burst 0 refuses every request; that is never what was meant.
        problems.add(f"{path}.burst", "must be at least 1 when rate_limit.interval is set")
    return RateLimitConfig(interval_seconds=interval, burst=burst)


def parse_web_config(text: str, base_dir: Path, path: Path | None = None) -> WebConfig:
    """Parse web config YAML; relative file names are resolved against ``base_dir``."""
    problems = _Problems()
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        # The YAML library quotes the offending line, which may hold a password hash.
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise WebConfigError([f"(file): invalid YAML at {where}: {exc.problem}"], path) from None
    except yaml.YAMLError:
        raise WebConfigError(["(file): invalid YAML"], path) from None

    tls: TLSServerConfig | None = None
    http = HTTPServerConfig()
    users: Mapping[str, str] = MappingProxyType({})
    rate = RateLimitConfig()
    if root is not None:
        for key, value in _mapping(root, "", problems):
            if key == "tls_server_config":
                tls = _parse_tls(value, base_dir, problems)
            elif key == "http_server_config":
                http = _parse_http(value, problems)
            elif key == "basic_auth_users":
                users = _parse_users(value, problems)
            elif key == "rate_limit":
                rate = _parse_rate_limit(value, problems)
            else:
                problems.add(key, "unknown key")

    if tls is not None and not problems.items:
        # Load the certificate, key and CAs now so `check` and a reload catch a bad file
        # before any handshake does.
        try:
            _configure_context(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), tls)
        except _TLSSetupError as exc:
            problems.items.extend(exc.problems)

    if problems.items:
        raise WebConfigError(problems.items, path)
    return WebConfig(
        path=path,
        tls_server_config=tls,
        http_server_config=http,
        basic_auth_users=users,
        rate_limit=rate,
    )


def load_web_config(path: str | Path) -> WebConfig:
    """Read and validate a web config file, including its certificate, key and CA files."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise WebConfigError([f"(file): cannot read: {reason}"], p) from None
    return parse_web_config(text, p.parent, p)


# --------------------------------------------------------------------------------------------
# TLS


class _TLSSetupError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class _EncryptedKeyError(Exception):
    pass


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key's passphrase.
    raise _EncryptedKeyError


def _ssl_reason(exc: ssl.SSLError) -> str:
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(exc.args[1] if len(exc.args) > 1 else exc))


def _read_pem(path: Path, key_path: str, problems: list[str]) -> str | None:
    try:
        return path.read_text(encoding="ascii")
    except OSError as exc:
        problems.append(f"{key_path}: cannot read {path}: {exc.strerror or exc}")
    except UnicodeDecodeError:
        problems.append(f"{key_path}: {path} is not a PEM file")
    return None


@contextmanager
def _pem_paths(cert: str, key: str) -> Iterator[tuple[str, str]]:
    """Expose PEM text as file names, which is all ``load_cert_chain`` accepts."""
    if hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir():
        # In-memory files: an inline private key never touches the disk.
        fds = [os.memfd_create(name, os.MFD_CLOEXEC) for name in ("cert", "key")]
        try:
            for fd, data in zip(fds, (cert, key), strict=True):
                os.write(fd, data.encode("ascii", "replace"))
            yield f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}"
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="leadflow-tls-") as tmp:  # mode 0700
        paths = (Path(tmp, "cert.pem"), Path(tmp, "key.pem"))
        for p, data in zip(paths, (cert, key), strict=True):
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii", errors="replace") as fh:
                fh.write(data)
        yield str(paths[0]), str(paths[1])


def _default_tls12_ciphers() -> str:
    fresh = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    return ":".join(c["name"] for c in fresh.get_ciphers() if c["protocol"] != "TLSv1.3")


def _apply_connection_settings(ctx: ssl.SSLContext, tls: TLSServerConfig) -> None:
    """Settings OpenSSL copies into each new connection, so they can be changed in place."""
    path = "tls_server_config"
    ctx.minimum_version = tls.min_version
    ctx.maximum_version = tls.max_version
    ctx.options |= ssl.OP_NO_COMPRESSION
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    openssl_names = [n for n in (_CIPHER_SUITES[c] for c in tls.cipher_suites) if n]
    try:
        ctx.set_ciphers(":".join(openssl_names) if openssl_names else _default_tls12_ciphers())
    except ssl.SSLError:
        raise _TLSSetupError(
            [f"{path}.cipher_suites: none of these cipher suites is available in this OpenSSL"]
        ) from None
    if len(tls.curve_preferences) == 1:
        # Python's ssl can restrict key exchange to one curve but cannot take a preference
        # list; with several curves OpenSSL's defaults (which include all of them) apply.
        try:
            ctx.set_ecdh_curve(_CURVES[tls.curve_preferences[0]])
        except (ValueError, ssl.SSLError):
            raise _TLSSetupError(
                [f'{path}.curve_preferences[0]: "{tls.curve_preferences[0]}" is not available']
            ) from None
    ctx.verify_mode = tls.verify_mode


def _load_credentials(ctx: ssl.SSLContext, tls: TLSServerConfig) -> None:
    path = "tls_server_config"
    problems: list[str] = []
    cert_key = f"{path}.cert_file" if tls.cert_file else f"{path}.cert"
    key_key = f"{path}.key_file" if tls.key_file else f"{path}.key"
    cert_pem = _read_pem(tls.cert_file, cert_key, problems) if tls.cert_file else tls.cert
    key_pem = _read_pem(tls.key_file, key_key, problems) if tls.key_file else tls.key
    ca_key = f"{path}.client_ca_file" if tls.client_ca_file else f"{path}.client_ca"
    ca_pem = (
        _read_pem(tls.client_ca_file, ca_key, problems) if tls.client_ca_file else tls.client_ca
    )
    if problems:
        raise _TLSSetupError(problems)
    assert cert_pem is not None and key_pem is not None

    # Checked on a scratch store first so a broken certificate is reported against the
    # certificate, and a load_cert_chain failure can be blamed on the key.
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cadata=cert_pem)
    except (ssl.SSLError, ValueError):
        raise _TLSSetupError([f"{cert_key}: does not contain a PEM certificate"]) from None
    with _pem_paths(cert_pem, key_pem) as (cert_path, key_path):
        try:
            ctx.load_cert_chain(cert_path, key_path, password=_no_password)
        except _EncryptedKeyError:
            raise _TLSSetupError([f"{key_key}: encrypted private keys are not supported"]) from None
        except ssl.SSLError as exc:
            raise _TLSSetupError(
                [
                    f"{key_key}: cannot use this private key with the certificate "
                    f"({_ssl_reason(exc)})"
                ]
            ) from None
    if ca_pem is not None:
        try:
            ctx.load_verify_locations(cadata=ca_pem)
        except (ssl.SSLError, ValueError):
            raise _TLSSetupError([f"{ca_key}: does not contain a PEM certificate"]) from None


def _configure_context(ctx: ssl.SSLContext, tls: TLSServerConfig) -> None:
    _apply_connection_settings(ctx, tls)
    _load_credentials(ctx, tls)


def build_ssl_context(cfg: WebConfig) -> ssl.SSLContext | None:
    """A server SSLContext for ``cfg``, or None when the file does not enable TLS.

    Raises WebConfigError when a certificate, key or CA file no longer loads.
    """
    tls = cfg.tls_server_config
    if tls is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        _configure_context(ctx, tls)
    except _TLSSetupError as exc:
        raise WebConfigError(exc.problems, cfg.path) from None
    if len(tls.curve_preferences) > 1:
        log.warning(
            "web config curve_preferences with several curves cannot be applied; "
            "OpenSSL's default curves are used",
            curves=list(tls.curve_preferences),
        )
    return ctx


# --------------------------------------------------------------------------------------------
# Middleware


class _BasicAuth:
    """bcrypt checks with a cache of successes, so a scrape every 15 s costs no bcrypt."""

    _CACHE_LIMIT: Final = 256

    def __init__(self) -> None:
        # The cache holds HMACs under a per-process key: a memory dump yields nothing that
        # can be brute-forced offline faster than the bcrypt hashes themselves.
        self._key = secrets.token_bytes(32)
        self._ok: dict[tuple[str, str], bytes] = {}
        self._dummy: dict[int, bytes] = {}
        self._lock: asyncio.Lock | None = None

    def _digest(self, password: bytes) -> bytes:
        return hmac.new(self._key, password, hashlib.sha256).digest()

    def _dummy_hash(self, cost: int) -> bytes:
        hashed = self._dummy.get(cost)
        if hashed is None:
            hashed = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=cost))
            self._dummy[cost] = hashed
        return hashed

    def _bcrypt(self, password: bytes, stored: str | None, cost: int) -> bool:
        target = stored.encode() if stored is not None else self._dummy_hash(cost)
        try:
            # Too-long passwords still pay for a check so their timing gives nothing away.
            ok = bcrypt.checkpw(password[:_BCRYPT_MAX_PASSWORD], target)
        except ValueError:
            return False
        return ok and stored is not None and len(password) <= _BCRYPT_MAX_PASSWORD

    async def check(self, users: Mapping[str, str], username: str, password: bytes) -> bool:
        stored: str | None = None
        name = username.encode()
        for candidate, hashed in users.items():
            # No early exit and constant-time comparison: which user exists stays hidden.
            if hmac.compare_digest(candidate.encode(), name):
                stored = hashed
        digest = self._digest(password)
        if stored is not None:
            cached = self._ok.get((username, stored))
            if cached is not None and hmac.compare_digest(cached, digest):
                return True
        cost = max(int(h[4:6]) for h in users.values())
        if self._lock is None:
            self._lock = asyncio.Lock()
        # One bcrypt at a time, off the event loop: it is CPU-bound by design.
        async with self._lock:
            ok = await asyncio.to_thread(self._bcrypt, password, stored, cost)
        if ok and stored is not None:
            if len(self._ok) >= self._CACHE_LIMIT:
                self._ok.clear()
            self._ok[(username, stored)] = digest
        return ok


class _RateLimiter:
    """Token bucket with the semantics of Go's rate.NewLimiter(rate.Every(interval), burst)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._settings: RateLimitConfig | None = None
        self._tokens = 0.0
        self._last = 0.0

    def allow(self, settings: RateLimitConfig) -> bool:
        if settings.interval_seconds <= 0:
            return True
        now = self._clock()
        if settings != self._settings:
            self._settings, self._tokens, self._last = settings, float(settings.burst), now
        self._tokens = min(
            float(settings.burst), self._tokens + (now - self._last) / settings.interval_seconds
        )
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def _credentials(request: web.Request) -> tuple[str, bytes] | None:
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


def _normalise_san(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value


def _client_sans(request: web.Request) -> set[str]:
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return set()
    names = cert.get("subjectAltName", ())
    return {_normalise_san(str(value)) for _kind, value in names}


async def _authorised(request: web.Request, users: Mapping[str, str], auth: _BasicAuth) -> bool:
    # The password lives only in this frame, never in the middleware's, so a traceback
    # rendered with local variables from a failing handler cannot include it.
    creds = _credentials(request)
    if creds is None:
        return False
    return await auth.check(users, creds[0], creds[1])


def _plain(status: int, reason: str, headers: Mapping[str, str]) -> web.Response:
    response = web.Response(status=status, text=f"{status} {reason}\n")
    response.headers.update(headers)
    return response


def auth_middleware(
    get_config: Callable[[], WebConfig | None],
    *,
    realm: str = "leadflow-exporter",
    unauthenticated_paths: Collection[str] = (),
    clock: Callable[[], float] = time.monotonic,
) -> Middleware:
    """aiohttp middleware enforcing the current web config on every request.

    In order: ``rate_limit`` (429), ``client_allowed_sans`` (403), basic auth (401 with a
    ``WWW-Authenticate`` challenge), then the handler; ``http_server_config.headers`` are added
    to every response, errors included. Handler exceptions become a plain 500 with no details.
    ``get_config`` is called per request (``WebConfigWatcher.get_config`` fits); None means no
    web config file, and requests pass through untouched.
    """
    auth = _BasicAuth()
    limiter = _RateLimiter(clock)
    challenge = f'Basic realm="{realm}", charset="UTF-8"'
    exempt = frozenset(unauthenticated_paths)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        cfg = get_config()
        if cfg is None:
            return await handler(request)
        headers = cfg.http_server_config.headers
        if not limiter.allow(cfg.rate_limit):
            return _plain(429, "Too Many Requests", headers)
        tls = cfg.tls_server_config
        if tls is not None and tls.client_allowed_sans:
            allowed = {_normalise_san(s) for s in tls.client_allowed_sans}
            if not allowed & _client_sans(request):
                return _plain(403, "Forbidden", headers)
        needs_auth = bool(cfg.basic_auth_users) and request.path not in exempt
        if needs_auth and not await _authorised(request, cfg.basic_auth_users, auth):
            response = _plain(401, "Unauthorized", headers)
            response.headers["WWW-Authenticate"] = challenge
            return response
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers.update(headers)
            raise
        except Exception:
            log.exception("request handler failed", path=request.path, method=request.method)
            return _plain(500, "Internal Server Error", headers)
        if not response.prepared:
            response.headers.update(headers)
        return response

    return middleware


# --------------------------------------------------------------------------------------------
# Reloading


def _fingerprint(paths: Collection[Path]) -> tuple[tuple[str, int, int, str], ...]:
    out: list[tuple[str, int, int, str]] = []
    for p in paths:
        try:
            st = p.stat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
        except OSError:
            out.append((str(p), -1, -1, ""))
            continue
        out.append((str(p), st.st_mtime_ns, st.st_size, digest))
    return tuple(out)


class WebConfigWatcher:
    """Keeps the web config (and its certificates) current without a restart.

    The file and every certificate, key and CA file it names are checked at most once per
    ``check_interval`` seconds (mtime, size and a SHA-256 of the content). A changed set is
    reloaded; a bad one is logged once, exposed as ``error``, and the last good config stays in
    force. ``ssl_context`` is the context to give the server: it stays the same object and
    picks the newest certificate, key and CAs for each new handshake.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = Path(path)
        self._interval = check_interval
        self._clock = clock
        self._config = load_web_config(self._path)
        self._fingerprint = _fingerprint(self._config.files())
        self._error: WebConfigError | None = None
        self._ssl_context = build_ssl_context(self._config)
        self._current_context = self._ssl_context
        if self._ssl_context is not None:
            self._ssl_context.sni_callback = self._select_context
        self._last_check = clock()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def config(self) -> WebConfig:
        """The last config that loaded successfully."""
        return self._config

    @property
    def error(self) -> WebConfigError | None:
        """Why the newest version of the file is not in use, or None."""
        return self._error

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        return self._ssl_context

    def get_config(self) -> WebConfig:
        """For ``auth_middleware``: checks for changes (rate limited) and returns the config."""
        self.maybe_reload()
        return self._config

    def _select_context(
        self, sslobj: ssl.SSLObject | ssl.SSLSocket, _name: str | None, base: ssl.SSLContext
    ) -> None:
        # OpenSSL calls this for every ClientHello, SNI or not. Switching contexts here is
        # what makes a replaced certificate, key or CA take effect for new connections; the
        # CA store in particular can only grow in place, so a removed CA needs the switch.
        current = self._current_context
        if current is not None and current is not base:
            sslobj.context = current

    def maybe_reload(self, *, force: bool = False) -> bool:
        """Reload if anything changed; True when a new config was put in force."""
        now = self._clock()
        if not force and now - self._last_check < self._interval:
            return False
        self._last_check = now
        if self._error is None and _fingerprint(self._config.files()) == self._fingerprint:
            return False
        try:
            new = load_web_config(self._path)
            context = self._prepare_tls(new)
        except WebConfigError as exc:
            if self._error is None or exc.problems != self._error.problems:
                log.error(
                    "web config reload failed; keeping the previous config",
                    path=str(self._path),
                    problems=list(exc.problems),
                )
            self._error = exc
            return False
        self._config = new
        self._fingerprint = _fingerprint(new.files())
        self._error = None
        if context is not None and self._ssl_context is not None and new.tls_server_config:
            _apply_connection_settings(self._ssl_context, new.tls_server_config)
            self._current_context = context
        log.info("web config reloaded", path=str(self._path), tls=new.tls_enabled)
        return True

    def _prepare_tls(self, new: WebConfig) -> ssl.SSLContext | None:
        old_tls = self._config.tls_server_config
        new_tls = new.tls_server_config
        if (old_tls is None) != (new_tls is None):
            raise WebConfigError(
                ["tls_server_config: turning TLS on or off needs a restart"], self._path
            )
        if (
            old_tls is not None
            and new_tls is not None
            and len(old_tls.curve_preferences) == 1
            and len(new_tls.curve_preferences) != 1
        ):
            # OpenSSL offers no way to undo a one-curve restriction on a live context.
            raise WebConfigError(
                [
                    "tls_server_config.curve_preferences: removing the restriction to one "
                    "curve needs a restart"
                ],
                self._path,
            )
        return build_ssl_context(new)


def describe(cfg: WebConfig | None) -> dict[str, Any]:
    """A log- and /config-safe summary: no hashes, no keys."""
    if cfg is None:
        return {"enabled": False}
    tls = cfg.tls_server_config
    return {
        "enabled": True,
        "path": str(cfg.path) if cfg.path else None,
        "tls": None
        if tls is None
        else {
            "client_auth_type": tls.client_auth_type,
            "min_version": _VERSION_NAMES[tls.min_version],
            "max_version": _VERSION_NAMES[tls.max_version],
            "client_allowed_sans": list(tls.client_allowed_sans),
        },
        "basic_auth_users": sorted(cfg.basic_auth_users),
        "headers": sorted(cfg.http_server_config.headers),
        "rate_limit": {
            "interval_seconds": cfg.rate_limit.interval_seconds,
            "burst": cfg.rate_limit.burst,
        },
    }
