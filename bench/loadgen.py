"""A small HTTP/1.1 keep-alive load generator for 127.0.0.1 only.

It is deliberately lighter than a general HTTP client, so the figures measure the server: each
connection sends one GET at a time, reads the status line, the headers and exactly
Content-Length bytes, and records the latency. It stops after `requests` requests or `seconds`
seconds, whichever comes first.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

LOOPBACK = "127.0.0.1"
# Large reads, discarded as they come: the client must not be what limits large bodies.
_BUFFER = 4 * 1024 * 1024
# A request slower than this counts as an error rather than stalling the run.
REQUEST_TIMEOUT_SECONDS = 30.0


async def _drain(reader: asyncio.StreamReader, length: int | None) -> int:
    """Read and discard the body; without Content-Length, until the server closes."""
    received = 0
    while length is None or received < length:
        want = _BUFFER if length is None else min(_BUFFER, length - received)
        chunk = await reader.read(want)
        if not chunk:
            if length is not None:
                raise ConnectionError("body ended early")
            break
        received += len(chunk)
    return received


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    errors: int = 0
    bytes: int = 0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def percentile(self, p: float) -> float:
        """Latency percentile in seconds (nearest rank)."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))
        return ordered[index]


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[bool, int, bool]:
    """One request: (status 200, body bytes, connection reusable)."""
    writer.write(request)
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed before an answer")
    length: int | None = None
    keep_alive = status_line.startswith(b"HTTP/1.1")
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep_alive = False
    received = await _drain(reader, length)
    return b" 200 " in status_line, received, keep_alive and length is not None


async def _connection(
    port: int,
    request: bytes,
    result: LoadResult,
    budget: list[int],
    deadline: float,
    interval: float,
    stop: asyncio.Event,
) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    next_send = time.perf_counter()
    try:
        while budget[0] > 0 and time.perf_counter() < deadline and not stop.is_set():
            budget[0] -= 1
            if interval:
                # Open-loop pacing: a fixed rate of scrapes, as Prometheus servers send them.
                next_send += interval
                delay = next_send - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            # Paced, a request is timed from when it was due, not from when it could be sent:
            # while an answer is held up, the requests due meanwhile wait too (as the
            # scrapers they stand for would), and their wait is part of their latency.
            started = min(next_send, time.perf_counter()) if interval else time.perf_counter()
            if writer is None:
                # Servers that close after each answer (HTTP/1.0) pay for a new connection
                # inside the request's latency, as a scraper would.
                reader, writer = await asyncio.open_connection(LOOPBACK, port, limit=_BUFFER)
            assert reader is not None
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
                    ok, received, keep_alive = await _exchange(reader, writer, request)
            except (TimeoutError, ConnectionError, ValueError):
                result.errors += 1
                writer.close()
                reader = writer = None
                continue
            result.latencies.append(time.perf_counter() - started)
            result.bytes += received
            if not ok:
                result.errors += 1
            if not keep_alive:
                writer.close()
                reader = writer = None
    finally:
        if writer is not None:
            writer.close()


async def load(
    port: int,
    path: str = "/metrics",
    *,
    connections: int = 4,
    requests: int = 2000,
    seconds: float = 5.0,
    headers: dict[str, str] | None = None,
    rate: float = 0.0,
    stop: asyncio.Event | None = None,
) -> LoadResult:
    """Closed loop (as fast as answers come) unless `rate` gives requests/s per connection."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {LOOPBACK}:{port}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    result = LoadResult()
    budget = [requests]
    started = time.perf_counter()
    deadline = started + seconds
    interval = 1.0 / rate if rate else 0.0
    await asyncio.gather(
        *(
            _connection(port, request, result, budget, deadline, interval, stop or asyncio.Event())
            for _ in range(connections)
        )
    )
    result.elapsed = time.perf_counter() - started
    return result
