"""The train-controller flow end to end: scenarios, PPO, MLflow on SQLite, the gate.

Runs on the session's shared state (Prefect's temporary server, the MLflow registry in the
state folder) with one small synthetic scenario and a short PPO run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autoscaler.runtime import registry_config
from autoscaler.settings import Settings
from models import registry
from models.controller import publish
from models.controller.package import example_frame

pytestmark = [
    pytest.mark.integration,
    # MLflow's SQL store uses a SQLAlchemy loader strategy deprecated in SQLAlchemy 2.1.
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
    # The output's target_jobs is an integer column by design (a job count).
    pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer column"),
]

SCENARIOS = """\
defaults:
  seed: 7
  history_fraction: 0.7
  rescale: {peak_eps: 150, quantile: 0.99}
  service: {job_capacity_eps: 25, max_jobs: 20, max_step: 4, daily_budget: 100000}
synthetic:
  - {name: flow_checkout, service_profile: checkout, days: 12, seed: 5}
"""
QUICK: dict[str, Any] = {
    # Two rollouts of 8 lanes x 256 steps: the curve needs two points, the gate any policy.
    "timesteps": 4_096,
    "max_minutes": 1.0,
    "episode_steps": 240,
    "n_envs": 8,
    "validation_days": 0.5,
    "include_synthetic": True,
    # Only this file's scenario: without it the flow also calibrates every real trace
    # found in the traces folder (six of them on a developer machine, minutes of work).
    "traces": ["flow_checkout"],
}


@pytest.fixture(scope="module")
def scenarios_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("controller") / "scenarios.yaml"
    path.write_text(SCENARIOS)
    return path


@pytest.fixture(scope="module")
def first_training(
    pipeline_settings: Settings, prefect_harness: None, scenarios_file: Path
) -> dict[str, Any]:
    from flows.train_controller import train_controller_flow

    return train_controller_flow(
        scenarios_file=str(scenarios_file),
        forecaster_uri=None,
        state_dir=str(pipeline_settings.state_dir),
        **QUICK,
    )


def test_flow_registers_a_challenger_with_curves_and_a_gate_decision(
    pipeline_settings: Settings, first_training: dict[str, Any]
) -> None:
    cfg = registry_config(pipeline_settings, publish.MODEL_NAME)
    version = first_training["version"]
    assert registry.resolve_alias(cfg, publish.MODEL_NAME, registry.CHALLENGER) == version
    assert first_training["timesteps"] >= QUICK["timesteps"]
    assert first_training["forecasts"] == "stand-in providers"
    client = registry.client(cfg)
    run = client.get_run(first_training["run_id"])
    assert run.data.params["ppo_mode"] == "residual"
    assert run.data.tags["traces"] == "flow_checkout"
    assert run.data.params["reward_sla"] == "12.0,6.0,3.0"
    # The training callback logged one point per rollout to the same run.
    curve = client.get_metric_history(first_training["run_id"], "rollout/reward")
    assert len(curve) >= 2
    assert [m.step for m in curve] == sorted(m.step for m in curve)
    # The gate compared with the calibrated rule on the validation range, and its decision
    # follows the logged scores and the SLA requirement.
    metrics = run.data.metrics
    tags = run.data.tags
    cheaper = metrics["gate_challenger_validation_cost_vs_rule"] < 1.0
    sla_met = tags["gate.requirement.sla_vs_predictive"] == "met"
    assert first_training["promoted"] == (cheaper and sla_met)
    assert tags["gate.decision"] == ("promoted" if first_training["promoted"] else "refused")


def test_registered_controller_decides_through_the_registry(
    pipeline_settings: Settings, first_training: dict[str, Any]
) -> None:
    cfg = registry_config(pipeline_settings, publish.MODEL_NAME)
    model = registry.load(cfg, registry.version_uri(publish.MODEL_NAME, first_training["version"]))
    policy, _ = publish.load_policy(
        cfg, registry.version_uri(publish.MODEL_NAME, first_training["version"])
    )
    from bench.control import HORIZONS, QUANTILES

    frame = example_frame(HORIZONS, QUANTILES)
    out = model.predict(frame)
    assert (out["target_jobs"] >= frame["min_jobs"]).all()
    assert (out["target_jobs"] <= frame["max_jobs"]).all()
    # Within the step limit of the current target, as the shield guarantees.
    current = frame["jobs_running"] + frame["jobs_starting"]
    assert (np.abs(out["target_jobs"] - current) <= frame["max_step"]).all()
    assert policy.mode == "residual"


def test_second_run_is_judged_against_the_champion(
    pipeline_settings: Settings, first_training: dict[str, Any], scenarios_file: Path
) -> None:
    from flows.train_controller import train_controller_flow

    cfg = registry_config(pipeline_settings, publish.MODEL_NAME)
    if not first_training["promoted"]:
        # Make the first one champion by hand, as a user would in the MLflow UI.
        registry.set_alias(cfg, publish.MODEL_NAME, registry.CHAMPION, first_training["version"])
    second = train_controller_flow(
        scenarios_file=str(scenarios_file),
        forecaster_uri=None,
        state_dir=str(pipeline_settings.state_dir),
        seed=1,
        **QUICK,
    )
    run = registry.client(cfg).get_run(second["run_id"])
    assert "gate_champion_validation_cost_vs_rule" in run.data.metrics
    assert "gate.requirement.sla_vs_champion" in run.data.tags
    champion = registry.resolve_alias(cfg, publish.MODEL_NAME, registry.CHAMPION)
    assert champion == (second["version"] if second["promoted"] else first_training["version"])
