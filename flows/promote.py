"""The `promote` flow: compare a version with the champion, promote it, or roll back.

Promotion is on demand (the Prefect UI shows a form; ``autoscaler promote`` and
``autoscaler rollback`` run the same flow). Each task is one call to a tested function:

1. ``find_candidate``: the version to judge (default: where ``challenger`` points) and
   the current champion.
2. The same held-back evaluation as the training flow's gate, rebuilt from the stores:

   - ``event-forecaster``: the evaluation range of the Feast training set
     (:func:`flows.train_forecaster.load_series`), the candidate, the seasonal naive
     baselines and the champion scored by :func:`forecaster_evaluation`; metric ``wql``.
   - ``scaling-controller``: the validation sources of the scenarios
     (:func:`flows.train_controller.load_sources`), candidate, champion and calibrated
     rule replayed in the simulator; metric ``validation_cost_vs_rule`` with the SLA
     requirements.

3. ``compare`` records the evidence through :func:`models.registry.promotion_gate` with
   one extra requirement that always fails (``compare_only``), so the gate writes its
   metrics and tags but never moves ``champion``; the tag ``compare.would_promote`` says
   what a promotion would decide. ``promote`` runs the training flows' own gate
   (:func:`models.forecaster.publish.gate`, :func:`models.controller.publish.gate`); with
   ``force`` a refused candidate is made champion anyway and tagged
   ``promotion.forced``. ``rollback`` is :func:`models.registry.rollback`.
4. A markdown artifact with the scores table and what happened.

A move made by hand in the MLflow UI is honoured: the candidate is judged against
whatever ``champion`` points to now, and rollback uses the recorded champion history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from autoscaler.runtime import registry_config
from autoscaler.settings import Settings, build_settings
from models import registry

if TYPE_CHECKING:
    from models.controller.env import EpisodeSource
    from models.controller.publish import TraceScore
    from models.forecaster.evaluate import Evaluation
    from models.forecaster.train import SeriesData

ModelName = Literal["event-forecaster", "scaling-controller"]
Action = Literal["compare", "promote", "rollback"]
MODEL_NAMES: tuple[str, ...] = get_args(ModelName)
FORECASTER: ModelName = "event-forecaster"
CONTROLLER: ModelName = "scaling-controller"

FORECASTER_URI = "models:/event-forecaster@champion"
"""Forecasts the controller's validation sources use, as in the train-controller flow."""
COMPARE_ONLY = "compare_only"
"""Gate requirement that always fails in a comparison, so the gate never moves the alias."""
COMPARE_ONLY_NOTE = "comparison only, champion not moved"
WOULD_PROMOTE_TAG = "compare.would_promote"
FORCED_TAG = "promotion.forced"
FORCED_OVER_TAG = "promotion.forced_over"
_REQUIREMENT_PREFIX = "gate.requirement."


