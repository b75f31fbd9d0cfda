"""The poll loop: history windows, live calls, and follow-ups for calls that left the live list."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from leadflow_exporter.client import LeadFlowClient, QueryFailed, QueryResult
from leadflow_exporter.clock import Clock
from leadflow_exporter.config import PollConfig
from leadflow_exporter.health import Health
from leadflow_exporter.ledger import CycleBatch, FollowedCall, Ledger, PendingCommit
from leadflow_exporter.records import CallRecord
from leadflow_exporter.timeutil import SEVEN_DAYS, slices

log = structlog.get_logger("leadflow_exporter.poller")

# Query windows end this far in the future. No call starts in the future, so nothing extra comes
# back, but a window that ends exactly "now" misses calls when DialogTech's clock runs ahead of
# ours, and in the repeated hour of a DST fall-back the naive local end date is read as the
# first occurrence: an hour early. A call missing from the active list for that reason would
# look finished and be counted with its partial values.
QUERY_END_MARGIN_SECONDS = 3900.0
# Records staged between returns to the event loop (a couple of milliseconds of work).
STAGE_CHUNK = 2000
# A cheap cycle's window reaches this many poll intervals back before the watermark.
CHEAP_WINDOW_INTERVALS = 2
# Records kept free on a page planned from counts: a window is sized to what the exporter has
# already read there plus the calls that left the live list; a few calls may show up late.
PAGE_SLACK = 8


@dataclass
class CycleReport:
    ok: bool = True
    counted: int = 0
    baseline: int = 0
    duplicates: int = 0
    records: Counter[str] = field(default_factory=Counter)
    invalid: Counter[str] = field(default_factory=Counter)
    followups: int = 0
    abandoned: int = 0
    errors: list[str] = field(default_factory=list)
    watermark: float | None = None
    full_overlap: bool = False
    window_start: float | None = None


class Poller:
    def __init__(
        self,
        poll: PollConfig,
        client: LeadFlowClient,
        ledger: Ledger,
        health: Health,
        clock: Clock,
        *,
        requests_per_minute: int,
        on_cycle: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.poll = poll
        self.client = client
        self.ledger = ledger
        self.health = health
        self.clock = clock
        self.on_cycle = on_cycle
        # Follow-ups must not starve the next cycle's history query of the rate budget.
        self.max_followups = max(1, requests_per_minute // 3)
        self._set_ids: tuple[int | None, ...] = poll.set_ids or (None,)
        # Overdue followed calls already asked for by sid once: the next miss gives up on them.
        self._last_look: set[str] = set()
        # Consecutive live-call polls each followed call was missing from. The live list
        # changes while it is paged through, so one miss can be a call that shifted to an
        # already-read page; two in a row mean it ended.
        self._misses: dict[str, int] = {}
        # Sids seen live before the baseline was read (empty once it was).
        self._baseline_live: set[str] = set()
        # The read schedule. A full read covers [previous full read - overlap, now]: a call
        # never seen in progress that shows up in history up to `overlap_seconds` late is
        # found by the next one, exactly as when every cycle read the whole overlap, only
        # counted a few cycles later. The cycles between read [watermark - 2 intervals, now]
        # (one page at most traffic), reaching back further only as far as the calls that
        # just left the live list, when that costs fewer requests than their sid queries.
        # 1 reads the whole overlap every cycle.
        self.full_every = poll.full_overlap_every
        # `now` of this cycle's full read once it completed, for the ledger to commit.
        self._full_read: float | None = None
        # History ranges this cycle read (start, end; the short window even when its read
        # failed, as its calls are looked for again next cycle): a call that left the live
        # list and starts in none of them was not read, and needs a sid query.
        self._read: list[tuple[float, float]] = []
        # Start times of the finished calls read lately, by sid key: how many records a
        # history window over a past range returns is what was read there before plus the
        # calls that left the live list since. Complete from `_known_from` on.
        self._starts: dict[int, float] = {}
        self._horizon = -math.inf
        self._known_from: float | None = None
        # Calls the last cycle counted without having seen them live: about how many the next
        # short window returns that the planning cannot know of.
        self._fresh = 0

    # -- one cycle ---------------------------------------------------------------------------

    async def _commit(self, pending: PendingCommit) -> None:
        """Write the cycle in a worker thread, then make it visible.

        Writing a catch-up's sids takes long enough to hold up scrapes and health checks, so it
        runs off the event loop. Once the transaction has started it is seen through: a stop
        that cancels the cycle meanwhile waits for it and applies it, so what is counted in
        memory is always what is in the file, and the file is never closed under a write.
        """
        write = asyncio.ensure_future(asyncio.to_thread(self.ledger.write, pending))
        try:
            new_keys = await asyncio.shield(write)
        except asyncio.CancelledError:
            # However often the cycle is cancelled (a stop and a reload can each cancel it).
            while not write.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([write])
            error = write.exception()
            if error is None:
                self.ledger.apply(pending, write.result())
            else:
                log.error("commit_failed", error=f"{type(error).__name__}: {error}")
            raise
        self.ledger.apply(pending, new_keys)

    async def run_cycle(self) -> CycleReport:
        start_mono = self.clock.monotonic()
        now = self.clock.now()
        report = CycleReport()
        batch = CycleBatch()
        followed = dict(self.ledger.followed)
        active_counts: dict[str, int] | None = None
        active_sids: set[str] = set()

        if self.poll.active:
            active_counts, active_sids = await self._poll_active(now, followed, report)

        counting = self.ledger.has_baseline
        # Every call seen live since the start, not only at this poll: when the first history
        # read fails, the calls live at the first poll that end before the retry must still
        # be counted, not recorded as the baseline.
        self._baseline_live = set() if counting else set(followed) | active_sids
        # The followed calls that just left (or are still missing from) the live list, by start
        # time, and whether this is the second live poll in a row they are missing from: those
        # must be read this cycle (by a window or by sid), the others may wait for the next.
        departed: list[tuple[float, bool]] = []
        departed_calls: list[FollowedCall] = []
        if active_counts is not None:
            recent = 2 * self.poll.interval_seconds
            for sid, call in followed.items():
                if sid in active_sids or self.ledger.is_seen(call.sid_key, call.call_ts):
                    continue
                due = self._misses.get(sid, 0) >= 1 and now - call.last_active <= recent
                departed.append((call.call_ts, due))
                departed_calls.append(call)
        watermark = await self._poll_history(now, batch, report, count=counting, departed=departed)

        if active_counts is not None:
            await self._follow_up(now, followed, active_sids, batch, report)

        await self._commit(
            self.ledger.prepare_commit(
                batch,
                watermark=watermark,
                followed=followed,
                active=active_counts,
                full_mark=self._full_read,
                read_from=report.window_start,
            )
        )
        report.counted = batch.counted
        # Calls counted this cycle that were never seen live: the next short window may find
        # as many that are not yet known.
        self._fresh = batch.counted - sum(
            1 for call in departed_calls if self.ledger.is_seen(call.sid_key, call.call_ts)
        )
        report.baseline = batch.baseline
        report.duplicates = batch.duplicates
        report.watermark = self.ledger.watermark

        duration = self.clock.monotonic() - start_mono
        health = self.health
        health.cycles += 1
        health.last_cycle_ok = report.ok
        health.last_cycle_end = self.clock.now()
        health.last_cycle_duration = duration
        health.last_cycle_error = "; ".join(report.errors)
        if report.ok:
            health.ready = True
            # A bad record stays within reach of the reads for as long as a call lasts, plus
            # the span a finished call's start is read again over.
            poll = self.poll
            health.bad_data_seen.cycle_done(
                math.ceil((poll.max_call_seconds + self._reread_span) / poll.interval_seconds)
            )
        log.info(
            "poll_cycle",
            ok=report.ok,
            duration_seconds=round(duration, 3),
            counted=report.counted,
            baseline=report.baseline,
            duplicates=report.duplicates,
            records=dict(report.records),
            invalid=dict(report.invalid),
            followups=report.followups,
            abandoned=report.abandoned,
            tracked=self.ledger.tracked(),
            followed=len(self.ledger.followed),
            errors=report.errors or None,
        )
        return report

    async def _run_query(
        self, kind: str, run: Callable[[], object], report: CycleReport
    ) -> QueryResult | None:
        status = self.health.queries[kind]
        started = self.clock.monotonic()
        status.last_attempt = self.clock.now()
        try:
            result: QueryResult = await run()  # type: ignore[misc]
        except QueryFailed as exc:
            status.ok = False
            status.last_error = exc.reason
            status.last_duration = self.clock.monotonic() - started
            report.ok = False
            report.errors.append(f"{kind}: {exc.reason}")
            return None
        status.ok = True
        status.last_error = ""
        status.last_success = self.clock.now()
        status.last_duration = self.clock.monotonic() - started
        status.last_records = result.raw_count
        self.health.records[kind] += result.raw_count
        seen = self.health.bad_data_seen
        invalid = seen.first(result.invalid_keys)
        self.health.invalid_records.update(invalid)
        self.health.invalid_values.update(seen.first(result.bad_value_keys))
        report.records[kind] += result.raw_count
        report.invalid.update(invalid)
        return result

    def _api_bounded(self, now: float) -> float:
        """`now`, but no later than the end of the hour the newest call seen started in."""
        newest = self.ledger.newest_call_hour_end()
        return now if newest is None else min(now, newest)

    async def _poll_active(
        self, now: float, followed: dict[str, FollowedCall], report: CycleReport
    ) -> tuple[dict[str, int] | None, set[str]]:
        counts: Counter[str] = Counter()
        sids: set[str] = set()
        results: list[QueryResult] = []
        # From the API's time rather than the host's: a host clock hours ahead would ask for
        # calls that started in the future, and every live call would look ended.
        start = self._api_bounded(now) - self.poll.max_call_seconds
        for set_id in self._set_ids:
            query = self.client.window_query(
                "active",
                start,
                now + QUERY_END_MARGIN_SECONDS,
                True,
                set_id,
            )
            result = await self._run_query("active", lambda q=query: self.client.fetch(q), report)
            if result is None:
                return None, set()
            results.append(result)
        for result in results:
            for record in result.records:
                if record.sid in sids:
                    continue
                sids.add(record.sid)
                counts[record.set_name] += 1
                call = followed.get(record.sid)
                if call is None:
                    followed[record.sid] = FollowedCall(
                        record.sid, record.sid_key, record.set_name, record.call_ts, now, now
                    )
                else:
                    call.last_active = now
        # Sets seen before but idle now must read 0, not keep their last count.
        for name in self.ledger.totals.sets:
            counts.setdefault(name, 0)
        return dict(counts), sids

    async def _poll_history(
        self,
        now: float,
        batch: CycleBatch,
        report: CycleReport,
        *,
        count: bool,
        departed: list[tuple[float, bool]] | None = None,
    ) -> float | None:
        """Read this cycle's history window; returns how far it read without a gap."""
        watermark = self.ledger.watermark
        full_mark = self.ledger.full_mark
        overlap = self.poll.overlap_seconds
        interval = self.poll.interval_seconds
        self._full_read = None
        self._read = []
        stepped_back = watermark is not None and now < watermark
        if stepped_back:
            # The host clock went back (it had run ahead). Every window would start in the
            # future and read nothing until the clock caught up; read the whole overlap up to
            # now instead, and let this cycle's commit bring the marks back to now.
            log.warning(
                "clock_stepped_back",
                seconds=round(watermark - now, 3),
                detail="history read again over the overlap up to now",
            )
            watermark = now
            full_mark = None if full_mark is None else min(full_mark, now)
        # By time rather than by a count of cycles, so that a restart or failed cycles keep
        # the schedule (half an interval of slack for timer jitter).
        full = (
            watermark is None
            or full_mark is None
            or stepped_back
            or now - full_mark >= (self.full_every - 0.5) * interval
        )
        full_start: float | None = None
        if watermark is None:
            # No saved state: the first window is a baseline of the overlap.
            start = now - overlap
        else:
            # Where a full read starts: the previous full read (or the watermark) less the
            # overlap; the cycles between read the last intervals only.
            full_start = min(full_mark if full_mark is not None else watermark, watermark) - overlap
            start = full_start if full else watermark - CHEAP_WINDOW_INTERVALS * interval
        floor = self.ledger.dedup_floor()
        extra: list[tuple[float, float, float]] = []
        if departed and full_start is not None and not full:
            # Never before the full read's start, which is never before the first window read
            # (the baseline), nor before what the seen sids remember: calls that ended before
            # that must not be counted.
            reach = full_start
            if floor is not None:
                reach = max(reach, floor)
            start, extra = self._plan(now, start, departed, reach)
        if floor is not None and start < floor:
            start = floor
        report.full_overlap = full
        report.window_start = start
        self._prune(now)

        async def stage(records: list[CallRecord]) -> None:
            await self._stage(batch, records, count=count)

        # As before a failed read too: its calls are looked for again next cycle.
        self._read.append((start, math.inf))
        reached: float | None = None
        for slice_start, slice_end in slices(start, now, SEVEN_DAYS):
            query_end = slice_end + QUERY_END_MARGIN_SECONDS if slice_end == now else slice_end
            for set_id in self._set_ids:
                query = self.client.window_query(
                    "history", slice_start, query_end, False, set_id, floor=floor
                )
                # Pages are staged as they arrive. Finished calls of a slice that fails half
                # way are staged too: each is counted once whichever query finds it, and the
                # watermark still stops before the slice, so it is read again.
                result = await self._run_query(
                    "history", lambda q=query: self.client.fetch(q, stage), report
                )
                if result is None:
                    return reached
            # Everything up to slice_end was read: the next window may start from here.
            reached = slice_end
        if self._known_from is None:
            self._known_from = start
        if full:
            self._full_read = now
        # Past ranges holding calls that left the live list, read instead of a sid query each.
        for query_start, window_start, window_end in extra:
            ok = True
            for set_id in self._set_ids:
                query = self.client.window_query(
                    "history", query_start, window_end + 1, False, set_id, floor=query_start
                )
                result = await self._run_query(
                    "history", lambda q=query: self.client.fetch(q, stage), report
                )
                ok = ok and result is not None
            if ok:
                self._read.append((window_start, window_end))
        return reached

    def _plan(
        self, now: float, start: float, departed: list[tuple[float, bool]], reach: float
    ) -> tuple[float, list[tuple[float, float, float]]]:
        """Where the short window starts, and which past ranges to read besides it.

        `departed` holds the start times of calls that left the live list, each marked
        whether it must be read this cycle. Every history window returns all the finished
        calls that started in it, so its pages are counted from the calls read there before
        (`_starts`) plus the departed ones. The short window reaches back as far as its first
        page allows; a call it leaves out that must be read now is read by a window of one
        page over a past range (with whatever other departed calls start in it) when that
        takes no more requests than asking for each of them by sid. Calls that may wait are
        read next cycle, when the ones that left the live list meanwhile can share the
        window. Ranges before `_known_from` (not yet read by this process) are left to the
        sid queries.

        A past range comes as (date to query from, start of the range read, its end). The
        query starts a second early, whether or not the API's start bound is inclusive, but
        never before `reach`: a call that started before it may have ended before the
        exporter started, or have been counted already and its sid forgotten.
        """
        known_from = self._known_from
        if known_from is None:
            return start, []
        reach = max(reach, known_from)
        page = self.client.api.page_size
        points = sorted([*self._starts.values(), *(ts for ts, _ in departed)])
        # The short window also returns the calls that finished since the last cycle without
        # ever being seen live: about as many as the last cycle counted, at most.
        fresh = self._fresh
        limit = page - PAGE_SLACK

        def records(window_start: float, window_end: float) -> int:
            return bisect.bisect_right(points, window_end) - bisect.bisect_left(
                points, window_start
            )

        older = sorted((d for d in departed if d[0] < start and d[0] >= reach), reverse=True)
        for ts, _ in older:
            if records(ts, now) + fresh > limit:
                break
            start = ts
        need = [ts for ts, due in older if due and ts < start]
        sets = len(self._set_ids)
        # Past naive local dates in or near the repeated hour of a DST fall-back may be read an
        # hour off (the full and short windows end an hour ahead for that reason): sid queries.
        # A window of one page must hold at least two calls to save a request; with a page of
        # PAGE_SLACK + 1 records or fewer (a small `api.page_size`) there is no room: sid queries.
        if not need or limit < 2 or self.client.falls_back_within(reach - 3600, start + 3600):
            return start, []
        windows: list[tuple[float, float, float]] = []
        # Newest first: a window ends at the newest call not yet covered and reaches back one
        # page; then it is slid as far forward as the page allows while still reaching its
        # oldest call, over calls that may wait (they would need a window next cycle).
        newest = start
        while need:
            end = math.floor(need[0]) + 1
            hi = bisect.bisect_right(points, end)
            lo = max(hi - limit, 0)
            window_start = max(reach, math.floor(points[lo - 1]) + 1 if lo > 0 else reach)
            window_start = min(window_start, math.floor(need[0]))
            covered = [ts for ts in need if ts >= window_start]
            need = need[len(covered) :]
            window_start = max(math.floor(covered[-1]), reach)
            first = bisect.bisect_left(points, window_start)
            if first + limit < len(points):
                end = max(end, min(newest, math.floor(points[first + limit]) - 1))
            else:
                end = max(end, math.floor(newest))
            also = sum(1 for ts, due in older if not due and window_start <= ts <= end)
            if len(covered) > sets or (len(covered) == sets and also):
                windows.append((max(window_start - 1, reach), window_start, end))
                newest = window_start
        return start, windows

    @property
    def _reread_span(self) -> float:
        """How far back from now a window `_plan` may place starts (the full read's)."""
        return (
            self.poll.overlap_seconds
            + (self.full_every + CHEAP_WINDOW_INTERVALS + 2) * self.poll.interval_seconds
        )

    def _prune(self, now: float) -> None:
        """Forget the start times before any window `_plan` may place (the full read's)."""
        horizon = now - self._reread_span
        if self._known_from is not None and self._known_from < horizon:
            self._known_from = horizon
        self._horizon = horizon
        stale = [key for key, ts in self._starts.items() if ts < horizon]
        for key in stale:
            del self._starts[key]

    def _remember(self, records: list[CallRecord]) -> None:
        horizon = self._horizon
        self._starts.update((r.sid_key, r.call_ts) for r in records if r.call_ts >= horizon)

    def _reads(self, call_ts: float) -> bool:
        """Whether a history window of this cycle read the calls that start at `call_ts`."""
        return any(lo <= call_ts <= hi for lo, hi in self._read)

    async def _stage(self, batch: CycleBatch, records: list[CallRecord], *, count: bool) -> None:
        """`ledger.add`, a slice at a time: a catch-up query can return a hundred thousand
        records, and staging them in one go would hold up scrapes for a tenth of a second."""
        self._remember(records)
        if not count and self._baseline_live:
            # The baseline records what ended before the first poll; a call that was live at
            # that poll and ended since is counted, as it would have been a cycle later.
            live = [r for r in records if r.sid in self._baseline_live]
            if live:
                self.ledger.add(batch, live, count=True)
                records = [r for r in records if r.sid not in self._baseline_live]
        for first in range(0, len(records), STAGE_CHUNK):
            if first:
                await asyncio.sleep(0)
            self.ledger.add(batch, records[first : first + STAGE_CHUNK], count=count)

    async def _follow_up(
        self,
        now: float,
        followed: dict[str, FollowedCall],
        active_sids: set[str],
        batch: CycleBatch,
        report: CycleReport,
    ) -> None:
        self._last_look.intersection_update(followed)
        self._misses = {sid: n for sid, n in self._misses.items() if sid in followed}
        overdue_after = self.poll.max_call_seconds + self.poll.overlap_seconds
        # How old a call is, by a clock the host cannot run far ahead of the API's: a host
        # clock hours ahead would otherwise give up on every followed call at once.
        age_now = self._api_bounded(now)
        due: list[FollowedCall] = []
        for sid, call in list(followed.items()):
            if sid in active_sids or self.ledger.is_seen(call.sid_key, call.call_ts, batch):
                self._misses.pop(sid, None)
                continue
            misses = self._misses[sid] = self._misses.get(sid, 0) + 1
            if age_now - call.call_ts > overdue_after:
                if sid not in self._last_look:
                    # Overdue, e.g. it finished while the exporter was down: one last look by
                    # sid before giving up, or a restart after downtime would lose it.
                    due.append(call)
                    continue
                # Never showed up finished within the longest call we follow: give up on it.
                self._last_look.discard(sid)
                del followed[sid]
                self.health.followups_abandoned += 1
                report.abandoned += 1
                log.warning(
                    "followup_abandoned",
                    set_name=call.set_name,
                    age_seconds=round(age_now - call.call_ts),
                )
                continue
            # A call inside a history window of this cycle shows up there once finished; a sid
            # query is needed only for calls that started before the windows, or that went
            # missing from both lists for longer than a cycle.
            if misses < 2:
                continue
            missing_for = now - call.last_active
            if not self._reads(call.call_ts) or missing_for > 2 * self.poll.interval_seconds:
                due.append(call)
        due.sort(key=lambda c: c.call_ts)
        for call in due[: self.max_followups]:
            query = self.client.sid_query(call.sid)
            result = await self._run_query("sid", lambda q=query: self.client.fetch(q), report)
            if result is None:
                continue
            if age_now - call.call_ts > overdue_after:
                self._last_look.add(call.sid)
            report.followups += 1
            records = [r for r in result.records if r.sid == call.sid]
            self._remember(records)
            self.ledger.add(batch, records, count=True)

    # -- the loop --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every interval until `stop` is set; a failing cycle never ends the loop."""
        while not stop.is_set():
            started = self.clock.monotonic()
            try:
                await self.run_cycle()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Keep serving the last good totals; the next cycle re-reads the same window.
                self.health.last_cycle_ok = False
                self.health.last_cycle_error = f"internal: {type(exc).__name__}"
                log.exception("poll_cycle_crashed")
            if self.on_cycle is not None:
                try:
                    await self.on_cycle()
                except Exception:
                    log.exception("render_failed")
            delay = self.poll.interval_seconds - (self.clock.monotonic() - started)
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
