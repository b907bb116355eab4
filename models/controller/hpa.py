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

import functools
from bisect import bisect_right
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
# Spare columns of the per-sync histories: compact them once every this many syncs.
_SLACK = 64
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
    entries survive is tracked exactly. Empty slots carry time -inf, which no window
    cutoff ever includes.
    """

    def __init__(self, n_lanes: int, capacity: int) -> None:
        self.times = np.full((n_lanes, capacity), -np.inf)
        self.values = np.zeros((n_lanes, capacity), dtype=np.int64)
        # Newest timestamp in any lane: no window that starts at or after it has entries.
        self.latest = -np.inf

    def store(self, lanes: np.ndarray, t: float, values: np.ndarray, stale_before: float) -> None:
        """Record ``values`` at time ``t`` for the lanes in mask ``lanes``.

        The first entry older than ``stale_before`` is overwritten, else one is
        appended. (Go's ``storeScaleEvent`` overwrites the last outdated entry; the
        two differ only where a policy period of one direction is longer than the
        other direction's longest period.)

        Args:
            lanes: Bool mask (S,) of the lanes that record.
            t: Timestamp, seconds.
            values: Values (S,) to record.
            stale_before: Entries with an earlier timestamp may be overwritten.
        """
        # Empty slots (-inf) follow the filled prefix, so the first slot older than the
        # cutoff is the first stale entry or, when there is none, the next free slot.
        stale = self.times < stale_before
        rows = np.flatnonzero(lanes)
        index = stale.argmax(axis=1)[rows]
        if np.count_nonzero(stale[rows, index]) < rows.size:
            # Capacities are sized from the windows; reaching this is a bug, not bad input.
            raise RuntimeError("HPA history overflow: capacity too small for the windows")
        self.times[rows, index] = t
        self.values[rows, index] = values[rows]
        self.latest = max(self.latest, t)

    def sum_after(self, cutoff: float) -> np.ndarray | None:
        """Sum per lane of the values with timestamp strictly after ``cutoff``.

        Returns:
            The sums (S,), or None when no entry is that recent (all sums 0).
        """
        if cutoff >= self.latest:
            return None
        return self.values.sum(axis=1, where=self.times > cutoff)


class _Columns:
    """Per-lane integers recorded at every sync, as columns in time order.

    All lanes share the timestamps, so a trailing window is a slice of columns.
    Columns that no window can reach again are dropped when room is needed.

    Args:
        n_arrays: How many (S, K) arrays share the columns.
        n_lanes: S.
        horizon_s: The longest trailing window read from these columns.
        capacity: Initial number of columns; it grows if ever too small.
    """

    def __init__(self, n_arrays: int, n_lanes: int, horizon_s: int, capacity: int) -> None:
        self.arrays = [np.empty((n_lanes, capacity), dtype=np.int64) for _ in range(n_arrays)]
        self.horizon_s = horizon_s
        self.times: list[float] = []

    def append(self, t: float) -> int:
        """Open a column for time ``t`` (not before the last one); returns its index."""
        if len(self.times) == self.arrays[0].shape[1]:
            self._make_room(t)
        self.times.append(t)
        return len(self.times) - 1

    def after(self, cutoff: float) -> slice | None:
        """The columns with time strictly after ``cutoff``; None if there are none."""
        first = bisect_right(self.times, cutoff)
        return None if first == len(self.times) else slice(first, len(self.times))

    def _make_room(self, t: float) -> None:
        # Windows only move forward, so columns at or before t - horizon are unreachable.
        drop = bisect_right(self.times, t - self.horizon_s)
        for i, arr in enumerate(self.arrays):
            if drop == 0:
                self.arrays[i] = np.concatenate([arr, np.empty_like(arr)], axis=1)
            else:
                arr[:, : arr.shape[1] - drop] = arr[:, drop:]
        del self.times[:drop]


class _Recommendations:
    """The recommendations of the stabilization windows, one column per sync.

    Go keeps a slice per HPA and overwrites an entry once it is older than both
    windows; such an entry is never read again (later windows start later), so keeping
    each sync's recommendations in :class:`_Columns` reads exactly the same windows.
    Lanes that did not record in a sync hold the identity of the reduction reading
    them: ``_INT_MAX`` for the minimum over the scale-up window, ``_INT_MIN`` for the
    maximum over the scale-down window.

    Args:
        n_lanes: S.
        up_window_s: Scale-up stabilization window; 0 keeps no minimum.
        down_window_s: Scale-down stabilization window; 0 keeps no maximum.
        capacity: Initial number of columns.
    """

    def __init__(self, n_lanes: int, up_window_s: int, down_window_s: int, capacity: int) -> None:
        self.up_window_s = up_window_s
        self.down_window_s = down_window_s
        self.columns = _Columns(2, n_lanes, max(up_window_s, down_window_s), capacity)

    def record(self, t: float, values: np.ndarray, lanes: np.ndarray | None) -> None:
        """Record ``values`` (S,) at time ``t`` for the lanes in mask ``lanes`` (None: all)."""
        if self.up_window_s == 0 and self.down_window_s == 0:
            return  # both windows are empty: nothing is ever read
        col = self.columns.append(t)
        low, high = self.columns.arrays
        if self.up_window_s:
            low[:, col] = values if lanes is None else np.where(lanes, values, _INT_MAX)
        if self.down_window_s:
            high[:, col] = values if lanes is None else np.where(lanes, values, _INT_MIN)

    def lowest(self, t: float) -> np.ndarray | None:
        """Minimum per lane over the scale-up window ending at ``t``; None if empty."""
        window = self.columns.after(t - self.up_window_s) if self.up_window_s else None
        return None if window is None else self.columns.arrays[0][:, window].min(axis=1)

    def highest(self, t: float) -> np.ndarray | None:
        """Maximum per lane over the scale-down window ending at ``t``; None if empty."""
        window = self.columns.after(t - self.down_window_s) if self.down_window_s else None
        return None if window is None else self.columns.arrays[1][:, window].max(axis=1)


class _ScaleEventSlices:
    """Scale-up and scale-down events as the Go controller's two slices per HPA.

    Exact whatever the policy periods: an event is overwritten once older than its
    direction's longest period, yet a longer period of the other direction may still
    count it, so which entries survive matters.

    Args:
        n_lanes: S.
        up_longest_s: Longest scale-up policy period.
        down_longest_s: Longest scale-down policy period.
        sync_period_s: Seconds between syncs (sizes the slices).
    """

    def __init__(
        self, n_lanes: int, up_longest_s: int, down_longest_s: int, sync_period_s: int
    ) -> None:
        self.up_longest_s = up_longest_s
        self.down_longest_s = down_longest_s
        # One event per sync inside the longest period of that direction, the new one.
        self.up = _TimedLog(n_lanes, up_longest_s // sync_period_s + 2)
        self.down = _TimedLog(n_lanes, down_longest_s // sync_period_s + 2)

    def record(self, t: float, change: np.ndarray) -> None:
        """``storeScaleEvent`` for the change (S,) of every lane at time ``t``."""
        up = change > 0
        if np.count_nonzero(up):
            self.up.store(up, t, change, t - self.up_longest_s)
        down = change < 0
        if np.count_nonzero(down):
            self.down.store(down, t, -change, t - self.down_longest_s)

    def period_start(self, current: np.ndarray, cutoff: float) -> np.ndarray:
        """Replicas before the changes after ``cutoff`` (``getReplicasChangePerPeriod``)."""
        added = self.up.sum_after(cutoff)
        deleted = self.down.sum_after(cutoff)
        start = current if added is None else current - added
        return start if deleted is None else start + deleted


class _ScaleEventColumns:
    """Scale events as one net change per lane and sync, in :class:`_Columns`.

    Equal to :class:`_ScaleEventSlices` when no policy period read is longer than
    either direction's longest period: Go then never overwrites an event that a
    window still counts, and both directions' events are read with the same cutoff,
    so their difference is all that matters.

    Args:
        n_lanes: S.
        horizon_s: The longest policy period read.
        capacity: Initial number of columns.
    """

    def __init__(self, n_lanes: int, horizon_s: int, capacity: int) -> None:
        self.columns = _Columns(1, n_lanes, horizon_s, capacity)

    def record(self, t: float, change: np.ndarray) -> None:
        """``storeScaleEvent`` for the change (S,) of every lane at time ``t``."""
        self.columns.arrays[0][:, self.columns.append(t)] = change

    def period_start(self, current: np.ndarray, cutoff: float) -> np.ndarray:
        """Replicas before the changes after ``cutoff`` (``getReplicasChangePerPeriod``)."""
        window = self.columns.after(cutoff)
        if window is None:
            return current
        return current - self.columns.arrays[0][:, window].sum(axis=1)


class UtilizationMetric:
    """``GetResourceReplicas`` for one metric sample, at any spec replicas.

    The parts that depend on the sample alone are computed here, once, so the several
    syncs of a step (one sample, evolving spec replicas) pay only for the rest.

    Args:
        ready: Ready pods (S,), int64, the only ones with a metric.
        utilization: Mean utilization of the ready pods (S,), a fraction.
        target: Target utilization (S,), a fraction.
        tolerance: Ratios within ``1 +- tolerance`` leave the count unchanged.
    """

    def __init__(
        self,
        ready: np.ndarray,
        utilization: np.ndarray,
        target: np.ndarray,
        tolerance: float,
    ) -> None:
        self.tolerance = tolerance
        self._target = target
        self.available = ready > 0
        usage_ratio = utilization / target
        self._util_ready = utilization * ready
        # Lanes whose answer is the current count whatever it is: within tolerance, or
        # without a metric (the HPA must not scale those).
        self._keep = (np.abs(1.0 - usage_ratio) <= tolerance) | ~self.available
        plain = np.ceil(usage_ratio * ready)
        # The kept lanes' values are never used; 0 there avoids casting a NaN.
        self._plain = np.where(self._keep, 0, plain).astype(np.int64)
        # Lanes scaling up; those with unready pods are recomputed (ready there, and a
        # count no lane reaches elsewhere, so `current > _rising_ready` finds them).
        rising = self.available & (usage_ratio > 1.0)
        self._rising_ready = np.where(rising, ready, _INT_MAX)
        self._any_rising = bool(np.count_nonzero(rising))

    def replicas(self, current: np.ndarray) -> np.ndarray:
        """The proposal (S,), int64, at spec replicas ``current`` (S,), int64."""
        out = np.where(self._keep, current, self._plain)
        if self._any_rising:
            unready = current > self._rising_ready
            if np.count_nonzero(unready):
                out = np.where(unready, self._with_unready(current), out)
        return out

    def _with_unready(self, current: np.ndarray) -> np.ndarray:
        """The proposal with the unready pods at 0 usage, valid on the lanes scaling up
        with unready pods, where ``ready + unready`` is ``current``."""
        # Unready pods at 0 usage: the mean over ready + unready pods.
        pods = np.maximum(current, 1)
        new_ratio = (self._util_ready / pods) / self._target
        new_replicas = np.ceil(new_ratio * pods)
        # Keep the count when the new ratio is within tolerance or flips the direction
        # (down: the usage ratio is > 1 here). A ratio > 1 never gives fewer replicas
        # than ``current``, so that half of the direction check is moot.
        keep = (np.abs(1.0 - new_ratio) <= self.tolerance) | (new_ratio < 1.0)
        return np.where(keep, current, new_replicas).astype(np.int64)


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
    metric = UtilizationMetric(
        np.asarray(ready, dtype=np.int64),
        np.asarray(utilization, dtype=np.float64),
        target,
        tolerance,
    )
    return metric.replicas(np.asarray(current, dtype=np.int64)), metric.available


class ExternalAverageValueMetric:
    """``GetExternalPerPodMetricReplicas`` for one metric sample, at any replicas.

    Args:
        usage: Total metric value (S,), e.g. consumer lag.
        target_per_pod: Target value per replica (S,), > 0.
        tolerance: Ratios within ``1 +- tolerance`` leave the count unchanged.
    """

    def __init__(self, usage: np.ndarray, target_per_pod: np.ndarray, tolerance: float) -> None:
        self.usage = usage
        self.target_per_pod = target_per_pod
        self.tolerance = tolerance
        with np.errstate(invalid="ignore"):  # a NaN is cast only where it is the answer
            self._proposal = np.ceil(usage / target_per_pod).astype(np.int64)

    def replicas(self, status: np.ndarray) -> np.ndarray:
        """The proposal (S,), int64, at ``status`` (S,), int64, replicas.

        At 0 replicas Go divides by zero too: x/0 = +Inf scales, 0/0 = NaN does not.
        Call this under ``np.errstate(divide="ignore", invalid="ignore")``.
        """
        usage_ratio = self.usage / (self.target_per_pod * status)
        change = np.abs(1.0 - usage_ratio) > self.tolerance
        return np.where(change, self._proposal, status)


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
    metric = ExternalAverageValueMetric(
        np.asarray(usage, dtype=np.float64), target_per_pod, tolerance
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        return metric.replicas(np.asarray(status_replicas, dtype=np.int64))


class ReplicaBounds:
    """``spec.minReplicas`` and ``spec.maxReplicas`` of S lanes, with what every sync
    derives from them worked out once.

    Args:
        min_replicas: ``spec.minReplicas`` (S,).
        max_replicas: ``spec.maxReplicas`` (S,).
    """

    def __init__(self, min_replicas: np.ndarray, max_replicas: np.ndarray) -> None:
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        # 0 replicas with minReplicas != 0 means "scaling is disabled".
        self.disables_at_zero = np.asarray(min_replicas) != 0
        # With no minReplicas < 0, such a lane is below its minimum too, so the range
        # check alone finds every lane that does not scale normally.
        self.range_finds_disabled = not np.any(np.asarray(min_replicas) < 0)


@dataclass(frozen=True)
class _Policy:
    """One policy of one direction, ready to apply."""

    pods: bool  # "Pods", else "Percent"
    value: int
    period_s: int
    factor: float  # 1 +- value / 100, the Percent multiplier


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
        # The rules as each sync uses them.
        self._up_policies = self._prepare(self.scale_up, up=True)
        self._down_policies = self._prepare(self.scale_down, up=False)
        # "Max" is the biggest change: the highest count up, the lowest count down.
        self._up_pick = np.maximum if self.scale_up.select == "Max" else np.minimum
        self._down_pick = np.minimum if self.scale_down.select == "Max" else np.maximum
        self._recommendations: _Recommendations | None = None
        self._events: _ScaleEventSlices | _ScaleEventColumns | None = None
        self._last_t = -np.inf

    @staticmethod
    def _prepare(rules: ScalingRules, *, up: bool) -> tuple[_Policy, ...]:
        if rules.select == "Disabled":
            return ()
        return tuple(
            _Policy(kind == "Pods", value, period, 1 + value / 100 if up else 1 - value / 100)
            for kind, value, period in rules.policies
        )

    def reset(self, n_lanes: int) -> None:
        """Forget all history and size it for ``n_lanes`` lanes.

        Args:
            n_lanes: Number of lanes S.
        """
        period = self.sync_period_s
        up_window, down_window = self.scale_up.stabilization_s, self.scale_down.stabilization_s
        # One recommendation per sync inside the window, the initial one, the new one,
        # and room for as many syncs again before the columns are compacted.
        self._recommendations = _Recommendations(
            n_lanes, up_window, down_window, max(up_window, down_window) // period + 3 + _SLACK
        )
        up_longest, down_longest = self.scale_up.longest_period_s, self.scale_down.longest_period_s
        read = max((p.period_s for p in self._up_policies + self._down_policies), default=0)
        if read <= min(up_longest, down_longest):
            self._events = _ScaleEventColumns(n_lanes, read, read // period + 2 + _SLACK)
        else:
            self._events = _ScaleEventSlices(n_lanes, up_longest, down_longest, period)
        self._last_t = -np.inf

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
            t: Time of the sync, seconds since reset; never before the previous sync.
            current: Spec replicas (S,) before the sync.
            proposal: Replicas the metric asks for (S,) (``computeReplicasForMetrics``).
            metric_available: Bool (S,); where False the sync fails and nothing scales.
            min_replicas: ``spec.minReplicas`` (S,).
            max_replicas: ``spec.maxReplicas`` (S,).

        Returns:
            Spec replicas (S,) after the sync.
        """
        return self.reconcile_within(
            ReplicaBounds(min_replicas, max_replicas),
            t,
            np.asarray(current, dtype=np.int64),
            np.asarray(proposal, dtype=np.int64),
            np.asarray(metric_available, dtype=bool),
        )

    def reconcile_within(
        self,
        bounds: ReplicaBounds,
        t: float,
        current: np.ndarray,
        proposal: np.ndarray,
        metric_available: np.ndarray | None,
    ) -> np.ndarray:
        """:meth:`reconcile` with the bounds prepared once, for a sync loop.

        Args:
            bounds: ``spec.minReplicas`` and ``spec.maxReplicas``.
            t: Time of the sync, seconds since reset; never before the previous sync.
            current: Spec replicas (S,), int64, before the sync.
            proposal: Replicas the metric asks for (S,), int64.
            metric_available: Bool (S,); where False nothing scales; None: all True.

        Returns:
            Spec replicas (S,), int64, after the sync.
        """
        recs, events = self._history()
        if t < self._last_t:
            raise ValueError(f"sync at t={t} before the previous one at t={self._last_t}")
        # recordInitialRecommendation: the first sync remembers the replicas it found,
        # so a fresh HPA does not scale below them within the downscale window.
        if self._last_t == -np.inf:
            recs.record(t, current, None)
        self._last_t = t

        low, high = bounds.min_replicas, bounds.max_replicas
        below_min = current < low
        above_max = current > high
        outside = below_min | above_max
        if not bounds.range_finds_disabled:
            outside |= (current == 0) & bounds.disables_at_zero
        normal = ~outside if metric_available is None else metric_available & ~outside
        n_normal = np.count_nonzero(normal)
        if n_normal == normal.size:
            desired = self._normalize(t, current, proposal, bounds, None)
        else:
            desired = current
            if n_normal:
                normalized = self._normalize(t, current, proposal, bounds, normal)
                desired = np.where(normal, normalized, current)
            # Out of range and not disabled: to the bound, maxReplicas first.
            disabled = (current == 0) & bounds.disables_at_zero
            above = ~disabled & above_max
            below = ~disabled & ~above_max & below_min
            desired = np.where(above, high, desired)
            desired = np.where(below, low, desired).astype(np.int64)

        # storeScaleEvent after every rescale, the min/max corrections included.
        events.record(t, desired - current)
        return desired

    def _history(self) -> tuple[_Recommendations, _ScaleEventSlices | _ScaleEventColumns]:
        if self._recommendations is None or self._events is None:
            raise RuntimeError("call reset(n_lanes) before reconcile")
        return self._recommendations, self._events

    def _normalize(
        self,
        t: float,
        current: np.ndarray,
        desired: np.ndarray,
        bounds: ReplicaBounds,
        lanes: np.ndarray | None,
    ) -> np.ndarray:
        """``normalizeDesiredReplicasWithBehaviors``; records only for ``lanes`` (None: all)."""
        recs, _ = self._history()
        lowest = recs.lowest(t)
        up_rec = desired if lowest is None else np.minimum(desired, lowest)
        highest = recs.highest(t)
        down_rec = desired if highest is None else np.maximum(desired, highest)
        stabilized = np.minimum(np.maximum(current, up_rec), down_rec)
        # The unstabilized recommendation is what is remembered.
        recs.record(t, desired, lanes)
        return self._rate_limited(t, current, stabilized, bounds)

    def _rate_limited(
        self, t: float, current: np.ndarray, desired: np.ndarray, bounds: ReplicaBounds
    ) -> np.ndarray:
        """``convertDesiredReplicasWithBehaviorRate``."""
        out = desired
        # Replicas at the start of each policy period, shared by both directions.
        starts: dict[int, np.ndarray] = {}
        # Only lanes within [minReplicas, maxReplicas] use the result, and there the
        # allowed range contains ``current``: each limit leaves the other direction be.
        if np.count_nonzero(desired > current):
            up_limit = np.maximum(self._limit(t, current, starts, up=True), current)
            out = np.minimum(out, np.minimum(bounds.max_replicas, up_limit))
        if np.count_nonzero(desired < current):
            down_limit = np.minimum(self._limit(t, current, starts, up=False), current)
            out = np.maximum(out, np.maximum(bounds.min_replicas, down_limit))
        return out

    def _limit(
        self, t: float, current: np.ndarray, starts: dict[int, np.ndarray], *, up: bool
    ) -> np.ndarray:
        """``calculateScaleUpLimitWithScalingRules`` / ``calculateScaleDownLimitWithBehaviors``."""
        _, events = self._history()
        policies = self._up_policies if up else self._down_policies
        if not policies:  # selectPolicy "Disabled"
            return current
        proposals = []
        for policy in policies:
            start = starts.get(policy.period_s)
            if start is None:
                start = events.period_start(current, t - policy.period_s)
                starts[policy.period_s] = start
            if policy.pods:
                proposals.append(start + policy.value if up else start - policy.value)
            elif up:
                # Percent rounds up so that a small percentage can still add a pod.
                proposals.append(np.ceil(start * policy.factor).astype(np.int64))
            else:
                # int32(float64(...)) truncates: 72 * 0.9 = 64.8 -> 64 (docs example).
                proposals.append(np.trunc(start * policy.factor).astype(np.int64))
        # "Max" is the biggest change: the highest count up, the lowest count down.
        return functools.reduce(self._up_pick if up else self._down_pick, proposals)


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
        self._bounds = ReplicaBounds(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
        self._step = 0

    def reset(self, params: ClusterParams) -> None:
        """Forget all state and prepare for the lanes of ``params``.

        Args:
            params: Cluster parameters; min_jobs and max_jobs are the HPA's bounds.
        """
        self._params = params
        self._target = lane_values(self.target_utilization, params.n_services, "target_utilization")
        self._bounds = ReplicaBounds(params.min_jobs, params.max_jobs)
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
        utilization = np.maximum(np.asarray(obs.utilization, dtype=np.float64), 0.0)
        metric = UtilizationMetric(ready, utilization, self._target, self._hpa.tolerance)
        available = metric.available
        t0 = self._step * STEP_S
        for offset in self._hpa.sync_offsets(self._step):
            current = self._hpa.reconcile_within(
                self._bounds, t0 + offset, current, metric.replicas(current), available
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