class PromotionError(ValueError):
    """The promotion cannot be done as asked (no such version, already champion...)."""


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry I/O failures, not refusals.

    A missing version, nothing to roll back to, or a champion that moved meanwhile stays
    so on a retry; failing at once tells the user sooner.
    """
    return not isinstance(state.data, PromotionError | registry.RegistryError | ValueError)


IO_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [2, 5, 15],
    "retry_condition_fn": retry_transient,
    "cache_policy": NO_CACHE,
}


@dataclass(frozen=True)
class GateInputs:
    """What a gate compares: scores on one held-back evaluation and extra requirements.

    Attributes:
        metric: Gate metric (lower is better in both models' gates).
        challenger_score: The candidate's score.
        champion_version: Champion the score below belongs to (None without one).
        champion_score: The champion's score on the same evaluation.
        baseline_scores: Baselines' scores by name.
        requirements: Name -> None when met, else how it failed.
    """

    metric: str
    challenger_score: float
    champion_version: str | None
    champion_score: float | None
    baseline_scores: dict[str, float]
    requirements: dict[str, str | None] = field(default_factory=dict)

    def would_promote(self) -> bool:
        """The training gates' rule: strictly lower than every opponent, requirements met.

        Both training gates call :func:`models.registry.promotion_gate` with
        ``lower_is_better=True`` and ``min_improvement=0``, which is this test.
        """
        opponents = list(self.baseline_scores.values())
        if self.champion_score is not None:
            opponents.append(self.champion_score)
        met = all(failure is None for failure in self.requirements.values())
        return met and all(self.challenger_score < score for score in opponents)


@dataclass(frozen=True)
class Outcome:
    """What the flow did to one candidate.

    Attributes:
        decision: The gate's decision as recorded on the candidate.
        would_promote: Whether the gate's rule lets the candidate win.
        forced: True when the candidate was made champion although the gate refused it.
        champion_after: Where ``champion`` points after the flow.
        requirements: The gate's requirement tags (``met`` or ``failed: ...``) by name.
    """

    decision: registry.GateDecision
    would_promote: bool
    forced: bool
    champion_after: str | None
    requirements: dict[str, str]


# --------------------------------------------------------------------------- functions


def check_model(name: str) -> ModelName:
    """``name`` as a model name of this project.

    Raises:
        PromotionError: If it is not one of :data:`MODEL_NAMES`.
    """
    if name == FORECASTER:
        return FORECASTER
    if name == CONTROLLER:
        return CONTROLLER
    raise PromotionError(f"unknown model {name!r}; registered models are {', '.join(MODEL_NAMES)}")


def version_exists(config: registry.RegistryConfig, model_name: str, version: str) -> bool:
    """Whether ``version`` of ``model_name`` is registered (False for an unknown model)."""
    from mlflow.exceptions import MlflowException

    try:
        registry.client(config).get_model_version(model_name, version)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return False
        raise
    return True


def candidate_version(
    config: registry.RegistryConfig, model_name: str, version: str | None
) -> tuple[str, str | None]:
    """The version to judge and the current champion.

    Args:
        config: Registry configuration.
        model_name: Registered model name.
        version: Version to judge; None for the ``challenger`` alias.

    Returns:
        ``(candidate, champion)``; champion is None when the alias is not set.

    Raises:
        PromotionError: If there is no challenger (and no version given), the version does
            not exist, or it already is champion.
    """
    if version is None:
        version = registry.resolve_alias(config, model_name, registry.CHALLENGER)
        if version is None:
            raise PromotionError(
                f"{model_name!r} has no {registry.CHALLENGER} alias; train one or pass a "
                "version (`autoscaler models` lists them)"
            )
    elif not version_exists(config, model_name, version):
        raise PromotionError(
            f"version {version} of {model_name!r} does not exist "
            "(`autoscaler models` lists the registered versions)"
        )
    champion = registry.resolve_alias(config, model_name, registry.CHAMPION)
    if champion == version:
        raise PromotionError(f"version {version} of {model_name!r} already is champion")
    return version, champion


def forecaster_evaluation(
    config: registry.RegistryConfig, version: str, series: list[SeriesData]
) -> tuple[Evaluation, str | None]:
    """Candidate, seasonal naive baselines and champion on the evaluation range.

    The candidate is scored as the training flow scores the forecaster it just trained
    (its model object, under the name ``hybrid`` the gate reads), the champion through
    its pyfunc as the training flow does.

    Returns:
        The evaluation and the champion's version (None without one).

    Raises:
        ValueError: If no series has an evaluation origin.
    """
    from models.forecaster import evaluate, publish

    prepared = [p for p in (evaluate.prepare_holdout(s) for s in series) if p is not None]
    if not prepared:
        raise ValueError("no service has an evaluation origin; raise eval_days")
    context = {s.name: s for s in series}
    model = registry.load(config, registry.version_uri(publish.MODEL_NAME, version))
    candidate = registry.folder_predictor(model).forecaster
    forecasts = {"hybrid": evaluate.hybrid_forecasts(candidate, prepared, context)}
    forecasts.update(evaluate.baseline_forecasts(prepared))
    champion = publish.champion_forecasts(config, prepared, context)
    champion_version = None
    if champion is not None:
        champion_version, forecasts["champion"] = champion
    return evaluate.evaluate(prepared, forecasts), champion_version


def forecaster_inputs(evaluation: Evaluation, champion_version: str | None) -> GateInputs:
    """What :func:`models.forecaster.publish.gate` compares, from the same evaluation."""
    from models.forecaster import evaluate, publish

    models = evaluation.models()
    return GateInputs(
        metric=publish.GATE_METRIC,
        challenger_score=evaluation.mean("hybrid", publish.GATE_METRIC),
        champion_version=champion_version,
        champion_score=(
            evaluation.mean("champion", publish.GATE_METRIC) if "champion" in models else None
        ),
        baseline_scores={
            b: evaluation.mean(b, publish.GATE_METRIC)
            for b in evaluate.GATE_BASELINES
            if b in models
        },
    )


def controller_comparison(
    config: registry.RegistryConfig,
    version: str,
    validation: list[EpisodeSource],
    seed: int = 0,
) -> tuple[GateInputs, dict[str, list[TraceScore]]]:
    """What :func:`models.controller.publish.gate` compares, replayed on ``validation``.

    Returns:
        The gate's inputs and the per-trace scores (``challenger``, ``predictive``, and
        ``champion`` when there is one).
    """
    from models.controller import publish

    policy, _ = publish.load_policy(config, registry.version_uri(publish.MODEL_NAME, version))
    rule = publish.score(publish.rule_controller, validation, seed)
    scores = {"challenger": publish.score(publish.policy_controller(policy), validation, seed)}
    scores[publish.RULE] = rule
    champion_version = registry.resolve_alias(config, publish.MODEL_NAME, registry.CHAMPION)
    champion_score = None
    requirements = {f"sla_vs_{publish.RULE}": publish.sla_shortfall(scores["challenger"], rule)}
    if champion_version is not None:
        champion, _ = publish.load_policy(
            config, registry.version_uri(publish.MODEL_NAME, champion_version)
        )
        scores["champion"] = publish.score(publish.policy_controller(champion), validation, seed)
        champion_score = publish.cost_ratio(scores["champion"], rule)
        requirements["sla_vs_champion"] = publish.sla_shortfall(
            scores["challenger"], scores["champion"]
        )
    inputs = GateInputs(
        metric=publish.GATE_METRIC,
        challenger_score=publish.cost_ratio(scores["challenger"], rule),
        champion_version=champion_version,
        champion_score=champion_score,
        baseline_scores={publish.RULE: 1.0},
        requirements=requirements,
    )
    return inputs, scores


def requirement_tags(
    config: registry.RegistryConfig, model_name: str, version: str
) -> dict[str, str]:
    """The gate's requirement tags on a version (``met`` or ``failed: ...``), by name."""
    tags = registry.client(config).get_model_version(model_name, version).tags
    return {
        key.removeprefix(_REQUIREMENT_PREFIX): value
        for key, value in sorted(tags.items())
        if key.startswith(_REQUIREMENT_PREFIX)
    }


