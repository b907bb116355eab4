"""The promote, rollback and models commands, and the promote flow's functions they use.

No Prefect server: every case here ends before a flow runs. MLflow runs on SQLite in a
temporary folder, with bare model versions (a run, no artifacts).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from autoscaler.cli import app
from autoscaler.runtime import prefect_environment, registry_config
from autoscaler.settings import Settings, build_settings
from flows.promote import (
    COMPARE_ONLY,
    GateInputs,
    PromotionError,
    candidate_version,
    check_model,
    finish_promotion,
    forecaster_inputs,
    record_comparison,
)
from models import registry

pytestmark = [
    # MLflow's SQL store uses a SQLAlchemy loader strategy deprecated in SQLAlchemy 2.1.
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
]

ENV = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
CONTROLLER = "scaling-controller"


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A state folder whose registry is created once; Prefect's variables restored after."""
    built = build_settings(state_dir=tmp_path_factory.mktemp("state"))
    with pytest.MonkeyPatch.context() as patch:
        # The commands export these (configure_prefect); keep them out of other tests.
        for key, value in prefect_environment(built).items():
            patch.setenv(key, value)
        patch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        registry.client(registry_config(built, CONTROLLER)).search_registered_models()
        yield built


def bare_versions(config: registry.RegistryConfig, name: str, count: int) -> list[str]:
    """Register ``count`` versions of ``name``, each with a finished run and no artifacts."""
    mlflow_client = registry.client(config)
    with registry.tracking(config) as experiment_id:
        pass
    mlflow_client.create_registered_model(name)
    versions = []
    for _ in range(count):
        run = mlflow_client.create_run(experiment_id)
        mlflow_client.set_terminated(run.info.run_id)
        version = mlflow_client.create_model_version(
            name, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
        )
        versions.append(str(version.version))
    return versions


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env=ENV)


# --------------------------------------------------------------------------- CLI errors


@pytest.mark.parametrize("command", ["promote", "rollback"])
def test_unknown_model_is_a_usage_error(command: str, tmp_path: Path) -> None:
    out = invoke(command, "--model", "forecaster", "--state-dir", str(tmp_path))
    assert out.exit_code == 2
    assert "unknown model 'forecaster'" in out.output
    assert "event-forecaster or scaling-controller" in out.output
    with pytest.raises(PromotionError, match="unknown model"):
        check_model("forecaster")


def test_force_and_compare_only_exclude_each_other() -> None:
    out = invoke("promote", "--model", CONTROLLER, "--force", "--compare-only")
    assert out.exit_code == 2
    assert "exclude each other" in out.output


def test_missing_version_challenger_or_champion_are_usage_errors(settings: Settings) -> None:
    state = str(settings.state_dir)
    out = invoke("promote", "--model", CONTROLLER, "--version", "7", "--state-dir", state)
    assert out.exit_code == 2
    assert "version 7 of 'scaling-controller' does not exist" in out.output
    out = invoke("promote", "--model", CONTROLLER, "--state-dir", state)
    assert out.exit_code == 2
    assert "has no challenger alias" in out.output
    out = invoke("rollback", "--model", CONTROLLER, "--state-dir", state)
    assert out.exit_code == 2
    assert "no champion to roll back from" in out.output


def test_models_lists_versions_aliases_and_history(settings: Settings) -> None:
    name = "event-forecaster"
    config = registry_config(settings, name)
    first, second = bare_versions(config, name, 2)
    registry.set_alias(config, name, registry.CHAMPION, first)
    registry.set_alias(config, name, registry.CHALLENGER, second)
    out = invoke("models", "--state-dir", str(settings.state_dir))
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert f"{name}: challenger -> v{second}, champion -> v{first}" in lines
    rows = {line.split()[0]: line for line in lines if line.startswith("  v")}
    assert rows[f"v{first}"].split()[1] == "champion"
    assert rows[f"v{second}"].split()[1] == "challenger"
    assert f"  champion history: v{first}" in lines
    # The candidate defaults to the challenger; the champion cannot be judged against itself.
    assert candidate_version(config, name, None) == (second, first)
    with pytest.raises(PromotionError, match="already is champion"):
        candidate_version(config, name, first)


