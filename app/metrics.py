"""Prometheus metrics, one registry per app (so several apps can live in one process).

Requests are counted and timed per endpoint (the route's path template, never the
raw path) and model version; batches, model loads and swaps are counted by the
serving code.
"""

import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from poets.engine.store.jobs import FINISHED, STATES

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "MetricsMiddleware"]

_LATENCY = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)


class Metrics:
    """Every metric the service exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "poets_http_requests_total",
            "HTTP requests answered.",
            ["endpoint", "method", "status", "model"],
            registry=r,
        )
        self.latency = Histogram(
            "poets_http_request_seconds",
            "HTTP request latency.",
            ["endpoint", "method", "model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.images = Counter("poets_images_labelled_total", "Images labelled.", ["model"], registry=r)
        self.batch_size = Histogram(
            "poets_batch_size",
            "Images per model run (dynamic batching).",
            ["model"],
            buckets=_BATCH,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "poets_batch_seconds", "Time of one batched model run.", ["model"], buckets=_LATENCY, registry=r
        )
        self.decode_seconds = Histogram(
            "poets_decode_seconds", "Time to decode one image.", buckets=_LATENCY, registry=r
        )
        self.model_loads = Counter(
            "poets_model_loads_total", "Model version loads attempted.", ["model", "result"], registry=r
        )
        self.load_failures = Counter(
            "poets_model_load_failures_total", "Model versions that failed to load.", ["model"], registry=r
        )
        self.swaps = Counter(
            "poets_model_swaps_total", "Hot swaps to a new model version.", ["model"], registry=r
        )
        self.load_seconds = Histogram(
            "poets_model_load_seconds",
            "Time to load and warm a version.",
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.evictions = Counter(
            "poets_model_unloads_total",
            "Models unloaded to stay within POETS_MAX_LOADED_MODELS.",
            ["model"],
            registry=r,
        )
        self.loaded_version = Gauge(
            "poets_model_loaded_version", "Version being served.", ["model"], registry=r
        )
        self.jobs_enqueued = Counter("poets_jobs_enqueued_total", "Retraining jobs enqueued.", registry=r)
        self.jobs_queued = Gauge("poets_jobs_queued", "Retraining jobs waiting for a worker.", registry=r)
        self.inbox_saved = Counter(
            "poets_inbox_saved_total", "Unsure /label frames kept in the review inbox.", registry=r
        )
        self.inbox_dropped = Counter(
            "poets_inbox_dropped_total",
            "Frames not kept: queue_full (the writer was behind), "
            "inbox_full (the oldest dropped to make room; with a bucket, what this node dropped) "
            "or store_unavailable (the bucket did not answer).",
            ["reason"],
            registry=r,
        )

    def watch_queue(self, count: Callable[[], float]) -> None:
        """Read the queue depth at scrape time only (cheap: no polling)."""

        def safe() -> float:
            try:
                return float(count())
            except Exception:
                return float("nan")

        self.jobs_queued.set_function(safe)

    def watch_jobs(
        self, stats: Callable[[], Dict[str, Tuple[int, float]]], deleted: Optional[Callable[[], int]] = None
    ) -> None:
        """Jobs per state and their durations, and the finished records the bounded history
        (POETS_JOB_HISTORY) deleted, read from the job store at scrape time.

        Jobs run in workers, possibly on other machines; the job store is where their
        outcome is known, so that is what is exported, whichever process scrapes.
        """
        self.registry.register(_JobCollector(stats, deleted))

    def render(self) -> bytes:
        return generate_latest(self.registry)  # type: ignore[no-any-return]


class _JobCollector:
    def __init__(
        self, stats: Callable[[], Dict[str, Tuple[int, float]]], deleted: Optional[Callable[[], int]] = None
    ) -> None:
        self._stats = stats
        self._deleted = deleted

    def collect(self) -> Iterator[Any]:
        try:
            stats = self._stats()
        except Exception:  # a scrape must not fail because the job store is busy
            stats = {}
        jobs = GaugeMetricFamily("poets_jobs", "Retraining jobs by state.", labels=["state"])
        durations = SummaryMetricFamily(
            "poets_job_duration_seconds",
            "Time from a job's start to its end, by final state.",
            labels=["state"],
        )
        for state in STATES:
            count, seconds = stats.get(state, (0, 0.0))
            jobs.add_metric([state], count)
            if state in FINISHED:
                durations.add_metric([state], count_value=count, sum_value=seconds)
        yield jobs
        yield durations
        if self._deleted is not None:
            try:
                count = self._deleted()
            except Exception:  # unreadable now: no sample rather than a counter reset to 0
                return
            deleted = CounterMetricFamily(
                "poets_job_records_deleted",
                "Finished job records deleted to keep POETS_JOB_HISTORY.",
            )
            deleted.add_metric([], count)
            yield deleted


class MetricsMiddleware:
    """Pure ASGI middleware timing every HTTP request (keeps streaming and keep-alive intact)."""

    def __init__(self, app: Any, metrics: Metrics, routes: Optional[Callable[[], Any]] = None) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes
        self._compiled: Optional[List[Tuple[Any, str]]] = None

    def _templates(self) -> List[Tuple[Any, str]]:
        """(path regex, path template) of every route, included routers flattened."""
        if self._compiled is None:
            found: List[Tuple[Any, str]] = []

            def walk(routes: Any) -> None:
                for route in routes:
                    inner = getattr(route, "original_router", None)  # newer FastAPI wraps routers
                    if inner is not None:
                        walk(inner.routes)
                    elif getattr(route, "path_regex", None) is not None:
                        found.append((route.path_regex, str(getattr(route, "path", "other"))))

            walk(self.routes() if self.routes is not None else [])
            self._compiled = found
        return self._compiled

    def _endpoint(self, path: str) -> str:
        for regex, template in self._templates():
            if regex.match(path):
                return template
        return "other"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]
        path = scope.get("path", "")

        async def send_status(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            endpoint = self._endpoint(path)
            model = str((scope.get("state") or {}).get("model_version", ""))
            method = scope.get("method", "")
            self.metrics.requests.labels(endpoint, method, str(status[0]), model).inc()
            self.metrics.latency.labels(endpoint, method, model).observe(time.perf_counter() - started)
