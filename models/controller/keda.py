"""KEDA's Apache Kafka (consumer lag) scaler driving an HPA, vectorised over S lanes.

KEDA owns two things and hands the rest to a Kubernetes HPA it creates
(https://keda.sh/docs/latest/concepts/scaling-deployments/):

- activation and deactivation: every ``pollingInterval`` (default 30 s) it asks the
  scaler whether it is active (Kafka: lag > ``activationLagThreshold``, default 0).
  Active with 0 replicas, it scales the target to ``max(minReplicaCount, 1)`` itself;
  inactive for longer than ``cooldownPeriod`` (default 300 s) with
  ``minReplicaCount`` 0 (the default), it scales the target to 0; inactive below a
  positive ``minReplicaCount``, it restores that minimum
  (https://keda.sh/docs/latest/reference/scaledobject-spec/, and
  ``pkg/scaling/executor/scale_scaledobjects.go``: ``RequestScale``,
  ``scaleFromZeroOrIdle``, ``scaleToZeroOrIdle``);
- the metric: the lag is served to the HPA as an External metric with target type
  AverageValue = ``lagThreshold`` (https://keda.sh/docs/latest/scalers/apache-kafka/),
  so the HPA's ``GetExternalPerPodMetricReplicas`` proposes ``ceil(lag /
  lagThreshold)`` outside the tolerance. The HPA has ``minReplicas = max(1,
  minReplicaCount)`` and ``maxReplicas = maxReplicaCount`` and, unless
  ``advanced.horizontalPodAutoscalerConfig`` overrides it, the default behaviour; at
  0 replicas the HPA is disabled, which is why KEDA activates by itself.

Lag here is what Kafka reports: log-end offset minus committed offset, i.e. the
backlog waiting (the simulator's queue) plus the events consumed but not yet
committed. Consumers commit every ``auto.commit.interval.ms`` (Kafka's default
5 s), so on average half an interval of traffic is uncommitted:
``lag = queue + arrival rate * commit_interval_s / 2``. Without that term a consumer
group that keeps up would report a lag of 0 and KEDA would scale it to the floor,
which no real Kafka deployment shows. The simulator's measurements are per minute,
so every KEDA poll and HPA sync in a step sees the same
lag. Topic partitions are not modelled, so the Kafka scaler's cap of one consumer
per partition (``allowIdleConsumers: false``) is left to ``max_replica_count``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from models.controller.base import Observation
from models.controller.hpa import (
    DEFAULT_SCALE_DOWN_POLICIES,
    DEFAULT_SCALE_DOWN_STABILIZATION_S,
    DEFAULT_SCALE_UP_POLICIES,
    DEFAULT_SCALE_UP_STABILIZATION_S,
    DEFAULT_SYNC_PERIOD_S,
    DEFAULT_TOLERANCE,
    ExternalAverageValueMetric,
    HorizontalPodAutoscaler,
    ReplicaBounds,
    lane_counts,
    lane_values,
)
from simulator.config import STEP_S, ClusterParams

DEFAULT_POLLING_INTERVAL_S = 30
DEFAULT_COOLDOWN_PERIOD_S = 300


class KEDAController:
    """KEDA ScaledObject with one Kafka lag trigger.

    Observation used: ``jobs_target`` (replicas), ``queue_length`` and ``arrivals``
    (consumer lag, module docstring).
    Action: the replicas after the step's KEDA polls and HPA syncs, clamped to
    ``[params.min_jobs, params.max_jobs]`` as the environment would.

    Args:
        lag_threshold: ``lagThreshold``: target lag per replica (events), scalar or
            per lane (S,), > 0.
        polling_interval_s: ``pollingInterval``: seconds between KEDA's activity
            checks; default 30.
        cooldown_period_s: ``cooldownPeriod``: seconds since the last activity before
            scaling to ``min_replica_count`` 0; default 300.
        min_replica_count: ``minReplicaCount``; default 0 (scale to zero).
        max_replica_count: ``maxReplicaCount``; None uses ``params.max_jobs``.
        activation_lag_threshold: ``activationLagThreshold``: the trigger is active
            while lag exceeds it; default 0.
        commit_interval_s: The consumers' ``auto.commit.interval.ms`` in seconds
            (Kafka default 5); 0 reads the lag as the backlog alone.
        tolerance: HPA tolerance (``--horizontal-pod-autoscaler-tolerance``, 0.1).
        sync_period_s: HPA sync period (``--horizontal-pod-autoscaler-sync-period``,
            15 s).
        scale_up_policies: HPA ``behavior.scaleUp.policies`` as ``(type, value,
            period_s)``; default 4 pods or 100 % per 15 s.
        scale_up_select: HPA ``behavior.scaleUp.selectPolicy``; default "Max".
        scale_up_stabilization_s: HPA scale-up stabilization window; default 0.
        scale_down_policies: HPA ``behavior.scaleDown.policies``; default 100 % per
            15 s.
        scale_down_select: HPA ``behavior.scaleDown.selectPolicy``; default "Max".
        scale_down_stabilization_s: HPA scale-down stabilization window; default 300.
    """

    name: str = "keda"

    def __init__(
        self,
        lag_threshold: float | np.ndarray,
        polling_interval_s: int = DEFAULT_POLLING_INTERVAL_S,
        cooldown_period_s: int = DEFAULT_COOLDOWN_PERIOD_S,
        min_replica_count: int = 0,
        max_replica_count: int | None = None,
        activation_lag_threshold: float = 0.0,
        commit_interval_s: float = 5.0,
        tolerance: float = DEFAULT_TOLERANCE,
        sync_period_s: int = DEFAULT_SYNC_PERIOD_S,
        scale_up_policies: Sequence[Sequence[object]] = DEFAULT_SCALE_UP_POLICIES,
        scale_up_select: str = "Max",
        scale_up_stabilization_s: int = DEFAULT_SCALE_UP_STABILIZATION_S,
        scale_down_policies: Sequence[Sequence[object]] = DEFAULT_SCALE_DOWN_POLICIES,
        scale_down_select: str = "Max",
        scale_down_stabilization_s: int = DEFAULT_SCALE_DOWN_STABILIZATION_S,
    ) -> None:
        threshold = np.asarray(lag_threshold, dtype=np.float64)
        if not np.all(np.isfinite(threshold) & (threshold > 0)):
            raise ValueError("lag_threshold must be finite and > 0 (events of lag per job)")
        if int(polling_interval_s) != polling_interval_s or polling_interval_s <= 0:
            raise ValueError(
                f"polling_interval_s must be a positive integer, got {polling_interval_s!r}"
            )
        if cooldown_period_s < 0:
            raise ValueError(f"cooldown_period_s must be >= 0, got {cooldown_period_s!r}")
        if int(min_replica_count) != min_replica_count or min_replica_count < 0:
            raise ValueError(
                f"min_replica_count must be an integer >= 0, got {min_replica_count!r}"
            )
        if max_replica_count is not None and max_replica_count < max(min_replica_count, 1):
            raise ValueError("max_replica_count must be >= max(min_replica_count, 1)")
        if activation_lag_threshold < 0:
            raise ValueError("activation_lag_threshold must be >= 0")
        if not commit_interval_s >= 0:
            raise ValueError("commit_interval_s must be >= 0")
        self.commit_interval_s = float(commit_interval_s)
        self.lag_threshold = threshold
        self.polling_interval_s = int(polling_interval_s)
        self.cooldown_period_s = float(cooldown_period_s)
        self.min_replica_count = int(min_replica_count)
        self.max_replica_count = max_replica_count
        self.activation_lag_threshold = float(activation_lag_threshold)
        # The HPA KEDA creates: same reconcile code as the "hpa" controller.
        self._hpa = HorizontalPodAutoscaler(
            tolerance=tolerance,
            sync_period_s=sync_period_s,
            scale_up_policies=scale_up_policies,
            scale_up_select=scale_up_select,
            scale_up_stabilization_s=scale_up_stabilization_s,
            scale_down_policies=scale_down_policies,
            scale_down_select=scale_down_select,
            scale_down_stabilization_s=scale_down_stabilization_s,
        )
        self._params: ClusterParams | None = None
        self._threshold = np.empty(0)
        self._hpa_min = np.empty(0, dtype=np.int64)
        self._hpa_max = np.empty(0, dtype=np.int64)
        self._last_active = np.empty(0)
        self._hpa_bounds = ReplicaBounds(self._hpa_min, self._hpa_max)
        self._step = 0
        self._schedule_period_s = STEP_S
        self._schedules: dict[int, list[tuple[int, bool, bool]]] = {}

    def reset(self, params: ClusterParams) -> None:
        """Forget all state and prepare for the lanes of ``params``.

        Args:
            params: Cluster parameters; the result is clamped to min_jobs..max_jobs.
        """
        n = params.n_services
        self._params = params
        self._threshold = lane_values(self.lag_threshold, n, "lag_threshold")
        # KEDA's HPA cannot have minReplicas 0; scale to zero is KEDA's own job.
        self._hpa_min = np.full(n, max(1, self.min_replica_count), dtype=np.int64)
        top = params.max_jobs if self.max_replica_count is None else self.max_replica_count
        self._hpa_max = np.broadcast_to(np.asarray(top, dtype=np.int64), (n,)).copy()
        self._hpa_bounds = ReplicaBounds(self._hpa_min, self._hpa_max)
        # Status.LastActiveTime starts nil: KEDA then scales in without waiting.
        self._last_active = np.full(n, -np.inf)
        self._hpa.reset(n)
        self._step = 0
        # The offsets of polls and syncs within a step repeat with this period.
        self._schedule_period_s = math.lcm(STEP_S, self._hpa.sync_period_s, self.polling_interval_s)
        self._schedules = {}

    def decide(self, obs: Observation) -> np.ndarray:
        """Run the KEDA polls and HPA syncs that fall in this step.

        Args:
            obs: Observation of the step about to run.

        Returns:
            Replicas (S,) after the step, within ``[min_jobs, max_jobs]``.
        """
        if self._params is None:
            raise RuntimeError("call reset(params) before decide")
        params = self._params
        n = params.n_services
        current = lane_counts(obs.jobs_target, n, "jobs_target")
        lag = np.maximum(np.asarray(obs.queue_length, dtype=np.float64), 0.0)
        if lag.shape != (n,):
            raise ValueError(f"obs.queue_length must have shape ({n},), got {lag.shape}")
        uncommitted = (
            np.asarray(obs.arrivals, dtype=np.float64) / STEP_S * self.commit_interval_s / 2
        )
        lag = lag + np.maximum(uncommitted, 0.0)
        active = lag > self.activation_lag_threshold
        metric = ExternalAverageValueMetric(lag, self._threshold, self._hpa.tolerance)
        t0 = self._step * STEP_S
        # The metric divides by the replicas, which may be 0 (see its replicas()).
        with np.errstate(divide="ignore", invalid="ignore"):
            for offset, poll, sync in self._schedule(t0):
                t = t0 + offset
                if poll:
                    current = self._poll(t, current, active)
                if sync:
                    current = self._hpa.reconcile_within(
                        self._hpa_bounds, t, current, metric.replicas(current), None
                    )
        self._step += 1
        return np.minimum(np.maximum(current, params.min_jobs), params.max_jobs).astype(np.int64)

    def _schedule(self, t0: int) -> list[tuple[int, bool, bool]]:
        """``(offset, poll, sync)`` for every KEDA poll and HPA sync in the step at ``t0``."""
        # The pattern repeats, so each phase is worked out once.
        phase = t0 % self._schedule_period_s
        events = self._schedules.get(phase)
        if events is None:
            syncs = set(self._hpa.sync_offsets(t0 // STEP_S))
            first_poll = (-t0) % self.polling_interval_s
            polls = set(range(first_poll, STEP_S, self.polling_interval_s))
            events = [(o, o in polls, o in syncs) for o in sorted(syncs | polls)]
            self._schedules[phase] = events
        return events

    def _poll(self, t: float, current: np.ndarray, active: np.ndarray) -> np.ndarray:
        """KEDA's scale loop (``RequestScale``) at time ``t`` for all lanes."""
        floor = self.min_replica_count
        # Inactive: back up to minReplicaCount, or with minReplicaCount 0 down to 0
        # once the cooldown has elapsed strictly (LastActiveTime + cooldownPeriod
        # before now).
        idle = np.maximum(current, floor)
        if floor == 0:
            cooled = self._last_active + self.cooldown_period_s < t
            idle = np.where(cooled, 0, idle)
        # Active: from 0 to max(minReplicaCount, 1), else left to the HPA.
        busy = np.where(current == 0, max(floor, 1), current)
        np.copyto(self._last_active, t, where=active)
        return np.where(active, busy, idle)
