"""The decision engine's input table, and how an online read becomes one.

One row per service. The same table comes from the online store (the inference cycle,
:func:`from_online`) and from callers outside Prefect (``POST /v1/decisions``):

* ``service_id``; ``ts``, the last observed minute (naive UTC): the decision is for the
  minute after it;
* ``recent_events_120m`` (120 one-minute counts) and ``hourly_events_7d`` (168 hourly
  counts), oldest first, as the ``forecaster_v1`` features serve them;
* the profile (:data:`PROFILE_FIELDS`) and the state of the last minute
  (:data:`STATE_FIELDS`);
* optional (:data:`OPTIONAL_FIELDS`, NaN when unknown): ``events_processed``,
  ``jobs_target`` (the target in force; default running + starting jobs),
  ``steps_since_change`` (minutes since the target last changed; default: long ago) and
  ``budget_used_today``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PROFILE_FIELDS = (
    "criticality",
    "sla_latency_s",
    "sla_target",
    "cost_per_job_hour",
    "daily_budget",
    "min_jobs",
    "max_jobs",
    "max_step",
    "job_capacity_eps",
    "job_startup_s",
)
STATE_FIELDS = (
    "jobs_running",
    "jobs_starting",
    "queue_length",
    "events_in",
    "events_dropped",
    "utilization",
    "minute_of_day",
    "day_of_week",
)
OPTIONAL_FIELDS = ("events_processed", "jobs_target", "steps_since_change", "budget_used_today")
SEQUENCE_FIELDS = ("recent_events_120m", "hourly_events_7d")
REQUEST_COLUMNS = (
    "service_id",
    "ts",
    *SEQUENCE_FIELDS,
    *PROFILE_FIELDS,
    *STATE_FIELDS,
    *OPTIONAL_FIELDS,
)
"""Every column of the input table, in order."""

DECISION_COLUMNS = (
    "service_id",
    "ts",
    "jobs_before",
    "jobs_after",
    "action",
    "proposed_jobs",
    "shield_reason",
    "controller",
    "forecaster_version",
    "controller_version",
    "forecast_q10",
    "forecast_q50",
    "forecast_q90",
)
"""The engine's output columns; ``ts`` is the minute decided for, the forecasts are of its
events."""

LONG_AGO_STEPS = 10_000
"""``steps_since_change`` of a service whose target never changed (no cooldown applies)."""

EPOCH = pd.Timestamp("1970-01-01")


def epoch_seconds(ts: pd.Series) -> np.ndarray:
    """Naive-UTC timestamps as whole seconds since the epoch."""
    return ((pd.to_datetime(ts) - EPOCH) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)


def from_online(online: pd.DataFrame, max_age: pd.Timedelta, now: pd.Timestamp) -> pd.DataFrame:
    """The input table from an online read of ``serving_v1`` with timestamps.

    A service whose sequences or state are missing (never materialized, or expired) gets
    no row: nothing can be decided for it, and its actuator keeps the target in force.
    A row older than ``max_age`` before ``now`` is kept with ``stale`` set, so the
    engine decides for it without a forecast (the shield's fallback).

    Args:
        online: ``OnlineReader(store, "serving_v1").read(services, with_timestamps=True)``.
        max_age: Oldest feature row (by the sequences' event timestamp) still fresh.
        now: The current minute (naive UTC), for staleness.

    Returns:
        :data:`REQUEST_COLUMNS` plus ``stale`` (bool), one row per decidable service.
    """
    from features.engineering import AVAILABLE_AFTER

    needed = ["recent_events_120m", "recent_events_120m__ts", "jobs_running", "job_capacity_eps"]
    missing = [c for c in ["service_id", *needed] if c not in online.columns]
    if missing:
        raise ValueError(f"online read lacks {missing}; read serving_v1 with timestamps")
    have = online[online[needed].notna().all(axis=1)].reset_index(drop=True)
    stamped = pd.to_datetime(pd.to_numeric(have["recent_events_120m__ts"]), unit="s")
    n = len(have)

    def num(name: str) -> np.ndarray:
        if name not in have:
            return np.full(n, np.nan)
        return pd.to_numeric(have[name], errors="coerce").to_numpy(dtype=np.float64)

    ts = stamped - AVAILABLE_AFTER
    # Built as one dict: inserting ~30 columns one by one costs more than the decision.
    columns: dict[str, object] = {
        "service_id": have["service_id"].astype(str).to_numpy(),
        "ts": ts.to_numpy(),
        "recent_events_120m": have["recent_events_120m"].to_numpy(),
        "hourly_events_7d": have["hourly_events_7d"].to_numpy(),
    }
    for name in (*PROFILE_FIELDS, *STATE_FIELDS):
        columns[name] = num(name)
    columns["events_processed"] = np.full(n, np.nan)
    jobs_target = np.full(n, np.nan)
    since = np.full(n, float(LONG_AGO_STEPS))
    if "jobs_after" in have and "last_change_ts" in have:
        jobs_target = num("jobs_after")
        decided_for = epoch_seconds(ts + pd.Timedelta(minutes=1))
        minutes = (decided_for - num("last_change_ts")) / 60.0
        since = np.where(np.isfinite(minutes), np.clip(minutes, 0, LONG_AGO_STEPS), since)
    columns["jobs_target"] = jobs_target
    columns["steps_since_change"] = np.floor(since)
    columns["budget_used_today"] = num("budget_used_today")
    columns["stale"] = ((now - stamped) > max_age).to_numpy()
    return pd.DataFrame(columns)
