"""Behaviour of the MLflow registry helpers on a SQLite registry in a temporary folder.

One registry serves the module (creating MLflow's tables takes a few seconds); each test
uses its own model name or alias, so tests do not see each other's versions. Gate and
rollback tests register bare versions (a run and a version, no artifacts) because the gate
only reads and writes registry metadata; logging and loading use a real pyfunc model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pandas as pd
import pytest

from models.registry import (
    CHALLENGER,
    CHAMPION,
    HISTORY_TAG,
    AliasCache,
    RegisteredVersion,
    RegistryConfig,
    RegistryError,
    client,
    load,
    log_and_register,
    promotion_gate,
    resolve_alias,
    rollback,
    set_alias,
    tracking,
    training_run,
)

if TYPE_CHECKING:
    from mlflow.pyfunc import PyFuncModel

# MLflow's SQL store uses a SQLAlchemy loader strategy deprecated in SQLAlchemy 2.1; not ours.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

MODEL = "multiplier"
INPUT = pd.DataFrame({"x": [1.0, 2.0, 5.0]})


def multiplier_class() -> type:
    """A tiny pyfunc model: its artifact is a JSON file holding a factor applied to ``x``.

    Built in a function so importing this test module does not import MLflow (2 s).
    """
    from mlflow.pyfunc import PythonModel

    class Multiplier(PythonModel):
        def load_context(self, context: Any) -> None:
            path = Path(context.artifacts["multiplier"])
            self.factor = float(json.loads(path.read_text())["factor"])

        def predict(
            self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
        ) -> pd.DataFrame:
            return pd.DataFrame({"y": model_input["x"] * self.factor})

    return Multiplier


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryConfig]:
    """A SQLite registry for the module, with MLflow's progress bars off.

    NullPool makes every query open the database file, so a test can make the registry
    unreachable by taking the file away (a pooled connection would keep reading it).
    """
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        patch.setenv("MLFLOW_SQLALCHEMYSTORE_POOLCLASS", "NullPool")
        yield RegistryConfig(
            tracking_uri=f"sqlite:///{root / 'db' / 'mlflow.db'}",
            artifacts_dir=root / "artifacts",
            experiment="registry-tests",
        )


def register_multiplier(
    config: RegistryConfig, folder: Path, factor: float, name: str = MODEL
) -> RegisteredVersion:
    from matplotlib.figure import Figure
    from mlflow.models import infer_signature

    artifact = folder / f"factor_{factor}.json"
    artifact.write_text(json.dumps({"factor": factor}))
    # A bare Figure needs no pyplot backend and no closing.
    figure = Figure()
    figure.add_subplot().plot([0, 1], [0, factor])
    return log_and_register(
        config,
        model_name=name,
        python_model=multiplier_class()(),
        artifacts={"multiplier": str(artifact)},
        signature=infer_signature(INPUT, INPUT.rename(columns={"x": "y"})),
        input_example=INPUT,
        params={"factor": factor},
        metrics={"wql_h15": 1.0 / factor},
        figures={"forecast": figure},
        tags={"trigger": "test"},
        run_name=f"factor-{factor}",
        # Inferring requirements loads the model in a subprocess: seconds per version.
        pip_requirements=["mlflow"],
    )


@pytest.fixture(scope="module")
def logged(
    config: RegistryConfig, tmp_path_factory: pytest.TempPathFactory
) -> list[RegisteredVersion]:
    """Two versions of the multiplier model: factor 2, then factor 3."""
    folder = tmp_path_factory.mktemp("model-files")
    return [register_multiplier(config, folder, factor) for factor in (2.0, 3.0)]


def bare_versions(config: RegistryConfig, name: str, count: int) -> list[str]:
    """Register ``count`` versions of ``name``, each with a finished run and no artifacts."""
    mlflow_client = client(config)
    with tracking(config) as experiment_id:
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


def gate(config: RegistryConfig, name: str, version: str, score: float, **kwargs: Any) -> Any:
    """The gate on metric ``wql`` against one baseline scoring 1.0, champion from kwargs."""
    options: dict[str, Any] = {"champion_score": None, "baseline_scores": {"naive": 1.0}}
    options.update(kwargs)
    return promotion_gate(
        config,
        model_name=name,
        challenger_version=version,
        metric="wql",
        challenger_score=score,
        **options,
    )


def run_data(config: RegistryConfig, name: str, version: str) -> Any:
    mlflow_client = client(config)
    run_id = mlflow_client.get_model_version(name, version).run_id
    assert run_id is not None
    return mlflow_client.get_run(run_id).data


def predicted(model: PyFuncModel) -> list[float]:
    """The model's ``y`` column for the test input."""
    output = model.predict(INPUT)
    assert isinstance(output, pd.DataFrame)
    return [float(value) for value in output["y"]]


