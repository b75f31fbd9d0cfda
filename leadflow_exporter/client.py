"""The History Report API client: auth, paging, the rate budget, retries."""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import structlog

from leadflow_exporter import __version__
from leadflow_exporter.clock import Clock
from leadflow_exporter.config import ApiConfig
from leadflow_exporter.health import Health
from leadflow_exporter.ratebudget import RateBudget
from leadflow_exporter.records import CallRecord, EnvelopeError, decode_page
from leadflow_exporter.sightings import Sighting
from leadflow_exporter.timeutil import CallDateParser, zone

log = structlog.get_logger("leadflow_exporter.client")

BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 30.0
RETRY_AFTER_CAP_SECONDS = 300.0
ERROR_BODY_CHARS = 300
# No API pages by fewer records than this: a shorter page is the last without a look at the
# next one, whatever the API's own page size turns out to be.
SMALLEST_API_PAGE = 10


class QueryFailed(Exception):
    """A query gave up; `reason` is a short, bounded label value."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


@dataclass
class QueryResult:
    records: list[CallRecord] = field(default_factory=list)
    raw_count: int = 0
    pages: int = 0
    # What the pages held that could not be read, as `Page` has them.
    invalid_keys: list[Sighting] = field(default_factory=list)
    bad_value_keys: list[Sighting] = field(default_factory=list)

    @property
    def invalid(self) -> Counter[str]:
        return Counter(reason for reason, _ in self.invalid_keys)


@dataclass(frozen=True)
class Query:
    """One logical query; `kind` is the `query` label: history, active or sid."""

    kind: str
    params: dict[str, str]


class _Retryable(Exception):
    def __init__(self, reason: str, detail: str, retry_after: float | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after
        super().__init__(detail)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


class LeadFlowClient:
    def __init__(
        self,
        api: ApiConfig,
        session: aiohttp.ClientSession,
        budget: RateBudget,
        clock: Clock,
        health: Health,
        extra_labels: tuple[str, ...] = (),
        rng: random.Random | None = None,
    ) -> None:
        self.api = api
        self._session = session
        self._budget = budget
        self._clock = clock
        self._health = health
        self._extra_labels = extra_labels
        self._rng = rng or random.Random()
        self._tz = zone(api.timezone)
        self._dates = CallDateParser(self._tz)
        secrets = {
            s.reveal() for s in (api.access_key, api.secret_access_key, api.rate_limit_key)
        } - {""}
        # One pass, longest first: replacing one key after another would also rewrite inside
        # an earlier "<redacted>" whenever a key is a substring of it.
        self._secrets = (
            re.compile("|".join(map(re.escape, sorted(secrets, key=len, reverse=True))))
            if secrets
            else None
        )
        # Paging, as learnt from the API's answers. A page shorter than `full_page` (or
        # longer: the API ignored page_size) ends a query only when it is also shorter than
        # `_last_below` (the longest page seen that was followed by nothing, or a full one) or
        # than SMALLEST_API_PAGE; any other is followed by one look at the next page, which
        # tells whether the API pages by a size of its own. A page only reaches a new longest
        # a few times in a process's life, so this costs a handful of requests, where looking
        # past every short page would double them.
        self._api_page_size: int | None = None
        self._last_below = 0
        self._headers = {
            "Authorization": f"{api.access_key.reveal()}:{api.secret_access_key.reveal()}",
            "x-api-key": api.rate_limit_key.reveal(),
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": f"leadflow-exporter/{__version__}",
        }

    # -- paging ----------------------------------------------------------------------------

    @property
    def full_page(self) -> int:
        """How many records a page that is not the last one holds."""
        return self._api_page_size or self.api.page_size

    def _adopt_page_size(self, size: int) -> None:
        # The reference only guesses the page-size parameter's name: an API that ignores it
        # pages by a size of its own, and ending a query at the first page shorter than the
        # one asked for would then skip every later page, with every cycle reported a success.
        if self._api_page_size != size:
            log.warning(
                "api_page_size",
                asked=self.api.page_size,
                served=size,
                detail="the API pages by a size of its own; paging by that size from now on",
            )
        self._api_page_size = size
        self._last_below = size

    # -- query building -------------------------------------------------------------------

    def api_date(self, epoch: float) -> str:
        """A date parameter as wall-clock time in the configured zone, ISO-8601 without offset.

        The reference documents naive dates read as Eastern time, and does not say whether an
        offset is understood; naive local time is the form both sides agree on.
        """
        local = datetime.fromtimestamp(int(epoch), UTC).astimezone(self._tz)
        return local.replace(tzinfo=None).isoformat(timespec="seconds")

    def window_query(
        self,
        kind: str,
        start: float,
        end: float,
        active: bool,
        set_id: int | None,
        *,
        floor: float | None = None,
    ) -> Query:
        """A query for the calls between start and end.

        `floor` is the earliest start the window may reach back to (calls before it may have
        ended before the exporter started, or be counted already and forgotten): the hour the
        start is widened by across a DST fall-back stops there.
        """
        if self.falls_back_within(start, end):
            # In the repeated hour the naive start may read as later than calls of the second
            # pass; an API comparing wall-clock strings would skip them. An hour earlier
            # covers both passes; the overlap's dedup makes the extra reads harmless, down
            # to the floor.
            widened = start - 3600
            if floor is not None:
                widened = max(widened, min(floor, start))
            start = widened
        params = {
            "start_date": self.api_date(start),
            "end_date": self.api_date(end),
            "active": "1" if active else "0",
        }
        if set_id is not None:
            params["set_id"] = str(set_id)
        return Query(kind, params)

    def falls_back_within(self, start: float, end: float) -> bool:
        """Whether the zone's UTC offset drops (a DST fall-back) between start and end."""
        first = datetime.fromtimestamp(int(start), UTC).astimezone(self._tz).utcoffset()
        last = datetime.fromtimestamp(int(end), UTC).astimezone(self._tz).utcoffset()
        return first is not None and last is not None and last < first

    def sid_query(self, sid: str) -> Query:
        # active=0: a call that only dropped out of a shifting page of the live list must not
        # come back in progress, with partial values, and be counted as finished.
        return Query("sid", {"sid": sid, "active": "0"})

    # -- fetching --------------------------------------------------------------------------

    async def fetch(
        self,
        query: Query,
        on_page: Callable[[list[CallRecord]], Awaitable[None]] | None = None,
    ) -> QueryResult:
        """Every page of a query. Raises QueryFailed when a page cannot be had.

        With `on_page`, each page's records are handed over as the page arrives instead of
        being kept in `result.records`: a catch-up then never holds a hundred thousand
        records at once, and freeing them is spread over the pages instead of stalling the
        event loop for tens of milliseconds at the end of the query.
        """
        result = QueryResult()
        page_size = self.api.page_size
        # The sids of the page before, to tell a next page from the same list sent again.
        previous: set[str] = set()
        # The size of the page before this one, when this one is read only to learn whether
        # the API pages by a size of its own (see `_last_below`).
        probing: int | None = None
        for page_number in range(1, self.api.max_pages + 1):
            params = dict(query.params)
            if query.kind != "sid":
                params["page"] = str(page_number)
                params["page_size"] = str(page_size)
            page = await self._get_page(query.kind, params)
            result.pages += 1
            # An API that ignores `page` sends the first page again, or, for a list that
            # changed meanwhile, nearly the same records: most of them were on the page before.
            repeated = (
                page_number > 1
                and bool(page.records)
                and 2 * sum(1 for r in page.records if r.sid in previous) > len(page.records)
            )
            if probing is not None:
                if repeated or page.size == 0:
                    # That short page was the last: pages shorter than it always are.
                    self._last_below = max(self._last_below, probing)
                    return result
                self._adopt_page_size(probing)
                probing = None
            if repeated:
                # The API ignored `page` and sent the first page again: all there is was read.
                return result
            previous = {r.sid for r in page.records}
            if on_page is None:
                result.records.extend(page.records)
            else:
                await on_page(page.records)
            result.raw_count += page.size
            result.invalid_keys += page.invalid_keys
            result.bad_value_keys += page.bad_value_keys
            if query.kind == "sid" or page.size == 0:
                return result
            if page.size == self.full_page:
                # Not the last page, or not known to be: any shorter page is the last.
                self._last_below = max(self._last_below, page.size)
            else:
                if (
                    page.size < max(self._last_below, SMALLEST_API_PAGE)
                    or page_number == self.api.max_pages
                ):
                    return result
                probing = page.size
        detail = f"{query.kind} query still had full pages after {self.api.max_pages} pages"
        self._health.api_errors[(query.kind, "page_cap")] += 1
        log.warning(
            "api_query_failed",
            query=query.kind,
            reason="page_cap",
            detail=detail,
            pages=result.pages,
        )
        raise QueryFailed("page_cap", detail)

    async def _get_page(self, kind: str, params: dict[str, str]) -> Any:
        attempts = self.api.max_retries + 1
        for attempt in range(1, attempts + 1):
            await self._budget.acquire()
            try:
                return await self._request(kind, params)
            except _Retryable as exc:
                self._health.api_errors[(kind, exc.reason)] += 1
                if exc.retry_after is not None:
                    self._budget.pause(min(exc.retry_after, RETRY_AFTER_CAP_SECONDS))
                if attempt == attempts:
                    log.warning(
                        "api_query_failed",
                        query=kind,
                        reason=exc.reason,
                        detail=exc.detail,
                        attempts=attempt,
                    )
                    raise QueryFailed(exc.reason, exc.detail) from None
                delay = self._backoff(attempt)
                log.info(
                    "api_retry",
                    query=kind,
                    reason=exc.reason,
                    detail=exc.detail,
                    attempt=attempt,
                    delay_seconds=round(delay, 2),
                    retry_after=exc.retry_after,
                )
                await self._clock.sleep(delay)
            except QueryFailed as exc:
                self._health.api_errors[(kind, exc.reason)] += 1
                log.warning(
                    "api_query_failed",
                    query=kind,
                    reason=exc.reason,
                    detail=exc.detail,
                    attempts=attempt,
                )
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _backoff(self, attempt: int) -> float:
        # Full jitter: spreads retries of several exporters sharing one key.
        ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1))
        return self._rng.uniform(ceiling / 2, ceiling)

    async def _request(self, kind: str, params: dict[str, str]) -> Any:
        timeout = aiohttp.ClientTimeout(total=self.api.timeout_seconds)
        try:
            async with self._session.get(
                self.api.base_url,
                params=params,
                headers=self._headers,
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                body = await response.read()
                status = response.status
                retry_after_header = response.headers.get("Retry-After")
        except TimeoutError:
            self._health.api_requests[(kind, "timeout")] += 1
            raise _Retryable(
                "timeout", f"no complete answer within {self.api.timeout_seconds:g}s"
            ) from None
        except aiohttp.ClientPayloadError as exc:
            self._health.api_requests[(kind, "error")] += 1
            raise _Retryable("truncated_body", self._scrub(str(exc))) from None
        except aiohttp.ClientError as exc:
            self._health.api_requests[(kind, "error")] += 1
            raise _Retryable("connection", self._scrub(f"{type(exc).__name__}: {exc}")) from None
        self._health.api_requests[(kind, str(status))] += 1
        if status == 200:
            try:
                # Decoding a large page takes milliseconds; keep the event loop serving scrapes.
                if len(body) > 256 * 1024:
                    return await asyncio.to_thread(
                        decode_page, body, self._dates, self._extra_labels
                    )
                return decode_page(body, self._dates, self._extra_labels)
            except EnvelopeError as exc:
                raise _Retryable("bad_envelope", self._scrub(str(exc))) from None
            except (ValueError, TypeError, ArithmeticError, RecursionError) as exc:
                # A body no reader anticipated fails this query, not the poll loop.
                log.warning("undecodable_page", query=kind, error=type(exc).__name__)
                raise _Retryable(
                    "bad_envelope", f"undecodable page: {type(exc).__name__}"
                ) from None
        detail = f"HTTP {status}: {self._error_text(body)}"
        if status == 429:
            retry_after = parse_retry_after(retry_after_header, self._clock.now())
            raise _Retryable("rate_limited", detail, retry_after)
        if status >= 500:
            raise _Retryable("server_error", detail)
        if status in (401, 403):
            raise QueryFailed("unauthorized", detail)
        if status == 408:
            raise _Retryable("timeout", detail)
        raise QueryFailed("bad_request" if status == 400 else "client_error", detail)

    def _error_text(self, body: bytes) -> str:
        text = body[:4096].decode("utf-8", "replace")
        try:
            import json

            parsed = json.loads(text)
            if isinstance(parsed, dict):
                for key in ("error", "message", "errorMessage", "detail"):
                    if parsed.get(key):
                        text = str(parsed[key])
                        break
        except ValueError:
            pass
        text = " ".join(text.split())
        return self._scrub(text)[:ERROR_BODY_CHARS] or "(empty body)"

    def _scrub(self, text: str) -> str:
        """Remove any credential an error body or exception might echo back."""
        return self._secrets.sub("<redacted>", text) if self._secrets else text
