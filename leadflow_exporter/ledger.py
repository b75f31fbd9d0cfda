"""Which calls were counted, and the running totals they add up to.

A poll cycle stages its records in a `CycleBatch`; `Ledger.commit` writes the batch, the new
totals and the watermark to the store in one transaction and only then makes them visible.
A crash before the commit leaves the previous cycle's state, so nothing is lost or doubled:
the next cycle reads the same window again and the seen-sid set decides what is new.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from operator import attrgetter, itemgetter
from typing import Any, Protocol

from leadflow_exporter.health import Health
from leadflow_exporter.records import MONEY_SCALE, CallRecord

STATUSES = ("connected", "affiliate_cap", "no_buyer", "hang_up")
TALK_BUCKETS = (10.0, 30.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
BUCKET_SECONDS = 3600
EXPIRY_MARGIN_SECONDS = 3600.0


def bucket_of(call_ts: float) -> int:
    return int(call_ts // BUCKET_SECONDS)


@dataclass
class SetTotals:
    """Running totals of one LeadFlow set. Money is in 1/10000 USD, exact."""

    talk_seconds: float = 0.0
    call_seconds: float = 0.0
    revenue: int = 0
    payout: int = 0
    margin: int = 0
    qualified_offer: int = 0
    qualified_affiliate: int = 0
    reroute: int = 0
    repeat_affiliate_caller: int = 0
    contested: int = 0
    last_call_ts: float = 0.0
    talk_buckets: list[int] = field(default_factory=lambda: [0] * (len(TALK_BUCKETS) + 1))

    def add_call(self, record: CallRecord) -> None:
        self.talk_seconds += record.talk_seconds
        self.call_seconds += record.total_seconds
        self.revenue += record.offer_price
        self.payout += record.affiliate_price
        self.margin += record.margin
        self.qualified_offer += record.offer_qualified
        self.qualified_affiliate += record.affiliate_qualified
        self.reroute += record.reroute
        self.repeat_affiliate_caller += record.repeat_affiliate_caller
        self.contested += record.contested
        talk = record.talk_seconds
        index = len(TALK_BUCKETS)
        for i, bound in enumerate(TALK_BUCKETS):
            if talk <= bound:
                index = i
                break
        self.talk_buckets[index] += 1

    def merge(self, other: SetTotals) -> None:
        for f in fields(self):
            if f.name == "talk_buckets":
                self.talk_buckets = [
                    a + b for a, b in zip(self.talk_buckets, other.talk_buckets, strict=True)
                ]
            elif f.name == "last_call_ts":
                self.last_call_ts = max(self.last_call_ts, other.last_call_ts)
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def copy(self) -> SetTotals:
        clone = SetTotals(**{f.name: getattr(self, f.name) for f in fields(self)})
        clone.talk_buckets = list(self.talk_buckets)
        return clone

    @property
    def talk_count(self) -> int:
        return sum(self.talk_buckets)

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SetTotals:
        known = {f.name for f in fields(cls)}
        totals = cls(**{k: v for k, v in data.items() if k in known})
        if len(totals.talk_buckets) != len(TALK_BUCKETS) + 1:
            raise ValueError("talk_buckets does not match this version's histogram buckets")
        return totals

    @staticmethod
    def usd(value: int) -> float:
        return value / MONEY_SCALE


@dataclass
class Totals:
    """Everything the business metrics show. Small: one entry per series."""

    calls: dict[tuple[str, ...], int] = field(default_factory=dict)
    sets: dict[str, SetTotals] = field(default_factory=dict)

    def copy(self) -> Totals:
        return Totals(dict(self.calls), {k: v.copy() for k, v in self.sets.items()})

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": [[*key, count] for key, count in self.calls.items()],
            "sets": {name: t.to_json() for name, t in self.sets.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], label_count: int) -> Totals:
        calls: dict[tuple[str, ...], int] = {}
        for row in data.get("calls", []):
            key = tuple(str(v) for v in row[:-1])
            if len(key) != label_count:
                raise ValueError("saved totals have different labels than metrics.extra_labels now")
            calls[key] = int(row[-1])
        sets = {name: SetTotals.from_json(t) for name, t in data.get("sets", {}).items()}
        return cls(calls, sets)


# Seen sids staged by a cycle: per hour bucket, dedup key -> sid. The key is what the ledger
# looks up; the sid is what the store writes, because keys are only valid in this process.
StagedSids = dict[int, dict[int, str]]


@dataclass
class FollowedCall:
    """A call seen in progress, followed until it shows up finished."""

    sid: str
    sid_key: int
    set_name: str
    call_ts: float
    first_seen: float
    last_active: float


@dataclass
class Snapshot:
    """What a store holds between runs."""

    totals: Totals
    seen: dict[int, set[int]]
    followed: dict[str, FollowedCall]
    watermark: float | None
    extra_labels: tuple[str, ...]
    full_mark: float | None = None
    # The earliest call start the seen sids are complete from: the first window read, raised
    # by every expiry. A history window must not reach before it, or it counts again.
    covered_from: float | None = None


class Store(Protocol):
    def load(
        self, extra_labels: tuple[str, ...], timezone: str | None = None
    ) -> Snapshot | None: ...

    def write_cycle(
        self,
        *,
        totals: Totals,
        new_seen: StagedSids,
        expire_before_bucket: int,
        followed: dict[str, FollowedCall],
        watermark: float | None,
        extra_labels: tuple[str, ...],
        full_mark: float | None = None,
        covered_from: float | None = None,
        timezone: str | None = None,
    ) -> None: ...

    def close(self) -> None: ...


class MemoryStore:
    """State that lives as long as the process (`state.path: ""`)."""

    def load(self, extra_labels: tuple[str, ...], timezone: str | None = None) -> Snapshot | None:
        return None

    def write_cycle(self, **_: Any) -> None:
        return None

    def close(self) -> None:
        return None


@dataclass
class CycleBatch:
    """One cycle's staged changes; invisible until committed."""

    new_seen: StagedSids = field(default_factory=dict)
    calls: Counter[tuple[str, ...]] = field(default_factory=Counter)
    sets: dict[str, SetTotals] = field(default_factory=dict)
    counted: int = 0
    baseline: int = 0
    duplicates: int = 0
    new_call_series: int = 0
    new_sets: int = 0