def record_comparison(
    config: registry.RegistryConfig, model_name: str, version: str, inputs: GateInputs
) -> Outcome:
    """Write the gate's evidence on ``version`` without moving any alias.

    The gate runs with the requirement ``compare_only`` failing, so it records its
    metrics and tags (``gate.decision`` is ``refused``) and leaves ``champion`` alone;
    ``compare.would_promote`` on the version says what a promotion would decide.

    Raises:
        ValueError: If the champion moved since ``inputs`` were computed.
    """
    decision = registry.promotion_gate(
        config,
        model_name=model_name,
        challenger_version=version,
        metric=inputs.metric,
        challenger_score=inputs.challenger_score,
        champion_score=inputs.champion_score,
        baseline_scores=inputs.baseline_scores,
        champion_version=inputs.champion_version,
        requirements={**inputs.requirements, COMPARE_ONLY: COMPARE_ONLY_NOTE},
    )
    would = inputs.would_promote()
    registry.client(config).set_model_version_tag(
        model_name, version, WOULD_PROMOTE_TAG, str(would).lower()
    )
    return Outcome(
        decision=decision,
        would_promote=would,
        forced=False,
        champion_after=registry.resolve_alias(config, model_name, registry.CHAMPION),
        requirements=requirement_tags(config, model_name, version),
    )