# --------------------------------------------------------------------------- flow functions


def test_forecaster_inputs_are_what_the_training_gate_compares(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from models.forecaster import publish
    from models.forecaster.evaluate import Evaluation

    scores = {"hybrid": 0.2, "champion": 0.25, "seasonal_naive_day": 0.4}
    scores["seasonal_naive_week"] = 0.3
    evaluation = Evaluation(
        [{"model": m, "wql": s + d} for m, s in scores.items() for d in (-0.01, 0.01)]
    )
    seen: dict[str, Any] = {}
    monkeypatch.setattr(registry, "promotion_gate", lambda config, **kwargs: seen.update(kwargs))
    config = registry.RegistryConfig("sqlite:///unused.db", Path("unused"), "unused")
    publish.gate(config, "3", evaluation, "2")
    inputs = forecaster_inputs(evaluation, "2")
    assert seen["metric"] == inputs.metric == "wql"
    assert seen["challenger_score"] == pytest.approx(inputs.challenger_score)
    assert seen["champion_score"] == pytest.approx(inputs.champion_score)
    assert seen["baseline_scores"] == pytest.approx(inputs.baseline_scores)
    assert seen["champion_version"] == inputs.champion_version == "2"
    assert seen.get("requirements") in (None, {}) and inputs.requirements == {}


CASES = {
    "wins": (0.5, 0.8, {"rule": 1.0}, {}),
    "ties_the_champion": (0.8, 0.8, {"rule": 1.0}, {}),
    "loses_to_a_baseline": (0.5, 0.8, {"rule": 0.4}, {}),
    "fails_a_requirement": (0.5, 0.8, {"rule": 1.0}, {"sla": "short on trace a"}),
    "no_champion_beats_the_baseline": (0.5, None, {"rule": 1.0}, {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_comparison_predicts_the_gate_and_moves_nothing(settings: Settings, case: str) -> None:
    challenger, champion, baselines, requirements = CASES[case]
    name = f"compare-{case}".replace("_", "-")
    config = registry_config(settings, name)
    old, new = bare_versions(config, name, 2)
    if champion is not None:
        registry.set_alias(config, name, registry.CHAMPION, old)
    inputs = GateInputs(
        metric="cost",
        challenger_score=challenger,
        champion_version=old if champion is not None else None,
        champion_score=champion,
        baseline_scores=baselines,
        requirements=requirements,
    )
    outcome = record_comparison(config, name, new, inputs)
    champion_before = old if champion is not None else None
    assert registry.resolve_alias(config, name, registry.CHAMPION) == champion_before
    assert outcome.champion_after == champion_before and not outcome.decision.promoted
    tags = registry.client(config).get_model_version(name, new).tags
    assert tags["compare.would_promote"] == str(outcome.would_promote).lower()
    assert outcome.requirements[COMPARE_ONLY].startswith("failed: comparison only")
    # The real gate on the same scores decides what the comparison predicted.
    decision = registry.promotion_gate(
        config,
        model_name=name,
        challenger_version=new,
        metric="cost",
        challenger_score=challenger,
        champion_score=champion,
        baseline_scores=baselines,
        requirements=requirements,
    )
    assert decision.promoted == outcome.would_promote == (case.startswith(("wins", "no_")))


def test_forced_promotion_is_tagged_and_rolls_back(settings: Settings) -> None:
    name = "forced"
    config = registry_config(settings, name)
    old, new = bare_versions(config, name, 2)
    registry.set_alias(config, name, registry.CHAMPION, old)
    refused = registry.promotion_gate(
        config,
        model_name=name,
        challenger_version=new,
        metric="cost",
        challenger_score=2.0,
        champion_score=1.0,
        baseline_scores={},
    )
    kept = finish_promotion(config, name, refused, force=False)
    assert kept.champion_after == old and not kept.forced
    forced = finish_promotion(config, name, refused, force=True)
    assert forced.champion_after == new and forced.forced
    mlflow_client = registry.client(config)
    version = mlflow_client.get_model_version(name, new)
    assert version.tags["promotion.forced"] == "true"
    assert version.tags["promotion.forced_over"] == refused.reason
    assert version.run_id is not None
    assert mlflow_client.get_run(version.run_id).data.tags["promotion.forced"] == "true"
    assert registry.rollback(config, model_name=name) == old


@pytest.mark.slow
def test_forecaster_candidate_and_champion_are_scored_alike(settings: Settings) -> None:
    """Two registrations of one forecaster: the candidate (scored through its model
    object, as training scores it) and the champion (through its pyfunc) tie exactly, so
    the comparison predicts a refusal and moves nothing."""
    import numpy as np
    import pandas as pd
    import torch

    from flows.promote import forecaster_evaluation
    from models.forecaster import evaluate, publish
    from models.forecaster.model import NetworkConfig
    from models.forecaster.train import SeriesData, TrainConfig, train

    torch.set_num_threads(1)
    n = 9 * 1440  # more than a week before the last day: both seasonal baselines
    wave = 100.0 + 40.0 * np.sin(2 * np.pi * np.arange(n) / 1440.0)
    counts = np.random.default_rng(0).poisson(wave / 4.0).astype(float)
    series = [SeriesData("svc", pd.Timestamp("2026-03-02"), counts, n - 1440)]
    config = TrainConfig(
        network=NetworkConfig(hidden=8, heads=2, dropout=0.0),
        batch_size=32,
        max_steps=20,
        eval_every=10,
        max_windows_per_series=2000,
        holdout_windows_per_series=500,
        device="cpu",
    )
    forecaster, report = train(series, config)
    prepared = [p for p in (evaluate.prepare_holdout(s) for s in series) if p is not None]
    hybrid = evaluate.hybrid_forecasts(forecaster, prepared)
    own = evaluate.evaluate(prepared, {"hybrid": hybrid})
    reg = registry_config(settings, publish.MODEL_NAME)
    first = publish.register(
        reg,
        forecaster,
        train_config=config,
        report=report,
        evaluation=own,
        prepared=prepared,
        hybrid=hybrid,
    )
    # A second version of the same logged model (registering is the slow part); MLflow
    # resolves the logged model through its process-wide URIs.
    mlflow_client = registry.client(reg)
    source = mlflow_client.get_model_version(publish.MODEL_NAME, first.version).source
    with registry.tracking(reg):
        copy = mlflow_client.create_model_version(publish.MODEL_NAME, source, first.run_id)
    old, new = first.version, str(copy.version)
    registry.set_alias(reg, publish.MODEL_NAME, registry.CHAMPION, old)

    evaluation, champion = forecaster_evaluation(reg, new, series)
    assert champion == old
    assert set(evaluation.models()) == {"hybrid", "champion", *evaluate.GATE_BASELINES}
    inputs = forecaster_inputs(evaluation, champion)
    assert inputs.challenger_score == pytest.approx(inputs.champion_score, rel=1e-6)
    outcome = record_comparison(reg, publish.MODEL_NAME, new, inputs)
    assert not outcome.would_promote
    assert registry.resolve_alias(reg, publish.MODEL_NAME, registry.CHAMPION) == old
    assert outcome.decision.scores["gate_challenger_wql"] == pytest.approx(inputs.challenger_score)


def test_refusals_are_not_retried_but_io_failures_are() -> None:
    from prefect.states import Failed

    from flows.promote import retry_transient

    assert not retry_transient(None, None, Failed(data=PromotionError("no version 7")))
    assert not retry_transient(None, None, Failed(data=registry.RegistryError("nothing")))
    assert retry_transient(None, None, Failed(data=OSError("database is locked")))
