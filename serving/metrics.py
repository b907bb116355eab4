"""Prometheus metrics of the serving path: decisions, shield interventions, latency.

One :class:`ServingMetrics` owns one ``CollectorRegistry``; the decision engine, the
inference flow and the HTTP API record into the instance they are handed, and
``GET /metrics`` exposes it. No metric lives in prometheus_client's global registry,
so two engines (or two test apps) in one process never mix their counts.

Series exposed (names as scraped, labels in braces):

- ``autoscaler_decisions_total{controller}``: decisions made, one per service per call.
- ``autoscaler_shielded_decisions_total``: decisions the shield changed (reason not "").
- ``autoscaler_shield_interventions_total{reason}``: shield codes that fired;
  ``"step+cooldown"`` counts once for ``step`` and once for ``cooldown``,
  ``"fallback:forecast"`` keeps its cause.
- ``autoscaler_decision_latency_seconds``: histogram, wall time of one decision call.
- ``autoscaler_cycle_seconds``: histogram, wall time of one inference cycle.
- ``autoscaler_actuation_errors_total{actuator}``: services whose actuation failed.
- ``autoscaler_api_requests_total{endpoint,status}``: HTTP requests answered.
- ``autoscaler_model_version_info{model,version}``: 1 for the version in use,
  version ``"none"`` when the model is not loaded.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    generate_latest,
)

DECISION_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.0,
)
"""Seconds. One call decides for up to ~1000 services: sub-millisecond for a rule on a
few services, up to seconds for the forecaster on a full batch on CPU."""

CYCLE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
"""Seconds. A cycle (read features, decide, actuate, log) must finish well inside its
one-minute schedule; the top buckets show how close it gets."""

NO_VERSION = "none"
"""``version`` label of a model that is not loaded (the engine runs its fallback)."""


class ServingMetrics:
    """The serving metrics, registered in a registry of their own.

    Every ``record_*`` method is cheap enough to call once per decision call: counting
    over a frame is a ``value_counts`` over its distinct labels, not a loop over rows.
    All methods are thread-safe (prometheus_client locks each series).

    Attributes:
        registry: The registry holding every series below; expose it with
            :meth:`exposition`.
        content_type: The HTTP content type of :meth:`exposition`'s bytes.

    Args:
        registry: Where to register the series (a new one if None). Passing a registry
            lets a process expose these beside its own metrics; it must not already
            hold series of these names.
    """

    content_type: str = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        self.decisions = Counter(
            "autoscaler_decisions",
            "Scaling decisions made, one per service per decision call.",
            ["controller"],
            registry=self.registry,
        )
        self.shielded_decisions = Counter(
            "autoscaler_shielded_decisions",
            "Scaling decisions the safety shield changed (shield_reason not empty).",
            registry=self.registry,
        )
        self.shield_interventions = Counter(
            "autoscaler_shield_interventions",
            "Safety-shield codes that changed a decision; a decision with several codes "
            "counts once for each.",
            ["reason"],
            registry=self.registry,
        )
        self.decision_latency = Histogram(
            "autoscaler_decision_latency_seconds",
            "Wall time of one decision call (all services of the call).",
            buckets=DECISION_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.cycle = Histogram(
            "autoscaler_cycle_seconds",
            "Wall time of one inference cycle: features, decision, actuation, logging.",
            buckets=CYCLE_BUCKETS,
            registry=self.registry,
        )
        self.actuation_errors = Counter(
            "autoscaler_actuation_errors",
            "Services whose scaling could not be applied, by actuator.",
            ["actuator"],
            registry=self.registry,
        )
        self.api_requests = Counter(
            "autoscaler_api_requests",
            "HTTP requests answered by the serving API, by endpoint and status code.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        # Info, not Gauge: setting a model's info replaces its previous version label,
        # so a promotion leaves exactly one series per model instead of a stale one.
        self.model_version = Info(
            "autoscaler_model_version",
            "Model version in use per model ('none' = not loaded, fallback in use).",
            ["model"],
            registry=self.registry,
        )

    def record_decisions(self, frame: pd.DataFrame, seconds: float) -> None:
        """Count one decision call's decisions and shield interventions, and its latency.

        Args:
            frame: The decision frame, one row per service; uses its ``controller`` and
                ``shield_reason`` columns (a missing or null controller counts as
                ``"unknown"``, a missing or null reason as untouched).
            seconds: Wall time of the call.
        """
        self.decision_latency.observe(seconds)
        if frame.empty:
            return
        controllers = _string_column(frame, "controller", "unknown")
        for controller, n in controllers.value_counts(sort=False).items():
            self.decisions.labels(controller=str(controller)).inc(int(n))
        reasons = _string_column(frame, "shield_reason", "")
        reasons = reasons[reasons != ""]
        if reasons.empty:
            return
        self.shielded_decisions.inc(len(reasons))
        # A call has a handful of distinct reason strings, so split those, not the rows.
        for reason, n in reasons.value_counts(sort=False).items():
            for code in str(reason).split("+"):
                if code:
                    self.shield_interventions.labels(reason=code).inc(int(n))

    def record_cycle(self, seconds: float) -> None:
        """Observe the wall time of one inference cycle.

        Args:
            seconds: Wall time of the cycle.
        """
        self.cycle.observe(seconds)

    def record_actuation_errors(self, actuator: str, count: int) -> None:
        """Count services whose actuation failed.

        Args:
            actuator: Actuator name (e.g. ``"simulator"``, ``"kubernetes"``).
            count: Number of failed services; 0 is allowed and makes the series
                visible at 0, so an alert on its rate has data before the first error.

        Raises:
            ValueError: If ``count`` is negative (counters only go up).
        """
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        self.actuation_errors.labels(actuator=actuator).inc(count)

    def record_api_request(self, endpoint: str, status: int) -> None:
        """Count one answered HTTP request.

        Args:
            endpoint: The route (a fixed set, never the raw path: unknown paths must be
                mapped to one label by the caller to keep cardinality bounded).
            status: The HTTP status code sent.
        """
        self.api_requests.labels(endpoint=endpoint, status=str(status)).inc()

    def set_model_versions(self, versions: Mapping[str, str | None]) -> None:
        """Publish the model versions in use.

        Args:
            versions: Model name (e.g. ``"forecaster"``, ``"controller"``) to its
                version, None when no model is loaded (exposed as ``"none"``). Models
                not named keep their last value.
        """
        for model, version in versions.items():
            label = NO_VERSION if version is None else str(version)
            self.model_version.labels(model=model).info({"version": label})

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (serve with :attr:`content_type`).

        Returns:
            The encoded exposition.
        """
        return generate_latest(self.registry)


def _string_column(frame: pd.DataFrame, column: str, missing: str) -> pd.Series:
    """A frame column as strings, ``missing`` where the column or a value is absent."""
    if column not in frame.columns:
        return pd.Series(missing, index=frame.index, dtype=object)
    return frame[column].fillna(missing).astype(str)
