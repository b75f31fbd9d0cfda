"""Content negotiation of /metrics: format by Accept, compression by Accept-Encoding, q-values
honoured, names case-insensitive."""

from __future__ import annotations

import pytest

from leadflow_exporter.exposition import wants_gzip, wants_openmetrics

PROMETHEUS_2 = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        ("", False),
        (PROMETHEUS_2, True),
        ("text/plain;version=0.0.4;q=0.5,*/*;q=0.1", False),
        ("application/openmetrics-text", True),
        ("Application/OpenMetrics-Text; Version=1.0.0", True),
        ("application/openmetrics-text;version=0.0.1", True),
        ("application/openmetrics-text;q=0, text/plain;version=0.0.4", False),
        ("application/openmetrics-text;q=0", False),
        ("text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.1", False),
        ("text/plain;q=0.2,application/openmetrics-text;q=0.9", True),
        ("text/plain,application/openmetrics-text", False),
        ("application/openmetrics-text,text/plain", True),
        ("application/openmetrics-text;version=2.0.0,text/plain;q=0.5", False),
        ("application/openmetrics-text;q=banana,text/plain;q=0.1", False),
        ("*/*", False),
        ("application/json", False),
    ],
)
def test_format(accept: str, openmetrics: bool) -> None:
    assert wants_openmetrics(accept) is openmetrics


@pytest.mark.parametrize(
    ("accept_encoding", "gzip"),
    [
        ("", False),
        ("gzip", True),
        ("GZIP", True),
        ("gzip, deflate, br", True),
        ("x-gzip", True),
        ("gzip;q=0", False),
        ("GZIP;Q=0", False),
        ("gzip; q=0.000", False),
        ("gzip;q=0.5", True),
        ("identity;q=1, gzip;q=0.5", False),
        ("identity;q=0.5, gzip;q=0.5", True),
        ("gzip;q=0.8, identity;q=0.2", True),
        ("identity", False),
        ("deflate", False),
        ("*", True),
        ("*;q=0", False),
        ("*;q=0.5, identity;q=1", False),
        ("gzip;q=nope", False),
    ],
)
def test_compression(accept_encoding: str, gzip: bool) -> None:
    assert wants_gzip(accept_encoding) is gzip
