"""The decision engine: input table -> champion forecaster -> champion controller -> shield.

One call decides for every service at once (batched through the forecaster and the
policy). The models come from the registry by alias (``champion``) through a cache that
asks the registry where the alias points before every cycle, so a promotion or rollback
made by hand in the MLflow UI is used from the next cycle on.

When a model cannot be had, the engine still decides, and says how in each decision:

* no forecaster, a forecaster that fails, or one that returns NaN, infinite or negative
  values for a service: the quantiles of that service's last :data:`FALLBACK_WINDOW`
  minutes stand in for every horizon (its ``forecaster_version`` is null);
* no controller: the predictive rule behind the same safety shield
  (``controller = "predictive-rule"``);
* a stale or unusable row: no forecast, so the shield's fallback (reactive, never scales
  down) decides (``shield_reason`` starts with ``fallback``).

Input and output tables: :mod:`serving.inputs`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from models.controller.env import RuleSettings
from models.controller.package import ControllerPackage, decide_frame, forecast_column, rule_frame
from models.controller.ppo import POLICY_SHIELD
from models.controller.shield import ShieldConfig
from serving.inputs import DECISION_COLUMNS, LONG_AGO_STEPS, REQUEST_COLUMNS

logger = logging.getLogger(__name__)

FORECASTER = "event-forecaster"
CONTROLLER = "scaling-controller"
CHAMPION = "champion"
FALLBACK_WINDOW = 30
"""Minutes of recent counts whose quantiles stand in for a missing forecaster."""
SERVER_ALIAS_CHECK_S = 30.0
"""How often a long-running server (the HTTP API) asks the registry where the aliases
point: a promotion is served within this many seconds, and single decisions do not pay a
registry query each (about 10 ms per model on SQLite). An inference cycle asks every time."""
LOGGED_LEVELS = (0.1, 0.5, 0.9)
"""Levels of the one-minute-ahead forecast written with each decision."""


class NotReady(RuntimeError):
    """The engine cannot decide at all (e.g. the input table is unusable)."""


class ModelSource(Protocol):
    """Where models come from: :class:`models.registry.AliasCache` or a test's stand-in."""

    def get(self, model_name: str, alias: str = CHAMPION) -> tuple[Any, str]:
        """The model the alias points to, and its version; raises when there is none."""
        ...


@dataclass(frozen=True)
class EngineConfig:
    """How the engine decides.

    Attributes:
        alias: Registry alias of the models to serve.
        rebalance_s: Consumer-group rebalance pause per scaling event, seconds (the
            profile contract has no column for it; the simulator's default).
        control_horizons: Horizons the fallback rule reads (a loaded controller brings
            its own).
        control_levels: Levels the fallback rule reads.
        fallback_rule: Settings of the predictive rule used without a controller.
        fallback_shield: The shield around that rule.
    """

    alias: str = CHAMPION
    rebalance_s: float = 5.0
    control_horizons: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 15)
    control_levels: tuple[float, ...] = (0.5, 0.9, 0.95)
    fallback_rule: RuleSettings = field(default_factory=RuleSettings)
    fallback_shield: ShieldConfig = POLICY_SHIELD


@dataclass
class ModelsUsed:
    """Which models the last decision used, and why any was missing."""

    forecaster_version: str | None = None
    controller_version: str | None = None
    problems: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "forecaster": self.forecaster_version,
            "controller": self.controller_version,
            "problems": dict(self.problems),
        }


def _unwrap(model: Any) -> Any:
    """The project's own model object behind a registry pyfunc (fast path), else the model.

    The pyfunc wrapper checks the signature of every call, which costs more than the
    forecast itself for a few services; the folder model underneath is the same code.
    """
    from models import registry

    try:
        return registry.folder_predictor(model)
    except (registry.RegistryError, AttributeError):
        return model


def _matrix(values: pd.Series, width: int) -> np.ndarray:
    rows = [np.asarray(v, dtype=np.float64) if v is not None else None for v in values]
    out = np.full((len(rows), width), np.nan)
    for i, row in enumerate(rows):
        if row is not None and row.shape == (width,):
            out[i] = row
    return out


