"""The promote flow and CLI end to end: MLflow on SQLite, the controller's real gate.

Two scaling-controller versions are registered directly (no PPO training): constant
residual policies, one following the calibrated rule, one always four jobs above it, so
the second loses on cost by construction. The flow then replays them on the validation
range of one small synthetic scenario, as the train-controller flow's gate does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from policies import register_constant
from typer.testing import CliRunner

from autoscaler.cli import app
from autoscaler.runtime import registry_config
from autoscaler.settings import Settings, build_settings
from models import registry
from models.controller import publish

pytestmark = [
    pytest.mark.integration,
    # MLflow's SQL store uses a SQLAlchemy loader strategy deprecated in SQLAlchemy 2.1.
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
    # The output's target_jobs is an integer column by design (a job count).
    pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer column"),
]

MODEL = publish.MODEL_NAME
SCENARIOS = """\
defaults:
  seed: 7
  history_fraction: 0.7
  rescale: {peak_eps: 150, quantile: 0.99}
  service: {job_capacity_eps: 25, max_jobs: 20, max_step: 4, daily_budget: 100000}
synthetic:
  - {name: promote_checkout, service_profile: checkout, days: 4, seed: 5}
"""
ENV = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}


def register(settings: Settings, extra_jobs: int) -> str:
    return register_constant(settings, extra_jobs, tags={"extra_jobs": str(extra_jobs)})


def aliases(settings: Settings) -> dict[str, str]:
    cfg = registry_config(settings, MODEL)
    return {
        alias: str(version)
        for alias, version in registry.client(cfg).get_registered_model(MODEL).aliases.items()
    }


def version_tags(settings: Settings, version: str) -> dict[str, str]:
    return dict(
        registry.client(registry_config(settings, MODEL)).get_model_version(MODEL, version).tags
    )


def run_data(settings: Settings, version: str) -> Any:
    mlflow_client = registry.client(registry_config(settings, MODEL))
    run_id = mlflow_client.get_model_version(MODEL, version).run_id
    assert run_id is not None
    return mlflow_client.get_run(run_id).data


def artifact_markdown(key: str) -> list[str]:
    """Every markdown artifact stored under ``key``, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
        )
    return [str(a.data) for a in reversed(found)]


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> dict[str, Any]:
    """Register two versions, then compare, promote, force, roll back and move by hand.

    Returns the flow results and the aliases after each step, by step name.
    """
    from flows.promote import promote_flow

    root = tmp_path_factory.mktemp("promote")
    scenarios = root / "scenarios.yaml"
    scenarios.write_text(SCENARIOS)
    settings = build_settings(state_dir=root / "state")
    settings.ensure_dirs()
    steps: dict[str, Any] = {"settings": settings}
    steps["follower"] = register(settings, extra_jobs=0)
    steps["spender"] = register(settings, extra_jobs=4)
    # The follower made champion by hand, as a user would in the MLflow UI.
    registry.set_alias(
        registry_config(settings, MODEL), MODEL, registry.CHAMPION, steps["follower"]
    )
    steps["registered"] = aliases(settings)

    flow: Callable[..., dict[str, Any]] = promote_flow
    common: dict[str, Any] = {
        "model": MODEL,
        "traces": ["promote_checkout"],
        "validation_days": 0.5,
        "forecaster_uri": None,
        "scenarios_file": str(scenarios),
        "state_dir": str(settings.state_dir),
    }
    for name, options in [
        ("compare", {"action": "compare"}),
        ("promote", {"action": "promote"}),
        ("force", {"action": "promote", "force": True}),
        ("rollback", {"action": "rollback"}),
    ]:
        steps[f"{name}_result"] = flow(**common, **options)
        steps[name] = aliases(settings)
        if name == "compare":
            steps["compare_run"] = run_data(settings, steps["spender"])
            steps["compare_tags"] = version_tags(settings, steps["spender"])
    steps["artifacts"] = artifact_markdown(f"promotion-{MODEL}")
    # The spender made champion by hand again; `autoscaler models` must show it.
    registry.set_alias(registry_config(settings, MODEL), MODEL, registry.CHAMPION, steps["spender"])
    steps["models_output"] = CliRunner().invoke(
        app, ["models", "--state-dir", str(settings.state_dir)], env=ENV
    )
    return steps


