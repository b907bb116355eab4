"""The one interface every controller implements.

A controller sees the observation of one step for S services (or S copies of one
service under different settings, as calibration uses) and returns the target job
count for each. The simulator then bounds the target by the step limit and
min/max jobs, so every controller, the oracle included, lives under the same limits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Protocol, runtime_checkable

import numpy as np

from simulator.config import ClusterParams


@dataclass(frozen=True)
class Observation:
    """What a controller knows at the start of step ``step`` (all arrays shape (S,)).

    The per-step measurements describe the step that just ended (``step - 1``); at
    ``step == 0`` they describe the initial state (no arrivals yet).

    Attributes:
        step: Index of the step about to run, from 0.
        minute_of_day: Minute of day (0..1439) of the step about to run.
        day_of_week: Day of week (0 = Monday) of the step about to run.
        jobs_running: Jobs serving (ready) now; draining jobs excluded.
        jobs_starting: Jobs asked for that are not serving yet.
        jobs_target: The current target (running + starting).
        queue_length: Events waiting at the end of the last step.
        arrivals: Events that arrived in the last step.
        processed: Events served in the last step.
        dropped: Events dropped by the full queue in the last step.
        utilization: Busy fraction of the serving jobs' capacity in the last step,
            in [0, 1] (what a CPU metric of the jobs would show).
        drain_time_s: Seconds the serving jobs need to empty the queue at full
            speed (queue / serving capacity; inf with no serving job), the
            backlog signal an operator's dashboard shows.
        forecast: Quantile forecasts of arrivals per step, shape (S, H, Q), for the
            steps ``step + h - 1`` with h in ``horizons`` (h = 1 is the step about
            to run); None when no forecast provider is attached.
        horizons: Forecast horizons in steps (minutes).
        quantiles: Quantile levels of the last forecast axis.
    """

    step: int
    minute_of_day: int
    day_of_week: int
    jobs_running: np.ndarray
    jobs_starting: np.ndarray
    jobs_target: np.ndarray
    queue_length: np.ndarray
    arrivals: np.ndarray
    processed: np.ndarray
    dropped: np.ndarray
    utilization: np.ndarray
    drain_time_s: np.ndarray
    forecast: np.ndarray | None = None
    horizons: tuple[int, ...] = ()
    quantiles: tuple[float, ...] = ()

    def subset(self, lanes: np.ndarray) -> Observation:
        """The observation of the services at indices ``lanes``."""
        changes = {
            f.name: getattr(self, f.name)[lanes]
            for f in fields(self)
            if isinstance(getattr(self, f.name), np.ndarray)
        }
        return replace(self, **changes)


@runtime_checkable
class Controller(Protocol):
    """A scaling policy: observation in, target job count out."""

    name: str

    def reset(self, params: ClusterParams) -> None:
        """Forget all state and prepare for services described by ``params``."""
        ...

    def decide(self, obs: Observation) -> np.ndarray:
        """Return the target job count per service, shape (S,), integers."""
        ...


class LaneGroup:
    """Several controllers side by side, each deciding for its own lanes.

    The benchmark runs every controller of a scenario as lanes of one simulation,
    so the simulator's per-step cost is paid once, not once per controller.

    Args:
        members: (controller, lane indices) pairs that together cover every lane
            exactly once.
    """

    name = "lanes"

    def __init__(self, members: Sequence[tuple[Controller, Sequence[int]]]) -> None:
        self.members = [(c, np.asarray(lanes, dtype=np.int64)) for c, lanes in members]
        covered = np.sort(np.concatenate([lanes for _, lanes in self.members]))
        if not np.array_equal(covered, np.arange(len(covered))):
            raise ValueError("lane groups must cover lanes 0..S-1 exactly once")
        self._n = len(covered)

    def reset(self, params: ClusterParams) -> None:
        if params.n_services != self._n:
            raise ValueError(f"expected {self._n} lanes, got {params.n_services}")
        for controller, lanes in self.members:
            controller.reset(params.subset(lanes))

    def decide(self, obs: Observation) -> np.ndarray:
        out = np.empty(self._n, dtype=np.int64)
        for controller, lanes in self.members:
            out[lanes] = controller.decide(obs.subset(lanes))
        return out


class ScheduleController:
    """Replays a fixed plan of targets, one row per step (e.g. the oracle's plan).

    Args:
        targets: Shape (T, S) or (T,) for one lane.
        name: Label in reports.
    """

    def __init__(self, targets: np.ndarray, name: str = "schedule") -> None:
        arr = np.asarray(targets, dtype=np.int64)
        self.targets = arr[:, None] if arr.ndim == 1 else arr
        self.name = name

    def reset(self, params: ClusterParams) -> None:
        if self.targets.shape[1] != params.n_services:
            raise ValueError("the schedule has a different number of lanes")

    def decide(self, obs: Observation) -> np.ndarray:
        return np.asarray(self.targets[obs.step])
