"""The learned controller's observation vector, built the same way in training and serving.

Every entry is relative, so one policy serves services of any volume, capacity, price
or SLA: job counts are in units of the policy's step limit ``N`` (how many actions it
takes to close a gap), loads relative to capacity, times relative to the SLA budget.

| index | name            | meaning                                                   | range   |
|-------|-----------------|-----------------------------------------------------------|---------|
| 0     | gap_q50         | (jobs the median forecast needs - current target) / N     | [-8, 8] |
| 1     | gap_q90         | same at the 0.9 quantile                                  | [-8, 8] |
| 2     | gap_q95         | same at the 0.95 quantile                                 | [-8, 8] |
| 3     | gap_far_q50     | same, median, over horizons beyond the governed ones      | [-8, 8] |
| 4     | gap_far_q90     | same, 0.9 quantile                                        | [-8, 8] |
| 5     | gap_far_min_q90 | lowest 0.9-quantile need beyond the governed horizons     | [-8, 8] |
| 6     | backlog_jobs    | jobs that drain the queue in half the wait budget / N     | [0, 8]  |
| 7     | drain_vs_sla    | queue drain time / SLA wait budget                        | [0, 4]  |
| 8     | utilization     | busy share of serving capacity in the last step           | [0, 1]  |
| 9     | load_vs_serving | last step's arrivals / serving capacity                   | [0, 4]  |
| 10    | dropped_share   | share of last step's arrivals dropped by the full queue   | [0, 1]  |
| 11    | starting        | jobs starting / N                                         | [0, 8]  |
| 12    | headroom_up     | (max_jobs - target) / N                                   | [0, 8]  |
| 13    | headroom_down   | (target - min_jobs) / N                                   | [0, 8]  |
| 14-15 | tod_sin, cos    | minute of day on the unit circle                          | [-1, 1] |
| 16-17 | dow_sin, cos    | day of week on the unit circle                            | [-1, 1] |
| 18    | criticality     | 1 for tier 1, 0 for tier 2, -1 for tier 3                 | [-1, 1] |
| 19    | sla_strictness  | -log10(1 - sla_target) / 3                                | [0, 2]  |
| 20    | budget_pressure | daily spend rate of the current target / daily budget     | [0, 4]  |
| 21    | since_change    | steps since the target last changed / 10                  | [0, 1]  |
| 22    | startup         | startup steps / 5                                         | [0, 2]  |
| 23    | rule_gap        | (rule's target - current target) / N; 0 when direct       | [-8, 8] |

"Jobs the forecast needs" is the forecast's maximum over the horizons a decision now
governs (1 .. startup + 2, as the predictive rule and the shield use), divided by one
job's events per step. Non-finite inputs become 0 (the shield's fallback handles them);
the observation itself is always finite.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from models.controller.base import Observation
from simulator.config import STEP_S, ClusterParams

FEATURES = (
    "gap_q50",
    "gap_q90",
    "gap_q95",
    "gap_far_q50",
    "gap_far_q90",
    "gap_far_min_q90",
    "backlog_jobs",
    "drain_vs_sla",
    "utilization",
    "load_vs_serving",
    "dropped_share",
    "starting",
    "headroom_up",
    "headroom_down",
    "tod_sin",
    "tod_cos",
    "dow_sin",
    "dow_cos",
    "criticality",
    "sla_strictness",
    "budget_pressure",
    "since_change",
    "startup",
    "rule_gap",
)
N_FEATURES = len(FEATURES)
LEVELS = (0.5, 0.9, 0.95)
"""Forecast levels the policy reads; every forecast source must provide them."""
GAP_BOUND = 8.0
_BOUNDS = {
    "drain_vs_sla": (0.0, 4.0),
    "utilization": (0.0, 1.0),
    "load_vs_serving": (0.0, 4.0),
    "dropped_share": (0.0, 1.0),
    "tod_sin": (-1.0, 1.0),
    "tod_cos": (-1.0, 1.0),
    "dow_sin": (-1.0, 1.0),
    "dow_cos": (-1.0, 1.0),
    "criticality": (-1.0, 1.0),
    "sla_strictness": (0.0, 2.0),
    "budget_pressure": (0.0, 4.0),
    "since_change": (0.0, 1.0),
    "startup": (0.0, 2.0),
}
_NONNEG = {"backlog_jobs", "starting", "headroom_up", "headroom_down"}
_LOW = np.array([_BOUNDS.get(f, (0.0 if f in _NONNEG else -GAP_BOUND, 0))[0] for f in FEATURES])
_HIGH = np.array([_BOUNDS.get(f, (0, GAP_BOUND))[1] for f in FEATURES])


def level_indices(quantiles: tuple[float, ...]) -> np.ndarray:
    """Positions of :data:`LEVELS` in a forecast's levels (ValueError if one is missing)."""
    return np.asarray(_level_indices(tuple(float(q) for q in quantiles)))


