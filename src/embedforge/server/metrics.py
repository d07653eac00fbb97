"""Prometheus metrics: requests by route and status, latency, batch sizes and tokens, queue depth.

Each app owns its registry (several apps can live in one process, as in the tests).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedforge.engine import BatchStats, Engine

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
_TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)
_INFERENCE = ("/v1/embeddings", "/v1/rerank", "/rerank", "/v1/models")


class Metrics:
    """The server's metrics in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "embedforge_requests",
            "HTTP requests by route and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "embedforge_request_latency_seconds",
            "HTTP request latency",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_requests = Histogram(
            "embedforge_batch_requests",
            "Requests merged into one batch",
            ["model"],
            buckets=_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.batch_inputs = Histogram(
            "embedforge_batch_inputs",
            "Inputs (texts or pairs) in one batch",
            ["model"],
            buckets=_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.batch_tokens = Histogram(
            "embedforge_batch_tokens",
            "Tokens in one batch",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "embedforge_batch_seconds",
            "Model time of one batch",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "embedforge_requests_in_flight", "HTTP requests being served", ["route"], registry=self.registry
        )
        self.queue_depth = Gauge(
            "embedforge_queue_depth", "Requests waiting for a batch", ["model"], registry=self.registry
        )

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_requests.labels(stats.queue).observe(stats.requests)
        self.batch_inputs.labels(stats.queue).observe(stats.inputs)
        self.batch_tokens.labels(stats.queue).observe(stats.tokens)
        self.batch_seconds.labels(stats.queue).observe(stats.seconds)

    def track_queue(self, model: str, depth: Callable[[], int]) -> None:
        self.queue_depth.labels(model).set_function(depth)

    def track_engine(self, engine: Engine) -> None:
        """Batch figures, queue depths and the engine's request and model-call counts."""
        engine.add_observer(on_batch=self.observe_batch)

        def depth_of(name: str) -> Callable[[], int]:
            return lambda: engine.queue_depths().get(name, 0)

        for name in engine.queue_depths():
            self.track_queue(name, depth_of(name))
        self.registry.register(_EngineCollector(engine))

    def render(self) -> bytes:
        return generate_latest(self.registry)


_REQUEST_OUTCOMES = ("submitted", "completed", "failed", "cancelled", "skipped_queued", "stopped_running")


class _EngineCollector(Collector):
    """``embedforge_engine_requests_total{model, outcome}`` and ``embedforge_engine_steps_total
    {model, outcome}`` read from ``Engine.stats()`` at scrape time (abandoned work shows here)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "embedforge_engine_requests",
            "Engine requests by outcome (cancelled = abandoned by the caller; skipped_queued / "
            "stopped_running = where the cancellation caught it)",
            labels=["model", "outcome"],
        )
        steps = CounterMetricFamily(
            "embedforge_engine_steps", "Model calls (sub-batches) run or skipped", labels=["model", "outcome"]
        )
        for model, stats in self.engine.stats().items():
            for outcome in _REQUEST_OUTCOMES:
                requests.add_metric([model, outcome], getattr(stats, outcome))
            steps.add_metric([model, "run"], stats.steps_run)
            steps.add_metric([model, "skipped"], stats.steps_skipped)
        yield requests
        yield steps


class MetricsMiddleware:
    """Count every HTTP request by its route template (``"other"`` for unknown paths) and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        path = scope.get("path", "")
        counted = path.startswith("/v1/") or path == "/rerank"  # inference routes; static label set
        if counted:
            self.metrics.in_flight.labels(path if path in _INFERENCE else "other").inc()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if counted:
                self.metrics.in_flight.labels(path if path in _INFERENCE else "other").dec()
            route = scope.get("route")
            name = getattr(route, "path", None) or "other"
            self.metrics.requests.labels(name, scope["method"], str(status)).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - start)


router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


__all__ = ["Metrics", "MetricsMiddleware", "router"]
