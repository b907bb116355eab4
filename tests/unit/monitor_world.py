"""Synthetic evidence for the monitoring tests: metrics, decisions and profiles.

Each service's traffic follows a daily sine around its base level with lognormal noise;
the decisions of the window forecast the old level (times ``forecast_scale``) with an 80 %
interval ``interval`` times the calibrated width, so drift and forecast errors can be
injected one service at a time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from features.contracts import conform

NOISE_CV = 0.1


def daily_rate(base: float, ts: pd.DatetimeIndex) -> np.ndarray:
    """Events per minute: ``base`` with a +-50 % daily sine."""
    minute = (ts - ts.normalize()).total_seconds().to_numpy() / 60.0
    return base * (1.0 + 0.5 * np.sin(2 * np.pi * minute / 1440.0))


def synthetic_world(
    base: Mapping[str, float],
    start: pd.Timestamp,
    end: pd.Timestamp,
    window_start: pd.Timestamp,
    *,
    shift: Mapping[str, float] | None = None,
    forecast_scale: Mapping[str, float] | None = None,
    interval: float = 1.0,
    seed: int = 0,
    capacity_eps: float = 2.0,
    price: float = 0.2,
    max_jobs: int = 50,
    forecaster_version: str | None = None,
) -> dict[str, pd.DataFrame]:
    """Every minute of ``[start, end)``; decisions for the minutes from ``window_start``.

    Args:
        base: Mean events per minute of each service.
        start: First minute of the metrics.
        end: End (exclusive) of the metrics.
        window_start: First minute of the window: ``shift`` applies there, and only there
            are there decisions.
        shift: Traffic multiplier of a service in the window (a level shift).
        forecast_scale: Multiplier of a service's forecasts (a bias).
        interval: Width of the forecast intervals relative to the calibrated one.
        seed: Seed of the noise.
        capacity_eps: Events per second one job processes (many small jobs keep the
            utilization near its target all day).
        price: Cost per job hour.
        max_jobs: The profiles' job limit.
        forecaster_version: Version written with each decision.

    Returns:
        Conformed frames of ``event_metrics``, ``system_metrics``, ``scaling_decisions``
        and ``service_profiles``.
    """
    shift = shift or {}
    forecast_scale = forecast_scale or {}
    rng = np.random.default_rng(seed)
    ts = pd.date_range(start, end, freq="min", inclusive="left")
    in_window = ts >= window_start
    sigma = math.sqrt(math.log1p(NOISE_CV**2))
    events, system, decisions = [], [], []
    for sid, level_of in base.items():
        rate = daily_rate(level_of, ts)
        level = rate * np.where(in_window, shift.get(sid, 1.0), 1.0)
        noise = np.exp(sigma * rng.standard_normal(ts.size) - sigma**2 / 2)
        y = rng.poisson(level * noise).astype(float)
        jobs = np.ceil(level / 60.0 / capacity_eps / 0.7).astype(int)
        events.append(
            pd.DataFrame(
                {
                    "service_id": sid,
                    "ts": ts,
                    "events_in": y,
                    "events_processed": y,
                    "queue_length": 0.0,
                    "queue_wait_p50_s": 0.0,
                    "queue_wait_p95_s": 0.0,
                    "proc_duration_mean_ms": 40.0,
                    "proc_duration_p95_ms": 60.0,
                    "events_dropped": 0.0,
                }
            )
        )
        system.append(
            pd.DataFrame(
                {
                    "service_id": sid,
                    "ts": ts,
                    "jobs_running": jobs,
                    "jobs_starting": 0,
                    "utilization": y / 60.0 / (jobs * capacity_eps),
                }
            )
        )
        q50 = rate[in_window] * forecast_scale.get(sid, 1.0)
        spread = 1.2816 * math.sqrt(sigma**2 + 1.0 / level_of) * interval
        decisions.append(
            pd.DataFrame(
                {
                    "service_id": sid,
                    "ts": ts[in_window],
                    "jobs_before": jobs[in_window],
                    "action": 0,
                    "jobs_after": jobs[in_window],
                    "controller": "predictive",
                    "forecaster_version": forecaster_version,
                    "forecast_q10": q50 * math.exp(-spread),
                    "forecast_q50": q50,
                    "forecast_q90": q50 * math.exp(spread),
                }
            )
        )
    profiles = pd.DataFrame(
        {
            "service_id": list(base),
            "ts": end - pd.Timedelta(days=30),
            "criticality": 1,
            "sla_latency_s": 60.0,
            "sla_target": 0.99,
            "cost_per_job_hour": price,
            "daily_budget": 100.0,
            "min_jobs": 1,
            "max_jobs": max_jobs,
            "max_step": 4,
            "job_capacity_eps": capacity_eps,
            "job_startup_s": 90.0,
        }
    )
    tables = {
        "event_metrics": pd.concat(events, ignore_index=True),
        "system_metrics": pd.concat(system, ignore_index=True),
        "scaling_decisions": pd.concat(decisions, ignore_index=True),
        "service_profiles": profiles,
    }
    return {table: conform(frame, table).frame for table, frame in tables.items()}
