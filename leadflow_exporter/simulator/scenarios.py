"""Scenarios: what goes wrong, for whom, and from when.

Traffic scenarios rewrite the outcome of calls that *start* while they are in force, so a call
keeps one outcome for its whole life and the ground truth can be recomputed at any time. API
scenarios (outage, rate limiting, slowness) leave the traffic alone and change how requests are
answered. Every random choice is a hash of (seed, sid, purpose): the same seed gives the same
effects whatever order calls are generated or served in.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, replace

from leadflow_exporter.simulator.call import (
    AFFILIATE_CAP,
    CONNECTED,
    MALFORMED_BAD_DATE,
    MALFORMED_NO_SID,
    NO_BUYER,
    Call,
)
from leadflow_exporter.simulator.catalog import (
    AFFILIATE_CAP_SPIKE_AFFILIATE,
    NO_BUYER_SPIKE_SET_ID,
    SETS_BY_ID,
)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    # True when the scenario changes how requests are answered rather than what calls happen.
    affects_api: bool = False


# The page size of the `own-page-size` scenario: smaller than the exporter's default 250, so a
# client that takes the first page shorter than it asked for as the last one loses calls.
OWN_PAGE_SIZE = 100

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("steady", "Normal traffic, clean records, a healthy API."),
        Scenario(
            "no-buyer-spike",
            f"Most calls of set {NO_BUYER_SPIKE_SET_ID} that would have connected find no buyer.",
        ),
        Scenario(
            "affiliate-cap-spike",
            f"Affiliate {AFFILIATE_CAP_SPIKE_AFFILIATE!r} hits its cap: most of its calls are "
            "refused with Affiliate Cap.",
        ),
        Scenario(
            "api-outage",
            "Every API request fails with a 5xx status, some with HTML bodies.",
            affects_api=True,
        ),
        Scenario(
            "rate-limited",
            "A share of API requests is refused with 429 and Retry-After.",
            affects_api=True,
        ),
        Scenario("slow", "API responses are delayed by slow_seconds.", affects_api=True),
        Scenario(
            "truncated-bodies",
            "A share of successful API responses is cut off mid-JSON: some with an honest "
            "Content-Length, some by closing the connection before the announced length.",
            affects_api=True,
        ),
        Scenario(
            "own-page-size",
            f"The API ignores page_size and serves pages of {OWN_PAGE_SIZE} records.",
            affects_api=True,
        ),
        Scenario(
            "messy-data",
            "Records use every documented value variant, carry unknown fields, miss optional "
            "fields; a few are malformed and some are served twice.",
        ),
    )
}

NO_BUYER_SPIKE_SHARE = 0.85
AFFILIATE_CAP_SPIKE_SHARE = 0.9
MESSY_MALFORMED_SHARE = 0.02
MESSY_DUPLICATE_SHARE = 0.03
# Seconds of recorded message a refused caller hears before the line drops.
_REFUSAL_MESSAGE_SECONDS = 12


def unit(seed: int, key: str, purpose: str) -> float:
    """A uniform number in [0, 1) fixed by its inputs (stable across processes)."""
    digest = hashlib.blake2b(f"{seed}|{key}|{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _refused(call: Call, status: str) -> Call:
    return replace(
        call,
        lead_status=status,
        ivr_seconds=min(call.ivr_seconds, 45) + _REFUSAL_MESSAGE_SECONDS,
        talk_seconds=0,
        advertiser=None,
        offer=None,
        transfer_number=None,
        reroute=False,
        offer_qualified=False,
        offer_price_cents=0,
        affiliate_qualified=False,
        affiliate_price_cents=0,
        contested=False,
        recording_link=None,
    )


# Traffic scenarios that can be aimed at one set and given another size (see targeted()).
TARGETABLE = ("no-buyer-spike", "affiliate-cap-spike")


def targeted(name: str, *, set_id: int | None = None, share: float | None = None) -> str:
    """The name of spike scenario ``name`` aimed at one set and/or with another size.

    ``"no-buyer-spike:set=103,share=0.5"``: half of the set's calls that would connect find no
    buyer. ``"affiliate-cap-spike:set=104,share=0.6"``: 60 % of the set's calls (from any of
    its affiliates) are refused with Affiliate Cap. Without ``set`` the spike hits its usual
    target (set 102 / affiliate ClickSpring Media); without ``share`` its usual share. Such
    names go wherever a scenario name does in a :class:`Schedule` (backtests place spikes of
    different sets and sizes with them); the simulator's admin endpoint takes plain names only.
    """
    if name not in TARGETABLE:
        raise ValueError(f"scenario {name!r} cannot be targeted; only {', '.join(TARGETABLE)}")
    params = []
    if set_id is not None:
        params.append(f"set={set_id}")
    if share is not None:
        params.append(f"share={share:g}")
    full = f"{name}:{','.join(params)}" if params else name
    parse_scenario(full)  # validates
    return full


def parse_scenario(name: str) -> tuple[str, dict[str, float]]:
    """Split a scenario name into its base name and targeting parameters; ValueError if bad."""
    base, _, rest = name.partition(":")
    if base not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    params: dict[str, float] = {}
    if not rest:
        return base, params
    if base not in TARGETABLE:
        raise ValueError(f"scenario {base!r} takes no parameters: {name!r}")
    for item in rest.split(","):
        key, _, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"bad parameter {item!r} in scenario {name!r}") from None
        if key == "set" and int(number) == number and int(number) in SETS_BY_ID:
            params["set"] = int(number)
        elif key == "share" and 0 < number <= 1:
            params["share"] = number
        else:
            raise ValueError(f"bad parameter {item!r} in scenario {name!r}")
    return base, params


def apply_scenario(call: Call, name: str, seed: int) -> Call:
    """The call as it happens when it starts while scenario ``name`` is in force."""
    base, params = parse_scenario(name)
    if base == "no-buyer-spike":
        if (
            call.set_id == params.get("set", NO_BUYER_SPIKE_SET_ID)
            and call.lead_status == CONNECTED
            and unit(seed, call.sid, "no-buyer-spike") < params.get("share", NO_BUYER_SPIKE_SHARE)
        ):
            call = _refused(call, NO_BUYER)
    elif base == "affiliate-cap-spike":
        hit = (
            call.set_id == params["set"]
            if "set" in params
            else call.affiliate == AFFILIATE_CAP_SPIKE_AFFILIATE
        )
        if (
            hit
            and call.lead_status != AFFILIATE_CAP
            and unit(seed, call.sid, "affiliate-cap-spike")
            < params.get("share", AFFILIATE_CAP_SPIKE_SHARE)
        ):
            call = _refused(call, AFFILIATE_CAP)
    elif name == "messy-data":
        u = unit(seed, call.sid, "malformed")
        malformed = None
        if u < MESSY_MALFORMED_SHARE:
            malformed = MALFORMED_NO_SID if u < MESSY_MALFORMED_SHARE / 2 else MALFORMED_BAD_DATE
        duplicated = unit(seed, call.sid, "duplicate") < MESSY_DUPLICATE_SHARE
        call = replace(call, malformed=malformed, duplicated=duplicated)
    if name != call.scenario:
        call = replace(call, scenario=name)
    return call


class Schedule:
    """Which scenario is in force when: a list of (from_epoch, name), each until the next.

    Before the first entry the traffic is ``steady``. Backtests build one up front to place
    spikes at given times; the running simulator appends to its own as scenarios are switched.
    """

    def __init__(self, entries: Iterable[tuple[float, str]] = ()) -> None:
        self._starts: list[float] = []
        self._names: list[str] = []
        for at, name in sorted(entries, key=lambda e: e[0]):
            self.switch(at, name)

    def switch(self, at: float, name: str) -> None:
        parse_scenario(name)  # ValueError for an unknown name or bad targeting
        if self._starts and at < self._starts[-1]:
            raise ValueError("scenario switches must be appended in time order")
        if self._starts and at == self._starts[-1]:
            self._names[-1] = name
            return
        self._starts.append(at)
        self._names.append(name)

    def at(self, t: float) -> str:
        i = bisect.bisect_right(self._starts, t) - 1
        return self._names[i] if i >= 0 else "steady"

    def entries(self) -> list[tuple[float, str]]:
        return list(zip(self._starts, self._names, strict=True))

    def is_steady_between(self, start: float, end: float) -> bool:
        """True when no traffic-changing scenario is in force anywhere in [start, end)."""
        if not self._starts:
            return True
        names = {self.at(start)}
        lo = bisect.bisect_right(self._starts, start)
        hi = bisect.bisect_left(self._starts, end)
        names.update(self._names[lo:hi])
        bases = {parse_scenario(n)[0] for n in names}
        return all(n == "steady" or SCENARIOS[n].affects_api for n in bases)
