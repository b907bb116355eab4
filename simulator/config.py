"""Per-service cluster parameters: one scalar record per service, and the
vectorised form the simulator, the controllers and the oracle work on.

The fields mirror the `service_profiles` contract of DESIGN.md section 4, plus the
dynamics knobs of section 5 (rebalance pause, queue bound, job failures).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

STEP_S = 60
"""Length of one simulator step in seconds (DESIGN.md section 5)."""


@dataclass(frozen=True)
class ServiceConfig:
    """How one service's cluster behaves and what it must deliver.

    Args:
        service_id: Stable name of the service.
        job_capacity_eps: Events per second one serving job processes.
        job_startup_s: Seconds from asking for a job to it serving; it serves from
            step ``t + ceil(job_startup_s / 60)``.
        rebalance_s: Seconds of consumption lost in a step in which the set of
            serving jobs changes (consumer-group rebalance).
        queue_max_events: Bound of the FIFO queue; arrivals beyond it are dropped.
        sla_latency_s: Latency (queue wait + processing) an event must meet.
        sla_target: Fraction of events that must meet ``sla_latency_s``.
        cost_per_job_hour: Price of one job for one hour (starting, serving or
            draining alike).
        min_jobs: Lowest job count any controller may ask for.
        max_jobs: Highest job count any controller may ask for.
        max_step: Largest change of the job target in one step (N; actions are
            -N..+N).
        job_failure_rate_per_hour: Probability per serving job-hour of a crash; a
            crashed job restarts (startup delay again) and stays billed.
        capacity_noise_cv: Coefficient of variation of per-step job capacity
            (0 = deterministic).
        criticality: Business tier, 1 (most critical) to 3.
        daily_budget: Money per day the service may spend on jobs.
        high_priority_share: Fraction of events that are high priority, used where
            a trace carries no priority mix.
        event_size_kb: Mean event size, used to derive network throughput.
    """

    service_id: str = "service"
    job_capacity_eps: float = 50.0
    job_startup_s: float = 90.0
    rebalance_s: float = 5.0
    queue_max_events: float = 1_000_000.0
    sla_latency_s: float = 60.0
    sla_target: float = 0.99
    cost_per_job_hour: float = 0.10
    min_jobs: int = 1
    max_jobs: int = 50
    max_step: int = 5
    job_failure_rate_per_hour: float = 0.0
    capacity_noise_cv: float = 0.0
    criticality: int = 2
    daily_budget: float = 100.0
    high_priority_share: float = 0.1
    event_size_kb: float = 2.0

    def __post_init__(self) -> None:
        problems: list[str] = []
        # NaN passes every comparison below, so name it first.
        nans = [
            f.name
            for f in fields(self)
            if isinstance(getattr(self, f.name), float) and math.isnan(getattr(self, f.name))
        ]
        if nans:
            problems.append(f"{', '.join(nans)} must not be NaN")
        if self.job_capacity_eps <= 0:
            problems.append("job_capacity_eps must be > 0")
        if self.job_startup_s < 0 or self.rebalance_s < 0:
            problems.append("job_startup_s and rebalance_s must be >= 0")
        if self.rebalance_s >= STEP_S:
            problems.append(f"rebalance_s must be < {STEP_S} (one step)")
        if self.queue_max_events <= 0:
            problems.append("queue_max_events must be > 0")
        # processing_time_s divides by the capacity, so only ask once that is valid.
        if self.job_capacity_eps > 0 and self.sla_latency_s <= self.processing_time_s:
            problems.append("sla_latency_s must exceed the processing time 1/job_capacity_eps")
        if not 0 < self.sla_target <= 1:
            problems.append("sla_target must be in (0, 1]")
        if self.cost_per_job_hour < 0:
            problems.append("cost_per_job_hour must be >= 0")
        if not 0 <= self.min_jobs <= self.max_jobs:
            problems.append("need 0 <= min_jobs <= max_jobs")
        if self.max_step < 1:
            problems.append("max_step must be >= 1")
        if not 0 <= self.job_failure_rate_per_hour < 60:
            problems.append("job_failure_rate_per_hour must be in [0, 60)")
        if self.capacity_noise_cv < 0:
            problems.append("capacity_noise_cv must be >= 0")
        if self.criticality not in (1, 2, 3):
            problems.append("criticality must be 1, 2 or 3")
        if not 0 <= self.high_priority_share <= 1:
            problems.append("high_priority_share must be in [0, 1]")
        if problems:
            raise ValueError(f"invalid ServiceConfig {self.service_id!r}: " + "; ".join(problems))

    @property
    def startup_steps(self) -> int:
        return math.ceil(self.job_startup_s / STEP_S)

    @property
    def processing_time_s(self) -> float:
        # One event at a time per job: each takes 1/capacity seconds of work.
        return 1.0 / self.job_capacity_eps

    @property
    def job_step_capacity(self) -> float:
        """Events one job serves in a full step without a rebalance pause."""
        return self.job_capacity_eps * STEP_S


@dataclass(frozen=True)
class ClusterParams:
    """The fields of several :class:`ServiceConfig` as arrays of shape (S,)."""

    service_ids: tuple[str, ...]
    job_capacity_eps: np.ndarray
    startup_steps: np.ndarray
    rebalance_s: np.ndarray
    queue_max_events: np.ndarray
    sla_latency_s: np.ndarray
    sla_target: np.ndarray
    cost_per_job_hour: np.ndarray
    min_jobs: np.ndarray
    max_jobs: np.ndarray
    max_step: np.ndarray
    job_failure_rate_per_hour: np.ndarray
    capacity_noise_cv: np.ndarray
    criticality: np.ndarray
    daily_budget: np.ndarray
    high_priority_share: np.ndarray
    event_size_kb: np.ndarray

    @classmethod
    def from_services(cls, services: Sequence[ServiceConfig]) -> ClusterParams:
        if not services:
            raise ValueError("at least one service is needed")
        ints = {"min_jobs", "max_jobs", "max_step", "criticality"}
        values: dict[str, object] = {"service_ids": tuple(s.service_id for s in services)}
        for f in fields(ServiceConfig):
            if f.name in ("service_id", "job_startup_s"):
                continue
            dtype = np.int64 if f.name in ints else np.float64
            values[f.name] = np.array([getattr(s, f.name) for s in services], dtype=dtype)
        values["startup_steps"] = np.array([s.startup_steps for s in services], dtype=np.int64)
        return cls(**values)  # type: ignore[arg-type]

    @property
    def n_services(self) -> int:
        return len(self.service_ids)

    def subset(self, lanes: np.ndarray) -> ClusterParams:
        """The parameters of the services at indices ``lanes``."""
        idx = np.asarray(lanes, dtype=np.int64)
        values: dict[str, object] = {"service_ids": tuple(self.service_ids[i] for i in idx)}
        for f in fields(self):
            if f.name != "service_ids":
                values[f.name] = getattr(self, f.name)[idx]
        return ClusterParams(**values)  # type: ignore[arg-type]

    @property
    def job_step_capacity(self) -> np.ndarray:
        return self.job_capacity_eps * STEP_S

    @property
    def processing_time_s(self) -> np.ndarray:
        return 1.0 / self.job_capacity_eps

    @property
    def wait_budget_s(self) -> np.ndarray:
        """Queue wait an event may have and still meet its SLA."""
        return self.sla_latency_s - self.processing_time_s

    def clip_target(self, target: np.ndarray, current: np.ndarray) -> np.ndarray:
        """Bound a requested job target by the step limit and min/max jobs."""
        lo = np.maximum(self.min_jobs, current - self.max_step)
        hi = np.maximum(lo, np.minimum(self.max_jobs, current + self.max_step))
        return np.minimum(np.maximum(np.asarray(target, dtype=np.int64), lo), hi)
