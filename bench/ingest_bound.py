"""How fast could ingest be in pure Python? Lower bounds beside the exporter's own path.

The ingest target asks the whole path (decode, normalise, dedup, totals) to beat `orjson.loads`
alone on the same bytes. This measures, in one run and on the same pages, best of `--repeat`
interleaved passes:

1. `orjson.loads`: the reference;
2. decode: msgspec's decode of the counted fields into the exporter's typed structs, and
   nothing else; no pure-Python path can skip it or decode faster than msgspec's C;
3. decode + read: 2, then every counted field of every record read once, in C
   (`attrgetter` of all fields per record): the least any path that uses the fields pays;
4. columnar: the fastest design found without per-record Python bytecode: per page, sids
   hashed and deduplicated with set operations, dates turned into timestamps through the
   per-minute cache with `map`, and the totals tallied by `Counter` over tuples of the
   categorical fields, then added up once per distinct tuple. Its totals are checked against
   the exporter's ledger; it relies on what the bench's pages have (the documented wire form,
   start-ordered pages, every record new), where the exporter handles every variant;
5. the exporter's path, as `python -m bench.run` measures it.

    python -m bench.ingest_bound [--records N] [--repeat N]
"""

from __future__ import annotations

import argparse
import time
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import repeat
from operator import add, attrgetter, floordiv, itemgetter

from bench import data
from bench.ingest import _exporter_pass
from leadflow_exporter.health import Health
from leadflow_exporter.ledger import (
    BUCKET_SECONDS,
    TALK_BUCKETS,
    CycleBatch,
    Ledger,
    MemoryStore,
    SetTotals,
    Totals,
)
from leadflow_exporter.records import _Reader, _wire_decoder, decode_page, snake_status
from leadflow_exporter.timeutil import CallDateParser, zone

try:
    import orjson
except ImportError:  # pragma: no cover - the benchmark says what it needs
    orjson = None  # type: ignore[assignment]

_FIELDS = (
    "sid",
    "call_date",
    "talk_seconds",
    "total_seconds",
    "set_name",
    "lead_status",
    "reroute",
    "repeat_affiliate_caller",
    "offer_qualified",
    "offer_price",
    "affiliate_qualified",
    "affiliate_price",
    "margin",
    "contest_qualification",
)
_ALL_FIELDS = attrgetter(*_FIELDS)
_SID = attrgetter("sid")
_DATE = attrgetter("call_date")
_SET = attrgetter("set_name")
_TALK = attrgetter("talk_seconds")
_TOTAL = attrgetter("total_seconds")
# Everything a set's totals and its call series need, apart from the durations.
_CATEGORIES = attrgetter(
    "set_name",
    "lead_status",
    "offer_price",
    "affiliate_price",
    "margin",
    "offer_qualified",
    "affiliate_qualified",
    "reroute",
    "repeat_affiliate_caller",
    "contest_qualification",
)
_MINUTE = itemgetter(slice(0, 16))
_SECOND = itemgetter(slice(17, None))
_SECONDS = {f"{s:02d}": s for s in range(60)}


@dataclass
class BoundFigures:
    records: int
    orjson_seconds: float | None
    decode_seconds: float
    read_seconds: float
    columnar_seconds: float
    exporter_seconds: float


def _decode(pages: list[bytes]) -> Iterator[list]:
    """Each page's records, one page at a time (freed as the next is decoded, as in the
    exporter, which hands each page on as it arrives)."""
    for body in pages:
        page = _wire_decoder.decode(body)
        yield page if isinstance(page, list) else page.response


def _decode_pass(pages: list[bytes]) -> float:
    started = time.perf_counter()
    for _ in _decode(pages):
        pass
    return time.perf_counter() - started


def _read_pass(pages: list[bytes]) -> float:
    started = time.perf_counter()
    for records in _decode(pages):
        for _ in map(_ALL_FIELDS, records):
            pass
    return time.perf_counter() - started


