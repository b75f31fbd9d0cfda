"""Alert backtest: the real LeadFlow spike alerts over a simulated week, evaluated by promtool.

Two runs over the same simulated account (same seed, same traffic):

* **normal**: a week of steady traffic with the simulator's daily curve (quiet nights, busy
  business hours, quieter weekends, more No Buyer calls outside buyers' hours). Every spike
  alert that fires here is a false alarm.
* **spikes**: the same week with ten spikes, each aimed at one set, of different sets, sizes
  and times of day (``leadflow_exporter.simulator.scenarios.targeted``).

For each run the traffic model gives every call's start, end, set and status. The exporter is
modelled as it behaves: it polls once a minute (at ``--poll-offset`` seconds past the minute)
and counts each call once it has finished, so ``leadflow_calls_total{set_name,lead_status}``
steps once a minute; Prometheus scrapes it every ``--scrape-interval``. ``--warmup-days`` of
the same traffic before the week (default 8) fill the rules' baselines: with 8 days the
seasonal baseline (the same time one week earlier) exists for the whole week; with 1 day the
week runs on the fallback baseline (one day earlier), as in the first week after an install.

The series of both runs (as two exporter instances) and the rules file (unchanged, 1-minute
evaluation, the recording group before the alert group) go to one ``promtool test rules`` unit
test whose ``alert_rule_test`` entries expect no alert at every evaluation minute of the week;
promtool's rule manager evaluates the real recording and alerting rules, ``for:`` included, and
lists every alert that is firing where none was expected. Those lists are parsed into firing
episodes per (alert, instance, set).

A spike counts as detected by the first episode of its alert for its set that starts between
its onset and its end plus the short window and ``for``; the delay is from onset to the first
evaluation at which the alert is firing. Precision is the share of all fired episodes (both
runs) that correspond to a spike.

    python -m bench.backtest                       # the full week, report on stdout
    python -m bench.backtest --json results.json   # also machine-readable
    python -m bench.backtest --days 2 --spikes 3   # a shorter run (what the test uses)
    python -m bench.backtest --warmup-days 1       # the first week after an install
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml

from leadflow_exporter.config import PollConfig
from leadflow_exporter.simulator import LEAD_STATUSES, STATUS_KEYS, TrafficModel
from leadflow_exporter.simulator.catalog import SETS, SETS_BY_ID
from leadflow_exporter.simulator.scenarios import Schedule, targeted

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules" / "leadflow-exporter.rules.yaml"
EASTERN = ZoneInfo("America/New_York")
MINUTE = 60
DAY = 86_400

JOB = "leadflow"
# The two runs are two exporter instances in one promtool evaluation.
RUNS = {"normal": "normal:10151", "spikes": "spikes:10151"}
ALERTS = ("LeadFlowNoBuyerSpike", "LeadFlowAffiliateCapSpike", "LeadFlowNoCalls")
SPIKE_ALERTS = {
    "no-buyer-spike": "LeadFlowNoBuyerSpike",
    "affiliate-cap-spike": "LeadFlowAffiliateCapSpike",
}
# A Monday, with no DST change in the following eight days.
DEFAULT_START = datetime(2026, 10, 5, tzinfo=EASTERN)


@dataclass(frozen=True)
class Spike:
    """One spike: ``kind`` (scenario) aimed at set ``set_id`` with ``share``."""

    kind: str
    set_id: int
    share: float
    day: int  # 0 = the first day of the week
    at: str  # Eastern wall-clock time, HH:MM
    minutes: int = 30

    def onset(self, week_start: datetime) -> int:
        hour, minute = (int(x) for x in self.at.split(":"))
        local = (week_start + timedelta(days=self.day)).replace(hour=hour, minute=minute)
        return int(local.timestamp())

    @property
    def set_name(self) -> str:
        return SETS_BY_ID[self.set_id].name

    @property
    def alert(self) -> str:
        return SPIKE_ALERTS[self.kind]


# Ten spikes of one set each: every set at least once, both kinds, shares from 0.35 to 0.9 of
# the eligible calls, morning to late evening, weekdays and the weekend. A No Buyer spike's
# share applies to calls that would have connected (about 70 % of a set's calls in business
# hours); an Affiliate Cap spike's to all calls of the set.
DEFAULT_SPIKES: tuple[Spike, ...] = (
    Spike("no-buyer-spike", 102, 0.85, day=0, at="10:20"),
    Spike("affiliate-cap-spike", 101, 0.50, day=0, at="15:40"),
    Spike("no-buyer-spike", 103, 0.60, day=1, at="09:05"),
    Spike("affiliate-cap-spike", 104, 0.70, day=1, at="13:30"),
    Spike("no-buyer-spike", 105, 0.90, day=2, at="11:45"),
    Spike("no-buyer-spike", 101, 0.40, day=2, at="19:10"),
    Spike("affiliate-cap-spike", 102, 0.35, day=3, at="08:30"),
    Spike("no-buyer-spike", 104, 0.75, day=3, at="16:50"),
    Spike("affiliate-cap-spike", 103, 0.60, day=4, at="12:15"),
    Spike("affiliate-cap-spike", 105, 0.80, day=5, at="11:00"),
)


@dataclass
class Episode:
    alert: str
    set_name: str
    start: int  # epoch seconds of the first evaluation at which it was firing
    end: int  # epoch seconds of the last one
    spike: int | None = None  # index into the spike list when it corresponds to one


@dataclass
class Result:
    days: int
    volume: float
    seed: int
    scrape_interval: int
    poll_offset: int
    rules: str
    week_start: str
    warmup_days: int = 8
    poll_interval: int = 60
    eval_interval: int = MINUTE
    calls_normal: int = 0
    calls_spikes: int = 0
    normal_episodes: list[Episode] = field(default_factory=list)
    spike_episodes: list[Episode] = field(default_factory=list)
    spikes: list[dict[str, object]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def false_alarms(self) -> list[Episode]:
        return [
            e
            for e in [*self.normal_episodes, *self.spike_episodes]
            if e.spike is None and e.alert != "LeadFlowNoCalls"
        ]

    @property
    def precision(self) -> float | None:
        fired = [
            e for e in [*self.normal_episodes, *self.spike_episodes] if e.alert != "LeadFlowNoCalls"
        ]
        if not fired:
            return None
        return sum(e.spike is not None for e in fired) / len(fired)

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out["false_alarms"] = len(self.false_alarms)
        out["precision"] = self.precision
        return out


# -- the exporter's counters ----------------------------------------------------------------


def counter_samples(
    model: TrafficModel,
    begin: int,
    end: int,
    scrape_interval: int,
    poll_offset: int,
    poll_interval: int = 60,
) -> tuple[dict[tuple[str, str], list[int]], int]:
    """Scraped values of leadflow_calls_total per (set, status) from ``begin`` to ``end``.

    The exporter polls every ``poll_interval`` seconds, the first ``poll_offset`` seconds
    after ``begin``, and has then counted every call that finished by the poll; a scrape at
    time ``s`` sees the latest poll at or before ``s``. Counters start at 0 when the
    exporter starts (``begin``); only calls that started after it are counted (the first
    window is recorded as seen without being counted).
    """
    polls = (end - begin) // poll_interval + 2
    # finished[key][i]: calls that finished in (poll i-1, poll i]
    finished: dict[tuple[str, str], list[int]] = {
        (s.name, STATUS_KEYS[status]): [0] * polls for s in SETS for status in LEAD_STATUSES
    }
    first_poll = begin + poll_offset
    calls = 0
    for call in model.calls_between(begin, end):
        if call.end > end:
            continue
        index = max(0, -(-(call.end - first_poll) // poll_interval))  # first poll at/after end
        if index < polls:
            finished[(call.set_name, STATUS_KEYS[call.lead_status])][index] += 1
            calls += 1
    scrapes = range(begin, end + 1, scrape_interval)
    out: dict[tuple[str, str], list[int]] = {}
    for key, per_poll in finished.items():
        totals = []
        running = 0
        for n in per_poll:
            running += n
            totals.append(running)
        values = []
        for s in scrapes:
            i = (s - first_poll) // poll_interval
            values.append(totals[i] if i >= 0 else 0)
        out[key] = values
    return out, calls


# -- promtool ---------------------------------------------------------------------------------


def compress(values: list[int]) -> str:
    """promtool's series notation for ``values``, runs of one value as ``vxN`` (N+1 values)."""
    out = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        out.append(str(values[i]) if j == i else f"{values[i]}x{j - i}")
        i = j + 1
    return " ".join(out)


