"""The one typed settings object, built at entry points and passed down.

Values come from, highest priority first: keyword overrides given to `build_settings`,
environment variables (`AUTOSCALER_<FIELD>`; the traces folder also honours `TRACES_DIR`),
then the defaults below. Relative paths are relative to the working directory, which is the
repository root when run through `make`.

Nothing here touches the disk at import time; call `Settings.ensure_dirs` when an entry point
is about to write state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

ENV_PREFIX = "AUTOSCALER_"


class Settings(BaseSettings):
    """Run-wide settings for the auto-scaler, its benchmarks and its pipelines.

    Attributes:
        state_dir: Folder for all local state (reports, benchmark output, stores).
        traces_dir: Folder holding the public traffic traces.
        scenarios_file: YAML file listing benchmark scenarios.
        seed: Base seed for runs no scenario fixes; the benchmark and demo scenarios
            carry their own seeds in the scenarios file.
        feature_repo: Feast feature repository folder.
        online_store: Feast online store backend, ``sqlite`` or ``redis``.
        redis_url: Redis connection string when ``online_store`` is ``redis``.
        drop_dir: Folder of user exports to ingest (default <state_dir>/drop).
        freshness_minutes: Age of the newest metrics that triggers a freshness warning.
        history_days: Days of history the simulated cluster source produces.
        log_level: Minimum level of log records that are emitted.
        api_token: Bearer token of the HTTP API (a secret: from the environment).
        mlflow_tracking_uri: MLflow tracking and registry URI; None for a SQLite file in
            the state folder (see ``mlflow_uri``).
    """

    # Frozen: settings are built once and shared, so no callee may change them under others.
    # Extra keys are rejected so a misspelt override fails instead of being ignored.
    # An empty variable (`AUTOSCALER_STATE_DIR=`) counts as unset: Path("") would silently
    # mean the working directory.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,
        extra="forbid",
        frozen=True,
        validate_default=True,
        validate_by_name=True,
        validate_by_alias=True,
    )

    state_dir: Path = Field(
        default=Path(".state"),
        description="Folder for all local state (reports, benchmark JSON, stores); git-ignored.",
    )
    traces_dir: Path = Field(
        default=Path("../shared/data/traces"),
        # The plain TRACES_DIR name is shared with tooling outside this package.
        validation_alias=AliasChoices(f"{ENV_PREFIX}TRACES_DIR", "TRACES_DIR"),
        description="Folder holding the public traffic traces (CSV/JSON).",
    )
    scenarios_file: Path = Field(
        default=Path("bench/scenarios.yaml"),
        description="YAML file listing the benchmark scenarios.",
    )
    seed: int = Field(
        default=0,
        ge=0,
        le=2**32 - 1,
        description=(
            "Base seed for runs no scenario fixes (benchmark and demo scenarios carry their "
            "own seeds); numpy accepts 0..2**32-1."
        ),
    )
    feature_repo: Path = Field(
        default=Path("feature_repo"),
        description="Feast feature repository (definitions and feature_store.yaml).",
    )
    online_store: Literal["sqlite", "redis"] = Field(
        default="sqlite",
        description="Feast online store: a SQLite file in the state folder, or Redis.",
    )
    redis_url: str = Field(
        default="localhost:6379",
        description="Feast Redis connection string (host:port[,db=N][,password=...]).",
    )
    drop_dir: Path | None = Field(
        default=None,
        description="Folder users drop CSV/Parquet exports into; default <state_dir>/drop.",
    )
    freshness_minutes: int = Field(
        default=15,
        ge=1,
        description="Newest metrics older than this get a freshness warning at ingestion.",
    )
    history_days: int = Field(
        default=14,
        ge=8,
        description=(
            "Days of history the simulated cluster source produces (>= 8: a week of lags "
            "plus a day to learn from)."
        ),
    )
    log_level: LogLevel = Field(
        default="INFO",
        description="Minimum log level: DEBUG, INFO, WARNING, ERROR or CRITICAL.",
    )
    api_token: SecretStr | None = Field(
        default=None,
        description=(
            "Bearer token callers of the HTTP API must present (AUTOSCALER_API_TOKEN); "
            "without one the API refuses every request. Set it in the environment only."
        ),
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description=(
            "MLflow tracking and registry URI (e.g. postgresql://..., http://host:5000); "
            "default a SQLite file <state_dir>/mlflow/mlflow.db."
        ),
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: Any) -> Any:
        """Accept any case (`debug`, `Info`), as the logging module's names are upper case.

        Args:
            value: The raw value from an override or the environment.

        Returns:
            The value upper-cased when it is a string, else unchanged for the type check.
        """
        return value.strip().upper() if isinstance(value, str) else value

    @property
    def reports_dir(self) -> Path:
        """Folder for generated reports (tables, plots, markdown)."""
        return self.state_dir / "reports"

    @property
    def bench_dir(self) -> Path:
        """Folder for benchmark JSON output."""
        return self.state_dir / "bench"

    @property
    def offline_dir(self) -> Path:
        """Offline store of validated metrics (partitioned Parquet)."""
        return self.state_dir / "offline"

    @property
    def quarantine_dir(self) -> Path:
        """Rejected batches with their validation results and reports."""
        return self.state_dir / "quarantine"

    @property
    def feast_dir(self) -> Path:
        """Feast registry, online store file and feature Parquet."""
        return self.state_dir / "feast"

    @property
    def drop_folder(self) -> Path:
        """Where users drop exports: ``drop_dir`` or <state_dir>/drop."""
        return self.drop_dir if self.drop_dir is not None else self.state_dir / "drop"

    @property
    def cluster_dir(self) -> Path:
        """The simulated cluster's state (the default actuator of the inference flow)."""
        return self.state_dir / "cluster"

    @property
    def prefect_home(self) -> Path:
        """PREFECT_HOME for flows run from this project (temporary server's database)."""
        return self.state_dir / "prefect"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        """Local folder standing in for object storage: MLflow run and model artifacts."""
        return self.state_dir / "mlflow" / "artifacts"

    @property
    def mlflow_uri(self) -> str:
        """Effective MLflow tracking URI: ``mlflow_tracking_uri`` or the state folder's SQLite.

        The SQLite URI is absolute (``sqlite:////abs/path``), so it means the same file
        whatever the working directory of the process that receives it.
        """
        if self.mlflow_tracking_uri is not None:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.state_dir / 'mlflow' / 'mlflow.db').resolve()}"

    def ensure_dirs(self) -> list[Path]:
        """Create the state folders if they are missing.

        Returns:
            The folders that now exist: state, reports and bench.
        """
        dirs = [self.state_dir, self.reports_dir, self.bench_dir]
        for path in dirs:
            path.mkdir(parents=True, exist_ok=True)
        return dirs


def build_settings(**overrides: Any) -> Settings:
    """Build settings from the environment, with explicit overrides on top.

    Overrides whose value is None are dropped, so a CLI option left unset falls back to the
    environment and then the default instead of erasing them.

    Args:
        **overrides: Field values by field name (e.g. `seed=3`, `traces_dir=Path("x")`).

    Returns:
        The validated, frozen settings.

    Raises:
        pydantic.ValidationError: If a value is invalid or a name is not a field.
    """
    given = {name: value for name, value in overrides.items() if value is not None}
    return Settings(**given)
