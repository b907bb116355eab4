"""Behaviour of the safety shield (models/controller/shield.py).

Expected targets are worked out by hand from the rules in the module docstring, with
the default service: one job serves 50 ev/s * 60 s = 3000 events per step, it starts
serving 2 steps after it is asked for (governed horizons 1..4), max_step 5, jobs in
[1, 50], and a budget of 100 / (0.10 * 24) = 41 jobs.
"""

from __future__ import annotations

from dataclasses import MISSING, fields

import numpy as np
import pytest

from models.controller.base import Controller, Observation
from models.controller.rollout import ForecastArrays, run_controller
from models.controller.rules import StaticController
from models.controller.shield import (
    REASONS,
    SafetyShield,
    ShieldConfig,
    ShieldedController,
    ShieldResult,
    shield_targets,
)
from simulator.config import ClusterParams, ServiceConfig

# Arithmetic on NaN and inf inputs must not warn: the shield handles them on purpose.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

HORIZONS = (1, 2, 3, 4, 5, 6)
QUANTILES = (0.5, 0.9, 0.99)
CAP = 3000.0  # events one default job serves per step
DRAIN_STEPS = 0.5 * (60.0 - 1 / 50) / 60  # drain_fraction * wait budget, in steps
SETTLED = 5  # steps_since_change with no cooldown in force (default cooldown_steps)


def make_params(n: int = 1, **overrides: object) -> ClusterParams:
    services = [ServiceConfig(service_id=f"s{i}", **overrides) for i in range(n)]  # type: ignore[arg-type]
    return ClusterParams.from_services(services)


def make_obs(
    current: object = 10,
    *,
    queue: object = 0.0,
    arrivals: object = 0.0,
    forecast: np.ndarray | None = None,
    horizons: tuple[int, ...] = HORIZONS,
    quantiles: tuple[float, ...] = QUANTILES,
    n: int = 1,
) -> Observation:
    """An observation of ``n`` lanes with ``current`` jobs, all serving."""

    def lanes(value: object) -> np.ndarray:
        return np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)).copy()

    given: dict[str, object] = {
        "step": 7,
        "minute_of_day": 7,
        "day_of_week": 0,
        "jobs_target": lanes(current),
        "jobs_running": lanes(current),
        "jobs_starting": np.zeros(n),
        "queue_length": lanes(queue),
        "arrivals": lanes(arrivals),
        "forecast": forecast,
        "horizons": horizons if forecast is not None else (),
        "quantiles": quantiles if forecast is not None else (),
    }
    for f in fields(Observation):
        if f.name not in given and f.default is MISSING:
            given[f.name] = np.zeros(n)
    return Observation(**given)  # type: ignore[arg-type]


def flat_forecast(value: float, n: int = 1) -> np.ndarray:
    """Every horizon and quantile forecasts ``value`` events."""
    return np.full((n, len(HORIZONS), len(QUANTILES)), float(value))


def shield_one(
    proposal: float,
    *,
    current: float = 10,
    upper: float | None = 0.0,
    since: float = SETTLED,
    config: ShieldConfig | None = None,
    queue: float = 0.0,
    arrivals: float = 0.0,
    **overrides: object,
) -> ShieldResult:
    """Shield one proposal of one default service (``upper=None``: no forecast)."""
    params = make_params(**overrides)
    forecast = None if upper is None else flat_forecast(upper)
    obs = make_obs(current, queue=queue, arrivals=arrivals, forecast=forecast)
    return shield_targets(
        params, obs, np.array([proposal]), np.array([since]), config or ShieldConfig()
    )


# ------------------------------------------------------------------ ShieldConfig


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("floor_quantile", 0.0),
        ("floor_quantile", 1.0),
        ("floor_quantile", float("nan")),
        ("floor_utilization", 0.0),
        ("floor_utilization", 1.5),
        ("drain_fraction", 0.0),
        ("drain_fraction", float("inf")),
        ("cooldown_steps", -1),
        ("cooldown_steps", 2.5),
        ("enforce_budget", 1),
        ("fallback_utilization", 0.0),
        ("fallback_utilization", float("nan")),
    ],
)
def test_config_rejects_invalid_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        ShieldConfig(**{field: value})  # type: ignore[arg-type]


