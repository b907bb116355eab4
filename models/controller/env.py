"""The scaling environment: our cluster simulator as a gymnasium environment.

The environment is pure: it gets arrival series, forecasts and service profiles as
arguments and never touches MLflow, Feast or Prefect. One episode runs one service
(drawn from the sources, with randomised business context) for ``episode_steps``
one-minute steps. :class:`ScalingEnv` is the single-service gymnasium env;
:func:`make_vec_env` runs many episodes as lanes of one vectorised simulation, the
fast path PPO trains on. Both are the same :class:`ScalingCore`, so they cannot drift
apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd
from gymnasium import spaces

from models.controller.base import Observation
from models.controller.policy_inputs import GAP_BOUND, N_FEATURES, level_indices, policy_features
from models.controller.rollout import initial_jobs, observe
from models.controller.rules import PredictiveController
from models.controller.shield import SafetyShield, ShieldConfig
from simulator.cluster import ClusterSimulator, StepRecord
from simulator.config import ClusterParams, ServiceConfig

MODES = ("direct", "residual")


@dataclass(frozen=True)
class RuleSettings:
    """Settings of the calibrated predictive rule that residual control adjusts."""

    target_utilization: float = 0.8
    quantile_level: float = 0.95
    hold_steps: int = 10


@dataclass(frozen=True)
class EpisodeSource:
    """One service's arrivals with the forecasts a controller would have had.

    Attributes:
        name: Trace or service name.
        arrivals: Events per minute, shape (T,).
        forecast: Quantile forecasts made at each step, shape (T, H, Q): row t is
            the forecast available when deciding step t, for steps t + h - 1.
        horizons: Horizons in steps, ascending.
        quantiles: Quantile levels, ascending; must include the policy's levels.
        service: The service profile and cluster.
        start: Timestamp of ``arrivals[0]``.
        rule: The predictive rule's settings for this service (residual control).
    """

    name: str
    arrivals: np.ndarray
    forecast: np.ndarray
    horizons: tuple[int, ...]
    quantiles: tuple[float, ...]
    service: ServiceConfig
    start: pd.Timestamp
    rule: RuleSettings = field(default_factory=RuleSettings)

    def __post_init__(self) -> None:
        arr = np.asarray(self.arrivals, dtype=np.float64)
        fc = np.asarray(self.forecast)
        if arr.ndim != 1 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise ValueError(f"source {self.name!r}: arrivals must be finite, >= 0, shape (T,)")
        if fc.shape != (len(arr), len(self.horizons), len(self.quantiles)):
            raise ValueError(
                f"source {self.name!r}: forecast must have shape "
                f"({len(arr)}, {len(self.horizons)}, {len(self.quantiles)}), got {fc.shape}"
            )
        level_indices(self.quantiles)
        if max(self.horizons) < self.service.startup_steps + 2:
            raise ValueError(
                f"source {self.name!r}: forecasts must reach startup_steps + 2 = "
                f"{self.service.startup_steps + 2} steps"
            )

    def split(self, at: int) -> tuple[EpisodeSource, EpisodeSource]:
        """The steps before ``at`` and from ``at`` on, as two sources (times kept)."""
        if not 0 < at < len(self.arrivals):
            raise ValueError(f"split point {at} outside 1..{len(self.arrivals) - 1}")
        later = self.start + pd.Timedelta(minutes=at)
        return (
            replace(self, arrivals=self.arrivals[:at], forecast=self.forecast[:at]),
            replace(self, arrivals=self.arrivals[at:], forecast=self.forecast[at:], start=later),
        )


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the reward's terms; every term is dimensionless.

    Per step and service the reward is ``-scale * (cost * C + sla[tier] * M +
    latency * L + budget * B)`` where

    * C = jobs billed / the episode's mean demand in jobs (so running at 80%
      utilization costs 1.25 per step whatever the service's size or price);
    * M = events late or dropped / the misses the SLA allows per step on average
      (arrivals per step * (1 - sla_target)), so 1 means "exactly at the SLA";
    * L = queue drain time / the SLA's wait budget, the early warning before events
      turn late;
    * B = how far the spend rate of this step is above the daily budget (0 under it).

    The SLA weight depends on the service's criticality tier (1 is the most
    critical), which is how one policy serves different business contexts.
    """

    cost: float = 1.0
    sla: tuple[float, float, float] = (12.0, 6.0, 3.0)
    latency: float = 0.2
    budget: float = 1.0
    scale: float = 0.1

    def __post_init__(self) -> None:
        values = [self.cost, *self.sla, self.latency, self.budget, self.scale]
        if len(self.sla) != 3:
            raise ValueError("sla weights are one per criticality tier 1, 2, 3")
        if not all(math.isfinite(v) and v >= 0 for v in values) or self.scale == 0:
            raise ValueError("reward weights must be finite and >= 0, scale > 0")


