"""Behaviour of the settings object: defaults, environment overrides, validation, folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from autoscaler.settings import build_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide any AUTOSCALER_* or TRACES_DIR variables of the machine running the tests."""
    for name in list(os.environ):
        if name.upper().startswith("AUTOSCALER_") or name.upper() == "TRACES_DIR":
            monkeypatch.delenv(name)


def test_defaults_without_environment() -> None:
    settings = build_settings()

    assert settings.state_dir == Path(".state")
    assert settings.traces_dir == Path("../shared/data/traces")
    assert settings.scenarios_file == Path("bench/scenarios.yaml")
    assert settings.seed == 0
    assert settings.log_level == "INFO"


def test_derived_dirs_follow_state_dir(tmp_path: Path) -> None:
    settings = build_settings(state_dir=tmp_path / "st")

    assert settings.reports_dir == tmp_path / "st" / "reports"
    assert settings.bench_dir == tmp_path / "st" / "bench"


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AUTOSCALER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AUTOSCALER_SEED", "42")
    monkeypatch.setenv("AUTOSCALER_LOG_LEVEL", "debug")
    monkeypatch.setenv("AUTOSCALER_SCENARIOS_FILE", str(tmp_path / "s.yaml"))

    settings = build_settings()

    assert settings.state_dir == tmp_path / "state"
    assert settings.seed == 42
    assert settings.log_level == "DEBUG"
    assert settings.scenarios_file == tmp_path / "s.yaml"


def test_overrides_beat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOSCALER_SEED", "42")

    assert build_settings(seed=7).seed == 7


def test_none_override_falls_back_to_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOSCALER_SEED", "42")

    assert build_settings(seed=None).seed == 42


def test_empty_environment_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOSCALER_STATE_DIR", "")

    assert build_settings().state_dir == Path(".state")


def test_plain_traces_dir_variable_is_honoured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TRACES_DIR", str(tmp_path / "plain"))

    assert build_settings().traces_dir == tmp_path / "plain"


def test_prefixed_traces_dir_wins_over_plain(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TRACES_DIR", str(tmp_path / "plain"))
    monkeypatch.setenv("AUTOSCALER_TRACES_DIR", str(tmp_path / "prefixed"))

    assert build_settings().traces_dir == tmp_path / "prefixed"


def test_traces_dir_override_by_field_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRACES_DIR", str(tmp_path / "plain"))

    assert build_settings(traces_dir=tmp_path / "cli").traces_dir == tmp_path / "cli"


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("AUTOSCALER_SEED", "abc", "seed"),
        ("AUTOSCALER_SEED", "-1", "seed"),
        ("AUTOSCALER_SEED", str(2**32), "seed"),
        ("AUTOSCALER_LOG_LEVEL", "LOUD", "log_level"),
    ],
)
def test_invalid_environment_value_names_the_field(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(ValidationError) as excinfo:
        build_settings()

    errors = excinfo.value.errors()
    assert [error["loc"] for error in errors] == [(field,)]


def test_invalid_log_level_lists_the_choices() -> None:
    with pytest.raises(ValidationError, match="'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'"):
        build_settings(log_level="LOUD")


def test_unknown_override_is_rejected() -> None:
    with pytest.raises(ValidationError, match="sead"):
        build_settings(sead=3)


def test_settings_are_frozen() -> None:
    settings = build_settings()

    with pytest.raises(ValidationError):
        settings.seed = 5  # type: ignore[misc]


def test_building_settings_creates_no_folders(tmp_path: Path) -> None:
    build_settings(state_dir=tmp_path / "st")

    assert not (tmp_path / "st").exists()


def test_ensure_dirs_creates_state_folders(tmp_path: Path) -> None:
    settings = build_settings(state_dir=tmp_path / "st")

    created = settings.ensure_dirs()
    settings.ensure_dirs()  # a second call must not fail on existing folders

    assert created == [tmp_path / "st", tmp_path / "st" / "reports", tmp_path / "st" / "bench"]
    assert all(path.is_dir() for path in created)


def test_mlflow_defaults_to_sqlite_file_in_state_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)

    settings = build_settings(state_dir=Path("st"))

    assert settings.mlflow_tracking_uri is None
    # Absolute although state_dir is relative: a flow run elsewhere must open the same file.
    assert settings.mlflow_uri == f"sqlite:///{tmp_path.resolve() / 'st' / 'mlflow' / 'mlflow.db'}"
    assert settings.mlflow_uri.startswith("sqlite:////")
    assert settings.mlflow_artifacts_dir == Path("st") / "mlflow" / "artifacts"


def test_mlflow_tracking_uri_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOSCALER_MLFLOW_TRACKING_URI", "postgresql://mlflow@db/mlflow")

    settings = build_settings()

    assert settings.mlflow_uri == "postgresql://mlflow@db/mlflow"


def test_empty_mlflow_tracking_uri_means_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOSCALER_MLFLOW_TRACKING_URI", "")

    assert build_settings().mlflow_uri.startswith("sqlite:///")
