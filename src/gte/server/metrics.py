"""Server metrics in the Prometheus text exposition format (version 0.0.4), without dependencies.

All updates happen on the event loop thread (the inference worker never touches a metric), so the
classes hold plain dicts and need no locks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
BATCH_TOKEN_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)

Labels = tuple[tuple[str, str], ...]


def _labels(labels: Labels, extra: Labels = ()) -> str:
    pairs = labels + extra
    if not pairs:
        return ""
    escaped = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for _, v in pairs)
    return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(pairs, escaped)) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


@dataclass
class Counter:
    name: str
    help: str
    values: dict[Labels, float] = field(default_factory=dict)
    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0.0)

    def samples(self) -> list[str]:
        return [f"{self.name}{_labels(k)} {_number(v)}" for k, v in sorted(self.values.items())]


@dataclass
class Gauge:
    name: str
    help: str
    current: float = 0.0
    kind = "gauge"

    def set(self, value: float) -> None:
        self.current = value

    def inc(self, amount: float = 1.0) -> None:
        self.current += amount

    def dec(self, amount: float = 1.0) -> None:
        self.current -= amount

    def samples(self) -> list[str]:
        return [f"{self.name} {_number(self.current)}"]


@dataclass
class _Series:
    counts: list[int]  # per bucket, not cumulative
    total: float = 0.0
    count: int = 0


@dataclass
class Histogram:
    name: str
    help: str
    buckets: tuple[float, ...]
    series: dict[Labels, _Series] = field(default_factory=dict)
    kind = "histogram"

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        s = self.series.setdefault(key, _Series([0] * (len(self.buckets) + 1)))
        s.counts[next((i for i, b in enumerate(self.buckets) if value <= b), len(self.buckets))] += 1
        s.total += value
        s.count += 1

    def samples(self) -> list[str]:
        lines = []
        for key, s in sorted(self.series.items()):
            cumulative = 0
            for bound, n in zip((*self.buckets, math.inf), s.counts):
                cumulative += n
                lines.append(f"{self.name}_bucket{_labels(key, (('le', _number(bound)),))} {cumulative}")
            lines.append(f"{self.name}_sum{_labels(key)} {_number(s.total)}")
            lines.append(f"{self.name}_count{_labels(key)} {s.count}")
        return lines


class Metrics:
    """Every metric the server exports; `render()` gives the /metrics body."""

    def __init__(self) -> None:
        self.requests = Counter("gte_requests_total", "HTTP requests by endpoint and status code.")
        self.latency = Histogram(
            "gte_request_duration_seconds", "HTTP request latency by endpoint, in seconds.", LATENCY_BUCKETS
        )
        self.in_flight = Gauge("gte_requests_in_flight", "Inference requests being served now.")
        self.queue_depth = Gauge("gte_queue_depth", "Requests waiting for the inference worker.")
        self.batch_size = Histogram("gte_batch_size", "Inputs per inference batch.", BATCH_SIZE_BUCKETS)
        self.batch_requests = Histogram(
            "gte_batch_requests", "Requests merged into one inference batch.", BATCH_SIZE_BUCKETS
        )
        self.batch_tokens = Histogram("gte_batch_tokens", "Tokens per inference batch.", BATCH_TOKEN_BUCKETS)
        self.tokens = Counter("gte_tokens_total", "Tokens run through the model.")
        self.inputs = Counter(
            "gte_inputs_total", "Inputs (texts, token lists, query-text pairs) run through the model."
        )
        for counter in (self.tokens, self.inputs):
            counter.inc(0)  # export 0 before the first batch

    def render(self) -> str:
        lines = []
        for metric in vars(self).values():
            lines += [f"# HELP {metric.name} {metric.help}", f"# TYPE {metric.name} {metric.kind}"]
            lines += metric.samples()
        return "\n".join(lines) + "\n"