@dataclass(frozen=True)
class Randomization:
    """Domain randomisation of each episode's service (ranges are uniform).

    Load is changed by scaling arrivals and forecasts together, so one trace yields
    services running near their floor, near their ceiling and in between.
    """

    enabled: bool = True
    load_scale: tuple[float, float] = (0.5, 1.5)
    price_scale: tuple[float, float] = (0.5, 2.0)
    sla_latency_scale: tuple[float, float] = (0.5, 2.0)
    sla_targets: tuple[float, ...] = (0.95, 0.99, 0.99, 0.995)
    criticality: tuple[int, ...] = (1, 2, 3)
    budget_headroom: tuple[float, float] = (0.8, 4.0)
    """Daily budget as a multiple of what the mean demand costs per day."""
    startup_s: tuple[float, ...] = (0.0, 60.0, 90.0, 120.0, 180.0)
    rebalance_s: tuple[float, float] = (0.0, 15.0)
    failure_rate_per_hour: tuple[float, float] = (0.0, 0.1)
    capacity_noise_cv: tuple[float, float] = (0.0, 0.1)


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


class ScalingCore:
    """S episodes side by side as lanes of one simulation; they start and end together.

    Args:
        sources: What episodes are drawn from (shared horizons and levels).
        n_lanes: Episodes run at once.
        episode_steps: Steps per episode.
        mode: ``direct`` (action = job change from the current target) or
            ``residual`` (action = change from the calibrated rule's target).
        action_limit: N; actions are 0..2N, meaning -N..+N.
        weights: Reward weights.
        randomization: Domain randomisation.
        shield: Shield settings; None runs the policy unshielded.
    """

    def __init__(
        self,
        sources: Sequence[EpisodeSource],
        n_lanes: int,
        episode_steps: int,
        mode: str = "residual",
        action_limit: int = 4,
        weights: RewardWeights | None = None,
        randomization: Randomization | None = None,
        shield: ShieldConfig | None = ShieldConfig(),
    ) -> None:
        if not sources:
            raise ValueError("at least one episode source is needed")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if action_limit < 1 or n_lanes < 1 or episode_steps < 2:
            raise ValueError("action_limit and n_lanes must be >= 1, episode_steps >= 2")
        first = sources[0]
        for src in sources:
            if src.horizons != first.horizons or src.quantiles != first.quantiles:
                raise ValueError("every source must share forecast horizons and levels")
        usable = [s for s in sources if len(s.arrivals) > episode_steps + 1]
        if not usable:
            raise ValueError(f"no source is longer than episode_steps + 1 = {episode_steps + 1}")
        self.sources = usable
        self.n_lanes = n_lanes
        self.episode_steps = episode_steps
        self.mode = mode
        self.action_limit = action_limit
        self.weights = weights or RewardWeights()
        self.randomization = randomization or Randomization()
        self.shield_config = shield
        self.horizons = first.horizons
        self.quantiles = first.quantiles
        # Episodes are drawn in proportion to how many episode starts each source has.
        lengths = np.array([len(s.arrivals) - episode_steps - 1 for s in usable], dtype=float)
        self._source_p = lengths / lengths.sum()
        self.t = 0
        self.params: ClusterParams | None = None
        self.services: list[ServiceConfig] = []
        self.source_names: list[str] = []

    # -- episode set-up ---------------------------------------------------------------

    def _draw(
        self, rng: np.random.Generator
    ) -> tuple[ServiceConfig, np.ndarray, np.ndarray, pd.Timestamp, RuleSettings, str]:
        src = self.sources[int(rng.choice(len(self.sources), p=self._source_p))]
        steps = self.episode_steps + 1  # one extra row for the final observation
        begin = int(rng.integers(0, len(src.arrivals) - steps))
        arr = np.asarray(src.arrivals[begin : begin + steps], dtype=np.float64)
        fc = np.asarray(src.forecast[begin : begin + steps], dtype=np.float64)
        svc = src.service
        r = self.randomization
        if r.enabled:
            load = _uniform(rng, r.load_scale)
            arr, fc = arr * load, fc * load
            startups = [s for s in r.startup_s if math.ceil(s / 60) + 2 <= max(self.horizons)]
            sla_latency = max(
                svc.sla_latency_s * _uniform(rng, r.sla_latency_scale),
                2.0 * svc.processing_time_s + 1.0,
            )
            price = svc.cost_per_job_hour * _uniform(rng, r.price_scale)
            mean_jobs = max(float(arr.mean()) / svc.job_step_capacity, 1.0)
            svc = replace(
                svc,
                cost_per_job_hour=price,
                sla_latency_s=sla_latency,
                sla_target=float(rng.choice(r.sla_targets)),
                criticality=int(rng.choice(r.criticality)),
                daily_budget=mean_jobs * price * 24 * _uniform(rng, r.budget_headroom),
                job_startup_s=float(rng.choice(startups)) if startups else svc.job_startup_s,
                rebalance_s=_uniform(rng, r.rebalance_s),
                job_failure_rate_per_hour=_uniform(rng, r.failure_rate_per_hour),
                capacity_noise_cv=_uniform(rng, r.capacity_noise_cv),
            )
        start = src.start + pd.Timedelta(minutes=begin)
        return svc, arr, fc, start, src.rule, src.name

    def reset(self, rng: np.random.Generator) -> np.ndarray:
        """Draw S new episodes; return their first observations, shape (S, F)."""
        draws = [self._draw(rng) for _ in range(self.n_lanes)]
        self.services = [replace(d[0], service_id=f"lane{i}") for i, d in enumerate(draws)]
        self.source_names = [d[5] for d in draws]
        self.params = p = ClusterParams.from_services(self.services)
        self._arrivals = np.stack([d[1] for d in draws], axis=1)  # (T+1, S)
        self._forecast = np.stack([d[2] for d in draws], axis=1)  # (T+1, S, H, Q)
        starts = [d[3] for d in draws]
        self._minute0 = np.array([s.hour * 60 + s.minute for s in starts])
        self._dow0 = np.array([s.dayofweek for s in starts])
        jobs0 = np.array(
            [initial_jobs(self._arrivals[0, i], s) for i, s in enumerate(self.services)]
        )
        seed = int(rng.integers(0, 2**31 - 1))
        self.sim = ClusterSimulator(p, jobs0, seed=seed)
        self.rule = PredictiveController(
            target_utilization=np.array([d[4].target_utilization for d in draws]),
            quantile_level=np.array([d[4].quantile_level for d in draws]),
            hold_steps=np.array([d[4].hold_steps for d in draws]),
        )
        self.rule.reset(p)
        self.shield = SafetyShield(self.shield_config) if self.shield_config else None
        if self.shield is not None:
            self.shield.reset(p)
        self._since_change = np.full(self.n_lanes, 10, dtype=np.int64)
        mean_arrivals = np.maximum(self._arrivals[:-1].mean(axis=0), 0.1 * p.job_step_capacity)
        self._ref_jobs = np.maximum(mean_arrivals / p.job_step_capacity, 1.0)
        self._allowed_miss = mean_arrivals * np.maximum(1.0 - p.sla_target, 1e-4)
        self.t = 0
        self._last: StepRecord | None = None
        self._joined = self.sim.begin_step()
        return self._observe()

    # -- stepping ---------------------------------------------------------------------

    def _observation(self) -> Observation:
        return observe(
            self.t,
            int(self._minutes()[0] % 1440),  # per lane below; the rule and shield ignore it
            int(self._days()[0]),
            self.sim,
            self._last,
            self._forecast[self.t],
            self.horizons,
            self.quantiles,
        )

    def _minutes(self) -> np.ndarray:
        return np.asarray(self._minute0 + self.t)

    def _days(self) -> np.ndarray:
        return np.asarray((self._dow0 + self._minutes() // 1440) % 7)

    def _observe(self) -> np.ndarray:
        assert self.params is not None
        self._obs = self._observation()
        self._rule_target = self.rule.decide(self._obs) if self.mode == "residual" else None
        return policy_features(
            self._obs,
            self.params,
            action_limit=self.action_limit,
            minute_of_day=self._minutes() % 1440,
            day_of_week=self._days(),
            steps_since_change=self._since_change,
            rule_target=self._rule_target,
        )

    def proposal(self, actions: np.ndarray) -> np.ndarray:
        """Target jobs the actions ask for, before the shield."""
        delta = np.asarray(actions, dtype=np.int64) - self.action_limit
        base = self._rule_target if self._rule_target is not None else self._obs.jobs_target
        return np.asarray(base + delta)

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], bool]:
        """Apply one action per lane.

        Returns:
            Next observations (S, F), rewards (S,), the reward's terms and the
            shield's interventions per lane, and whether the episodes ended.
        """
        p = self.params
        if p is None:
            raise RuntimeError("call reset() before step()")
        acts = np.asarray(actions).reshape(-1)
        if (
            acts.shape != (self.n_lanes,)
            or np.any(acts < 0)
            or np.any(acts > 2 * self.action_limit)
        ):
            raise ValueError(
                f"actions must be {self.n_lanes} integers in 0..{2 * self.action_limit}"
            )
        proposed = self.proposal(acts)
        if self.shield is not None:
            shielded = self.shield.apply(self._obs, proposed)
            target, intervened = shielded.targets, shielded.intervened.astype(np.float64)
        else:
            target, intervened = proposed, np.zeros(self.n_lanes)
        before = self._obs.jobs_target
        rec = self.sim.apply_target(target, self._joined, self._arrivals[self.t])
        changed = rec.target != before
        self._since_change = np.where(changed, 0, self._since_change + 1)
        self._last = rec
        w = self.weights
        cost = rec.billed / self._ref_jobs
        miss = (rec.late + rec.dropped) / self._allowed_miss
        rate = self.sim.state.running * p.job_capacity_eps
        drain = np.where(rate > 0, rec.queue / np.maximum(rate, 1e-9), 4 * p.wait_budget_s)
        latency = np.clip(drain / p.wait_budget_s, 0, 4)
        spend = rec.billed * p.cost_per_job_hour * 24
        budget = np.maximum(spend / np.maximum(p.daily_budget, 1e-9) - 1.0, 0.0)
        sla_w = np.asarray(w.sla)[p.criticality - 1]
        reward = -w.scale * (w.cost * cost + sla_w * miss + w.latency * latency + w.budget * budget)
        terms = {
            "cost": cost,
            "sla": miss,
            "latency": latency,
            "budget": budget,
            "money": rec.cost,
            "missed_events": rec.late + rec.dropped,
            "arrivals": rec.arrivals,
            "shield": intervened,
        }
        self.t += 1
        done = self.t >= self.episode_steps
        self._joined = self.sim.begin_step()
        return self._observe(), reward, terms, done