def _series(name: str, labels: dict[str, str], values: list[int] | str) -> str:
    label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    text = values if isinstance(values, str) else compress(values)
    return f"      - series: '{name}{{{label_text}}}'\n        values: '{text}'\n"


def shortest_interval(rules: Path) -> int:
    """The shortest group interval of ``rules``; a minute when no group sets one."""
    return min([i for _, i in rule_groups(rules) if i] or [MINUTE])


def rule_groups(rules: Path) -> list[tuple[str, int | None]]:
    """(name, interval in seconds or None for the global one) of each group, in file order."""
    groups = yaml.safe_load(rules.read_text())["groups"]
    return [
        (g["name"], _duration_seconds(g["interval"]) if "interval" in g else None) for g in groups
    ]


def unit_test_file(
    rules: Path,
    samples: dict[tuple[str, str], list[int]] | dict[str, dict[tuple[str, str], list[int]]],
    scrape_interval: int,
    eval_times: range,
    eval_interval: int = MINUTE,
) -> str:
    """A promtool test file: the series, and 'no alert' expected at every evaluation.

    ``samples`` maps (set, status) to scraped values, or instance to such a map (several
    exporters in one evaluation). ``eval_times`` are offsets in seconds; the spike alerts are
    checked at each of them, the others once a minute. promtool evaluates every group at
    every ``eval_interval`` (it ignores the groups' own ``interval``), so this should be the
    shortest group interval of the rules file.
    """
    one = not all(isinstance(k, str) for k in samples)
    instances = {"exporter:10151": samples} if one else samples
    order = "".join(f"  - {name}\n" for name, _ in rule_groups(rules))
    parts = [
        f"rule_files:\n  - {json.dumps(str(rules))}\n",
        f"evaluation_interval: {eval_interval}s\n",
        f"group_eval_order:\n{order}",
        "tests:\n",
        f"  - interval: {scrape_interval}s\n    input_series:\n",
    ]
    for instance, per_key in instances.items():
        n = len(next(iter(per_key.values())))
        base = {"job": JOB, "instance": instance}
        for (set_name, status), values in per_key.items():
            labels = {**base, "set_name": set_name, "lead_status": status}
            parts.append(_series("leadflow_calls_total", labels, values))
        # The exporter is up and polling fine the whole time (LeadFlowNoCalls needs leadflow_up).
        parts.append(_series("up", base, f"1x{n - 1}"))
        parts.append(_series("leadflow_up", base, f"1x{n - 1}"))
    parts.append("    alert_rule_test:\n")
    for t in eval_times:
        for alert in ALERTS:
            if alert in SPIKE_ALERTS.values() or t % MINUTE == 0:
                parts.append(f"      - {{eval_time: {t}s, alertname: {alert}, exp_alerts: []}}\n")
    return "".join(parts)


