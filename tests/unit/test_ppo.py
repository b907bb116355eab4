"""PPO training, the learned policy as a controller, its package and the registry round trip."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from control_sources import H, Q, daily_source
from model_files import requirements_of

from models.controller.env import Randomization, RuleSettings, ScalingEnv
from models.controller.package import ControllerPackage, decide_frame, example_frame
from models.controller.policy_inputs import N_FEATURES
from models.controller.ppo import LearnedPolicy, PPOConfig, PPOController, train_ppo
from models.controller.rollout import ForecastArrays, run_controller
from models.controller.shield import ShieldConfig
from simulator.config import ClusterParams

SMALL = PPOConfig(
    total_timesteps=40_000,
    mode="direct",
    n_envs=8,
    n_steps=128,
    batch_size=256,
    n_epochs=4,
    episode_steps=240,
    learning_rate=1e-3,
    net_arch=(32, 32),
    seed=3,
)


# One rollout of two 32-step lanes through a two-layer network: enough to extract, save,
# package and register a policy, whose round trips hold for any weights.
TINY = replace(
    SMALL, total_timesteps=64, n_envs=2, n_steps=32, batch_size=64, n_epochs=1, net_arch=(16, 16)
)


def _train(config: PPOConfig, folder: Path) -> tuple[LearnedPolicy, Path]:
    policy, report = train_ppo(
        [daily_source("a", seed=1), daily_source("b", seed=2, peak=12000.0)],
        config,
        randomization=Randomization(enabled=False),
        shield=ShieldConfig(),
        save_model_to=folder,
    )
    assert report.timesteps >= config.total_timesteps
    assert report.history and "rollout/reward" in report.history[-1]
    return policy, folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[LearnedPolicy, Path]:
    """40,000 steps (several seconds): for the claim that training learns something."""
    return _train(SMALL, tmp_path_factory.mktemp("sb3"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[LearnedPolicy, Path]:
    return _train(TINY, tmp_path_factory.mktemp("sb3-tiny"))


def _episode_return(env: ScalingEnv, act: object, seed: int) -> float:
    obs, _ = env.reset(seed=seed)
    total = 0.0
    rng = np.random.default_rng(seed)
    for _ in range(env.core.episode_steps):
        if act == "random":
            action = rng.integers(0, env.action_space.n)
        else:
            action = int(act.act(obs[None, :])[0])  # type: ignore[attr-defined]
        obs, reward, _, truncated, _ = env.step(np.int64(action))
        total += reward
        if truncated:
            break
    return total


@pytest.mark.slow
def test_short_ppo_run_beats_a_random_policy(trained: tuple[LearnedPolicy, Path]) -> None:
    policy, _ = trained
    env = ScalingEnv(
        [daily_source("a", seed=1), daily_source("b", seed=2, peak=12000.0)],
        episode_steps=240,
        mode="direct",
        randomization=Randomization(enabled=False),
    )
    learned = np.mean([_episode_return(env, policy, s) for s in range(6)])
    random = np.mean([_episode_return(env, "random", s) for s in range(6)])
    assert learned > random + 0.1 * abs(random)


def test_extracted_policy_acts_like_stable_baselines(tiny: tuple[LearnedPolicy, Path]) -> None:
    from stable_baselines3 import PPO

    policy, folder = tiny
    model = PPO.load(folder / "sb3_ppo.zip", device="cpu")
    obs = np.random.default_rng(0).uniform(-3, 3, size=(200, N_FEATURES)).astype(np.float32)
    expected, _ = model.predict(obs, deterministic=True)
    np.testing.assert_array_equal(policy.act(obs), expected)


def test_policy_save_load_round_trip(tiny: tuple[LearnedPolicy, Path], tmp_path: Path) -> None:
    policy, _ = tiny
    loaded = LearnedPolicy.load(policy.save(tmp_path / "p"))
    obs = np.random.default_rng(1).normal(size=(50, N_FEATURES)).astype(np.float32)
    np.testing.assert_array_equal(loaded.act(obs), policy.act(obs))
    assert (loaded.mode, loaded.action_limit, loaded.rule) == (
        policy.mode,
        policy.action_limit,
        policy.rule,
    )
    (tmp_path / "p" / "policy.json").write_text('{"format": 9}')
    with pytest.raises(ValueError, match="unknown policy format"):
        LearnedPolicy.load(tmp_path / "p")


def _run(
    policy: LearnedPolicy, steps: int = 600, forecast: bool = True
) -> tuple[object, PPOController]:
    src = daily_source("a", seed=4)
    ctl = PPOController(policy, rule=RuleSettings())
    fc = ForecastArrays(src.forecast[:steps, None].astype(np.float32), H, Q, "exact")
    log = run_controller(
        ClusterParams.from_services([src.service]),
        src.arrivals[:steps, None],
        ctl,
        np.array([5]),
        forecast=fc if forecast else None,
    )
    return log, ctl


@pytest.mark.slow
def test_ppo_controller_runs_in_the_loop_behind_the_shield(
    trained: tuple[LearnedPolicy, Path],
) -> None:
    policy, _ = trained
    log, ctl = _run(policy)
    assert float(log.sla_compliance()[0]) > 0.95  # type: ignore[attr-defined]
    assert ctl.last is not None
    # Without forecasts the policy cannot act: every decision is the shield's fallback.
    _, blind = _run(policy, steps=50, forecast=False)
    assert blind.interventions == {"fallback:forecast": 50}
    # The same for residual control, whose rule needs the forecast too.
    residual = LearnedPolicy(
        policy.layers, "residual", policy.action_limit, policy.rule, policy.shield
    )
    _, blind = _run(residual, steps=50, forecast=False)
    assert blind.interventions == {"fallback:forecast": 50}


def test_package_decides_like_the_controller(
    tiny: tuple[LearnedPolicy, Path], tmp_path: Path
) -> None:
    policy, _ = tiny
    pkg = ControllerPackage.load(ControllerPackage(policy, H, Q).save(tmp_path / "c"))
    frame = example_frame(H, Q, n=4)
    out = decide_frame(pkg, frame)
    assert list(out.columns) == ["target_jobs", "proposed_jobs", "shield_reason"]
    assert out["target_jobs"].dtype == np.int64
    # Same answer as the in-loop controller on the same observation.
    row = frame.iloc[[1]].reset_index(drop=True)
    again = decide_frame(pkg, row)
    assert again["target_jobs"].iloc[0] == out["target_jobs"].iloc[1]
    # A missing forecast value: that row falls back, the others are untouched.
    bad = frame.copy()
    bad.loc[2, "f_h1_q90"] = np.nan
    out_bad = decide_frame(pkg, bad)
    assert out_bad["shield_reason"].iloc[2].startswith("fallback:")
    pd.testing.assert_frame_equal(out_bad.drop(index=2), out.drop(index=2))
    with pytest.raises(ValueError, match="missing input columns"):
        decide_frame(pkg, frame.drop(columns=["queue_length"]))
    worse = frame.copy()
    worse.loc[0, "job_capacity_eps"] = -1.0
    with pytest.raises(ValueError, match="job_capacity_eps"):
        decide_frame(pkg, worse)


@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
@pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer column")
def test_registered_controller_round_trips_and_the_gate_judges_it(
    tiny: tuple[LearnedPolicy, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from models import registry
    from models.controller import publish
    from models.controller.env import RewardWeights
    from models.controller.ppo import PPOReport

    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    cfg = registry.RegistryConfig(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifacts_dir=tmp_path / "artifacts",
        experiment="controller-test",
    )
    policy, _ = tiny
    version = publish.register(
        cfg,
        policy,
        horizons=H,
        quantiles=Q,
        ppo=SMALL,
        report=PPOReport(timesteps=10, seconds=1.0, stopped_by="timesteps"),
        weights=RewardWeights(),
        randomization=Randomization(),
    )
    model = registry.load(cfg, f"models:/{publish.MODEL_NAME}@{registry.CHALLENGER}")
    frame = example_frame(H, Q)
    expected = decide_frame(ControllerPackage(policy, H, Q), frame)
    pd.testing.assert_frame_equal(model.predict(frame), expected)
    # The optional columns may be left out.
    lean = frame.drop(columns=["rule_target", "rule_target_utilization", "rule_quantile_level"])
    assert len(model.predict(lean)) == len(frame)

    needs = requirements_of(cfg, version.model_uri)
    assert {r.split("==")[0] for r in needs} == set(publish.REQUIREMENTS)
    loaded, _ = publish.load_policy(cfg, version.model_uri)
    obs = np.random.default_rng(2).normal(size=(20, N_FEATURES)).astype(np.float32)
    np.testing.assert_array_equal(loaded.act(obs), policy.act(obs))

    # The gate replays challenger, rule (and champion) on validation sources.
    validation = [daily_source("v", seed=9)]
    decision, scores = publish.gate(cfg, version.version, policy, validation)
    assert set(scores) == {"challenger", "predictive"}
    assert decision.metric == publish.GATE_METRIC
    ratio = publish.cost_ratio(scores["challenger"], scores["predictive"])
    sla_ok = publish.sla_shortfall(scores["challenger"], scores["predictive"]) is None
    assert decision.promoted == (ratio < 1.0 and sla_ok)
    tags = registry.client(cfg).get_model_version(publish.MODEL_NAME, version.version).tags
    assert tags["gate.requirement.sla_vs_predictive"].startswith("met" if sla_ok else "failed")