def test_config_accepts_numpy_integers_for_cooldown() -> None:
    assert ShieldConfig(cooldown_steps=np.int64(3)).cooldown_steps == 3  # type: ignore[arg-type]


# ------------------------------------------------------------------ the rules, one by one


@pytest.mark.parametrize(
    ("case", "kwargs", "target", "reason"),
    [
        ("inside every bound", {"proposal": 12}, 12, ""),
        ("rounds half up", {"proposal": 11.5}, 12, ""),
        ("rounds down below half", {"proposal": 11.49}, 11, ""),
        ("step limit up", {"proposal": 30}, 15, "step"),
        ("step limit down", {"proposal": 0}, 5, "step"),
        # Floor: 24000 events / 3000 per job = 8 jobs.
        ("step then floor", {"proposal": 0, "upper": 24000}, 8, "step+floor"),
        ("floor", {"proposal": 7, "upper": 27000}, 9, "floor"),
        # A floor of 20 jobs from 2 is approached max_step at a time.
        ("floor beyond the step limit", {"proposal": 2, "current": 2, "upper": 60000}, 7, "floor"),
        ("min_jobs is part of the floor", {"proposal": 1, "current": 4, "min_jobs": 3}, 3, "floor"),
        ("ceiling", {"proposal": 22, "current": 18, "max_jobs": 20}, 20, "ceiling"),
        ("step then ceiling", {"proposal": 40, "current": 18, "max_jobs": 20}, 20, "step+ceiling"),
        ("max_jobs beats the floor", {"proposal": 10, "upper": 60000, "max_jobs": 12}, 12, "floor"),
        # daily_budget 24 at 0.10 per job-hour pays for 10 jobs all day.
        ("budget", {"proposal": 13, "daily_budget": 24.0}, 10, "budget"),
        (
            "ceiling then budget",
            {"proposal": 13, "daily_budget": 24.0, "max_jobs": 12},
            10,
            "ceiling+budget",
        ),
        (
            "free jobs have no budget ceiling",
            {"proposal": 13, "cost_per_job_hour": 0.0, "daily_budget": 0.0},
            13,
            "",
        ),
        (
            "budget off",
            {"proposal": 13, "daily_budget": 24.0, "config": ShieldConfig(enforce_budget=False)},
            13,
            "",
        ),
        # Floor of 15 jobs (45000 events) against a budget of 10.
        (
            "the budget never cuts below the floor",
            {"proposal": 15, "current": 15, "upper": 45000, "daily_budget": 24.0},
            15,
            "",
        ),
        (
            "the budget cuts down to the floor",
            {"proposal": 20, "current": 15, "upper": 45000, "daily_budget": 24.0},
            15,
            "budget",
        ),
        (
            "the floor lifts above the budget",
            {"proposal": 3, "current": 15, "upper": 45000, "daily_budget": 24.0},
            15,
            "step+floor",
        ),
        ("cooldown blocks a scale-down", {"proposal": 6, "since": 2}, 10, "cooldown"),
        ("cooldown over", {"proposal": 6, "since": 5}, 6, ""),
        ("cooldown never blocks a scale-up", {"proposal": 14, "since": 0}, 14, ""),
        (
            "unknown steps since change count as cooldown",
            {"proposal": 6, "since": np.nan},
            10,
            "cooldown",
        ),
        (
            "no cooldown configured",
            {"proposal": 6, "since": 0, "config": ShieldConfig(cooldown_steps=0)},
            6,
            "",
        ),
        ("floor then cooldown", {"proposal": 6, "since": 0, "upper": 24000}, 10, "floor+cooldown"),
        # Cooldown holds current only as far as the ceilings allow.
        (
            "cooldown under the budget",
            {"proposal": 8, "current": 12, "since": 0, "daily_budget": 24.0},
            10,
            "cooldown",
        ),
    ],
)
def test_each_rule_gives_the_documented_target_and_reason(
    case: str, kwargs: dict[str, object], target: int, reason: str
) -> None:
    result = shield_one(**kwargs)  # type: ignore[arg-type]
    assert result.targets.tolist() == [target], case
    assert result.reasons == (reason,), case
    assert result.targets.dtype == np.int64
    assert result.intervened.tolist() == [reason != ""]