class Columnar:
    """Per-page tallies in C, folded into totals once per distinct tuple."""

    def __init__(self, minute_bases: dict[str, float]) -> None:
        self.minute_get = minute_bases.__getitem__
        self.seen: dict[int, set[int]] = {}
        self.categories: Counter[tuple] = Counter()
        self.talk: Counter[tuple[str | None, int]] = Counter()
        self.total: Counter[tuple[str | None, int]] = Counter()
        self.last_ts: dict[str | None, float] = {}

    def add_page(self, records: list) -> None:
        sids = list(map(str.strip, map(_SID, records)))
        keys = list(map(hash, sids))
        dates = list(map(_DATE, records))
        stamps = list(
            map(
                add,
                map(self.minute_get, map(_MINUTE, dates)),
                map(_SECONDS.__getitem__, map(_SECOND, dates)),
            )
        )
        hours = list(map(int, map(floordiv, stamps, repeat(BUCKET_SECONDS))))
        # Pages come in start order: each hour is one slice, deduplicated with set operations.
        start = 0
        while start < len(hours):
            hour = hours[start]
            end = bisect_right(hours, hour, start)
            fresh = set(keys[start:end])
            bucket = self.seen.setdefault(hour, set())
            if len(fresh) != end - start or not bucket.isdisjoint(fresh):
                raise ValueError("a repeated sid: the bench's pages have none")
            bucket |= fresh
            start = end
        set_names = list(map(_SET, records))
        self.categories.update(map(_CATEGORIES, records))
        self.talk.update(zip(set_names, map(_TALK, records), strict=True))
        self.total.update(zip(set_names, map(_TOTAL, records), strict=True))
        self.last_ts.update(zip(set_names, stamps, strict=True))

    def totals(self) -> Totals:
        result = Totals()
        reader = _Reader([])
        money: dict[tuple[str | None, str], int] = {}

        def units(value: str | None, name: str) -> int:
            if value is None:
                return 0
            cached = money.get((value, name))
            if cached is None:
                cached = money[(value, name)] = reader.money(value, name)
            return cached

        def set_of(name: str | None) -> SetTotals:
            key = (name.strip() if name is not None else "") or "unknown"
            totals = result.sets.get(key)
            if totals is None:
                totals = result.sets[key] = SetTotals()
            return totals

        for key, count in self.categories.items():
            name, status, offer, affiliate, margin, *flags = key
            totals = set_of(name)
            series = (
                (name.strip() if name is not None else "") or "unknown",
                snake_status(status) if status is not None else "unknown",
            )
            result.calls[series] = result.calls.get(series, 0) + count
            revenue, payout = units(offer, "offer_price"), units(affiliate, "affiliate_price")
            totals.revenue += revenue * count
            totals.payout += payout * count
            totals.margin += (
                revenue - payout if margin is None or margin == "" else units(margin, "margin")
            ) * count
            o, a, r, rep, c = (flag == "Y" for flag in flags)
            totals.qualified_offer += o * count
            totals.qualified_affiliate += a * count
            totals.reroute += r * count
            totals.repeat_affiliate_caller += rep * count
            totals.contested += c * count
        for (name, talk), count in self.talk.items():
            totals = set_of(name)
            totals.talk_seconds += float(talk) * count
            totals.talk_buckets[bisect_left(TALK_BUCKETS, float(talk))] += count
        for (name, seconds), count in self.total.items():
            set_of(name).call_seconds += float(seconds) * count
        for name, stamp in self.last_ts.items():
            totals = set_of(name)
            totals.last_call_ts = max(totals.last_call_ts, stamp)
        return result


def _minute_bases(pages: list[bytes], dates: CallDateParser) -> dict[str, float]:
    """Every minute's epoch, as the exporter's per-minute cache holds it once warm."""
    bases: dict[str, float] = {}
    for records in _decode(pages):
        for record in records:
            minute = record.call_date[:16]
            if minute not in bases:
                stamp = dates.parse(record.call_date)
                assert stamp is not None
                bases[minute] = stamp - int(record.call_date[17:])
    return bases


def _columnar_pass(pages: list[bytes], bases: dict[str, float]) -> tuple[float, Totals]:
    started = time.perf_counter()
    columnar = Columnar(bases)
    for records in _decode(pages):
        columnar.add_page(records)
    totals = columnar.totals()
    return time.perf_counter() - started, totals


