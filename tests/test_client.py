"""LeadFlowClient against a mocked History API (aioresponses), with time on a ManualClock.

Every sleep the client or its rate budget takes goes through the ManualClock, so backoff
delays and Retry-After waits are instant here and their durations are asserted exactly.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import structlog
from aioresponses import CallbackResult, aioresponses
from yarl import URL

from leadflow_exporter.client import (
    BACKOFF_CAP_SECONDS,
    RETRY_AFTER_CAP_SECONDS,
    LeadFlowClient,
    Query,
    QueryFailed,
    QueryResult,
    parse_retry_after,
)
from leadflow_exporter.clock import ManualClock
from leadflow_exporter.config import ApiConfig, Secret
from leadflow_exporter.health import Health
from leadflow_exporter.ratebudget import RateBudget

BASE_URL = "https://api.leadflow.test/report/v1/leadflow/v2/history"
URL_PATTERN = re.compile(r"^https://api\.leadflow\.test/report/v1/leadflow/v2/history(\?.*)?$")

# Distinctive values, so any leak is found by a plain substring search.
ACCESS_KEY = "AKX-7d1e0c-access-Q9"
SECRET_KEY = "SKX-f00dfeed-secret-Z3"
RATE_LIMIT_KEY = "RLX-5ca1ab1e-ratelimit-M4"
SECRETS = (ACCESS_KEY, SECRET_KEY, RATE_LIMIT_KEY)

WINDOW_START = datetime(2026, 5, 4, 13, 0, tzinfo=UTC).timestamp()
WINDOW_END = WINDOW_START + 3600


# -- a mocked History API ---------------------------------------------------------------------


class _Response(aiohttp.ClientResponse):
    """aioresponses builds responses without the `stream_writer` newer aiohttp requires."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


def reply(
    status: int = 200,
    body: Any = (),
    *,
    headers: dict[str, str] | None = None,
    raw: bytes | str | None = None,
) -> CallbackResult:
    """One HTTP answer: `body` is JSON-encoded unless `raw` gives the exact bytes."""
    data = raw if raw is not None else json.dumps(list(body) if isinstance(body, tuple) else body)
    return CallbackResult(status=status, body=data, headers=headers or {}, response_class=_Response)


def record(n: int, **fields: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "sid": f"CA{n:05d}",
        "call_date": "2026-05-04 09:15:00",
        "set_name": "Auto Insurance",
        "lead_status": "Connected",
        "talk_seconds": 95,
    }
    values.update(fields)
    return values


@dataclass
class Seen:
    url: URL
    headers: dict[str, str]
    monotonic: float

    @property
    def params(self) -> dict[str, str]:
        return dict(self.url.query)


Answer = CallbackResult | BaseException | Callable[[URL], CallbackResult]


