"""The /metrics body, rendered once per poll cycle rather than once per scrape.

The totals only change when a poll cycle commits, so rendering them on every scrape would
repeat identical work. Each cycle renders the text and OpenMetrics forms once, and keeps a
gzip stream primed with them; a scrape only appends the few process metrics that do change
between cycles, by continuing a copy of that primed compressor.

Even that tail costs more than sending the bytes (reading /proc, copying the compressor's
state), so each finished response, per format and encoding, is kept for `live_seconds`: a
burst of scrapes (HA Prometheus pairs, federation, dashboards hitting the exporter directly)
is then answered with ready bytes, and process figures are at most that old.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import (
    CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE,
)
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_EOF = b"# EOF\n"
_GZIP_WBITS = 16 + zlib.MAX_WBITS
# How long a finished response (process metrics included) is served again.
LIVE_SECONDS = 1.0


@dataclass(frozen=True)
class _Rendered:
    body: bytes
    gzip_prefix: bytes
    compressor: zlib._Compress  # type: ignore[name-defined]


def _prime(body: bytes) -> _Rendered:
    compressor = zlib.compressobj(6, zlib.DEFLATED, _GZIP_WBITS)
    prefix = compressor.compress(body) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return _Rendered(body, prefix, compressor)


@dataclass(frozen=True)
class _Response:
    renders: int
    made: float
    body: bytes


class Exposition:
    def __init__(
        self,
        cached: CollectorRegistry,
        live: CollectorRegistry | None = None,
        *,
        live_seconds: float = LIVE_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cached = cached
        self._live = live
        self._lock = threading.Lock()
        self._text = _prime(b"")
        self._openmetrics = _prime(b"")
        self.renders = 0
        self.live_seconds = live_seconds
        self._monotonic = monotonic
        # Keyed by (openmetrics, gzip); only ever touched from the event loop's thread.
        self._responses: dict[tuple[bool, bool], _Response] = {}

    def render(self) -> None:
        """Render the cached registry; safe to call from a worker thread."""
        text = _prime(generate_latest(self._cached))
        openmetrics = generate_openmetrics(self._cached)
        if openmetrics.endswith(_EOF):
            openmetrics = openmetrics[: -len(_EOF)]
        rendered = _prime(openmetrics)
        with self._lock:
            self._text, self._openmetrics = text, rendered
            self.renders += 1

    def forget_responses(self) -> None:
        """Drop the kept responses: a live figure changed that must show at once (a reload's
        outcome), rather than up to `live_seconds` later. Event loop thread only."""
        self._responses.clear()

    def body(self, *, openmetrics: bool, gzip: bool) -> tuple[bytes, str]:
        """The response body and its content type."""
        content_type = OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE
        key = (openmetrics, gzip)
        now = self._monotonic()
        kept = self._responses.get(key)
        if (
            kept is not None
            and kept.renders == self.renders
            and now - kept.made < self.live_seconds
        ):
            return kept.body, content_type
        with self._lock:
            rendered = self._openmetrics if openmetrics else self._text
            renders = self.renders
        body = self._assemble(rendered, openmetrics=openmetrics, gzip=gzip)
        self._responses[key] = _Response(renders, now, body)
        return body, content_type

    def _assemble(self, rendered: _Rendered, *, openmetrics: bool, gzip: bool) -> bytes:
        tail = b""
        if self._live is not None:
            tail = generate_openmetrics(self._live) if openmetrics else generate_latest(self._live)
            if openmetrics and tail.endswith(_EOF):
                tail = tail[: -len(_EOF)]
        if openmetrics:
            tail += _EOF
        if not gzip:
            return rendered.body + tail
        compressor = rendered.compressor.copy()
        return rendered.gzip_prefix + compressor.compress(tail) + compressor.flush()


def wants_openmetrics(accept: str) -> bool:
    return "application/openmetrics-text" in accept


def wants_gzip(accept_encoding: str) -> bool:
    for part in accept_encoding.split(","):
        token, _, params = part.strip().partition(";")
        if token.strip().lower() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False