def test_the_floor_provisions_the_chosen_quantile_over_the_governed_horizons() -> None:
    params = make_params()
    fc = np.zeros((1, len(HORIZONS), len(QUANTILES)))
    fc[0, :4] = [[3000.0, 27000.0, 90000.0]]  # levels 0.5, 0.9, 0.99 at horizons 1..4
    fc[0, 4:] = 150000.0  # horizons 5 and 6 come after the next decision can correct
    obs = make_obs(8, forecast=fc)
    # floor_quantile picks the highest level at or below it.
    for level, expected in [(0.9, 9), (0.95, 9), (0.5, 8), (0.99, 13)]:
        result = shield_targets(
            params, obs, np.array([8.0]), np.array([SETTLED]), ShieldConfig(floor_quantile=level)
        )
        assert result.targets.tolist() == [expected], level
    # With a later startup, horizon 5 is governed too: ceil(150000/3000) = 50 jobs.
    slow = make_params(job_startup_s=180.0)
    result = shield_targets(slow, obs, np.array([8.0]), np.array([SETTLED]))
    assert (result.targets.tolist(), result.reasons) == ([13], ("floor",))


def test_the_floor_adds_the_backlog_and_uses_the_floor_utilization() -> None:
    upper, queue = 27000.0, 6000.0
    expected = int(np.ceil(upper / (CAP * 0.9) + queue / (CAP * DRAIN_STEPS)))
    assert expected == 15  # 10 jobs for the forecast, 4.0013 for the backlog
    result = shield_one(
        12, current=12, upper=upper, queue=queue, config=ShieldConfig(floor_utilization=0.9)
    )
    # The forecast alone asks for 10 jobs, fewer than the 12 running: the backlog is why.
    assert (result.targets.tolist(), result.reasons) == ([expected], ("floor+backlog",))


@pytest.mark.parametrize(
    ("case", "kwargs", "target", "reason"),
    [
        # 27000 events need 9 jobs; 6000 queued add 4.0013 jobs to drain: 14.
        (
            "the backlog raises the floor",
            {"proposal": 9, "upper": 27000, "queue": 6000},
            14,
            "floor+backlog",
        ),
        # Lost capacity: nothing serves the queue, so it grows past the step limit.
        (
            "a backlog beyond the step limit",
            {"proposal": 6, "upper": 27000, "queue": 60000},
            15,
            "floor+backlog",
        ),
        # The forecast floor (20 jobs) is beyond the step limit already: the backlog
        # changes nothing, so it is not why.
        (
            "the step limit binds first",
            {"proposal": 2, "current": 2, "upper": 60000, "queue": 6000},
            7,
            "floor",
        ),
        # A proposal that drains the backlog by itself needs no floor.
        (
            "the proposal covers the backlog",
            {"proposal": 14, "upper": 27000, "queue": 6000},
            14,
            "",
        ),
        # The fallback rule drains a backlog itself; the forecast floor adds one on top.
        (
            "fallback under a backlog floor",
            {"proposal": np.nan, "upper": 24000, "queue": 6000},
            13,  # ceil(8 + 4.0013)
            "fallback:proposal+floor+backlog",
        ),
        (
            "a backlog floor beats a cut in cooldown",
            {"proposal": 6, "since": 0, "upper": 24000, "queue": 3000},
            11,
            "floor+backlog",
        ),
    ],
)
def test_the_backlog_is_named_when_it_is_why_the_floor_raised_the_target(
    case: str, kwargs: dict[str, object], target: int, reason: str
) -> None:
    result = shield_one(**kwargs)  # type: ignore[arg-type]
    assert (result.targets.tolist(), result.reasons) == ([target], (reason,)), case


def test_a_forecast_without_a_level_at_or_below_the_floor_quantile_is_an_error() -> None:
    with pytest.raises(ValueError, match="floor_quantile"):
        shield_one(10, config=ShieldConfig(floor_quantile=0.3))


# ------------------------------------------------------------------ fallback


