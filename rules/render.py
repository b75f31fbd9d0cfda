#!/usr/bin/env python3
"""Render a time-compressed copy of the leadflow-exporter rules (or of their promtool tests).

Every Prometheus duration in the text is multiplied by ``--scale``: range selectors
(``[10m]``), ``offset 1d``, ``for: 5m``, the window suffixes of recording-rule names
(``ratio10m``, ``increase10m_avg1d``) and, in promtool test files, ``interval``,
``evaluation_interval`` and ``eval_time``. Nothing else changes: thresholds in the rules are
counts, ratios or multiples of the exporter's own poll interval, so they stay valid when the
exporter, Prometheus and the rules all run faster by the same factor.

Example, for an end-to-end test that runs everything sixty times faster::

    python rules/render.py --scale 1/60 -o /tmp/leadflow-fast.rules.yaml

turns the 10m short window into 10s, the 1d baseline into 24m and ``for: 5m`` into 5s, and
renames ``set_name:leadflow_calls_no_buyer:ratio10m`` to ``...:ratio10s`` accordingly.
"""

from __future__ import annotations

import argparse
import re
import sys
from fractions import Fraction
from pathlib import Path

DEFAULT_INPUT = Path(__file__).resolve().parent / "leadflow-exporter.rules.yaml"

_UNIT_MS = {
    "y": 365 * 86_400_000,
    "w": 7 * 86_400_000,
    "d": 86_400_000,
    "h": 3_600_000,
    "m": 60_000,
    "s": 1_000,
    "ms": 1,
}
# Units used when writing a scaled duration (weeks and years are avoided: always exact).
_OUTPUT_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1))

# A duration such as 10m, 1d or 1h30m: not preceded by a digit or a dot (so 0.5m and 110m are
# not split), not followed by a letter or digit (so "10ms" is one token and words like "5min"
# are left alone). Letters before it and an underscore after it are allowed: "ratio10m" and
# "increase10m_avg1d" carry window suffixes.
DURATION_RE = re.compile(r"(?<![0-9.])((?:[0-9]+(?:ms|[ywdhms]))+)(?![0-9A-Za-z])")
_PART_RE = re.compile(r"([0-9]+)(ms|[ywdhms])")


def parse_duration_ms(text: str) -> int:
    """Milliseconds in a Prometheus duration such as ``1h30m``."""
    parts = _PART_RE.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _UNIT_MS[u] for n, u in parts)


def format_duration_ms(ms: int) -> str:
    """The shortest exact Prometheus duration for ``ms`` milliseconds."""
    if ms <= 0:
        return "0s"
    out = []
    for unit, size in _OUTPUT_UNITS:
        count, ms = divmod(ms, size)
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)


def parse_scale(text: str) -> Fraction:
    scale = Fraction(text)
    if scale <= 0:
        raise ValueError("scale must be positive")
    return scale


def scale_durations(text: str, scale: Fraction) -> str:
    """Multiply every duration in ``text`` by ``scale`` (exactly, to the millisecond)."""
    if scale == 1:
        return text

    def _sub(match: re.Match[str]) -> str:
        scaled = parse_duration_ms(match.group(1)) * scale
        if scaled.denominator != 1:
            raise ValueError(f"{match.group(1)} * {scale} is not a whole number of milliseconds")
        return format_duration_ms(int(scaled))

    return DURATION_RE.sub(_sub, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "input",
        nargs="?",
        type=Path,
        default=DEFAULT_INPUT,
        help="rules or promtool test file (default: the leadflow-exporter rules)",
    )
    parser.add_argument(
        "--scale",
        type=parse_scale,
        default=Fraction(1),
        help="factor applied to every duration, e.g. 1/60 (default 1: unchanged)",
    )
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    args = parser.parse_args(argv)

    rendered = scale_durations(args.input.read_text(encoding="utf-8"), args.scale)
    if args.output:
        args.output.write_text(rendered, encoding="utf-8")
    else:
        sys.stdout.write(rendered)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
