"""The Prometheus metrics of one application (``GET /metrics``), in a registry of its own.

``cvops_requests_total{status, source}`` counts prediction requests by HTTP status and source
(:mod:`cvops.serve.sources`), ``cvops_request_latency_seconds{source}`` times the successful ones (decode +
inference), ``cvops_errors_total{reason}`` counts every refused or failed request by its reason,
``cvops_batch_size`` the images per inference call; the drift gauges (``cvops_drift_detected{source}``,
``cvops_drift_feature{feature, source}``, ``cvops_drift_checks_total``) and the precision estimate
(``cvops_estimated_precision{class, source}``, ``cvops_reference_precision{class}``) are set by
:class:`cvops.serve.driftwatch.DriftWatch`. ``cvops_model_info{project, model}`` is 1 for the model being
served: alert rules (``cvops alerts``) join it to name the project and model. ``cvops_reviewed_map50{model,
week}`` comes from the figures the monitor leaves beside the request log (:mod:`cvops.annotate.accuracy`).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# 1 ms - 2 s, denser where a CPU detector usually answers
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
                   0.5, 0.75, 1.0, 1.5, 2.0)


class ServeMetrics:
    """The Prometheus metrics of one application, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("cvops_requests", "Prediction requests by HTTP status and source", ["status", "source"],
                                registry=r)
        self.latency = Histogram("cvops_request_latency_seconds",
                                 "Latency of successful predictions (decode + inference) by source", ["source"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("cvops_errors", "Refused or failed requests by reason", ["reason"], registry=r)
        self.drift_detected = Gauge("cvops_drift_detected", "1 when the last drift check of the source found drift",
                                    ["source"], registry=r)
        self.drift_feature = Gauge("cvops_drift_feature", "Per-feature value of the source's last drift check",
                                   ["feature", "source"], registry=r)
        self.estimated_precision = Gauge("cvops_estimated_precision", "Expected precision of the served detections "
                                         "at the confidence threshold over the source's live window (calibrated at "
                                         "export)", ["class", "source"], registry=r)
        self.reference_precision = Gauge("cvops_reference_precision", "Precision at the confidence threshold on the "
                                         "validation split", ["class"], registry=r)
        self.model_info = Gauge("cvops_model_info", "1 for the project and model being served", ["project", "model"],
                                registry=r)
        self.reviewed_map50 = Gauge("cvops_reviewed_map50", "Box mAP50 of the served answers people reviewed, by "
                                    "model and ISO week (the monitor's reviewed accuracy)", ["model", "week"],
                                    registry=r)
        self.sources_overflow = Counter("cvops_sources_overflow", "Requests counted as source 'other': more "
                                        "distinct sources than serve.max_sources", registry=r)
        self.drift_checks = Counter("cvops_drift_checks", "Drift checks completed", registry=r)
        self.ready = Gauge("cvops_model_ready", "1 once a model is loaded and warm", registry=r)
        self.model_swaps = Counter("cvops_model_swaps", "Models switched to after the first", registry=r)
        self.shadow_requests = Counter("cvops_shadow_requests", "Requests the shadow model also answered",
                                       ["shadow"], registry=r)
        self.shadow_f1 = Gauge("cvops_shadow_f1", "Box F1 (IoU 0.5) of the shadow model against the live one, "
                               "last shadowed request", ["shadow"], registry=r)
        self.shadow_skipped = Counter("cvops_shadow_skipped", "Requests not shadowed: the shadow thread was behind",
                                      registry=r)
        self.batch_size = Histogram("cvops_batch_size", "Images per inference call (micro-batching)",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)

    def failed(self, reason: str, status: int | None = None, source: str = "default") -> None:
        """Count a refused or failed request under ``reason``, and a prediction request also under its ``status``
        and ``source`` (None: not a prediction request, counted by reason only)."""
        self.errors.labels(reason=reason).inc()
        if status is not None:
            self.requests.labels(status=str(status), source=source).inc()

    def reviewed(self, rows: list) -> None:
        """``cvops_reviewed_map50`` from :func:`cvops.annotate.accuracy.read`'s rows (replacing the last ones)."""
        self.reviewed_map50.clear()
        for r in rows:
            self.reviewed_map50.labels(model=r["model"][:64], week=r["week"][:16]).set(float(r["mAP50"]))

    def serving(self, project: str, model: str) -> None:
        """``cvops_model_info``: this model of this project is served now (the previous one's series goes)."""
        self.model_info.clear()
        self.model_info.labels(project=project or "unknown", model=model or "unknown").set(1)
