"""Hand-made controllers for tests: a residual policy that always asks for the rule's target
plus a fixed number of jobs, and its registration in a test's MLflow registry."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from autoscaler.runtime import registry_config
from autoscaler.settings import Settings
from models.controller.env import RuleSettings
from models.controller.policy_inputs import N_FEATURES
from models.controller.ppo import POLICY_SHIELD, LearnedPolicy, PPOConfig


def constant_policy(extra_jobs: int) -> LearnedPolicy:
    """A residual policy that always proposes the rule's target plus ``extra_jobs``."""
    limit = PPOConfig().action_limit
    bias = np.zeros(2 * limit + 1, np.float32)
    bias[limit + extra_jobs] = 1.0
    layers = [
        (np.zeros((4, N_FEATURES), np.float32), np.zeros(4, np.float32)),
        (np.zeros((2 * limit + 1, 4), np.float32), bias),
    ]
    return LearnedPolicy(layers, "residual", limit, RuleSettings(), POLICY_SHIELD)


def register_constant(
    settings: Settings, extra_jobs: int, tags: Mapping[str, str] | None = None
) -> str:
    """Register :func:`constant_policy` as a ``scaling-controller`` version; returns it."""
    from bench.control import HORIZONS, QUANTILES
    from models.controller import publish
    from models.controller.env import Randomization, RewardWeights
    from models.controller.ppo import PPOReport

    return publish.register(
        registry_config(settings, publish.MODEL_NAME),
        constant_policy(extra_jobs),
        horizons=HORIZONS,
        quantiles=QUANTILES,
        ppo=PPOConfig(),
        report=PPOReport(timesteps=0, seconds=0.0, stopped_by="hand-made"),
        weights=RewardWeights(),
        randomization=Randomization(),
        tags=tags,
    ).version
