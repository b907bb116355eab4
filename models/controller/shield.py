"""The safety shield: bounds every learned scaling decision (DESIGN.md section 6).

A learned policy proposes a target job count per service; the shield turns the
proposal into the target that is actually asked for and says, per service, which
rule changed it. All rules are vectorised over the S services of an observation.

Quantities (per service; ``cap`` is one job's events per step,
``job_capacity_eps * STEP_S``):

* ``current``: ``obs.jobs_target`` (running + starting), rounded; ``min_jobs`` when
  it is not a finite non-negative number.
* governed horizons: 1 .. ``startup_steps + 2``, the steps a decision made now
  governs before the next one can correct it (as the ``predictive`` rule).
* ``drain_steps = max(drain_fraction * wait_budget_s / STEP_S, 1e-3)``: a backlog is
  drained within that share of the SLA wait budget; the backlog term of a rule is
  ``queue / (cap * drain_steps)`` jobs.
* forecast floor: ``ceil(U / (cap * floor_utilization) + backlog term)``, U the
  largest forecast, over the governed horizons, at the highest quantile level of the
  observation that is <= ``floor_quantile``.
* fallback rule (reactive, needs no forecast): ``max(current, ceil(arrivals /
  (cap * fallback_utilization) + backlog term))``, with ``arrivals`` those of the
  last step. It never scales down.
* budget ceiling: ``max(min_jobs, floor(daily_budget / (cost_per_job_hour * 24)))``
  jobs, the most the service can run all day within its budget (no limit when the
  job is free or ``enforce_budget`` is off).
* hard bounds, exactly as the simulator applies them (``ClusterParams.clip_target``):
  ``lo = max(min_jobs, current - max_step)``, ``hi = max(lo, min(max_jobs, current +
  max_step))``. The target always ends in [lo, hi]; when ``current`` lies inside
  [min_jobs, max_jobs] that is [min_jobs, max_jobs] intersected with current +-
  max_step, and the shield's answer passes the simulator unchanged.

Rules, applied in this order; each reports its code only if it changed the value
(``fallback`` always reports when it fires, since the model's value was not used):

``fallback:<cause>``
    The proposal is replaced by the fallback rule, and the floor becomes at least
    the fallback value, so a fallback target holds or grows and only ``max_jobs``
    (or the step limit) can lower it. Causes, the first that applies wins:

    * ``state``: ``jobs_target``, ``jobs_running``, ``jobs_starting``,
      ``queue_length`` or ``arrivals`` of the service is not finite or negative.
      Nothing measured can be trusted, so the shield holds ``current`` (the floor is
      ``current`` too).
    * ``forecast``: ``obs.forecast`` is None, does not have shape (S, len(horizons),
      len(quantiles)), has no governed horizon for the service, or one of the
      service's governed values (any quantile) is not finite or negative. The floor
      is then the fallback value (last arrivals instead of the forecast).
    * ``proposal``: the proposed value is NaN or infinite. The floor is the larger
      of the forecast floor and the fallback value.

    Otherwise the proposal is rounded half up to an integer.
``step``
    The value is clipped to current +- ``max_step`` (N).
``ceiling``
    The value is lowered to ``max_jobs``. ``max_jobs`` beats every other rule.
``budget``
    With ``enforce_budget``, the value is lowered to the budget ceiling, but never
    below the floor: an SLA floor is safety, the budget a preference.
``floor``
    The value is raised to the floor: the forecast floor (or the fallback floor
    above) clipped into [min_jobs, max_jobs], and at most ``max_step`` above
    ``current``; a floor further away is approached by ``max_step`` per step. This is
    also where ``min_jobs`` is enforced, so a proposal below ``min_jobs`` reports
    ``floor``.
``backlog``
    Reported with ``floor`` when the backlog term is why the floor is that high:
    with an empty queue the floor (clipped the same way) would have been lower. A
    queue that builds while capacity is lost (jobs crashed and restarting, a
    consumer stalled) raises the target this way, and the decision says so.
``cooldown``
    A decrease (value below ``current``) while ``steps_since_change <
    cooldown_steps`` is replaced by ``current``, lowered only as far as the ceilings
    (``max_jobs``, budget) demand; the floor still wins. ``steps_since_change`` at
    step t is ``t - t_change``, where t_change is the last step whose target differed
    from the target before it, so after a change at step t the first scale-down can
    happen at step ``t + cooldown_steps``; an unknown (NaN) value counts as in
    cooldown. Scale-ups are never delayed.

A reason string joins the codes that changed the value with ``+`` in the order of
:data:`REASONS`, e.g. ``"floor"``, ``"step+floor"``, ``"floor+backlog"``,
``"fallback:forecast"``, ``"fallback:proposal+step"``; ``""`` means the proposal
passed untouched.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass, field
from numbers import Integral

import numpy as np

from models.controller.base import Controller, Observation
from simulator.config import STEP_S, ClusterParams

REASONS = ("fallback", "step", "ceiling", "budget", "floor", "backlog", "cooldown")
"""Intervention codes, in the order they are applied and joined in a reason string."""

FALLBACK_CAUSES = ("proposal", "forecast", "state")
"""Why the fallback rule fired, written after ``fallback:`` in a reason string."""

# Per-service rule flags (bit i is REASONS[i + 1]) and fallback cause (0 = none, then
# FALLBACK_CAUSES in order); a reason string is looked up at cause * 64 + flags.
_STEP, _CEILING, _BUDGET, _FLOOR, _BACKLOG, _COOLDOWN = 1, 2, 4, 8, 16, 32
_N_FLAG_VALUES = 64
_CAUSE_PROPOSAL, _CAUSE_FORECAST, _CAUSE_STATE = 1, 2, 3


def _reason_table() -> np.ndarray:
    table: list[str] = []
    for cause in (None, *FALLBACK_CAUSES):
        for flags in range(_N_FLAG_VALUES):
            parts = [] if cause is None else [f"fallback:{cause}"]
            parts += [code for bit, code in enumerate(REASONS[1:]) if flags >> bit & 1]
            table.append("+".join(parts))
    return np.array(table, dtype=object)


_REASON_TABLE = _reason_table()


@dataclass(frozen=True)
class ShieldConfig:
    """How the shield bounds a proposal (the rules are in the module docstring).

    Args:
        floor_quantile: Forecast level the floor provisions for; the highest level
            <= this that the observation has is used (an observation with none is an
            error).
        floor_utilization: The floor serves that quantile at this utilization, in
            (0, 1].
        drain_fraction: Share of the SLA wait budget within which the floor and the
            fallback rule drain the backlog, > 0.
        cooldown_steps: A scale-down is refused until this many steps have passed
            since the last change of the target (0 = never refused).
        enforce_budget: Cap the target by the jobs the daily budget pays for.
        fallback_utilization: Target utilization of the fallback rule, in (0, 1].
    """

    floor_quantile: float = 0.9
    floor_utilization: float = 1.0
    drain_fraction: float = 0.5
    cooldown_steps: int = 5
    enforce_budget: bool = True
    fallback_utilization: float = 0.7

    def __post_init__(self) -> None:
        problems: list[str] = []
        # NaN fails every comparison, so each check is written to reject it.
        if not 0 < self.floor_quantile < 1:
            problems.append(f"floor_quantile must be in (0, 1), got {self.floor_quantile}")
        if not 0 < self.floor_utilization <= 1:
            problems.append(f"floor_utilization must be in (0, 1], got {self.floor_utilization}")
        if not 0 < self.drain_fraction < math.inf:
            problems.append(
                f"drain_fraction must be a finite number > 0, got {self.drain_fraction}"
            )
        if isinstance(self.cooldown_steps, bool) or not isinstance(self.cooldown_steps, Integral):
            problems.append(f"cooldown_steps must be an int, got {self.cooldown_steps!r}")
        elif self.cooldown_steps < 0:
            problems.append(f"cooldown_steps must be >= 0, got {self.cooldown_steps}")
        if not isinstance(self.enforce_budget, bool):
            problems.append(f"enforce_budget must be a bool, got {self.enforce_budget!r}")
        if not 0 < self.fallback_utilization <= 1:
            problems.append(
                f"fallback_utilization must be in (0, 1], got {self.fallback_utilization}"
            )
        if problems:
            raise ValueError("invalid ShieldConfig: " + "; ".join(problems))


@dataclass(frozen=True)
class ShieldResult:
    """What the shield decided for S services.

    Attributes:
        targets: Final targets, shape (S,), int64, within the simulator's bounds
            (see the module docstring).
        reasons: Per service, ``""`` if the proposal passed untouched, else the codes
            that changed it joined by ``+`` (e.g. ``"step+floor"``,
            ``"fallback:forecast"``).
        proposed: The proposal as it came in, float64 (may hold NaN).
    """

    targets: np.ndarray
    reasons: tuple[str, ...]
    proposed: np.ndarray

    @property
    def intervened(self) -> np.ndarray:
        """Per service, whether the shield changed (or replaced) the proposal."""
        return np.asarray(self.reasons, dtype=object) != ""


@dataclass(frozen=True)
class _Limits:
    """Per-service constants of the rules, computed once per (params, config)."""

    n: int
    min_jobs: np.ndarray
    max_jobs: np.ndarray
    max_step: np.ndarray
    budget_jobs: np.ndarray  # inf where the budget does not bind
    last_governed: np.ndarray  # startup_steps + 2
    floor_cap: np.ndarray  # cap * floor_utilization
    fallback_cap: np.ndarray  # cap * fallback_utilization
    drain_cap: np.ndarray  # cap * drain_steps
    governed: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def governed_mask(self, horizons: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(H, S) whether each horizon is governed for each service, and (S,) any (cached)."""
        cached = self.governed.get(horizons)
        if cached is None:
            mask = np.asarray(horizons)[:, None] <= self.last_governed[None, :]
            cached = self.governed[horizons] = (mask, np.logical_or.reduce(mask, axis=0))
        return cached


