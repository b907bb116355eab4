"""Episode logs, the performance metrics of DESIGN.md section 11, and the
`event_metrics` / `system_metrics` rows of section 4.

How the system columns are derived (the simulator has no real machines):

* ``utilization`` = processed / capacity of the serving jobs in the step (1 when the
  jobs were busy the whole step; 0 with no serving job).
* ``cpu_pct`` = 5 + 90 * utilization: a consumer idles at about 5 % CPU and is
  CPU-bound when busy.
* ``mem_pct`` = 30 + 60 * queue / queue_max_events: a base footprint plus buffers
  that grow with the backlog the consumers hold.
* ``net_mbps`` = (accepted + processed) events/s * event_size_kb * 8 / 1000: events
  are read once from the broker and written once downstream.
* ``proc_duration_mean_ms`` = 1000 / job_capacity_eps (one event at a time per job);
  ``proc_duration_p95_ms`` = 1.5 times the mean, the tail of a service whose
  durations vary by about +-50 %.
* ``events_high_priority`` = round(events_in * high_priority_share) unless the source
  gives its own mix; ``error_rate`` = dropped / events_in.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from simulator.cluster import StepRecord
from simulator.config import STEP_S, ClusterParams

LATENCY_SAMPLES_PER_STEP = 16
"""Events sampled per step (evenly through its arrivals) for latency percentiles."""


@dataclass(frozen=True)
class SimLog:
    """Every :class:`StepRecord` field stacked to shape (T, S), plus the late events
    counted after the horizon (shape (S,)).

    ``initial_queue`` (shape (S,)) is the backlog queued before step 0 (zeros unless
    given; None also means empty). A log of a simulator that continues from an earlier
    state (the live cluster, one chunk of minutes at a time) carries it, so the queue
    waits of its first steps count the events queued ahead of them.
    """

    params: ClusterParams
    start: pd.Timestamp
    target: np.ndarray
    serving: np.ndarray
    starting: np.ndarray
    joined: np.ndarray
    drained: np.ndarray
    failed: np.ndarray
    paused: np.ndarray
    capacity: np.ndarray
    arrivals: np.ndarray
    accepted: np.ndarray
    processed: np.ndarray
    dropped: np.ndarray
    queue: np.ndarray
    late: np.ndarray
    billed: np.ndarray
    cost: np.ndarray
    late_after_horizon: np.ndarray
    initial_jobs: np.ndarray
    initial_queue: np.ndarray | None = None

    @classmethod
    def from_records(
        cls,
        params: ClusterParams,
        start: pd.Timestamp,
        records: list[StepRecord],
        late_after_horizon: np.ndarray,
        initial_jobs: np.ndarray,
        initial_queue: np.ndarray | None = None,
    ) -> SimLog:
        if not records:
            raise ValueError("an episode needs at least one step")
        stacked = {
            f.name: np.stack([getattr(r, f.name) for r in records]) for f in fields(StepRecord)
        }
        return cls(
            params=params,
            start=start,
            late_after_horizon=late_after_horizon,
            initial_jobs=initial_jobs,
            initial_queue=np.zeros(params.n_services) if initial_queue is None else initial_queue,
            **stacked,
        )

    @property
    def n_steps(self) -> int:
        return int(self.arrivals.shape[0])

    @property
    def timestamps(self) -> pd.DatetimeIndex:
        return pd.date_range(self.start, periods=self.n_steps, freq="min")

    @property
    def pause_s(self) -> np.ndarray:
        return np.where(self.paused, self.params.rebalance_s, 0.0)

    @property
    def rate(self) -> np.ndarray:
        """Service rate of the serving jobs in each step, events/s."""
        return self.capacity / (STEP_S - self.pause_s)

    def missed(self) -> np.ndarray:
        """Events that missed their SLA per service: late or dropped."""
        return np.asarray(
            self.late.sum(axis=0) + self.late_after_horizon + self.dropped.sum(axis=0)
        )

    def sla_compliance(self) -> np.ndarray:
        total = self.arrivals.sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(total > 0, 1.0 - self.missed() / np.where(total > 0, total, 1.0), 1.0)

    def total_cost(self) -> np.ndarray:
        return np.asarray(self.cost.sum(axis=0))

    def actions(self) -> np.ndarray:
        """Steps in which the job target changed."""
        prev = np.vstack([self.initial_jobs[None, :], self.target[:-1]])
        return np.asarray((self.target != prev).sum(axis=0))

    def waits(self, service: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Queue waits of events sampled evenly through each step's arrivals.

        Returns:
            (step index of arrival, wait in seconds, weight in events) per sample;
            events still queued when the serving jobs stop get an infinite wait.
        """
        m = LATENCY_SAMPLES_PER_STEP
        acc = self.accepted[:, service]
        proc = self.processed[:, service]
        n = acc.shape[0]
        # Events queued before step 0 leave first (FIFO): they sit ahead of every
        # arrival on the cumulative arrival curve.
        backlog = 0.0 if self.initial_queue is None else float(self.initial_queue[service])
        a_cum = np.concatenate([[0.0], np.cumsum(acc)]) + backlog
        d_cum = np.concatenate([[0.0], np.cumsum(proc)])
        q0 = np.concatenate([[backlog], self.queue[:-1, service]])
        rate = self.rate[:, service]
        pause = self.pause_s[:, service]

        frac = (np.arange(m) + 0.5) / m
        step = np.repeat(np.arange(n), m)
        x = a_cum[step] + acc[step] * np.tile(frac, n)
        weight = acc[step] / m
        arrive_s = step * STEP_S + np.tile(frac, n) * STEP_S

        dep_step = np.searchsorted(d_cum, x, side="left") - 1
        inside = dep_step < n
        ds = np.clip(dep_step, 0, n - 1)
        y = x - d_cum[ds]
        lam = acc[ds] / STEP_S
        with np.errstate(divide="ignore", invalid="ignore"):
            by_rate = pause[ds] + y / rate[ds]
            by_arrival = np.where(lam > 0, (y - q0[ds]) / np.where(lam > 0, lam, 1.0), -np.inf)
            leave_s = ds * STEP_S + np.maximum(by_rate, by_arrival)
            # After the horizon the last serving jobs keep draining the queue.
            tail_rate = self.serving[-1, service] * self.params.job_capacity_eps[service]
            after = n * STEP_S + np.where(tail_rate > 0, (x - d_cum[-1]) / tail_rate, np.inf)
        leave_s = np.where(inside, leave_s, after)
        wait = np.maximum(leave_s - arrive_s, 0.0)
        keep = weight > 0
        return step[keep], wait[keep], weight[keep]

    def latency_percentile(self, service: int, q: float) -> float:
        """Latency (queue wait + processing) percentile over accepted events, seconds."""
        _, wait, weight = self.waits(service)
        if weight.sum() == 0:
            return 0.0
        return float(weighted_quantile(wait, weight, q) + self.params.processing_time_s[service])


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """Quantile of weighted samples, each standing at the middle of its weight.

    Samples taken at the midpoints of equal slices of a step's arrivals make this
    exact for waits that change linearly through the step.
    """
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    cum = np.cumsum(w)
    centre = cum - w / 2.0
    if not np.isfinite(v).all():
        # An infinite wait (never served) must not be interpolated towards.
        k = int(np.searchsorted(cum, q * cum[-1], side="left"))
        if not np.isfinite(v[min(k, len(v) - 1)]):
            return float("inf")
        finite = np.isfinite(v)
        return float(np.interp(q * cum[-1], centre[finite], v[finite]))
    return float(np.interp(q * cum[-1], centre, v))


