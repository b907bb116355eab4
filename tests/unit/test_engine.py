"""The decision engine: input table in, shielded decisions out, with honest fallbacks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from policies import constant_policy

from models.controller.package import ControllerPackage
from models.forecaster.model import HybridForecaster, NetworkConfig
from models.forecaster.package import Predictor
from models.forecaster.train import Forecaster
from serving.engine import CONTROLLER, FALLBACK_WINDOW, FORECASTER, DecisionEngine
from serving.inputs import DECISION_COLUMNS, REQUEST_COLUMNS

H = (1, 2, 3, 4, 5, 6, 8, 10, 15)
Q = (0.5, 0.9, 0.95, 0.99)
LIMIT = 4


class Models:
    """A model source holding fixed models; a missing one raises like the registry does."""

    def __init__(self, models: dict[str, tuple[Any, str]]) -> None:
        self.models = models
        self.calls: list[str] = []

    def get(self, model_name: str, alias: str = "champion") -> tuple[Any, str]:
        self.calls.append(model_name)
        if model_name not in self.models:
            raise LookupError(f"{model_name}@{alias} is not set")
        return self.models[model_name]


def constant_package(extra_jobs: int) -> ControllerPackage:
    """A residual policy that always asks for the rule's target plus ``extra_jobs``."""
    return ControllerPackage(constant_policy(extra_jobs), H, Q)


def tiny_forecaster() -> Predictor:
    import torch

    torch.manual_seed(0)
    net = HybridForecaster(NetworkConfig(hidden=8, heads=2, dropout=0.0))
    return Predictor(Forecaster(net, None))


def request(n: int = 3, level: float = 1200.0, seed: int = 0) -> pd.DataFrame:
    """A valid input table: ``n`` services with steady traffic around ``level``/min."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        recent = rng.poisson(level * (i + 1), 120).astype(float)
        rows.append(
            {
                "service_id": f"svc-{i}",
                "ts": pd.Timestamp("2026-11-27 12:00"),
                "recent_events_120m": recent.tolist(),
                "hourly_events_7d": (rng.poisson(level * (i + 1), 168) * 60.0).tolist(),
                "criticality": 1 + i % 3,
                "sla_latency_s": 60.0,
                "sla_target": 0.99,
                "cost_per_job_hour": 0.2,
                "daily_budget": 1000.0,
                "min_jobs": 1,
                "max_jobs": 40,
                "max_step": 4,
                "job_capacity_eps": 25.0,
                "job_startup_s": 90.0,
                "jobs_running": 2,
                "jobs_starting": 0,
                "queue_length": 0.0,
                "events_in": float(recent[-1]),
                "events_dropped": 0.0,
                "utilization": 0.6,
                "minute_of_day": 720,
                "day_of_week": 4,
                "events_processed": np.nan,
                "jobs_target": np.nan,
                "steps_since_change": np.nan,
                "budget_used_today": np.nan,
            }
        )
    return pd.DataFrame(rows)[list(REQUEST_COLUMNS)]


def test_without_models_the_rule_decides_from_recent_quantiles() -> None:
    frame = request()
    out = DecisionEngine(None).decide(frame)
    assert list(out.columns) == list(DECISION_COLUMNS)
    assert (out["controller"] == "predictive-rule").all()
    assert out["forecaster_version"].isna().all() and out["controller_version"].isna().all()
    recent = np.array(frame["recent_events_120m"].tolist())[:, -FALLBACK_WINDOW:]
    np.testing.assert_allclose(out["forecast_q50"], np.median(recent, axis=1))
    assert (out["forecast_q10"] <= out["forecast_q50"]).all()
    assert (out["forecast_q50"] <= out["forecast_q90"]).all()
    # The decision is for the minute after the last observed one, within the step limit.
    assert (out["ts"] == pd.Timestamp("2026-11-27 12:01")).all()
    assert (out["action"].abs() <= 4).all()
    assert (out["jobs_after"] == out["jobs_before"] + out["action"]).all()
    assert (out["jobs_before"] == 2).all()
    # More traffic, more jobs asked for (the rule reads the forecasts, not a constant).
    assert out["proposed_jobs"].is_monotonic_increasing


def test_champions_decide_and_their_versions_are_logged() -> None:
    models = Models({FORECASTER: (tiny_forecaster(), "7"), CONTROLLER: (constant_package(0), "3")})
    engine = DecisionEngine(models)
    out = engine.decide(request())
    assert (out["controller"] == "ppo").all()
    assert (out["forecaster_version"] == "7").all()
    assert (out["controller_version"] == "3").all()
    assert np.isfinite(out[["forecast_q10", "forecast_q50", "forecast_q90"]].to_numpy()).all()
    assert engine.used.problems == {}
    # A policy asking for two more jobs than the rule proposes exactly that before the shield.
    plus_two = DecisionEngine(
        Models({FORECASTER: (tiny_forecaster(), "7"), CONTROLLER: (constant_package(2), "4")})
    ).decide(request())
    np.testing.assert_array_equal(plus_two["proposed_jobs"], out["proposed_jobs"] + 2)


def test_a_moved_alias_is_served_on_the_next_call() -> None:
    models = Models({CONTROLLER: (constant_package(0), "1")})
    engine = DecisionEngine(models)
    assert (engine.decide(request())["controller_version"] == "1").all()
    models.models[CONTROLLER] = (constant_package(1), "2")
    assert (engine.decide(request())["controller_version"] == "2").all()


def test_missing_forecaster_falls_back_and_says_why() -> None:
    engine = DecisionEngine(Models({CONTROLLER: (constant_package(0), "3")}))
    out = engine.decide(request())
    assert (out["controller"] == "ppo").all()
    assert out["forecaster_version"].isna().all()
    assert "is not set" in engine.used.problems[FORECASTER]


def test_stale_rows_get_the_shield_fallback_and_never_scale_down() -> None:
    frame = request()
    frame["jobs_running"] = 9
    frame["stale"] = [False, True, False]
    out = DecisionEngine(None).decide(frame)
    assert out.loc[1, "shield_reason"].startswith("fallback")
    assert out.loc[1, "jobs_after"] >= 9
    assert np.isnan(out.loc[1, "forecast_q50"])
    assert not out.loc[0, "shield_reason"].startswith("fallback")


def test_cooldown_uses_steps_since_change() -> None:
    frame = request(level=10.0)  # little traffic: the rule wants fewer jobs
    frame["jobs_running"] = 12
    frame["steps_since_change"] = [0.0, 50.0, np.nan]
    out = DecisionEngine(None).decide(frame)
    assert out.loc[0, "jobs_after"] == 12 and "cooldown" in out.loc[0, "shield_reason"]
    assert out.loc[1, "jobs_after"] < 12
    assert out.loc[2, "jobs_after"] < 12  # unknown: long ago, no cooldown


def test_missing_columns_are_refused() -> None:
    with pytest.raises(ValueError, match="lacks columns"):
        DecisionEngine(None).decide(request().drop(columns=["max_jobs"]))


def test_empty_table_gives_no_decisions() -> None:
    out = DecisionEngine(None).decide(request().iloc[:0])
    assert list(out.columns) == list(DECISION_COLUMNS) and out.empty


def test_the_http_api_sends_the_engine_its_own_table() -> None:
    # The API's request model and the engine's table are declared in two places; a field
    # added to one only would reach the engine as a missing column.
    from serving import api

    assert api.REQUEST_FIELDS == REQUEST_COLUMNS
    assert api.DECISION_FIELDS == DECISION_COLUMNS


class BrokenForecaster:
    """A forecaster of the hybrid's shape that returns ``value`` for chosen services."""

    def __init__(self, value: float, bad: set[str] | None = None, error: bool = False) -> None:
        real = tiny_forecaster().forecaster
        self.horizons, self.quantiles = real.horizons, real.quantiles
        self.real, self.value, self.bad, self.error = real, value, bad, error

    def predict(self, inputs: Any, names: list[str]) -> np.ndarray:
        if self.error:
            raise RuntimeError("CUDA error: device-side assert triggered")
        out = np.array(self.real.predict(inputs, names), dtype=np.float64)
        for i, name in enumerate(names):
            if self.bad is None or name in self.bad:
                out[i] = self.value
        return out