def _limits(params: ClusterParams, config: ShieldConfig) -> _Limits:
    cap = params.job_step_capacity
    drain_steps = np.maximum(config.drain_fraction * params.wait_budget_s / STEP_S, 1e-3)
    budget = np.full(params.n_services, np.inf)  # free jobs, or no budget enforced
    if config.enforce_budget:
        day_cost = params.cost_per_job_hour * 24.0
        np.divide(params.daily_budget, day_cost, out=budget, where=day_cost > 0)
        # The tolerance keeps 24 / (0.1 * 24) = 9.999999999999998 at 10 jobs.
        budget = np.maximum(params.min_jobs, np.floor(budget + 1e-9))
    # Float copies: a ufunc on int64 and float64 pays for the cast on every call.
    return _Limits(
        n=params.n_services,
        min_jobs=params.min_jobs.astype(np.float64),
        max_jobs=params.max_jobs.astype(np.float64),
        max_step=params.max_step.astype(np.float64),
        budget_jobs=budget,
        last_governed=params.startup_steps + 2,
        floor_cap=cap * config.floor_utilization,
        fallback_cap=cap * config.fallback_utilization,
        drain_cap=cap * drain_steps,
    )


@functools.lru_cache(maxsize=64)
def _level_index(quantiles: tuple[float, ...], floor_quantile: float) -> int:
    """Index of the highest level <= ``floor_quantile`` in ``quantiles``."""
    levels = np.asarray(quantiles, dtype=np.float64)
    usable = levels <= floor_quantile + 1e-9
    if not usable.any():
        raise ValueError(
            f"the forecast has no quantile level <= floor_quantile={floor_quantile} "
            f"(levels {quantiles}); configure a floor_quantile at or above one of them"
        )
    return int(np.argmax(np.where(usable, levels, -np.inf)))