_FAILURE_RE = re.compile(
    r"alertname: (\S+), time: (\S+), \n\s+exp:\[\], \n\s+got:\[(.*?)\n\s+\]", re.S
)
_LABELS_RE = re.compile(r"Labels:\{(.*?)\}\n")
_LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _duration_seconds(text: str) -> int:
    units = {"d": DAY, "h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([dhms])", text)
    if not parts and text != "0s":
        raise ValueError(f"unexpected duration {text!r}")
    return sum(int(n) * units[u] for n, u in parts)


def run_promtool(test_text: str, workdir: Path) -> dict[tuple[str, str, str], list[int]]:
    """Run the unit test; the firing times (offsets in seconds) per (alert, instance, set)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        raise RuntimeError("promtool not found (Debian package prometheus)")
    path = workdir / "backtest.test.yaml"
    path.write_text(test_text)
    proc = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    output = proc.stdout + proc.stderr
    firing: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    failures = _FAILURE_RE.findall(output)
    for alert, at, got in failures:
        for labels_text in _LABELS_RE.findall(got + "\n"):
            labels = dict(_LABEL_RE.findall(labels_text))
            if labels.get("alertname") != alert:
                raise RuntimeError(f"cannot read promtool output: {labels_text!r}")
            key = (alert, labels.get("instance", ""), labels.get("set_name", ""))
            firing[key].append(_duration_seconds(at))
    # Anything other than "an alert fired where none was expected" is an error of the backtest.
    if proc.returncode != 0 and not failures:
        raise RuntimeError(f"promtool failed:\n{output[-4000:]}")
    if proc.returncode == 0 and failures:
        raise RuntimeError("promtool passed but reported failures")
    if output.count("alertname:") != len(failures):
        raise RuntimeError(f"unexpected promtool output:\n{output[-4000:]}")
    return firing


def episodes(firing: dict[tuple[str, str, str], list[int]], origin: int) -> list[Episode]:
    """Runs of firing evaluations (at most a minute apart) as episodes, in epoch seconds."""
    out = []
    for (alert, _instance, set_name), offsets in firing.items():
        offsets = sorted(set(offsets))
        start = prev = offsets[0]
        for t in offsets[1:]:
            if t - prev > MINUTE:
                out.append(Episode(alert, set_name, origin + start, origin + prev))
                start = t
            prev = t
        out.append(Episode(alert, set_name, origin + start, origin + prev))
    return sorted(out, key=lambda e: (e.start, e.alert, e.set_name))


# -- the backtest -----------------------------------------------------------------------------


def evaluate(
    models: dict[str, TrafficModel],
    week_start: int,
    days: int,
    warmup_days: int,
    rules: Path,
    scrape_interval: int,
    poll_offset: int,
    workdir: Path,
    poll_interval: int = 60,
    eval_interval: int = MINUTE,
) -> dict[str, tuple[list[Episode], int]]:
    """Episodes (of the week only) and finished calls per run, all runs in one evaluation."""
    begin = week_start - warmup_days * DAY
    end = week_start + days * DAY
    samples = {}
    calls = {}
    for run, model in models.items():
        samples[RUNS[run]], calls[run] = counter_samples(
            model, begin, end, scrape_interval, poll_offset, poll_interval
        )
    # promtool evaluates the rules at every eval_interval from the start (the warm-up builds
    # the baselines); alerts are expected (and reported) for the week only.
    times = range(week_start - begin, end - begin + 1, eval_interval)
    text = unit_test_file(rules, samples, scrape_interval, times, eval_interval)
    firing = run_promtool(text, workdir)
    out = {}
    for run in models:
        mine = {k: v for k, v in firing.items() if k[1] == RUNS[run]}
        found = [e for e in episodes(mine, begin) if e.start >= week_start]
        out[run] = (found, calls[run])
    return out


def match(spikes: list[Spike], week_start: datetime, found: list[Episode]) -> list[dict]:
    """Attach episodes to spikes; per spike: onset, detection delay, episode."""
    report = []
    # Short window + for: 5m, in seconds, after a spike ends an alert can still start.
    grace = 15 * MINUTE
    for i, spike in enumerate(spikes):
        onset = spike.onset(week_start)
        hit = None
        for e in found:
            if (
                e.spike is None
                and e.alert == spike.alert
                and e.set_name == spike.set_name
                and onset <= e.start <= onset + spike.minutes * MINUTE + grace
            ):
                e.spike = i
                hit = hit or e
        report.append(
            {
                "kind": spike.kind,
                "alert": spike.alert,
                "set_id": spike.set_id,
                "set_name": spike.set_name,
                "share": spike.share,
                "onset": datetime.fromtimestamp(onset, EASTERN).strftime("%a %H:%M"),
                "minutes": spike.minutes,
                "detected": hit is not None,
                "delay_seconds": hit.start - onset if hit else None,
            }
        )
    return report


def run_models(
    spikes: list[Spike],
    seed: int,
    volume: float,
    week_start: datetime,
    warmup_days: int,
    runs: tuple[str, ...] = ("normal", "spikes"),
) -> dict[str, TrafficModel]:
    """The traffic of each run: the normal week, and the same week with ``spikes``."""
    schedule = []
    for s in spikes:
        onset = s.onset(week_start)
        schedule += [
            (onset, targeted(s.kind, set_id=s.set_id, share=s.share)),
            (onset + s.minutes * MINUTE, "steady"),
        ]
    traffic_start = int(week_start.timestamp()) - warmup_days * DAY
    models = {
        "normal": TrafficModel(seed=seed, volume=volume, traffic_start=traffic_start),
        "spikes": TrafficModel(
            seed=seed, volume=volume, schedule=Schedule(schedule), traffic_start=traffic_start
        ),
    }
    return {run: model for run, model in models.items() if run in runs}


def backtest(
    days: int = 7,
    spikes: list[Spike] | None = None,
    seed: int = 5,
    volume: float = 10.0,
    rules: Path = RULES,
    scrape_interval: int = 15,
    poll_offset: int = 10,
    week_start: datetime = DEFAULT_START,
    warmup_days: int = 8,
    runs: tuple[str, ...] = ("normal", "spikes"),
    poll_interval: int | None = None,
    eval_interval: int | None = None,
) -> Result:
    """Evaluate ``runs`` (by default both; the spike run alone also shows false alarms, as
    alerts that match no spike, at half the cost)."""
    started = time.monotonic()
    if poll_interval is None:
        poll_interval = int(PollConfig().interval_seconds)
    if eval_interval is None:
        eval_interval = shortest_interval(rules)
    spikes = list(DEFAULT_SPIKES if spikes is None else spikes)
    if any(s.day >= days for s in spikes):
        raise ValueError("a spike lies outside the simulated days")
    start = int(week_start.timestamp())
    if not runs or not set(runs) <= set(RUNS):
        raise ValueError(f"runs must be a non-empty subset of {sorted(RUNS)}")
    if warmup_days < 1:
        raise ValueError("at least one day of warm-up")
    result = Result(
        days,
        volume,
        seed,
        scrape_interval,
        poll_offset,
        str(rules),
        week_start.isoformat(),
        warmup_days,
        poll_interval,
        eval_interval,
    )
    models = run_models(spikes, seed, volume, week_start, warmup_days, runs)
    with tempfile.TemporaryDirectory(prefix="leadflow-backtest-") as tmp:
        found = evaluate(
            models,
            start,
            days,
            warmup_days,
            rules,
            scrape_interval,
            poll_offset,
            Path(tmp),
            poll_interval,
            eval_interval,
        )
    if "normal" in found:
        result.normal_episodes, result.calls_normal = found["normal"]
    if "spikes" in found:
        result.spike_episodes, result.calls_spikes = found["spikes"]
    result.spikes = match(spikes, week_start, result.spike_episodes)
    result.seconds = round(time.monotonic() - started, 1)
    return result


def format_report(result: Result) -> str:
    def when(t: int) -> str:
        return datetime.fromtimestamp(t, EASTERN).strftime("%a %H:%M")

    lines = [
        f"{result.days} days from {result.week_start}, seed {result.seed}, volume "
        f"{result.volume:g}; exporter polls every {result.poll_interval}s (first at "
        f"+{result.poll_offset}s), scrape every {result.scrape_interval}s, rules evaluated "
        f"every {result.eval_interval}s; {result.warmup_days} day(s) of warm-up; "
        f"rules {result.rules}",
        f"calls: normal run {result.calls_normal}, spike run {result.calls_spikes}",
        "",
        "normal traffic: "
        + (f"{sum(e.alert != 'LeadFlowNoCalls' for e in result.normal_episodes)} spike alert(s)"),
    ]
    for e in result.normal_episodes:
        lines.append(f"  {e.alert} {e.set_name}: {when(e.start)} - {when(e.end)}")
    lines += ["", "spikes:"]
    lines.append(f"  {'#':>2} {'alert':<26} {'set':<15} {'share':>5} {'onset':<9} {'delay':>7}")
    for i, s in enumerate(result.spikes, 1):
        delay = f"{s['delay_seconds'] / 60:.2f} min" if s["detected"] else "missed"
        lines.append(
            f"  {i:>2} {s['alert']:<26} {s['set_name']:<15} {s['share']:>5.2f} "
            f"{s['onset']:<9} {delay:>7}"
        )
    others = [e for e in result.spike_episodes if e.spike is None]
    if others:
        lines.append("  alerts in the spike run that match no spike:")
        for e in others:
            lines.append(f"    {e.alert} {e.set_name}: {when(e.start)} - {when(e.end)}")
    delays = [s["delay_seconds"] for s in result.spikes if s["detected"]]
    precision = result.precision
    lines += [
        "",
        f"detected: {len(delays)}/{len(result.spikes)}; delay min/median/max: "
        + (
            f"{min(delays) / 60:.2f}/{sorted(delays)[len(delays) // 2] / 60:.2f}/"
            f"{max(delays) / 60:.2f} min; within 5 min: "
            f"{sum(d <= 5 * MINUTE for d in delays)}/{len(result.spikes)}"
            if delays
            else "-"
        ),
        f"false alarms: {len(result.false_alarms)}; precision: "
        + ("n/a (nothing fired)" if precision is None else f"{precision:.2f}"),
        f"({result.seconds}s)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--spikes", type=int, default=len(DEFAULT_SPIKES),
                        help="use the first N of the ten default spikes")  # fmt: skip
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--volume", type=float, default=10.0)
    parser.add_argument("--rules", type=Path, default=RULES)
    parser.add_argument("--scrape-interval", type=int, default=15)
    parser.add_argument("--poll-offset", type=int, default=10)
    parser.add_argument("--poll-interval", type=int, default=None,
                        help="exporter poll interval (default: the config default)")  # fmt: skip
    parser.add_argument("--eval-interval", type=int, default=None,
                        help="promtool's evaluation interval (default: the shortest group "
                        "interval of the rules file)")  # fmt: skip
    parser.add_argument("--warmup-days", type=int, default=8,
                        help="days of traffic before the week (1: the first week after an "
                        "install, on the fallback baseline)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    spikes = [s for s in DEFAULT_SPIKES[: args.spikes]]
    result = backtest(
        days=args.days,
        spikes=spikes,
        seed=args.seed,
        volume=args.volume,
        rules=args.rules.resolve(),
        scrape_interval=args.scrape_interval,
        poll_offset=args.poll_offset,
        warmup_days=args.warmup_days,
        poll_interval=args.poll_interval,
        eval_interval=args.eval_interval,
    )
    print(format_report(result))
    if args.json:
        args.json.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    ok = not result.false_alarms and all(
        s["detected"] and s["delay_seconds"] <= 5 * MINUTE for s in result.spikes
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
