"""The /metrics body, rendered once per poll cycle rather than once per scrape.

The totals only change when a poll cycle commits, so rendering them on every scrape would
repeat identical work. Each cycle renders the text and OpenMetrics forms once, and keeps a
gzip stream primed with them; a scrape only appends the few process metrics that do change
between cycles, by continuing a copy of that primed compressor.
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import (
    CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE,
)
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_EOF = b"# EOF\n"
_GZIP_WBITS = 16 + zlib.MAX_WBITS


@dataclass(frozen=True)
class _Rendered:
    body: bytes
    gzip_prefix: bytes
    compressor: zlib._Compress  # type: ignore[name-defined]


def _prime(body: bytes) -> _Rendered:
    compressor = zlib.compressobj(6, zlib.DEFLATED, _GZIP_WBITS)
    prefix = compressor.compress(body) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return _Rendered(body, prefix, compressor)


class Exposition:
    def __init__(self, cached: CollectorRegistry, live: CollectorRegistry | None = None) -> None:
        self._cached = cached
        self._live = live
        self._lock = threading.Lock()
        self._text = _prime(b"")
        self._openmetrics = _prime(b"")
        self.renders = 0

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

    def body(self, *, openmetrics: bool, gzip: bool) -> tuple[bytes, str]:
        """The response body and its content type."""
        with self._lock:
            rendered = self._openmetrics if openmetrics else self._text
        tail = b""
        if self._live is not None:
            tail = generate_openmetrics(self._live) if openmetrics else generate_latest(self._live)
            if openmetrics and tail.endswith(_EOF):
                tail = tail[: -len(_EOF)]
        if openmetrics:
            tail += _EOF
        content_type = OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE
        if not gzip:
            return rendered.body + tail, content_type
        compressor = rendered.compressor.copy()
        return rendered.gzip_prefix + compressor.compress(tail) + compressor.flush(), content_type


def wants_openmetrics(accept: str) -> bool:
    return "application/openmetrics-text" in accept


def wants_gzip(accept_encoding: str) -> bool:
    for part in accept_encoding.split(","):
        token, _, params = part.strip().partition(";")
        if token.strip().lower() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False