def _lane_vector(values: object, n: int, what: str, copy: bool = False) -> np.ndarray:
    arr = np.array(values, dtype=np.float64) if copy else np.asarray(values, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{what} must have shape ({n},), one value per service; got {arr.shape}")
    return arr


# The state arrays the shield trusts or not, in the rows of its state matrix.
_STATE_FIELDS = ("jobs_target", "queue_length", "arrivals", "jobs_running", "jobs_starting")
# Weights that turn the (5, S) "stage i changed the value" matrix into rule flags
# (``backlog`` is no stage of its own: it says why ``floor`` changed the value).
# Float weights: numpy's matmul has no fast path for int @ bool.
_FLAG_WEIGHTS = np.array([_STEP, _CEILING, _BUDGET, _FLOOR, _COOLDOWN], dtype=np.float64)


def _forecast_terms(
    lim: _Limits, config: ShieldConfig, obs: Observation, state_ok: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per service, whether the forecast is usable, and U (0 where it is not)."""
    n = lim.n
    if obs.forecast is None:
        return np.zeros(n, dtype=bool), np.zeros(n)
    fc = np.asarray(obs.forecast, dtype=np.float64)
    if fc.shape != (n, len(obs.horizons), len(obs.quantiles)) or fc.size == 0:
        return np.zeros(n, dtype=bool), np.zeros(n)
    level = _level_index(tuple(obs.quantiles), config.floor_quantile)
    governed, any_governed = lim.governed_mask(tuple(obs.horizons))
    if fc.min() >= 0 and fc.max() < np.inf:  # the usual case; False when any is NaN
        ok = any_governed
    else:
        # Services on the last axis, so the reductions run over leading axes: numpy
        # reduces a short trailing axis an order of magnitude slower.
        good = ((fc >= 0) & (fc < np.inf)).transpose(1, 2, 0)  # (H, Q, S); False for NaN
        good = np.logical_or(good, ~governed[:, None, :], order="C")
        ok = any_governed & np.logical_and.reduce(good, axis=(0, 1))
    # (H, S) as above; with a bad state U is 0 too, as the fallback rule does not use it.
    upper = np.where(governed & (ok & state_ok), fc[:, :, level].T, 0.0).max(axis=0)
    return ok, upper


def _shield(
    lim: _Limits,
    config: ShieldConfig,
    obs: Observation,
    proposed: np.ndarray,
    steps_since_change: np.ndarray,
) -> ShieldResult:
    n = lim.n
    prop = _lane_vector(proposed, n, "proposed", copy=True)
    since = _lane_vector(steps_since_change, n, "steps_since_change")
    rows = [getattr(obs, name) for name in _STATE_FIELDS]
    for name, row in zip(_STATE_FIELDS, rows, strict=True):
        if np.shape(row) != (n,):
            raise ValueError(f"obs.{name} must have shape ({n},); got {np.shape(row)}")
    state = np.array(rows, dtype=np.float64)
    usable = (state >= 0) & (state < np.inf)  # False for NaN too
    state_ok = np.logical_and.reduce(usable, axis=0)
    current = np.where(usable[0], np.floor(state[0] + 0.5), lim.min_jobs)
    # Lanes with a bad state compute with zero load; only ``current`` survives for them.
    clean = np.where(state_ok, state, 0.0)
    queue, arrivals = clean[1], clean[2]

    forecast_ok, upper = _forecast_terms(lim, config, obs, state_ok)
    proposal_ok = np.isfinite(prop)
    cause = np.where(state_ok, np.where(forecast_ok, ~proposal_ok, _CAUSE_FORECAST), _CAUSE_STATE)
    fallback = cause > 0

    down, up = current - lim.max_step, current + lim.max_step
    lo = np.maximum(lim.min_jobs, down)
    hi = np.maximum(lo, np.minimum(lim.max_jobs, up))

    def floor_for(
        backlog: np.ndarray | float, lanes: slice | np.ndarray = slice(None)
    ) -> tuple[np.ndarray, np.ndarray]:
        """The floor clipped into [lo, hi], and the fallback value, of ``lanes`` for a
        backlog term (jobs)."""
        # >= current: the fallback rule never scales down (a bad state has zero load here).
        fallback_value = np.maximum(
            current[lanes], np.ceil(arrivals[lanes] / lim.fallback_cap[lanes] + backlog)
        )
        # Where the forecast or state is bad, upper is 0 and this term is below the fallback.
        floor = np.ceil(upper[lanes] / lim.floor_cap[lanes] + backlog)
        floor = np.maximum(floor, np.where(fallback[lanes], fallback_value, 0.0))
        return np.minimum(np.maximum(floor, lo[lanes]), hi[lanes]), fallback_value

    floor, fallback_value = floor_for(queue / lim.drain_cap)
    max_cap = np.maximum(lim.max_jobs, lo)
    budget_cap = np.maximum(lim.budget_jobs, floor)  # the floor beats the budget

    # One row per stage, so the flags come from comparing neighbouring rows.
    v = np.empty((6, n))
    v[0] = np.where(fallback, fallback_value, np.floor(prop + 0.5))
    np.minimum(np.maximum(v[0], down), up, out=v[1])  # step
    np.minimum(v[1], max_cap, out=v[2])  # ceiling
    np.minimum(v[2], budget_cap, out=v[3])  # budget
    np.maximum(v[3], floor, out=v[4])  # floor
    blocked = (v[4] < current) & ~(since >= config.cooldown_steps)  # NaN counts as in cooldown
    hold = np.minimum(current, np.minimum(max_cap, budget_cap))
    v[5] = np.where(blocked, np.maximum(v[4], hold), v[4])  # cooldown

    flags = _FLAG_WEIGHTS @ (v[1:] != v[:-1])
    raised = np.flatnonzero((v[4] != v[3]) & (queue > 0))
    if len(raised):
        # The floor raised the value, and an empty queue would have left it lower.
        flags[raised] += np.where(floor[raised] > floor_for(0.0, raised)[0], _BACKLOG, 0)
    index = (cause * _N_FLAG_VALUES + flags).astype(np.intp)
    reasons = tuple(_REASON_TABLE[index].tolist())
    return ShieldResult(targets=v[5].astype(np.int64), reasons=reasons, proposed=prop)


def shield_targets(
    params: ClusterParams,
    obs: Observation,
    proposed: np.ndarray,
    steps_since_change: np.ndarray,
    config: ShieldConfig = ShieldConfig(),
) -> ShieldResult:
    """Bound the proposed targets of S services by the shield's rules (stateless core).

    The MLflow pyfunc calls this with ``steps_since_change`` given as an input column.

    Args:
        params: Per-service parameters (limits, capacity, budget, SLA).
        obs: The observation the proposal was made from.
        proposed: Proposed target per service, shape (S,); NaN or inf means the
            model produced nothing usable.
        steps_since_change: Per service, steps since its target last changed (see
            ``cooldown`` in the module docstring), shape (S,).
        config: The shield's settings.

    Returns:
        The final targets, the reason each was changed, and the proposal.

    Raises:
        ValueError: A per-service input does not have shape (S,), or the forecast
            has no quantile level <= ``config.floor_quantile``.
    """
    return _shield(_limits(params, config), config, obs, proposed, steps_since_change)


class SafetyShield:
    """Stateful wrapper for in-loop use: tracks steps since each service's target last changed.

    Args:
        config: The shield's settings.
    """

    def __init__(self, config: ShieldConfig = ShieldConfig()) -> None:
        self.config = config
        self._limits: _Limits | None = None
        self._since: np.ndarray = np.zeros(0, dtype=np.int64)

    def reset(self, params: ClusterParams) -> None:
        """Prepare for the services of ``params``; no service starts in cooldown."""
        self._limits = _limits(params, self.config)
        self._since = np.full(params.n_services, self.config.cooldown_steps, dtype=np.int64)

    def apply(self, obs: Observation, proposed: np.ndarray) -> ShieldResult:
        """Shield ``proposed`` and count a change wherever the target differs from now."""
        if self._limits is None:
            raise RuntimeError("call reset() before apply()")
        result = _shield(self._limits, self.config, obs, proposed, self._since)
        changed = result.targets != obs.jobs_target
        self._since = np.where(changed, 1, self._since + 1)
        return result

    @property
    def steps_since_change(self) -> np.ndarray:
        """Per service, the steps since its last change as the next ``apply`` sees them."""
        return self._since.copy()


@functools.lru_cache(maxsize=256)
def _count_keys(reason: str) -> tuple[str, ...]:
    """The ``counts`` keys one reason string adds to: each code, and fallback's cause."""
    keys: list[str] = []
    for part in reason.split("+"):
        code, _, cause = part.partition(":")
        keys.append(code)
        if cause:
            keys.append(part)
    return tuple(keys)


class ShieldedController:
    """Wraps any Controller: ``decide()`` is ``shield.apply(obs, inner.decide(obs)).targets``.

    Attributes:
        inner: The wrapped controller.
        shield: The safety shield it runs under.
        name: Label in reports, the inner controller's unless given.
        last: The last :class:`ShieldResult` (None before the first decision).
        counts: Service-steps in which each code changed the decision since the last
            reset, keyed by every code of :data:`REASONS` and by ``fallback:<cause>``
            for every cause (``counts["fallback"]`` is the sum of the three).

    Args:
        inner: The controller whose decisions are shielded.
        config: The shield's settings.
        name: Label in reports (default: ``inner.name``).
    """

    def __init__(
        self, inner: Controller, config: ShieldConfig = ShieldConfig(), name: str | None = None
    ) -> None:
        self.inner = inner
        self.shield = SafetyShield(config)
        self.name = inner.name if name is None else name
        self.last: ShieldResult | None = None
        self.counts = self._zero_counts()

    @staticmethod
    def _zero_counts() -> dict[str, int]:
        return dict.fromkeys((*REASONS, *(f"fallback:{c}" for c in FALLBACK_CAUSES)), 0)

    def reset(self, params: ClusterParams) -> None:
        self.inner.reset(params)
        self.shield.reset(params)
        self.last = None
        self.counts = self._zero_counts()

    def decide(self, obs: Observation) -> np.ndarray:
        result = self.shield.apply(obs, self.inner.decide(obs))
        self.last = result
        for reason, k in Counter(result.reasons).items():
            if reason:
                for key in _count_keys(reason):
                    self.counts[key] += k
        return result.targets
