"""Registering the scaling controller in MLflow and judging it on validation traces.

The registered model ``scaling-controller`` is a pyfunc over the saved controller
folder (:mod:`models.controller.package`): one row per service (profile, state,
forecast quantiles) in, the shielded target job count out.

The gate replays controllers in the simulator on validation sources (the end of each
trace's training range, never trained on). Its metric ``validation_cost_vs_rule`` is
the geometric mean over traces of cost / the calibrated predictive rule's cost on the
same trace; lower is better. The challenger must beat the current champion and the
rule on it, and on every trace its SLA compliance must be at least the lower of the
opponent's and the SLA target ("at equal or better SLA").
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models import registry
from models.controller.base import Controller
from models.controller.env import EpisodeSource, Randomization, RewardWeights
from models.controller.package import OPTIONAL_COLUMNS, ControllerPackage, example_frame
from models.controller.ppo import LearnedPolicy, PPOConfig, PPOController, PPOReport
from models.controller.rollout import ForecastArrays, initial_jobs, run_controller
from models.controller.rules import PredictiveController
from models.requirements import MODEL_RUNTIME, pinned_requirements
from simulator.config import ClusterParams

MODEL_NAME = "scaling-controller"
LOADER = "models.controller.package:load_predictor"
GATE_METRIC = "validation_cost_vs_rule"
RULE = "predictive"
REQUIREMENTS = MODEL_RUNTIME
"""What the registered controller needs to load and predict: its policy is NumPy, no torch."""


@dataclass(frozen=True)
class TraceScore:
    """One controller on one validation source."""

    trace: str
    cost: float
    sla_compliance: float
    sla_target: float


def score(
    make: Callable[[EpisodeSource], Controller], sources: Sequence[EpisodeSource], seed: int = 0
) -> list[TraceScore]:
    """Replay a controller on each source (from the same initial state) and score it."""
    out = []
    for src in sources:
        params = ClusterParams.from_services([src.service])
        forecast = ForecastArrays(
            values=np.asarray(src.forecast, dtype=np.float32)[:, None],
            horizons=src.horizons,
            quantiles=src.quantiles,
            label="validation",
        )
        j0 = initial_jobs(float(src.arrivals[0]), src.service)
        log = run_controller(
            params,
            np.asarray(src.arrivals, dtype=np.float64)[:, None],
            make(src),
            np.array([j0]),
            forecast=forecast,
            start=src.start,
            seed=seed,
        )
        out.append(
            TraceScore(
                src.name,
                float(log.total_cost()[0]),
                float(log.sla_compliance()[0]),
                src.service.sla_target,
            )
        )
    return out


def rule_controller(src: EpisodeSource) -> Controller:
    """The calibrated predictive rule with the source's settings."""
    r = src.rule
    return PredictiveController(
        target_utilization=r.target_utilization,
        quantile_level=r.quantile_level,
        hold_steps=r.hold_steps,
    )


def policy_controller(policy: LearnedPolicy) -> Callable[[EpisodeSource], Controller]:
    """``ppo`` on a source, with the source's rule settings for residual control."""
    return lambda src: PPOController(policy, rule=src.rule)


def cost_ratio(scores: Sequence[TraceScore], rule: Sequence[TraceScore]) -> float:
    """Geometric mean over traces of cost / the rule's cost (the gate's metric)."""
    ratios = [s.cost / r.cost for s, r in zip(scores, rule, strict=True) if r.cost > 0]
    if not ratios:
        raise ValueError("the rule cost nothing on every validation trace; nothing to compare")
    return float(math.exp(np.mean(np.log(np.maximum(ratios, 1e-12)))))


def sla_shortfall(scores: Sequence[TraceScore], opponent: Sequence[TraceScore]) -> str | None:
    """None if ``scores`` match ``opponent``'s SLA (or the target) on every trace."""
    short = []
    for s, o in zip(scores, opponent, strict=True):
        needed = min(o.sla_compliance, s.sla_target)
        if s.sla_compliance < needed - 1e-9:
            short.append(f"{s.trace} {100 * s.sla_compliance:.3f}% < {100 * needed:.3f}%")
    return ", ".join(short) or None


