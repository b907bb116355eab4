"""Process set-up for entry points that run Prefect flows.

Prefect reads its settings from the environment when it is first imported, so entry
points call :func:`configure_prefect` before importing anything from ``flows``. Values
already in the environment win: an operator pointing ``PREFECT_API_URL`` at a real server
keeps it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from autoscaler.settings import Settings

if TYPE_CHECKING:
    from features.store import FeastConfig
    from models.registry import RegistryConfig

# A cold start of Prefect's temporary server took 18 s on a 2-core machine; the default
# limit is too tight there.
EPHEMERAL_STARTUP_TIMEOUT_S = 120


def prefect_environment(settings: Settings) -> dict[str, str]:
    """Prefect settings for this project: its home inside the state folder, no analytics.

    ``PREFECT_API_URL`` is left unset, so Prefect starts its temporary server unless the
    operator set one.
    """
    return {
        "PREFECT_HOME": str(settings.prefect_home.resolve()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(EPHEMERAL_STARTUP_TIMEOUT_S),
        "GX_ANALYTICS_ENABLED": "false",
        # MLflow draws a progress bar for every artifact download (each model load).
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }


def configure_prefect(settings: Settings) -> None:
    """Export :func:`prefect_environment` for keys not already set."""
    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    for key, value in prefect_environment(settings).items():
        os.environ.setdefault(key, value)


def feast_config(settings: Settings) -> FeastConfig:
    """The Feast configuration the settings describe (repo, state folder, online store)."""
    from features.store import FeastConfig

    return FeastConfig(
        repo_dir=settings.feature_repo,
        feast_dir=settings.feast_dir,
        online_store=settings.online_store,
        redis_url=settings.redis_url,
    )


def registry_config(settings: Settings, experiment: str) -> RegistryConfig:
    """The MLflow registry the settings describe; runs go to ``experiment``."""
    from models.registry import RegistryConfig

    return RegistryConfig(
        tracking_uri=settings.mlflow_uri,
        artifacts_dir=settings.mlflow_artifacts_dir,
        experiment=experiment,
    )