# --------------------------------------------------------------------------- logging


def test_register_sets_challenger_and_increments_version(
    config: RegistryConfig, logged: list[RegisteredVersion]
) -> None:
    first, second = logged

    assert (first.version, second.version) == ("1", "2")
    assert second.model_uri == "models:/multiplier/2"
    assert resolve_alias(config, MODEL, CHALLENGER) == "2"
    assert resolve_alias(config, MODEL, CHAMPION) is None


def test_run_holds_params_metrics_tags_and_figures(
    config: RegistryConfig, logged: list[RegisteredVersion]
) -> None:
    mlflow_client = client(config)
    run = mlflow_client.get_run(logged[1].run_id)

    assert run.data.params["factor"] == "3.0"
    assert run.data.metrics["wql_h15"] == pytest.approx(1 / 3)
    assert run.data.tags["trigger"] == "test"
    assert run.info.run_name == "factor-3.0"
    figures = [item.path for item in mlflow_client.list_artifacts(run.info.run_id, "figures")]
    assert figures == ["figures/forecast.png"]
    # Artifacts land in the configured folder, not in ./mlruns.
    assert any(config.artifacts_dir.rglob("forecast.png"))


def test_nan_metric_is_refused_before_anything_is_logged(
    config: RegistryConfig, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="metric 'wql_h15' is nan"):
        log_and_register(
            config,
            model_name="nan-model",
            python_model=multiplier_class()(),
            artifacts={},
            signature=None,  # type: ignore[arg-type]  # never reached
            input_example=INPUT,
            params={},
            metrics={"wql_h15": float("nan")},
            figures={},
            tags={},
        )

    assert resolve_alias(config, "nan-model", CHALLENGER) is None
    assert client(config).search_registered_models(filter_string="name = 'nan-model'") == []


def test_pyfunc_round_trip_matches_in_memory_model(
    config: RegistryConfig, logged: list[RegisteredVersion], tmp_path: Path
) -> None:
    artifact = tmp_path / "factor.json"
    artifact.write_text(json.dumps({"factor": 2.0}))
    in_memory = multiplier_class()()
    in_memory.load_context(SimpleNamespace(artifacts={"multiplier": str(artifact)}))

    loaded = load(config, logged[0].model_uri)

    expected = in_memory.predict(None, INPUT)
    assert predicted(loaded) == expected["y"].tolist() == [2.0, 4.0, 10.0]
    assert predicted(load(config, f"models:/{MODEL}@{CHALLENGER}")) == [3.0, 6.0, 15.0]


@pytest.mark.parametrize(
    "uri",
    [
        "models://other-server/multiplier/1",
        "models://profile@databricks/multiplier@champion",
        "runs:/0123456789abcdef/model",
        "file:///tmp/model",
        "/tmp/model",
        "s3://bucket/model",
        "models:/multiplier",
        "models:/m-0123456789abcdef",
    ],
)
def test_foreign_uri_is_refused(config: RegistryConfig, uri: str) -> None:
    with pytest.raises(ValueError, match="models loaded only from the configured registry"):
        load(config, uri)


def test_tracking_restores_previous_uris(
    config: RegistryConfig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import mlflow

    outside = f"sqlite:///{tmp_path / 'outside.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", outside)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)

    with tracking(config) as experiment_id:
        assert mlflow.get_tracking_uri() == config.tracking_uri
        assert mlflow.get_registry_uri() == config.tracking_uri

    assert os.environ["MLFLOW_TRACKING_URI"] == outside
    assert "MLFLOW_REGISTRY_URI" not in os.environ
    assert mlflow.get_tracking_uri() == outside
    experiment = client(config).get_experiment(experiment_id)
    assert experiment.artifact_location == (config.artifacts_dir / config.experiment).as_uri()


