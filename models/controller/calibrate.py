"""Tune a controller's settings on a trace's history, the same way for every rule.

Each candidate setting runs as one lane of a single vectorised simulation over the
calibration range (the lanes are copies of the same service). The pick is the
cheapest setting that meets the SLA target there; when none does, the one with the
best SLA compliance (then the cheaper). Baselines get the same treatment as our own
rule, so no baseline is weakened by a poor hand-picked setting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from models.controller.base import Controller, LaneGroup
from models.controller.rollout import ForecastArrays, run_controller
from simulator.config import ClusterParams, ServiceConfig


@dataclass(frozen=True)
class Calibration:
    """The chosen setting and what every candidate scored on the calibration range."""

    chosen: dict[str, Any]
    candidates: list[dict[str, Any]]
    costs: np.ndarray
    sla: np.ndarray


def lanes(service: ServiceConfig, n: int) -> ClusterParams:
    """``n`` copies of one service as lanes of a vectorised run."""
    return ClusterParams.from_services(
        [replace(service, service_id=f"{service.service_id}#{i}") for i in range(n)]
    )


def pick(costs: np.ndarray, sla: np.ndarray, target: float) -> int:
    """Cheapest lane meeting ``target``, else the best compliance (then cheapest)."""
    meets = sla >= target - 1e-12
    if meets.any():
        idx = np.flatnonzero(meets)
        return int(idx[np.argmin(costs[idx])])
    return int(np.lexsort((costs, -np.round(sla, 9)))[0])


def grid(**axes: Sequence[Any]) -> list[dict[str, Any]]:
    """Every combination of the given axes, as keyword dictionaries."""
    out: list[dict[str, Any]] = [{}]
    for key, values in axes.items():
        out = [{**row, key: v} for row in out for v in values]
    return out


@dataclass(frozen=True)
class Family:
    """A controller to calibrate and the settings to try.

    Attributes:
        make: Builds the controller from per-lane setting arrays (one entry per key of
            the candidates that does not start with ``_``).
        candidates: Settings to try; ``_forecast`` picks one of the forecast arrays
            handed to :func:`calibrate` (other ``_`` keys are ignored).
    """

    make: Callable[[Mapping[str, np.ndarray]], Controller]
    candidates: list[dict[str, Any]]


def calibrate(
    families: Mapping[str, Family],
    service: ServiceConfig,
    arrivals: np.ndarray,
    initial_jobs: int,
    *,
    forecasts: Sequence[ForecastArrays] | None = None,
    seed: int = 0,
) -> dict[str, Calibration]:
    """Run every candidate of every family as a lane of one simulation; pick one each.

    Args:
        families: Controllers to calibrate, by name.
        service: The service the lanes copy.
        arrivals: Calibration-range arrivals, shape (T,).
        initial_jobs: Jobs serving at the start.
        forecasts: Forecast arrays (T, 1, H, Q) sharing horizons and quantiles; lanes
            whose candidate has no ``_forecast`` get the first.
        seed: Simulator seed.

    Returns:
        Per family, the chosen candidate and every candidate's cost and SLA compliance.
    """
    members: list[tuple[Controller, list[int]]] = []
    spans: dict[str, tuple[int, int]] = {}
    which: list[int] = []
    for name, fam in families.items():
        if not fam.candidates:
            raise ValueError(f"no candidate settings to calibrate for {name!r}")
        keys = [k for k in fam.candidates[0] if not k.startswith("_")]
        settings = {k: np.array([c[k] for c in fam.candidates]) for k in keys}
        first = len(which)
        which += [int(c.get("_forecast", 0)) for c in fam.candidates]
        spans[name] = (first, len(which))
        members.append((fam.make(settings), list(range(first, len(which)))))
    n = len(which)
    fc = None
    if forecasts is not None:
        fc = ForecastArrays(
            values=np.concatenate([forecasts[w].values for w in which], axis=1),
            horizons=forecasts[0].horizons,
            quantiles=forecasts[0].quantiles,
            label="calibration",
        )
    arr = np.repeat(np.asarray(arrivals, dtype=np.float64)[:, None], n, axis=1)
    log = run_controller(
        lanes(service, n),
        arr,
        LaneGroup(members),
        np.full(n, initial_jobs),
        forecast=fc,
        seed=seed,
    )
    costs, sla = log.total_cost(), log.sla_compliance()
    out = {}
    for name, (lo, hi) in spans.items():
        best = pick(costs[lo:hi], sla[lo:hi], service.sla_target)
        cands = families[name].candidates
        out[name] = Calibration(
            chosen=cands[best], candidates=cands, costs=costs[lo:hi], sla=sla[lo:hi]
        )
    return out
