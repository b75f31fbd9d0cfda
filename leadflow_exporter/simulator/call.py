"""One simulated call: its fixed outcome, and what it looks like at any moment of its life."""

from __future__ import annotations

from dataclasses import dataclass

# Status strings exactly as the API spells them, and the snake_case form the exporter uses.
CONNECTED = "Connected"
AFFILIATE_CAP = "Affiliate Cap"
NO_BUYER = "No Buyer"
HANG_UP = "Hang Up"
LEAD_STATUSES: tuple[str, ...] = (CONNECTED, AFFILIATE_CAP, NO_BUYER, HANG_UP)
STATUS_KEYS: dict[str, str] = {
    CONNECTED: "connected",
    AFFILIATE_CAP: "affiliate_cap",
    NO_BUYER: "no_buyer",
    HANG_UP: "hang_up",
}

# Malformed-record kinds (messy-data scenario). A correct exporter cannot count these.
MALFORMED_NO_SID = "no_sid"
MALFORMED_BAD_DATE = "bad_call_date"


@dataclass(frozen=True, slots=True)
class Call:
    """A call from its first ring to its hang-up.

    ``start`` and ``end`` are whole epoch seconds so that ``call_date`` (second resolution) and
    the history date filter agree exactly. The call is active while ``start <= t < end`` and
    finished from ``end`` on.
    """

    sid: str
    start: int
    set_id: int
    set_name: str
    affiliate: str
    affiliate_number: str
    phone_label: str
    caller_id: str
    lead_status: str
    # Seconds in the IVR before the transfer (or before the call ends, when not connected).
    ivr_seconds: int
    talk_seconds: int
    advertiser: str | None
    offer: str | None
    transfer_number: str | None
    entered_zip: str | None
    lf_state: str
    first_name: str | None
    last_name: str | None
    street_address: str | None
    city: str | None
    state: str | None
    zipcode: str | None
    reroute: bool
    repeat_affiliate_caller: bool
    offer_qualified: bool
    offer_price_cents: int
    affiliate_qualified: bool
    affiliate_price_cents: int
    contested: bool
    recording_link: str | None
    # Name of the scenario in force when the call started; it decides how the call is served.
    scenario: str = "steady"
    malformed: str | None = None
    duplicated: bool = False

    @property
    def total_seconds(self) -> int:
        return self.ivr_seconds + self.talk_seconds

    @property
    def end(self) -> int:
        return self.start + self.total_seconds

    @property
    def margin_cents(self) -> int:
        return self.offer_price_cents - self.affiliate_price_cents

    @property
    def affiliate_cap(self) -> bool:
        return self.lead_status == AFFILIATE_CAP

    @property
    def status_key(self) -> str:
        return STATUS_KEYS[self.lead_status]

    def is_active(self, t: float) -> bool:
        return self.start <= t < self.end

    def is_finished(self, t: float) -> bool:
        return self.end <= t