class FakeApi:
    """Answers queued replies in order, then falls back to `serve` (if set)."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.queue: deque[Answer] = deque()
        self.serve: Callable[[URL], CallbackResult] | None = None
        self.seen: list[Seen] = []

    def add(self, *answers: Answer) -> FakeApi:
        self.queue.extend(answers)
        return self

    def __call__(self, url: URL, **kwargs: Any) -> CallbackResult:
        self.seen.append(Seen(url, dict(kwargs.get("headers") or {}), self.clock.monotonic()))
        if self.queue:
            answer = self.queue.popleft()
        elif self.serve is not None:
            answer = self.serve
        else:
            raise AssertionError(f"unexpected request #{len(self.seen)}: {url}")
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            return answer(url)
        return answer


def paged(
    records: list[dict[str, Any]], *, honour_page: bool = True, honour_size: bool = True
) -> Callable[[URL], CallbackResult]:
    """A paging API over `records`, optionally ignoring `page` or `page_size`."""

    def serve(url: URL) -> CallbackResult:
        if not honour_size:
            return reply(body=records)
        size = int(url.query["page_size"])
        page = int(url.query["page"]) if honour_page else 1
        return reply(body=records[(page - 1) * size : page * size])

    return serve


class MaxRandom(random.Random):
    """Jitter pinned to the top of its range."""

    def uniform(self, a: float, b: float) -> float:
        return b


class MinRandom(random.Random):
    """Jitter pinned to the bottom of its range."""

    def uniform(self, a: float, b: float) -> float:
        return a


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=WINDOW_END + 60)


@pytest.fixture
def health() -> Health:
    return Health()


@pytest.fixture
def api(clock: ManualClock) -> Iterator[FakeApi]:
    fake = FakeApi(clock)
    with aioresponses() as mocked:
        mocked.get(URL_PATTERN, callback=fake, repeat=True)
        yield fake


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def make_client(
    session: aiohttp.ClientSession, clock: ManualClock, health: Health
) -> Callable[..., LeadFlowClient]:
    def make(
        *,
        budget: RateBudget | None = None,
        rng: random.Random | None = None,
        **overrides: Any,
    ) -> LeadFlowClient:
        values: dict[str, Any] = {
            "base_url": BASE_URL,
            "access_key": Secret(ACCESS_KEY),
            "secret_access_key": Secret(SECRET_KEY),
            "rate_limit_key": Secret(RATE_LIMIT_KEY),
            "requests_per_minute": 10_000,
            "page_size": 250,
            "max_retries": 3,
        }
        values.update(overrides)
        config = ApiConfig(**values)
        return LeadFlowClient(
            config,
            session,
            budget or RateBudget(config.requests_per_minute, clock),
            clock,
            health,
            rng=rng or random.Random(7),
        )

    return make


@pytest.fixture
def client(make_client: Callable[..., LeadFlowClient]) -> LeadFlowClient:
    return make_client()


def history(client: LeadFlowClient, set_id: int | None = None) -> Query:
    return client.window_query("history", WINDOW_START, WINDOW_END, False, set_id)


def sids(result: QueryResult) -> list[str]:
    return [r.sid for r in result.records]


# -- auth and query parameters ----------------------------------------------------------------


async def test_auth_headers_are_exactly_key_colon_secret_and_x_api_key(
    client: LeadFlowClient, api: FakeApi
) -> None:
    api.add(reply(body=[record(1)]))
    await client.fetch(history(client))
    headers = api.seen[0].headers
    assert headers["Authorization"] == f"{ACCESS_KEY}:{SECRET_KEY}"
    assert not headers["Authorization"].lower().startswith(("basic", "bearer"))
    assert headers["x-api-key"] == RATE_LIMIT_KEY
    # The rate limit key is not part of Authorization, nor the secret part of x-api-key.
    assert RATE_LIMIT_KEY not in headers["Authorization"]
    assert SECRET_KEY not in headers["x-api-key"]
    # No credential travels in the URL.
    assert not any(secret in str(api.seen[0].url) for secret in SECRETS)


async def test_history_query_parameters(client: LeadFlowClient, api: FakeApi) -> None:
    api.add(reply(body=[record(1)]))
    await client.fetch(history(client, set_id=4711))
    assert api.seen[0].params == {
        "start_date": "2026-05-04T09:00:00",
        "end_date": "2026-05-04T10:00:00",
        "active": "0",
        "set_id": "4711",
        "page": "1",
        "page_size": "250",
    }


async def test_active_query_sends_active_1_and_no_set_id_when_none(
    make_client: Callable[..., LeadFlowClient], api: FakeApi
) -> None:
    client = make_client(page_size=100)
    api.add(reply(body=[record(1)]))
    result = await client.fetch(client.window_query("active", WINDOW_START, WINDOW_END, True, None))
    params = api.seen[0].params
    assert params["active"] == "1"
    assert "set_id" not in params
    assert params["page_size"] == "100"
    assert sids(result) == ["CA00001"]


async def test_sid_query_asks_for_the_finished_call_in_one_request(
    make_client: Callable[..., LeadFlowClient], api: FakeApi
) -> None:
    # page_size 1 and one record back: a window query would ask for page 2; a sid query
    # has no pages.
    client = make_client(page_size=1)
    api.add(reply(body={"response": [record(42)]}))
    result = await client.fetch(client.sid_query("CA00042"))
    assert len(api.seen) == 1
    assert api.seen[0].params == {"sid": "CA00042", "active": "0"}
    assert sids(result) == ["CA00042"]
    assert result.pages == 1


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("zone_name", "epoch", "expected"),
    [
        # Summer (EDT, UTC-4) and winter (EST, UTC-5): the same UTC hour, different wall time.
        ("America/New_York", utc(2026, 7, 1, 16, 0, 0), "2026-07-01T12:00:00"),
        ("America/New_York", utc(2026, 1, 15, 16, 0, 0), "2026-01-15T11:00:00"),
        # Spring forward, 8 March 2026: 01:59:59 EST is followed by 03:00:00 EDT.
        ("America/New_York", utc(2026, 3, 8, 6, 59, 59), "2026-03-08T01:59:59"),
        ("America/New_York", utc(2026, 3, 8, 7, 0, 0), "2026-03-08T03:00:00"),
        # Fall back, 1 November 2026: 01:30 happens twice, an hour apart in UTC.
        ("America/New_York", utc(2026, 11, 1, 5, 30, 0), "2026-11-01T01:30:00"),
        ("America/New_York", utc(2026, 11, 1, 6, 30, 0), "2026-11-01T01:30:00"),
        # The zone is configurable.
        ("America/Chicago", utc(2026, 7, 1, 16, 0, 0), "2026-07-01T11:00:00"),
        ("UTC", utc(2026, 7, 1, 16, 0, 0), "2026-07-01T16:00:00"),
    ],
)
async def test_dates_are_naive_local_time_in_the_configured_zone(
    make_client: Callable[..., LeadFlowClient],
    api: FakeApi,
    zone_name: str,
    epoch: float,
    expected: str,
) -> None:
    client = make_client(timezone=zone_name)
    api.add(reply(body=[]))
    await client.fetch(client.window_query("history", epoch, epoch + 1, False, None))
    params = api.seen[0].params
    assert params["start_date"] == expected
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", params["end_date"])


def test_dst_window_in_edt_and_est_differs_by_the_offset(
    make_client: Callable[..., LeadFlowClient],
) -> None:
    client = make_client()
    # A one-hour window across the spring gap covers 01:30 EST .. 03:30 EDT on the wall.
    query = client.window_query(
        "history", utc(2026, 3, 8, 6, 30, 0), utc(2026, 3, 8, 7, 30, 0), False, None
    )
    assert query.params["start_date"] == "2026-03-08T01:30:00"
    assert query.params["end_date"] == "2026-03-08T03:30:00"
    # Across the fall-back hour the wall clock would not move at all, so an API comparing
    # wall-clock strings would see an empty window: the start reaches an hour further back.
    query = client.window_query(
        "history", utc(2026, 11, 1, 5, 30, 0), utc(2026, 11, 1, 6, 30, 0), False, None
    )
    assert query.params["start_date"] == "2026-11-01T00:30:00"
    assert query.params["end_date"] == "2026-11-01T01:30:00"
    # ...but never before the floor the caller gives (what was read and remembered).
    for floor, expected in (
        (utc(2026, 11, 1, 5, 0, 0), "2026-11-01T01:00:00"),
        (utc(2026, 11, 1, 4, 0, 0), "2026-11-01T00:30:00"),
    ):
        query = client.window_query(
            "history", utc(2026, 11, 1, 5, 30, 0), utc(2026, 11, 1, 6, 30, 0), False, None,
            floor=floor,
        )  # fmt: skip
        assert query.params["start_date"] == expected
    # A window that does not contain the fall-back is sent as it is.
    query = client.window_query(
        "history", utc(2026, 11, 1, 6, 30, 0), utc(2026, 11, 1, 7, 30, 0), False, None
    )
    assert query.params["start_date"] == "2026-11-01T01:30:00"
    assert query.params["end_date"] == "2026-11-01T02:30:00"


# -- paging -----------------------------------------------------------------------------------


async def test_pages_are_requested_until_a_short_page(
    make_client: Callable[..., LeadFlowClient], api: FakeApi
) -> None:
    client = make_client(page_size=3)
    api.serve = paged([record(i) for i in range(7)])
    result = await client.fetch(history(client))
    assert [s.params["page"] for s in api.seen] == ["1", "2", "3"]
    assert all(s.params["page_size"] == "3" for s in api.seen)
    assert sids(result) == [f"CA{i:05d}" for i in range(7)]
    assert result.pages == 3
    assert result.raw_count == 7


async def test_an_empty_first_page_is_a_complete_empty_answer(
    client: LeadFlowClient, api: FakeApi
) -> None:
    api.add(reply(body=[]))
    result = await client.fetch(history(client))
    assert len(api.seen) == 1
    assert result.records == []
    assert result.pages == 1


async def test_an_exactly_full_last_page_is_followed_by_an_empty_page(
    make_client: Callable[..., LeadFlowClient], api: FakeApi
) -> None:
    client = make_client(page_size=3)
    api.serve = paged([record(i) for i in range(6)])
    result = await client.fetch(history(client))
    assert [s.params["page"] for s in api.seen] == ["1", "2", "3"]
    assert sids(result) == [f"CA{i:05d}" for i in range(6)]
    assert result.pages == 3


async def test_page_cap_fails_the_query(
    make_client: Callable[..., LeadFlowClient], api: FakeApi, health: Health
) -> None:
    client = make_client(page_size=2, max_pages=4)
    api.serve = paged([record(i) for i in range(100)])
    with structlog.testing.capture_logs() as logs, pytest.raises(QueryFailed) as failed:
        await client.fetch(history(client))
    assert failed.value.reason == "page_cap"
    assert [s.params["page"] for s in api.seen] == ["1", "2", "3", "4"]
    assert health.api_errors == {("history", "page_cap"): 1}
    assert [(e["event"], e["reason"]) for e in logs] == [("api_query_failed", "page_cap")]


async def test_an_api_that_ignores_page_is_read_once_without_duplicates(
    make_client: Callable[..., LeadFlowClient], api: FakeApi
) -> None:
    client = make_client(page_size=3)
    api.serve = paged([record(i) for i in range(10)], honour_page=False)
    result = await client.fetch(history(client))
    assert len(api.seen) == 2  # the repeat of page 1 shows that `page` is ignored
    assert sids(result) == ["CA00000", "CA00001", "CA00002"]
    assert len(set(sids(result))) == len(result.records)
    assert result.raw_count == 3


async def test_an_api_that_ignores_page_size_is_read_in_one_request(
    make_client: Callable[..., LeadFlowClient], api: FakeApi
) -> None:
    client = make_client(page_size=3)
    api.serve = paged([record(i) for i in range(8)], honour_size=False)
    result = await client.fetch(history(client))
    assert len(api.seen) == 1
    assert sids(result) == [f"CA{i:05d}" for i in range(8)]


async def test_an_api_paging_by_a_smaller_size_of_its_own_is_read_to_the_end(
    make_client: Callable[..., LeadFlowClient], api: FakeApi
) -> None:
    client = make_client(page_size=50)
    records = [record(i) for i in range(30)]
    api.serve = lambda url: reply(body=records[(int(url.query["page"]) - 1) * 12 :][:12])
    with structlog.testing.capture_logs() as logs:
        result = await client.fetch(history(client))
        assert sids(result) == [f"CA{i:05d}" for i in range(30)]
        assert [s.params["page"] for s in api.seen] == ["1", "2", "3"]
        assert client.full_page == 12
        # The next query knows: no look past its first short page, and no second warning.
        api.seen.clear()
        records = [record(i) for i in range(100, 125)]
        result = await client.fetch(history(client))
        assert sids(result) == [f"CA{i:05d}" for i in range(100, 125)]
        assert [s.params["page"] for s in api.seen] == ["1", "2", "3"]
    warnings = [e for e in logs if e["event"] == "api_page_size"]
    assert [(e["asked"], e["served"]) for e in warnings] == [(50, 12)]


async def test_an_api_paging_by_a_larger_size_of_its_own_is_read_to_the_end(
    make_client: Callable[..., LeadFlowClient], api: FakeApi
) -> None:
    client = make_client(page_size=10)
    records = [record(i) for i in range(70)]
    api.serve = lambda url: reply(body=records[(int(url.query["page"]) - 1) * 30 :][:30])
    result = await client.fetch(history(client))
    assert sids(result) == [f"CA{i:05d}" for i in range(70)]
    assert [s.params["page"] for s in api.seen] == ["1", "2", "3"]
    assert client.full_page == 30


async def test_a_short_page_is_looked_past_only_when_longer_than_any_before(
    make_client: Callable[..., LeadFlowClient], api: FakeApi, health: Health
) -> None:
    client = make_client(page_size=50)
    records: list[dict[str, Any]] = []
    api.serve = lambda url: paged(records)(url)
    requests = []
    for size in (20, 15, 20, 9, 25, 24):
        records[:] = [record(i) for i in range(size)]
        api.seen.clear()
        result = await client.fetch(history(client))
        assert len(result.records) == size
        requests.append(len(api.seen))
    # 20: a look at page 2 (empty); 15: shorter than 20, the last; 20: could be a full page of
    # an API paging by 20, looked past again; 9: below any API's page; 25: a new longest.
    assert requests == [2, 1, 2, 1, 2, 1]
    assert client.full_page == 50
    # A full page tells that every shorter one is the last.
    records[:] = [record(i) for i in range(60)]
    api.seen.clear()
    await client.fetch(history(client))
    assert [s.params["page"] for s in api.seen] == ["1", "2"]
    records[:] = [record(i) for i in range(45)]
    api.seen.clear()
    await client.fetch(history(client))
    assert len(api.seen) == 1


async def test_an_api_ignoring_page_and_page_size_is_read_once(
    make_client: Callable[..., LeadFlowClient], api: FakeApi
) -> None:
    client = make_client(page_size=10)
    api.serve = paged([record(i) for i in range(40)], honour_page=False, honour_size=False)
    result = await client.fetch(history(client))
    assert sids(result) == [f"CA{i:05d}" for i in range(40)]
    assert len(api.seen) == 2  # page 2 repeated page 1: all there is was read
    assert client.full_page == 10


async def test_an_unpaged_list_that_changes_between_requests_is_read_once(
    make_client: Callable[..., LeadFlowClient], api: FakeApi
) -> None:
    # No paging at all, newest first, and a call starts (and the oldest ends) between any two
    # requests: the first record differs each time, yet nearly all are the same.
    client = make_client(page_size=250, max_pages=50)
    live = [record(i) for i in range(100, 140)]

    def serve(url: URL) -> CallbackResult:
        body = list(live)
        live.insert(0, record(1000 + len(api.seen)))
        live.pop()
        return reply(body=body)

    api.serve = serve
    with structlog.testing.capture_logs() as logs:
        result = await client.fetch(history(client))
    assert len(api.seen) == 2
    assert sids(result) == [f"CA{i:05d}" for i in range(100, 140)]
    assert client.full_page == 250
    assert not [e for e in logs if e["event"] == "api_page_size"]


async def test_no_look_past_a_short_page_at_the_page_cap(
    make_client: Callable[..., LeadFlowClient], api: FakeApi
) -> None:
    client = make_client(page_size=50, max_pages=1)
    api.serve = paged([record(i) for i in range(20)])
    result = await client.fetch(history(client))
    assert len(result.records) == 20
    assert len(api.seen) == 1


async def test_a_page_with_invalid_records_still_counts_toward_page_size(
    make_client: Callable[..., LeadFlowClient], api: FakeApi
) -> None:
    client = make_client(page_size=3)
    first = [record(0), {"call_date": "2026-05-04 09:00:00"}, record(1, call_date="soon")]
    api.add(reply(body=first), reply(body=[record(2)]))
    result = await client.fetch(history(client))
    assert len(api.seen) == 2
    assert sids(result) == ["CA00000", "CA00002"]
    assert result.invalid == {"missing_sid": 1, "bad_call_date": 1}
    assert result.raw_count == 4


# -- envelopes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda items: items, id="bare-array"),
        pytest.param(lambda items: {"response": items}, id="response"),
        pytest.param(lambda items: {"data": items, "total": 2}, id="data"),
    ],
)
async def test_the_three_envelopes(
    client: LeadFlowClient, api: FakeApi, wrap: Callable[[list[Any]], Any]
) -> None:
    api.add(reply(body=wrap([record(1), record(2)])))
    result = await client.fetch(history(client))
    assert sids(result) == ["CA00001", "CA00002"]


@pytest.mark.parametrize(
    "bad_body",
    [
        pytest.param(json.dumps({"records": [record(1)]}), id="unknown-envelope"),
        pytest.param(json.dumps({"response": "none"}), id="response-not-a-list"),
        pytest.param(json.dumps("ok"), id="json-string"),
        pytest.param("null", id="json-null"),
        pytest.param("<html><body>502 Bad Gateway</body></html>", id="html"),
        pytest.param(json.dumps([record(1), record(2)])[:40], id="truncated-json"),
        pytest.param("", id="empty-body"),
    ],
)
async def test_a_bad_body_is_retried_as_bad_envelope_then_succeeds(
    client: LeadFlowClient, api: FakeApi, clock: ManualClock, health: Health, bad_body: str
) -> None:
    api.add(reply(raw=bad_body), reply(body={"data": [record(1)]}))
    result = await client.fetch(history(client))
    assert sids(result) == ["CA00001"]
    assert len(api.seen) == 2
    assert api.seen[1].params == api.seen[0].params
    assert health.api_errors == {("history", "bad_envelope"): 1}
    assert health.api_requests == {("history", "200"): 2}
    assert len(clock.slept) == 1
    assert 0.5 <= clock.slept[0] <= 1.0


async def test_a_bad_body_every_time_fails_with_bad_envelope(
    make_client: Callable[..., LeadFlowClient], api: FakeApi, health: Health
) -> None:
    client = make_client(max_retries=2)
    api.serve = lambda url: reply(raw='{"status": "maintenance"}')
    with pytest.raises(QueryFailed) as failed:
        await client.fetch(history(client))
    assert failed.value.reason == "bad_envelope"
    assert len(api.seen) == 3
    assert health.api_errors == {("history", "bad_envelope"): 3}


async def test_a_payload_error_while_reading_is_retried(
    client: LeadFlowClient, api: FakeApi, health: Health
) -> None:
    api.add(aiohttp.ClientPayloadError("Response payload is not completed"))
    api.add(reply(body=[record(1)]))
    result = await client.fetch(history(client))
    assert sids(result) == ["CA00001"]
    assert health.api_errors == {("history", "truncated_body"): 1}
    assert health.api_requests == {("history", "error"): 1, ("history", "200"): 1}


# -- retries, backoff, Retry-After ------------------------------------------------------------


def expected_ceilings(n: int) -> list[float]:
    return [min(BACKOFF_CAP_SECONDS, 2.0 ** (i - 1)) for i in range(1, n + 1)]


@pytest.mark.parametrize("seed", [1, 2, 3, 11, 99])
async def test_5xx_backs_off_exponentially_with_jitter_then_fails(
    make_client: Callable[..., LeadFlowClient],
    api: FakeApi,
    clock: ManualClock,
    health: Health,
    seed: int,
) -> None:
    client = make_client(max_retries=8, rng=random.Random(seed))
    api.serve = lambda url: reply(503, raw="Service Unavailable")
    with pytest.raises(QueryFailed) as failed:
        await client.fetch(history(client))
    assert failed.value.reason == "server_error"
    assert "HTTP 503" in failed.value.detail
    assert len(api.seen) == 9
    ceilings = expected_ceilings(8)
    assert len(clock.slept) == 8
    for slept, ceiling in zip(clock.slept, ceilings, strict=True):
        assert ceiling / 2 <= slept <= ceiling
        assert slept <= BACKOFF_CAP_SECONDS
    # The gaps between requests are exactly the backoff sleeps: the budget added none.
    gaps = [b.monotonic - a.monotonic for a, b in zip(api.seen, api.seen[1:], strict=False)]
    assert gaps == pytest.approx(clock.slept)
    # Growth: every delay range starts where the previous one ended, until the cap.
    assert clock.slept[3] > clock.slept[0]
    assert max(clock.slept) > 8
    assert health.api_requests == {("history", "503"): 9}
    assert health.api_errors == {("history", "server_error"): 9}


@pytest.mark.parametrize(
    ("rng", "expected"),
    [
        (MaxRandom(), [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]),
        (MinRandom(), [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0]),
    ],
    ids=["jitter-max", "jitter-min"],
)
async def test_backoff_doubles_up_to_the_cap(
    make_client: Callable[..., LeadFlowClient],
    api: FakeApi,
    clock: ManualClock,
    rng: random.Random,
    expected: list[float],
) -> None:
    client = make_client(max_retries=8, rng=rng)
    api.serve = lambda url: reply(500)
    with pytest.raises(QueryFailed):
        await client.fetch(history(client))
    assert clock.slept == expected


async def test_jitter_spreads_the_delays(
    make_client: Callable[..., LeadFlowClient], api: FakeApi, clock: ManualClock
) -> None:
    firsts = set()
    for seed in range(8):
        client = make_client(max_retries=1, rng=random.Random(seed))
        api.add(reply(502), reply(body=[]))
        clock.slept.clear()
        await client.fetch(history(client))
        firsts.add(round(clock.slept[0], 6))
    assert len(firsts) == 8


async def test_5xx_then_success(
    make_client: Callable[..., LeadFlowClient], api: FakeApi, clock: ManualClock, health: Health
) -> None:
    client = make_client(rng=MaxRandom())
    api.add(reply(500), reply(502, raw="bad gateway"), reply(body=[record(1)]))
    result = await client.fetch(history(client))
    assert sids(result) == ["CA00001"]
    assert clock.slept == [1.0, 2.0]
    assert health.api_requests == {
        ("history", "500"): 1,
        ("history", "502"): 1,
        ("history", "200"): 1,
    }
    assert health.api_errors == {("history", "server_error"): 2}


async def test_timeouts_are_retried_then_fail_with_reason_timeout(
    make_client: Callable[..., LeadFlowClient],
    session: aiohttp.ClientSession,
    clock: ManualClock,
    health: Health,
) -> None:
    client = make_client(max_retries=2)
    with aioresponses() as mocked:
        mocked.get(URL_PATTERN, exception=TimeoutError(), repeat=True)
        with pytest.raises(QueryFailed) as failed:
            await client.fetch(history(client))
        assert sum(len(calls) for calls in mocked.requests.values()) == 3
    assert failed.value.reason == "timeout"
    assert len(clock.slept) == 2
    assert health.api_requests == {("history", "timeout"): 3}
    assert health.api_errors == {("history", "timeout"): 3}


async def test_a_timeout_then_success(
    client: LeadFlowClient, clock: ManualClock, health: Health
) -> None:
    with aioresponses() as mocked:
        mocked.get(URL_PATTERN, exception=TimeoutError())
        mocked.get(URL_PATTERN, body=json.dumps([record(1)]), response_class=_Response)
        result = await client.fetch(history(client))
    assert sids(result) == ["CA00001"]
    assert len(clock.slept) == 1
    assert health.api_requests == {("history", "timeout"): 1, ("history", "200"): 1}
    assert health.api_errors == {("history", "timeout"): 1}


async def test_http_408_counts_as_a_timeout(
    client: LeadFlowClient, api: FakeApi, health: Health
) -> None:
    api.add(reply(408), reply(body=[]))
    await client.fetch(history(client))
    assert health.api_errors == {("history", "timeout"): 1}
    assert health.api_requests == {("history", "408"): 1, ("history", "200"): 1}


@pytest.mark.parametrize(
    "error",
    [
        aiohttp.ClientConnectionError("Connection refused"),
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientOSError(104, "Connection reset by peer"),
    ],
    ids=["refused", "disconnected", "reset"],
)
async def test_connection_errors_are_retried_with_reason_connection(
    make_client: Callable[..., LeadFlowClient],
    api: FakeApi,
    clock: ManualClock,
    health: Health,
    error: Exception,
) -> None:
    client = make_client(max_retries=1)
    api.add(error, error)
    with pytest.raises(QueryFailed) as failed:
        await client.fetch(history(client))
    assert failed.value.reason == "connection"
    assert type(error).__name__ in failed.value.detail
    assert len(api.seen) == 2
    assert len(clock.slept) == 1
    assert health.api_requests == {("history", "error"): 2}
    assert health.api_errors == {("history", "connection"): 2}


@pytest.mark.parametrize("status", [401, 403])
async def test_unauthorized_is_not_retried(
    client: LeadFlowClient, api: FakeApi, clock: ManualClock, health: Health, status: int
) -> None:
    api.add(reply(status, body={"message": "Invalid credentials"}))
    with pytest.raises(QueryFailed) as failed:
        await client.fetch(history(client))
    assert failed.value.reason == "unauthorized"
    assert failed.value.detail == f"HTTP {status}: Invalid credentials"
    assert len(api.seen) == 1
    assert clock.slept == []
    assert health.api_requests == {("history", str(status)): 1}
    assert health.api_errors == {("history", "unauthorized"): 1}


@pytest.mark.parametrize(
    ("status", "reason"), [(400, "bad_request"), (404, "client_error"), (422, "client_error")]
)
async def test_client_errors_are_not_retried(
    client: LeadFlowClient,
    api: FakeApi,
    clock: ManualClock,
    health: Health,
    status: int,
    reason: str,
) -> None:
    api.add(reply(status, body={"error": "start_date is required"}))
    with pytest.raises(QueryFailed) as failed:
        await client.fetch(history(client))
    assert failed.value.reason == reason
    assert "start_date is required" in failed.value.detail
    assert len(api.seen) == 1
    assert clock.slept == []
    assert health.api_errors == {("history", reason): 1}


async def test_429_with_retry_after_seconds_pauses_the_budget(
    client: LeadFlowClient, api: FakeApi, clock: ManualClock, health: Health
) -> None:
    api.add(reply(429, headers={"Retry-After": "7"}), reply(body=[record(1)]))
    result = await client.fetch(history(client))
    assert sids(result) == ["CA00001"]
    assert api.seen[0].monotonic == 0.0
    assert api.seen[1].monotonic == pytest.approx(7.0)
    # A backoff sleep, then the budget's wait for the rest of the pause.
    assert len(clock.slept) == 2
    assert 0.5 <= clock.slept[0] <= 1.0
    assert sum(clock.slept) == pytest.approx(7.0)
    assert client._budget.waited_seconds == pytest.approx(7.0 - clock.slept[0])
    assert health.api_requests == {("history", "429"): 1, ("history", "200"): 1}
    assert health.api_errors == {("history", "rate_limited"): 1}


async def test_429_with_an_http_date_retry_after(
    client: LeadFlowClient, api: FakeApi, clock: ManualClock
) -> None:
    when = formatdate(clock.now() + 20, usegmt=True)
    api.add(reply(429, headers={"Retry-After": when}), reply(body=[record(1)]))
    result = await client.fetch(history(client))
    assert sids(result) == ["CA00001"]
    assert api.seen[1].monotonic == pytest.approx(20.0)
    assert sum(clock.slept) == pytest.approx(20.0)


async def test_429_without_retry_after_still_backs_off(
    client: LeadFlowClient, api: FakeApi, clock: ManualClock, health: Health
) -> None:
    api.add(reply(429), reply(429, raw="slow down"), reply(body=[record(1)]))
    result = await client.fetch(history(client))
    assert sids(result) == ["CA00001"]
    assert len(clock.slept) == 2
    assert 0.5 <= clock.slept[0] <= 1.0
    assert 1.0 <= clock.slept[1] <= 2.0
    assert api.seen[2].monotonic == pytest.approx(sum(clock.slept))
    assert client._budget.waited_seconds == 0.0
    assert health.api_errors == {("history", "rate_limited"): 2}


async def test_a_huge_retry_after_is_capped(
    client: LeadFlowClient, api: FakeApi, clock: ManualClock
) -> None:
    api.add(reply(429, headers={"Retry-After": "86400"}), reply(body=[]))
    await client.fetch(history(client))
    assert api.seen[1].monotonic == pytest.approx(RETRY_AFTER_CAP_SECONDS)


async def test_429_that_never_ends_fails_with_rate_limited(
    make_client: Callable[..., LeadFlowClient], api: FakeApi, clock: ManualClock
) -> None:
    client = make_client(max_retries=2)
    api.serve = lambda url: reply(429, headers={"Retry-After": "5"})
    with pytest.raises(QueryFailed) as failed:
        await client.fetch(history(client))
    assert failed.value.reason == "rate_limited"
    assert [s.monotonic for s in api.seen] == pytest.approx([0.0, 5.0, 10.0])


def test_parse_retry_after_forms() -> None:
    now = 1_780_000_000.0
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(" 120 ", now) == 120.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now) == pytest.approx(30.0)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now) == 0.0
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("", now) is None
    assert parse_retry_after("soon", now) is None


async def test_health_counters_for_a_mixed_run(
    make_client: Callable[..., LeadFlowClient], api: FakeApi, health: Health
) -> None:
    client = make_client(max_retries=5)
    api.add(
        reply(500),
        TimeoutError(),
        reply(429, headers={"Retry-After": "1"}),
        reply(raw="not json"),
        reply(body=[record(1)]),
    )
    await client.fetch(history(client))
    api.add(reply(503), reply(body=[record(1)]))
    await client.fetch(client.sid_query("CA00001"))
    assert health.api_requests == {
        ("history", "500"): 1,
        ("history", "timeout"): 1,
        ("history", "429"): 1,
        ("history", "200"): 2,
        ("sid", "503"): 1,
        ("sid", "200"): 1,
    }
    assert health.api_errors == {
        ("history", "server_error"): 1,
        ("history", "timeout"): 1,
        ("history", "rate_limited"): 1,
        ("history", "bad_envelope"): 1,
        ("sid", "server_error"): 1,
    }


async def test_two_clients_share_one_budget(
    make_client: Callable[..., LeadFlowClient], api: FakeApi, clock: ManualClock
) -> None:
    budget = RateBudget(3, clock)
    first = make_client(budget=budget)
    second = make_client(budget=budget)
    api.serve = lambda url: reply(body=[record(1)])
    await asyncio.gather(
        first.fetch(history(first)),
        second.fetch(second.sid_query("CA00001")),
        first.fetch(first.window_query("active", WINDOW_START, WINDOW_END, True, None)),
        second.fetch(second.sid_query("CA00002")),
        first.fetch(history(first, set_id=2)),
    )
    times = sorted(s.monotonic for s in api.seen)
    assert times == [0.0, 0.0, 0.0, 60.0, 60.0]
    assert budget.used() == 2


async def test_a_429_on_one_query_holds_back_the_others(
    make_client: Callable[..., LeadFlowClient], api: FakeApi, clock: ManualClock
) -> None:
    budget = RateBudget(100, clock)
    first = make_client(budget=budget, rng=MinRandom())
    second = make_client(budget=budget)
    api.add(reply(429, headers={"Retry-After": "30"}))
    api.serve = lambda url: reply(body=[])
    await first.fetch(history(first))
    await second.fetch(second.sid_query("CA00009"))
    assert [s.monotonic for s in api.seen] == pytest.approx([0.0, 30.0, 30.0])


# -- secrets ----------------------------------------------------------------------------------

ECHO = f"denied: Authorization={ACCESS_KEY}:{SECRET_KEY} x-api-key={RATE_LIMIT_KEY}"


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text
    # Not even a recognisable fragment of one.
    for fragment in ("f00dfeed", "5ca1ab1e", "7d1e0c"):
        assert fragment not in text


@pytest.mark.parametrize(
    ("answers", "reason"),
    [
        pytest.param([reply(401, body={"error": ECHO})], "unauthorized", id="401-json"),
        pytest.param([reply(403, raw=ECHO)], "unauthorized", id="403-text"),
        pytest.param([reply(400, body={"message": ECHO})], "bad_request", id="400-json"),
        pytest.param([reply(500, raw=f"<pre>{ECHO}</pre>")] * 3, "server_error", id="500"),
        pytest.param(
            [reply(429, body={"detail": ECHO}, headers={"Retry-After": "1"})] * 3,
            "rate_limited",
            id="429",
        ),
        pytest.param(
            [aiohttp.ClientConnectionError(f"proxy said {ECHO}")] * 3, "connection", id="conn"
        ),
        pytest.param([reply(raw=ECHO)] * 3, "bad_envelope", id="200-not-json"),
        pytest.param(
            [reply(body={ACCESS_KEY: SECRET_KEY, RATE_LIMIT_KEY: "invalid"})] * 3,
            "bad_envelope",
            id="200-object-keyed-by-secrets",
        ),
        pytest.param(
            [reply(body={"response": "denied", ACCESS_KEY: 1, SECRET_KEY: 2})] * 3,
            "bad_envelope",
            id="200-bad-response-with-secret-keys",
        ),
    ],
)
async def test_secrets_never_reach_errors_or_logs(
    make_client: Callable[..., LeadFlowClient],
    api: FakeApi,
    answers: list[Answer],
    reason: str,
) -> None:
    client = make_client(max_retries=2)
    api.add(*answers)
    with structlog.testing.capture_logs() as logs, pytest.raises(QueryFailed) as failed:
        await client.fetch(history(client))
    error = failed.value
    assert error.reason == reason
    assert_no_secret(str(error))
    assert_no_secret(repr(error))
    assert_no_secret(error.detail)
    assert_no_secret(repr(error.args))
    # The failure was logged, with its reason, and nothing logged holds a key.
    assert any(entry["event"] == "api_query_failed" and entry["reason"] == reason for entry in logs)
    assert_no_secret(repr(logs))
    for entry in logs:
        assert_no_secret(repr(entry))
        assert_no_secret(json.dumps(entry, default=repr))


async def test_scrubbed_errors_still_say_what_went_wrong(
    client: LeadFlowClient, api: FakeApi
) -> None:
    api.add(reply(401, body={"error": ECHO}))
    with pytest.raises(QueryFailed) as failed:
        await client.fetch(history(client))
    assert failed.value.detail == (
        "HTTP 401: denied: Authorization=<redacted>:<redacted> x-api-key=<redacted>"
    )


async def test_short_keys_are_scrubbed_in_one_pass(
    make_client: Callable[..., LeadFlowClient], api: FakeApi
) -> None:
    # Keys that are substrings of "<redacted>" (and of each other) must not mangle it.
    client = make_client(
        access_key=Secret("a"), secret_access_key=Secret("ac"), rate_limit_key=Secret("d")
    )
    api.add(reply(401, body={"error": "keys a, ac and d; redacted"}))
    with pytest.raises(QueryFailed) as failed:
        await client.fetch(history(client))
    assert failed.value.detail == (
        "HTTP 401: keys <redacted>, <redacted> <redacted>n<redacted> <redacted>; "
        "re<redacted><redacted>te<redacted>"
    )


async def test_retry_logs_carry_no_secret(client: LeadFlowClient, api: FakeApi) -> None:
    api.add(reply(503, raw=ECHO), reply(body=[]))
    with structlog.testing.capture_logs() as logs:
        await client.fetch(history(client))
    retries = [entry for entry in logs if entry["event"] == "api_retry"]
    assert len(retries) == 1
    assert retries[0]["reason"] == "server_error"
    assert "<redacted>" in retries[0]["detail"]
    assert_no_secret(repr(logs))


def test_client_and_config_reprs_hide_the_keys(client: LeadFlowClient) -> None:
    assert_no_secret(repr(client.api))
    assert_no_secret(str(client.api))
