"""One inference cycle: online features -> engine -> decision log -> actuator -> online.

:func:`run_cycle` reads every service's features in one online call and decides for all of
them in one engine call. The decisions are appended to the offline ``scaling_decisions``
table (idempotent on service and minute) *before* any target is applied, so every applied
decision is on record even if the cycle dies next; that table is a journal per day (see
:mod:`features.offline`), so the append writes one file whatever the number of services.
The targets are then applied, and the target in force is pushed to the online
``service_decisions`` view, from which the next cycle reads it and when it last changed.

A service already decided for this minute (its online decision is for the same minute
or later) is skipped, so a cycle that runs twice for one minute, or overlaps another,
does not act twice. The flow also holds a lock and Prefect a concurrency limit; this is
the last line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from serving.actuators.base import Actuation, Actuator
from serving.engine import DecisionEngine
from serving.inputs import DECISION_COLUMNS, epoch_seconds, from_online

if TYPE_CHECKING:
    from feast import FeatureStore

    from features.offline import OfflineStore
    from serving.metrics import ServingMetrics

logger = logging.getLogger(__name__)

DECISIONS_PUSH = "service_decisions_push"
FEATURE_SERVICE = "serving_v1"
MAX_FEATURE_AGE = pd.Timedelta(minutes=5)
"""Default age at which a service's features count as stale."""


class Reader(Protocol):
    """Online feature reads (:class:`features.store.OnlineReader`)."""

    def read(self, services: Sequence[str], *, with_timestamps: bool = False) -> pd.DataFrame:
        """Newest features per service, one row each, in order."""
        ...


@dataclass
class CycleReport:
    """What one cycle did.

    Attributes:
        now: The minute the cycle ran at (naive UTC).
        decisions: The engine's decisions (:data:`serving.inputs.DECISION_COLUMNS`).
        actuations: The actuator's result per decided service.
        skipped: Services not decided, with the reason.
        models: Model versions used and any problem loading them.
        seconds: Wall time per stage (read, decide, act, log) and in total.
    """

    now: pd.Timestamp
    decisions: pd.DataFrame
    actuations: list[Actuation] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def failed_actuations(self) -> list[Actuation]:
        return [a for a in self.actuations if not a.applied and a.error is not None]

    def summary(self) -> dict[str, Any]:
        """Counts and timings (for flow results and logs)."""
        d = self.decisions
        return {
            "now": str(self.now),
            "decided": len(d),
            "changed": int((d["action"] != 0).sum()) if len(d) else 0,
            "shielded": int((d["shield_reason"] != "").sum()) if len(d) else 0,
            "skipped": dict(self.skipped),
            "actuation_errors": len(self.failed_actuations),
            "models": self.models,
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
        }


class DecisionLog:
    """Writes decisions to the offline table and pushes the target in force online.

    Args:
        offline: The offline store (``scaling_decisions`` table).
        store: The applied feature store; None logs offline only.
    """

    def __init__(self, offline: OfflineStore, store: FeatureStore | None) -> None:
        self.offline = offline
        self.store = store

    def record(self, decisions: pd.DataFrame) -> None:
        """Append ``decisions`` to the offline table, before anything is applied.

        Write-ahead: a cycle that dies here has applied nothing, and a decision that was
        applied is always on record (appending the same minute again replaces the row).
        The append writes one journal segment (one file for all services).
        """
        from features.contracts import conform

        if decisions.empty:
            return
        self.offline.append("scaling_decisions", conform(decisions, "scaling_decisions").frame)

    def publish(
        self,
        decisions: pd.DataFrame,
        previous_change: np.ndarray,
        in_force: np.ndarray,
    ) -> None:
        """Push the target in force after actuation to the online store.

        This marks the minute as decided; a cycle that dies before it is decided again
        by its rerun (the actuators set targets, so that is harmless). Then, off the
        write-ahead path, the day's decision journal is folded once it has
        :data:`features.offline.FOLD_AT` segments (an hour of cycles).

        Args:
            decisions: The engine's decisions.
            previous_change: Per decision, when the target last changed before it (epoch
                seconds; 0 when never).
            in_force: Per decision, the target in force after actuation (the old one
                where actuation failed), which the next cycle starts from.
        """
        if decisions.empty:
            return
        if self.store is not None:
            from features.store import push_online

            push_online(
                self.store, DECISIONS_PUSH, _online_rows(decisions, previous_change, in_force)
            )
        self._fold(decisions)

    def _fold(self, decisions: pd.DataFrame) -> None:
        """Fold the decided days' journals; a failure is logged, never fails the cycle.

        The decisions are on record and applied by now: an unfolded journal only costs
        readers more files, and the next cycle tries again.
        """
        for day in pd.to_datetime(decisions["ts"]).dt.normalize().unique():
            try:
                self.offline.fold("scaling_decisions", pd.Timestamp(day))
            except Exception:  # any storage error: the rows are safe in their segments
                logger.warning("could not fold the decision journal of %s", day, exc_info=True)


