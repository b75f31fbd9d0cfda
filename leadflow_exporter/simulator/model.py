"""The traffic model: deterministic, lazily generated calls, independent of any web server.

Calls are generated one minute of start times at a time, from a random generator seeded by
(seed, minute). Any window can therefore be produced on its own, in any order, and always gives
the same calls; a week of traffic takes a few seconds, far faster than real time, which is what
alert backtests and benchmarks need.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Iterable, Iterator
from datetime import datetime
from zoneinfo import ZoneInfo

from leadflow_exporter.simulator.call import (
    AFFILIATE_CAP,
    CONNECTED,
    HANG_UP,
    NO_BUYER,
    Call,
)
from leadflow_exporter.simulator.catalog import (
    FIRST_NAMES,
    LAST_NAMES,
    SET_WEIGHTS,
    SETS,
    STATE_WEIGHTS,
    STATES,
    STREETS,
    LeadFlowSet,
)
from leadflow_exporter.simulator.scenarios import Schedule, apply_scenario

EASTERN = ZoneInfo("America/New_York")

# Longest possible call. Bounded so that "which calls end in this window" only needs to look
# this far back, and kept below the exporter's default max_call_seconds (14400).
MAX_CALL_SECONDS = 3 * 3600

# Calls per minute at the busiest time of a weekday, at volume 1.
PEAK_CALLS_PER_MINUTE = 5.0
WEEKEND_FACTOR = 0.55
# Relative arrival rate for each Eastern hour of the day: quiet nights, busy business hours.
HOURLY_CURVE: tuple[float, ...] = (
    0.06, 0.04, 0.03, 0.03, 0.04, 0.08, 0.18, 0.38, 0.65, 0.88, 1.00, 1.00,
    0.95, 0.97, 1.00, 0.96, 0.88, 0.75, 0.60, 0.48, 0.36, 0.25, 0.16, 0.10,
)  # fmt: skip
# Outside buyers' hours many calls that would connect find no open offer.
AFTER_HOURS_EXTRA_NO_BUYER = 0.35

_MINUTE_CACHE_SIZE = 40_000  # about four weeks of minutes


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 60:
        # Knuth's method underflows and slows down for large means; the normal approximation is
        # indistinguishable there.
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit = math.exp(-lam)
    k = 0
    p = rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


class TrafficModel:
    """Every call of a simulated LeadFlow account.

    ``schedule`` places traffic scenarios in time (a :class:`Schedule` or (epoch, name) pairs);
    a call gets the scenario in force at its start. ``traffic_start`` (epoch seconds) is when the
    account went live: no call starts before it.
    """

    def __init__(
        self,
        seed: int = 1,
        volume: float = 1.0,
        schedule: Schedule | Iterable[tuple[float, str]] | None = None,
        traffic_start: float | None = None,
        buyers_always_open: bool = False,
    ) -> None:
        if volume < 0:
            raise ValueError("volume must not be negative")
        self.seed = seed
        self.volume = volume
        # Buyers keep no hours: the call mix stays the daytime one at any hour (tests that
        # need a spike to stand out against a low No Buyer share, whenever they run).
        self.buyers_always_open = buyers_always_open
        self.schedule = schedule if isinstance(schedule, Schedule) else Schedule(schedule or ())
        self.traffic_start = traffic_start
        self._base_minute = functools.lru_cache(maxsize=_MINUTE_CACHE_SIZE)(self._generate)

    # -- arrivals ---------------------------------------------------------------------------

    def arrival_rate(self, epoch: float) -> float:
        """Expected calls per minute at ``epoch``."""
        local = datetime.fromtimestamp(epoch, EASTERN)
        hour = local.hour + local.minute / 60.0
        lo = HOURLY_CURVE[int(hour) % 24]
        hi = HOURLY_CURVE[(int(hour) + 1) % 24]
        level = lo + (hi - lo) * (hour - int(hour))
        if local.weekday() >= 5:
            level *= WEEKEND_FACTOR
        return PEAK_CALLS_PER_MINUTE * self.volume * level

    @staticmethod
    def buyers_open(epoch: float) -> bool:
        local = datetime.fromtimestamp(epoch, EASTERN)
        if local.weekday() >= 5:
            return 9 <= local.hour < 18
        return 8 <= local.hour < 21

    # -- generation -------------------------------------------------------------------------

    def _generate(self, minute: int) -> tuple[Call, ...]:
        # A string seed is hashed with SHA-512 by random.Random, so it is stable across
        # processes regardless of PYTHONHASHSEED.
        rng = random.Random(f"leadflow-sim|{self.seed}|{minute}")
        base = minute * 60
        count = _poisson(rng, self.arrival_rate(base + 30))
        starts = sorted(base + rng.randrange(60) for _ in range(count))
        is_open = self.buyers_always_open or self.buyers_open(base)
        return tuple(
            self._make_call(rng, minute, index, start, is_open)
            for index, start in enumerate(starts)
        )

    def _make_call(
        self, rng: random.Random, minute: int, index: int, start: int, is_open: bool
    ) -> Call:
        # The minute and index lead the sid so a sid lookup needs to generate one minute only.
        sid = f"{minute:08x}{index:04x}{rng.getrandbits(80):020x}"
        lf_set: LeadFlowSet = rng.choices(SETS, SET_WEIGHTS)[0]
        affiliate = rng.choices(lf_set.affiliates, [a.weight for a in lf_set.affiliates])[0]
        state, area, zip_prefix, cities = rng.choices(STATES, STATE_WEIGHTS)[0]
        caller_id = f"{area}5550{rng.randrange(100, 200)}"
        zipcode = f"{zip_prefix}{rng.randrange(100):02d}"
        entered_zip = zipcode if lf_set.prompts_zip and rng.random() < 0.8 else None
        looked_up = lf_set.reverse_lookup and rng.random() < 0.7

        no_buyer = lf_set.no_buyer_share + (0.0 if is_open else AFTER_HOURS_EXTRA_NO_BUYER)
        u = rng.random()
        if u < lf_set.hang_up_share:
            status = HANG_UP
        elif u < lf_set.hang_up_share + lf_set.affiliate_cap_share:
            status = AFFILIATE_CAP
        elif u < lf_set.hang_up_share + lf_set.affiliate_cap_share + no_buyer:
            status = NO_BUYER
        else:
            status = CONNECTED

        offer = None
        talk = 0
        if status == HANG_UP:
            ivr = rng.randint(2, 35)
        elif status == CONNECTED:
            ivr = rng.randint(8, 40)
            offer = rng.choices(lf_set.offers, [o.weight for o in lf_set.offers])[0]
            talk = self._talk_seconds(rng)
            talk = min(talk, MAX_CALL_SECONDS - 1 - ivr)
        else:
            # IVR, then a recorded refusal message.
            ivr = rng.randint(8, 30) + 12

        reroute = status == CONNECTED and rng.random() < 0.03
        repeat = rng.random() < 0.06
        offer_qualified = offer is not None and talk >= offer.buffer_seconds and not reroute
        affiliate_qualified = (
            status == CONNECTED and talk >= affiliate.buffer_seconds and not repeat
        )
        contested = offer_qualified and rng.random() < 0.03
        return Call(
            sid=sid,
            start=start,
            set_id=lf_set.set_id,
            set_name=lf_set.name,
            affiliate=affiliate.name,
            affiliate_number=affiliate.number,
            phone_label=affiliate.phone_label,
            caller_id=caller_id,
            lead_status=status,
            ivr_seconds=ivr,
            talk_seconds=talk,
            advertiser=offer.advertiser if offer else None,
            offer=offer.name if offer else None,
            transfer_number=offer.transfer_number if offer else None,
            entered_zip=entered_zip,
            lf_state=state,
            first_name=rng.choice(FIRST_NAMES) if looked_up else None,
            last_name=rng.choice(LAST_NAMES) if looked_up else None,
            street_address=f"{rng.randrange(100, 9999)} {rng.choice(STREETS)}"
            if looked_up
            else None,
            city=rng.choice(cities) if looked_up else None,
            state=state if looked_up else None,
            zipcode=zipcode if looked_up else None,
            reroute=reroute,
            repeat_affiliate_caller=repeat,
            offer_qualified=offer_qualified,
            offer_price_cents=offer.price_cents if offer and offer_qualified else 0,
            affiliate_qualified=affiliate_qualified,
            affiliate_price_cents=affiliate.price_cents if affiliate_qualified else 0,
            contested=contested,
            recording_link=f"https://recordings.leadflow.example/{sid}.mp3"
            if status == CONNECTED
            else None,
        )

    @staticmethod
    def _talk_seconds(rng: random.Random) -> int:
        r = rng.random()
        if r < 0.12:
            # Callers who drop right after the transfer: never qualify.
            return rng.randint(3, 59)
        if r < 0.965:
            return max(30, min(3600, int(rng.lognormvariate(math.log(170), 0.75))))
        if r < 0.992:
            return rng.randint(900, 3600)
        return rng.randint(3600, MAX_CALL_SECONDS - 120)

    # -- queries ----------------------------------------------------------------------------

    def calls_in_minute(self, minute: int) -> list[Call]:
        """Calls starting in ``[minute*60, minute*60 + 60)``, with their scenario applied."""
        calls = self._base_minute(minute)
        if self.traffic_start is not None:
            calls = tuple(c for c in calls if c.start >= self.traffic_start)
        return [apply_scenario(c, self.schedule.at(c.start), self.seed) for c in calls]

    def calls_between(self, start: float, end: float) -> Iterator[Call]:
        """Calls whose start is in ``[start, end)``, ordered by (start, sid)."""
        if self.traffic_start is not None:
            start = max(start, self.traffic_start)
        if end <= start:
            return
        for minute in range(math.floor(start / 60), math.ceil(end / 60)):
            for call in self.calls_in_minute(minute):
                if start <= call.start < end:
                    yield call

    def calls_ending_between(self, since: float, until: float) -> Iterator[Call]:
        """Calls whose end is in ``(since, until]``: those that finished in that window."""
        for call in self.calls_between(since - MAX_CALL_SECONDS, until + 1):
            if since < call.end <= until:
                yield call

    def active_at(self, t: float) -> list[Call]:
        return [c for c in self.calls_between(t - MAX_CALL_SECONDS, t + 1) if c.is_active(t)]

    def find(self, sid: str) -> Call | None:
        try:
            minute = int(sid[:8], 16)
        except ValueError:
            return None
        if len(sid) != 32:
            return None
        for call in self.calls_in_minute(minute):
            if call.sid == sid:
                return call
        return None
