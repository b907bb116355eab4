"""The train-forecaster flow end to end: Feast training set, MLflow on SQLite, the gate.

Runs on the session's shared pipeline state (simulated history ingested and featurized by
the real flows), with a short training so the module stays around a minute.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from pipeline_state import PIPELINE_END, PIPELINE_SERVICES

from autoscaler.runtime import registry_config
from autoscaler.settings import Settings
from models import registry
from models.forecaster import package, publish

pytestmark = [
    pytest.mark.integration,
    # MLflow's SQL store uses a SQLAlchemy loader strategy deprecated in SQLAlchemy 2.1.
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
]

QUICK: dict[str, Any] = {"epochs": 0.5, "max_minutes": 1.0, "eval_days": 1.0, "hidden": 16}


@pytest.fixture(scope="module")
def first_training(pipeline_settings: Settings, pipeline_run: dict[str, Any]) -> dict[str, Any]:
    from flows.train_forecaster import train_forecaster_flow

    return train_forecaster_flow(
        services=PIPELINE_SERVICES, state_dir=str(pipeline_settings.state_dir), **QUICK
    )


def _run(settings: Settings, run_id: str) -> Any:
    return registry.client(registry_config(settings, publish.MODEL_NAME)).get_run(run_id)


def test_flow_registers_a_challenger_with_its_evidence(
    pipeline_settings: Settings, first_training: dict[str, Any]
) -> None:
    cfg = registry_config(pipeline_settings, publish.MODEL_NAME)
    version = first_training["version"]
    assert registry.resolve_alias(cfg, publish.MODEL_NAME, registry.CHALLENGER) == version
    run = _run(pipeline_settings, first_training["run_id"])
    metrics = run.data.metrics
    for h in (15, 60, 120):
        for m in ("mase", "wql", "coverage_80"):
            assert np.isfinite(metrics[f"{m}_h{h}"])
            assert np.isfinite(metrics[f"seasonal_naive_day_{m}_h{h}"])
    assert metrics["train_steps"] >= 1
    assert run.data.params["horizons"] == "1,5,15,30,60,120"
    # The gate had no champion to beat: it compared with the baselines only, and its
    # decision follows the logged scores.
    beats = all(
        metrics["gate_challenger_wql"] < metrics[f"gate_baseline_{b}_wql"]
        for b in ("seasonal_naive_day", "seasonal_naive_week")
    )
    assert first_training["promoted"] == beats
    assert run.data.tags["gate.decision"] == ("promoted" if beats else "refused")
    champion = registry.resolve_alias(cfg, publish.MODEL_NAME, registry.CHAMPION)
    assert champion == (version if beats else None)


def test_registered_model_serves_online_features(
    pipeline_settings: Settings, first_training: dict[str, Any]
) -> None:
    """The registered pyfunc forecasts from what the online store serves right now."""
    from autoscaler.runtime import feast_config
    from features.store import online_features, open_store

    cfg = registry_config(pipeline_settings, publish.MODEL_NAME)
    model = registry.load(cfg, f"models:/{publish.MODEL_NAME}@{registry.CHALLENGER}")
    online = online_features(
        open_store(feast_config(pipeline_settings)),
        PIPELINE_SERVICES,
        "forecaster_v1",
        with_timestamps=True,
    )
    frame = package.input_from_online(online)
    assert (frame["ts"] == PIPELINE_END - pd.Timedelta(minutes=1)).all()
    out = model.predict(frame)
    assert list(out["service_id"]) == PIPELINE_SERVICES
    cols = [package.column_name(60, q) for q in (0.05, 0.5, 0.95)]
    values = out[cols].to_numpy()
    assert np.isfinite(values).all() and (np.diff(values, axis=1) >= 0).all()
    # The median an hour ahead is of the order of the last hour's traffic.
    last_hour = np.array([np.nanmean(r[-60:]) for r in frame["recent_events_120m"]])
    ratio = out[package.column_name(60, 0.5)].to_numpy() / last_hour
    assert ((ratio > 0.2) & (ratio < 5)).all()


def test_second_training_is_judged_against_the_champion(
    pipeline_settings: Settings, first_training: dict[str, Any]
) -> None:
    from flows.train_forecaster import train_forecaster_flow

    cfg = registry_config(pipeline_settings, publish.MODEL_NAME)
    champion_before = registry.resolve_alias(cfg, publish.MODEL_NAME, registry.CHAMPION)
    second = train_forecaster_flow(
        services=PIPELINE_SERVICES,
        state_dir=str(pipeline_settings.state_dir),
        seed=1,
        **QUICK,
    )
    assert int(second["version"]) == int(first_training["version"]) + 1
    metrics = _run(pipeline_settings, second["run_id"]).data.metrics
    champion_after = registry.resolve_alias(cfg, publish.MODEL_NAME, registry.CHAMPION)
    if champion_before is None:
        assert "gate_champion_wql" not in metrics
    else:
        # Both versions were scored on the same origins; the better one is champion now.
        challenger, champion = metrics["gate_challenger_wql"], metrics["gate_champion_wql"]
        baselines_beaten = all(
            challenger < metrics[f"gate_baseline_{b}_wql"]
            for b in ("seasonal_naive_day", "seasonal_naive_week")
        )
        wins = challenger < champion and baselines_beaten
        expected = second["version"] if wins else champion_before
        assert champion_after == expected
        assert second["promoted"] == (expected == second["version"])