@pytest.mark.parametrize(
    ("case", "kwargs", "target", "reason"),
    [
        ("NaN proposal holds", {"proposal": np.nan}, 10, "fallback:proposal"),
        ("inf proposal holds", {"proposal": np.inf}, 10, "fallback:proposal"),
        ("-inf proposal holds", {"proposal": -np.inf}, 10, "fallback:proposal"),
        # 31500 events at 0.7 * 3000 per job = 15 jobs.
        ("reactive scale-up", {"proposal": np.nan, "arrivals": 31500}, 15, "fallback:proposal"),
        (
            "within the step limit",
            {"proposal": np.nan, "arrivals": 63000},
            15,
            "fallback:proposal+step",
        ),
        (
            "the forecast floor still applies",
            {"proposal": np.nan, "upper": 39000},
            13,
            "fallback:proposal+floor",
        ),
        ("missing forecast holds", {"proposal": 3, "upper": None}, 10, "fallback:forecast"),
        (
            "missing forecast, reactive",
            {"proposal": 3, "upper": None, "arrivals": 31500},
            15,
            "fallback:forecast",
        ),
        (
            "missing forecast, with backlog",
            {"proposal": 3, "upper": None, "queue": 9000},
            10,
            "fallback:forecast",
        ),
        (
            "missing forecast, backlog drained",
            {"proposal": 3, "upper": None, "arrivals": 21000, "queue": 6000},
            15,  # ceil(10 + 4.0013)
            "fallback:forecast",
        ),
        ("NaN forecast", {"proposal": 3, "upper": np.nan}, 10, "fallback:forecast"),
        ("infinite forecast", {"proposal": 3, "upper": np.inf}, 10, "fallback:forecast"),
        ("negative forecast", {"proposal": 3, "upper": -1.0}, 10, "fallback:forecast"),
        ("NaN queue", {"proposal": 30, "queue": np.nan, "arrivals": 63000}, 10, "fallback:state"),
        ("infinite arrivals", {"proposal": 30, "arrivals": np.inf}, 10, "fallback:state"),
        ("negative queue", {"proposal": 3, "queue": -5.0}, 10, "fallback:state"),
        (
            "unknown current",
            {"proposal": 30, "current": np.nan, "min_jobs": 3},
            3,
            "fallback:state",
        ),
        # The first cause that applies is reported: state, then forecast, then proposal.
        (
            "state before forecast",
            {"proposal": np.nan, "upper": None, "queue": np.nan},
            10,
            "fallback:state",
        ),
        ("forecast before proposal", {"proposal": np.nan, "upper": None}, 10, "fallback:forecast"),
    ],
)
def test_fallback_replaces_the_proposal_and_says_why(
    case: str, kwargs: dict[str, object], target: int, reason: str
) -> None:
    result = shield_one(**kwargs)  # type: ignore[arg-type]
    assert result.targets.tolist() == [target], case
    assert result.reasons == (reason,), case
    assert result.intervened.tolist() == [True]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"proposal": np.nan},
        {"proposal": 1, "upper": None},
        {"proposal": 1, "upper": np.nan},
        {"proposal": 1, "queue": np.nan},
        {"proposal": 1, "arrivals": -np.inf},
    ],
)
def test_fallback_never_scales_down_not_even_for_the_budget_or_cooldown_over(
    kwargs: dict[str, object],
) -> None:
    # 12 jobs running, a budget of 10, no load, no cooldown: any other rule would shrink.
    result = shield_one(current=12, daily_budget=24.0, since=100, **kwargs)  # type: ignore[arg-type]
    assert result.targets.tolist() == [12]
    assert result.reasons[0].startswith("fallback:")


def test_the_forecast_is_judged_on_the_governed_horizons_only() -> None:
    fc = flat_forecast(27000.0)
    fc[0, 5, 0] = np.nan  # horizon 6 is not governed with a 2-step startup
    obs = make_obs(10, forecast=fc)
    result = shield_targets(make_params(), obs, np.array([12.0]), np.array([SETTLED]))
    assert (result.targets.tolist(), result.reasons) == ([12], ("",))
    fc[0, 3, 2] = np.nan  # horizon 4 is governed, and any level counts
    result = shield_targets(make_params(), obs, np.array([12.0]), np.array([SETTLED]))
    assert (result.targets.tolist(), result.reasons) == ([10], ("fallback:forecast",))


