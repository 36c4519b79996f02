"""Server metrics through `prometheus_client`, in a registry of the app's own (so that several apps
can live in one process), with the process and Python collectors.

HTTP series are labelled by endpoint (and status); the inference series of each served model by
`model`. Updates happen on the event loop thread only (the inference worker never touches a metric).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
BATCH_TOKEN_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


@dataclass(frozen=True)
class ModelMetrics:
    """One served model's series (the `model` label already applied)."""

    in_flight: Gauge
    queue_depth: Gauge
    batch_size: Histogram
    batch_requests: Histogram
    batch_tokens: Histogram
    tokens: Counter
    inputs: Counter


class Metrics:
    """Every metric the server exports; `render()` gives the /metrics body."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=registry)
        self.requests = Counter(
            "gte_requests", "HTTP requests by endpoint and status code.", ["endpoint", "status"], registry=registry
        )
        self.latency = Histogram(
            "gte_request_duration_seconds", "HTTP request latency by endpoint.", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.body_size = Histogram(
            "gte_request_size_bytes", "Request body sizes by endpoint.", ["endpoint"], buckets=SIZE_BUCKETS,
            registry=registry,
        )  # fmt: skip
        per_model = ["model"]
        self._in_flight = Gauge("gte_requests_in_flight", "Inference requests being served now.", per_model, registry=registry)
        self._queue_depth = Gauge(
            "gte_queue_depth", "Requests with inputs waiting for the inference worker.", per_model, registry=registry
        )
        self._batch_size = Histogram(
            "gte_batch_size", "Inputs per inference batch.", per_model, buckets=BATCH_SIZE_BUCKETS, registry=registry
        )
        self._batch_requests = Histogram(
            "gte_batch_requests", "Requests (whole, or some of their inputs) merged into one inference batch.", per_model,
            buckets=BATCH_SIZE_BUCKETS, registry=registry,
        )  # fmt: skip
        self._batch_tokens = Histogram(
            "gte_batch_tokens", "Tokens per inference batch.", per_model, buckets=BATCH_TOKEN_BUCKETS, registry=registry
        )
        self._tokens = Counter("gte_tokens", "Tokens run through the model.", per_model, registry=registry)
        self._inputs = Counter(
            "gte_inputs", "Inputs (texts, token lists, query-text pairs) run through the model.", per_model,
            registry=registry,
        )  # fmt: skip

    def for_model(self, name: str) -> ModelMetrics:
        """The series of the model served as `name` (exported from now on, at 0)."""
        return ModelMetrics(**{f.name: getattr(self, f"_{f.name}").labels(model=name) for f in fields(ModelMetrics)})

    def render(self) -> bytes:
        return generate_latest(self.registry)