@lru_cache(maxsize=64)
def _level_indices(quantiles: tuple[float, ...]) -> tuple[int, ...]:
    have = np.asarray(quantiles, dtype=np.float64)
    out = []
    for level in LEVELS:
        hit = np.flatnonzero(np.isclose(have, level))
        if not len(hit):
            raise ValueError(f"the policy needs forecast levels {LEVELS}; got {quantiles}")
        out.append(int(hit[0]))
    return tuple(out)


def policy_features(
    obs: Observation,
    params: ClusterParams,
    *,
    action_limit: int,
    minute_of_day: np.ndarray,
    day_of_week: np.ndarray,
    steps_since_change: np.ndarray,
    rule_target: np.ndarray | None = None,
) -> np.ndarray:
    """The observation vectors of S services, shape (S, N_FEATURES), float32.

    Args:
        obs: The step's observation; must carry forecasts with :data:`LEVELS`.
        params: The services' parameters.
        action_limit: N, the policy's largest job change per step.
        minute_of_day: Per service, minute of day (0..1439) of the step about to run.
        day_of_week: Per service, 0 = Monday.
        steps_since_change: Per service, steps since the target last changed.
        rule_target: The calibrated rule's target per service (residual control).

    Returns:
        The table of the module docstring, one row per service.
    """
    if obs.forecast is None:
        raise ValueError("the policy needs forecasts in the observation")
    n = params.n_services
    fc = np.asarray(obs.forecast, dtype=np.float64)
    if fc.ndim != 3 or fc.shape[0] != n:
        raise ValueError(f"forecast must have shape ({n}, H, Q), got {fc.shape}")
    fc = fc[:, :, level_indices(obs.quantiles)]  # (S, H, 3)
    fc = np.where(np.isfinite(fc), np.maximum(fc, 0.0), 0.0)
    horizons = np.asarray(obs.horizons)
    governed = horizons[None, :] <= (params.startup_steps[:, None] + 2)  # (S, H)
    far = ~governed
    has_far = np.asarray(far.any(axis=1))
    cap = params.job_step_capacity
    lim = float(action_limit)
    cur = np.asarray(obs.jobs_target, dtype=np.float64)

    def need(values: np.ndarray, mask: np.ndarray, reduce: str) -> np.ndarray:
        if reduce == "max":
            v = np.max(np.where(mask, values, -np.inf), axis=1)
        else:
            v = np.min(np.where(mask, values, np.inf), axis=1)
        return np.where(np.isfinite(v), v, 0.0) / cap

    def gap(jobs: np.ndarray) -> np.ndarray:
        return (jobs - cur) / lim

    gov_need = [need(fc[:, :, k], governed, "max") for k in range(3)]
    far_mask = np.where(has_far[:, None], far, governed)
    far_q50 = need(fc[:, :, 0], far_mask, "max")
    far_q90 = need(fc[:, :, 1], far_mask, "max")
    far_min_q90 = need(fc[:, :, 1], far_mask, "min")

    queue = _finite(obs.queue_length)
    drain_steps = np.maximum(0.5 * params.wait_budget_s / STEP_S, 1e-3)
    running = np.asarray(obs.jobs_running, dtype=np.float64)
    serving_cap = np.maximum(running, 1.0) * cap
    arrivals = _finite(obs.arrivals)
    dropped = _finite(obs.dropped)
    drain = np.asarray(obs.drain_time_s, dtype=np.float64)
    drain = np.where(np.isnan(drain), 0.0, drain)
    spend_per_day = cur * params.cost_per_job_hour * 24.0
    budget = np.where(
        params.daily_budget > 0, spend_per_day / np.maximum(params.daily_budget, 1e-9), 4.0
    )
    tod = 2 * np.pi * np.asarray(minute_of_day, dtype=np.float64) / 1440.0
    dow = 2 * np.pi * np.asarray(day_of_week, dtype=np.float64) / 7.0
    rule = np.zeros(n) if rule_target is None else gap(np.asarray(rule_target, dtype=np.float64))
    cols = [
        gap(gov_need[0]),
        gap(gov_need[1]),
        gap(gov_need[2]),
        gap(far_q50),
        gap(far_q90),
        gap(far_min_q90),
        queue / (cap * drain_steps) / lim,
        drain / params.wait_budget_s,
        _finite(obs.utilization),
        arrivals / serving_cap,
        dropped / np.maximum(arrivals, 1.0),
        _finite(obs.jobs_starting) / lim,
        (params.max_jobs - cur) / lim,
        (cur - params.min_jobs) / lim,
        np.sin(tod),
        np.cos(tod),
        np.sin(dow),
        np.cos(dow),
        (2 - params.criticality).astype(np.float64),
        -np.log10(np.maximum(1 - params.sla_target, 1e-6)) / 3,
        budget,
        np.asarray(steps_since_change, dtype=np.float64) / 10.0,
        params.startup_steps / 5.0,
        rule,
    ]
    out = np.stack(cols, axis=1)
    out = np.where(np.isnan(out), 0.0, out)  # +-inf are clipped to the bounds below
    return np.asarray(np.clip(out, _LOW, _HIGH), dtype=np.float32)


def _finite(values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(arr), arr, 0.0)
