"""Config loading: strict keys, key paths in every problem, secrets that never show."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from leadflow_exporter import cli
from leadflow_exporter.config import (
    DEFAULT_PORT,
    EXTRA_LABELS,
    PII_FIELDS,
    ApiConfig,
    Config,
    ConfigError,
    Secret,
    load_config,
    parse_config,
    split_listen,
)

REPO = Path(__file__).resolve().parent.parent
TESTDATA = Path(__file__).resolve().parent / "testdata" / "config"
EXAMPLE = REPO / "config.example.yaml"

ENV = {
    "LEADFLOW_ACCESS_KEY": "env-access-key-9999",
    "LEADFLOW_SECRET_ACCESS_KEY": "env-secret-access-key-8888",
    "LEADFLOW_RATE_LIMIT_KEY": "env-rate-limit-key-7777",
}
SECRET_KEYS = ("access_key", "secret_access_key", "rate_limit_key")
ENV_NAMES = dict(zip(SECRET_KEYS, ENV, strict=True))
FILE_SECRETS = {
    "access_key": "file-access-key-1111",
    "secret_access_key": "file-secret-access-key-2222",
    "rate_limit_key": "file-rate-limit-key-3333",
}
INLINE_SECRETS = {
    "access_key": "inline-access-key-aaaa",
    "secret_access_key": "inline-secret-access-key-bbbb",
    "rate_limit_key": "inline-rate-limit-key-cccc",
}
EVERY_SECRET = [*ENV.values(), *FILE_SECRETS.values(), *INLINE_SECRETS.values()]


def problems_of(path: Path, **kwargs) -> list[str]:
    kwargs.setdefault("environ", {})
    kwargs.setdefault("require_credentials", False)
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)
    return info.value.problems


def key_path(problem: str) -> str:
    return problem.split(": ", 1)[0]


# -- bad fixtures: one problem each, named by its exact key path ------------------------------

BAD = {
    # unknown keys at every level, with a suggestion when one is close
    "unknown-top-key": ("apii", "unknown key (did you mean 'api'?)"),
    "unknown-api-key": ("api.page_sise", "unknown key (did you mean 'page_size'?)"),
    "unknown-poll-key": (
        "poll.intervall_seconds",
        "unknown key (did you mean 'interval_seconds'?)",
    ),
    "unknown-metrics-key": ("metrics.extra_label", "unknown key (did you mean 'extra_labels'?)"),
    "unknown-state-key": ("state.file", "unknown key"),
    "unknown-server-key": ("server.listen_addr", "unknown key (did you mean 'listen'?)"),
    "unknown-logging-key": ("logging.lvl", "unknown key (did you mean 'level'?)"),
    # shapes
    "top-level-list": ("(top level)", "must be a mapping, got list"),
    "section-not-mapping": ("poll", "must be a mapping, got int"),
    # numbers
    "interval-zero": ("poll.interval_seconds", "must be > 0"),
    "interval-negative": ("poll.interval_seconds", "must be > 0"),
    "interval-string": ("poll.interval_seconds", "must be a number, got str"),
    "interval-nan": ("poll.interval_seconds", "must be a finite number, got nan"),
    "max-call-infinite": ("poll.max_call_seconds", "must be a finite number, got inf"),
    "overlap-negative": ("poll.overlap_seconds", "must be >= 0"),
    "overlap-below-interval": (
        "poll.overlap_seconds",
        "must be >= poll.interval_seconds (120) so consecutive windows overlap",
    ),
    "page-size-float": ("api.page_size", "must be an integer, got float"),
    "page-size-zero": ("api.page_size", "must be > 0"),
    "requests-per-minute-bool": ("api.requests_per_minute", "must be an integer, got bool"),
    "timeout-zero": ("api.timeout_seconds", "must be > 0"),
    "max-retries-negative": ("api.max_retries", "must be >= 0"),
    "max-pages-string": ("api.max_pages", "must be an integer, got str"),
    "max-series-zero": ("metrics.max_series_per_metric", "must be > 0"),
    # booleans and strings
    "active-not-bool": ("poll.active", "must be true or false, got str"),
    "reload-not-bool": ("server.reload_enabled", "must be true or false, got int"),
    "state-path-not-string": ("state.path", "must be a string, got int"),
    "log-level-unknown": (
        "logging.level",
        "must be one of debug, info, warning, error, got 'verbose'",
    ),
    "log-format-unknown": ("logging.format", "must be one of json, console, got 'text'"),
    # api
    "timezone-unknown": ("api.timezone", "unknown time zone 'Eastern/Nowhere'"),
    "timezone-abbreviation": ("api.timezone", "unknown time zone 'EDT'"),
    "base-url-not-http": (
        "api.base_url",
        "must be an http(s) URL, got 'ftp://dialogtechapis.com/report'",
    ),
    "base-url-empty": ("api.base_url", "must be an http(s) URL, got ''"),
    "base-url-credentials": (
        "api.base_url",
        "must not carry user:password@ (the API authenticates with api.access_key and "
        "api.secret_access_key)",
    ),
    # server
    "listen-no-port": ("server.listen", "must be HOST:PORT, got 'localhost'"),
    "listen-port-out-of-range": ("server.listen", "port must be 0-65535, got ':70000'"),
    "listen-not-string": ("server.listen", "must be a string, got int"),
    "web-config-missing": ("server.web_config_file", "no such file 'no-such-web-config.yml'"),
    # set ids
    "set-ids-not-list": ("poll.set_ids", "must be a list of integers, got int"),
    "set-ids-negative": ("poll.set_ids[1]", "must be a positive integer, got -2"),
    "set-ids-zero": ("poll.set_ids[0]", "must be a positive integer, got 0"),
    "set-ids-string": ("poll.set_ids[0]", "must be a positive integer, got '12'"),
    "set-ids-bool": ("poll.set_ids[0]", "must be a positive integer, got True"),
    "set-ids-duplicate": ("poll.set_ids[2]", "duplicate set id 3"),
    # extra labels
    "extra-labels-caller-id": (
        "metrics.extra_labels[0]",
        "'caller_id' is personal or unbounded call data, never a label",
    ),
    "extra-labels-zipcode": (
        "metrics.extra_labels[1]",
        "'zipcode' is personal or unbounded call data, never a label",
    ),
    "extra-labels-sid": (
        "metrics.extra_labels[0]",
        "'sid' is personal or unbounded call data, never a label",
    ),
    "extra-labels-unknown": (
        "metrics.extra_labels[0]",
        "must be one of affiliate, advertiser, offer, lf_state, phone_label, got 'campaign'",
    ),
    "extra-labels-duplicate": ("metrics.extra_labels[1]", "duplicate label 'offer'"),
    "extra-labels-not-list": ("metrics.extra_labels", "must be a list, got str"),
    "extra-labels-not-string": ("metrics.extra_labels[0]", "must be a label name, got dict"),
    # secrets
    "secret-inline-and-file": (
        "api.access_key",
        "set either access_key or access_key_file, not both",
    ),
    "secret-file-unreadable": (
        "api.secret_access_key_file",
        "cannot read secrets/no-such-file: No such file or directory",
    ),
    "secret-file-not-string": ("api.rate_limit_key_file", "must be a path, got list"),
    "secret-not-string": ("api.rate_limit_key", "must be a string, got int"),
    "secret-file-not-utf8": ("api.rate_limit_key_file", "secrets/latin1: not UTF-8 text"),
    # the file itself
    "not-utf8": ("(file)", "not UTF-8 text (line 3)"),
    "duplicate-section": (
        "poll",
        "duplicate key on line 7 (first set on line 2); set each key once",
    ),
    "duplicate-key": (
        "poll.active",
        "duplicate key on line 5 (first set on line 3); set each key once",
    ),
    "tag-mismatch": ("(file)", "a value does not fit its YAML tag (ValueError)"),
    "base-url-password-with-slash": (
        "api.base_url",
        "must be an http(s) URL, got 'http://<secret>@127.0.0.1:8080/report/v1/leadflow/v2/history'",
    ),
    "base-url-malformed-with-password": (
        "api.base_url",
        "must be an http(s) URL, got '<secret>@127.0.0.1:8080/history'",
    ),
    "base-url-bad-port": (
        "api.base_url",
        "must be an http(s) URL, got 'http://127.0.0.1:http/report/v1/leadflow/v2/history'",
    ),
    # YAML syntax: line and column instead of a key path
    "invalid-yaml": ("line 6, column 1", "found unexpected end of stream"),
    "invalid-indent": (
        "line 3, column 2",
        "expected <block end>, but found '<block mapping start>'",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_fixture_reports_its_one_problem_by_key_path(name: str) -> None:
    path, message = BAD[name]
    problems = problems_of(TESTDATA / f"{name}.bad.yml")
    assert problems == [f"{path}: {message}"]


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_fixture_error_names_the_file(name: str) -> None:
    path = TESTDATA / f"{name}.bad.yml"
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={}, require_credentials=False)
    assert info.value.source == str(path)
    assert str(info.value).startswith(f"{path}: {BAD[name][0]}: ")


def test_every_bad_fixture_has_an_expectation() -> None:
    on_disk = {p.name.removesuffix(".bad.yml") for p in TESTDATA.glob("*.bad.yml")}
    on_disk.discard("several-problems")
    assert on_disk == set(BAD)


def test_several_problems_are_reported_at_once_in_file_order() -> None:
    problems = problems_of(TESTDATA / "several-problems.bad.yml")
    assert problems == [
        "api.timezone: unknown time zone 'Mars/Olympus_Mons'",
        "poll.interval_seconds: must be > 0",
        "metrics.extra_labels[0]: 'caller_id' is personal or unbounded call data, never a label",
        "server.listne: unknown key (did you mean 'listen'?)",
    ]


def test_several_problems_and_missing_credentials_together() -> None:
    problems = problems_of(TESTDATA / "several-problems.bad.yml", require_credentials=True)
    assert [key_path(p) for p in problems] == [
        "api.timezone",
        "poll.interval_seconds",
        "metrics.extra_labels[0]",
        "server.listne",
        "api.access_key",
        "api.secret_access_key",
        "api.rate_limit_key",
    ]


@pytest.mark.parametrize("label", sorted(PII_FIELDS))
def test_every_pii_field_is_refused_as_personal_data(label: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"metrics": {"extra_labels": [label]}}, environ={}, require_credentials=False)
    assert info.value.problems == [
        f"metrics.extra_labels[0]: {label!r} is personal or unbounded call data, never a label"
    ]


def test_pii_and_allowed_labels_do_not_overlap() -> None:
    assert not PII_FIELDS & set(EXTRA_LABELS)
    assert {"caller_id", "zipcode", "sid", "first_name", "recording_link"} <= PII_FIELDS


def test_all_allowed_extra_labels_are_accepted_in_order() -> None:
    config = parse_config(
        {"metrics": {"extra_labels": list(reversed(EXTRA_LABELS))}},
        environ={},
        require_credentials=False,
    )
    assert config.metrics.extra_labels == tuple(reversed(EXTRA_LABELS))


@pytest.mark.parametrize(
    ("section", "key", "suggestion"),
    [
        ("api", "acess_key", "access_key"),
        ("api", "secret_acces_key_file", "secret_access_key_file"),
        ("api", "timezon", "timezone"),
        ("poll", "setids", "set_ids"),
        ("poll", "overlap", "overlap_seconds"),
        ("metrics", "max_series", "max_series_per_metric"),
        ("state", "pth", "path"),
        ("server", "web_config", "web_config_file"),
        ("logging", "formt", "format"),
    ],
)
def test_unknown_key_suggests_the_closest_known_key(
    section: str, key: str, suggestion: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({section: {key: 1}}, environ={}, require_credentials=False)
    assert info.value.problems == [f"{section}.{key}: unknown key (did you mean {suggestion!r}?)"]


def test_unknown_key_without_a_close_match_gets_no_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"zzzzzz": {}}, environ={}, require_credentials=False)
    assert info.value.problems == ["zzzzzz: unknown key"]


def test_unknown_keys_in_every_section_at_once() -> None:
    raw = {name: {"bogus_key": 1} for name in ("api", "poll", "metrics", "state", "server")}
    raw["logging"] = {"bogus_key": 1}
    raw["bogus_section"] = {}
    with pytest.raises(ConfigError) as info:
        parse_config(raw, environ={}, require_credentials=False)
    assert sorted(key_path(p) for p in info.value.problems) == sorted(
        [f"{name}.bogus_key" for name in ("api", "poll", "metrics", "state", "server", "logging")]
        + ["bogus_section"]
    )


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"api": {"requests_per_minute": 1.5}}, "api.requests_per_minute: must be an integer"),
        ({"api": {"requests_per_minute": 0}}, "api.requests_per_minute: must be > 0"),
        ({"api": {"timeout_seconds": "30"}}, "api.timeout_seconds: must be a number, got str"),
        ({"api": {"timezone": 5}}, "api.timezone: must be a string, got int"),
        ({"api": {"max_pages": None}}, "api.max_pages: must be an integer, got null"),
        ({"poll": {"interval_seconds": [60]}}, "poll.interval_seconds: must be a number"),
        ({"poll": {"interval_seconds": True}}, "poll.interval_seconds: must be a number, got bool"),
        ({"poll": {"active": None}}, "poll.active: must be true or false, got null"),
        ({"poll": {"max_call_seconds": 0}}, "poll.max_call_seconds: must be > 0"),
        ({"server": {"listen": "host:port"}}, "server.listen: must be HOST:PORT"),
        ({"server": {"listen": "host:١٢٣"}}, "server.listen: must be HOST:PORT"),
        ({"server": {"listen": "host:-1"}}, "server.listen: must be HOST:PORT"),
        ({"server": {"web_config_file": 3}}, "server.web_config_file: must be a string"),
        ({"logging": {"level": "INFO"}}, "logging.level: must be one of"),
        ({"logging": {"level": None}}, "logging.level: must be one of"),
        ({"logging": "debug"}, "logging: must be a mapping, got str"),
        ({"api": ["base_url"]}, "api: must be a mapping, got list"),
    ],
)
def test_wrong_values(raw: dict, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, environ={}, require_credentials=False)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(problem)


@pytest.mark.parametrize("value", ["yes", "no", "on", "off", "y", "n"])
def test_yaml_1_1_words_are_strings_not_booleans_when_quoted(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"poll": {"active": value}}, environ={}, require_credentials=False)
    assert info.value.problems == ["poll.active: must be true or false, got str"]


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("0.0.0.0:10151", "0.0.0.0", 10151),
        (":9000", "0.0.0.0", 9000),
        ("127.0.0.1:0", "127.0.0.1", 0),
        ("[::1]:10151", "::1", 10151),
        ("exporter.example.com:65535", "exporter.example.com", 65535),
    ],
)
def test_listen_accepted(listen: str, host: str, port: int) -> None:
    config = parse_config({"server": {"listen": listen}}, environ={}, require_credentials=False)
    assert config.server.listen == listen
    assert (config.server.host, config.server.port) == (host, port)
    assert split_listen(listen) == (host, port)


@pytest.mark.parametrize("listen", ["", "10151", "host:", "host:65536", "host:1e3", "host: 80"])
def test_split_listen_rejects(listen: str) -> None:
    with pytest.raises(ValueError):
        split_listen(listen)


@pytest.mark.parametrize("tz", ["America/New_York", "UTC", "Europe/Berlin", "America/Chicago"])
def test_timezone_accepted(tz: str) -> None:
    config = parse_config({"api": {"timezone": tz}}, environ={}, require_credentials=False)
    assert config.api.timezone == tz


@pytest.mark.parametrize("tz", ["", "America", "../etc/passwd", "/etc/localtime", "New York"])
def test_timezone_refused(tz: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"api": {"timezone": tz}}, environ={}, require_credentials=False)
    assert info.value.problems == [f"api.timezone: unknown time zone {tz!r}"]


def test_set_ids_all_problems_reported_and_valid_ids_kept() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {"poll": {"set_ids": [7, "x", 7, -1, 2.0, None]}}, environ={}, require_credentials=False
        )
    assert [key_path(p) for p in info.value.problems] == [
        "poll.set_ids[1]",
        "poll.set_ids[2]",
        "poll.set_ids[3]",
        "poll.set_ids[4]",
        "poll.set_ids[5]",
    ]


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, ()), ([], ()), ([5], (5,)), ([3, 1, 2], (3, 1, 2))]
)
def test_set_ids_accepted(raw: list | None, expected: tuple) -> None:
    config = parse_config({"poll": {"set_ids": raw}}, environ={}, require_credentials=False)
    assert config.poll.set_ids == expected


def test_overlap_equal_to_interval_is_accepted() -> None:
    config = parse_config(
        {"poll": {"interval_seconds": 120, "overlap_seconds": 120}},
        environ={},
        require_credentials=False,
    )
    assert config.poll.overlap_seconds == 120.0
    assert isinstance(config.poll.interval_seconds, float)


# -- good fixtures ------------------------------------------------------------------------------


def test_empty_config_gives_defaults() -> None:
    config = load_config(TESTDATA / "empty.good.yml", environ=ENV)
    expected = Config()
    assert config.poll == expected.poll
    assert config.metrics == expected.metrics
    assert config.logging == expected.logging
    assert config.server == expected.server
    assert config.server.port == DEFAULT_PORT
    assert config.state.path == str(TESTDATA / "leadflow-state.db")
    assert dataclasses.replace(config.api, **{k: Secret("") for k in SECRET_KEYS}) == ApiConfig()


def test_all_options_fixture_sets_every_key_away_from_its_default() -> None:
    config = load_config(TESTDATA / "all-options.good.yml", environ={})
    defaults = Config()
    for section in dataclasses.fields(Config):
        got, default = getattr(config, section.name), getattr(defaults, section.name)
        for f in dataclasses.fields(got):
            assert getattr(got, f.name) != getattr(default, f.name), f"{section.name}.{f.name}"
    assert config.api.base_url == "http://127.0.0.1:10152/report/v1/leadflow/v2/history"
    assert config.api.timezone == "America/Chicago"
    assert config.api.timeout_seconds == 12.5
    assert config.poll.set_ids == (101, 202)
    assert config.metrics.extra_labels == ("affiliate", "offer", "lf_state")
    assert (config.server.host, config.server.port) == ("::1", 9999)
    assert config.logging.level == "debug"


def test_relative_paths_are_read_from_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(TESTDATA / "all-options.good.yml", environ={})
    assert config.state.path == str(TESTDATA / "state" / "leadflow.db")
    assert config.server.web_config_file == str(TESTDATA / "web-config.yml")
    assert config.api.access_key.reveal() == FILE_SECRETS["access_key"]


def test_empty_state_path_stays_in_memory() -> None:
    config = parse_config({"state": {"path": ""}}, environ={}, require_credentials=False)
    assert config.state.path == ""


def test_absolute_state_path_is_kept(tmp_path: Path) -> None:
    target = str(tmp_path / "x.db")
    config = parse_config(
        {"state": {"path": target}}, environ={}, require_credentials=False, base_dir=Path("/nope")
    )
    assert config.state.path == target


# -- secrets ------------------------------------------------------------------------------------


def test_secrets_from_files_relative_to_config_folder_and_stripped() -> None:
    config = load_config(TESTDATA / "all-options.good.yml", environ={})
    assert {k: getattr(config.api, k).reveal() for k in SECRET_KEYS} == FILE_SECRETS


def test_secrets_inline() -> None:
    config = load_config(TESTDATA / "inline-credentials.good.yml", environ={})
    assert {k: getattr(config.api, k).reveal() for k in SECRET_KEYS} == INLINE_SECRETS


@pytest.mark.parametrize("fixture", ["inline-credentials.good.yml", "all-options.good.yml"])
def test_environment_wins_over_inline_and_files(fixture: str) -> None:
    config = load_config(TESTDATA / fixture, environ=ENV)
    assert {k: getattr(config.api, k).reveal() for k in SECRET_KEYS} == {
        k: ENV[ENV_NAMES[k]] for k in SECRET_KEYS
    }


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_environment_wins_for_one_key_only(key: str) -> None:
    config = load_config(
        TESTDATA / "inline-credentials.good.yml", environ={ENV_NAMES[key]: " from-env\n"}
    )
    for other in SECRET_KEYS:
        expected = "from-env" if other == key else INLINE_SECRETS[other]
        assert getattr(config.api, other).reveal() == expected


def test_empty_environment_variable_does_not_override() -> None:
    environ = dict.fromkeys(ENV, "")
    config = load_config(TESTDATA / "inline-credentials.good.yml", environ=environ)
    assert config.api.access_key.reveal() == INLINE_SECRETS["access_key"]


def test_environment_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    config = load_config(TESTDATA / "empty.good.yml")
    assert config.api.rate_limit_key.reveal() == ENV["LEADFLOW_RATE_LIMIT_KEY"]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_inline_and_file_together_is_an_error_naming_the_key(key: str, tmp_path: Path) -> None:
    (tmp_path / "s").write_text("from-file")
    config_file = tmp_path / "c.yml"
    config_file.write_text(yaml.safe_dump({"api": {key: "inline-value", f"{key}_file": "s"}}))
    problems = problems_of(config_file)
    assert problems == [f"api.{key}: set either {key} or {key}_file, not both"]
    assert "inline-value" not in problems[0]
    assert "from-file" not in problems[0]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_unreadable_secret_file_names_its_key(key: str, tmp_path: Path) -> None:
    config_file = tmp_path / "c.yml"
    config_file.write_text(yaml.safe_dump({"api": {f"{key}_file": "missing/secret"}}))
    problems = problems_of(config_file)
    assert len(problems) == 1
    assert problems[0].startswith(f"api.{key}_file: cannot read missing/secret: ")


def test_secret_file_that_is_a_directory_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    config_file = tmp_path / "c.yml"
    config_file.write_text(yaml.safe_dump({"api": {"access_key_file": "dir"}}))
    problems = problems_of(config_file)
    assert [key_path(p) for p in problems] == ["api.access_key_file"]


def test_absolute_secret_file_path(tmp_path: Path) -> None:
    secret = tmp_path / "elsewhere" / "key"
    secret.parent.mkdir()
    secret.write_text("abs-secret\n")
    config = parse_config(
        {"api": {"access_key_file": str(secret)}},
        environ={},
        require_credentials=False,
        base_dir=Path("/nonexistent"),
    )
    assert config.api.access_key.reveal() == "abs-secret"


def test_missing_credentials_are_each_named() -> None:
    problems = problems_of(TESTDATA / "empty.good.yml", require_credentials=True)
    assert problems == [
        f"api.{key}: required: set it, api.{key}_file, or {ENV_NAMES[key]}" for key in SECRET_KEYS
    ]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_one_missing_credential_is_named(key: str) -> None:
    environ = {name: value for name, value in ENV.items() if name != ENV_NAMES[key]}
    problems = problems_of(TESTDATA / "empty.good.yml", environ=environ, require_credentials=True)
    assert [key_path(p) for p in problems] == [f"api.{key}"]


def test_whitespace_only_secret_counts_as_missing() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {"api": {"access_key": "   "}}, environ={k: "x" for k in ENV if "ACCESS" not in k}
        )
    assert [key_path(p) for p in info.value.problems] == ["api.access_key", "api.secret_access_key"]


def test_credentials_not_required_when_told() -> None:
    config = load_config(TESTDATA / "empty.good.yml", environ={}, require_credentials=False)
    assert not config.api.access_key
    assert not config.api.secret_access_key
    assert not config.api.rate_limit_key


# -- Secret never shows its value ---------------------------------------------------------------

SECRET_VALUE = "hunter2-very-secret"


@pytest.mark.parametrize(
    "render",
    [
        repr,
        str,
        lambda s: f"{s}",
        lambda s: f"{s!r}",
        lambda s: f"{s!s}",
        lambda s: "%s" % (s,),  # noqa: UP031
        lambda s: "%r" % (s,),  # noqa: UP031
        lambda s: "{}".format(s),  # noqa: UP032
        lambda s: str([s]),
        lambda s: str({"k": s}),
        lambda s: repr((s,)),
    ],
)
def test_secret_never_renders_its_value(render) -> None:
    text = render(Secret(SECRET_VALUE))
    assert SECRET_VALUE not in text
    assert "redacted" in text


def test_secret_reveal_bool_and_equality() -> None:
    s = Secret(SECRET_VALUE)
    assert s.reveal() == SECRET_VALUE
    assert s
    assert not Secret("")
    assert s == Secret(SECRET_VALUE)
    assert s != Secret("other")
    assert s != SECRET_VALUE
    assert len({s, Secret(SECRET_VALUE), Secret("other")}) == 2
    assert repr(Secret("")) == "Secret('')"


def test_secret_has_no_instance_dict_to_leak() -> None:
    s = Secret(SECRET_VALUE)
    assert not hasattr(s, "__dict__")
    with pytest.raises(AttributeError):
        s.other = 1  # type: ignore[attr-defined]


def test_config_repr_and_redacted_never_show_secrets() -> None:
    config = load_config(TESTDATA / "inline-credentials.good.yml", environ=ENV)
    renders = [
        repr(config),
        str(config),
        f"{config}",
        repr(config.api),
        json.dumps(config.redacted()),
        str(config.redacted()),
    ]
    for text in renders:
        for value in EVERY_SECRET:
            assert value not in text


def test_redacted_shape() -> None:
    config = load_config(TESTDATA / "all-options.good.yml", environ={})
    red = config.redacted()
    assert list(red) == [f.name for f in dataclasses.fields(Config)]
    for section in dataclasses.fields(Config):
        cls = type(getattr(config, section.name))
        assert list(red[section.name]) == [f.name for f in dataclasses.fields(cls)]
    for key in SECRET_KEYS:
        assert red["api"][key] == "<secret>"
    assert red["poll"]["set_ids"] == [101, 202]
    assert red["metrics"]["extra_labels"] == ["affiliate", "offer", "lf_state"]
    assert red["api"]["page_size"] == 100
    assert red["server"]["listen"] == "[::1]:9999"
    assert red["logging"] == {"level": "debug", "format": "console"}
    # plain data: survives a JSON round trip unchanged
    assert json.loads(json.dumps(red)) == red


def test_redacted_unset_secret_is_empty_not_marker() -> None:
    red = parse_config({}, environ={}, require_credentials=False).redacted()
    assert [red["api"][k] for k in SECRET_KEYS] == ["", "", ""]
    assert red["poll"]["set_ids"] == []


def test_config_error_messages_never_show_secrets(tmp_path: Path) -> None:
    config_file = tmp_path / "c.yml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "api": {
                    "access_key": SECRET_VALUE,
                    "access_key_file": "nope",
                    "secret_acess_key": SECRET_VALUE,
                    "rate_limit_key": 12345678987654321,
                }
            }
        )
    )
    with pytest.raises(ConfigError) as info:
        load_config(config_file, environ={})
    assert len(info.value.problems) >= 3
    assert SECRET_VALUE not in str(info.value)
    assert "12345678987654321" not in str(info.value)


# -- YAML ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("api: [1, 2\n", "line 2, column 1"),
        ("api:\n  timezone: 'x\n", "line 3, column 1"),
        ("a: b: c\n", "line 1, column 5"),
        ("api:\n\ttimezone: UTC\n", "line 2, column 1"),
        ("- a\nb: c\n", "line 2, column 1"),
    ],
)
def test_yaml_syntax_errors_carry_line_and_column(tmp_path: Path, text: str, where: str) -> None:
    config_file = tmp_path / "c.yml"
    config_file.write_text(text)
    problems = problems_of(config_file)
    assert len(problems) == 1
    assert problems[0].startswith(f"{where}: ")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    problems = problems_of(missing)
    assert problems == ["(file): cannot read: No such file or directory"]


@pytest.mark.parametrize("text", ["", "# only comments\n", "---\n", "null\n"])
def test_empty_documents_are_defaults(tmp_path: Path, text: str) -> None:
    config_file = tmp_path / "c.yml"
    config_file.write_text(text)
    config = load_config(config_file, environ=ENV)
    assert config.poll == Config().poll


@pytest.mark.parametrize("text", ["42\n", "just a string\n", "[]\n"])
def test_non_mapping_documents_are_refused(tmp_path: Path, text: str) -> None:
    config_file = tmp_path / "c.yml"
    config_file.write_text(text)
    problems = problems_of(config_file)
    assert len(problems) == 1
    assert problems[0].startswith("(top level): must be a mapping, got ")


# -- config.example.yaml ------------------------------------------------------------------------


def test_example_loads_with_credentials_from_environment() -> None:
    config = load_config(EXAMPLE, environ=ENV)
    assert config.api.access_key.reveal() == ENV["LEADFLOW_ACCESS_KEY"]
    assert config.api.secret_access_key.reveal() == ENV["LEADFLOW_SECRET_ACCESS_KEY"]
    assert config.api.rate_limit_key.reveal() == ENV["LEADFLOW_RATE_LIMIT_KEY"]


def test_example_values_are_the_defaults() -> None:
    config = load_config(EXAMPLE, environ=ENV)
    defaults = Config()
    for section in dataclasses.fields(Config):
        got, default = getattr(config, section.name), getattr(defaults, section.name)
        for f in dataclasses.fields(got):
            value, expected = getattr(got, f.name), getattr(default, f.name)
            if isinstance(expected, Secret):
                continue
            if (section.name, f.name) == ("state", "path"):
                expected = str(EXAMPLE.parent / expected)
            assert value == expected, f"{section.name}.{f.name}"


def test_example_without_credentials_names_what_is_missing() -> None:
    problems = problems_of(EXAMPLE, require_credentials=True)
    assert [key_path(p) for p in problems] == [f"api.{k}" for k in SECRET_KEYS]


def test_example_sets_every_field_with_a_comment() -> None:
    raw = yaml.safe_load(EXAMPLE.read_text())
    lines = EXAMPLE.read_text().splitlines()
    assert list(raw) == [f.name for f in dataclasses.fields(Config)]
    for section in dataclasses.fields(Config):
        cls = type(getattr(Config(), section.name))
        names = [f.name for f in dataclasses.fields(cls)]
        assert list(raw[section.name]) == names, section.name
        for name in names:
            index = next(i for i, line in enumerate(lines) if re.match(rf"^  {name}:", line))
            assert lines[index - 1].lstrip().startswith("#"), f"{section.name}.{name} comment"


def test_example_documents_every_env_variable_and_file_key() -> None:
    text = EXAMPLE.read_text()
    for key, env_name in ENV_NAMES.items():
        assert env_name in text
        assert re.search(rf"^  # {key}_file: \S+", text, re.MULTILINE), key


def test_example_file_keys_work_when_uncommented(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    for key in SECRET_KEYS:
        (secrets_dir / key).write_text(f"{key}-from-file\n")
        text = re.sub(
            rf"^  # {key}_file: \S+$", f"  {key}_file: secrets/{key}", text, flags=re.MULTILINE
        )
    copy = tmp_path / "config.yaml"
    copy.write_text(text)
    config = load_config(copy, environ={})
    for key in SECRET_KEYS:
        assert getattr(config.api, key).reveal() == f"{key}-from-file"


def test_example_extra_labels_comment_lists_the_allowed_labels() -> None:
    text = EXAMPLE.read_text()
    assert ", ".join(EXTRA_LABELS) in text.replace("\n  # ", " ")


# -- leadflow-exporter check --------------------------------------------------------------------


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_env")
@pytest.mark.parametrize(
    "fixture", sorted(p.name for p in TESTDATA.glob("*.good.yml") if "empty" not in p.name)
)
def test_check_good_config_exits_0(fixture: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = TESTDATA / fixture
    assert cli.main(["check", "--config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"{path}: config OK"
    assert err == ""
    for value in EVERY_SECRET:
        assert value not in out + err


def test_check_example_with_environment_exits_0(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["check", "--config", str(EXAMPLE)]) == 0
    out, err = capsys.readouterr()
    for value in ENV.values():
        assert value not in out + err


@pytest.mark.usefixtures("no_env")
@pytest.mark.parametrize("name", sorted(BAD))
def test_check_bad_config_exits_1_and_names_the_key(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = TESTDATA / f"{name}.bad.yml"
    assert cli.main(["check", "--config", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    key, message = BAD[name]
    assert f"  {key}: {message}\n" in err
    assert str(path) in err


@pytest.mark.usefixtures("no_env")
def test_check_prints_every_problem(capsys: pytest.CaptureFixture[str]) -> None:
    path = TESTDATA / "several-problems.bad.yml"
    assert cli.main(["check", "--config", str(path)]) == 1
    _, err = capsys.readouterr()
    lines = err.splitlines()
    assert lines[0] == f"{path}: 7 problem(s)"
    assert [key_path(line.strip()) for line in lines[1:]] == [
        "api.timezone",
        "poll.interval_seconds",
        "metrics.extra_labels[0]",
        "server.listne",
        "api.access_key",
        "api.secret_access_key",
        "api.rate_limit_key",
    ]


@pytest.mark.usefixtures("no_env")
def test_check_never_prints_a_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET_VALUE + "-file")
    config_file = tmp_path / "c.yml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "api": {
                    "access_key": SECRET_VALUE + "-inline",
                    "access_key_file": "secret",
                    "secret_access_key_file": "secret",
                    "rate_limit_key": SECRET_VALUE + "-rl",
                    "rate_limt_key": SECRET_VALUE + "-typo",
                },
                "poll": {"interval_seconds": 0},
            }
        )
    )
    assert cli.main(["check", "--config", str(config_file)]) == 1
    out, err = capsys.readouterr()
    assert "api.access_key: set either" in err
    assert "api.rate_limt_key: unknown key" in err
    assert "poll.interval_seconds: must be > 0" in err
    assert SECRET_VALUE not in out + err


@pytest.mark.usefixtures("no_env")
def test_check_yaml_error_does_not_echo_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = tmp_path / "c.yml"
    config_file.write_text(f'api:\n  access_key: "{SECRET_VALUE}\n')
    assert cli.main(["check", "--config", str(config_file)]) == 1
    _, err = capsys.readouterr()
    assert "line 3, column 1" in err
    assert SECRET_VALUE not in err


def test_check_missing_credentials_from_environment(
    no_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = tmp_path / "c.yml"
    shutil.copy(EXAMPLE, config_file)
    assert cli.main(["check", "--config", str(config_file)]) == 1
    _, err = capsys.readouterr()
    for key, env_name in ENV_NAMES.items():
        assert f"api.{key}: required: set it, api.{key}_file, or {env_name}" in err


def test_check_missing_file(
    no_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["check", "--config", str(tmp_path / "absent.yml")]) == 1
    _, err = capsys.readouterr()
    assert "cannot read" in err


def test_interval_longer_than_the_default_overlap_is_refused() -> None:
    from leadflow_exporter.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as caught:
        parse_config({"poll": {"interval_seconds": 1200}}, require_credentials=False)
    assert caught.value.problems == [
        "poll.interval_seconds: must be <= poll.overlap_seconds (900) so consecutive windows "
        "overlap"
    ]


def test_page_size_above_the_api_maximum_is_refused() -> None:
    from leadflow_exporter.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as caught:
        parse_config({"api": {"page_size": 500}}, require_credentials=False)
    assert caught.value.problems == ["api.page_size: must be <= 250, the API's maximum"]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("secret_access_key", "line-one\nline-two", "must be printable ASCII"),
        ("rate_limit_key", "tab\there", "must be printable ASCII"),
        ("access_key", "has:colon", "must not contain ':'"),
    ],
)
def test_secrets_that_cannot_travel_in_a_header_are_refused(
    key: str, value: str, message: str
) -> None:
    from leadflow_exporter.config import ConfigError, parse_config

    api = {"access_key": "a", "secret_access_key": "s", "rate_limit_key": "r", key: value}
    with pytest.raises(ConfigError) as caught:
        parse_config({"api": api}, environ={})
    assert any(p.startswith(f"api.{key}: {message}") for p in caught.value.problems)
    assert value not in str(caught.value)


def test_full_overlap_every_must_be_at_least_one() -> None:
    from leadflow_exporter.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as caught:
        parse_config({"poll": {"full_overlap_every": 0}}, require_credentials=False)
    assert caught.value.problems == ["poll.full_overlap_every: must be >= 1"]


def test_default_poll_schedule_is_valid_and_reads_the_whole_overlap_every_ten_minutes() -> None:
    poll = parse_config({}, environ={}, require_credentials=False).poll
    assert poll.interval_seconds == 30.0
    assert poll.overlap_seconds >= poll.interval_seconds
    # full_overlap_every counts cycles: at the default interval it is a full read every 10 min.
    assert poll.full_overlap_every * poll.interval_seconds == 600.0


# -- files that are not UTF-8, URLs with credentials, duplicate keys, one problem per key -------


def test_config_file_not_utf8_never_quotes_its_bytes(tmp_path: Path) -> None:
    config_file = tmp_path / "c.yml"
    config_file.write_bytes(b'api:\n  access_key: "k\xe9y-' + SECRET_VALUE.encode() + b'"\n')
    problems = problems_of(config_file)
    assert problems == ["(file): not UTF-8 text (line 2)"]
    assert "xe9" not in problems[0] and SECRET_VALUE not in problems[0]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_secret_file_not_utf8_names_its_key_and_never_its_bytes(key: str, tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(SECRET_VALUE.encode() + b"\xff\n")
    config_file = tmp_path / "c.yml"
    config_file.write_text(yaml.safe_dump({"api": {f"{key}_file": "secret"}}))
    with pytest.raises(ConfigError) as info:
        load_config(config_file, environ={})
    assert info.value.problems[0] == f"api.{key}_file: secret: not UTF-8 text"
    assert SECRET_VALUE not in str(info.value)


@pytest.mark.usefixtures("no_env")
@pytest.mark.parametrize("name", ["not-utf8", "secret-file-not-utf8"])
def test_run_refuses_a_file_that_is_not_utf8_without_a_traceback(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = TESTDATA / f"{name}.bad.yml"
    assert cli.main(["run", "--config", str(path)]) == 1
    _, err = capsys.readouterr()
    key, message = BAD[name]
    assert f"  {key}: {message}\n" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "url",
    [
        "http://user:hunter2-pw@dialogtechapis.com/report",
        "https://user@dialogtechapis.com/report",
        "https://:hunter2-pw@dialogtechapis.com:443/report",
        "http://@127.0.0.1:8080/report",
    ],
)
def test_base_url_with_user_info_is_refused_without_echoing_it(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"api": {"base_url": url}}, environ={}, require_credentials=False)
    assert [key_path(p) for p in info.value.problems] == ["api.base_url"]
    assert "user:password" in info.value.problems[0]
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("ftp://user:hunter2-pw@example.com/report", "ftp://<secret>@example.com/report"),
        ("user:hunter2-pw@example.com/report", "<secret>@example.com/report"),
        ("http://user:hunter2-pw@[::1/report", "http://<secret>@[::1/report"),
        ("http://[::1/report", "http://[::1/report"),
    ],
)
def test_a_base_url_that_does_not_parse_is_refused_without_its_password(
    url: str, shown: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"api": {"base_url": url}}, environ={}, require_credentials=False)
    assert info.value.problems == [f"api.base_url: must be an http(s) URL, got {shown!r}"]
    assert "hunter2" not in str(info.value)


def test_at_sign_outside_the_host_part_of_base_url_is_fine() -> None:
    url = "https://gateway.example.com/report/v1/leadflow/v2/history?team=ops@example.com"
    config = parse_config({"api": {"base_url": url}}, environ={}, require_credentials=False)
    assert config.api.base_url == url


def _refused_secret(kind: str, key: str, tmp_path: Path) -> dict[str, object]:
    if kind == "missing file":
        return {f"{key}_file": "no-such-file"}
    if kind == "directory":
        (tmp_path / "dir").mkdir()
        return {f"{key}_file": "dir"}
    if kind == "not utf-8":
        (tmp_path / "latin1").write_bytes(b"cl\xe9\n")
        return {f"{key}_file": "latin1"}
    if kind == "not a path":
        return {f"{key}_file": 42}
    if kind == "inline and file":
        (tmp_path / "s").write_text("from-file")
        return {key: "inline", f"{key}_file": "s"}
    if kind == "not a string":
        return {key: 42}
    assert kind == "line break"
    return {key: "line-one\nline-two"}


@pytest.mark.parametrize("key", SECRET_KEYS)
@pytest.mark.parametrize(
    "kind",
    [
        "missing file",
        "directory",
        "not utf-8",
        "not a path",
        "inline and file",
        "not a string",
        "line break",
    ],
)
def test_a_refused_secret_is_not_also_reported_missing(kind: str, key: str, tmp_path: Path) -> None:
    api: dict[str, object] = dict(INLINE_SECRETS)
    del api[key]
    api.update(_refused_secret(kind, key, tmp_path))
    config_file = tmp_path / "c.yml"
    config_file.write_text(yaml.safe_dump({"api": api}))
    problems = problems_of(config_file, require_credentials=True)
    assert len(problems) == 1, problems
    assert key_path(problems[0]) in (f"api.{key}", f"api.{key}_file")
    assert "required" not in problems[0]


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        (
            "logging: {level: info, level: debug}\n",
            ["logging.level: duplicate key on line 1 (first set on line 1); set each key once"],
        ),
        (
            "api:\n  timezone: UTC\npoll: {}\napi: {}\nlogging: {}\npoll: {}\n",
            [
                "api: duplicate key on line 4 (first set on line 1); set each key once",
                "poll: duplicate key on line 6 (first set on line 3); set each key once",
            ],
        ),
        (
            "metrics:\n  extra_labels:\n    - {a: 1, a: 2}\n",
            [
                "metrics.extra_labels[0].a: duplicate key on line 3 (first set on line 3); "
                "set each key once"
            ],
        ),
        (
            "'poll':\n  active: true\n\"poll\":\n  active: false\n",
            ["poll: duplicate key on line 3 (first set on line 1); set each key once"],
        ),
    ],
)
def test_duplicate_keys_are_refused_with_path_and_lines(
    tmp_path: Path, text: str, problems: list[str]
) -> None:
    config_file = tmp_path / "c.yml"
    config_file.write_text(text)
    assert problems_of(config_file) == problems


def test_the_same_key_in_different_mappings_anchors_and_merge_keys_are_fine(
    tmp_path: Path,
) -> None:
    config_file = tmp_path / "c.yml"
    config_file.write_text(
        "poll: &poll\n  interval_seconds: 10\n  active: false\n"
        "server:\n  listen: 127.0.0.1:0\n"
        "logging:\n  level: debug\n"
        "metrics:\n  <<: {max_series_per_metric: 10}\n  max_series_per_metric: 20\n"
    )
    config = load_config(config_file, environ={}, require_credentials=False)
    assert config.poll.interval_seconds == 10
    assert config.poll.active is False
    assert config.metrics.max_series_per_metric == 20