def finish_promotion(
    config: registry.RegistryConfig,
    model_name: str,
    decision: registry.GateDecision,
    force: bool,
) -> Outcome:
    """After the gate: with ``force``, make a refused candidate champion and tag it forced.

    The forced move goes through :func:`models.registry.set_alias`, so the champion
    history records it and a rollback returns to the champion it replaced. The version
    and its run get ``promotion.forced`` and ``promotion.forced_over`` (the gate's
    reason).
    """
    version = decision.challenger_version
    forced = force and not decision.promoted
    if forced:
        registry.set_alias(config, model_name, registry.CHAMPION, version)
        mlflow_client = registry.client(config)
        tags = {FORCED_TAG: "true", FORCED_OVER_TAG: decision.reason}
        run_id = mlflow_client.get_model_version(model_name, version).run_id
        for key, value in tags.items():
            mlflow_client.set_model_version_tag(model_name, version, key, value)
            if run_id:
                mlflow_client.set_tag(run_id, key, value)
    return Outcome(
        decision=decision,
        would_promote=decision.promoted,
        forced=forced,
        champion_after=registry.resolve_alias(config, model_name, registry.CHAMPION),
        requirements=requirement_tags(config, model_name, version),
    )


def _who(key: str, metric: str, candidate: str, champion: str | None) -> str:
    """Reader's name of a gate score key (``gate_baseline_<name>_<metric>``...)."""
    name = key.removeprefix("gate_").removesuffix(f"_{metric}")
    if name == "challenger":
        return f"candidate v{candidate}"
    if name == "champion":
        return f"champion v{champion}"
    return f"baseline {name.removeprefix('baseline_')}"


def outcome_markdown(model_name: str, action: str, outcome: Outcome, details: str = "") -> str:
    """The artifact of a comparison or promotion: scores table, requirements, decision."""
    decision = outcome.decision
    if action == "compare":
        verdict = (
            f"comparison only, nothing moved; a promotion would "
            f"**{'promote' if outcome.would_promote else 'refuse'}** it"
        )
    elif outcome.forced:
        verdict = "**forced to champion** although the gate refused it"
    else:
        verdict = "**promoted to champion**" if decision.promoted else "**refused**"
    lines = [
        f"# {model_name}: {action} v{decision.challenger_version}",
        "",
        f"- champion before: {_version(decision.champion_version_before)}, "
        f"after: {_version(outcome.champion_after)}",
        f"- decision: {verdict}",
        f"- gate: {decision.reason}",
        "",
        f"| model | {decision.metric} (lower is better) |",
        "|---|---|",
    ]
    for key, value in decision.scores.items():
        who = _who(
            key, decision.metric, decision.challenger_version, decision.champion_version_before
        )
        lines.append(f"| {who} | {value:.6g} |")
    if outcome.requirements:
        lines += ["", "| requirement | result |", "|---|---|"]
        lines += [f"| {name} | {result} |" for name, result in outcome.requirements.items()]
    if details:
        lines += ["", details]
    return "\n".join(lines)


def controller_details(scores: dict[str, list[TraceScore]]) -> str:
    """Per-trace validation table (cost, SLA compliance %) of every controller replayed."""
    from models.controller import publish

    return publish.validation_markdown(scores)


def rollback_markdown(model_name: str, before: str | None, after: str) -> str:
    """The artifact of a rollback."""
    return "\n".join(
        [
            f"# {model_name}: rollback",
            "",
            f"- champion moved back from {_version(before)} to **v{after}**",
            "- inference serves the new champion from its next cycle",
        ]
    )


def _version(version: str | None) -> str:
    return "none" if version is None else f"v{version}"


# --------------------------------------------------------------------------- tasks


@task(**IO_RETRIES)
def find_candidate(
    settings: Settings, model: ModelName, version: str | None
) -> tuple[str, str | None]:
    """The version to judge and the current champion."""
    return candidate_version(registry_config(settings, model), model, version)


@task(**IO_RETRIES)
def score_forecaster(
    settings: Settings, version: str, series: list[SeriesData]
) -> tuple[Evaluation, str | None]:
    """Candidate, baselines and champion on the forecaster's evaluation range."""
    return forecaster_evaluation(registry_config(settings, FORECASTER), version, series)