@pytest.mark.parametrize("value", [np.nan, np.inf, -5.0])
def test_bad_forecasts_are_replaced_per_service_by_the_fallback(value: float) -> None:
    forecaster = Predictor(BrokenForecaster(value, bad={"svc-1"}))  # type: ignore[arg-type]
    models = Models({FORECASTER: (forecaster, "7"), CONTROLLER: (constant_package(0), "3")})
    engine = DecisionEngine(models)
    frame = request()
    out = engine.decide(frame)
    # The other services keep the model's forecasts; svc-1 gets the recent-window ones.
    assert out["forecaster_version"].tolist() == ["7", None, "7"]
    recent = np.array(frame["recent_events_120m"].tolist())[1, -FALLBACK_WINDOW:]
    assert out.loc[1, "forecast_q50"] == pytest.approx(np.median(recent))
    # The policy still decides for every service, from finite forecasts.
    assert (out["controller"] == "ppo").all()
    assert not out["shield_reason"].str.startswith("fallback").any()
    assert "svc" not in engine.used.problems[FORECASTER]  # counts, not ids, in the message
    assert "1 service(s)" in engine.used.problems[FORECASTER]


def test_a_crashing_forecaster_does_not_stop_the_decisions() -> None:
    forecaster = Predictor(BrokenForecaster(0.0, error=True))  # type: ignore[arg-type]
    engine = DecisionEngine(Models({FORECASTER: (forecaster, "7")}))
    out = engine.decide(request())
    assert len(out) == 3 and out["forecaster_version"].isna().all()
    assert "RuntimeError" in engine.used.problems[FORECASTER]
    assert np.isfinite(out["forecast_q50"]).all()
