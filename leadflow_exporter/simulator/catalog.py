"""The fixed cast of the simulated account: sets, affiliates, advertisers, offers, callers.

Everything here is invented. Phone numbers use the 555-01xx range reserved for fiction, and
names are common enough to identify nobody.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Affiliate:
    name: str
    number: str
    phone_label: str
    weight: float
    # Seconds of talk after which the affiliate is paid; shorter than most offers' buffers so
    # that some calls pay the affiliate while the advertiser pays nothing (negative margin).
    buffer_seconds: int
    price_cents: int


@dataclass(frozen=True, slots=True)
class Offer:
    advertiser: str
    name: str
    transfer_number: str
    weight: float
    buffer_seconds: int
    price_cents: int


@dataclass(frozen=True, slots=True)
class LeadFlowSet:
    set_id: int
    name: str
    weight: float
    affiliates: tuple[Affiliate, ...]
    offers: tuple[Offer, ...]
    # Base shares of the non-connected outcomes during buyers' business hours.
    hang_up_share: float
    no_buyer_share: float
    affiliate_cap_share: float
    reverse_lookup: bool
    prompts_zip: bool


SETS: tuple[LeadFlowSet, ...] = (
    LeadFlowSet(
        set_id=101,
        name="Auto Insurance",
        weight=0.32,
        affiliates=(
            Affiliate("ClickSpring Media", "8005550101", "Auto - Search", 0.45, 90, 1800),
            Affiliate("Northwind Leads", "8005550102", "Auto - Display", 0.30, 60, 1500),
            Affiliate("BlueRiver Digital", "8005550103", "Auto - TV", 0.25, 90, 2200),
        ),
        offers=(
            Offer("Harbor Mutual", "Harbor Auto Quotes", "8885550110", 0.5, 90, 3200),
            Offer("Keystone Direct", "Keystone Auto", "8885550111", 0.3, 120, 3800),
            Offer("Summit Assurance", "Summit Auto Transfer", "8885550112", 0.2, 60, 2100),
        ),
        hang_up_share=0.15,
        no_buyer_share=0.08,
        affiliate_cap_share=0.04,
        reverse_lookup=True,
        prompts_zip=True,
    ),
    LeadFlowSet(
        set_id=102,
        name="Medicare",
        weight=0.26,
        affiliates=(
            Affiliate("Silverline Health Leads", "8005550121", "Medicare - TV", 0.55, 90, 2400),
            Affiliate("Northwind Leads", "8005550122", "Medicare - Radio", 0.25, 120, 2000),
            Affiliate("Evergreen Calls", "8005550123", "Medicare - Mail", 0.20, 90, 2800),
        ),
        offers=(
            Offer("Crescent Health", "Crescent Advantage", "8885550130", 0.6, 120, 4500),
            Offer("Pinecrest Benefits", "Pinecrest Supplement", "8885550131", 0.4, 90, 3600),
        ),
        hang_up_share=0.18,
        no_buyer_share=0.09,
        affiliate_cap_share=0.03,
        reverse_lookup=True,
        prompts_zip=True,
    ),
    LeadFlowSet(
        set_id=103,
        name="Home Services",
        weight=0.20,
        affiliates=(
            Affiliate("HomePro Connect", "8005550141", "Home - Search", 0.6, 60, 1200),
            Affiliate("ClickSpring Media", "8005550142", "Home - Social", 0.4, 60, 1000),
        ),
        offers=(
            Offer("Brightway Roofing", "Roof Repair", "8885550150", 0.35, 60, 2500),
            Offer("Cascade Plumbing", "Emergency Plumbing", "8885550151", 0.40, 30, 1800),
            Offer("Ironside HVAC", "HVAC Service", "8885550152", 0.25, 60, 2200),
        ),
        hang_up_share=0.14,
        no_buyer_share=0.10,
        affiliate_cap_share=0.05,
        reverse_lookup=False,
        prompts_zip=True,
    ),
    LeadFlowSet(
        set_id=104,
        name="Debt Relief",
        weight=0.12,
        affiliates=(
            Affiliate("Evergreen Calls", "8005550161", "Debt - Radio", 0.5, 120, 3500),
            Affiliate("BlueRiver Digital", "8005550162", "Debt - TV", 0.5, 120, 4200),
        ),
        offers=(Offer("Clearpath Financial", "Debt Consultation", "8885550170", 1.0, 180, 5000),),
        hang_up_share=0.20,
        no_buyer_share=0.07,
        affiliate_cap_share=0.04,
        reverse_lookup=True,
        prompts_zip=False,
    ),
    LeadFlowSet(
        set_id=105,
        name="Legal Services",
        weight=0.10,
        affiliates=(
            Affiliate("Justice Lead Group", "8005550181", "Legal - Search", 0.7, 120, 6000),
            Affiliate("Northwind Leads", "8005550182", "Legal - TV", 0.3, 90, 5500),
        ),
        offers=(
            Offer("Whitmore & Lane", "Injury Intake", "8885550190", 0.6, 120, 9500),
            Offer("Hale Law Partners", "Accident Claims", "8885550191", 0.4, 150, 8000),
        ),
        hang_up_share=0.17,
        no_buyer_share=0.12,
        affiliate_cap_share=0.02,
        reverse_lookup=False,
        prompts_zip=False,
    ),
)

SETS_BY_ID: dict[int, LeadFlowSet] = {s.set_id: s for s in SETS}
SET_WEIGHTS: tuple[float, ...] = tuple(s.weight for s in SETS)

# (state, area code, zip prefix, cities)
STATES: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("FL", "305", "331", ("Miami", "Hialeah")),
    ("FL", "407", "328", ("Orlando", "Kissimmee")),
    ("TX", "214", "752", ("Dallas", "Garland")),
    ("TX", "713", "770", ("Houston", "Pasadena")),
    ("CA", "213", "900", ("Los Angeles", "Glendale")),
    ("CA", "619", "921", ("San Diego", "Chula Vista")),
    ("NY", "718", "112", ("Brooklyn", "Queens")),
    ("PA", "215", "191", ("Philadelphia", "Camden")),
    ("OH", "614", "432", ("Columbus", "Dublin")),
    ("GA", "404", "303", ("Atlanta", "Decatur")),
    ("NC", "704", "282", ("Charlotte", "Concord")),
    ("IL", "312", "606", ("Chicago", "Evanston")),
    ("AZ", "602", "850", ("Phoenix", "Tempe")),
    ("MI", "313", "482", ("Detroit", "Dearborn")),
)
STATE_WEIGHTS: tuple[float, ...] = (9, 6, 7, 7, 8, 4, 7, 5, 4, 5, 4, 6, 4, 3)

FIRST_NAMES: tuple[str, ...] = (
    "James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David",
    "Barbara", "William", "Susan", "Richard", "Jessica", "Joseph", "Sarah", "Thomas", "Karen",
    "Maria", "Carlos", "Angela", "Kevin", "Denise", "Luis",
)  # fmt: skip
LAST_NAMES: tuple[str, ...] = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore",
    "Jackson", "Martin", "Lee", "Thompson", "White", "Harris", "Clark",
)  # fmt: skip
STREETS: tuple[str, ...] = (
    "Oak St", "Maple Ave", "Cedar Ln", "Pine Rd", "Elm St", "Lakeview Dr", "Park Blvd",
    "Sunset Ave", "River Rd", "Hillcrest Dr", "Washington St", "Lincoln Ave",
)  # fmt: skip

# Target of the spike scenarios; chosen to be busy enough for a spike to stand out.
NO_BUYER_SPIKE_SET_ID = 102
AFFILIATE_CAP_SPIKE_AFFILIATE = "ClickSpring Media"
