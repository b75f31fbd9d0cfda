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

import functools
import gc
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Metric, generate_latest
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


@dataclass(frozen=True)
class _Collected:
    """Metric families collected once, for the encoders, which only call `collect()`."""

    families: list[Metric]

    def collect(self) -> list[Metric]:
        return self.families


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
        # A render makes a few objects per sample, all freed by reference counting; left on,
        # the cyclic collector runs during it (20-30 ms at 100k series, holding the GIL while
        # scrapes wait) and finds nothing.
        collecting = gc.isenabled()
        gc.disable()
        try:
            text, rendered = self._render()
        finally:
            if collecting:
                gc.enable()
        with self._lock:
            self._text, self._openmetrics = text, rendered
            self.renders += 1

    def _render(self) -> tuple[_Rendered, _Rendered]:
        # Both formats from one collection: building the families is half the work.
        families = _Collected(list(self._cached.collect()))
        text = _prime(generate_latest(families))  # type: ignore[arg-type]
        openmetrics = generate_openmetrics(families)  # type: ignore[arg-type]
        if openmetrics.endswith(_EOF):
            openmetrics = openmetrics[: -len(_EOF)]
        return text, _prime(openmetrics)

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


def _weighted(header: str) -> list[tuple[str, dict[str, str], float]]:
    """The entries of an Accept or Accept-Encoding header: (value, parameters, q), in order.

    Names and parameter names are compared case-insensitively; an unreadable q counts as 0.
    """
    entries = []
    for part in header.split(","):
        value, *raw_params = part.split(";")
        value = value.strip().lower()
        if not value:
            continue
        params: dict[str, str] = {}
        for raw in raw_params:
            name, _, param = raw.partition("=")
            params[name.strip().lower()] = param.strip().strip('"')
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 0.0
        entries.append((value, params, q if 0.0 <= q <= 1.0 else 0.0))
    return entries


# The OpenMetrics versions the encoder's output satisfies (0.0.1 is what Prometheus 2 also
# asks for), and the text format's.
_OPENMETRICS_VERSIONS = frozenset({"", "1.0.0", "0.0.1"})
_TEXT_VERSIONS = frozenset({"", "0.0.4"})


@functools.lru_cache(maxsize=64)
def wants_openmetrics(accept: str) -> bool:
    """Whether the best-weighted format the scraper accepts is OpenMetrics (else text).

    Entries are taken by q, highest first, in header order among equals; the first that
    either format satisfies decides (`*/*` and `text/*` are the text format). Nothing
    acceptable, or no header: text, as Prometheus's own exporters answer.
    """
    ranked = sorted(_weighted(accept), key=lambda entry: -entry[2])
    for value, params, q in ranked:
        if q <= 0:
            break
        version = params.get("version", "")
        if value == "application/openmetrics-text" and version in _OPENMETRICS_VERSIONS:
            return True
        if value in ("text/plain", "text/*", "*/*") and version in _TEXT_VERSIONS:
            return False
    return False


@functools.lru_cache(maxsize=64)
def wants_gzip(accept_encoding: str) -> bool:
    """Whether to gzip: gzip (or `x-gzip`, or `*`) is acceptable, and weighted at least as
    high as identity where the header weighs identity (by name or by `*`)."""
    gzip_q: float | None = None
    identity_q: float | None = None
    any_q: float | None = None
    for value, _, q in _weighted(accept_encoding):
        if value in ("gzip", "x-gzip"):
            gzip_q = q if gzip_q is None else max(gzip_q, q)
        elif value == "identity":
            identity_q = q
        elif value == "*":
            any_q = q
    if gzip_q is None:
        gzip_q = any_q or 0.0
    if identity_q is None:
        identity_q = any_q if any_q is not None else 0.0
    return gzip_q > 0 and gzip_q >= identity_q
