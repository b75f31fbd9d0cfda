"""Metric families built fresh from the ledger and health on every render."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from leadflow_exporter import __version__
from leadflow_exporter.health import QUERIES, Health
from leadflow_exporter.ledger import TALK_BUCKETS, Ledger, SetTotals
from leadflow_exporter.ratebudget import RateBudget

CACHED = " Read from the exporter's last poll of the LeadFlow API, not at scrape time."

# Every metric name the exporter exposes (histogram and counter suffixes included), for
# the tests that check dashboards and rules only use what exists.
METRIC_NAMES = frozenset(
    {
        "leadflow_calls_total",
        "leadflow_active_calls",
        "leadflow_talk_seconds_total",
        "leadflow_call_seconds_total",
        "leadflow_talk_duration_seconds_bucket",
        "leadflow_talk_duration_seconds_sum",
        "leadflow_talk_duration_seconds_count",
        "leadflow_offer_revenue_usd_total",
        "leadflow_affiliate_payout_usd_total",
        "leadflow_margin_usd",
        "leadflow_qualified_calls_total",
        "leadflow_repeat_calls_total",
        "leadflow_contested_calls_total",
        "leadflow_last_call_timestamp_seconds",
        "leadflow_up",
        "leadflow_exporter_last_success_timestamp_seconds",
        "leadflow_exporter_poll_duration_seconds",
        "leadflow_exporter_api_requests_total",
        "leadflow_exporter_api_errors_total",
        "leadflow_exporter_records_total",
        "leadflow_exporter_invalid_records_total",
        "leadflow_exporter_invalid_values_total",
        "leadflow_exporter_tracked_calls",
        "leadflow_exporter_followed_calls",
        "leadflow_exporter_followups_abandoned_total",
        "leadflow_exporter_series_dropped_total",
        "leadflow_exporter_build_info",
        "leadflow_exporter_poll_interval_seconds",
        "leadflow_exporter_rate_budget_requests_per_minute",
        "leadflow_exporter_rate_budget_used_requests",
        "leadflow_exporter_watermark_timestamp_seconds",
        "leadflow_exporter_config_last_reload_successful",
        "leadflow_exporter_config_last_reload_success_timestamp_seconds",
    }
)

INVALID_REASONS = ("missing_sid", "bad_call_date", "malformed")


class LedgerCollector(Collector):
    """The business metrics: large, and changed only when a poll cycle commits."""

    def __init__(self, ledger: Ledger, *, extra_labels: tuple[str, ...] = ()) -> None:
        self.ledger = ledger
        self.extra_labels = extra_labels

    def collect(self) -> Iterator[Metric]:
        return self._business()

    def _business(self) -> Iterator[Metric]:
        totals = self.ledger.totals
        calls = CounterMetricFamily(
            "leadflow_calls",
            "Finished LeadFlow calls, each counted once by sid." + CACHED,
            labels=["set_name", "lead_status", *self.extra_labels],
        )
        # In the order the series first appeared, not sorted: at 100k series a sort is over a
        # tenth of a second in C, holding the GIL while scrapes wait (Prometheus needs no order).
        for key, count in totals.calls.items():
            calls.add_metric(list(key), count)
        yield calls

        active = GaugeMetricFamily(
            "leadflow_active_calls",
            "Calls in progress at the last poll (active=1)." + CACHED,
            labels=["set_name"],
        )
        for name, count in sorted(self.ledger.active.items()):
            active.add_metric([name], count)
        yield active

        sets = sorted(totals.sets.items())
        yield _per_set(
            CounterMetricFamily,
            "leadflow_talk_seconds",
            "Connected talk time of finished calls (talk_seconds)." + CACHED,
            sets,
            lambda t: t.talk_seconds,
        )
        yield _per_set(
            CounterMetricFamily,
            "leadflow_call_seconds",
            "Whole duration of finished calls (total_seconds)." + CACHED,
            sets,
            lambda t: t.call_seconds,
        )
        histogram = HistogramMetricFamily(
            "leadflow_talk_duration_seconds",
            "Talk time per finished call (talk_seconds)." + CACHED,
            labels=["set_name"],
        )
        for name, t in sets:
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip((*TALK_BUCKETS, float("inf")), t.talk_buckets, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else _bound(bound), cumulative))
            histogram.add_metric([name], buckets, t.talk_seconds)
        yield histogram
        yield _per_set(
            CounterMetricFamily,
            "leadflow_offer_revenue_usd",
            "Offer price of finished calls: revenue, in USD." + CACHED,
            sets,
            lambda t: SetTotals.usd(t.revenue),
        )
        yield _per_set(
            CounterMetricFamily,
            "leadflow_affiliate_payout_usd",
            "Affiliate price of finished calls: payout, in USD." + CACHED,
            sets,
            lambda t: SetTotals.usd(t.payout),
        )
        yield _per_set(
            GaugeMetricFamily,
            "leadflow_margin_usd",
            "Running sum of margin (offer minus affiliate price) in USD; signed, use delta()."
            + CACHED,
            sets,
            lambda t: SetTotals.usd(t.margin),
        )
        qualified = CounterMetricFamily(
            "leadflow_qualified_calls",
            "Finished calls that qualified by the offer's or the affiliate's criteria." + CACHED,
            labels=["set_name", "party"],
        )
        repeat = CounterMetricFamily(
            "leadflow_repeat_calls",
            "Finished calls flagged as reroute or repeat affiliate caller." + CACHED,
            labels=["set_name", "kind"],
        )
        for name, t in sets:
            qualified.add_metric([name, "offer"], t.qualified_offer)
            qualified.add_metric([name, "affiliate"], t.qualified_affiliate)
            repeat.add_metric([name, "reroute"], t.reroute)
            repeat.add_metric([name, "repeat_affiliate_caller"], t.repeat_affiliate_caller)
        yield qualified
        yield repeat
        yield _per_set(
            CounterMetricFamily,
            "leadflow_contested_calls",
            "Finished calls whose advertiser contested paying for the lead." + CACHED,
            sets,
            lambda t: t.contested,
        )
        yield _per_set(
            GaugeMetricFamily,
            "leadflow_last_call_timestamp_seconds",
            "Start time (call_date) of the newest finished call seen, as a Unix time." + CACHED,
            [(n, t) for n, t in sets if t.last_call_ts > 0],
            lambda t: t.last_call_ts,
        )


class HealthCollector(Collector):
    """The exporter's own health: a few dozen series that change during a cycle too.

    Rendered on every scrape, so a cycle stuck in retries shows its errors while it lasts.
    """

    def __init__(
        self, ledger: Ledger, health: Health, budget: RateBudget, *, interval_seconds: float
    ) -> None:
        self.ledger = ledger
        self.health = health
        self.budget = budget
        self.interval_seconds = interval_seconds

    def collect(self) -> Iterator[Metric]:
        health = self.health
        yield GaugeMetricFamily(
            "leadflow_up",
            "1 when the last poll cycle of the LeadFlow API succeeded.",
            value=1 if health.last_cycle_ok else 0,
        )
        last_success = GaugeMetricFamily(
            "leadflow_exporter_last_success_timestamp_seconds",
            "Unix time of the last successful query of each kind.",
            labels=["query"],
        )
        durations = GaugeMetricFamily(
            "leadflow_exporter_poll_duration_seconds",
            "Duration of each kind of query in the last poll cycle, retries and waits included.",
            labels=["query"],
        )
        for query in QUERIES:
            status = health.queries[query]
            last_success.add_metric([query], status.last_success)
            durations.add_metric([query], status.last_duration)
        yield last_success
        yield durations
        requests = CounterMetricFamily(
            "leadflow_exporter_api_requests",
            "Requests sent to the LeadFlow API, by query and HTTP status (or timeout/error).",
            labels=["query", "code"],
        )
        for (query, code), count in sorted(health.api_requests.items()):
            requests.add_metric([query, code], count)
        yield requests
        errors = CounterMetricFamily(
            "leadflow_exporter_api_errors",
            "Failed LeadFlow API requests, by query and reason; each retry counts.",
            labels=["query", "reason"],
        )
        for (query, reason), count in sorted(health.api_errors.items()):
            errors.add_metric([query, reason], count)
        yield errors
        records = CounterMetricFamily(
            "leadflow_exporter_records",
            "Records received from the LeadFlow API, by query.",
            labels=["query"],
        )
        for query in QUERIES:
            records.add_metric([query], health.records[query])
        yield records
        invalid = CounterMetricFamily(
            "leadflow_exporter_invalid_records",
            "Records skipped because they cannot be counted, by reason; each record once.",
            labels=["reason"],
        )
        for reason in sorted({*INVALID_REASONS, *health.invalid_records}):
            invalid.add_metric([reason], health.invalid_records[reason])
        yield invalid
        values = CounterMetricFamily(
            "leadflow_exporter_invalid_values",
            "Unreadable values in call records, read as zero, once per call and field.",
            labels=["field"],
        )
        for name, count in sorted(health.invalid_values.items()):
            values.add_metric([name], count)
        yield values
        yield GaugeMetricFamily(
            "leadflow_exporter_tracked_calls",
            "Call ids remembered to count each call once (the dedup ledger's size).",
            value=self.ledger.tracked(),
        )
        yield GaugeMetricFamily(
            "leadflow_exporter_followed_calls",
            "Calls seen in progress and followed until they show up finished.",
            value=len(self.ledger.followed),
        )
        yield CounterMetricFamily(
            "leadflow_exporter_followups_abandoned",
            "Followed calls that never showed up finished within poll.max_call_seconds.",
            value=health.followups_abandoned,
        )
        dropped = CounterMetricFamily(
            "leadflow_exporter_series_dropped",
            "Updates left out of a metric because it reached metrics.max_series_per_metric.",
            labels=["metric"],
        )
        for metric, count in sorted(health.series_dropped.items()):
            dropped.add_metric([metric], count)
        yield dropped
        yield _build_info()
        yield GaugeMetricFamily(
            "leadflow_exporter_poll_interval_seconds",
            "Configured poll interval.",
            value=self.interval_seconds,
        )
        yield GaugeMetricFamily(
            "leadflow_exporter_rate_budget_requests_per_minute",
            "Client-side request budget (api.requests_per_minute).",
            value=self.budget.per_minute,
        )
        yield GaugeMetricFamily(
            "leadflow_exporter_rate_budget_used_requests",
            "Requests sent to the API in the last 60 seconds.",
            value=self.budget.used(),
        )
        if self.ledger.watermark is not None:
            yield GaugeMetricFamily(
                "leadflow_exporter_watermark_timestamp_seconds",
                "Unix time up to which history was read without a gap.",
                value=self.ledger.watermark,
            )
        yield GaugeMetricFamily(
            "leadflow_exporter_config_last_reload_successful",
            "1 when the last configuration reload succeeded.",
            value=1 if health.config_reload_ok else 0,
        )
        yield GaugeMetricFamily(
            "leadflow_exporter_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load.",
            value=health.config_reload_time,
        )


def _build_info() -> Metric:
    info = GaugeMetricFamily(
        "leadflow_exporter_build_info",
        "Build information; the value is always 1.",
        labels=["version"],
    )
    info.add_metric([__version__], 1)
    return info


def _bound(value: float) -> str:
    return str(int(value)) + ".0" if value.is_integer() else repr(value)


def _per_set(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    documentation: str,
    sets: list[tuple[str, SetTotals]],
    value: Callable[[SetTotals], float],
) -> Metric:
    family = kind(name, documentation, labels=["set_name"])
    for set_name, totals in sets:
        family.add_metric([set_name], value(totals))
    return family


class LeadFlowCollector(Collector):
    """Every exporter metric from one collector, for one-shot renders such as tests."""

    def __init__(
        self,
        ledger: Ledger,
        health: Health,
        budget: RateBudget,
        *,
        interval_seconds: float,
        extra_labels: tuple[str, ...] = (),
    ) -> None:
        self.parts = (
            LedgerCollector(ledger, extra_labels=extra_labels),
            HealthCollector(ledger, health, budget, interval_seconds=interval_seconds),
        )

    def collect(self) -> Iterator[Metric]:
        for part in self.parts:
            yield from part.collect()
