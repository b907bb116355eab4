"""The scaling environment: gymnasium's checks, determinism, rewards, vectorised lanes."""

from __future__ import annotations

import numpy as np
import pytest
from control_sources import H, Q, daily_source

from models.controller.env import (
    EpisodeSource,
    Randomization,
    RewardWeights,
    ScalingCore,
    ScalingEnv,
    make_vec_env,
)
from models.controller.policy_inputs import FEATURES, N_FEATURES
from models.controller.shield import ShieldConfig


def test_check_env_passes() -> None:
    from gymnasium.utils.env_checker import check_env

    env = ScalingEnv([daily_source()], episode_steps=60)
    check_env(env, skip_render_check=True)
    assert env.observation_space.shape == (N_FEATURES,)
    assert len(FEATURES) == N_FEATURES
    assert env.action_space.n == 9


def _rollout(env: ScalingEnv, seed: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    seen, rewards = [obs], []
    for _ in range(steps):
        obs, reward, terminated, _, _ = env.step(rng.integers(0, 9))
        seen.append(obs)
        rewards.append(reward)
        assert not terminated
    return np.array(seen), np.array(rewards)


@pytest.mark.parametrize("mode", ["direct", "residual"])
def test_same_seed_same_episode(mode: str) -> None:
    sources = [daily_source("a", seed=1), daily_source("b", seed=2, peak=3000.0)]
    a = _rollout(ScalingEnv(sources, episode_steps=200, mode=mode), seed=5, steps=120)
    b = _rollout(ScalingEnv(sources, episode_steps=200, mode=mode), seed=5, steps=120)
    c = _rollout(ScalingEnv(sources, episode_steps=200, mode=mode), seed=6, steps=120)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_episode_truncates_and_observations_stay_in_space() -> None:
    env = ScalingEnv([daily_source()], episode_steps=50)
    obs, _ = env.reset(seed=0)
    for i in range(50):
        assert env.observation_space.contains(obs)
        obs, _, terminated, truncated, info = env.step(np.int64(i % 9))
        assert not terminated
        assert truncated == (i == 49)
        assert set(info) >= {"cost", "sla", "latency", "budget", "money", "shield"}


def test_reward_prefers_enough_jobs_to_starving() -> None:
    """Asking for -N every step starves the service; the SLA term must dominate."""
    src = daily_source(peak=30000.0)
    no_rand = Randomization(enabled=False)
    totals = {}
    for name, action in (("hold", 4), ("starve", 0)):
        env = ScalingEnv(
            [src], episode_steps=300, mode="direct", randomization=no_rand, shield=None
        )
        env.reset(seed=3)
        total, missed = 0.0, 0.0
        for _ in range(300):
            _, reward, _, _, info = env.step(np.int64(action))
            total += reward
            missed += info["missed_events"]
        totals[name] = (total, missed)
    assert totals["starve"][1] > 0
    assert totals["hold"][0] > totals["starve"][0]


def test_sla_weight_follows_criticality() -> None:
    """The same misses cost a tier-1 service more than a tier-3 one."""
    weights = RewardWeights()
    assert weights.sla[0] > weights.sla[2]
    src = daily_source(peak=30000.0)
    rewards = {}
    for tier in (1, 3):
        rnd = Randomization(
            enabled=True,
            criticality=(tier,),
            load_scale=(1.0, 1.0),
            price_scale=(1.0, 1.0),
            sla_latency_scale=(1.0, 1.0),
            sla_targets=(0.99,),
            budget_headroom=(2.0, 2.0),
            startup_s=(90.0,),
            rebalance_s=(5.0, 5.0),
            failure_rate_per_hour=(0.0, 0.0),
            capacity_noise_cv=(0.0, 0.0),
        )
        env = ScalingEnv([src], episode_steps=200, mode="direct", randomization=rnd, shield=None)
        env.reset(seed=4)
        rewards[tier] = sum(env.step(np.int64(0))[1] for _ in range(200))
    assert rewards[1] < rewards[3]


def test_vec_env_lanes_match_single_envs_in_shape_and_reset_together() -> None:
    vec = make_vec_env([daily_source()], n_envs=4, episode_steps=20, seed=1)
    obs = vec.reset()
    assert obs.shape == (4, N_FEATURES)
    for i in range(20):
        vec.step_async(np.full(4, 4))
        obs, rewards, dones, infos = vec.step_wait()
        assert rewards.shape == (4,)
        assert dones.all() == (i == 19)
    assert "terminal_observation" in infos[0]
    assert obs.shape == (4, N_FEATURES)


def test_vec_env_is_deterministic_per_seed() -> None:
    def run(seed: int) -> np.ndarray:
        vec = make_vec_env([daily_source()], n_envs=3, episode_steps=30, seed=seed)
        out = [vec.reset()]
        for _ in range(40):  # crosses an episode boundary
            vec.step_async(np.array([0, 4, 8]))
            out.append(vec.step_wait()[0])
        return np.array(out)

    np.testing.assert_array_equal(run(2), run(2))
    assert not np.array_equal(run(2), run(3))


def test_residual_action_is_relative_to_the_rule() -> None:
    core = ScalingCore(
        [daily_source()],
        1,
        50,
        "residual",
        4,
        RewardWeights(),
        Randomization(enabled=False),
        shield=None,
    )
    core.reset(np.random.default_rng(0))
    rule_target = core._rule_target
    assert rule_target is not None
    np.testing.assert_array_equal(core.proposal(np.array([6])), rule_target + 2)


def test_shielded_env_never_goes_below_the_floor() -> None:
    """Under the shield, even -N every step keeps the SLA near the target."""
    env = ScalingEnv(
        [daily_source(peak=30000.0)],
        episode_steps=400,
        mode="direct",
        randomization=Randomization(enabled=False),
        shield=ShieldConfig(),
    )
    env.reset(seed=0)
    missed = arrivals = 0.0
    for _ in range(400):
        _, _, _, _, info = env.step(np.int64(0))
        missed += info["missed_events"]
        arrivals += info["arrivals"]
    assert missed / arrivals < 0.02


def test_bad_sources_are_rejected() -> None:
    src = daily_source()
    with pytest.raises(ValueError, match="forecast must have shape"):
        EpisodeSource("x", src.arrivals, src.forecast[:-1], H, Q, src.service, src.start)
    with pytest.raises(ValueError, match="finite"):
        EpisodeSource("x", src.arrivals * np.nan, src.forecast, H, Q, src.service, src.start)
    with pytest.raises(ValueError, match="levels"):
        EpisodeSource("x", src.arrivals, src.forecast[:, :, :1], H, (0.5,), src.service, src.start)
    with pytest.raises(ValueError, match="longer than"):
        ScalingEnv([src], episode_steps=10**6)
    with pytest.raises(ValueError, match="mode"):
        ScalingEnv([src], mode="sideways")
