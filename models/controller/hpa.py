"""The Kubernetes Horizontal Pod Autoscaler (HPA), vectorised over S lanes.

This is the reference algorithm of the ``hpa`` controller (DESIGN.md section 6) and
the engine behind ``keda`` (KEDA drives an HPA). It follows the published algorithm
and its defaults:

- https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/,
  sections "Algorithm details" (``desiredReplicas = ceil(currentReplicas *
  currentMetricValue / desiredMetricValue)``, the 0.1 tolerance, unready pods counted
  at 0 % of the target on a scale-up), "Configurable scaling behavior" and "Default
  Behavior" (scale up by 4 pods or 100 % per 15 s, whichever is more, with no
  stabilization; scale down by up to 100 % per 15 s after a 300 s stabilization
  window that takes the highest recommendation);
- kube-controller-manager flags ``--horizontal-pod-autoscaler-sync-period=15s``,
  ``--horizontal-pod-autoscaler-tolerance=0.1`` and
  ``--horizontal-pod-autoscaler-downscale-stabilization=5m``;
- kubernetes/kubernetes ``pkg/controller/podautoscaler/replica_calculator.go``
  (``GetResourceReplicas``, ``GetExternalPerPodMetricReplicas``) and ``horizontal.go``
  (``reconcileAutoscaler``, ``recordInitialRecommendation``,
  ``stabilizeRecommendationWithBehaviors``, ``convertDesiredReplicasWithBehaviorRate``,
  ``calculateScaleUpLimitWithScalingRules``, ``calculateScaleDownLimitWithBehaviors``,
  ``getReplicasChangePerPeriod``, ``storeScaleEvent``).

Time model: the simulator steps every ``STEP_S`` = 60 s and calls the controller
once per step; the HPA syncs at every multiple of ``sync_period_s`` (t = step * 60 +
0, 15, 30, 45 s by default) with the same metric sample, because the simulator's
metrics are per minute, while the spec replicas evolve from sync to sync. The step's
answer is the spec replicas after its last sync.

Deviations, all forced by the simulator's abstractions: the utilization is a
fraction, not whole percents of millicores, so the usage ratio is not truncated to
an integer percent as ``GetResourceUtilizationRatio`` does; no pod is ever missing a
metric; "unready" means exists-but-not-serving (no CPU initialization period).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.controller.base import Observation
from simulator.config import STEP_S, ClusterParams

PolicySpec = tuple[str, int, int]
"""One scaling policy as ``(type, value, periodSeconds)``, type "Pods" or "Percent"."""

POLICY_TYPES = ("Pods", "Percent")
SELECT_POLICIES = ("Max", "Min", "Disabled")

# spec.behavior defaults ("Default Behavior" in the HPA docs; GenerateHPAScaleUpRules /
# GenerateHPAScaleDownRules in pkg/apis/autoscaling/v2/defaults.go).
DEFAULT_SCALE_UP_POLICIES: tuple[PolicySpec, ...] = (("Pods", 4, 15), ("Percent", 100, 15))
DEFAULT_SCALE_DOWN_POLICIES: tuple[PolicySpec, ...] = (("Percent", 100, 15),)
DEFAULT_SCALE_UP_STABILIZATION_S = 0
DEFAULT_SCALE_DOWN_STABILIZATION_S = 300  # --horizontal-pod-autoscaler-downscale-stabilization
DEFAULT_TOLERANCE = 0.1  # --horizontal-pod-autoscaler-tolerance
DEFAULT_SYNC_PERIOD_S = 15  # --horizontal-pod-autoscaler-sync-period

# Bounds of the API validation (pkg/apis/autoscaling/validation).
_MAX_PERIOD_S = 1800
_MAX_STABILIZATION_S = 3600

_INT_MAX = np.iinfo(np.int64).max
_INT_MIN = np.iinfo(np.int64).min


@dataclass(frozen=True)
class ScalingRules:
    """One direction of ``spec.behavior`` (``HPAScalingRules``).

    Args:
        policies: Policies as ``(type, value, period_s)``: "Pods" allows ``value``
            pods of change, "Percent" ``value`` % of the replicas at the start of the
            trailing ``period_s`` seconds.
        select: ``selectPolicy``: "Max" takes the policy allowing the biggest change,
            "Min" the smallest, "Disabled" turns scaling in this direction off.
        stabilization_s: ``stabilizationWindowSeconds``: recommendations of the
            trailing window that bound the new one.
    """

    policies: tuple[PolicySpec, ...]
    select: str
    stabilization_s: int

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.select not in SELECT_POLICIES:
            problems.append(f"select must be one of {SELECT_POLICIES}, got {self.select!r}")
        if not self.policies:
            problems.append("give at least one policy (the Kubernetes API requires one)")
        for policy in self.policies:
            if len(policy) != 3:
                problems.append(f"a policy is (type, value, period_s), got {policy!r}")
                continue
            kind, value, period = policy
            if kind not in POLICY_TYPES:
                problems.append(f"policy type must be one of {POLICY_TYPES}, got {kind!r}")
            if int(value) != value or value <= 0:
                problems.append(f"policy value must be a positive integer, got {value!r}")
            if int(period) != period or not 0 < period <= _MAX_PERIOD_S:
                problems.append(f"policy period_s must be an integer in (0, 1800], got {period!r}")
        if int(self.stabilization_s) != self.stabilization_s or not (
            0 <= self.stabilization_s <= _MAX_STABILIZATION_S
        ):
            problems.append("stabilization_s must be an integer in [0, 3600]")
        if problems:
            raise ValueError("invalid HPA scaling rules: " + "; ".join(problems))

    @classmethod
    def build(
        cls, policies: Sequence[Sequence[object]], select: str, stabilization_s: int
    ) -> ScalingRules:
        """Build from any sequence of ``(type, value, period_s)`` sequences.

        Args:
            policies: The policies; values and periods are converted to int.
            select: ``selectPolicy``.
            stabilization_s: ``stabilizationWindowSeconds``.

        Returns:
            The validated rules.
        """
        converted: list[PolicySpec] = []
        for p in policies:
            if len(p) != 3:
                raise ValueError(f"a policy is (type, value, period_s), got {p!r}")
            kind, value, period = p
            converted.append((str(kind), _as_int(value, "policy value"), _as_int(period, "period")))
        return cls(tuple(converted), select, _as_int(stabilization_s, "stabilization_s"))

    @property
    def longest_period_s(self) -> int:
        """``getLongestPolicyPeriod``: how far back scale events matter to these rules."""
        return max(p[2] for p in self.policies)


def _as_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if int(value) != value:
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return int(value)


class _TimedLog:
    """Per-lane timestamped integers laid out as the Go controller's slices.

    Go appends to a slice per HPA and overwrites a stale entry when one exists; here
    each lane is a row of fixed capacity whose filled prefix is that slice, so which
    entry survives matches the Go code exactly. Empty slots carry time -inf, which no
    window cutoff ever includes.
    """

    def __init__(self, n_lanes: int, capacity: int) -> None:
        self.times = np.full((n_lanes, capacity), -np.inf)
        self.values = np.zeros((n_lanes, capacity), dtype=np.int64)
        self.count = np.zeros(n_lanes, dtype=np.int64)

    def store(
        self,
        lanes: np.ndarray,
        t: float,
        values: np.ndarray,
        stale: np.ndarray,
        *,
        replace_last: bool,
    ) -> None:
        """Record ``values`` at time ``t`` for the lanes in mask ``lanes``.

        Args:
            lanes: Bool mask (S,) of the lanes that record.
            t: Timestamp, seconds.
            values: Values (S,) to record.
            stale: Bool mask (S, K) of the entries Go may overwrite.
            replace_last: Overwrite the last stale entry (recommendations) rather than
                the first (scale events).
        """
        capacity = self.times.shape[1]
        filled = np.arange(capacity)[None, :] < self.count[:, None]
        candidates = stale & filled
        has_stale = np.any(candidates, axis=1, keepdims=False).astype(bool)
        if replace_last:
            index = capacity - 1 - np.argmax(candidates[:, ::-1], axis=1)
        else:
            index = np.argmax(candidates, axis=1)
        index = np.where(has_stale, index, self.count)
        if np.any(lanes & (index >= capacity)):
            # Capacities are sized from the windows; reaching this is a bug, not bad input.
            raise RuntimeError("HPA history overflow: capacity too small for the windows")
        rows = np.flatnonzero(lanes)
        self.times[rows, index[rows]] = t
        self.values[rows, index[rows]] = values[rows]
        self.count[rows] += (~has_stale[rows]).astype(np.int64)

    def sum_after(self, cutoff: float) -> np.ndarray:
        """Sum per lane of the values with timestamp strictly after ``cutoff``."""
        return np.where(self.times > cutoff, self.values, 0).sum(axis=1)


def resource_utilization_replicas(
    current: np.ndarray,
    ready: np.ndarray,
    utilization: np.ndarray,
    target: np.ndarray,
    tolerance: float,
) -> tuple[np.ndarray, np.ndarray]:
    """``GetResourceReplicas``: replicas for a resource-utilization target.

    Pods that exist but are not ready (``current - ready`` when positive) get no
    metric; on a scale-up they are counted at 0 % usage and the ratio recomputed, and
    the HPA keeps the current count when that brings the ratio within tolerance or
    flips the direction ("Algorithm details" in the HPA docs).

    Args:
        current: Spec replicas (S,).
        ready: Ready pods (S,), the only ones with a metric.
        utilization: Mean utilization of the ready pods (S,), a fraction.
        target: Target utilization (S,), a fraction.
        tolerance: Ratios within ``1 +- tolerance`` leave the count unchanged.

    Returns:
        ``(replicas, available)``: the proposal (S,) and whether a metric exists
        (at least one ready pod); where it does not, the proposal is meaningless and
        the HPA must not scale.
    """
    current = np.asarray(current, dtype=np.int64)
    ready = np.asarray(ready, dtype=np.int64)
    utilization = np.asarray(utilization, dtype=np.float64)
    available = ready > 0
    unready = np.maximum(current - ready, 0)
    usage_ratio = utilization / target

    plain = np.where(
        np.abs(1.0 - usage_ratio) <= tolerance,
        current,
        np.ceil(usage_ratio * ready),
    )

    # Unready pods at 0 usage: the mean over ready + unready pods.
    pods = np.maximum(ready + unready, 1)
    new_ratio = (utilization * ready / pods) / target
    keep = (
        (np.abs(1.0 - new_ratio) <= tolerance)
        | ((usage_ratio < 1.0) & (new_ratio > 1.0))
        | ((usage_ratio > 1.0) & (new_ratio < 1.0))
    )
    new_replicas = np.ceil(new_ratio * pods)
    keep |= ((new_ratio < 1.0) & (new_replicas > current)) | (
        (new_ratio > 1.0) & (new_replicas < current)
    )
    with_unready = np.where(keep, current, new_replicas)

    scale_up_with_unready = (unready > 0) & (usage_ratio > 1.0)
    replicas = np.where(scale_up_with_unready, with_unready, plain)
    return np.where(available, replicas, current).astype(np.int64), available


def external_average_value_replicas(
    status_replicas: np.ndarray,
    usage: np.ndarray,
    target_per_pod: np.ndarray,
    tolerance: float,
) -> np.ndarray:
    """``GetExternalPerPodMetricReplicas``: replicas for an External AverageValue target.

    This is the path KEDA's metrics reach the HPA by: ``ceil(usage / target)`` when
    ``usage / (target * statusReplicas)`` is outside ``1 +- tolerance``.

    Args:
        status_replicas: Replicas the target reports (S,).
        usage: Total metric value (S,), e.g. consumer lag.
        target_per_pod: Target value per replica (S,), > 0.
        tolerance: Ratios within ``1 +- tolerance`` leave the count unchanged.

    Returns:
        The proposal (S,), integers.
    """
    status = np.asarray(status_replicas, dtype=np.int64)
    usage = np.asarray(usage, dtype=np.float64)
    # At 0 replicas Go divides by zero too: x/0 = +Inf scales, 0/0 = NaN does not.
    with np.errstate(divide="ignore", invalid="ignore"):
        usage_ratio = usage / (target_per_pod * status)
    change = np.abs(1.0 - usage_ratio) > tolerance
    return np.where(change, np.ceil(usage / target_per_pod), status).astype(np.int64)


class HorizontalPodAutoscaler:
    """The HPA's reconcile loop for S lanes: limits, stabilization and rate limits.

    It turns a metric proposal into the new spec replicas exactly as
    ``reconcileAutoscaler`` with ``normalizeDesiredReplicasWithBehaviors`` does, and
    keeps the recommendation history and scale events the Go controller keeps per
    HPA, as arrays of shape (S, K).

    Args:
        tolerance: ``--horizontal-pod-autoscaler-tolerance``.
        sync_period_s: ``--horizontal-pod-autoscaler-sync-period``, whole seconds.
        scale_up_policies: ``behavior.scaleUp.policies`` as ``(type, value, period_s)``.
        scale_up_select: ``behavior.scaleUp.selectPolicy``.
        scale_up_stabilization_s: ``behavior.scaleUp.stabilizationWindowSeconds``.
        scale_down_policies: ``behavior.scaleDown.policies``.
        scale_down_select: ``behavior.scaleDown.selectPolicy``.
        scale_down_stabilization_s: ``behavior.scaleDown.stabilizationWindowSeconds``.
    """

    def __init__(
        self,
        tolerance: float = DEFAULT_TOLERANCE,
        sync_period_s: int = DEFAULT_SYNC_PERIOD_S,
        scale_up_policies: Sequence[Sequence[object]] = DEFAULT_SCALE_UP_POLICIES,
        scale_up_select: str = "Max",
        scale_up_stabilization_s: int = DEFAULT_SCALE_UP_STABILIZATION_S,
        scale_down_policies: Sequence[Sequence[object]] = DEFAULT_SCALE_DOWN_POLICIES,
        scale_down_select: str = "Max",
        scale_down_stabilization_s: int = DEFAULT_SCALE_DOWN_STABILIZATION_S,
    ) -> None:
        if not 0 <= tolerance < 1:
            raise ValueError(f"tolerance must be in [0, 1), got {tolerance!r}")
        self.tolerance = float(tolerance)
        self.sync_period_s = _as_int(sync_period_s, "sync_period_s")
        if self.sync_period_s <= 0:
            raise ValueError(f"sync_period_s must be > 0, got {sync_period_s!r}")
        self.scale_up = ScalingRules.build(
            scale_up_policies, scale_up_select, scale_up_stabilization_s
        )
        self.scale_down = ScalingRules.build(
            scale_down_policies, scale_down_select, scale_down_stabilization_s
        )
        self._recommendations: _TimedLog | None = None
        self._up_events: _TimedLog | None = None
        self._down_events: _TimedLog | None = None

    def reset(self, n_lanes: int) -> None:
        """Forget all history and size it for ``n_lanes`` lanes.

        Args:
            n_lanes: Number of lanes S.
        """
        window = max(self.scale_up.stabilization_s, self.scale_down.stabilization_s)
        # One recommendation per sync inside the window, the initial one, the new one.
        self._recommendations = _TimedLog(n_lanes, window // self.sync_period_s + 3)
        # One event per sync inside the longest period of that direction, the new one.
        self._up_events = _TimedLog(
            n_lanes, self.scale_up.longest_period_s // self.sync_period_s + 2
        )
        self._down_events = _TimedLog(
            n_lanes, self.scale_down.longest_period_s // self.sync_period_s + 2
        )

    def sync_offsets(self, step: int) -> list[int]:
        """Seconds into simulator step ``step`` at which the HPA syncs.

        Args:
            step: Simulator step since reset.

        Returns:
            Offsets in [0, STEP_S), ascending.
        """
        first = (-step * STEP_S) % self.sync_period_s
        return list(range(first, STEP_S, self.sync_period_s))

    def reconcile(
        self,
        t: float,
        current: np.ndarray,
        proposal: np.ndarray,
        metric_available: np.ndarray,
        min_replicas: np.ndarray,
        max_replicas: np.ndarray,
    ) -> np.ndarray:
        """One HPA sync (``reconcileAutoscaler``) for all lanes.

        Args:
            t: Time of the sync, seconds since reset.
            current: Spec replicas (S,) before the sync.
            proposal: Replicas the metric asks for (S,) (``computeReplicasForMetrics``).
            metric_available: Bool (S,); where False the sync fails and nothing scales.
            min_replicas: ``spec.minReplicas`` (S,).
            max_replicas: ``spec.maxReplicas`` (S,).

        Returns:
            Spec replicas (S,) after the sync.
        """
        recs, up_events, down_events = self._logs()
        current = np.asarray(current, dtype=np.int64)
        proposal = np.asarray(proposal, dtype=np.int64)
        # recordInitialRecommendation: the first sync remembers the replicas it found,
        # so a fresh HPA does not scale below them within the downscale window.
        fresh = recs.count == 0
        if fresh.any():
            recs.store(fresh, t, current, np.zeros_like(recs.times, dtype=bool), replace_last=True)

        disabled = (current == 0) & (min_replicas != 0)  # "scaling is disabled" at 0
        above = ~disabled & (current > max_replicas)
        below = ~disabled & ~above & (current < min_replicas)
        normal = ~disabled & ~above & ~below & np.asarray(metric_available, dtype=bool)

        normalized = self._normalize(t, current, proposal, min_replicas, max_replicas, normal)
        desired = np.where(normal, normalized, current)
        desired = np.where(above, max_replicas, desired)
        desired = np.where(below, min_replicas, desired).astype(np.int64)

        # storeScaleEvent after every rescale, the min/max corrections included.
        up = desired > current
        down = desired < current
        if up.any():
            cutoff = t - self.scale_up.longest_period_s
            up_events.store(up, t, desired - current, up_events.times < cutoff, replace_last=False)
        if down.any():
            cutoff = t - self.scale_down.longest_period_s
            down_events.store(
                down, t, current - desired, down_events.times < cutoff, replace_last=False
            )
        return desired

    def _logs(self) -> tuple[_TimedLog, _TimedLog, _TimedLog]:
        if self._recommendations is None or self._up_events is None or self._down_events is None:
            raise RuntimeError("call reset(n_lanes) before reconcile")
        return self._recommendations, self._up_events, self._down_events

    def _normalize(
        self,
        t: float,
        current: np.ndarray,
        desired: np.ndarray,
        min_replicas: np.ndarray,
        max_replicas: np.ndarray,
        lanes: np.ndarray,
    ) -> np.ndarray:
        """``normalizeDesiredReplicasWithBehaviors``; records only for ``lanes``."""
        recs, _, _ = self._logs()
        up_cutoff = t - self.scale_up.stabilization_s
        down_cutoff = t - self.scale_down.stabilization_s
        up_rec = np.minimum(
            desired, np.where(recs.times > up_cutoff, recs.values, _INT_MAX).min(axis=1)
        )
        down_rec = np.maximum(
            desired, np.where(recs.times > down_cutoff, recs.values, _INT_MIN).max(axis=1)
        )
        stabilized = np.minimum(np.maximum(current, up_rec), down_rec)
        # The unstabilized recommendation is what is remembered.
        stale = (recs.times < up_cutoff) & (recs.times < down_cutoff)
        recs.store(lanes, t, desired, stale, replace_last=True)
        return self._rate_limited(t, current, stabilized, min_replicas, max_replicas)

    def _rate_limited(
        self,
        t: float,
        current: np.ndarray,
        desired: np.ndarray,
        min_replicas: np.ndarray,
        max_replicas: np.ndarray,
    ) -> np.ndarray:
        """``convertDesiredReplicasWithBehaviorRate``."""
        up_limit = np.maximum(self._limit(t, current, up=True), current)
        max_allowed = np.minimum(max_replicas, up_limit)
        down_limit = np.minimum(self._limit(t, current, up=False), current)
        min_allowed = np.maximum(min_replicas, down_limit)
        out = np.where(desired > current, np.minimum(desired, max_allowed), desired)
        return np.where(desired < current, np.maximum(desired, min_allowed), out)

    def _limit(self, t: float, current: np.ndarray, *, up: bool) -> np.ndarray:
        """``calculateScaleUpLimitWithScalingRules`` / ``calculateScaleDownLimitWithBehaviors``."""
        _, up_events, down_events = self._logs()
        rules = self.scale_up if up else self.scale_down
        if rules.select == "Disabled":
            return current
        proposals = []
        for kind, value, period in rules.policies:
            cutoff = t - period
            start = current - up_events.sum_after(cutoff) + down_events.sum_after(cutoff)
            if up:
                # Percent rounds up so that a small percentage can still add a pod.
                proposed = (
                    start + value
                    if kind == "Pods"
                    else np.ceil(start.astype(np.float64) * (1 + value / 100))
                )
            else:
                # int32(float64(...)) truncates: 72 * 0.9 = 64.8 -> 64 (docs example).
                proposed = (
                    start - value
                    if kind == "Pods"
                    else np.trunc(start.astype(np.float64) * (1 - value / 100))
                )
            proposals.append(np.asarray(proposed).astype(np.int64))
        stacked = np.stack(proposals)
        # "Max" is the biggest change: the highest count up, the lowest count down.
        biggest = (rules.select == "Max") == up
        return stacked.max(axis=0) if biggest else stacked.min(axis=0)


def lane_values(value: float | np.ndarray, n_lanes: int, what: str) -> np.ndarray:
    """Broadcast a scalar or per-lane setting to shape (S,), float, all > 0.

    Args:
        value: Scalar, or array of shape (S,).
        n_lanes: S.
        what: Name used in error messages.

    Returns:
        A float array of shape (S,).
    """
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(n_lanes, float(arr))
    if arr.shape != (n_lanes,):
        raise ValueError(f"{what} must be a scalar or have shape ({n_lanes},), got {arr.shape}")
    if not np.all(np.isfinite(arr) & (arr > 0)):
        raise ValueError(f"{what} must be finite and > 0")
    return arr


class HPAController:
    """Kubernetes HPA on the jobs' utilization (CPU-like resource metric).

    Observation used: ``jobs_target`` (spec replicas), ``jobs_running`` (ready pods,
    the only ones with a metric) and ``utilization`` (their mean busy fraction in the
    last step). Action: the spec replicas after the step's syncs, within
    ``[params.min_jobs, params.max_jobs]`` (the HPA's minReplicas and maxReplicas).
    The HPA does not scale when no pod is ready (no metric) and never from 0.

    Args:
        target_utilization: ``averageUtilization`` target as a fraction, scalar or
            per lane (S,); 0.8 is the 80 % default of autoscaling/v1 and
            ``kubectl autoscale``.
        tolerance: Ratios within ``1 +- tolerance`` do not scale
            (``--horizontal-pod-autoscaler-tolerance``, default 0.1).
        sync_period_s: Seconds between HPA syncs
            (``--horizontal-pod-autoscaler-sync-period``, default 15 s).
        scale_up_policies: ``behavior.scaleUp.policies`` as ``(type, value,
            period_s)``; default 4 pods or 100 % per 15 s.
        scale_up_select: ``behavior.scaleUp.selectPolicy``; default "Max".
        scale_up_stabilization_s: ``behavior.scaleUp.stabilizationWindowSeconds``;
            default 0.
        scale_down_policies: ``behavior.scaleDown.policies``; default 100 % per 15 s.
        scale_down_select: ``behavior.scaleDown.selectPolicy``; default "Max".
        scale_down_stabilization_s: ``behavior.scaleDown.stabilizationWindowSeconds``;
            default 300 s (``--horizontal-pod-autoscaler-downscale-stabilization``).
    """

    name: str = "hpa"

    def __init__(
        self,
        target_utilization: float | np.ndarray = 0.8,
        tolerance: float = DEFAULT_TOLERANCE,
        sync_period_s: int = DEFAULT_SYNC_PERIOD_S,
        scale_up_policies: Sequence[Sequence[object]] = DEFAULT_SCALE_UP_POLICIES,
        scale_up_select: str = "Max",
        scale_up_stabilization_s: int = DEFAULT_SCALE_UP_STABILIZATION_S,
        scale_down_policies: Sequence[Sequence[object]] = DEFAULT_SCALE_DOWN_POLICIES,
        scale_down_select: str = "Max",
        scale_down_stabilization_s: int = DEFAULT_SCALE_DOWN_STABILIZATION_S,
    ) -> None:
        target = np.asarray(target_utilization, dtype=np.float64)
        if not np.all(np.isfinite(target) & (target > 0)):
            raise ValueError("target_utilization must be finite and > 0 (a fraction, 0.8 = 80 %)")
        self.target_utilization = target
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
        self._target = np.empty(0)
        self._step = 0

    def reset(self, params: ClusterParams) -> None:
        """Forget all state and prepare for the lanes of ``params``.

        Args:
            params: Cluster parameters; min_jobs and max_jobs are the HPA's bounds.
        """
        self._params = params
        self._target = lane_values(self.target_utilization, params.n_services, "target_utilization")
        self._hpa.reset(params.n_services)
        self._step = 0

    def decide(self, obs: Observation) -> np.ndarray:
        """Run the HPA syncs that fall in this step.

        Args:
            obs: Observation of the step about to run.

        Returns:
            Spec replicas (S,) after the step's last sync.
        """
        if self._params is None:
            raise RuntimeError("call reset(params) before decide")
        params = self._params
        current = lane_counts(obs.jobs_target, params.n_services, "jobs_target")
        ready = lane_counts(obs.jobs_running, params.n_services, "jobs_running")
        utilization = np.clip(np.asarray(obs.utilization, dtype=np.float64), 0.0, None)
        t0 = self._step * STEP_S
        for offset in self._hpa.sync_offsets(self._step):
            proposal, available = resource_utilization_replicas(
                current, ready, utilization, self._target, self._hpa.tolerance
            )
            current = self._hpa.reconcile(
                t0 + offset, current, proposal, available, params.min_jobs, params.max_jobs
            )
        self._step += 1
        return current


def lane_counts(values: np.ndarray, n_lanes: int, what: str) -> np.ndarray:
    """Check an observed per-lane count and return it as int64 of shape (S,).

    Args:
        values: Observed counts (S,), integral (floats are rounded).
        n_lanes: S.
        what: Observation field name used in error messages.

    Returns:
        The counts as int64.
    """
    arr = np.rint(np.asarray(values, dtype=np.float64)).astype(np.int64)
    if arr.shape != (n_lanes,):
        raise ValueError(f"obs.{what} must have shape ({n_lanes},), got {arr.shape}")
    return arr