@task(**IO_RETRIES)
def compare_controller(
    settings: Settings, version: str, validation: list[EpisodeSource], seed: int
) -> tuple[GateInputs, dict[str, list[TraceScore]]]:
    """Candidate, champion and rule replayed on the validation sources."""
    return controller_comparison(registry_config(settings, CONTROLLER), version, validation, seed)


@task(**IO_RETRIES)
def record(settings: Settings, model: ModelName, version: str, inputs: GateInputs) -> Outcome:
    """Write the comparison's evidence; no alias moves."""
    return record_comparison(registry_config(settings, model), model, version, inputs)


@task(**IO_RETRIES)
def gate_forecaster(
    settings: Settings, version: str, evaluation: Evaluation, champion_version: str | None
) -> registry.GateDecision:
    """The train-forecaster flow's gate: promote the candidate if it wins."""
    from models.forecaster import publish

    return publish.gate(
        registry_config(settings, FORECASTER), version, evaluation, champion_version
    )


@task(**IO_RETRIES)
def gate_controller(
    settings: Settings, version: str, validation: list[EpisodeSource], seed: int
) -> tuple[registry.GateDecision, dict[str, list[TraceScore]]]:
    """The train-controller flow's gate: replay and promote the candidate if it wins."""
    from models.controller import publish

    config = registry_config(settings, CONTROLLER)
    policy, _ = publish.load_policy(config, registry.version_uri(CONTROLLER, version))
    return publish.gate(config, version, policy, validation, seed)


@task(**IO_RETRIES)
def finish(
    settings: Settings, model: ModelName, decision: registry.GateDecision, force: bool
) -> Outcome:
    """Force a refused candidate to champion when asked; read where champion points."""
    return finish_promotion(registry_config(settings, model), model, decision, force)


@task(**IO_RETRIES)
def roll_back(
    settings: Settings, model: ModelName, to_version: str | None
) -> tuple[str | None, str]:
    """Move ``champion`` back; returns (from, to).

    Raises:
        PromotionError: If nothing is champion, or ``to_version`` does not exist.
    """
    config = registry_config(settings, model)
    before = registry.resolve_alias(config, model, registry.CHAMPION)
    if before is None:
        raise PromotionError(f"{model!r} has no champion to roll back from")
    if to_version is not None and not version_exists(config, model, to_version):
        raise PromotionError(f"version {to_version} of {model!r} does not exist")
    return before, registry.rollback(config, model_name=model, to_version=to_version)


def _judge_forecaster(
    settings: Settings,
    action: Action,
    candidate: str,
    force: bool,
    services: list[str] | None,
    lookback_days: float,
    eval_days: float,
) -> tuple[Outcome, str]:
    """Compare or promote a forecaster version; returns the outcome and the scores table."""
    from flows.train_forecaster import load_series

    series = load_series(settings, services, None, None, lookback_days, eval_days)
    evaluation, champion_version = score_forecaster(settings, candidate, series)
    details = "## Evaluation (mean over services)\n\n" + evaluation.markdown()
    if action == "compare":
        inputs = forecaster_inputs(evaluation, champion_version)
        return record(settings, FORECASTER, candidate, inputs), details
    decision = gate_forecaster(settings, candidate, evaluation, champion_version)
    return finish(settings, FORECASTER, decision, force), details


def _judge_controller(
    settings: Settings,
    action: Action,
    candidate: str,
    force: bool,
    traces: list[str] | None,
    include_synthetic: bool,
    forecaster_uri: str | None,
    validation_days: float,
    seed: int,
) -> tuple[Outcome, str]:
    """Compare or promote a controller version; returns the outcome and the trace table."""
    from flows.train_controller import load_sources
    from models.controller.ppo import PPOConfig

    # As the train-controller flow (default episode length): scenarios too short to
    # train on are left out of the validation too.
    _, validation, forecasts = load_sources(
        settings,
        traces,
        include_synthetic,
        forecaster_uri,
        validation_days,
        PPOConfig().episode_steps + 2,
    )
    if action == "compare":
        inputs, scores = compare_controller(settings, candidate, validation, seed)
        outcome = record(settings, CONTROLLER, candidate, inputs)
    else:
        decision, scores = gate_controller(settings, candidate, validation, seed)
        outcome = finish(settings, CONTROLLER, decision, force)
    return outcome, f"Forecasts from the {forecasts}.\n\n" + controller_details(scores)


