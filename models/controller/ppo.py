"""Train the PPO scaling policy and run it as a controller (``ppo``).

Training is stable-baselines3 PPO on :func:`models.controller.env.make_vec_env` (many
episodes as lanes of one vectorised simulation). After training, the policy's actor
network is copied out as plain NumPy matrices (:class:`LearnedPolicy`): a decision is
a few small matrix products, well under a millisecond, and serving never imports
stable-baselines3 or torch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.controller.base import Observation
from models.controller.env import (
    MODES,
    EpisodeSource,
    Randomization,
    RewardWeights,
    RuleSettings,
    make_vec_env,
)
from models.controller.policy_inputs import FEATURES, N_FEATURES, policy_features
from models.controller.rules import PredictiveController
from models.controller.shield import SafetyShield, ShieldConfig, ShieldResult
from simulator.config import ClusterParams

POLICY_SHIELD = ShieldConfig(cooldown_steps=2)
"""The shield policies train and serve under unless told otherwise. Its scale-down
cooldown is 2 steps, not the generic 5: residual control adjusts a rule that already
holds its scale-downs for a calibrated time, and a second, longer hold on top kept the
policy from following the rule down (measured on the control benchmark); 2 minutes
still stops a decision from flapping."""

MetricsLogger = Callable[[dict[str, float], int], None]
"""Receives metrics and the timestep (the flow passes ``mlflow.log_metrics``)."""


@dataclass(frozen=True)
class PPOConfig:
    """PPO's hyperparameters, all explicit (stable-baselines3 names where they match).

    Attributes:
        total_timesteps: Environment steps to train for (summed over lanes).
        max_minutes: Wall-clock budget; training stops at whichever comes first.
        mode: ``residual`` (adjust the calibrated rule) or ``direct``.
        action_limit: N, actions are -N..+N jobs.
        n_envs: Episodes simulated side by side.
        episode_steps: Minutes per episode.
        n_steps: Steps per lane per rollout (rollout = n_envs * n_steps samples).
        batch_size: Minibatch size of the PPO update.
        n_epochs: Passes over each rollout.
        learning_rate: Adam step size.
        gamma: Discount (0.99: decisions look about 100 minutes ahead).
        gae_lambda: GAE's bias/variance trade-off.
        clip_range: PPO's ratio clip.
        ent_coef: Entropy bonus (exploration).
        vf_coef: Value loss weight.
        max_grad_norm: Gradient clip.
        net_arch: Hidden layer sizes of the policy and the value network.
        seed: Seeds PPO, the networks and episode sampling.
        threads: torch threads; small networks are fastest on one.
    """

    total_timesteps: int = 4_000_000
    max_minutes: float = 14.0
    mode: str = "residual"
    action_limit: int = 4
    n_envs: int = 32
    episode_steps: int = 720
    n_steps: int = 256
    batch_size: int = 2048
    n_epochs: int = 5
    learning_rate: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.005
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    net_arch: tuple[int, ...] = (64, 64)
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if self.total_timesteps < 1 or self.max_minutes <= 0:
            raise ValueError("total_timesteps must be >= 1 and max_minutes > 0")
        if self.action_limit < 1 or self.n_envs < 1 or self.n_steps < 2:
            raise ValueError("action_limit, n_envs must be >= 1 and n_steps >= 2")
        if self.batch_size < 2 or self.n_epochs < 1 or not self.net_arch:
            raise ValueError("batch_size >= 2, n_epochs >= 1 and a hidden layer are needed")


@dataclass
class PPOReport:
    """What a training run did."""

    timesteps: int
    seconds: float
    stopped_by: str
    history: list[dict[str, float]] = field(default_factory=list)
    """Per rollout: timestep and the mean reward terms of its steps."""


class LearnedPolicy:
    """The trained actor as NumPy matrices: observation vectors in, actions out.

    Args:
        layers: (weight, bias) of each hidden layer (tanh) then the action layer.
        mode: ``residual`` or ``direct``.
        action_limit: N.
        rule: Default settings of the rule residual control adjusts (a service's own
            calibrated settings override them where known).
        shield: The shield the policy was trained under and is served with.
    """

    def __init__(
        self,
        layers: Sequence[tuple[np.ndarray, np.ndarray]],
        mode: str,
        action_limit: int,
        rule: RuleSettings,
        shield: ShieldConfig,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.layers = [(np.asarray(w, np.float32), np.asarray(b, np.float32)) for w, b in layers]
        if self.layers[0][0].shape[1] != N_FEATURES:
            raise ValueError(f"the policy expects {self.layers[0][0].shape[1]} features")
        if self.layers[-1][0].shape[0] != 2 * action_limit + 1:
            raise ValueError("the action layer does not match the action limit")
        self.mode = mode
        self.action_limit = action_limit
        self.rule = rule
        self.shield = shield

    def act(self, features: np.ndarray) -> np.ndarray:
        """Deterministic actions (0..2N) for observation vectors of shape (S, F)."""
        x = np.asarray(features, dtype=np.float32)
        for w, b in self.layers[:-1]:
            x = np.tanh(x @ w.T + b)
        w, b = self.layers[-1]
        return np.asarray(np.argmax(x @ w.T + b, axis=1))

    # -- persistence ------------------------------------------------------------------

    def save(self, folder: Path) -> Path:
        """Write ``policy.npz`` (weights) and ``policy.json`` (everything else)."""
        folder.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {}
        for i, (w, b) in enumerate(self.layers):
            arrays[f"w{i}"], arrays[f"b{i}"] = w, b
        np.savez(folder / "policy.npz", allow_pickle=False, **arrays)
        meta = {
            "format": 1,
            "features": list(FEATURES),
            "n_layers": len(self.layers),
            "mode": self.mode,
            "action_limit": self.action_limit,
            "rule": asdict(self.rule),
            "shield": asdict(self.shield),
        }
        (folder / "policy.json").write_text(json.dumps(meta, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: Path) -> LearnedPolicy:
        """Read a policy written by :meth:`save` (plain arrays: nothing is unpickled)."""
        meta = json.loads((folder / "policy.json").read_text())
        if meta.get("format") != 1:
            raise ValueError(f"unknown policy format {meta.get('format')!r} in {folder}")
        if tuple(meta["features"]) != FEATURES:
            raise ValueError("the saved policy was trained on a different observation vector")
        with np.load(folder / "policy.npz", allow_pickle=False) as data:
            layers = [(data[f"w{i}"], data[f"b{i}"]) for i in range(int(meta["n_layers"]))]
        return cls(
            layers,
            meta["mode"],
            int(meta["action_limit"]),
            RuleSettings(**meta["rule"]),
            ShieldConfig(**meta["shield"]),
        )


class PPOController:
    """The learned policy in the loop (``ppo``): features -> action -> shield.

    Args:
        policy: The trained policy.
        rule: Per-lane rule settings for residual control (defaults: the policy's).
        shielded: Apply the shield (always, except to measure what it does).
        name: Label in reports.
    """

    def __init__(
        self,
        policy: LearnedPolicy,
        rule: RuleSettings | Sequence[RuleSettings] | None = None,
        shielded: bool = True,
        name: str = "ppo",
    ) -> None:
        self.policy = policy
        self.name = name
        self._rule_settings = rule
        self.shield = SafetyShield(policy.shield) if shielded else None
        self.last: ShieldResult | None = None
        self.interventions: dict[str, int] = {}
        self._params: ClusterParams | None = None
        self._rule: PredictiveController | None = None
        self._since = np.zeros(1, dtype=np.int64)

    def reset(self, params: ClusterParams) -> None:
        n = params.n_services
        self._params = params
        self._since = np.full(n, 10, dtype=np.int64)
        if self.shield is not None:
            self.shield.reset(params)
        self.interventions = {}
        if self.policy.mode == "residual":
            given = self._rule_settings or self.policy.rule
            settings = [given] * n if isinstance(given, RuleSettings) else list(given)
            if len(settings) != n:
                raise ValueError(f"need rule settings for {n} lanes, got {len(settings)}")
            self._rule = PredictiveController(
                target_utilization=np.array([s.target_utilization for s in settings]),
                quantile_level=np.array([s.quantile_level for s in settings]),
                hold_steps=np.array([s.hold_steps for s in settings]),
            )
            self._rule.reset(params)

    def decide(self, obs: Observation) -> np.ndarray:
        p = self._params
        if p is None:
            raise RuntimeError("call reset() before decide()")
        n = p.n_services
        try:
            rule_target = self._rule.decide(obs) if self._rule is not None else None
            features = policy_features(
                obs,
                p,
                action_limit=self.policy.action_limit,
                minute_of_day=np.full(n, obs.minute_of_day),
                day_of_week=np.full(n, obs.day_of_week),
                steps_since_change=self._since,
                rule_target=rule_target,
            )
            actions = self.policy.act(features)
            base = rule_target if rule_target is not None else obs.jobs_target
            proposed = np.asarray(base + actions - self.policy.action_limit, dtype=np.float64)
        except ValueError:
            # No usable forecast: propose nothing and let the shield's fallback decide.
            proposed = np.full(n, np.nan)
        if self.shield is None:
            target = p.clip_target(
                np.nan_to_num(proposed, nan=0.0).astype(np.int64), obs.jobs_target
            )
        else:
            self.last = self.shield.apply(obs, proposed)
            target = self.last.targets
            for reason in self.last.reasons:
                if reason:
                    self.interventions[reason] = self.interventions.get(reason, 0) + 1
        self._since = np.where(target != obs.jobs_target, 0, self._since + 1)
        return np.asarray(target, dtype=np.int64)


def _extract(
    model: Any, config: PPOConfig, rule: RuleSettings, shield: ShieldConfig
) -> LearnedPolicy:
    """Copy the actor (hidden layers + action head) out of an SB3 PPO model."""
    import torch

    linears = [m for m in model.policy.mlp_extractor.policy_net if isinstance(m, torch.nn.Linear)]
    layers = [(m.weight.detach().cpu().numpy(), m.bias.detach().cpu().numpy()) for m in linears]
    head = model.policy.action_net
    layers.append((head.weight.detach().cpu().numpy(), head.bias.detach().cpu().numpy()))
    return LearnedPolicy(layers, config.mode, config.action_limit, rule, shield)


def train_ppo(
    sources: Sequence[EpisodeSource],
    config: PPOConfig,
    *,
    weights: RewardWeights | None = None,
    randomization: Randomization | None = None,
    shield: ShieldConfig | None = None,
    rule: RuleSettings | None = None,
    log_metrics: MetricsLogger | None = None,
    progress: Callable[[dict[str, float]], None] | None = None,
    save_model_to: Path | None = None,
) -> tuple[LearnedPolicy, PPOReport]:
    """Train PPO on episodes drawn from ``sources``.

    Args:
        sources: Arrivals, forecasts, services and rule settings to draw from.
        config: Hyperparameters and budget.
        weights: Reward weights (default :class:`RewardWeights`).
        randomization: Domain randomisation (default on).
        shield: The shield trained under and served with (default :data:`POLICY_SHIELD`).
        rule: Default rule settings stored with the policy (residual control).
        log_metrics: Called with each rollout's mean reward terms (MLflow in the flow).
        progress: Called with the same dictionary (console output).
        save_model_to: Also save stable-baselines3's own zip there (audit, resuming).

    Returns:
        The policy and a report.
    """
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback

    shield_cfg = shield or POLICY_SHIELD
    torch.set_num_threads(max(1, config.threads))
    env = make_vec_env(
        sources,
        config.n_envs,
        episode_steps=config.episode_steps,
        mode=config.mode,
        action_limit=config.action_limit,
        weights=weights,
        randomization=randomization,
        shield=shield_cfg,
        seed=config.seed,
    )
    env.seed(config.seed)
    report = PPOReport(timesteps=0, seconds=0.0, stopped_by="timesteps")
    deadline = time.perf_counter() + 60.0 * config.max_minutes
    start = time.perf_counter()

    class _Track(BaseCallback):
        """Averages the reward terms of each rollout; stops at the time budget."""

        def _on_rollout_start(self) -> None:
            self._sums: dict[str, float] = {}
            self._n = 0

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                for key in ("cost", "sla", "latency", "budget", "shield", "money"):
                    self._sums[key] = self._sums.get(key, 0.0) + info[key]
                self._sums["missed"] = self._sums.get("missed", 0.0) + info["missed_events"]
                self._sums["events"] = self._sums.get("events", 0.0) + info["arrivals"]
                self._n += 1
            self._sums["reward"] = self._sums.get("reward", 0.0) + float(
                np.sum(self.locals["rewards"])
            )
            if time.perf_counter() > deadline:
                report.stopped_by = "time budget"
                return False
            return True

        def _on_rollout_end(self) -> None:
            n = max(self._n, 1)
            row = {
                f"rollout/{k}": v / n
                for k, v in self._sums.items()
                if k not in ("missed", "events")
            }
            events = self._sums.get("events", 0.0)
            row["rollout/sla_compliance"] = 1.0 - self._sums.get("missed", 0.0) / max(events, 1.0)
            row["timesteps"] = float(self.num_timesteps)
            row["seconds"] = time.perf_counter() - start
            report.history.append(row)
            if log_metrics is not None:
                log_metrics({k: v for k, v in row.items() if k != "timesteps"}, self.num_timesteps)
            if progress is not None:
                progress(row)

    model = PPO(
        "MlpPolicy",
        env,
        learning_rate=config.learning_rate,
        n_steps=config.n_steps,
        batch_size=config.batch_size,
        n_epochs=config.n_epochs,
        gamma=config.gamma,
        gae_lambda=config.gae_lambda,
        clip_range=config.clip_range,
        ent_coef=config.ent_coef,
        vf_coef=config.vf_coef,
        max_grad_norm=config.max_grad_norm,
        policy_kwargs={"net_arch": list(config.net_arch)},
        seed=config.seed,
        device="cpu",
        verbose=0,
    )
    model.learn(total_timesteps=config.total_timesteps, callback=_Track())
    report.timesteps = int(model.num_timesteps)
    report.seconds = time.perf_counter() - start
    if save_model_to is not None:
        save_model_to.mkdir(parents=True, exist_ok=True)
        model.save(save_model_to / "sb3_ppo.zip")
    return _extract(model, config, rule or RuleSettings(), shield_cfg), report
