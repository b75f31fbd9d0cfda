"""Strict, typed configuration: unknown keys refused, every problem named by its key path."""

from __future__ import annotations

import math
import os
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

DEFAULT_PORT = 10151
DEFAULT_BASE_URL = "https://dialogtechapis.com/report/v1/leadflow/v2/history"

# Labels a user may add to leadflow_calls_total. Everything else a record carries is either
# unbounded (sid, phone numbers) or personal data, and must never become a label.
EXTRA_LABELS = ("affiliate", "advertiser", "offer", "lf_state", "phone_label")
PII_FIELDS = frozenset(
    {
        "caller_id",
        "first_name",
        "last_name",
        "street_address",
        "city",
        "state",
        "zipcode",
        "entered_zip",
        "recording_link",
        "sid",
        "affiliate_number",
        "transfer_number",
    }
)
SECRET_ENV = {
    "access_key": "LEADFLOW_ACCESS_KEY",
    "secret_access_key": "LEADFLOW_SECRET_ACCESS_KEY",
    "rate_limit_key": "LEADFLOW_RATE_LIMIT_KEY",
}
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "console")


class Secret:
    """A credential that never shows itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('<redacted>')" if self._value else "Secret('')"

    __str__ = __repr__


@dataclass(frozen=True)
class ApiConfig:
    base_url: str = DEFAULT_BASE_URL
    access_key: Secret = field(default_factory=lambda: Secret(""))
    secret_access_key: Secret = field(default_factory=lambda: Secret(""))
    rate_limit_key: Secret = field(default_factory=lambda: Secret(""))
    timezone: str = "America/New_York"
    requests_per_minute: int = 90
    page_size: int = 250
    timeout_seconds: float = 30.0
    max_pages: int = 2000
    max_retries: int = 4


@dataclass(frozen=True)
class PollConfig:
    interval_seconds: float = 30.0
    overlap_seconds: float = 900.0
    set_ids: tuple[int, ...] = ()
    active: bool = True
    max_call_seconds: float = 14400.0
    full_overlap_every: int = 20


@dataclass(frozen=True)
class MetricsConfig:
    extra_labels: tuple[str, ...] = ()
    max_series_per_metric: int = 5000


@dataclass(frozen=True)
class StateConfig:
    path: str = "leadflow-state.db"


@dataclass(frozen=True)
class ServerConfig:
    listen: str = f"0.0.0.0:{DEFAULT_PORT}"
    web_config_file: str = ""
    reload_enabled: bool = False

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    format: str = "json"


@dataclass(frozen=True)
class Config:
    api: ApiConfig = field(default_factory=ApiConfig)
    poll: PollConfig = field(default_factory=PollConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    state: StateConfig = field(default_factory=StateConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def redacted(self) -> dict[str, Any]:
        """The running config as plain data, every secret replaced by a marker."""
        out: dict[str, Any] = {}
        for section in fields(self):
            values: dict[str, Any] = {}
            for f in fields(getattr(self, section.name)):
                value = getattr(getattr(self, section.name), f.name)
                if isinstance(value, Secret):
                    value = "<secret>" if value else ""
                elif f.name == "base_url" and "@" in urlsplit(value).netloc:
                    # A proxy or gateway URL may carry credentials of its own.
                    parts = urlsplit(value)
                    host = parts.netloc.rpartition("@")[2]
                    value = parts._replace(netloc=f"<secret>@{host}").geturl()
                elif isinstance(value, tuple):
                    value = list(value)
                values[f.name] = value
            out[section.name] = values
        return out


class ConfigError(Exception):
    """Every problem found in a config, each prefixed by its key path."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(problems))


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()):
        raise ValueError("must be HOST:PORT")
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError("port must be 0-65535")
    return host.strip("[]") or "0.0.0.0", number


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}")

    def has(self, *paths: str) -> bool:
        """Whether a problem was reported on any of these exact key paths."""
        return any(item.startswith(f"{path}: ") for item in self.items for path in paths)


