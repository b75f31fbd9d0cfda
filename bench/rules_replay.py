"""The spike alerts' arithmetic, replayed in Python over the backtest's counters, for sweeps.

``bench.backtest`` runs the real rules file under promtool: the reference, about 16 minutes a
week. This module computes the same two alerts from the same counters in seconds, so that
settings can be compared over many weeks of traffic: the 4m share and its excess z-score
against the seasonal baseline (the highest 30m share within half an hour of the same time one
week earlier), the volume guard, ``for: 0m`` and ``keep_firing_for``. It covers the weekly
baseline only, so it needs a week of warm-up (the fallbacks of a fresh install are promtool's
job). ``tests/test_backtest.py`` checks that it finds the episodes promtool finds, and that its
default settings are the rules file's.

    python -m bench.rules_replay --seeds 8            # the shipped settings, seeds 5-12
    python -m bench.rules_replay --seeds 8 --z 4.5    # a stricter significance limit
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, fields

from bench.backtest import (
    DAY,
    DEFAULT_SPIKES,
    DEFAULT_START,
    MINUTE,
    Episode,
    counter_samples,
    match,
    run_models,
)
from leadflow_exporter.config import PollConfig

SCRAPE = 15  # seconds; also the spike group's evaluation interval
STATUS_OF_ALERT = {
    "LeadFlowNoBuyerSpike": "no_buyer",
    "LeadFlowAffiliateCapSpike": "affiliate_cap",
}
WEEK = 7 * DAY


@dataclass(frozen=True)
class Settings:
    """The spike alerts' parameters; the defaults are the rules file's."""

    window: int = 4 * MINUTE  # the current share
    margin: float = 0.10  # share above the baseline
    z: float = 4.25  # significance limit
    variance_extra: float = 1.0  # added to the binomial variance
    min_calls: int = 10  # volume guard over the window
    keep_firing: int = 10 * MINUTE
    baseline_window: int = 30 * MINUTE  # the smoothed share the baseline is taken from
    baseline_range: int = 60 * MINUTE  # centred on the same time one week earlier


def _sliding_max(values: Sequence[float | None], width: int) -> list[float | None]:
    """``max(values[i - width + 1 : i + 1])`` for every i, ignoring None (absent samples)."""
    out: list[float | None] = [None] * len(values)
    window: deque[int] = deque()
    for i, value in enumerate(values):
        if value is not None:
            while window and values[window[-1]] <= value:  # type: ignore[operator]
                window.pop()
            window.append(i)
        while window and window[0] <= i - width:
            window.popleft()
        out[i] = values[window[0]] if window else None
    return out


def replay(
    samples: dict[tuple[str, str], list[int]],
    begin: int,
    week_start: int,
    settings: Settings = Settings(),
) -> list[Episode]:
    """Spike-alert episodes from ``week_start`` on, for counters scraped every 15 s from
    ``begin``. Evaluations fall on the scrapes, as in the backtest's promtool test; a range
    ``[t - w, t]`` holds the samples at both ends (Prometheus 2.x), so with no gaps and no
    resets ``increase`` is the difference of its end samples."""
    n = len(next(iter(samples.values())))
    step = {name: getattr(settings, name) // SCRAPE for name in ("window", "baseline_window")}
    half = settings.baseline_range // 2 // SCRAPE
    first = (week_start - begin) // SCRAPE
    out: list[Episode] = []
    for set_name in sorted({s for s, _ in samples}):
        series = [v for (s, _), v in samples.items() if s == set_name]
        total = [sum(values) for values in zip(*series, strict=True)]
        for alert, status in STATUS_OF_ALERT.items():
            hits = samples[(set_name, status)]
            w = step["baseline_window"]
            smooth: list[float | None] = [None] * n
            for i in range(w, n):
                calls = total[i] - total[i - w]
                if calls > 0:
                    smooth[i] = (hits[i] - hits[i - w]) / calls
            highest = _sliding_max(smooth, 2 * half + 1)
            w = step["window"]
            episode: Episode | None = None
            last_true = 0
            for i in range(max(first, w), n):
                t = begin + i * SCRAPE
                j = i - WEEK // SCRAPE + half  # the end of [t - 1w - 30m, t - 1w + 30m]
                baseline = highest[j] if 0 <= j < n else None
                calls = total[i] - total[i - w]
                firing = False
                if baseline is not None and calls >= settings.min_calls and calls > 0:
                    hit = hits[i] - hits[i - w]
                    z = (hit - calls * baseline) / math.sqrt(
                        calls * baseline * (1 - baseline) + settings.variance_extra
                    )
                    firing = hit / calls > baseline + settings.margin and z > settings.z
                if firing:
                    if episode is None:
                        episode = Episode(alert, set_name, t, t)
                    last_true = t
                if episode is not None:
                    if t <= last_true + settings.keep_firing:
                        episode.end = t  # firing, or kept firing
                    else:
                        out.append(episode)
                        episode = None
            if episode is not None:
                out.append(episode)
    return sorted(out, key=lambda e: (e.start, e.alert, e.set_name))


@dataclass
class Week:
    seed: int
    false_alarms: list[Episode]  # on the normal week
    unmatched: list[Episode]  # in the spike run, matching no spike
    delays: list[int | None]  # seconds, per spike


def replay_week(
    seed: int,
    settings: Settings = Settings(),
    volume: float = 10.0,
    days: int = 7,
    warmup_days: int = 8,
) -> Week:
    """The backtest's two runs of one week of traffic, replayed."""
    poll_interval = int(PollConfig().interval_seconds)
    week_start = int(DEFAULT_START.timestamp())
    begin = week_start - warmup_days * DAY
    end = week_start + days * DAY
    spikes = list(DEFAULT_SPIKES)
    models = run_models(spikes, seed, volume, DEFAULT_START, warmup_days)
    found = {}
    for run, model in models.items():
        samples, _ = counter_samples(model, begin, end, SCRAPE, 10, poll_interval)
        found[run] = replay(samples, begin, week_start, settings)
    report = match(spikes, DEFAULT_START, found["spikes"])
    unmatched = [e for e in found["spikes"] if e.spike is None]
    delays = [s["delay_seconds"] for s in report]
    return Week(seed, found["normal"], unmatched, delays)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=4, help="weeks of traffic, from seed 5")
    parser.add_argument("--volume", type=float, default=10.0)
    for f in fields(Settings):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default),
                            default=f.default)  # fmt: skip
    args = parser.parse_args(argv)
    settings = Settings(**{f.name: getattr(args, f.name) for f in fields(Settings)})
    print(settings)
    print("seed | false alarms | within 5 min | delays (minutes, spikes 1-10)")
    false_total = within_total = 0
    for seed in range(5, 5 + args.seeds):
        week = replay_week(seed, settings, args.volume)
        within = sum(d is not None and d <= 5 * MINUTE for d in week.delays)
        false_total += len(week.false_alarms)
        within_total += within
        delays = ", ".join("-" if d is None else f"{d / 60:.2f}" for d in week.delays)
        print(f"{seed:4d} | {len(week.false_alarms):12d} | {within:5d} / 10 | {delays}")
    print(f"all  | {false_total:12d} | {within_total:4d} / {10 * args.seeds} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