# --------------------------------------------------------------------------- promotion gate


def test_gate_promotes_first_version_that_beats_the_baselines(config: RegistryConfig) -> None:
    (version,) = bare_versions(config, "gate-first", 1)

    decision = gate(config, "gate-first", version, 0.5)

    assert decision.promoted
    assert decision.champion_version_before is None
    assert resolve_alias(config, "gate-first", CHAMPION) == version
    data = run_data(config, "gate-first", version)
    assert data.metrics == {"gate_challenger_wql": 0.5, "gate_baseline_naive_wql": 1.0}
    assert data.tags["gate.decision"] == "promoted"
    assert data.tags["gate.champion_before"] == "none"
    assert "baseline naive" in data.tags["gate.reason"]


def test_gate_refuses_worse_challenger_and_keeps_champion(config: RegistryConfig) -> None:
    first, second = bare_versions(config, "gate-worse", 2)
    gate(config, "gate-worse", first, 0.5)

    decision = gate(config, "gate-worse", second, 0.6, champion_score=0.5)

    assert not decision.promoted
    assert decision.champion_version_before == first
    assert resolve_alias(config, "gate-worse", CHAMPION) == first
    data = run_data(config, "gate-worse", second)
    assert data.metrics == {
        "gate_challenger_wql": 0.6,
        "gate_champion_wql": 0.5,
        "gate_baseline_naive_wql": 1.0,
    }
    assert data.tags["gate.decision"] == "refused"
    assert data.tags["gate.champion_before"] == first
    assert f"champion v{first}" in data.tags["gate.reason"]
    version_tags = client(config).get_model_version("gate-worse", second).tags
    assert version_tags["gate.decision"] == "refused"
    assert version_tags["gate.reason"] == decision.reason


def test_gate_requirement_failure_refuses_a_better_challenger(config: RegistryConfig) -> None:
    first, second, third = bare_versions(config, "gate-req", 3)
    gate(config, "gate-req", first, 0.5)

    decision = gate(
        config,
        "gate-req",
        second,
        0.4,
        champion_score=0.5,
        requirements={"sla": "trace a 98.000% < 99.000%", "budget": None},
    )

    assert not decision.promoted
    assert "requirements failed: sla: trace a 98.000% < 99.000%" in decision.reason
    assert resolve_alias(config, "gate-req", CHAMPION) == first
    tags = run_data(config, "gate-req", second).tags
    assert tags["gate.requirement.sla"] == "failed: trace a 98.000% < 99.000%"
    assert tags["gate.requirement.budget"] == "met"
    assert tags["gate.decision"] == "refused"
    # Every requirement met: the metric decides as before.
    decision = gate(config, "gate-req", third, 0.4, champion_score=0.5, requirements={"sla": None})
    assert decision.promoted
    assert run_data(config, "gate-req", third).tags["gate.requirement.sla"] == "met"


def test_training_run_curves_and_registration_share_one_run(
    config: RegistryConfig, tmp_path: Path
) -> None:
    with training_run(config, run_name="curves") as (run_id, log):
        for step in range(3):
            log({"reward": -1.0 + step, "nan_point": float("nan")}, step * 100)
    artifact = tmp_path / "factor.json"
    artifact.write_text(json.dumps({"factor": 4.0}))
    from mlflow.models import infer_signature

    version = log_and_register(
        config,
        model_name="curve-model",
        python_model=multiplier_class()(),
        artifacts={"multiplier": str(artifact)},
        signature=infer_signature(INPUT, INPUT.rename(columns={"x": "y"})),
        input_example=INPUT,
        params={"factor": 4.0},
        metrics={"final": 1.0},
        figures={},
        tags={},
        pip_requirements=["mlflow"],
        run_id=run_id,
    )
    assert version.run_id == run_id
    history = client(config).get_metric_history(run_id, "reward")
    assert [(m.step, m.value) for m in history] == [(0, -1.0), (100, 0.0), (200, 1.0)]
    assert client(config).get_metric_history(run_id, "nan_point") == []
    assert client(config).get_run(run_id).data.metrics["final"] == 1.0