def _section(raw: Any, path: str, problems: _Problems, allowed: set[str]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.add(path, f"must be a mapping, got {_type_name(raw)}")
        return {}
    for key in raw:
        if key not in allowed:
            problems.add(f"{path}.{key}", "unknown key" + _suggest(str(key), allowed))
    return {k: v for k, v in raw.items() if k in allowed}


def _suggest(key: str, allowed: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, sorted(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _number(
    raw: dict[str, Any],
    key: str,
    path: str,
    problems: _Problems,
    default: float,
    *,
    integer: bool = False,
    minimum: float | None = None,
    exclusive: bool = True,
) -> Any:
    if key not in raw:
        return default
    value = raw[key]
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok:
        kind = "an integer" if integer else "a number"
        problems.add(f"{path}.{key}", f"must be {kind}, got {_type_name(value)}")
        return default
    if isinstance(value, float) and not math.isfinite(value):
        problems.add(f"{path}.{key}", f"must be a finite number, got {value!r}")
        return default
    if minimum is not None and (value <= minimum if exclusive else value < minimum):
        problems.add(f"{path}.{key}", f"must be {'>' if exclusive else '>='} {minimum:g}")
        return default
    return value


def _bool(raw: dict[str, Any], key: str, path: str, problems: _Problems, default: bool) -> bool:
    if key not in raw:
        return default
    value = raw[key]
    if not isinstance(value, bool):
        problems.add(f"{path}.{key}", f"must be true or false, got {_type_name(value)}")
        return default
    return value


def _string(raw: dict[str, Any], key: str, path: str, problems: _Problems, default: str) -> str:
    if key not in raw:
        return default
    value = raw[key]
    if value is None:
        return ""
    if not isinstance(value, str):
        problems.add(f"{path}.{key}", f"must be a string, got {_type_name(value)}")
        return default
    return value


def _list(
    raw: dict[str, Any], key: str, path: str, problems: _Problems, expected: str
) -> list[Any]:
    value = raw.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        problems.add(f"{path}.{key}", f"must be {expected}, got {_type_name(value)}")
        return []
    return value


def _choice(
    raw: dict[str, Any], key: str, path: str, problems: _Problems, default: str, choices: tuple
) -> str:
    value = _string(raw, key, path, problems, default)
    if value not in choices:
        problems.add(f"{path}.{key}", f"must be one of {', '.join(choices)}, got {value!r}")
        return default
    return value


def _secret(
    raw: dict[str, Any],
    key: str,
    problems: _Problems,
    environ: Mapping[str, str],
    base_dir: Path,
) -> Secret:
    secret = _read_secret(raw, key, problems, environ, base_dir)
    value = secret.reveal()
    # The keys travel in HTTP headers: a line break or other control character (a secret
    # file with two lines, say) would fail every request; a colon in the access key would
    # move the split of "ACCESS:SECRET". Report the problem, never the value.
    if value and (not value.isascii() or not value.isprintable()):
        problems.add(f"api.{key}", "must be printable ASCII (no line breaks or spaces around it)")
        return Secret("")
    if key == "access_key" and ":" in value:
        problems.add("api.access_key", "must not contain ':'")
        return Secret("")
    return secret


def _read_secret(
    raw: dict[str, Any],
    key: str,
    problems: _Problems,
    environ: Mapping[str, str],
    base_dir: Path,
) -> Secret:
    path = f"api.{key}"
    env_name = SECRET_ENV[key]
    if environ.get(env_name):
        return Secret(environ[env_name].strip())
    inline = raw.get(key)
    file_key = f"{key}_file"
    file_value = raw.get(file_key)
    if inline not in (None, "") and file_value not in (None, ""):
        problems.add(path, f"set either {key} or {file_key}, not both")
        return Secret("")
    if file_value not in (None, ""):
        if not isinstance(file_value, str):
            problems.add(f"api.{file_key}", f"must be a path, got {_type_name(file_value)}")
            return Secret("")
        secret_path = Path(file_value)
        if not secret_path.is_absolute():
            secret_path = base_dir / secret_path
        try:
            return Secret(secret_path.read_text(encoding="utf-8").strip())
        except OSError as exc:
            problems.add(f"api.{file_key}", f"cannot read {file_value}: {exc.strerror}")
            return Secret("")
        except UnicodeDecodeError:
            # Not the codec's message: it quotes the offending bytes, which are the secret's.
            problems.add(f"api.{file_key}", f"{file_value}: not UTF-8 text")
            return Secret("")
    if inline is None:
        return Secret("")
    if not isinstance(inline, str):
        problems.add(path, f"must be a string, got {_type_name(inline)}")
        return Secret("")
    return Secret(inline.strip())


# The API's documented maximum. A larger page_size is not an error the API is known to
# report: if it quietly serves 250, every query would stop after its first page.
MAX_PAGE_SIZE = 250


def _page_size(section: dict[str, Any], problems: _Problems, default: int) -> int:
    size = _number(section, "page_size", "api", problems, default, integer=True, minimum=0)
    if size > MAX_PAGE_SIZE:
        problems.add("api.page_size", f"must be <= {MAX_PAGE_SIZE}, the API's maximum")
        return default
    return int(size)


def _without_userinfo(url: str) -> str:
    """`url` fit to quote in a problem: everything up to its last "@" replaced by a marker.

    The URLs quoted are the ones that did not parse, so where a user:password ends cannot be
    told from their structure ("http:/u:pw@h", a "/" in a password): none of it is shown.
    """
    if "@" not in url:
        return url
    scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", url)
    return (scheme.group(0) if scheme else "") + "<secret>@" + url.rpartition("@")[2]


def _api(raw: Any, problems: _Problems, environ: Mapping[str, str], base_dir: Path) -> ApiConfig:
    secret_keys = set(SECRET_ENV) | {f"{k}_file" for k in SECRET_ENV}
    allowed = {f.name for f in fields(ApiConfig)} | secret_keys
    section = _section(raw, "api", problems, allowed)
    d = ApiConfig()
    base_url = _string(section, "base_url", "api", problems, d.base_url)
    try:
        parts = urlsplit(base_url)
        netloc = parts.netloc if parts.scheme in ("http", "https") else ""
        # A port that is not a number: a typo, or a password with a "/" in it cut short
        # ("http://user:pa/ss@host" splits as host "user", port "pa").
        _ = parts.port
    except ValueError:  # also an unclosed "[" of an IPv6 address, say
        netloc = ""
    if not netloc:
        problems.add("api.base_url", f"must be an http(s) URL, got {_without_userinfo(base_url)!r}")
    elif "@" in netloc:
        # The client sends the access keys as the Authorization header, which aiohttp refuses
        # to combine with credentials in the URL: every request of every cycle would fail.
        problems.add(
            "api.base_url",
            "must not carry user:password@ (the API authenticates with api.access_key and "
            "api.secret_access_key)",
        )
    timezone = _string(section, "timezone", "api", problems, d.timezone)
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        problems.add("api.timezone", f"unknown time zone {timezone!r}")
        timezone = d.timezone
    secrets = {k: _secret(section, k, problems, environ, base_dir) for k in SECRET_ENV}
    return ApiConfig(
        base_url=base_url,
        timezone=timezone,
        requests_per_minute=_number(
            section,
            "requests_per_minute",
            "api",
            problems,
            d.requests_per_minute,
            integer=True,
            minimum=0,
        ),
        page_size=_page_size(section, problems, d.page_size),
        timeout_seconds=float(
            _number(section, "timeout_seconds", "api", problems, d.timeout_seconds, minimum=0)
        ),
        max_pages=_number(
            section, "max_pages", "api", problems, d.max_pages, integer=True, minimum=0
        ),
        max_retries=_number(
            section,
            "max_retries",
            "api",
            problems,
            d.max_retries,
            integer=True,
            minimum=0,
            exclusive=False,
        ),
        **secrets,
    )


def _poll(raw: Any, problems: _Problems) -> PollConfig:
    section = _section(raw, "poll", problems, {f.name for f in fields(PollConfig)})
    d = PollConfig()
    set_ids: list[int] = []
    raw_ids = _list(section, "set_ids", "poll", problems, "a list of integers")
    for i, value in enumerate(raw_ids):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            problems.add(f"poll.set_ids[{i}]", f"must be a positive integer, got {value!r}")
        elif value in set_ids:
            problems.add(f"poll.set_ids[{i}]", f"duplicate set id {value}")
        else:
            set_ids.append(value)
    interval = float(
        _number(section, "interval_seconds", "poll", problems, d.interval_seconds, minimum=0)
    )
    overlap = float(
        _number(
            section,
            "overlap_seconds",
            "poll",
            problems,
            d.overlap_seconds,
            minimum=0,
            exclusive=False,
        )
    )
    max_call = float(
        _number(section, "max_call_seconds", "poll", problems, d.max_call_seconds, minimum=0)
    )
    if overlap < interval:
        # Blame the key the user set; with only one of them set, the other is its default.
        if "overlap_seconds" in section:
            problems.add(
                "poll.overlap_seconds",
                f"must be >= poll.interval_seconds ({interval:g}) so consecutive windows overlap",
            )
        else:
            problems.add(
                "poll.interval_seconds",
                f"must be <= poll.overlap_seconds ({overlap:g}) so consecutive windows overlap",
            )
    return PollConfig(
        interval_seconds=interval,
        overlap_seconds=overlap,
        set_ids=tuple(set_ids),
        active=_bool(section, "active", "poll", problems, d.active),
        max_call_seconds=max_call,
        full_overlap_every=_number(
            section,
            "full_overlap_every",
            "poll",
            problems,
            d.full_overlap_every,
            integer=True,
            minimum=1,
            exclusive=False,
        ),
    )


def _metrics(raw: Any, problems: _Problems) -> MetricsConfig:
    section = _section(raw, "metrics", problems, {f.name for f in fields(MetricsConfig)})
    d = MetricsConfig()
    labels: list[str] = []
    raw_labels = _list(section, "extra_labels", "metrics", problems, "a list")
    for i, value in enumerate(raw_labels):
        where = f"metrics.extra_labels[{i}]"
        if not isinstance(value, str):
            problems.add(where, f"must be a label name, got {_type_name(value)}")
        elif value in PII_FIELDS:
            problems.add(where, f"{value!r} is personal or unbounded call data, never a label")
        elif value not in EXTRA_LABELS:
            problems.add(where, f"must be one of {', '.join(EXTRA_LABELS)}, got {value!r}")
        elif value in labels:
            problems.add(where, f"duplicate label {value!r}")
        else:
            labels.append(value)
    return MetricsConfig(
        extra_labels=tuple(labels),
        max_series_per_metric=_number(
            section,
            "max_series_per_metric",
            "metrics",
            problems,
            d.max_series_per_metric,
            integer=True,
            minimum=0,
        ),
    )


def _state(raw: Any, problems: _Problems, base_dir: Path) -> StateConfig:
    section = _section(raw, "state", problems, {f.name for f in fields(StateConfig)})
    path = _string(section, "path", "state", problems, StateConfig().path)
    if path and not Path(path).is_absolute():
        path = str(base_dir / path)
    return StateConfig(path=path)


def _server(raw: Any, problems: _Problems, base_dir: Path) -> ServerConfig:
    section = _section(raw, "server", problems, {f.name for f in fields(ServerConfig)})
    d = ServerConfig()
    listen = _string(section, "listen", "server", problems, d.listen)
    try:
        split_listen(listen)
    except ValueError as exc:
        problems.add("server.listen", f"{exc}, got {listen!r}")
        listen = d.listen
    web_config = _string(section, "web_config_file", "server", problems, d.web_config_file)
    if web_config:
        web_path = Path(web_config)
        if not web_path.is_absolute():
            web_path = base_dir / web_path
        if not web_path.is_file():
            problems.add("server.web_config_file", f"no such file {web_config!r}")
        web_config = str(web_path)
    return ServerConfig(
        listen=listen,
        web_config_file=web_config,
        reload_enabled=_bool(section, "reload_enabled", "server", problems, d.reload_enabled),
    )


def _logging(raw: Any, problems: _Problems) -> LoggingConfig:
    section = _section(raw, "logging", problems, {f.name for f in fields(LoggingConfig)})
    d = LoggingConfig()
    return LoggingConfig(
        level=_choice(section, "level", "logging", problems, d.level, LOG_LEVELS),
        format=_choice(section, "format", "logging", problems, d.format, LOG_FORMATS),
    )


def parse_config(
    raw: Any,
    *,
    environ: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
    require_credentials: bool = True,
    source: str = "",
) -> Config:
    """Build a Config from parsed YAML, collecting every problem before failing."""
    environ = os.environ if environ is None else environ
    base_dir = base_dir or Path.cwd()
    problems = _Problems()
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"(top level): must be a mapping, got {_type_name(raw)}"], source)
    top = _section(raw, "(top level)", problems, {f.name for f in fields(Config)})
    problems.items = [re.sub(r"^\(top level\)\.", "", p) for p in problems.items]
    config = Config(
        api=_api(top.get("api"), problems, environ, base_dir),
        poll=_poll(top.get("poll"), problems),
        metrics=_metrics(top.get("metrics"), problems),
        state=_state(top.get("state"), problems, base_dir),
        server=_server(top.get("server"), problems, base_dir),
        logging=_logging(top.get("logging"), problems),
    )
    if require_credentials:
        for key, env_name in SECRET_ENV.items():
            # A key whose value or file was refused is already reported: "required" on top
            # would send the user looking for a missing setting that is there.
            if problems.has(f"api.{key}", f"api.{key}_file"):
                continue
            if not getattr(config.api, key):
                problems.add(f"api.{key}", f"required: set it, api.{key}_file, or {env_name}")
    if problems.items:
        raise ConfigError(problems.items, source)
    return config


def _duplicate_keys(node: yaml.Node) -> list[str]:
    """Every key set twice in one mapping of the document, by key path, with both lines.

    PyYAML keeps the last of two equal keys without a word: a second `poll:` block would drop
    the first one's settings, and the config that runs would not be the one the file shows.
    """
    problems: list[str] = []
    visited: set[int] = set()

    def walk(node: yaml.Node, path: str) -> None:
        # An alias is the node it names: each is checked once, and a recursive one ends.
        if id(node) in visited:
            return
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{path}[{i}]")
        elif isinstance(node, yaml.MappingNode):
            lines: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                # A merge key ("<<") overrides what it merges on purpose; complex keys are
                # left to the constructor, which refuses them.
                if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                    continue
                where = f"{path}.{key.value}" if path else key.value
                line = key.start_mark.line + 1
                first = lines.get((key.tag, key.value))
                if first is None:
                    lines[(key.tag, key.value)] = line
                else:
                    problems.append(
                        f"{where}: duplicate key on line {line} (first set on line {first}); "
                        "set each key once"
                    )
                walk(value, where)

    walk(node, "")
    return problems


def _load_yaml(text: str, source: str) -> Any:
    """`yaml.safe_load`, refusing duplicate keys (before anything is built from them)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        duplicates = _duplicate_keys(node)
        if duplicates:
            raise ConfigError(duplicates, source)
        try:
            return loader.construct_document(node)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            # A tag the value does not fit ("!!int abc"): the error quotes the value, which
            # may be a secret's, so only where it is.
            raise ConfigError(
                [f"(file): a value does not fit its YAML tag ({type(exc).__name__})"], source
            ) from None
    finally:
        loader.dispose()


def load_config(
    path: str | Path,
    *,
    environ: Mapping[str, str] | None = None,
    require_credentials: bool = True,
) -> Config:
    """Read and validate a YAML config file; relative paths in it are read from its folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"(file): cannot read: {exc.strerror}"], str(path)) from None
    except UnicodeDecodeError as exc:
        # By line, not the codec's message: that quotes the bytes, which may be a secret's.
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError([f"(file): not UTF-8 text (line {line})"], str(path)) from None
    try:
        raw = _load_yaml(text, str(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError([f"{where}: {problem}"], str(path)) from None
    return parse_config(
        raw,
        environ=environ,
        base_dir=path.resolve().parent,
        require_credentials=require_credentials,
        source=str(path),
    )


__all__ = [
    "DEFAULT_PORT",
    "EXTRA_LABELS",
    "PII_FIELDS",
    "ApiConfig",
    "Config",
    "ConfigError",
    "LoggingConfig",
    "MetricsConfig",
    "PollConfig",
    "Secret",
    "ServerConfig",
    "StateConfig",
    "load_config",
    "parse_config",
    "split_listen",
]
