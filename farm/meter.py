"""Metrics in Prometheus' model, and their text exposition format (version 0.0.4), with the stdlib only.

A `Meter` keeps what only the running process knows (counters and histograms, from its start); `Family` is
one metric with its samples, made fresh per scrape for what the store knows (gauges). `exposition` writes
families as the text a Prometheus server scrapes: `# HELP`, `# TYPE`, then one line per sample, label
values escaped, a histogram's buckets cumulative up to `+Inf` with its `_sum` and `_count`.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import threading
from typing import Iterable, Mapping

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "povfarm_"
# Seconds: from a cached status (a millisecond) to a long poll held open (up to its cap).
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Labels = tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True)
class Family:
    """One metric: its name (without the prefix), type (counter, gauge, histogram), help, and samples
    {labels: value}; a histogram's values are `_Histogram`s."""
    name: str
    kind: str
    help: str
    samples: Mapping[Labels, object]


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += value
        self.count += 1

    def copy(self) -> "_Histogram":
        other = _Histogram(self.buckets)
        other.counts, other.total, other.count = list(self.counts), self.total, self.count
        return other


class Meter:
    """Counters and histograms the process keeps, by name and labels; safe to share between threads.
    `declare` names a metric before its first sample, so a scrape shows it (at zero) from the start."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._help: dict[str, tuple[str, str, tuple[float, ...]]] = {}   # name -> (kind, help, buckets)
        self._values: dict[str, dict[Labels, object]] = {}

    def declare(self, name: str, kind: str, help: str, buckets: tuple[float, ...] = LATENCY_BUCKETS,
                labels: Iterable[Labels] = ()) -> None:
        with self._lock:
            self._help[name] = (kind, help, buckets)
            values = self._values.setdefault(name, {})
            for key in labels:
                values.setdefault(key, _Histogram(buckets) if kind == "histogram" else 0)

    def count(self, name: str, amount: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            values = self._values.setdefault(name, {})
            values[key] = values.get(key, 0) + amount

    def observe(self, name: str, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            values = self._values.setdefault(name, {})
            histogram = values.get(key)
            if histogram is None:
                histogram = values[key] = _Histogram(self._help.get(name, ("", "", LATENCY_BUCKETS))[2])
            histogram.observe(value)

    def value(self, name: str, **labels: str) -> object:
        with self._lock:
            return self._values.get(name, {}).get(tuple(sorted(labels.items())), 0)

    def families(self) -> list[Family]:
        with self._lock:
            return [Family(name, *self._help.get(name, ("counter", name, ()))[:2],
                           {key: value.copy() if isinstance(value, _Histogram) else value
                            for key, value in values.items()})
                    for name, values in sorted(self._values.items())]


def exposition(families: Iterable[Family]) -> bytes:
    """The text a Prometheus server scrapes, for these families."""
    lines: list[str] = []
    for family in families:
        name = PREFIX + family.name
        lines.append(f"# HELP {name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {name} {family.kind}")
        for labels, value in sorted(family.samples.items()):
            if isinstance(value, _Histogram):
                lines.extend(_histogram_lines(name, labels, value))
            else:
                lines.append(f"{name}{_labels(labels)} {_number(value)}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def _histogram_lines(name: str, labels: Labels, histogram: _Histogram) -> list[str]:
    lines, running = [], 0
    for bound, count in zip(histogram.buckets, histogram.counts):
        running += count
        lines.append(f"{name}_bucket{_labels(labels + (('le', _number(bound)),))} {running}")
    lines.append(f"{name}_bucket{_labels(labels + (('le', '+Inf'),))} {histogram.count}")
    lines.append(f"{name}_sum{_labels(labels)} {_number(histogram.total)}")
    lines.append(f"{name}_count{_labels(labels)} {histogram.count}")
    return lines


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape_value(str(value))}"' for key, value in labels) + "}"


def _escape_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: object) -> str:
    number = float(value)   # type: ignore[arg-type]
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    return str(int(number)) if number.is_integer() and abs(number) < 1e15 else repr(number)
