"""Behaviour of rule calibration (calibrate.py): the pick, the grid, and that the
vectorised calibration run scores every candidate exactly as a run of it alone would."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest

from models.controller.base import Controller
from models.controller.calibrate import Calibration, Family, calibrate, grid, lanes, pick
from models.controller.rollout import ForecastArrays, run_controller
from models.controller.rules import PredictiveController, StaticController
from simulator.config import ServiceConfig

# ------------------------------------------------------------------ pick


def test_pick_is_the_cheapest_lane_that_meets_the_target() -> None:
    costs = np.array([5.0, 3.0, 4.0, 1.0])
    sla = np.array([0.995, 0.99, 0.999, 0.98])
    assert pick(costs, sla, 0.99) == 1


def test_pick_counts_a_lane_exactly_at_the_target_as_meeting_it() -> None:
    assert pick(np.array([2.0, 1.0]), np.array([1.0, 0.99]), 0.99) == 1


def test_pick_without_a_lane_meeting_the_target_takes_the_best_sla() -> None:
    costs = np.array([1.0, 9.0, 5.0])
    sla = np.array([0.90, 0.97, 0.95])
    assert pick(costs, sla, 0.99) == 1


def test_pick_breaks_a_tie_in_best_sla_by_cost() -> None:
    costs = np.array([1.0, 9.0, 5.0, 7.0])
    sla = np.array([0.90, 0.97, 0.97, 0.97])
    assert pick(costs, sla, 0.99) == 2


def test_pick_takes_the_first_of_equal_candidates() -> None:
    assert pick(np.array([2.0, 2.0]), np.array([1.0, 1.0]), 0.99) == 0


# ------------------------------------------------------------------ grid


def test_grid_is_every_combination_in_order() -> None:
    assert grid(a=[1, 2], b=["x", "y", "z"]) == [
        {"a": 1, "b": "x"},
        {"a": 1, "b": "y"},
        {"a": 1, "b": "z"},
        {"a": 2, "b": "x"},
        {"a": 2, "b": "y"},
        {"a": 2, "b": "z"},
    ]


def test_grid_edge_cases() -> None:
    assert grid() == [{}]
    assert grid(a=[1], b=[]) == []
    assert len(grid(a=range(3), b=range(4), c=range(5))) == 60


# ------------------------------------------------------------------ calibrate

SERVICE = ServiceConfig(
    service_id="svc",
    job_capacity_eps=10.0,  # 600 events per step per job
    job_startup_s=60.0,
    sla_latency_s=60.0,
    sla_target=0.99,
    cost_per_job_hour=0.5,
    min_jobs=1,
    max_jobs=20,
    max_step=3,
)
STEPS = 360
HORIZONS = (1, 2, 3)
QUANTILES = (0.5, 0.9)


def arrivals() -> np.ndarray:
    """A busy cycle peaking near 6 jobs' worth of events, with Poisson noise."""
    minute = np.arange(STEPS)
    rate = 2000 + 1500 * np.sin(2 * np.pi * minute / 180)
    return np.random.default_rng(0).poisson(rate).astype(np.float64)


def forecasts(arr: np.ndarray) -> list[ForecastArrays]:
    """A perfect and a pessimistic forecast of ``arr`` (shape (T, 1, H, Q) each)."""
    ahead = np.stack([np.roll(arr, -(h - 1)) for h in HORIZONS], axis=1)  # (T, H)
    perfect = np.repeat(ahead[:, None, :, None], len(QUANTILES), axis=3)
    pessimistic = perfect * np.array([1.5, 2.0])
    return [
        ForecastArrays(perfect.copy(), HORIZONS, QUANTILES, "perfect"),
        ForecastArrays(pessimistic, HORIZONS, QUANTILES, "pessimistic"),
    ]


def families() -> dict[str, Family]:
    def static(s: Mapping[str, np.ndarray]) -> Controller:
        return StaticController(s["count"])

    def predictive(s: Mapping[str, np.ndarray]) -> Controller:
        return PredictiveController(
            target_utilization=s["target_utilization"], quantile_level=s["quantile_level"]
        )

    return {
        "static": Family(static, grid(count=[2, 4, 6, 8])),
        "predictive": Family(
            predictive,
            grid(_forecast=[0, 1], target_utilization=[0.7, 0.9], quantile_level=[0.5, 0.9]),
        ),
    }


