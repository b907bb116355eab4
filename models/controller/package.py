"""The scaling controller as a table in, table out model (the MLflow pyfunc's body).

A saved controller is a folder: the policy (``policy.npz`` + ``policy.json``, see
:class:`models.controller.ppo.LearnedPolicy`) and ``controller.json`` with the forecast
horizons and levels it reads. :func:`decide_frame` is stateless: one row per service
in, the shielded target out. State the loop keeps between calls (steps since the last
change, the rule's scale-down hold) comes in as columns.

Input columns:

* profile: ``job_capacity_eps, job_startup_s, rebalance_s, sla_latency_s, sla_target,
  cost_per_job_hour, min_jobs, max_jobs, max_step, criticality, daily_budget``;
* state: ``jobs_running, jobs_starting, queue_length, arrivals, processed, dropped,
  utilization, minute_of_day, day_of_week, steps_since_change``;
* forecasts: ``f_h<h>_q<pp>`` for each horizon and level of ``controller.json``
  (events in the minute ``h - 1`` after the one about to run, at level pp %);
* optional: ``rule_target`` (the calibrated rule's target, where the caller runs the
  rule with its hold; otherwise computed here without hold), ``rule_target_utilization``
  and ``rule_quantile_level`` (a service's calibrated rule settings).

Output columns: ``target_jobs`` (int), ``proposed_jobs`` (the policy's request before
the shield, NaN when it had none) and ``shield_reason`` ("" when untouched).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from models.controller.base import Observation
from models.controller.env import RuleSettings
from models.controller.policy_inputs import policy_features
from models.controller.ppo import LearnedPolicy
from models.controller.rules import PredictiveController
from models.controller.shield import ShieldConfig, shield_targets
from simulator.config import STEP_S, ClusterParams

PROFILE_COLUMNS = (
    "job_capacity_eps",
    "job_startup_s",
    "rebalance_s",
    "sla_latency_s",
    "sla_target",
    "cost_per_job_hour",
    "min_jobs",
    "max_jobs",
    "max_step",
    "criticality",
    "daily_budget",
)
STATE_COLUMNS = (
    "jobs_running",
    "jobs_starting",
    "queue_length",
    "arrivals",
    "processed",
    "dropped",
    "utilization",
    "minute_of_day",
    "day_of_week",
    "steps_since_change",
)
OPTIONAL_COLUMNS = ("rule_target", "rule_target_utilization", "rule_quantile_level")


def forecast_column(horizon: int, level: float) -> str:
    """``f_h<h>_q<pp>``, e.g. ``f_h5_q95``."""
    return f"f_h{horizon}_q{round(level * 100):02d}"


class ControllerPackage:
    """A loaded controller: policy plus the forecast layout it reads."""

    def __init__(
        self, policy: LearnedPolicy, horizons: tuple[int, ...], quantiles: tuple[float, ...]
    ) -> None:
        if list(horizons) != sorted(set(horizons)) or list(quantiles) != sorted(set(quantiles)):
            raise ValueError("horizons and quantiles must be ascending and distinct")
        self.policy = policy
        self.horizons = tuple(int(h) for h in horizons)
        self.quantiles = tuple(float(q) for q in quantiles)

    @property
    def forecast_columns(self) -> list[str]:
        return [forecast_column(h, q) for h in self.horizons for q in self.quantiles]

    @property
    def input_columns(self) -> list[str]:
        return [*PROFILE_COLUMNS, *STATE_COLUMNS, *self.forecast_columns]

    def save(self, folder: Path) -> Path:
        self.policy.save(folder)
        meta = {"format": 1, "horizons": list(self.horizons), "quantiles": list(self.quantiles)}
        (folder / "controller.json").write_text(json.dumps(meta, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: Path) -> ControllerPackage:
        meta = json.loads((folder / "controller.json").read_text())
        if meta.get("format") != 1:
            raise ValueError(f"unknown controller format {meta.get('format')!r} in {folder}")
        return cls(LearnedPolicy.load(folder), tuple(meta["horizons"]), tuple(meta["quantiles"]))

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        return decide_frame(self, frame)


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    column = frame[name]
    if pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype):
        # Already numbers (the engine's tables): skip to_numeric, which costs more than
        # the policy itself on a one-service decision.
        return column.to_numpy(dtype=np.float64, na_value=np.nan)
    try:
        values = pd.to_numeric(column, errors="raise").to_numpy(dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"column {name!r} must be numeric: {exc}") from exc
    return values


def _params(frame: pd.DataFrame) -> ClusterParams:
    n = len(frame)
    values = {c: _column(frame, c) for c in PROFILE_COLUMNS}
    bad = [c for c, v in values.items() if not np.all(np.isfinite(v))]
    if bad:
        raise ValueError(f"profile columns {bad} must be finite")
    cap = values["job_capacity_eps"]
    if np.any(cap <= 0) or np.any(values["min_jobs"] > values["max_jobs"]):
        raise ValueError("need job_capacity_eps > 0 and min_jobs <= max_jobs")
    if np.any(values["sla_latency_s"] <= 1.0 / cap) or np.any(values["max_step"] < 1):
        raise ValueError("need sla_latency_s above the processing time and max_step >= 1")
    return ClusterParams(
        service_ids=tuple(str(i) for i in range(n)),
        job_capacity_eps=cap,
        startup_steps=np.ceil(values["job_startup_s"] / STEP_S).astype(np.int64),
        rebalance_s=values["rebalance_s"],
        queue_max_events=np.full(n, np.inf),
        sla_latency_s=values["sla_latency_s"],
        sla_target=values["sla_target"],
        cost_per_job_hour=values["cost_per_job_hour"],
        min_jobs=values["min_jobs"].astype(np.int64),
        max_jobs=values["max_jobs"].astype(np.int64),
        max_step=values["max_step"].astype(np.int64),
        job_failure_rate_per_hour=np.zeros(n),
        capacity_noise_cv=np.zeros(n),
        criticality=np.clip(values["criticality"], 1, 3).astype(np.int64),
        daily_budget=values["daily_budget"],
        high_priority_share=np.zeros(n),
        event_size_kb=np.zeros(n),
    )


@dataclass(frozen=True)
class _Inputs:
    params: ClusterParams
    obs: Observation
    since: np.ndarray
    minute: np.ndarray
    day: np.ndarray


def _empty_decisions() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "target_jobs": pd.Series(dtype=np.int64),
            "proposed_jobs": pd.Series(dtype=np.float64),
            "shield_reason": pd.Series(dtype=object),
        }
    )


def _read_inputs(
    frame: pd.DataFrame, horizons: tuple[int, ...], quantiles: tuple[float, ...]
) -> _Inputs:
    columns = [
        *PROFILE_COLUMNS,
        *STATE_COLUMNS,
        *(forecast_column(h, q) for h in horizons for q in quantiles),
    ]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"missing input columns: {missing}")
    params = _params(frame)
    n = len(frame)
    state = {c: _column(frame, c) for c in STATE_COLUMNS}
    # Counts stay float so a missing one stays NaN: the shield's state fallback then
    # holds the service instead of reading it as empty.
    running, starting = state["jobs_running"], state["jobs_starting"]
    fc = np.stack(
        [_column(frame, forecast_column(h, q)) for h in horizons for q in quantiles], axis=1
    ).reshape(n, len(horizons), len(quantiles))
    cap_eps = np.nan_to_num(running) * params.job_capacity_eps
    queue = state["queue_length"]
    drain = np.where(cap_eps > 0, queue / np.maximum(cap_eps, 1e-9), np.where(queue > 0, np.inf, 0))
    minute = np.nan_to_num(state["minute_of_day"], nan=0.0).astype(np.int64) % 1440
    day = np.nan_to_num(state["day_of_week"], nan=0.0).astype(np.int64) % 7
    target = running + starting
    if "jobs_target" in frame.columns:
        given = _column(frame, "jobs_target")
        target = np.where(np.isfinite(given), given, target)
    obs = Observation(
        step=0,
        minute_of_day=int(minute[0]),
        day_of_week=int(day[0]),
        jobs_running=running,
        jobs_starting=starting,
        jobs_target=target,
        queue_length=queue,
        arrivals=state["arrivals"],
        processed=state["processed"],
        dropped=state["dropped"],
        utilization=state["utilization"],
        drain_time_s=drain,
        forecast=fc,
        horizons=horizons,
        quantiles=quantiles,
    )
    since = np.nan_to_num(state["steps_since_change"], nan=0.0).astype(np.int64)
    return _Inputs(params, obs, since, minute, day)


def decide_frame(model: ControllerPackage, frame: pd.DataFrame) -> pd.DataFrame:
    """Shielded target jobs for each row (one service each); see the module docstring.

    Non-finite state or forecast values do not raise: the shield's fallback decides
    for that row and says so in ``shield_reason``. Missing columns or a malformed
    profile raise ValueError naming them.
    """
    missing = [c for c in model.input_columns if c not in frame.columns]
    if missing:
        raise ValueError(f"missing input columns: {missing}")
    if len(frame) == 0:
        return _empty_decisions()
    x = _read_inputs(frame, model.horizons, model.quantiles)
    obs, n = x.obs, len(frame)
    policy = model.policy
    rule_target = None
    if policy.mode == "residual":
        rule_target = _rule_targets(policy.rule, frame, x.params, obs)
    proposed = np.full(n, np.nan)
    usable = np.isfinite(np.asarray(obs.forecast)).all(axis=(1, 2))
    if usable.any():
        features = policy_features(
            obs,
            x.params,
            action_limit=policy.action_limit,
            minute_of_day=x.minute,
            day_of_week=x.day,
            steps_since_change=x.since,
            rule_target=rule_target,
        )
        base = rule_target if rule_target is not None else obs.jobs_target
        actions = policy.act(features)
        proposed = np.where(usable, base + actions - policy.action_limit, np.nan)
    result = shield_targets(x.params, obs, proposed, x.since, policy.shield)
    return pd.DataFrame(
        {
            "target_jobs": result.targets.astype(np.int64),
            "proposed_jobs": proposed.astype(np.float64),
            "shield_reason": list(result.reasons),
        },
        index=frame.index,
    )


def rule_frame(
    frame: pd.DataFrame,
    horizons: tuple[int, ...],
    quantiles: tuple[float, ...],
    rule: RuleSettings,
    shield: ShieldConfig,
) -> pd.DataFrame:
    """The calibrated predictive rule behind the shield, on the same table as
    :func:`decide_frame` (what serving runs when no learned controller is available).

    Same input columns (forecasts on ``horizons`` x ``quantiles``) and output columns;
    ``proposed_jobs`` is the rule's target.
    """
    if len(frame) == 0:
        return _empty_decisions()
    x = _read_inputs(frame, horizons, quantiles)
    usable = np.isfinite(np.asarray(x.obs.forecast)).all(axis=(1, 2))
    proposed = np.where(usable, _rule_targets(rule, frame, x.params, x.obs), np.nan)
    result = shield_targets(x.params, x.obs, proposed, x.since, shield)
    return pd.DataFrame(
        {
            "target_jobs": result.targets.astype(np.int64),
            "proposed_jobs": proposed.astype(np.float64),
            "shield_reason": list(result.reasons),
        },
        index=frame.index,
    )


def _rule_targets(
    default: RuleSettings, frame: pd.DataFrame, params: ClusterParams, obs: Observation
) -> np.ndarray:
    """The rule's target per row: given, or computed without hold from the settings."""
    n = len(frame)
    rho = np.full(n, default.target_utilization)
    level = np.full(n, default.quantile_level)
    if "rule_target_utilization" in frame.columns:
        given = _column(frame, "rule_target_utilization")
        rho = np.where(np.isfinite(given), given, rho)
    if "rule_quantile_level" in frame.columns:
        given = _column(frame, "rule_quantile_level")
        level = np.where(np.isfinite(given), given, level)
    rule = PredictiveController(target_utilization=rho, quantile_level=level, hold_steps=0)
    rule.reset(params)
    safe_fc = np.nan_to_num(np.asarray(obs.forecast), nan=0.0, posinf=0.0, neginf=0.0)
    computed = rule.decide(replace(obs, forecast=safe_fc)).astype(np.float64)
    if "rule_target" in frame.columns:
        given = _column(frame, "rule_target")
        computed = np.where(np.isfinite(given), given, computed)
    return computed