def test_gate_promotes_better_challenger(config: RegistryConfig) -> None:
    first, second = bare_versions(config, "gate-better", 2)
    gate(config, "gate-better", first, 0.5)

    decision = gate(config, "gate-better", second, 0.4, champion_score=0.5)

    assert decision.promoted
    assert decision.champion_version_before == first
    assert resolve_alias(config, "gate-better", CHAMPION) == second
    assert client(config).get_model_version("gate-better", second).tags["gate.decision"] == (
        "promoted"
    )


def test_gate_refuses_challenger_that_loses_to_a_baseline(config: RegistryConfig) -> None:
    first, second = bare_versions(config, "gate-baseline", 2)
    gate(config, "gate-baseline", first, 0.5, baseline_scores={"naive": 1.0})

    # Beats the champion, but the seasonal baseline is better still.
    decision = gate(
        config,
        "gate-baseline",
        second,
        0.4,
        champion_score=0.5,
        baseline_scores={"naive": 1.0, "seasonal-day": 0.3},
    )

    assert not decision.promoted
    assert resolve_alias(config, "gate-baseline", CHAMPION) == first
    assert "baseline seasonal-day" in decision.reason
    assert (
        run_data(config, "gate-baseline", second).metrics["gate_baseline_seasonal-day_wql"] == 0.3
    )


@pytest.mark.parametrize(
    ("score", "lower_is_better", "promoted"),
    [
        (0.97, True, False),  # 3 % better, 5 % needed
        (0.94, True, True),
        (1.03, False, False),
        (1.06, False, True),
        (1.0, True, False),  # a tie never wins
    ],
)
def test_gate_margin_and_direction(
    config: RegistryConfig, score: float, lower_is_better: bool, promoted: bool
) -> None:
    name = f"gate-margin-{score}-{lower_is_better}"
    (version,) = bare_versions(config, name, 1)

    decision = gate(
        config, name, version, score, lower_is_better=lower_is_better, min_improvement=0.05
    )

    assert decision.promoted is promoted
    assert (resolve_alias(config, name, CHAMPION) == version) is promoted


def test_gate_requires_champion_score_when_a_champion_exists(config: RegistryConfig) -> None:
    first, second = bare_versions(config, "gate-missing", 2)
    gate(config, "gate-missing", first, 0.5)

    with pytest.raises(ValueError, match="pass champion_score"):
        gate(config, "gate-missing", second, 0.1)
    with pytest.raises(ValueError, match="champion is now"):
        gate(config, "gate-missing", second, 0.1, champion_score=0.5, champion_version="7")
    with pytest.raises(ValueError, match="is nan"):
        gate(config, "gate-missing", second, float("nan"), champion_score=0.5)

    assert resolve_alias(config, "gate-missing", CHAMPION) == first


# --------------------------------------------------------------------------- rollback


def test_rollback_returns_to_previous_champions_then_refuses(config: RegistryConfig) -> None:
    versions = bare_versions(config, "rollback", 3)
    gate(config, "rollback", versions[0], 0.5)
    gate(config, "rollback", versions[1], 0.4, champion_score=0.5)
    gate(config, "rollback", versions[2], 0.3, champion_score=0.4)

    assert rollback(config, model_name="rollback") == versions[1]
    assert resolve_alias(config, "rollback", CHAMPION) == versions[1]
    assert rollback(config, model_name="rollback") == versions[0]
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        rollback(config, model_name="rollback")
    assert resolve_alias(config, "rollback", CHAMPION) == versions[0]

    assert rollback(config, model_name="rollback", to_version=versions[2]) == versions[2]
    assert resolve_alias(config, "rollback", CHAMPION) == versions[2]
    history = client(config).get_registered_model("rollback").tags[HISTORY_TAG]
    assert json.loads(history) == [versions[0], versions[2]]


def test_rollback_after_a_move_by_hand_returns_to_the_recorded_champion(
    config: RegistryConfig,
) -> None:
    first, second = bare_versions(config, "rollback-ui", 2)
    gate(config, "rollback-ui", first, 0.5)
    # A promotion in the MLflow UI bypasses this module: no history entry.
    client(config).set_registered_model_alias("rollback-ui", CHAMPION, second)

    assert rollback(config, model_name="rollback-ui") == first
    assert resolve_alias(config, "rollback-ui", CHAMPION) == first