@pytest.mark.parametrize(
    ("forecast", "horizons"),
    [
        (np.zeros((1, 5, 3)), HORIZONS),  # a horizon short
        (np.zeros((2, 6, 3)), HORIZONS),  # another number of services
        (np.zeros((1, 2, 3)), (5, 6)),  # nothing within the governed horizons
    ],
)
def test_a_malformed_forecast_falls_back_instead_of_failing(
    forecast: np.ndarray, horizons: tuple[int, ...]
) -> None:
    obs = make_obs(10, forecast=forecast, horizons=horizons)
    result = shield_targets(make_params(), obs, np.array([3.0]), np.array([SETTLED]))
    assert (result.targets.tolist(), result.reasons) == ([10], ("fallback:forecast",))


def test_result_keeps_the_proposal_as_given() -> None:
    proposed = np.array([np.nan, 7.4])
    obs = make_obs(10, forecast=flat_forecast(0.0, 2), n=2)
    result = shield_targets(make_params(2), obs, proposed, np.full(2, SETTLED))
    proposed[:] = 0.0
    np.testing.assert_array_equal(result.proposed, [np.nan, 7.4])
    assert result.proposed.dtype == np.float64
    assert result.reasons == ("fallback:proposal", "")


# ------------------------------------------------------------------ input checks


