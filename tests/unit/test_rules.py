"""Behaviour of the controller interface (base.py) and the rule controllers (rules.py).

The predictive rule's expected targets are computed from the formula in its
docstring; the lane machinery is checked by running controllers side by side and
alone and comparing every logged array.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, fields

import numpy as np
import pytest

from models.controller.base import Controller, LaneGroup, Observation, ScheduleController
from models.controller.rollout import ForecastArrays, run_controller
from models.controller.rules import PredictiveController, StaticController, peak_count
from simulator.config import STEP_S, ClusterParams, ServiceConfig
from simulator.metrics import SimLog
from simulator.run import simulate_schedule

HORIZONS = (1, 2, 3, 4, 5, 6)
QUANTILES = (0.5, 0.9, 0.99)


def make_params(n: int = 1, **overrides: object) -> ClusterParams:
    services = [ServiceConfig(service_id=f"s{i}", **overrides) for i in range(n)]  # type: ignore[arg-type]
    return ClusterParams.from_services(services)


def make_obs(
    n: int = 1,
    *,
    step: int = 0,
    queue: object = 0.0,
    forecast: np.ndarray | None = None,
    horizons: tuple[int, ...] = HORIZONS,
    quantiles: tuple[float, ...] = QUANTILES,
) -> Observation:
    """An observation of ``n`` lanes; arrays the rules do not read are zero."""
    given: dict[str, object] = {
        "step": step,
        "minute_of_day": step % 1440,
        "day_of_week": 0,
        "queue_length": np.broadcast_to(np.asarray(queue, dtype=np.float64), (n,)).copy(),
        "forecast": forecast,
        "horizons": horizons if forecast is not None else (),
        "quantiles": quantiles if forecast is not None else (),
    }
    for f in fields(Observation):
        if f.name not in given and f.default is MISSING and f.default_factory is MISSING:
            given[f.name] = np.zeros(n)
    return Observation(**given)  # type: ignore[arg-type]


def flat_forecast(n: int, value: float) -> np.ndarray:
    """Every horizon and quantile of every lane forecasts ``value`` events."""
    return np.full((n, len(HORIZONS), len(QUANTILES)), float(value))


# ------------------------------------------------------------------ Observation.subset


def test_observation_subset_keeps_the_chosen_lanes_of_every_array() -> None:
    n = 4
    values = {
        f.name: np.arange(n, dtype=np.float64) + 10 * i
        for i, f in enumerate(fields(Observation))
        if f.name not in ("step", "minute_of_day", "day_of_week", "forecast")
        and f.name not in ("horizons", "quantiles")
    }
    forecast = np.arange(n * 2 * 3, dtype=np.float64).reshape(n, 2, 3)
    obs = Observation(
        step=7,
        minute_of_day=7,
        day_of_week=2,
        forecast=forecast,
        horizons=(1, 2),
        quantiles=(0.1, 0.5, 0.9),
        **values,
    )
    lanes = np.array([3, 1])
    sub = obs.subset(lanes)
    for name, arr in values.items():
        np.testing.assert_array_equal(getattr(sub, name), arr[lanes], err_msg=name)
    assert sub.forecast is not None
    np.testing.assert_array_equal(sub.forecast, forecast[lanes])
    assert (sub.step, sub.minute_of_day, sub.day_of_week) == (7, 7, 2)
    assert (sub.horizons, sub.quantiles) == ((1, 2), (0.1, 0.5, 0.9))


def test_observation_subset_without_forecast_keeps_none() -> None:
    sub = make_obs(3).subset(np.array([0, 2]))
    assert sub.forecast is None
    assert sub.queue_length.shape == (2,)


# ------------------------------------------------------------------ StaticController


def test_static_controller_holds_its_count_whatever_is_observed() -> None:
    ctl = StaticController(7)
    ctl.reset(make_params(3))
    for step, queue in [(0, 0.0), (1, 1e6), (2, 5.0)]:
        out = ctl.decide(make_obs(3, step=step, queue=queue))
        np.testing.assert_array_equal(out, [7, 7, 7])
        assert out.dtype == np.int64


def test_static_controller_accepts_one_count_per_lane() -> None:
    ctl = StaticController(np.array([2, 5]), name="static-peak")
    ctl.reset(make_params(2))
    np.testing.assert_array_equal(ctl.decide(make_obs(2)), [2, 5])
    assert ctl.name == "static-peak"
    assert isinstance(ctl, Controller)


def test_static_controller_output_is_not_a_view_of_its_setting() -> None:
    ctl = StaticController(np.array([2, 5]))
    ctl.reset(make_params(2))
    out = ctl.decide(make_obs(2))
    out[:] = 0
    np.testing.assert_array_equal(ctl.decide(make_obs(2)), [2, 5])


def test_peak_count_serves_the_busiest_minute_at_full_speed() -> None:
    params = make_params(2, job_capacity_eps=10.0, min_jobs=1, max_jobs=50)  # 600 per step
    arrivals = np.array([[100.0, 0.0], [1201.0, 0.0], [600.0, 0.0]])
    # Lane 0: ceil(1201 / 600) = 3; lane 1 never sees an event, so min_jobs.
    np.testing.assert_array_equal(peak_count(arrivals, params), [3, 1])


def test_peak_count_is_bounded_by_max_jobs() -> None:
    params = make_params(1, job_capacity_eps=10.0, max_jobs=4)
    assert peak_count(np.array([[1e6]]), params)[0] == 4


# ------------------------------------------------------------------ PredictiveController

# One job serves 600 events per step; startup 90 s = 2 steps, so horizons 1..4 govern a
# decision; wait budget 60 - 0.1 = 59.9 s.
RULE_SERVICE = {
    "job_capacity_eps": 10.0,
    "job_startup_s": 90.0,
    "sla_latency_s": 60.0,
    "min_jobs": 1,
    "max_jobs": 50,
}


def expected_target(upper: float, queue: float, rho: float, drain_fraction: float) -> int:
    """The docstring's formula for RULE_SERVICE."""
    cap = 600.0
    drain_steps = drain_fraction * (60.0 - 0.1) / STEP_S
    return math.ceil(upper / (cap * rho) + queue / (cap * drain_steps))


