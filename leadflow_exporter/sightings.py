"""Bad records and values already reported, so that each is counted once.

The poller reads the same records many times: overlapping history windows, the live-call list
every cycle, sid look-ups. Calls are deduplicated by the ledger; the records it cannot count
(no sid, an unreadable date, not a record at all) and the unreadable values of counted calls
are deduplicated here, by a key each: the sid where there is one (with the field, for a
value), else a hash of the record's content. Kept in memory only: after a restart the
overlap's bad records are counted once more.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable

# Bad data is rare; the cap only bounds what an API sending nothing but bad records costs.
MAX_KEYS = 100_000

Sighting = tuple[str, Hashable]  # (reason or field name, the record's key)


class Sightings:
    """When each key was last seen; a key not seen for ``ttl`` seconds is forgotten."""

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self._last_seen: dict[Sighting, float] = {}
        self._max_keys = max_keys

    def first(self, sightings: Iterable[Sighting], now: float, ttl: float) -> Counter[str]:
        """How many of ``sightings`` were not seen in the last ``ttl`` seconds, by reason."""
        last_seen = self._last_seen
        new: Counter[str] = Counter()
        for sighting in sightings:
            if last_seen.pop(sighting, None) is None:
                new[sighting[0]] += 1
            # Re-inserted, so the dict stays ordered by last sighting, oldest first.
            last_seen[sighting] = now
        horizon = now - ttl
        while last_seen:
            oldest = next(iter(last_seen))
            if last_seen[oldest] >= horizon and len(last_seen) <= self._max_keys:
                break
            del last_seen[oldest]
        return new

    def __len__(self) -> int:
        return len(self._last_seen)