@pytest.mark.parametrize(
    ("proposed", "since", "match"),
    [
        (np.array([1.0, 2.0]), np.array([5]), r"proposed must have shape \(1,\)"),
        (np.array([[1.0]]), np.array([5]), "proposed"),
        (np.float64(1.0), np.array([5]), "proposed"),
        (np.array([1.0]), np.array([5, 5]), "steps_since_change"),
    ],
)
def test_inputs_of_the_wrong_shape_are_rejected(
    proposed: np.ndarray, since: np.ndarray, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        shield_targets(make_params(), make_obs(forecast=flat_forecast(0)), proposed, since)


def test_an_observation_of_another_size_is_rejected() -> None:
    obs = make_obs(10, n=2, forecast=flat_forecast(0, 2))
    with pytest.raises(ValueError, match=r"obs\.jobs_target"):
        shield_targets(make_params(), obs, np.array([1.0]), np.array([5]))


# ------------------------------------------------------------------ vectorisation


def random_case(seed: int, n: int) -> tuple[ClusterParams, Observation, np.ndarray, np.ndarray]:
    """Services with different limits and startups, and inputs with every kind of fault."""
    rng = np.random.default_rng(seed)
    services = []
    for i in range(n):
        lo = int(rng.integers(0, 4))
        services.append(
            ServiceConfig(
                service_id=f"s{i}",
                job_startup_s=float(rng.choice([0.0, 60.0, 90.0, 200.0])),
                min_jobs=lo,
                max_jobs=int(rng.integers(lo + 1, 40)),
                max_step=int(rng.integers(1, 8)),
                daily_budget=float(rng.uniform(0.0, 80.0)),
            )
        )
    params = ClusterParams.from_services(services)
    current = rng.integers(0, 40, n).astype(np.float64)
    current = np.clip(current, params.min_jobs, params.max_jobs).astype(np.float64)
    fc = np.sort(rng.uniform(0, 50000, (n, len(HORIZONS), len(QUANTILES))), axis=2)
    proposed = rng.uniform(-5, 60, n)
    near = rng.random(n) < 0.5  # proposals a small step from now, which often pass
    proposed[near] = current[near] + rng.uniform(-2.5, 2.5, int(near.sum()))
    queue = rng.uniform(0, 20000, n) * (rng.random(n) < 0.5)
    arrivals = rng.uniform(0, 90000, n)
    fault = rng.integers(0, 14, n)  # 1..6 are faults, the rest clean
    proposed[fault == 1] = np.nan
    fc[fault == 2, 0, 1] = np.nan
    fc[fault == 3, 1, 0] = -3.0
    queue[fault == 4] = np.inf
    arrivals[fault == 5] = np.nan
    current[fault == 6] = np.nan
    obs = make_obs(current, queue=queue, arrivals=arrivals, forecast=fc, n=n)
    since = rng.integers(0, 8, n).astype(np.float64)
    return params, obs, proposed, since


def test_many_services_at_once_equal_one_service_at_a_time() -> None:
    params, obs, proposed, since = random_case(seed=3, n=200)
    config = ShieldConfig(cooldown_steps=4, floor_utilization=0.8)
    whole = shield_targets(params, obs, proposed, since, config)
    reasons = set(whole.reasons)
    for i in range(params.n_services):
        lane = np.array([i])
        alone = shield_targets(
            params.subset(lane), obs.subset(lane), proposed[lane], since[lane], config
        )
        assert alone.targets[0] == whole.targets[i], i
        assert alone.reasons[0] == whole.reasons[i], i
    # The case exercises most rules, so the comparison is not trivially true.
    assert {"", "fallback:proposal", "fallback:forecast", "fallback:state"} <= reasons
    used = {code.split(":")[0] for r in reasons for code in r.split("+") if r}
    assert used >= {"fallback", "step", "ceiling", "budget", "floor", "backlog", "cooldown"}


@pytest.mark.parametrize("seed", [1, 2, 4])
def test_targets_pass_the_simulator_unchanged_and_reasons_are_truthful(seed: int) -> None:
    params, obs, proposed, since = random_case(seed, n=200)
    result = shield_targets(params, obs, proposed, since)
    current = np.where(np.isfinite(obs.jobs_target), obs.jobs_target, params.min_jobs)
    current = current.astype(np.int64)
    np.testing.assert_array_equal(params.clip_target(result.targets, current), result.targets)
    fallback = np.array([r.startswith("fallback") for r in result.reasons])
    # Outside fallback, "no reason" means exactly the proposal rounded half up.
    rounded = np.floor(proposed + 0.5)
    untouched = ~fallback & ~result.intervened
    np.testing.assert_array_equal(result.targets[untouched], rounded[untouched])
    assert np.all(
        result.targets[~fallback & result.intervened] != rounded[~fallback & result.intervened]
    )
    # A fallback target holds or grows, unless max_jobs forbids it.
    hold = np.minimum(current, params.max_jobs)[fallback & np.isfinite(obs.jobs_target)]
    assert np.all(result.targets[fallback & np.isfinite(obs.jobs_target)] >= hold)
    # Codes come in REASONS order.
    for reason in set(result.reasons) - {""}:
        codes = [c.split(":")[0] for c in reason.split("+")]
        assert codes == sorted(codes, key=REASONS.index)
    # "backlog" only qualifies a floor that raised the value, and needs a queue.
    backlog = np.array(["backlog" in r.split("+") for r in result.reasons])
    assert all("floor" in r.split("+") for r in np.asarray(result.reasons)[backlog])
    assert np.all(obs.queue_length[backlog] > 0)


# ------------------------------------------------------------------ SafetyShield


def test_safety_shield_counts_steps_since_the_target_changed() -> None:
    params = make_params()
    shield = SafetyShield(ShieldConfig(cooldown_steps=3))
    with pytest.raises(RuntimeError, match="reset"):
        shield.apply(make_obs(10, forecast=flat_forecast(0)), np.array([8.0]))
    shield.reset(params)
    assert shield.steps_since_change.tolist() == [3]  # no cooldown at the start
    current = 10
    seen = []
    for proposal in [8, 6, 6, 6, 6, 11, 10]:
        result = shield.apply(make_obs(current, forecast=flat_forecast(0)), np.array([proposal]))
        seen.append((int(result.targets[0]), result.reasons[0]))
        current = int(result.targets[0])
    # 10 -> 8 at step 0; steps 1 and 2 are in cooldown; step 3 may go down again; a
    # scale-up is never held; right after it, a scale-down waits again.
    assert seen == [
        (8, ""),
        (8, "cooldown"),
        (8, "cooldown"),
        (6, ""),
        (6, ""),
        (11, ""),
        (11, "cooldown"),
    ]
    assert shield.steps_since_change.tolist() == [2]
    # The property is a copy: callers cannot corrupt the state.
    shield.steps_since_change[:] = 0
    assert shield.steps_since_change.tolist() == [2]


# ------------------------------------------------------------------ ShieldedController


class ProposalController:
    """Proposes a fixed (possibly NaN) value per lane."""

    name = "proposer"

    def __init__(self, values: list[float]) -> None:
        self.values = np.array(values, dtype=np.float64)
        self.resets = 0

    def reset(self, params: ClusterParams) -> None:
        self.resets += 1

    def decide(self, obs: Observation) -> np.ndarray:
        return self.values.copy()


def test_shielded_controller_counts_interventions_per_reason() -> None:
    inner = ProposalController([0.0, np.nan, 12.0])
    controller = ShieldedController(inner)
    assert isinstance(controller, Controller)
    assert controller.name == "proposer"
    assert ShieldedController(inner, name="ppo+shield").name == "ppo+shield"
    controller.reset(make_params(3))
    assert inner.resets == 1
    assert controller.last is None
    assert set(controller.counts) == set(REASONS) | {
        "fallback:proposal",
        "fallback:forecast",
        "fallback:state",
    }
    assert not any(controller.counts.values())
    # Floor 8 everywhere; the second step starts where the first one left off.
    current = np.array([10, 10, 10])
    for _ in range(2):
        current = controller.decide(make_obs(current, forecast=flat_forecast(24000.0, 3), n=3))
    assert current.tolist() == [8, 10, 12]
    assert controller.last is not None
    assert controller.last.reasons == ("step+floor", "fallback:proposal", "")
    assert controller.counts == {
        "fallback": 2,
        "fallback:proposal": 2,
        "fallback:forecast": 0,
        "fallback:state": 0,
        "step": 2,
        "ceiling": 0,
        "budget": 0,
        "floor": 2,
        "backlog": 0,
        "cooldown": 0,
    }
    controller.reset(make_params(3))
    assert not any(controller.counts.values())
    assert controller.last is None


def ramp_episode(steps: int = 180) -> tuple[ClusterParams, np.ndarray, ForecastArrays]:
    """One default service under a daily-like wave of 2 to 15 jobs' load, and a
    perfect forecast of it."""
    t = np.arange(steps)
    arrivals = (6000 + 39000 * 0.5 * (1 - np.cos(2 * np.pi * t / 90)))[:, None]
    idx = np.minimum(t[:, None] + np.array(HORIZONS)[None, :] - 1, steps - 1)
    values = np.broadcast_to(
        arrivals[idx, 0][:, None, :, None], (steps, 1, len(HORIZONS), len(QUANTILES))
    )
    return make_params(), arrivals, ForecastArrays(values.copy(), HORIZONS, QUANTILES, "perfect")


def test_the_shield_keeps_a_policy_that_asks_for_nothing_within_its_sla() -> None:
    params, arrivals, forecast = ramp_episode()
    initial = np.array([2])
    bare = run_controller(params, arrivals, StaticController(0, "zero"), initial, forecast=forecast)
    controller = ShieldedController(StaticController(0, "zero"))
    shielded = run_controller(params, arrivals, controller, initial, forecast=forecast)
    assert bare.sla_compliance()[0] < 0.1
    assert shielded.sla_compliance()[0] > 0.99
    # Every step's zero was raised by the floor; nothing fell back.
    assert controller.counts["floor"] == len(arrivals)
    assert controller.counts["fallback"] == 0
    assert controller.counts["cooldown"] > 0
    assert controller.last is not None
    assert controller.last.targets.tolist() == shielded.target[-1].tolist()


def test_without_forecasts_the_shield_falls_back_every_step_and_still_serves() -> None:
    params, arrivals, _ = ramp_episode()
    controller = ShieldedController(StaticController(0, "zero"))
    log = run_controller(params, arrivals, controller, np.array([2]))
    assert controller.counts["fallback:forecast"] == len(arrivals)
    assert controller.counts["fallback"] == len(arrivals)
    assert log.sla_compliance()[0] > 0.99
    # The fallback rule never scales down.
    assert np.all(np.diff(log.target[:, 0]) >= 0)
