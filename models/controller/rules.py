"""Rule-based controllers: fixed counts and the calibrated predictive rule."""

from __future__ import annotations

import numpy as np

from models.controller.base import Observation
from simulator.config import STEP_S, ClusterParams


class StaticController:
    """A fixed job count per service, whatever happens (``static``, ``static-peak``).

    Args:
        count: Jobs to run, scalar or one per lane.
        name: Label in reports: ``static`` for the hindsight-best count,
            ``static-peak`` for the count that serves the peak.
    """

    def __init__(self, count: int | np.ndarray, name: str = "static") -> None:
        self.count = np.asarray(count, dtype=np.int64)
        self.name = name
        self._n = 1

    def reset(self, params: ClusterParams) -> None:
        self._n = params.n_services

    def decide(self, obs: Observation) -> np.ndarray:
        return np.broadcast_to(self.count, (self._n,)).copy()


def peak_count(arrivals: np.ndarray, params: ClusterParams) -> np.ndarray:
    """Jobs that serve the busiest minute of ``arrivals`` (T, S) at full speed."""
    need = np.ceil(np.asarray(arrivals).max(axis=0) / params.job_step_capacity)
    return np.asarray(np.clip(need, params.min_jobs, params.max_jobs).astype(np.int64))


class PredictiveController:
    """The calibrated rule on forecast quantiles: the strong baseline (``predictive``).

    Target jobs = ceil(U / (capacity * rho) + queue / (capacity * drain_steps)), where

    * U is the forecast ``quantile_level`` quantile of arrivals, maximised over the
      steps a decision made now governs before the next one can correct it: the
      step a job asked for now starts serving (``startup_steps`` ahead) and the
      step after, so horizons 1 .. startup_steps + 2;
    * capacity is one job's events per step and rho the target utilization, the
      headroom for forecast error and rebalance pauses;
    * the backlog is drained within ``drain_fraction`` of the SLA wait budget;
    * the target is the maximum of this step's request and the ``hold_steps``
      before it, so a scale-down waits until the rule has asked for less for
      ``hold_steps + 1`` steps in a row; churn costs a rebalance pause and, later, a
      startup.

    Every argument may be an array with one value per lane, which is how the
    benchmark calibrates it on a trace's history.

    Args:
        target_utilization: rho in (0, 1].
        quantile_level: Which forecast quantile to provision for; must be one of
            the observation's quantile levels.
        drain_fraction: Share of the SLA wait budget within which to drain a backlog.
        hold_steps: Scale-down stabilisation window in steps (0 = none).
    """

    name = "predictive"

    def __init__(
        self,
        target_utilization: float | np.ndarray = 0.8,
        quantile_level: float | np.ndarray = 0.9,
        drain_fraction: float | np.ndarray = 0.5,
        hold_steps: int | np.ndarray = 5,
    ) -> None:
        self.rho = np.asarray(target_utilization, dtype=np.float64)
        self.level = np.asarray(quantile_level, dtype=np.float64)
        self.drain_fraction = np.asarray(drain_fraction, dtype=np.float64)
        self.hold_steps = np.asarray(hold_steps, dtype=np.int64)
        if np.any(self.rho <= 0) or np.any(self.rho > 1):
            raise ValueError("target_utilization must be in (0, 1]")
        if np.any(self.drain_fraction <= 0):
            raise ValueError("drain_fraction must be > 0")
        if np.any(self.hold_steps < 0):
            raise ValueError("hold_steps must be >= 0")
        self._params: ClusterParams | None = None
        self._recent = np.zeros((1, 1), dtype=np.int64)
        self._layouts: dict[tuple[tuple[float, ...], tuple[int, ...]], tuple[np.ndarray, ...]]
        self._layouts = {}
        self._window = np.ones((1, 1), dtype=bool)

    def reset(self, params: ClusterParams) -> None:
        self._params = params
        self._layouts = {}
        width = int(np.max(self.hold_steps)) + 1
        self._recent = np.zeros((params.n_services, width), dtype=np.int64)
        self._window = (
            np.arange(width)[None, :]
            <= np.broadcast_to(self.hold_steps, (params.n_services,))[:, None]
        )

    def _layout(
        self, quantiles: tuple[float, ...], horizons: tuple[int, ...]
    ) -> tuple[np.ndarray, ...]:
        """Per lane, the index of its quantile level, and the governed horizons (S, H).

        Checked once per forecast layout (levels and horizons), not every step.
        """
        key = (tuple(quantiles), tuple(horizons))
        cached = self._layouts.get(key)
        if cached is not None:
            return cached
        p = self._params
        assert p is not None
        n = p.n_services
        levels = np.asarray(quantiles)
        q_idx = np.searchsorted(levels, np.broadcast_to(self.level, (n,)) - 1e-9)
        if np.any(q_idx >= len(levels)) or not np.allclose(
            levels[np.minimum(q_idx, len(levels) - 1)], np.broadcast_to(self.level, (n,))
        ):
            raise ValueError(f"quantile_level must be one of the forecast levels {quantiles}")
        governed = np.asarray(horizons)[None, :] <= (p.startup_steps[:, None] + 2)
        if not governed.any(axis=1).all():
            raise ValueError("the forecast must include horizons 1 .. startup_steps + 2")
        self._layouts[key] = (q_idx, governed)
        return q_idx, governed

    def decide(self, obs: Observation) -> np.ndarray:
        p = self._params
        if p is None:
            raise RuntimeError("call reset() before decide()")
        if obs.forecast is None:
            raise ValueError("the predictive rule needs forecasts in the observation")
        n = p.n_services
        q_idx, governed = self._layout(obs.quantiles, obs.horizons)
        fc = np.asarray(obs.forecast, dtype=np.float64)[np.arange(n), :, q_idx]  # (S, H)
        upper = np.max(np.where(governed, fc, 0.0), axis=1)
        cap = p.job_step_capacity
        drain_steps = np.maximum(self.drain_fraction * p.wait_budget_s / STEP_S, 1e-3)
        raw = np.ceil(upper / (cap * self.rho) + obs.queue_length / (cap * drain_steps))
        # An unbounded forecast asks for everything; a NaN one for the floor.
        raw = np.where(np.isnan(raw), p.min_jobs, np.where(np.isinf(raw), p.max_jobs, raw))
        raw = np.clip(raw, p.min_jobs, p.max_jobs)
        self._recent = np.roll(self._recent, 1, axis=1)
        self._recent[:, 0] = raw.astype(np.int64)
        # Only steps already seen count; fresh columns are zero, which max ignores.
        return np.asarray(np.max(np.where(self._window, self._recent, 0), axis=1))