def observation_space() -> spaces.Box:
    return spaces.Box(-GAP_BOUND, GAP_BOUND, shape=(N_FEATURES,), dtype=np.float32)


class ScalingEnv(gym.Env[np.ndarray, np.integer]):
    """Scale one service's event-processing jobs; a gymnasium env over our simulator.

    ## Action Space

    ``Discrete(2N + 1)``: action ``a`` asks for ``a - N`` jobs relative to the current
    target (``mode="direct"``) or to the calibrated predictive rule's target
    (``mode="residual"``). The safety shield (``models.controller.shield``) then bounds
    the request (step limit, floor, ceiling, budget, cooldown); the simulator applies it.

    ## Observation Space

    ``Box(-8, 8, (24,), float32)``: the table in ``models.controller.policy_inputs``
    (forecast quantile gaps per horizon group relative to capacity, queue and latency
    against the SLA, utilization, starting jobs, headroom, time of day and week,
    criticality, SLA strictness, budget pressure, steps since the last change, startup
    delay, and the rule's gap for residual control). Every entry is relative, so one
    policy serves services of any size.

    ## Rewards

    Per step: ``-(cost + w_sla(tier) * misses + w_lat * latency + w_budget * overspend)``
    times a scale, each term dimensionless (:class:`RewardWeights`); the weights of the
    SLA term follow the service's criticality tier. ``info`` carries every term
    separately, plus the money spent and the events missed.

    ## Starting State

    A source is drawn (in proportion to its length), a start minute uniformly within
    it, and, with :class:`Randomization` enabled, the service's load level, price, SLA
    latency and target, tier, daily budget, startup delay, rebalance pause, failure
    rate and capacity noise. Jobs start at what the first minute needs at 80% load.

    ## Episode End

    Never terminates; truncates after ``episode_steps`` steps (one minute each).

    ## Arguments

    * ``sources``: :class:`EpisodeSource` list (arrivals, forecasts, service, rule).
    * ``episode_steps``: steps per episode (default 720, half a day).
    * ``mode``: ``direct`` or ``residual``.
    * ``action_limit``: N.
    * ``weights``, ``randomization``, ``shield``: see their classes; ``shield=None``
      trains unshielded.
    """

    metadata = {"render_modes": []}  # noqa: RUF012 - gymnasium declares it so

    def __init__(
        self,
        sources: Sequence[EpisodeSource],
        episode_steps: int = 720,
        mode: str = "residual",
        action_limit: int = 4,
        weights: RewardWeights | None = None,
        randomization: Randomization | None = None,
        shield: ShieldConfig | None = ShieldConfig(),
    ) -> None:
        self.core = ScalingCore(
            sources, 1, episode_steps, mode, action_limit, weights, randomization, shield
        )
        self.action_space = spaces.Discrete(2 * action_limit + 1)
        self.observation_space = observation_space()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        obs = self.core.reset(self.np_random)
        return obs[0], {"source": self.core.source_names[0]}

    def step(self, action: np.integer) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terms, done = self.core.step(np.array([int(action)]))
        info = {k: float(v[0]) for k, v in terms.items()}
        return obs[0], float(reward[0]), False, done, info