def test_predictive_target_follows_the_documented_formula() -> None:
    ctl = PredictiveController(target_utilization=0.8, quantile_level=0.9, hold_steps=0)
    ctl.reset(make_params(1, **RULE_SERVICE))
    fc = flat_forecast(1, 100.0)
    fc[0, 2, 1] = 2000.0  # horizon 3, q0.9: the governed maximum
    out = ctl.decide(make_obs(forecast=fc, queue=300.0))
    # 2000 / (600 * 0.8) = 4.17 plus 300 / (600 * 0.499) = 1.00 -> ceil(5.17) = 6
    assert out[0] == 6 == expected_target(2000.0, 300.0, 0.8, 0.5)


def test_predictive_uses_the_requested_quantile_level() -> None:
    fc = flat_forecast(1, 0.0)
    fc[0, :, 0] = 600.0  # q0.5
    fc[0, :, 1] = 1200.0  # q0.9
    fc[0, :, 2] = 3000.0  # q0.99
    targets = {}
    for level in QUANTILES:
        ctl = PredictiveController(target_utilization=1.0, quantile_level=level, hold_steps=0)
        ctl.reset(make_params(1, **RULE_SERVICE))
        targets[level] = int(ctl.decide(make_obs(forecast=fc))[0])
    assert targets == {0.5: 1, 0.9: 2, 0.99: 5}