def _orjson_pass(pages: list[bytes]) -> float:
    started = time.perf_counter()
    for body in pages:
        orjson.loads(body)
    return time.perf_counter() - started


def _exporter_totals(pages: list[bytes]) -> Totals:
    dates = CallDateParser(zone("America/New_York"))
    ledger = Ledger(MemoryStore(), Health(), max_series_per_metric=1_000_000)
    ledger.watermark = 0.0
    batch = CycleBatch()
    for body in pages:
        ledger.add(batch, decode_page(body, dates).records, count=True)
    ledger.commit(batch, watermark=1.0, followed={}, active=None)
    return ledger.totals


def check_same_totals(columnar: Totals, exporter: Totals) -> None:
    """Raise unless the columnar design counted exactly what the exporter counted."""
    if columnar.calls != exporter.calls:
        raise AssertionError(f"calls differ: {columnar.calls} != {exporter.calls}")
    if set(columnar.sets) != set(exporter.sets):
        raise AssertionError(f"sets differ: {sorted(columnar.sets)} != {sorted(exporter.sets)}")
    for name, totals in exporter.sets.items():
        if columnar.sets[name].to_json() != totals.to_json():
            raise AssertionError(
                f"set {name!r} differs: {columnar.sets[name].to_json()} != {totals.to_json()}"
            )


def measure(pages: list[bytes], records: int, *, repeat_count: int = 5) -> BoundFigures:
    dates = CallDateParser(zone("America/New_York"))
    bases = _minute_bases(pages, dates)
    _, totals = _columnar_pass(pages, bases)
    check_same_totals(totals, _exporter_totals(pages))
    runs: dict[str, list[float]] = {k: [] for k in ("orjson", "decode", "read", "col", "exp")}
    passes: dict[str, Callable[[], float]] = {
        "decode": lambda: _decode_pass(pages),
        "read": lambda: _read_pass(pages),
        "col": lambda: _columnar_pass(pages, bases)[0],
        "exp": lambda: _exporter_pass(pages, records),
    }
    if orjson is not None:
        passes["orjson"] = lambda: _orjson_pass(pages)
    for _ in range(repeat_count):
        for name, run in passes.items():
            runs[name].append(run())
    return BoundFigures(
        records=records,
        orjson_seconds=min(runs["orjson"]) if runs["orjson"] else None,
        decode_seconds=min(runs["decode"]),
        read_seconds=min(runs["read"]),
        columnar_seconds=min(runs["col"]),
        exporter_seconds=min(runs["exp"]),
    )


def table(figures: BoundFigures) -> list[tuple[str, str, str]]:
    reference = figures.orjson_seconds

    def row(label: str, seconds: float) -> tuple[str, str, str]:
        ratio = f"{reference / seconds:.2f}x" if reference else "orjson not installed"
        return label, f"{seconds * 1000:.0f} ms", ratio

    rows = [
        ("orjson.loads alone (the reference)", f"{reference * 1000:.0f} ms", "1.00x")
        if reference
        else ("orjson.loads alone (the reference)", "orjson not installed", "-"),
        row("msgspec decode of the counted fields, nothing else", figures.decode_seconds),
        row("  + every counted field read once, in C", figures.read_seconds),
        row(
            "columnar design: C-level dedup and tallies (totals checked)",
            figures.columnar_seconds,
        ),
        row("the exporter's path (bench.run's ingest row)", figures.exporter_seconds),
    ]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    pages = data.pages(data.finished_records(args.records))
    figures = measure(pages, args.records, repeat_count=args.repeat)
    print(
        f"{args.records:,} records, {sum(map(len, pages)) / 1e6:.0f} MB; best of {args.repeat}; "
        "speed as a multiple of orjson.loads (the target is >= 1.0x)"
    )
    rows = table(figures)
    width = max(len(r[0]) for r in rows)
    for label, seconds, ratio in rows:
        print(f"{label:<{width}}  {seconds:>8}  {ratio:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