def validation_markdown(scores: Mapping[str, Sequence[TraceScore]]) -> str:
    """Per-trace validation table (cost, SLA compliance %) of every controller replayed."""
    who = list(scores)
    lines = [
        "## Validation (cost, SLA compliance %)",
        "",
        "| trace | " + " | ".join(who) + " |",
        "|---|" + "---|" * len(who),
    ]
    for i, row in enumerate(scores[who[0]]):
        cells = [f"{scores[w][i].cost:.2f}, {100 * scores[w][i].sla_compliance:.3f}" for w in who]
        lines.append(f"| {row.trace} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_policy(config: registry.RegistryConfig, model_uri: str) -> tuple[LearnedPolicy, Any]:
    """The policy inside a registered ``scaling-controller`` (and the pyfunc itself)."""
    model = registry.load(config, model_uri)
    package = registry.folder_predictor(model)
    if not isinstance(package, ControllerPackage):
        raise TypeError(f"{model_uri} is not a scaling controller")
    return package.policy, model


def gate(
    config: registry.RegistryConfig,
    version: str,
    policy: LearnedPolicy,
    validation: Sequence[EpisodeSource],
    seed: int = 0,
) -> tuple[registry.GateDecision, dict[str, list[TraceScore]]]:
    """Score challenger, champion and rule on ``validation``; move ``champion`` if earned."""
    rule = score(rule_controller, validation, seed)
    scores = {"challenger": score(policy_controller(policy), validation, seed), RULE: rule}
    champion_version = registry.resolve_alias(config, MODEL_NAME, registry.CHAMPION)
    champion_score = None
    requirements = {f"sla_vs_{RULE}": sla_shortfall(scores["challenger"], rule)}
    if champion_version is not None:
        champion, _ = load_policy(config, registry.version_uri(MODEL_NAME, champion_version))
        scores["champion"] = score(policy_controller(champion), validation, seed)
        champion_score = cost_ratio(scores["champion"], rule)
        requirements["sla_vs_champion"] = sla_shortfall(scores["challenger"], scores["champion"])
    decision = registry.promotion_gate(
        config,
        model_name=MODEL_NAME,
        challenger_version=version,
        metric=GATE_METRIC,
        challenger_score=cost_ratio(scores["challenger"], rule),
        champion_score=champion_score,
        baseline_scores={RULE: 1.0},
        champion_version=champion_version,
        requirements=requirements,
    )
    return decision, scores


def register(
    config: registry.RegistryConfig,
    policy: LearnedPolicy,
    *,
    horizons: tuple[int, ...],
    quantiles: tuple[float, ...],
    ppo: PPOConfig,
    report: PPOReport,
    weights: RewardWeights,
    randomization: Randomization,
    validation: Mapping[str, Sequence[TraceScore]] | None = None,
    tags: Mapping[str, str] | None = None,
    run_id: str | None = None,
) -> registry.RegisteredVersion:
    """Log the run (hyperparameters, reward weights, final scores) and register the model.

    Args:
        run_id: The run training logged its curves to (:func:`models.registry.training_run`);
            None starts a new run.
    """
    package = ControllerPackage(policy, horizons, quantiles)
    example = example_frame(horizons, quantiles)
    signature = registry.infer_signature(
        example, package.predict(example), optional=OPTIONAL_COLUMNS
    )
    params: dict[str, Any] = {f"ppo_{k}": v for k, v in asdict(ppo).items()}
    params["ppo_net_arch"] = ",".join(str(x) for x in ppo.net_arch)
    params.update({f"reward_{k}": v for k, v in asdict(weights).items()})
    params["reward_sla"] = ",".join(str(x) for x in weights.sla)
    params["randomization"] = str(asdict(randomization))
    params["shield"] = str(asdict(policy.shield))
    params["horizons"] = ",".join(str(h) for h in horizons)
    params["quantiles"] = ",".join(str(q) for q in quantiles)
    metrics: dict[str, float] = {
        "train_seconds": report.seconds,
        "train_timesteps": float(report.timesteps),
    }
    if report.history:
        last = report.history[-1]
        metrics.update(
            {k.replace("/", "_"): v for k, v in last.items() if k.startswith("rollout/")}
        )
    for who, rows in (validation or {}).items():
        for row in rows:
            metrics[f"validation_{who}_cost_{row.trace}"] = row.cost
            metrics[f"validation_{who}_sla_{row.trace}"] = row.sla_compliance
    metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
    with tempfile.TemporaryDirectory(prefix="controller-") as tmp:
        folder = package.save(Path(tmp) / "controller")
        return registry.log_and_register(
            config,
            model_name=MODEL_NAME,
            python_model=registry.FolderModel(LOADER),
            artifacts={registry.FOLDER_ARTIFACT: str(folder)},
            signature=signature,
            input_example=example,
            params=params,
            metrics=metrics,
            figures={},
            tags={"stopped_by": report.stopped_by, "mode": policy.mode, **(tags or {})},
            run_id=run_id,
            pip_requirements=pinned_requirements(REQUIREMENTS),
        )
