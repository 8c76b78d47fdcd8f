"""Prometheus metrics of the service, in a registry of its own (several apps in one process do not collide)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class RecentLatencies:
    """The latest ``size`` request latencies of each model, for a p99 to hold against a policy's budget: the
    Prometheus histogram's buckets are too coarse for that (a budget of 30 ms falls between 25 and 50)."""

    def __init__(self, size: int = 2000):
        self.size = size
        self._seconds: dict[str, deque[float]] = {}

    def add(self, model: str, seconds: float) -> None:
        window = self._seconds.get(model)
        if window is None:
            window = self._seconds[model] = deque(maxlen=self.size)
        window.append(seconds)

    def p99_ms(self, model: str) -> float | None:
        window = self._seconds.get(model)
        return float(np.percentile(np.fromiter(window, float), 99) * 1000) if window else None

    def count(self, model: str) -> int:
        return len(self._seconds.get(model, ()))


class ServingMetrics:
    """Requests, errors, predictions and latency by model, version and role; the prediction log's backlog."""

    def __init__(self, log_backlog: Callable[[], float], log_written: Callable[[], float],
                 log_spooled: Callable[[], float] = lambda: 0):
        self.registry = CollectorRegistry()
        self.requests = Counter("mlplatform_requests", "HTTP prediction requests by model, route and status code",
                                ["model", "route", "status"], registry=self.registry)
        self.errors = Counter("mlplatform_request_errors", "Prediction requests answered with an error (4xx/5xx)",
                              ["model", "route", "status"], registry=self.registry)
        self.predictions = Counter("mlplatform_predictions", "Records scored by model, version and role",
                                   ["model", "version", "role"], registry=self.registry)
        self.latency = Histogram("mlplatform_prediction_latency_seconds", "Time from request arrival to scores, by "
                                 "model, version and role (shadow: its own scoring time)",
                                 ["model", "version", "role"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.shadow_dropped = Counter("mlplatform_shadow_dropped_records", "Shadow records dropped because the shadow "
                                      "queue was full", ["model"], registry=self.registry)
        self.served = Gauge("mlplatform_served_version", "1 for each (model, role, version) being served",
                            ["model", "role", "version"], registry=self.registry)
        backlog = Gauge("mlplatform_prediction_log_backlog_rows", "Prediction log rows not yet in a published segment",
                        registry=self.registry)
        backlog.set_function(log_backlog)
        written = Gauge("mlplatform_prediction_log_written_rows", "Prediction log rows published since start",
                        registry=self.registry)
        written.set_function(log_written)
        spooled = Gauge("mlplatform_prediction_log_spooled_segments", "Prediction log segments published in the local "
                        "spool and not yet uploaded to object storage (always 0 with a local log): alert when it grows",
                        registry=self.registry)
        spooled.set_function(log_spooled)
        self.recent = RecentLatencies()

    def watch_budgets(self, budgets_ms: Mapping[str, float | None]) -> None:
        """Export each model's policy latency budget and its recent p99 (the window of :class:`RecentLatencies`)."""
        budget = Gauge("mlplatform_latency_budget_p99_seconds", "The policy's serving latency budget (p99) by model",
                       ["model"], registry=self.registry)
        measured = Gauge("mlplatform_latency_p99_seconds", "p99 of the latest requests' latency (arrival to scores) "
                         f"by model, over up to {self.recent.size} requests", ["model"], registry=self.registry)
        for model, budget_ms in budgets_ms.items():
            if budget_ms is not None:
                budget.labels(model).set(budget_ms / 1000)
            measured.labels(model).set_function(lambda model=model: (self.recent.p99_ms(model) or 0.0) / 1000)
