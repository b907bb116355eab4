"""The backtest flow end to end: a registered champion scored as ppo beside the rules.

A tiny PPO policy is registered in a fresh MLflow registry (SQLite in the state folder)
and made champion; the flow then runs the control benchmark on one small trace under the
session's Prefect test server and must score it, write the JSON records to the state
folder's bench/ and leave the table as an artifact. About 40 s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from control_sources import H, Q, daily_source

from autoscaler.runtime import registry_config
from autoscaler.settings import Settings, build_settings
from bench.control import CONTROLLERS, JSON_KEYS
from models import registry
from models.controller import publish

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    # MLflow's SQL store uses a SQLAlchemy loader strategy deprecated in SQLAlchemy 2.1.
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
    pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer column"),
]

SCENARIOS = """\
defaults:
  seed: 7
  history_fraction: 0.7
  rescale: {peak_eps: 100, quantile: 0.99}
  service: {job_capacity_eps: 25, max_jobs: 12, max_step: 4, daily_budget: 100000}
"""


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A state folder, a scenarios file and a traces folder holding one 5-day trace."""
    root = tmp_path_factory.mktemp("backtest")
    traces = root / "traces"
    traces.mkdir()
    n = 5 * 288
    minute = np.arange(n) * 5
    rate = 1000 * (1.2 + np.sin(2 * np.pi * minute / 1440)) * 5
    pd.DataFrame(
        {
            "timestamp": pd.date_range("2024-03-04", periods=n, freq="5min").strftime(
                "%Y-%m-%d %H:%M:%S"
            ),
            "value": np.random.default_rng(0).poisson(rate),
        }
    ).to_csv(traces / "small_5min.csv", index=False)
    (root / "scenarios.yaml").write_text(SCENARIOS)
    return {"state": root / "state", "traces": traces, "scenarios": root / "scenarios.yaml"}


@pytest.fixture(scope="module")
def settings(folders: dict[str, Path]) -> Settings:
    return build_settings(state_dir=folders["state"])


@pytest.fixture(scope="module")
def champion(settings: Settings) -> str:
    """A tiny PPO policy, registered and made champion (as a promotion would)."""
    from models.controller.env import Randomization, RewardWeights
    from models.controller.ppo import PPOConfig, train_ppo

    config = PPOConfig(
        total_timesteps=256,
        mode="direct",
        n_envs=2,
        n_steps=64,
        batch_size=64,
        n_epochs=1,
        episode_steps=120,
        net_arch=(8,),
    )
    policy, report = train_ppo(
        [daily_source("wave", days=1)], config, randomization=Randomization(enabled=False)
    )
    cfg = registry_config(settings, publish.MODEL_NAME)
    version = publish.register(
        cfg,
        policy,
        horizons=H,
        quantiles=Q,
        ppo=config,
        report=report,
        weights=RewardWeights(),
        randomization=Randomization(),
    )
    registry.set_alias(cfg, publish.MODEL_NAME, registry.CHAMPION, version.version)
    return version.version


@pytest.fixture(scope="module")
def backtest(
    prefect_harness: None, folders: dict[str, Path], champion: str
) -> tuple[dict[str, Any], Any]:
    """One backtest run: its result and its flow run id."""
    from flows.backtest import backtest_flow

    state = backtest_flow(
        traces_dir=str(folders["traces"]),
        include_synthetic=False,
        workers=1,
        scenarios_file=str(folders["scenarios"]),
        state_dir=str(folders["state"]),
        return_state=True,
    )
    return state.result(), state.state_details.flow_run_id


def test_the_champion_is_scored_as_ppo_beside_every_rule_and_the_oracle(
    backtest: tuple[dict[str, Any], Any], champion: str, settings: Settings
) -> None:
    result, _ = backtest
    assert result["scenarios"] == ["small_5min"]
    assert result["ppo"] == f"`models:/scaling-controller@champion` (version {champion})"
    path = Path(result["records_path"])
    assert path.parent == settings.bench_dir and path.name.startswith("backtest-")
    records = json.loads(path.read_text())
    assert records == result["records"]
    assert [r["controller"] for r in records] == list(CONTROLLERS)
    assert all(tuple(r) == JSON_KEYS for r in records)
    by_name = {r["controller"]: r for r in records}
    assert by_name["oracle"]["cost_vs_oracle"] == 1.0
    # The oracle is the cost bound of everyone meeting the SLA as well as it does.
    for r in records:
        if r["sla_compliance"] >= by_name["oracle"]["sla_compliance"]:
            assert r["cost"] >= by_name["oracle"]["cost"] - 1e-6


def test_the_table_is_an_artifact_of_the_run(backtest: tuple[dict[str, Any], Any]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    result, flow_run_id = backtest
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    (artifact,) = [a for a in artifacts if a.key == "backtest"]
    text = str(artifact.data)
    assert result["records_path"] in text
    assert "small_5min" in text and " ppo " in text and "perfect knowledge" in text


def test_an_unset_alias_skips_ppo_and_says_why(prefect_harness: None, tmp_path: Path) -> None:
    from flows.backtest import CONTROLLER_URI, load_registered_policy

    fresh = build_settings(state_dir=tmp_path / "state")
    policy, note = load_registered_policy.fn(fresh, CONTROLLER_URI)
    assert policy is None
    assert "alias `champion` of `scaling-controller` is not set" in note