def test_rollback_without_any_champion_history_fails(config: RegistryConfig) -> None:
    bare_versions(config, "rollback-none", 1)

    with pytest.raises(RegistryError, match="nothing to roll back to"):
        rollback(config, model_name="rollback-none")


def test_set_alias_moves_alias_and_records_champion(config: RegistryConfig) -> None:
    first, second = bare_versions(config, "manual", 2)

    set_alias(config, "manual", CHAMPION, first)
    set_alias(config, "manual", CHAMPION, second)
    set_alias(config, "manual", "shadow", first)

    assert resolve_alias(config, "manual", "shadow") == first
    assert resolve_alias(config, "manual", CHAMPION) == second
    assert rollback(config, model_name="manual") == first
    assert resolve_alias(config, "manual", CHAMPION) == first
    with pytest.raises(ValueError, match="not valid"):
        set_alias(config, "manual", "v2", first)


def test_resolve_alias_is_none_when_unset(config: RegistryConfig) -> None:
    bare_versions(config, "unset", 1)

    assert resolve_alias(config, "unset", CHAMPION) is None
    assert resolve_alias(config, "never-registered", CHAMPION) is None


# --------------------------------------------------------------------------- alias cache


def test_cache_reloads_after_alias_moved_by_hand(
    config: RegistryConfig, logged: list[RegisteredVersion]
) -> None:
    mlflow_client = client(config)
    mlflow_client.set_registered_model_alias(MODEL, "serving-ui", logged[0].version)
    cache = AliasCache(config)

    model, version = cache.get(MODEL, "serving-ui")
    assert version == logged[0].version
    assert predicted(model) == [2.0, 4.0, 10.0]

    # What the MLflow UI does when someone promotes a version by hand.
    mlflow_client.set_registered_model_alias(MODEL, "serving-ui", logged[1].version)
    model, version = cache.get(MODEL, "serving-ui")

    assert version == logged[1].version
    assert predicted(model) == [3.0, 6.0, 15.0]


def test_cache_does_not_reload_when_alias_unchanged(
    config: RegistryConfig, logged: list[RegisteredVersion]
) -> None:
    client(config).set_registered_model_alias(MODEL, "serving-same", logged[0].version)
    cache = AliasCache(config)

    first, _ = cache.get(MODEL, "serving-same")
    again, version = cache.get(MODEL, "serving-same")

    assert again is first
    assert version == logged[0].version
    assert cache.last_error is None


def test_cache_max_age_delays_the_registry_check(
    config: RegistryConfig, logged: list[RegisteredVersion]
) -> None:
    mlflow_client = client(config)
    mlflow_client.set_registered_model_alias(MODEL, "serving-age", logged[0].version)
    now = [0.0]
    cache = AliasCache(config, max_age_s=60.0, clock=lambda: now[0])
    cache.get(MODEL, "serving-age")
    mlflow_client.set_registered_model_alias(MODEL, "serving-age", logged[1].version)

    now[0] = 30.0
    assert cache.get(MODEL, "serving-age")[1] == logged[0].version
    now[0] = 61.0
    assert cache.get(MODEL, "serving-age")[1] == logged[1].version


def test_cache_serves_loaded_model_when_registry_unreachable(
    config: RegistryConfig, logged: list[RegisteredVersion]
) -> None:
    client(config).set_registered_model_alias(MODEL, "serving-down", logged[0].version)
    cache = AliasCache(config)
    loaded, _ = cache.get(MODEL, "serving-down")
    database = Path(config.tracking_uri.removeprefix("sqlite:///"))
    moved = database.with_name("away.db")

    database.rename(moved)
    database.mkdir()  # SQLite cannot open a folder: the registry is unreachable
    try:
        model, version = cache.get(MODEL, "serving-down")
        with pytest.raises(RegistryError, match="registry cannot provide"):
            AliasCache(config).get(MODEL, "serving-down")
    finally:
        database.rmdir()
        moved.rename(database)

    assert model is loaded
    assert version == logged[0].version
    assert cache.last_error is not None
    assert predicted(model) == [2.0, 4.0, 10.0]
    cache.get(MODEL, "serving-down")
    assert cache.last_error is None


def test_cache_raises_when_alias_was_never_set(config: RegistryConfig) -> None:
    with pytest.raises(RegistryError, match="is not set"):
        AliasCache(config).get(MODEL, "never-set")
