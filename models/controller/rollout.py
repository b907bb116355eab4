"""Run a controller in the loop with the simulator."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from models.controller.base import Controller, Observation
from simulator.cluster import ClusterSimulator, StepRecord
from simulator.config import ClusterParams, ServiceConfig
from simulator.metrics import SimLog
from simulator.run import DEFAULT_START, check_arrivals


@dataclass(frozen=True)
class ForecastArrays:
    """Quantile forecasts for every step of an episode.

    Attributes:
        values: Shape (T, S, H, Q): at step t, the forecast of arrivals in step
            ``t + h - 1`` for each horizon h and quantile level.
        horizons: Horizons in steps, ascending, starting at 1 or more.
        quantiles: Quantile levels, ascending.
        label: Which forecaster produced them (reported by benchmarks).
    """

    values: np.ndarray
    horizons: tuple[int, ...]
    quantiles: tuple[float, ...]
    label: str

    def __post_init__(self) -> None:
        if self.values.ndim != 4 or self.values.shape[2:] != (
            len(self.horizons),
            len(self.quantiles),
        ):
            raise ValueError(
                "forecast values must have shape (T, S, len(horizons), len(quantiles))"
            )


def initial_jobs(first_minute: float, service: ServiceConfig) -> int:
    """Jobs every controller starts with: enough for the first minute at 80% load."""
    need = math.ceil(first_minute / (service.job_step_capacity * 0.8))
    return int(min(max(need, service.min_jobs, 1), service.max_jobs))


def observe(
    step: int,
    minute_of_day: int,
    day_of_week: int,
    sim: ClusterSimulator,
    last: StepRecord | None,
    forecast: np.ndarray | None = None,
    horizons: tuple[int, ...] = (),
    quantiles: tuple[float, ...] = (),
) -> Observation:
    """What the controllers see at the start of ``step`` (the scaling env uses it too).

    Args:
        step: Index of the step about to run.
        minute_of_day: Its minute of day.
        day_of_week: Its day of week.
        sim: The simulator, after ``begin_step``.
        last: The record of the step that just ended (None at step 0).
        forecast: This step's forecasts, shape (S, H, Q), or None.
        horizons: Their horizons.
        quantiles: Their levels.
    """
    p, st = sim.params, sim.state
    n = p.n_services
    starting = sim.starting
    zeros = np.zeros(n)
    if last is None:
        arrivals = processed = dropped = util = zeros
    else:
        arrivals, processed, dropped = last.arrivals, last.processed, last.dropped
        with np.errstate(divide="ignore", invalid="ignore"):
            util = np.where(
                last.capacity > 0, processed / np.where(last.capacity > 0, last.capacity, 1), 0.0
            )
    rate = st.running * p.job_capacity_eps
    with np.errstate(divide="ignore", invalid="ignore"):
        drain = np.where(
            rate > 0, st.queue / np.where(rate > 0, rate, 1), np.where(st.queue > 0, np.inf, 0.0)
        )
    return Observation(
        step=step,
        minute_of_day=minute_of_day,
        day_of_week=day_of_week,
        jobs_running=st.running.copy(),
        jobs_starting=starting,
        jobs_target=st.running + starting,
        queue_length=st.queue.copy(),
        arrivals=arrivals,
        processed=processed,
        dropped=dropped,
        utilization=util,
        drain_time_s=drain,
        forecast=forecast,
        horizons=horizons,
        quantiles=quantiles,
    )


def _observation(
    step: int,
    start: pd.Timestamp,
    sim: ClusterSimulator,
    last: StepRecord | None,
    forecast: ForecastArrays | None,
) -> Observation:
    now = start + pd.Timedelta(minutes=step)
    if forecast is None:
        return observe(step, now.hour * 60 + now.minute, now.dayofweek, sim, last)
    return observe(
        step,
        now.hour * 60 + now.minute,
        now.dayofweek,
        sim,
        last,
        forecast.values[step],
        forecast.horizons,
        forecast.quantiles,
    )


def run_controller(
    params: ClusterParams,
    arrivals: np.ndarray,
    controller: Controller,
    initial_jobs: np.ndarray,
    *,
    forecast: ForecastArrays | None = None,
    start: pd.Timestamp = DEFAULT_START,
    seed: int = 0,
) -> SimLog:
    """Simulate an episode with ``controller`` deciding every step.

    Args:
        params: Per-service parameters.
        arrivals: Events per step, shape (T, S).
        controller: The policy; it is reset first.
        initial_jobs: Jobs serving at step 0.
        forecast: Forecasts handed to the controller in each observation.
        start: Timestamp of step 0 (time features).
        seed: Seed of the simulator's random streams.

    Returns:
        The episode log.
    """
    arr = check_arrivals(arrivals, params.n_services)
    if forecast is not None and forecast.values.shape[:2] != arr.shape:
        raise ValueError("forecast must cover every step and service of the episode")
    sim = ClusterSimulator(params, initial_jobs, seed=seed)
    controller.reset(params)
    records: list[StepRecord] = []
    last: StepRecord | None = None
    for t in range(arr.shape[0]):
        joined = sim.begin_step()
        target = controller.decide(_observation(t, start, sim, last, forecast))
        last = sim.apply_target(target, joined, arr[t])
        records.append(last)
    late_after = sim.finish()
    return SimLog.from_records(params, start, records, late_after, sim.initial_jobs)