@pytest.mark.parametrize(
    ("startup_s", "governed_last"),
    [(0.0, 2), (60.0, 3), (90.0, 4), (150.0, 5)],
)
def test_predictive_only_looks_at_the_horizons_a_decision_governs(
    startup_s: float, governed_last: int
) -> None:
    service = {**RULE_SERVICE, "job_startup_s": startup_s}
    for h in HORIZONS:
        ctl = PredictiveController(target_utilization=1.0, quantile_level=0.9, hold_steps=0)
        ctl.reset(make_params(1, **service))
        fc = flat_forecast(1, 600.0)
        fc[0, h - 1, :] = 6000.0  # a spike at horizon h only
        out = int(ctl.decide(make_obs(forecast=fc))[0])
        assert out == (10 if h <= governed_last else 1), f"horizon {h}"


def test_predictive_drains_a_backlog_faster_with_a_smaller_drain_fraction() -> None:
    out = {}
    for fraction in (0.25, 0.5, 1.0):
        ctl = PredictiveController(
            target_utilization=1.0, quantile_level=0.5, drain_fraction=fraction, hold_steps=0
        )
        ctl.reset(make_params(1, **RULE_SERVICE))
        out[fraction] = int(ctl.decide(make_obs(forecast=flat_forecast(1, 0.0), queue=3000.0))[0])
        assert out[fraction] == expected_target(0.0, 3000.0, 1.0, fraction)
    assert out[0.25] > out[0.5] > out[1.0]


def test_predictive_target_is_clipped_to_min_and_max_jobs() -> None:
    service = {**RULE_SERVICE, "min_jobs": 2, "max_jobs": 5}
    ctl = PredictiveController(hold_steps=0)
    ctl.reset(make_params(2, **service))
    fc = np.stack([flat_forecast(1, 0.0)[0], flat_forecast(1, 1e6)[0]])
    np.testing.assert_array_equal(ctl.decide(make_obs(2, forecast=fc)), [2, 5])


def test_predictive_hold_window_delays_scale_down_but_not_scale_up() -> None:
    # Raw targets (rho = 1, q0.5): 600 events/job -> 10, 5, 5, 5, 5, 8, 3, 3, 3.
    raw_jobs = [10, 5, 5, 5, 5, 8, 3, 3, 3]
    ctl = PredictiveController(target_utilization=1.0, quantile_level=0.5, hold_steps=2)
    ctl.reset(make_params(1, **RULE_SERVICE))
    out = [
        int(ctl.decide(make_obs(step=t, forecast=flat_forecast(1, 600.0 * j)))[0])
        for t, j in enumerate(raw_jobs)
    ]
    # The target is the maximum of the raw target now and in the 2 steps before:
    # a scale-down waits until the higher ask has left that window; a scale-up is at once.
    assert out == [10, 10, 10, 5, 5, 8, 8, 8, 3]


def test_predictive_without_hold_follows_the_raw_target() -> None:
    raw_jobs = [10, 5, 8, 3]
    ctl = PredictiveController(target_utilization=1.0, quantile_level=0.5, hold_steps=0)
    ctl.reset(make_params(1, **RULE_SERVICE))
    out = [
        int(ctl.decide(make_obs(step=t, forecast=flat_forecast(1, 600.0 * j)))[0])
        for t, j in enumerate(raw_jobs)
    ]
    assert out == raw_jobs


def test_predictive_reset_forgets_the_hold_window() -> None:
    ctl = PredictiveController(target_utilization=1.0, quantile_level=0.5, hold_steps=10)
    params = make_params(1, **RULE_SERVICE)
    ctl.reset(params)
    ctl.decide(make_obs(forecast=flat_forecast(1, 6000.0)))
    ctl.reset(params)
    assert int(ctl.decide(make_obs(forecast=flat_forecast(1, 600.0)))[0]) == 1


