"""What a registered model was saved with, read back through the registry."""

from __future__ import annotations

from pathlib import Path

from models import registry


def requirements_of(config: registry.RegistryConfig, model_uri: str) -> list[str]:
    """The pip requirements (``requirements.txt``) of the model at ``model_uri``."""
    from mlflow.pyfunc import get_model_dependencies

    with registry.tracking(config):
        return Path(get_model_dependencies(model_uri)).read_text().split()