# --------------------------------------------------------------------------- flow


@flow(name="promote", log_prints=True)
def promote_flow(
    model: ModelName,
    action: Action = "compare",
    version: str | None = None,
    to_version: str | None = None,
    force: bool = False,
    services: list[str] | None = None,
    lookback_days: float = 14.0,
    eval_days: float = 2.0,
    traces: list[str] | None = None,
    include_synthetic: bool = True,
    validation_days: float = 2.0,
    forecaster_uri: str | None = FORECASTER_URI,
    scenarios_file: str | None = None,
    seed: int = 0,
    state_dir: str | None = None,
) -> dict[str, Any]:
    """Compare a version with the champion, promote it, or roll the champion back.

    The evaluation options default to the training flows' own, so the comparison is the
    one their gate made.

    Args:
        model: ``event-forecaster`` or ``scaling-controller``.
        action: ``compare`` (record the evidence, move nothing), ``promote`` (move
            ``champion`` if the gate passes) or ``rollback``.
        version: Version to compare or promote (default: the ``challenger`` alias).
        to_version: Rollback target (default: the previous champion in the history).
        force: Promote even if the gate refuses (tagged ``promotion.forced``).
        services: Forecaster: services to evaluate on (default: every stored one).
        lookback_days: Forecaster: days of history before the newest stored minute.
        eval_days: Forecaster: final days of that range scored by the gate.
        traces: Controller: scenario names (default: every trace and synthetic one).
        include_synthetic: Controller: also validate on the synthetic scenarios.
        validation_days: Controller: final days of each scenario's calibration range.
        forecaster_uri: Controller: registered forecaster whose forecasts the validation
            uses; without one, the stand-in providers.
        scenarios_file: Controller: scenarios YAML (default from settings).
        seed: Controller: seed of the simulator replays.
        state_dir: State folder (default from settings / AUTOSCALER_STATE_DIR).

    Returns:
        What was done: ``champion_before``, ``champion_after``, and for compare/promote
        ``version``, ``promoted``, ``would_promote``, ``forced``, ``reason``, ``scores``;
        ``summary`` is the artifact's markdown.
    """
    overrides: dict[str, Any] = {"scenarios_file": Path(scenarios_file)} if scenarios_file else {}
    settings = build_settings(state_dir=Path(state_dir) if state_dir else None, **overrides)
    logger = get_run_logger()
    key = f"promotion-{model}"
    if force and action != "promote":
        raise PromotionError("force only applies to action 'promote'")
    if action == "rollback":
        before, after = roll_back(settings, model, to_version)
        summary = rollback_markdown(model, before, after)
        create_markdown_artifact(markdown=summary, key=key, description=f"{model} rollback")
        logger.warning("%s champion rolled back from v%s to v%s", model, before, after)
        return {
            "model": model,
            "action": action,
            "champion_before": before,
            "champion_after": after,
            "summary": summary,
        }
    candidate, _ = find_candidate(settings, model, version)
    if model == FORECASTER:
        outcome, details = _judge_forecaster(
            settings, action, candidate, force, services, lookback_days, eval_days
        )
    else:
        outcome, details = _judge_controller(
            settings,
            action,
            candidate,
            force,
            traces,
            include_synthetic,
            forecaster_uri,
            validation_days,
            seed,
        )
    summary = outcome_markdown(model, action, outcome, details)
    create_markdown_artifact(markdown=summary, key=key, description=f"{model} {action}")
    logger.info("%s v%s %s: %s", model, candidate, action, outcome.decision.reason)
    return {
        "model": model,
        "action": action,
        "version": candidate,
        "champion_before": outcome.decision.champion_version_before,
        "champion_after": outcome.champion_after,
        "promoted": outcome.champion_after == candidate,
        "would_promote": outcome.would_promote,
        "forced": outcome.forced,
        "reason": outcome.decision.reason,
        "scores": outcome.decision.scores,
        "summary": summary,
    }


if __name__ == "__main__":
    promote_flow(model="scaling-controller", action="compare")
