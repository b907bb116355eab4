"""Roll a fixed job schedule through the simulator (no controller in the loop).

Used by the oracle (to replay its plan), the static baselines, tests and the speed
benchmark. Controllers in the loop go through ``models.controller.rollout``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from simulator.cluster import ClusterSimulator, StepRecord
from simulator.config import ClusterParams
from simulator.metrics import SimLog

DEFAULT_START = pd.Timestamp("2026-01-05 00:00")


def _as_matrix(values: np.ndarray, n_steps: int, n_services: int, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim == 1 and arr.shape[0] == n_services:
        arr = np.broadcast_to(arr, (n_steps, n_services))
    if arr.shape != (n_steps, n_services):
        raise ValueError(f"{name} must have shape ({n_steps}, {n_services}) or ({n_services},)")
    return arr


def check_arrivals(arrivals: np.ndarray, n_services: int) -> np.ndarray:
    """Validate an arrivals matrix (T, S): finite, non-negative, right width."""
    arr = np.asarray(arrivals, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != n_services or arr.shape[0] == 0:
        raise ValueError(f"arrivals must have shape (T>0, {n_services}), got {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError("arrivals must be finite and >= 0")
    return arr


def simulate_schedule(
    params: ClusterParams,
    arrivals: np.ndarray,
    targets: np.ndarray,
    initial_jobs: np.ndarray,
    *,
    start: pd.Timestamp = DEFAULT_START,
    seed: int = 0,
) -> SimLog:
    """Simulate a job target per step (shape (T, S), or (S,) for a fixed count).

    Args:
        params: Per-service parameters.
        arrivals: Events per step, shape (T, S).
        targets: Requested job targets; bounded by the step limit and min/max jobs.
        initial_jobs: Jobs serving at step 0.
        start: Timestamp of step 0.
        seed: Seed of the simulator's random streams.

    Returns:
        The full episode log.
    """
    sim = ClusterSimulator(params, initial_jobs, seed=seed)
    return run_schedule(sim, arrivals, targets, start=start)


def run_schedule(
    sim: ClusterSimulator,
    arrivals: np.ndarray,
    targets: np.ndarray,
    *,
    start: pd.Timestamp = DEFAULT_START,
) -> SimLog:
    """Run an existing simulator through a job target per step; it keeps its final state.

    :func:`simulate_schedule` on a fresh simulator; a caller that keeps ``sim`` can
    continue the same cluster later (the live simulated cluster does).

    Args:
        sim: The simulator, at the state the schedule starts from.
        arrivals: Events per step, shape (T, S).
        targets: Requested job targets, shape (T, S) or (S,).
        start: Timestamp of the first step.

    Returns:
        The log of these steps (queue waits count the backlog ``sim`` started with).
    """
    params = sim.params
    arr = check_arrivals(arrivals, params.n_services)
    n_steps = arr.shape[0]
    tgt = _as_matrix(targets, n_steps, params.n_services, "targets")
    initial_queue = sim.state.queue.copy()
    records: list[StepRecord] = [sim.step(tgt[t], arr[t]) for t in range(n_steps)]
    late_after = sim.finish()
    return SimLog.from_records(
        params, start, records, late_after, sim.initial_jobs, initial_queue=initial_queue
    )


@dataclass(frozen=True)
class Totals:
    """Aggregates of a rollout that keeps no per-step log (shape (S,))."""

    arrivals: np.ndarray
    missed: np.ndarray
    cost: np.ndarray
    steps: int


def simulate_totals(
    params: ClusterParams,
    arrivals: np.ndarray,
    targets: np.ndarray,
    initial_jobs: np.ndarray,
    *,
    seed: int = 0,
) -> Totals:
    """Like :func:`simulate_schedule` but keeping only totals (for large batches)."""
    arr = check_arrivals(arrivals, params.n_services)
    n_steps = arr.shape[0]
    tgt = _as_matrix(targets, n_steps, params.n_services, "targets")
    sim = ClusterSimulator(params, initial_jobs, seed=seed)
    missed = np.zeros(params.n_services)
    cost = np.zeros(params.n_services)
    for t in range(n_steps):
        rec = sim.step(tgt[t], arr[t])
        missed += rec.late + rec.dropped
        cost += rec.cost
    missed += sim.finish()
    return Totals(arrivals=arr.sum(axis=0), missed=missed, cost=cost, steps=n_steps)
