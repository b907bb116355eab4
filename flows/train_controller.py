"""The `train-controller` flow: simulator episodes -> PPO -> validate -> register -> gate.

Each task is one call to a tested function:

1. ``load_sources``: the scenarios of the scenarios file (every trace found in the
   traces folder, and the synthetic ones) are calibrated as the control benchmark does
   (:func:`bench.control.prepare_scenario`). Forecasts come from the registered
   forecaster (``forecaster_uri``, precomputed per trace) where one exists; before it
   does, from the stand-in: the conformal persistence and seasonal-naive providers of
   :mod:`models.controller.providers`. Each scenario's calibration range is split: the
   last ``validation_days`` validate, the rest trains.
2. ``fit``: PPO (:mod:`models.controller.ppo`) on the training sources with domain
   randomisation; every rollout's reward terms go to the MLflow run as curves.
3. ``register``: the same run gets the model, ``scaling-controller``, alias
   ``challenger`` (:mod:`models.controller.publish`).
4. ``gate``: challenger, current champion and the calibrated rule replayed on the
   validation sources; ``champion`` moves only if the challenger is cheaper at equal
   or better SLA.

Every parameter is typed, so the Prefect UI shows a form for manual runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from autoscaler.runtime import registry_config
from autoscaler.settings import Settings, build_settings
from models import registry
from models.controller import publish
from models.controller.env import EpisodeSource, Randomization, RewardWeights
from models.controller.ppo import LearnedPolicy, PPOConfig, PPOReport, train_ppo

IO_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [2, 5, 15],
    "cache_policy": NO_CACHE,
}
FORECASTER_URI = "models:/event-forecaster@champion"


def load_forecaster(settings: Settings, uri: str | None) -> Any:
    """The registered forecaster behind ``uri``, or None (no URI, or nothing registered)."""
    if not uri:
        return None
    from models.forecaster import publish as forecaster_publish

    config = registry_config(settings, forecaster_publish.MODEL_NAME)
    name, _, alias = uri.removeprefix("models:/").partition("@")
    if alias and registry.resolve_alias(config, name, alias) is None:
        return None
    predictor = registry.folder_predictor(registry.load(config, uri))
    return predictor.forecaster


def split_sources(
    sources: list[EpisodeSource], validation_steps: int, min_train_steps: int
) -> tuple[list[EpisodeSource], list[EpisodeSource]]:
    """Each source's last ``validation_steps`` validate; the rest trains.

    Raises:
        ValueError: If no source leaves ``min_train_steps`` to train on.
    """
    train, validate = [], []
    for src in sources:
        at = len(src.arrivals) - validation_steps
        if at < min_train_steps:
            continue
        head, tail = src.split(at)
        train.append(head)
        validate.append(tail)
    if not train:
        raise ValueError(
            f"no scenario is long enough for {validation_steps} validation steps plus "
            f"{min_train_steps} training steps; lower validation_days or episode_steps"
        )
    return train, validate


@task(**IO_RETRIES)
def load_sources(
    settings: Settings,
    traces: list[str] | None,
    include_synthetic: bool,
    forecaster_uri: str | None,
    validation_days: float,
    min_train_steps: int,
) -> tuple[list[EpisodeSource], list[EpisodeSource], str]:
    """Calibrated scenarios as training and validation sources, and the forecast source."""
    from bench.control import prepare_scenario
    from bench.scenarios import load_scenarios

    logger = get_run_logger()
    traces_dir = settings.traces_dir if settings.traces_dir.is_dir() else None
    scenarios = load_scenarios(settings.scenarios_file, traces_dir)
    if not include_synthetic:
        scenarios = [s for s in scenarios if s.trace_path is not None]
    if traces:
        unknown = set(traces) - {s.name for s in scenarios}
        if unknown:
            raise ValueError(
                f"unknown scenarios {sorted(unknown)}; known: {[s.name for s in scenarios]}"
            )
        scenarios = [s for s in scenarios if s.name in set(traces)]
    if not scenarios:
        raise ValueError("no scenario to train on")
    forecaster = load_forecaster(settings, forecaster_uri)
    label = "registered forecaster" if forecaster is not None else "stand-in providers"
    logger.info(
        "forecasts: %s", f"{forecaster_uri} and the stand-in providers" if forecaster else label
    )
    prepared = [prepare_scenario(sc, forecaster) for sc in scenarios]
    for p in prepared:
        logger.info("%s: the calibrated rule uses %s forecasts", p.scenario.name, p.provider)
    train, validate = split_sources(
        [p.training_source() for p in prepared], int(validation_days * 1440), min_train_steps
    )
    return train, validate, label


@task(cache_policy=NO_CACHE)
def fit(
    settings: Settings,
    sources: list[EpisodeSource],
    config: PPOConfig,
    weights: RewardWeights,
    randomization: Randomization,
) -> tuple[LearnedPolicy, PPOReport, str]:
    """Train PPO; the rollout curves go to a new MLflow run (its id is returned)."""
    logger = get_run_logger()

    def progress(row: dict[str, float]) -> None:
        logger.info(
            "%d steps (%.0f s): reward %.3f, cost %.3f, SLA %.3f%%",
            int(row["timesteps"]),
            row["seconds"],
            row["rollout/reward"],
            row["rollout/cost"],
            100 * row["rollout/sla_compliance"],
        )

    with registry.training_run(
        registry_config(settings, publish.MODEL_NAME), run_name="train-controller"
    ) as (run_id, log):
        policy, report = train_ppo(
            sources,
            config,
            weights=weights,
            randomization=randomization,
            log_metrics=log,
            progress=progress,
        )
    return policy, report, run_id


@task(**IO_RETRIES)
def register(
    settings: Settings,
    policy: LearnedPolicy,
    sources: list[EpisodeSource],
    config: PPOConfig,
    report: PPOReport,
    weights: RewardWeights,
    randomization: Randomization,
    run_id: str,
    forecasts: str,
) -> registry.RegisteredVersion:
    """Register the challenger in the training run."""
    return publish.register(
        registry_config(settings, publish.MODEL_NAME),
        policy,
        horizons=sources[0].horizons,
        quantiles=sources[0].quantiles,
        ppo=config,
        report=report,
        weights=weights,
        randomization=randomization,
        tags={"traces": ",".join(s.name for s in sources), "forecasts": forecasts},
        run_id=run_id,
    )


@task(**IO_RETRIES)
def gate(
    settings: Settings, version: str, policy: LearnedPolicy, validation: list[EpisodeSource]
) -> tuple[registry.GateDecision, dict[str, list[publish.TraceScore]]]:
    """Replay challenger, champion and rule on the validation sources; promote if earned."""
    return publish.gate(registry_config(settings, publish.MODEL_NAME), version, policy, validation)


def summary_markdown(
    report: PPOReport,
    version: registry.RegisteredVersion,
    decision: registry.GateDecision,
    scores: dict[str, list[publish.TraceScore]],
) -> str:
    """The run's artifact: training, validation table and the gate's decision."""
    lines = [
        "# Controller training",
        "",
        f"- PPO: {report.timesteps} steps in {report.seconds:.0f} s "
        f"(stopped by {report.stopped_by})",
        f"- registered `{version.name}` version {version.version} (alias `challenger`), "
        f"run `{version.run_id}`",
        f"- gate: **{'promoted to champion' if decision.promoted else 'refused'}**: "
        f"{decision.reason}",
        "",
        publish.validation_markdown(scores),
    ]
    return "\n".join(lines)


@flow(name="train-controller", log_prints=True)
def train_controller_flow(
    timesteps: int = 4_000_000,
    max_minutes: float = 14.0,
    mode: str = "residual",
    traces: list[str] | None = None,
    include_synthetic: bool = True,
    sla_weights: list[float] | None = None,
    cost_weight: float = 1.0,
    latency_weight: float = 0.2,
    budget_weight: float = 1.0,
    episode_steps: int = 720,
    n_envs: int = 32,
    validation_days: float = 2.0,
    forecaster_uri: str | None = FORECASTER_URI,
    seed: int = 0,
    scenarios_file: str | None = None,
    state_dir: str | None = None,
) -> dict[str, Any]:
    """Train the PPO scaling controller in the simulator, register and gate it.

    Args:
        timesteps: PPO environment steps at most.
        max_minutes: Wall-clock budget of the training.
        mode: ``residual`` (adjust the calibrated rule) or ``direct`` (job changes).
        traces: Scenario names to train on (default: every trace in the traces folder
            plus the synthetic scenarios of the scenarios file).
        include_synthetic: Also train on the synthetic scenarios.
        sla_weights: Reward weight of SLA misses for criticality tiers 1, 2, 3.
        cost_weight: Reward weight of cost.
        latency_weight: Reward weight of the queue's drain time against the SLA.
        budget_weight: Reward weight of spending above the daily budget.
        episode_steps: Minutes per training episode.
        n_envs: Episodes simulated side by side.
        validation_days: Final days of each scenario's calibration range kept for the gate.
        forecaster_uri: Registered forecaster whose forecasts the policy trains on;
            without one, the stand-in providers.
        seed: Seed of PPO and of the episode draws.
        scenarios_file: Scenarios YAML (default from settings: bench/scenarios.yaml).
        state_dir: State folder (default from settings / AUTOSCALER_STATE_DIR).

    Returns:
        Version, gate decision, its scores and the training figures.
    """
    overrides: dict[str, Any] = {"scenarios_file": Path(scenarios_file)} if scenarios_file else {}
    settings = build_settings(state_dir=Path(state_dir) if state_dir else None, **overrides)
    weights = RewardWeights(
        cost=cost_weight,
        sla=tuple(sla_weights) if sla_weights else RewardWeights().sla,  # type: ignore[arg-type]
        latency=latency_weight,
        budget=budget_weight,
    )
    config = PPOConfig(
        total_timesteps=timesteps,
        max_minutes=max_minutes,
        mode=mode,
        episode_steps=episode_steps,
        n_envs=n_envs,
        seed=seed,
    )
    randomization = Randomization()
    train, validation, forecasts = load_sources(
        settings, traces, include_synthetic, forecaster_uri, validation_days, episode_steps + 2
    )
    policy, report, run_id = fit(settings, train, config, weights, randomization)
    version = register(
        settings, policy, train, config, report, weights, randomization, run_id, forecasts
    )
    decision, scores = gate(settings, version.version, policy, validation)
    create_markdown_artifact(
        markdown=summary_markdown(report, version, decision, scores),
        key="controller-training",
        description="Controller training, validation and promotion",
    )
    get_run_logger().info("scaling-controller v%s: %s", version.version, decision.reason)
    return {
        "version": version.version,
        "run_id": version.run_id,
        "promoted": decision.promoted,
        "reason": decision.reason,
        "scores": decision.scores,
        "train_seconds": report.seconds,
        "timesteps": report.timesteps,
        "forecasts": forecasts,
    }
