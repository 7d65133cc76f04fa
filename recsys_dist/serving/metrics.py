"""The service's own metrics, through ``ray.serve.metrics``.

Ray's metrics agent on every node exports them in Prometheus format (prefixed ``ray_``, a
counter suffixed ``_total``) beside Serve's built-in ones (requests, latency, queued and
running replicas), each tagged with its application, deployment and replica. What Serve
cannot know is counted here: how often a recommendation fell back to the popular list, how
many history events the model does not know, the online store's latency and errors, the
event log's backlog and failures, failed re-reads of the API keys file, and which model
version each replica serves.
docs/operations.md "Metrics" lists them with the PromQL that watches each.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

from ray.serve import metrics

# Milliseconds: an embedded-store lookup takes ~1 ms, a Redis one ~0.3 ms, a slow one 100+.
STORE_LATENCY_MS = [0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000]
EVENT_LOG_GAUGES = {
    "pending": "acknowledged events in the WAL, not yet in Parquet",
    "segments_quarantined": "WAL segments moved aside because they cannot become event rows",
    "publish_failures": "failed attempts to write Parquet since the log started",
}


class ServiceMetrics:
    """One replica's metric handles (made once, in the replica's constructor)."""

    def __init__(self) -> None:
        self.recommendations = metrics.Counter(
            "recsys_recommendations",
            description="recommendations answered; fallback=true: the popular list",
            tag_keys=("fallback",),
        )
        self.unknown_history_items = metrics.Counter(
            "recsys_unknown_history_items",
            description="history events scored past because the model does not know the item",
        )
        self.events = metrics.Counter(
            "recsys_events_accepted", description="events made durable and acknowledged"
        )
        self.unknown_event_items = metrics.Counter(
            "recsys_events_unknown_items",
            description="accepted events whose item the served model does not know yet",
        )
        self.store_latency = metrics.Histogram(
            "recsys_store_latency_ms",
            description="online store calls, milliseconds",
            boundaries=STORE_LATENCY_MS,
            tag_keys=("operation",),
        )
        self.store_errors = metrics.Counter(
            "recsys_store_errors",
            description="online store calls that failed",
            tag_keys=("operation",),
        )
        self.event_log = {
            name: metrics.Gauge(f"recsys_event_log_{name}", description=text)
            for name, text in EVENT_LOG_GAUGES.items()
        }
        self.model = metrics.Gauge(
            "recsys_model_info",
            description="1 for the model version this replica serves, 0 for one it served",
            tag_keys=("version",),
        )
        self.key_reload_failures = metrics.Counter(
            "recsys_api_keys_reload_failures",
            description="failed re-reads of serve.api_keys_file (the last good keys stay in force)",
        )
        self._version: str | None = None

    def recommended(self, fallback: bool, unknown_items: int) -> None:
        self.recommendations.inc(tags={"fallback": "true" if fallback else "false"})
        if unknown_items:
            self.unknown_history_items.inc(unknown_items)

    def accepted(self, events: int, unknown_items: int) -> None:
        self.events.inc(events)
        if unknown_items:
            self.unknown_event_items.inc(unknown_items)

    @contextlib.asynccontextmanager
    async def store_call(self, operation: str) -> AsyncIterator[None]:
        """Time one store call; count it as an error if it raises."""
        started = time.perf_counter()
        try:
            yield
        except Exception:
            self.store_errors.inc(tags={"operation": operation})
            raise
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            self.store_latency.observe(elapsed_ms, tags={"operation": operation})

    def event_log_stats(self, stats: dict) -> None:
        for name, gauge in self.event_log.items():
            gauge.set(stats.get(name, 0))

    def key_reload_failed(self) -> None:
        self.key_reload_failures.inc()

    def serving(self, version: str) -> None:
        if self._version is not None and self._version != version:
            self.model.set(0, tags={"version": self._version})
        self.model.set(1, tags={"version": version})
        self._version = version
