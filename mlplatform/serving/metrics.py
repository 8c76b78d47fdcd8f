"""Prometheus metrics of the service, in a registry of its own (several apps in one process do not collide)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


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