def test_compare_records_the_evidence_and_moves_nothing(story: dict[str, Any]) -> None:
    result, spender = story["compare_result"], story["spender"]
    assert (
        story["compare"]
        == story["registered"]
        == {
            registry.CHAMPION: story["follower"],
            registry.CHALLENGER: spender,
        }
    )
    assert result["version"] == spender  # the challenger alias by default
    assert result["champion_before"] == result["champion_after"] == story["follower"]
    assert not result["promoted"]
    # Four jobs above the rule all day costs more than the rule and the champion.
    metric = publish.GATE_METRIC
    metrics, tags = story["compare_run"].metrics, story["compare_run"].tags
    assert metrics[f"gate_challenger_{metric}"] > metrics[f"gate_champion_{metric}"]
    assert metrics[f"gate_challenger_{metric}"] > metrics[f"gate_baseline_predictive_{metric}"]
    assert result["would_promote"] is False
    assert story["compare_tags"]["compare.would_promote"] == "false"
    assert tags["gate.requirement.compare_only"].startswith("failed: comparison only")
    assert "gate.requirement.sla_vs_champion" in tags
    # The artifact holds the scores table and says nothing moved.
    summary = story["artifacts"][0]
    assert summary == result["summary"]
    assert "nothing moved" in summary
    assert f"| candidate v{spender} |" in summary and "| baseline predictive | 1 |" in summary
    assert "promote_checkout" in summary


def test_promote_refuses_a_losing_candidate_without_force(story: dict[str, Any]) -> None:
    result = story["promote_result"]
    assert story["promote"][registry.CHAMPION] == story["follower"]
    assert not result["promoted"] and not result["forced"]
    # The gate of the training flow judged it on the same validation as the comparison.
    assert result["scores"] == story["compare_result"]["scores"]
    assert "**refused**" in story["artifacts"][1]


def test_force_moves_the_champion_and_is_recorded(story: dict[str, Any]) -> None:
    result, spender = story["force_result"], story["spender"]
    assert story["force"][registry.CHAMPION] == spender
    assert result["promoted"] and result["forced"]
    tags = version_tags(story["settings"], spender)
    assert tags["promotion.forced"] == "true"
    assert tags["gate.decision"] == "refused"
    assert tags["promotion.forced_over"] == result["reason"]
    assert "forced to champion" in story["artifacts"][2]


def test_rollback_returns_the_champion_to_the_previous_one(story: dict[str, Any]) -> None:
    result = story["rollback_result"]
    assert story["rollback"][registry.CHAMPION] == story["follower"]
    assert result["champion_before"] == story["spender"]
    assert result["champion_after"] == story["follower"]
    assert f"from v{story['spender']} to **v{story['follower']}**" in story["artifacts"][3]


def test_models_command_shows_a_move_made_by_hand(story: dict[str, Any]) -> None:
    out = story["models_output"]
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(MODEL))
    assert f"champion -> v{story['spender']}" in lines[start]
    rows = {line.split()[0]: line for line in lines[start + 2 :] if line.startswith("  v")}
    assert "champion" in rows[f"v{story['spender']}"]
    assert "forced to champion" in rows[f"v{story['spender']}"]
    assert "champion" not in rows[f"v{story['follower']}"]
    assert "event-forecaster: no version registered" in out.output


def test_flow_fails_at_once_on_a_refusal(story: dict[str, Any]) -> None:
    """A missing version is not retried like an I/O failure (2 + 5 + 15 s of delays)."""
    from flows.promote import PromotionError, promote_flow

    state = str(story["settings"].state_dir)
    started = time.monotonic()
    with pytest.raises(PromotionError, match="version 99"):
        promote_flow(model=MODEL, action="rollback", to_version="99", state_dir=state)
    with pytest.raises(PromotionError, match="version 98"):
        promote_flow(model=MODEL, action="compare", version="98", state_dir=state)
    assert time.monotonic() - started < 15


def test_cli_rollback_refuses_an_unknown_target_then_moves_back(story: dict[str, Any]) -> None:
    settings = story["settings"]
    state = str(settings.state_dir)
    out = CliRunner().invoke(
        app, ["rollback", "--model", MODEL, "--to", "99", "--state-dir", state], env=ENV
    )
    assert out.exit_code == 2
    assert "version 99" in out.output
    assert aliases(settings)[registry.CHAMPION] == story["spender"]
    out = CliRunner().invoke(app, ["rollback", "--model", MODEL, "--state-dir", state], env=ENV)
    assert out.exit_code == 0, out.output
    # History: follower, spender (forced), follower (rollback), spender (by hand).
    assert aliases(settings)[registry.CHAMPION] == story["follower"]
    assert f"from v{story['spender']} to v{story['follower']}" in out.output