def run_alone(family: Family, candidate: dict[str, object], arr: np.ndarray) -> tuple[float, float]:
    """Cost and SLA compliance of one candidate run by itself."""
    settings = {k: np.array([v]) for k, v in candidate.items() if not k.startswith("_")}
    fc = forecasts(arr)[int(candidate.get("_forecast", 0))]  # type: ignore[call-overload]
    log = run_controller(
        lanes(SERVICE, 1), arr[:, None], family.make(settings), np.array([3]), forecast=fc, seed=4
    )
    return float(log.total_cost()[0]), float(log.sla_compliance()[0])


@pytest.fixture(scope="module")
def calibrated() -> tuple[np.ndarray, dict[str, Calibration]]:
    arr = arrivals()
    return arr, calibrate(families(), SERVICE, arr, 3, forecasts=forecasts(arr), seed=4)


def test_calibrate_scores_every_candidate_as_a_run_of_it_alone(
    calibrated: tuple[np.ndarray, dict[str, Calibration]],
) -> None:
    arr, result = calibrated
    fams = families()
    assert set(result) == set(fams)
    for name, fam in fams.items():
        cal = result[name]
        assert cal.candidates == fam.candidates
        assert cal.costs.shape == cal.sla.shape == (len(fam.candidates),)
        for i, cand in enumerate(fam.candidates):
            cost, sla = run_alone(fam, cand, arr)
            assert cal.costs[i] == pytest.approx(cost, rel=1e-12), (name, cand)
            assert cal.sla[i] == pytest.approx(sla, rel=1e-12), (name, cand)


def test_calibrate_chooses_per_family_with_pick(
    calibrated: tuple[np.ndarray, dict[str, Calibration]],
) -> None:
    _, result = calibrated
    for name, cal in result.items():
        best = pick(cal.costs, cal.sla, SERVICE.sla_target)
        assert cal.chosen == cal.candidates[best], name


def test_calibrate_choices_are_sensible(
    calibrated: tuple[np.ndarray, dict[str, Calibration]],
) -> None:
    _, result = calibrated
    # The cheapest fixed count that serves the peak: more jobs only cost more, fewer miss.
    static = result["static"]
    assert static.chosen["count"] == 6
    assert static.sla[2] >= SERVICE.sla_target > static.sla[0]
    assert np.all(np.diff(static.costs) > 0)
    # A perfect forecast lets the rule meet the target more cheaply than any static count.
    pred = result["predictive"]
    assert pred.sla[pred.candidates.index(pred.chosen)] >= SERVICE.sla_target
    assert pred.chosen["_forecast"] == 0
    assert min(pred.costs) < static.costs[2]


def test_calibrate_with_unreachable_target_takes_the_best_sla() -> None:
    arr = arrivals() * 3.5  # the peak needs 21 jobs, max_jobs is 20
    fam = {"static": Family(lambda s: StaticController(s["count"]), grid(count=[5, 20, 10]))}
    result = calibrate(fam, SERVICE, arr, 3)["static"]
    assert (result.sla < SERVICE.sla_target).all()
    assert result.chosen == {"count": 20}
    assert result.sla[1] > result.sla[2] > result.sla[0]


def test_calibrate_without_forecasts_runs_forecast_free_rules() -> None:
    fam = {"static": Family(lambda s: StaticController(s["count"]), grid(count=[3, 7]))}
    result = calibrate(fam, SERVICE, arrivals(), 3)["static"]
    assert result.chosen == {"count": 7}
    assert result.costs[1] > result.costs[0]


def test_calibrate_rejects_a_family_without_candidates() -> None:
    fam = {"empty": Family(lambda s: StaticController(1), [])}
    with pytest.raises(ValueError, match="'empty'"):
        calibrate(fam, SERVICE, arrivals(), 3)


def test_lanes_are_independent_copies_of_the_service() -> None:
    params = lanes(SERVICE, 3)
    assert params.service_ids == ("svc#0", "svc#1", "svc#2")
    np.testing.assert_array_equal(params.job_capacity_eps, [10.0] * 3)
    np.testing.assert_array_equal(params.startup_steps, [1] * 3)