@dataclass(frozen=True)
class Summary:
    """Benchmark metrics of one service over one episode."""

    cost: float
    sla_compliance: float
    p95_latency_s: float
    dropped_events: float
    actions: int
    missed_events: float
    job_steps: float


def summarize(log: SimLog) -> list[Summary]:
    """One :class:`Summary` per service of the log."""
    sla, cost, acts, missed = log.sla_compliance(), log.total_cost(), log.actions(), log.missed()
    dropped = log.dropped.sum(axis=0)
    job_steps = log.billed.sum(axis=0)
    return [
        Summary(
            cost=float(cost[i]),
            sla_compliance=float(sla[i]),
            p95_latency_s=log.latency_percentile(i, 0.95),
            dropped_events=float(dropped[i]),
            actions=int(acts[i]),
            missed_events=float(missed[i]),
            job_steps=float(job_steps[i]),
        )
        for i in range(log.params.n_services)
    ]


def event_metrics(log: SimLog, high_priority: np.ndarray | None = None) -> pd.DataFrame:
    """`event_metrics` rows (DESIGN.md section 4), one per service per minute.

    Args:
        log: The simulated episode.
        high_priority: High-priority events per step, shape (T, S), when the source
            has a priority mix; otherwise derived from ``high_priority_share``.
    """
    p, n = log.params, log.n_steps
    frames = []
    for i, sid in enumerate(p.service_ids):
        # Samples within a step carry equal weights, so plain percentiles do.
        step, wait, _ = log.waits(i)
        p50 = np.zeros(n)
        p95 = np.zeros(n)
        if len(step):
            bounds = np.searchsorted(step, np.arange(n + 1))
            for t in np.flatnonzero(np.diff(bounds)):
                w = wait[bounds[t] : bounds[t + 1]]
                # Events no job will serve (every job of the service crashed or none
                # left) wait forever; interpolating between infinite waits gives NaN,
                # which the columns below report as unknown, so the warning says nothing.
                with np.errstate(invalid="ignore"):
                    p50[t], p95[t] = np.percentile(w, [50, 95])
        events_in = log.arrivals[:, i]
        high = (
            high_priority[:, i]
            if high_priority is not None
            else np.round(events_in * p.high_priority_share[i])
        )
        mean_ms = 1000.0 / p.job_capacity_eps[i]
        with np.errstate(divide="ignore", invalid="ignore"):
            error_rate = np.where(
                events_in > 0, log.dropped[:, i] / np.where(events_in > 0, events_in, 1), 0.0
            )
        frames.append(
            pd.DataFrame(
                {
                    "service_id": sid,
                    "ts": log.timestamps,
                    "events_in": events_in,
                    "events_processed": log.processed[:, i],
                    "queue_length": log.queue[:, i],
                    "queue_wait_p50_s": np.where(np.isfinite(p50), p50, np.nan),
                    "queue_wait_p95_s": np.where(np.isfinite(p95), p95, np.nan),
                    "proc_duration_mean_ms": mean_ms,
                    "proc_duration_p95_ms": 1.5 * mean_ms,
                    "events_dropped": log.dropped[:, i],
                    "events_high_priority": high,
                    "events_normal_priority": events_in - high,
                    "error_rate": error_rate,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def system_metrics(log: SimLog) -> pd.DataFrame:
    """`system_metrics` rows (DESIGN.md section 4), one per service per minute."""
    p = log.params
    with np.errstate(divide="ignore", invalid="ignore"):
        util = np.where(
            log.capacity > 0, log.processed / np.where(log.capacity > 0, log.capacity, 1), 0.0
        )
    frames = []
    for i, sid in enumerate(p.service_ids):
        eps_through = log.processed[:, i] / STEP_S
        frames.append(
            pd.DataFrame(
                {
                    "service_id": sid,
                    "ts": log.timestamps,
                    "jobs_running": log.serving[:, i],
                    "jobs_starting": log.starting[:, i],
                    "utilization": util[:, i],
                    "cpu_pct": 5.0 + 90.0 * util[:, i],
                    "mem_pct": 30.0 + 60.0 * log.queue[:, i] / p.queue_max_events[i],
                    "net_mbps": (log.accepted[:, i] / STEP_S + eps_through)
                    * p.event_size_kb[i]
                    * 8.0
                    / 1000.0,
                    "throughput_eps": eps_through,
                    "job_failures": log.failed[:, i],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