def make_vec_env(
    sources: Sequence[EpisodeSource],
    n_envs: int,
    episode_steps: int = 720,
    mode: str = "residual",
    action_limit: int = 4,
    weights: RewardWeights | None = None,
    randomization: Randomization | None = None,
    shield: ShieldConfig | None = ShieldConfig(),
    seed: int = 0,
) -> Any:
    """A stable-baselines3 ``VecEnv`` of ``n_envs`` lanes of one :class:`ScalingCore`.

    The fast path PPO trains on: one vectorised simulator step serves every lane.
    All lanes start and end together; at the end each info carries the lane's
    ``terminal_observation`` and the next episodes start. (The class is built here so
    that importing this module does not import stable-baselines3.)
    """
    from stable_baselines3.common.vec_env.base_vec_env import VecEnv

    core = ScalingCore(
        sources, n_envs, episode_steps, mode, action_limit, weights, randomization, shield
    )

    class ScalingVecEnv(VecEnv):
        def __init__(self) -> None:
            self.core = core
            self.render_mode = None
            self._rng = np.random.default_rng(seed)
            self._actions = np.zeros(n_envs, dtype=np.int64)
            super().__init__(n_envs, observation_space(), spaces.Discrete(2 * action_limit + 1))

        def reset(self) -> np.ndarray:
            if self._seeds[0] is not None:
                self._rng = np.random.default_rng(self._seeds[0])
                self._seeds = [None] * self.num_envs
            return self.core.reset(self._rng)

        def step_async(self, actions: np.ndarray) -> None:
            self._actions = np.asarray(actions, dtype=np.int64).reshape(-1)

        def step_wait(self) -> Any:
            obs, reward, terms, done = self.core.step(self._actions)
            infos: list[dict[str, Any]] = [
                {k: float(v[i]) for k, v in terms.items()} for i in range(self.num_envs)
            ]
            dones = np.full(self.num_envs, done)
            if done:
                for i, info in enumerate(infos):
                    info["terminal_observation"] = obs[i]
                    info["TimeLimit.truncated"] = True
                obs = self.core.reset(self._rng)
            return obs, reward.astype(np.float32), dones, infos

        def close(self) -> None:
            return None

        def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
            if attr_name == "render_mode":
                return [None] * self.num_envs
            return [getattr(self, attr_name)] * len(list(self._get_indices(indices)))

        def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
            setattr(self, attr_name, value)

        def env_method(
            self, method_name: str, *args: Any, indices: Any = None, **kwargs: Any
        ) -> list[Any]:
            raise NotImplementedError("lanes are not separate environments")

        def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
            return [False] * len(list(self._get_indices(indices)))

    return ScalingVecEnv()