def test_predictive_per_lane_settings_equal_one_controller_per_lane() -> None:
    """Array settings (one value per lane) behave as separate scalar controllers."""
    settings: dict[str, list[float]] = {
        "target_utilization": [0.6, 0.9, 0.75],
        "quantile_level": [0.5, 0.99, 0.9],
        "drain_fraction": [0.3, 1.0, 0.5],
        "hold_steps": [0, 4, 2],
    }
    n = 3
    params = make_params(n, **RULE_SERVICE)
    vector = PredictiveController(**{k: np.array(v) for k, v in settings.items()})
    vector.reset(params)
    singles = []
    for i in range(n):
        ctl = PredictiveController(**{k: np.asarray(v[i]) for k, v in settings.items()})
        ctl.reset(params.subset(np.array([i])))
        singles.append(ctl)
    rng = np.random.default_rng(5)
    for t in range(40):
        base = rng.uniform(0, 8000, size=(n, len(HORIZONS), 1))
        fc = np.sort(base * np.array([0.8, 1.0, 1.3]), axis=2)  # non-crossing quantiles
        obs = make_obs(n, step=t, forecast=fc, queue=rng.uniform(0, 2000, n))
        got = vector.decide(obs)
        want = [int(c.decide(obs.subset(np.array([i])))[0]) for i, c in enumerate(singles)]
        np.testing.assert_array_equal(got, want, err_msg=f"step {t}")


def test_predictive_needs_a_forecast() -> None:
    ctl = PredictiveController()
    ctl.reset(make_params(1, **RULE_SERVICE))
    with pytest.raises(ValueError, match="forecast"):
        ctl.decide(make_obs())


@pytest.mark.parametrize("level", [0.95, 0.8, 1.0, [0.9, 0.7]])
def test_predictive_rejects_a_quantile_level_the_forecast_lacks(level: object) -> None:
    n = 2
    ctl = PredictiveController(quantile_level=np.asarray(level))
    ctl.reset(make_params(n, **RULE_SERVICE))
    with pytest.raises(ValueError, match="quantile_level"):
        ctl.decide(make_obs(n, forecast=flat_forecast(n, 100.0)))


