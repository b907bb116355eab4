"""The pip requirements this project's registered models are saved with.

Written out rather than inferred by MLflow: inference loads the model in a subprocess
(about 2 s of every registration) and only sees what loading imports, so it left out
torch, which the forecaster needs to predict.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

MODEL_RUNTIME = ("mlflow", "cloudpickle", "numpy", "pandas", "scipy", "predictive-autoscaler")
"""What loading any folder-backed model of this project needs; a model adds its own."""


def pinned_requirements(distributions: Sequence[str]) -> list[str]:
    """The installed version of each distribution, as ``name==version`` lines.

    A distribution that is not installed (the project run from a bare checkout) is
    listed without a version.
    """
    out = []
    for name in distributions:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return out