def example_frame(
    horizons: tuple[int, ...], quantiles: tuple[float, ...], n: int = 3
) -> pd.DataFrame:
    """A valid input table (signature and input example of the registered model)."""
    rows = []
    for i in range(n):
        demand = 600.0 * (i + 1)
        row: dict[str, float | int] = {
            "job_capacity_eps": 25.0,
            "job_startup_s": 90.0,
            "rebalance_s": 5.0,
            "sla_latency_s": 60.0,
            "sla_target": 0.99,
            "cost_per_job_hour": 0.2,
            "min_jobs": 1,
            "max_jobs": 40,
            "max_step": 4,
            "criticality": 1 + i % 3,
            "daily_budget": 100.0,
            "jobs_running": 1 + i,
            "jobs_starting": 0,
            "queue_length": 100.0 * i,
            "arrivals": demand,
            "processed": demand,
            "dropped": 0.0,
            "utilization": 0.5,
            "minute_of_day": 600 + i,
            "day_of_week": i % 7,
            "steps_since_change": 3,
        }
        for h in horizons:
            for q in quantiles:
                row[forecast_column(h, q)] = demand * (1 + 0.4 * (q - 0.5)) * (1 + 0.01 * h)
        row["rule_target"] = 2.0 + i
        row["rule_target_utilization"] = 0.8
        row["rule_quantile_level"] = 0.95
        rows.append(row)
    # Every column is a float, counts included: a missing value (NaN) must reach the
    # shield's fallback instead of failing the signature's integer check.
    return pd.DataFrame(rows).astype(np.float64)


def load_predictor(folder: str) -> ControllerPackage:
    """Loader for the registry's FolderModel (``models.controller.package:load_predictor``)."""
    return ControllerPackage.load(Path(folder))