@dataclass(frozen=True)
class PendingCommit:
    """A cycle's outcome, prepared: what `Ledger.write` stores and `Ledger.apply` shows."""

    totals: Totals
    new_seen: StagedSids
    horizon: int
    followed: dict[str, FollowedCall]
    watermark: float | None
    full_mark: float | None
    covered_from: float | None
    active: dict[str, int] | None


class Ledger:
    def __init__(
        self,
        store: Store,
        health: Health,
        *,
        extra_labels: tuple[str, ...] = (),
        max_series_per_metric: int = 5000,
        retention_seconds: float = 14400.0 + 900.0,
        timezone: str | None = None,
    ) -> None:
        self.store = store
        # The zone call dates are read in (`api.timezone`): the seen sids' hour buckets
        # depend on it, so the store refuses a state written in another.
        self.timezone = timezone
        self.health = health
        self.extra_labels = extra_labels
        self.max_series = max_series_per_metric
        self.retention_seconds = retention_seconds + EXPIRY_MARGIN_SECONDS
        self.totals = Totals()
        self.seen: dict[int, set[int]] = {}
        self.followed: dict[str, FollowedCall] = {}
        self.watermark: float | None = None
        # When the history was last read over the whole overlap (see Poller): a restart
        # reaches back from here, so that a call showing up late is found after it too.
        self.full_mark: float | None = None
        self.covered_from: float | None = None
        self.active: dict[str, int] = {}
        snapshot = store.load(extra_labels, timezone)
        if snapshot is not None:
            self.totals = snapshot.totals
            self.seen = snapshot.seen
            self.followed = snapshot.followed
            self.watermark = snapshot.watermark
            self.full_mark = snapshot.full_mark
            self.covered_from = snapshot.covered_from

    # -- reading ---------------------------------------------------------------------------

    @property
    def has_baseline(self) -> bool:
        """False until a first window was read: then calls are recorded, not counted."""
        return self.watermark is not None

    def tracked(self) -> int:
        return sum(len(s) for s in self.seen.values())

    def is_seen(self, sid_key: int, call_ts: float, batch: CycleBatch | None = None) -> bool:
        bucket = bucket_of(call_ts)
        seen = self.seen.get(bucket)
        if seen is not None and sid_key in seen:
            return True
        if batch is not None:
            staged = batch.new_seen.get(bucket)
            return staged is not None and sid_key in staged
        return False

    # -- staging ---------------------------------------------------------------------------

    def add(self, batch: CycleBatch, records: Iterable[CallRecord], *, count: bool) -> None:
        """Stage finished calls; each sid is counted at most once, ever."""
        if count:
            self._add_counted(batch, records)
            return
        seen = self.seen
        new_seen = batch.new_seen
        for record in records:
            bucket = int(record.call_ts // BUCKET_SECONDS)
            key = record.sid_key
            known = seen.get(bucket)
            if known is not None and key in known:
                batch.duplicates += 1
                continue
            staged = new_seen.get(bucket)
            if staged is None:
                staged = new_seen[bucket] = {}
            elif key in staged:
                batch.duplicates += 1
                continue
            staged[key] = record.sid
            batch.baseline += 1
            totals = self._set_totals(batch, record.set_name)
            if totals is not None and record.call_ts > totals.last_call_ts:
                totals.last_call_ts = record.call_ts
            self._call_series(batch, record)

    def _add_counted(self, batch: CycleBatch, records: Iterable[CallRecord]) -> None:
        """`add(count=True)`: `_count` and `SetTotals.add_call` inlined.

        With the decoding, this is the whole per-record cost of a catch-up. A page of new
        calls from one hour (most pages of a catch-up) is deduplicated with set operations on
        the whole page, in C; otherwise record by record. The totals loop keeps its look-ups
        in local names, and the series counts are tallied in C and only then looked up.
        """
        if not isinstance(records, list):
            records = list(records)
        if not records:
            return
        if not self._stage_fresh(batch, records):
            records = self._stage_each(batch, records)
        batch.counted += len(records)
        self._add_totals(batch, records)
        self._add_series(batch, records)

    def _stage_fresh(self, batch: CycleBatch, records: list[CallRecord]) -> bool:
        """Stage `records` when all of them are new and of one hour bucket; else stage none.

        Whole-page set operations in C: a page of a catch-up is usually a few minutes of
        calls none of which were seen, and this costs a fraction of a look-up per record.
        """
        times = list(map(_CALL_TS, records))
        bucket = int(min(times) // BUCKET_SECONDS)
        if int(max(times) // BUCKET_SECONDS) != bucket:
            return False
        keys = list(map(_SID_KEY, records))
        fresh = set(keys)
        if len(fresh) != len(keys):
            return False
        known = self.seen.get(bucket)
        if known is not None and not known.isdisjoint(fresh):
            return False
        staged = batch.new_seen.get(bucket)
        if staged is None:
            staged = batch.new_seen[bucket] = {}
        # A dict view's isdisjoint walks the smaller side; set.isdisjoint(dict) walks the dict.
        elif not staged.keys().isdisjoint(fresh):
            return False
        staged.update(zip(keys, map(_SID, records), strict=True))
        return True

    def _stage_each(self, batch: CycleBatch, records: list[CallRecord]) -> list[CallRecord]:
        """Stage the records not seen yet, one by one; returns them, in order."""
        seen = self.seen
        new_seen = batch.new_seen
        fresh: list[CallRecord] = []
        append = fresh.append
        duplicates = 0
        for record in records:
            bucket = int(record.call_ts // BUCKET_SECONDS)
            key = record.sid_key
            known = seen.get(bucket)
            if known is not None and key in known:
                duplicates += 1
                continue
            staged = new_seen.get(bucket)
            if staged is None:
                staged = new_seen[bucket] = {}
            elif key in staged:
                duplicates += 1
                continue
            staged[key] = record.sid
            append(record)
        batch.duplicates += duplicates
        return fresh

    def _add_totals(self, batch: CycleBatch, records: list[CallRecord]) -> None:
        """`SetTotals.add_call` for each (new) record, inlined."""
        batch_sets = batch.sets
        for record in records:
            totals = batch_sets.get(record.set_name)
            if totals is None:
                totals = self._set_totals(batch, record.set_name)
                if totals is None:
                    continue
            talk = record.talk_seconds
            totals.talk_seconds += talk
            totals.call_seconds += record.total_seconds
            if record.offer_price:
                totals.revenue += record.offer_price
            if record.affiliate_price:
                totals.payout += record.affiliate_price
            if record.margin:
                totals.margin += record.margin
            # Flags are mostly "N": a test is cheaper than adding a zero.
            if record.offer_qualified:
                totals.qualified_offer += 1
            if record.affiliate_qualified:
                totals.qualified_affiliate += 1
            if record.reroute:
                totals.reroute += 1
            if record.repeat_affiliate_caller:
                totals.repeat_affiliate_caller += 1
            if record.contested:
                totals.contested += 1
            # bisect_left finds the first bound >= talk: the `le` bucket it falls in.
            totals.talk_buckets[bisect_left(TALK_BUCKETS, talk)] += 1
            if record.call_ts > totals.last_call_ts:
                totals.last_call_ts = record.call_ts

    def _add_series(self, batch: CycleBatch, records: list[CallRecord]) -> None:
        """Add the (new) records to their leadflow_calls_total series.

        Tallied in C first (a Counter keeps first-appearance order), then one look-up per
        distinct series. New series are created in the order their first record comes, as
        record by record; a series at the cap drops every one of its records, as it would
        record by record, since the room left only shrinks within a batch.
        """
        extra_labels = self.extra_labels
        if not extra_labels:
            tally = Counter(map(_SERIES, records))
        elif len(extra_labels) == 1:
            (label,) = extra_labels
            tally = Counter(
                zip(
                    map(_SET_NAME, records),
                    map(_LEAD_STATUS, records),
                    map(itemgetter(label), map(_EXTRA, records)),
                    strict=True,
                )
            )
        else:
            values = itemgetter(*extra_labels)
            tally = Counter(
                (record.set_name, record.lead_status, *values(record.extra)) for record in records
            )
        batch_calls = batch.calls
        known_calls = self.totals.calls
        for series, count in tally.items():
            if series in batch_calls:
                batch_calls[series] += count
            elif series in known_calls:
                batch_calls[series] = count
            else:
                first = next(r for r in records if self._series_of(r) == series)
                new_key = self._call_series(batch, first)
                if new_key is not None:
                    batch_calls[new_key] += count
                else:
                    # `_call_series` counted the first record's drop; the rest drop too.
                    self.health.series_dropped["leadflow_calls_total"] += count - 1

    def _series_of(self, record: CallRecord) -> tuple[str, ...]:
        extra = tuple(record.extra[name] for name in self.extra_labels)
        return (record.set_name, record.lead_status, *extra)

    def _set_totals(self, batch: CycleBatch, set_name: str) -> SetTotals | None:
        totals = batch.sets.get(set_name)
        if totals is None:
            if set_name not in self.totals.sets:
                if len(self.totals.sets) + batch.new_sets >= self.max_series:
                    for metric in PER_SET_METRICS:
                        self.health.series_dropped[metric] += 1
                    return None
                batch.new_sets += 1
            totals = batch.sets[set_name] = SetTotals()
        return totals

    def _count(self, batch: CycleBatch, record: CallRecord) -> None:
        batch.counted += 1
        totals = self._set_totals(batch, record.set_name)
        if totals is not None:
            totals.add_call(record)
            if record.call_ts > totals.last_call_ts:
                totals.last_call_ts = record.call_ts
        key = self._call_series(batch, record)
        if key is not None:
            batch.calls[key] += 1

    def _call_series(self, batch: CycleBatch, record: CallRecord) -> tuple[str, ...] | None:
        """The record's leadflow_calls_total series, created (with its siblings at 0) if new.

        None when the metric is at its series cap: the call is then left out of this metric
        and the drop is counted.
        """
        key = self._series_of(record)
        extra = key[2:]
        if key in batch.calls or key in self.totals.calls:
            return key
        missing = [
            series
            for series in dict.fromkeys(
                (record.set_name, status, *extra) for status in (record.lead_status, *STATUSES)
            )
            if series not in batch.calls and series not in self.totals.calls
        ]
        room = self.max_series - len(self.totals.calls) - batch.new_call_series
        if room <= 0:
            self.health.series_dropped["leadflow_calls_total"] += 1
            return None
        for series in missing[:room]:
            batch.calls[series] += 0
        batch.new_call_series += min(room, len(missing))
        return key

    # -- committing ------------------------------------------------------------------------

    def commit(
        self,
        batch: CycleBatch,
        *,
        watermark: float | None,
        followed: dict[str, FollowedCall],
        active: dict[str, int] | None,
        full_mark: float | None = None,
        read_from: float | None = None,
    ) -> None:
        """Persist the cycle in one transaction, then make it visible.

        `read_from` is where this cycle's history window started; the first one committed
        is where the seen sids begin to be complete.
        """
        pending = self.prepare_commit(
            batch,
            watermark=watermark,
            followed=followed,
            active=active,
            full_mark=full_mark,
            read_from=read_from,
        )
        self.apply(pending, self.write(pending))

    # `commit` in three steps, for a caller that runs the write in a worker thread: writing a
    # catch-up's 100,000 sids takes a tenth of a second, which the event loop must not wait out.
    # Between `prepare_commit` and `apply` nothing else may stage or commit.

    def prepare_commit(
        self,
        batch: CycleBatch,
        *,
        watermark: float | None,
        followed: dict[str, FollowedCall],
        active: dict[str, int] | None,
        full_mark: float | None = None,
        read_from: float | None = None,
    ) -> PendingCommit:
        """The state after `batch`, computed without changing anything."""
        totals = self.totals.copy()
        for key, delta in batch.calls.items():
            totals.calls[key] = totals.calls.get(key, 0) + delta
        for name, delta_totals in batch.sets.items():
            existing = totals.sets.get(name)
            if existing is None:
                totals.sets[name] = delta_totals
            else:
                existing.merge(delta_totals)
        new_watermark = watermark if watermark is not None else self.watermark
        new_full_mark = full_mark if full_mark is not None else self.full_mark
        horizon = self._expiry_bucket(new_watermark, batch)
        covered_from = self.covered_from
        if covered_from is None and new_watermark is not None:
            covered_from = read_from
        if covered_from is not None and new_watermark is not None:
            covered_from = max(covered_from, float(horizon * BUCKET_SECONDS))
        followed = {
            sid: call
            for sid, call in followed.items()
            if not self.is_seen(call.sid_key, call.call_ts, batch)
        }
        return PendingCommit(
            totals=totals,
            new_seen=batch.new_seen,
            horizon=horizon,
            followed=followed,
            watermark=new_watermark,
            full_mark=new_full_mark,
            covered_from=covered_from,
            active=active,
        )

    def write(self, pending: PendingCommit) -> dict[int, set[int]]:
        """Write `pending` to the store in one transaction; returns the new seen keys as sets,
        ready for `apply`. Safe in a worker thread: it only reads `pending`, which nothing
        changes once prepared, and building a catch-up's sets is work kept off the loop too."""
        self.store.write_cycle(
            totals=pending.totals,
            new_seen=pending.new_seen,
            expire_before_bucket=pending.horizon,
            followed=pending.followed,
            watermark=pending.watermark,
            extra_labels=self.extra_labels,
            full_mark=pending.full_mark,
            covered_from=pending.covered_from,
            timezone=self.timezone,
        )
        return {bucket: set(keys) for bucket, keys in pending.new_seen.items()}

    def apply(self, pending: PendingCommit, new_keys: dict[int, set[int]]) -> None:
        """Make a written commit visible; `new_keys` is what `write` returned."""
        self.totals = pending.totals
        seen = self.seen
        for bucket, keys in new_keys.items():
            existing = seen.get(bucket)
            if existing is None:
                seen[bucket] = keys
            elif len(keys) > len(existing):
                # Merge the smaller set into the larger one: a catch-up's bucket is new keys.
                keys |= existing
                seen[bucket] = keys
            else:
                existing |= keys
        for bucket in [b for b in seen if b < pending.horizon]:
            del seen[bucket]
        self.followed = pending.followed
        self.watermark = pending.watermark
        self.full_mark = pending.full_mark
        self.covered_from = pending.covered_from
        if pending.active is not None:
            self.active = pending.active

    def dedup_floor(self) -> float | None:
        """The earliest call start a history window may reach back to without recounting.

        Sids older than the retention (or than the first window read) are not remembered, so
        a window reaching further, after a larger overlap was configured, say, would count
        those calls again.
        """
        if self.watermark is None:
            return None
        floor = float(self._expiry_bucket(self.watermark) * BUCKET_SECONDS)
        if self.covered_from is not None:
            floor = max(floor, self.covered_from)
        return floor

    def _expiry_bucket(self, watermark: float | None, batch: CycleBatch | None = None) -> int:
        """The oldest hour of seen sids kept: the retention back from the watermark, or from
        the end of the newest hour any call was seen in, whichever is earlier.

        The watermark is the host's clock: one that runs hours ahead for a while (a VM
        resumed with a stale clock, then corrected) would otherwise expire every sid, and
        the reads after its correction would count those calls again. Call start times are
        the API's clock; a call dated in the future is not taken for it (see
        `newest_call_hour_end`). Quiet hours only keep sids a little longer.
        """
        if watermark is None:
            return -(2**62)
        newest = self.newest_call_hour_end(batch, watermark)
        if newest is not None:
            watermark = min(watermark, newest)
        return bucket_of(watermark - self.retention_seconds)

    def newest_call_hour_end(
        self, batch: CycleBatch | None = None, watermark: float | None = None
    ) -> float | None:
        """The end of the newest hour a seen (or staged) call started in: by the API's clock,
        a bound the host's clock, when it runs ahead, must not be trusted past.

        Hours after the watermark's next one are left out: a call dated in the future is a bad
        date, and one such record would otherwise keep this in the future for good. (A host
        clock that runs ahead moves the watermark ahead too, so real hours are never left out.)
        """
        if watermark is None:
            watermark = self.watermark
        limit = None if watermark is None else bucket_of(watermark) + 1
        buckets = list(self.seen)
        if batch is not None:
            buckets.extend(batch.new_seen)
        newest = max((b for b in buckets if limit is None or b <= limit), default=None)
        return None if newest is None else float((newest + 1) * BUCKET_SECONDS)

    def close(self) -> None:
        self.store.close()


_CALL_TS = attrgetter("call_ts")
_SID_KEY = attrgetter("sid_key")
_SID = attrgetter("sid")
_SET_NAME = attrgetter("set_name")
_LEAD_STATUS = attrgetter("lead_status")
_EXTRA = attrgetter("extra")
_SERIES = attrgetter("set_name", "lead_status")

PER_SET_METRICS = (
    "leadflow_talk_seconds_total",
    "leadflow_call_seconds_total",
    "leadflow_talk_duration_seconds",
    "leadflow_offer_revenue_usd_total",
    "leadflow_affiliate_payout_usd_total",
    "leadflow_margin_usd",
    "leadflow_qualified_calls_total",
    "leadflow_repeat_calls_total",
    "leadflow_contested_calls_total",
    "leadflow_last_call_timestamp_seconds",
)

__all__ = [
    "PER_SET_METRICS",
    "STATUSES",
    "TALK_BUCKETS",
    "CycleBatch",
    "FollowedCall",
    "Ledger",
    "MemoryStore",
    "SetTotals",
    "Snapshot",
    "StagedSids",
    "Store",
    "Totals",
    "bucket_of",
]