def test_predictive_needs_reset_before_decide() -> None:
    with pytest.raises(RuntimeError, match="reset"):
        PredictiveController().decide(make_obs(forecast=flat_forecast(1, 1.0)))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_utilization": 0.0},
        {"target_utilization": 1.2},
        {"target_utilization": np.array([0.5, -0.1])},
        {"drain_fraction": 0.0},
        {"hold_steps": -1},
    ],
)
def test_predictive_rejects_invalid_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        PredictiveController(**kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------ ScheduleController


def test_schedule_controller_replays_its_plan_row_by_row() -> None:
    plan = np.array([[1, 4], [2, 5], [3, 6]])
    ctl = ScheduleController(plan, name="oracle")
    ctl.reset(make_params(2))
    for t in range(3):
        np.testing.assert_array_equal(ctl.decide(make_obs(2, step=t)), plan[t])
    assert ctl.name == "oracle"


def test_schedule_controller_takes_a_1d_plan_as_one_lane() -> None:
    ctl = ScheduleController(np.array([3, 1, 2]))
    ctl.reset(make_params(1))
    assert [int(ctl.decide(make_obs(step=t))[0]) for t in range(3)] == [3, 1, 2]
    with pytest.raises(ValueError, match="lanes"):
        ctl.reset(make_params(2))


def test_schedule_controller_in_the_loop_equals_simulating_the_schedule() -> None:
    params = make_params(2, **RULE_SERVICE)
    rng = np.random.default_rng(1)
    arrivals = rng.uniform(0, 3000, size=(60, 2))
    plan = rng.integers(1, 8, size=(60, 2))
    a = run_controller(params, arrivals, ScheduleController(plan), np.array([2, 3]))
    b = simulate_schedule(params, arrivals, plan, np.array([2, 3]))
    assert_logs_equal(a, b, np.arange(2))


# ------------------------------------------------------------------ LaneGroup


def assert_logs_equal(whole: SimLog, alone: SimLog, lanes: np.ndarray) -> None:
    """Every per-lane array of ``whole`` at ``lanes`` equals ``alone``'s."""
    for f in fields(SimLog):
        if f.name in ("params", "start"):
            continue
        big, small = getattr(whole, f.name), getattr(alone, f.name)
        np.testing.assert_array_equal(big[..., lanes], small, err_msg=f.name)


@pytest.mark.parametrize(
    "members",
    [
        [[0, 1], [1, 2]],  # lane 1 twice
        [[0], [2]],  # lane 1 missing
        [[1, 2]],  # lane 0 missing
        [[0, 1], [3]],  # a gap
    ],
)
def test_lane_group_must_cover_each_lane_exactly_once(members: list[list[int]]) -> None:
    with pytest.raises(ValueError, match="exactly once"):
        LaneGroup([(StaticController(1), lanes) for lanes in members])


def test_lane_group_rejects_a_different_lane_count_at_reset() -> None:
    group = LaneGroup([(StaticController(1), [0]), (StaticController(2), [1])])
    with pytest.raises(ValueError, match="2 lanes"):
        group.reset(make_params(3))


def test_lane_group_routes_each_member_its_own_lanes() -> None:
    group = LaneGroup([(StaticController(np.array([4, 9])), [3, 0]), (StaticController(2), [1, 2])])
    group.reset(make_params(4))
    np.testing.assert_array_equal(group.decide(make_obs(4)), [9, 2, 2, 4])


def test_lane_group_run_equals_each_member_run_alone() -> None:
    services = [
        ServiceConfig(service_id="a", **RULE_SERVICE),  # type: ignore[arg-type]
        ServiceConfig(service_id="b", job_capacity_eps=25.0, job_startup_s=60.0, max_step=2),
        ServiceConfig(service_id="c", job_capacity_eps=8.0, rebalance_s=10.0, max_jobs=30),
        ServiceConfig(service_id="d", job_capacity_eps=15.0, job_startup_s=0.0),
        ServiceConfig(service_id="e", job_capacity_eps=20.0, sla_latency_s=30.0),
    ]
    params = ClusterParams.from_services(services)
    steps, n = 240, len(services)
    rng = np.random.default_rng(3)
    minute = np.arange(steps)[:, None]
    rate = 3000 * (1 + 0.6 * np.sin(2 * np.pi * minute / 120 + np.arange(n)))
    arrivals = rng.poisson(rate).astype(np.float64)
    # A noisy forecast of the true arrivals, so the rule's decisions vary.
    true_ahead = np.stack(
        [np.roll(arrivals, -(h - 1), axis=0) for h in HORIZONS], axis=2
    )  # (T, S, H)
    fc_values = true_ahead[..., None] * np.array([0.9, 1.1, 1.3])
    forecast = ForecastArrays(fc_values, HORIZONS, QUANTILES, "test")
    initial = np.array([5, 3, 4, 6, 2])
    plan = rng.integers(1, 12, size=(steps, 2))

    def members() -> list[tuple[Controller, list[int]]]:
        return [
            (
                PredictiveController(
                    target_utilization=np.array([0.7, 0.85]),
                    quantile_level=np.array([0.9, 0.5]),
                    hold_steps=np.array([3, 0]),
                ),
                [4, 0],
            ),
            (StaticController(np.array([6, 9])), [1, 3]),
            (ScheduleController(plan[:, :1], "plan"), [2]),
        ]

    whole = run_controller(params, arrivals, LaneGroup(members()), initial, forecast=forecast)
    for controller, lanes in members():
        idx = np.asarray(lanes)
        sub_forecast = ForecastArrays(fc_values[:, idx], HORIZONS, QUANTILES, "test")
        alone = run_controller(
            params.subset(idx), arrivals[:, idx], controller, initial[idx], forecast=sub_forecast
        )
        assert_logs_equal(whole, alone, idx)
    # The lanes really differ, so the comparison above is not trivially true.
    assert len({tuple(whole.target[:, i]) for i in range(n)}) == n