class DecisionEngine:
    """Decides job targets for a table of services (see the module docstring).

    Args:
        models: Source of the champion models; None serves the fallbacks only.
        config: How to decide.
        clock: Wall clock for the decision latency (injectable for tests).
    """

    def __init__(
        self,
        models: ModelSource | None,
        config: EngineConfig | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.models = models
        self.config = config or EngineConfig()
        self._clock = clock
        self.used = ModelsUsed()
        self._warned: dict[str, str] = {}

    # -- models ----------------------------------------------------------------------------

    def _get(self, name: str, used: ModelsUsed) -> tuple[Any, str] | None:
        if self.models is None:
            used.problems[name] = "no model registry configured"
            return None
        try:
            model, version = self.models.get(name, self.config.alias)
        except Exception as error:  # any registry or load failure means: use the fallback
            problem = f"{type(error).__name__}: {error}"
            used.problems[name] = problem
            # Said once per new problem, not every cycle (the decisions record it anyway).
            if self._warned.get(name) != problem:
                logger.warning("no %s@%s: %s; using the fallback", name, self.config.alias, error)
                self._warned[name] = problem
            return None
        self._warned.pop(name, None)
        stale = getattr(self.models, "last_error", None)
        if stale is not None:
            # The registry failed but a loaded version still serves: say so with each cycle.
            used.problems[name] = (
                f"registry check failed ({type(stale).__name__}: {stale}); "
                f"serving the cached version {version}"
            )
        return _unwrap(model), version

    # -- forecasting -----------------------------------------------------------------------

    def _forecast(
        self,
        frame: pd.DataFrame,
        horizons: tuple[int, ...],
        levels: tuple[float, ...],
        used: ModelsUsed,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Forecasts on (horizons x levels), the logged one-minute levels (NaN where none)
        and, per row, whether the forecaster made them (else the fallback did)."""
        from features.engineering import RECENT_MINUTES
        from models.controller.hybrid_provider import regrid

        n = len(frame)
        recent = _matrix(frame["recent_events_120m"], RECENT_MINUTES)
        usable = np.isfinite(recent).all(axis=1) & (recent >= 0).all(axis=1)
        if "stale" in frame.columns:
            usable &= ~frame["stale"].fillna(False).to_numpy(dtype=bool)
        grid = np.full((n, len(horizons), len(levels)), np.nan)
        logged = np.full((n, len(LOGGED_LEVELS)), np.nan)
        from_model = np.zeros(n, dtype=bool)
        if not usable.any():
            return grid, logged, from_model
        got = self._get(FORECASTER, used)
        if got is not None:
            try:
                own, own_h, own_q = self._hybrid(got[0], frame[usable])
            except Exception as error:  # a failing model must not stop the cycle
                used.problems[FORECASTER] = f"forecast failed: {type(error).__name__}: {error}"
                logger.warning("forecaster v%s failed (%s); using the fallback", got[1], error)
            else:
                # A forecaster returning NaN or infinities must not reach the policy: those
                # rows get the fallback forecast instead.
                finite = np.isfinite(own).all(axis=(1, 2)) & (own >= 0).all(axis=(1, 2))
                rows = np.flatnonzero(usable)[finite]
                if len(rows):
                    grid[rows] = regrid(own[finite], own_h, own_q, horizons, levels)
                    logged[rows] = regrid(own[finite], own_h, own_q, (1,), LOGGED_LEVELS)[:, 0]
                    from_model[rows] = True
                    used.forecaster_version = got[1]
                if not finite.all():
                    used.problems[FORECASTER] = (
                        f"v{got[1]} returned non-finite or negative forecasts for "
                        f"{int((~finite).sum())} service(s); the fallback forecast served them"
                    )
        rest = usable & ~from_model
        if rest.any():
            fb_h, fb_q = (1, max(horizons)), (0.05, 0.1, 0.5, 0.9, 0.95)
            per_level = np.quantile(recent[rest, -FALLBACK_WINDOW:], fb_q, axis=1).T  # (n, Q)
            fallback = np.repeat(per_level[:, None, :], len(fb_h), axis=1)
            grid[rest] = regrid(fallback, fb_h, fb_q, horizons, levels)
            logged[rest] = regrid(fallback, fb_h, fb_q, (1,), LOGGED_LEVELS)[:, 0, :]
        return grid, logged, from_model

    @staticmethod
    def _hybrid(
        model: Any, rows: pd.DataFrame
    ) -> tuple[np.ndarray, tuple[int, ...], tuple[float, ...]]:
        """The hybrid's own forecasts (n, H, Q) for the rows, with its horizons and levels."""
        forecaster = getattr(model, "forecaster", None)
        if forecaster is None:
            raise TypeError(f"{type(model).__name__} is not a forecaster of this project")
        from models.forecaster.package import predict_array

        table = rows[["service_id", "ts", "recent_events_120m", "hourly_events_7d"]].copy()
        table["criticality"] = pd.to_numeric(rows["criticality"], errors="coerce").fillna(2.0)
        own_h, own_q = tuple(forecaster.horizons), tuple(forecaster.quantiles)
        values = np.asarray(predict_array(forecaster, table), dtype=np.float64)
        if values.shape != (len(rows), len(own_h), len(own_q)):
            raise ValueError(f"forecasts of shape {values.shape} for {len(rows)} services")
        return values, own_h, own_q

    # -- deciding --------------------------------------------------------------------------

    def decide(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Decide for every row of the input table.

        Args:
            frame: :data:`serving.inputs.REQUEST_COLUMNS` (optional ones may be NaN), plus
                an optional ``stale`` flag per row.

        Returns:
            :data:`serving.inputs.DECISION_COLUMNS`, one row per input row, same order.

        Raises:
            ValueError: If columns are missing or a profile is malformed.
        """
        missing = [c for c in REQUEST_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"decision input lacks columns {missing}")
        used = ModelsUsed()
        frame = frame.reset_index(drop=True)
        n = len(frame)
        if n == 0:
            self.used = used
            return pd.DataFrame({c: pd.Series(dtype=object) for c in DECISION_COLUMNS})
        got = self._get(CONTROLLER, used)
        package: ControllerPackage | None = None
        if got is not None and isinstance(got[0], ControllerPackage):
            package = got[0]
            used.controller_version = got[1]
        elif got is not None:
            used.problems[CONTROLLER] = f"{type(got[0]).__name__} is not a controller package"
        horizons = package.horizons if package else self.config.control_horizons
        levels = package.quantiles if package else self.config.control_levels
        grid, logged, from_model = self._forecast(frame, horizons, levels, used)
        table = self._controller_table(frame, grid, horizons, levels)
        if package is not None:
            out = decide_frame(package, table)
            controller = "ppo"
        else:
            out = rule_frame(
                table, horizons, levels, self.config.fallback_rule, self.config.fallback_shield
            )
            controller = "predictive-rule"
        before = table["jobs_target"].to_numpy(dtype=np.float64)
        after = out["target_jobs"].to_numpy(dtype=np.int64)
        before_int = np.where(np.isfinite(before), before, after).astype(np.int64)
        self.used = used
        return pd.DataFrame(
            {
                "service_id": frame["service_id"].astype(str).to_numpy(),
                "ts": (pd.to_datetime(frame["ts"]) + pd.Timedelta(minutes=1)).to_numpy(),
                "jobs_before": before_int,
                "jobs_after": after,
                "action": after - before_int,
                "proposed_jobs": out["proposed_jobs"].to_numpy(dtype=np.float64),
                "shield_reason": out["shield_reason"].astype(str).to_numpy(),
                "controller": controller,
                "forecaster_version": [used.forecaster_version if m else None for m in from_model],
                "controller_version": used.controller_version,
                "forecast_q10": logged[:, 0],
                "forecast_q50": logged[:, 1],
                "forecast_q90": logged[:, 2],
            }
        )

    def _controller_table(
        self,
        frame: pd.DataFrame,
        grid: np.ndarray,
        horizons: tuple[int, ...],
        levels: tuple[float, ...],
    ) -> pd.DataFrame:
        """The controller package's input table (profile, state, forecasts)."""

        def num(name: str) -> np.ndarray:
            column = frame[name]
            if column.dtype.kind in "fiu":  # already numbers: to_numeric costs more
                return column.to_numpy(dtype=np.float64)
            return pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)

        running, starting = num("jobs_running"), num("jobs_starting")
        target = num("jobs_target")
        arrivals, dropped = num("events_in"), num("events_dropped")
        processed = num("events_processed")
        columns: dict[str, np.ndarray] = {
            "job_capacity_eps": num("job_capacity_eps"),
            "job_startup_s": num("job_startup_s"),
            "rebalance_s": np.full(len(frame), self.config.rebalance_s),
            "sla_latency_s": num("sla_latency_s"),
            "sla_target": num("sla_target"),
            "cost_per_job_hour": num("cost_per_job_hour"),
            "min_jobs": num("min_jobs"),
            "max_jobs": num("max_jobs"),
            "max_step": num("max_step"),
            "criticality": num("criticality"),
            "daily_budget": num("daily_budget"),
            "jobs_running": running,
            "jobs_starting": starting,
            "jobs_target": np.where(np.isfinite(target), target, running + starting),
            "queue_length": num("queue_length"),
            "arrivals": arrivals,
            # Not every source reports processed events; what arrived and was not dropped
            # is the best stand-in (the policy reads arrivals and drops, not this).
            "processed": np.where(np.isfinite(processed), processed, arrivals - dropped),
            "dropped": dropped,
            "utilization": num("utilization"),
            "minute_of_day": (num("minute_of_day") + 1) % 1440,
            "day_of_week": num("day_of_week"),
            "steps_since_change": np.nan_to_num(num("steps_since_change"), nan=LONG_AGO_STEPS),
        }
        for j, h in enumerate(horizons):
            for k, q in enumerate(levels):
                columns[forecast_column(h, q)] = grid[:, j, k]
        return pd.DataFrame(columns)
