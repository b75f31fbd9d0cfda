"""Dates in LeadFlow's terms: Eastern wall-clock strings on the wire, UTC epochs inside."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo


@lru_cache(maxsize=16)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


class CallDateParser:
    """Reads `call_date` in every form the API may use, fast.

    Naive values are wall-clock time in the configured zone. The UTC offset is cached per
    local hour, so a page of calls costs one zoneinfo look-up per hour it spans. In the
    repeated November hour a naive value is ambiguous; the first occurrence (daylight
    time) is taken, which can shift that call's timestamp by an hour but never its
    counting, since calls are deduplicated by sid, not by time.
    """

    __slots__ = ("_offsets", "_tz")

    def __init__(self, tz: tzinfo) -> None:
        self._tz = tz
        self._offsets: dict[str, float] = {}

    def parse(self, value: object) -> float | None:
        """Epoch seconds, or None when the value is not a date."""
        if not isinstance(value, str):
            return None
        text = value.strip()
        if len(text) < 10:
            return None
        if len(text) == 19 and _WIRE_FORM.fullmatch(text):
            # The common wire form: "YYYY-MM-DD HH:MM:SS", local time.
            hour_key = text[:13]
            offset = self._offsets.get(hour_key)
            try:
                naive = datetime(
                    int(text[0:4]),
                    int(text[5:7]),
                    int(text[8:10]),
                    int(text[11:13]),
                    int(text[14:16]),
                    int(text[17:19]),
                )
            except ValueError:
                return None
            if offset is None:
                offset = _offset(naive, self._tz)
                # Cache per hour only when the whole hour has one offset: a few zones
                # (Australia/Lord_Howe) change their clocks at half past.
                hour = naive.replace(minute=0, second=0)
                end = naive.replace(minute=59, second=59)
                if _offset(hour, self._tz) == offset == _offset(end, self._tz):
                    if len(self._offsets) > 10_000:
                        self._offsets.clear()
                    self._offsets[hour_key] = offset
            return (naive - _EPOCH_NAIVE).total_seconds() - offset
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=self._tz)
        return parsed.timestamp()


_EPOCH_NAIVE = datetime(1970, 1, 1)
_WIRE_FORM = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d", re.ASCII)


def _offset(naive: datetime, tz: tzinfo) -> float:
    return naive.replace(tzinfo=tz).utcoffset().total_seconds()  # type: ignore[union-attr]


def format_api_date(epoch: float, tz: tzinfo) -> str:
    """An API date parameter: ISO-8601 with the zone's offset, so DST is never guessed."""
    local = datetime.fromtimestamp(int(epoch), UTC).astimezone(tz)
    return local.isoformat(timespec="seconds")


def slices(start: float, end: float, max_seconds: float) -> list[tuple[float, float]]:
    """Split [start, end) into consecutive slices no longer than max_seconds."""
    if not max_seconds > 0:
        raise ValueError(f"max_seconds must be > 0, got {max_seconds!r}")
    out: list[tuple[float, float]] = []
    cursor = start
    while cursor < end:
        stop = min(end, cursor + max_seconds)
        out.append((cursor, stop))
        cursor = stop
    return out


SEVEN_DAYS = timedelta(days=7).total_seconds()
