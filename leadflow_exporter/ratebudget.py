"""One request budget for every query the exporter sends."""

from __future__ import annotations

import asyncio
from collections import deque

from leadflow_exporter.clock import Clock

WINDOW_SECONDS = 60.0


class RateBudget:
    """At most `per_minute` requests in any 60-second window, and none while paused.

    A sliding log rather than a token bucket: a bucket that starts full allows up to twice
    the limit within one minute, which is exactly what the API's own limiter punishes.
    """

    def __init__(self, per_minute: int, clock: Clock) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._sent: deque[float] = deque()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()
        self.waited_seconds = 0.0

    def _trim(self, now: float) -> None:
        while self._sent and self._sent[0] <= now - WINDOW_SECONDS:
            self._sent.popleft()

    def used(self) -> int:
        """Requests sent in the last 60 seconds."""
        self._trim(self._clock.monotonic())
        return len(self._sent)

    def pause(self, seconds: float) -> None:
        """Hold every query back, as the API asked with Retry-After."""
        until = self._clock.monotonic() + seconds
        self._paused_until = max(self._paused_until, until)

    async def acquire(self) -> None:
        # The lock keeps waiters in order, so a burst of follow-ups cannot starve the
        # history query that holds the watermark back.
        async with self._lock:
            while True:
                now = self._clock.monotonic()
                self._trim(now)
                wait = self._paused_until - now
                if len(self._sent) >= self.per_minute:
                    wait = max(wait, self._sent[0] + WINDOW_SECONDS - now)
                if wait <= 0:
                    self._sent.append(now)
                    return
                self.waited_seconds += wait
                await self._clock.sleep(wait)
