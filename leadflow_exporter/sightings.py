"""Bad records and values already reported, so that each is counted once.

The poller reads the same records many times: overlapping history windows, the live-call list
every cycle, sid look-ups. Calls are deduplicated by the ledger; the records it cannot count
(no sid, an unreadable date, not a record at all) and the unreadable values of counted calls
are deduplicated here, by a key each: the sid where there is one (with the field, for a
value), else the fields set when the call starts. Kept in memory only: after a restart the
overlap's bad records are counted once more.

Keys are forgotten by poll cycles, not by time: a key not seen for as many successful cycles
as a record can stay within reach of the poller's reads. An API outage or a clock step does
not age them, so the catch-up after an outage, which re-reads the overlap however long the
outage was, finds them still known.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable

# Bad data is rare; the cap only bounds what an API sending nothing but bad records costs.
MAX_KEYS = 100_000

Sighting = tuple[str, Hashable]  # (reason or field name, the record's key)


class Sightings:
    """The successful cycle in which each key was last seen, oldest first."""

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self._last_seen: dict[Sighting, int] = {}
        self._max_keys = max_keys
        self.cycle = 0

    def first(self, sightings: Iterable[Sighting]) -> Counter[str]:
        """How many of ``sightings`` are not known, by reason; all of them are known after."""
        last_seen = self._last_seen
        cycle = self.cycle
        new: Counter[str] = Counter()
        for sighting in sightings:
            if last_seen.pop(sighting, None) is None:
                new[sighting[0]] += 1
            # Re-inserted, so the dict stays ordered by last sighting, oldest first.
            last_seen[sighting] = cycle
        self._trim(len(last_seen) - self._max_keys, 0)
        return new

    def cycle_done(self, keep_cycles: int) -> None:
        """A successful cycle ended: forget keys not seen in the last ``keep_cycles``."""
        self.cycle += 1
        self._trim(0, self.cycle - keep_cycles)

    def _trim(self, excess: int, before: int) -> None:
        """Forget the ``excess`` oldest keys, and any seen before cycle ``before``."""
        # One pass over the oldest, then the deletions: deleting while taking the first key
        # of a dict again and again costs quadratic time.
        gone = []
        for sighting, cycle in self._last_seen.items():
            if len(gone) >= excess and cycle >= before:
                break
            gone.append(sighting)
        for sighting in gone:
            del self._last_seen[sighting]

    def __len__(self) -> int:
        return len(self._last_seen)