def _online_rows(
    decisions: pd.DataFrame, previous_change: np.ndarray, in_force: np.ndarray
) -> pd.DataFrame:
    """The ``service_decisions`` rows to push (:meth:`DecisionLog.publish`)."""
    decided = epoch_seconds(decisions["ts"])
    before = decisions["jobs_before"].to_numpy(dtype=np.int64)
    in_force = np.asarray(in_force, dtype=np.int64)
    changed = np.where(in_force != before, decided, np.asarray(previous_change, np.int64))
    return pd.DataFrame(
        {
            "service_id": decisions["service_id"].to_numpy(),
            "event_timestamp": pd.to_datetime(decisions["ts"]).to_numpy(),
            "decision_ts": decided,
            "jobs_before": before,
            "jobs_after": in_force,
            "action": in_force - before,
            "last_change_ts": changed,
            "controller": decisions["controller"].astype(str).to_numpy(),
            "forecaster_version": decisions["forecaster_version"].fillna("").astype(str),
            "controller_version": decisions["controller_version"].fillna("").astype(str),
            "forecast_q10": decisions["forecast_q10"].astype(np.float32),
            "forecast_q50": decisions["forecast_q50"].astype(np.float32),
            "forecast_q90": decisions["forecast_q90"].astype(np.float32),
            "shield_reason": decisions["shield_reason"].astype(str).to_numpy(),
        }
    )


def run_cycle(
    engine: DecisionEngine,
    reader: Reader,
    actuator: Actuator,
    log: DecisionLog | None,
    services: Sequence[str],
    now: pd.Timestamp,
    *,
    max_feature_age: pd.Timedelta = MAX_FEATURE_AGE,
    metrics: ServingMetrics | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> CycleReport:
    """Decide for ``services`` at minute ``now``, act and log (module docstring).

    Args:
        engine: The decision engine.
        reader: Online reads of the ``serving_v1`` feature service.
        actuator: Where targets are applied.
        log: The decision log (None: do not log, e.g. a benchmark).
        services: Services to decide for.
        now: The current minute, naive UTC (for staleness).
        max_feature_age: Features older than this are stale: the shield's fallback
            decides for that service.
        metrics: Prometheus metrics to record into.
        clock: Wall clock for the stage timings.

    Returns:
        The cycle's report.
    """
    t0 = clock()
    try:
        online = reader.read(list(services), with_timestamps=True)
    except Exception as error:  # any backend's failure: no features, so nothing is decided
        # Without features nothing can be decided sensibly; every target stays as it is
        # (the platform keeps its jobs) and the next cycle tries again.
        why = f"online store unreachable: {type(error).__name__}: {error}"
        logger.error("cycle at %s: %s; no service decided, targets unchanged", now, why)
        return CycleReport(
            now=now,
            decisions=pd.DataFrame(columns=list(DECISION_COLUMNS)),
            skipped={str(s): why for s in services},
            models=engine.used.as_dict(),
            seconds={"read": clock() - t0, "total": clock() - t0},
        )
    t_read = clock()
    frame = from_online(online, max_feature_age, now)
    found = set(frame["service_id"])
    skipped = {str(s): "no online features" for s in services if s not in found}
    previous = np.zeros(len(frame), dtype=np.int64)
    if "decision_ts" in online.columns and len(frame):
        by_service = online.drop_duplicates("service_id").set_index("service_id")
        last_decided = pd.to_numeric(
            by_service["decision_ts"].reindex(frame["service_id"]), errors="coerce"
        ).to_numpy(dtype=np.float64)
        last_change = pd.to_numeric(
            by_service["last_change_ts"].reindex(frame["service_id"]), errors="coerce"
        ).to_numpy(dtype=np.float64)
        decided_for = epoch_seconds(frame["ts"] + pd.Timedelta(minutes=1))
        again = np.isfinite(last_decided) & (last_decided >= decided_for)
        for sid in frame.loc[again, "service_id"]:
            skipped[str(sid)] = "already decided for this minute"
        previous = np.nan_to_num(last_change, nan=0.0).astype(np.int64)[~again]
        frame = frame[~again].reset_index(drop=True)
    decisions = engine.decide(frame)
    t_decide = clock()
    if log is not None:
        log.record(decisions)
    t_record = clock()
    targets = dict(
        zip(decisions["service_id"], decisions["jobs_after"].astype(int).tolist(), strict=True)
    )
    try:
        actuations = actuator.apply(targets) if targets else []
    except Exception as error:  # an actuator that fails as a whole fails every service
        why = f"{type(error).__name__}: {error}"
        actuations = [
            Actuation(service_id=sid, target=target, applied=False, error=why)
            for sid, target in targets.items()
        ]
    t_act = clock()
    # The target in force next cycle: the decided one, unless actuation failed (a dry
    # run applies nothing but carries its own decisions forward, as a shadow controller).
    failed = {a.service_id for a in actuations if not a.applied and a.error is not None}
    in_force = np.where(
        decisions["service_id"].isin(failed).to_numpy(),
        decisions["jobs_before"].to_numpy(dtype=np.int64),
        decisions["jobs_after"].to_numpy(dtype=np.int64),
    )
    if log is not None:
        log.publish(decisions, previous, in_force)
    t_log = clock()
    report = CycleReport(
        now=now,
        decisions=decisions,
        actuations=actuations,
        skipped=skipped,
        models=engine.used.as_dict(),
        seconds={
            "read": t_read - t0,
            "decide": t_decide - t_read,
            "act": t_act - t_record,
            "log": (t_record - t_decide) + (t_log - t_act),
            "total": t_log - t0,
        },
    )
    if metrics is not None:
        metrics.record_decisions(decisions, t_decide - t_read)
        metrics.record_cycle(t_log - t0)
        if report.failed_actuations:
            metrics.record_actuation_errors(actuator.name, len(report.failed_actuations))
    for a in report.failed_actuations:
        logger.warning("%s: target %d not applied: %s", a.service_id, a.target, a.error)
    return report
