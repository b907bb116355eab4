"""MLflow logging, registration, aliases, promotion gates and loading, for any model.

The one module below ``flows/`` that imports MLflow; it does so inside functions because
the import takes about 2 s. Every function takes a :class:`RegistryConfig` built at an
entry point; nothing here reads the environment or changes MLflow's global state for
longer than one call (see :func:`tracking`).

Lifecycle of a version (aliases, never stages):

1. :func:`log_and_register` logs one run (params, metrics, figures, pyfunc model),
   registers the model and points alias ``challenger`` at the new version.
2. The caller scores challenger, current champion and baselines on the same held-back
   evaluation; :func:`promotion_gate` compares the scores, writes the evidence on the
   challenger's run and version, and moves ``champion`` only when the challenger wins.
3. Inference loads ``champion`` through :class:`AliasCache`, which asks the registry on
   every call (or every ``max_age_s``) where the alias points, so a move made by hand in
   the MLflow UI is served from the next inference cycle on.
4. :func:`rollback` moves ``champion`` back to the previous champion (kept in the
   registered-model tag ``champion_history``) or to a given version.

MLflow keeps the tracking and registry URIs in process-wide state; the fluent calls used
here (runs, model logging, pyfunc loading) read it. :func:`tracking` sets both for the
duration of a call and restores them after, so this module is not safe to call from
several threads at once with different configurations.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

# At module level, not in the function that builds FolderModel: MLflow resolves the string
# annotations of its predict() in this module's globals to validate inputs.
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import MlflowClient
    from mlflow.models import ModelSignature
    from mlflow.pyfunc import PyFuncModel, PythonModel

logger = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
# Registered-model tag with the versions that were champion, oldest first (JSON list).
HISTORY_TAG = "champion_history"
# Tag values are limited in size (5000 characters in MLflow's SQL stores); the oldest
# entries are dropped beyond this many.
HISTORY_LIMIT = 100

# MLflow's own rule for metric, param and tag keys.
_KEY_PATTERN = re.compile(r"^[\w\-. /]+$")
_ALIAS_PATTERN = re.compile(r"^[\w\-]+$")
# MLflow reserves these: `latest` and version-like names (`v3`) would be ambiguous in URIs.
_RESERVED_ALIAS = re.compile(r"^(latest|[vV]\d+)$")
# models:/<name>@<alias> or models:/<name>/<version>; a netloc (models://profile@host/...)
# would point at another registry and does not match.
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w\-]+)|/(?P<version>\d+))$")
_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


class RegistryError(RuntimeError):
    """The registry cannot do what was asked (nothing to roll back, no model loaded...)."""


@dataclass(frozen=True)
class RegistryConfig:
    """Where runs, models and artifacts live; entry points build it from the settings.

    Attributes:
        tracking_uri: MLflow tracking URI, also used as registry URI (e.g.
            ``sqlite:////abs/path/mlflow.db``, ``postgresql://...``, ``http://host:5000``).
        artifacts_dir: Local folder standing in for object storage; an experiment created
            here stores its artifacts under ``<artifacts_dir>/<experiment>``. Made absolute.
        experiment: Name of the MLflow experiment runs are logged to (created if missing).
    """

    tracking_uri: str
    artifacts_dir: Path
    experiment: str

    def __post_init__(self) -> None:
        if not self.tracking_uri.strip():
            raise ValueError("tracking_uri is empty; pass the settings' mlflow_uri")
        if not self.experiment.strip() or "/" in self.experiment:
            raise ValueError(
                f"experiment name {self.experiment!r} must be non-empty and without '/' "
                "(it names the artifacts folder)"
            )
        # A file URI needs an absolute path; resolve once so a later chdir changes nothing.
        object.__setattr__(self, "artifacts_dir", Path(self.artifacts_dir).resolve())

    @property
    def artifact_location(self) -> str:
        """File URI where a newly created experiment stores its artifacts."""
        return (self.artifacts_dir / self.experiment).as_uri()


@dataclass(frozen=True)
class RegisteredVersion:
    """A model version just registered.

    Attributes:
        name: Registered model name.
        version: Version number as MLflow writes it (a string, e.g. ``"3"``).
        run_id: Run that logged the model and holds its params, metrics and figures.
        model_uri: ``models:/<name>/<version>``, loadable with :func:`load`.
    """

    name: str
    version: str
    run_id: str
    model_uri: str


@dataclass(frozen=True)
class GateDecision:
    """What the promotion gate decided and why.

    Attributes:
        promoted: True when ``champion`` now points at the challenger.
        reason: One sentence naming the scores that decided.
        challenger_version: The version that was judged.
        champion_version_before: Champion before the gate (None when there was none).
        metric: Name of the metric compared.
        scores: The evidence as logged on the challenger's run
            (``gate_challenger_<metric>``, ``gate_champion_<metric>``,
            ``gate_baseline_<name>_<metric>``).
    """

    promoted: bool
    reason: str
    challenger_version: str
    champion_version_before: str | None
    metric: str
    scores: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- connection


def _ensure_sqlite_folder(uri: str) -> None:
    """Create the folder of a SQLite database file: SQLite creates the file, not folders."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and ":memory:" not in uri:
        Path(uri[len(prefix) :].split("?", 1)[0]).parent.mkdir(parents=True, exist_ok=True)


def client(config: RegistryConfig) -> MlflowClient:
    """An MLflow client for the configured server, for tracking and registry both.

    The first use of a fresh SQLite file creates MLflow's tables (a few seconds).

    Args:
        config: Registry configuration.

    Returns:
        The client; it does not touch MLflow's process-wide URIs.
    """
    from mlflow import MlflowClient

    _ensure_sqlite_folder(config.tracking_uri)
    return MlflowClient(tracking_uri=config.tracking_uri, registry_uri=config.tracking_uri)


@contextmanager
def _registry_uris(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking and registry URIs at ``uri``, then restore.

    ``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI`` (and unsets it when
    given None, even if the user had set it); ``set_registry_uri(None)`` leaves our URI in
    ``MLFLOW_REGISTRY_URI``. So the module state and both variables are saved and put
    back by hand.
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_state
    from mlflow.tracking._tracking_service import utils as tracking_state

    saved_env = {name: os.environ.get(name) for name in _URI_VARIABLES}
    saved_tracking: str | None = getattr(tracking_state, "_tracking_uri", None)
    saved_registry: str | None = getattr(registry_state, "_registry_uri", None)
    _ensure_sqlite_folder(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        # MLflow types these as str, but None is how they say "not set".
        mlflow.set_tracking_uri(saved_tracking)  # type: ignore[arg-type]
        registry_state._registry_uri = saved_registry  # type: ignore[assignment]
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _experiment_id(mlflow_client: MlflowClient, config: RegistryConfig) -> str:
    """Id of the configured experiment, created with its artifact location if missing."""
    from mlflow.exceptions import MlflowException

    experiment = mlflow_client.get_experiment_by_name(config.experiment)
    if experiment is None:
        try:
            return mlflow_client.create_experiment(
                config.experiment, artifact_location=config.artifact_location
            )
        except MlflowException:
            # Another process may have created it meanwhile.
            experiment = mlflow_client.get_experiment_by_name(config.experiment)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise RegistryError(
            f"experiment {config.experiment!r} is deleted; restore it in the MLflow UI "
            "or configure another experiment name"
        )
    return str(experiment.experiment_id)


@contextmanager
def tracking(config: RegistryConfig) -> Iterator[str]:
    """Use the configured server for MLflow's fluent API for the duration of the block.

    Sets the tracking and registry URIs, creates the experiment if missing (artifacts
    under ``config.artifacts_dir``) and restores the previous URIs afterwards, so callers
    and tests do not leak global state.

    Args:
        config: Registry configuration.

    Yields:
        The experiment id, for ``mlflow.start_run(experiment_id=...)``.
    """
    experiment_id = _experiment_id(client(config), config)
    with _registry_uris(config.tracking_uri):
        yield experiment_id


# --------------------------------------------------------------------------- validation


def _check_key(kind: str, key: str) -> None:
    if not key or not _KEY_PATTERN.match(key):
        raise ValueError(
            f"{kind} name {key!r} is not a valid MLflow key (letters, digits, '_', '-', '.', "
            "' ' and '/')"
        )


def _check_alias(alias: str) -> None:
    if not _ALIAS_PATTERN.match(alias) or _RESERVED_ALIAS.match(alias.lower()):
        raise ValueError(
            f"alias {alias!r} is not valid: letters, digits, '_' and '-', not 'latest' "
            "and not shaped like a version ('v3')"
        )


def _finite(kind: str, name: str, value: float) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(
            f"{kind} {name!r} is {number}; only finite numbers are logged, fix the "
            "evaluation that produced it"
        )
    return number


# --------------------------------------------------------------------------- logging


def log_and_register(
    config: RegistryConfig,
    *,
    model_name: str,
    python_model: PythonModel | str | Path,
    artifacts: Mapping[str, str],
    signature: ModelSignature,
    input_example: Any,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    figures: Mapping[str, Figure],
    tags: Mapping[str, str],
    run_name: str | None = None,
    pip_requirements: list[str] | None = None,
    run_id: str | None = None,
) -> RegisteredVersion:
    """Log one run with the model, register it and point ``challenger`` at the new version.

    Args:
        config: Registry configuration.
        model_name: Registered model name (``event-forecaster``, ``scaling-controller``).
        python_model: The pyfunc model: a ``PythonModel`` instance (pickled with
            cloudpickle, so its class must be importable where it is loaded) or the path
            of a models-from-code file.
        artifacts: Files the model needs at load time, by name (``context.artifacts``).
        signature: Input/output schema (``mlflow.models.infer_signature``).
        input_example: A small valid input; MLflow checks it against the signature.
        params: Hyper-parameters and data ranges, logged as run params.
        metrics: Evaluation results (e.g. ``wql_h15``); NaN and infinity are refused.
        figures: Matplotlib figures by name, logged under ``figures/<name>.png``.
        tags: Run tags (data version, git commit, trigger...).
        run_name: Run name shown in the MLflow UI; MLflow picks one when None.
        pip_requirements: Requirements written with the model; None lets MLflow infer
            them, which loads the model in a subprocess (a few seconds).
        run_id: Continue this run (e.g. the one training logged its curves to, see
            :func:`training_run`) instead of starting a new one.

    Returns:
        The registered version.

    Raises:
        ValueError: If a metric is not finite or a name is not a valid MLflow key,
            before anything is logged.
    """
    _check_key("model", model_name)
    checked_metrics = {name: _finite("metric", name, value) for name, value in metrics.items()}
    for name in (*params, *checked_metrics, *tags, *figures):
        _check_key("param, metric, tag or figure", name)
    missing = {name: path for name, path in artifacts.items() if not Path(path).exists()}
    if missing:
        raise ValueError(f"model artifacts not found: {missing}")

    import mlflow
    from mlflow.pyfunc import log_model  # not mlflow.pyfunc.*: a lazy module, untyped

    with (
        tracking(config) as experiment_id,
        mlflow.start_run(
            run_id=run_id, experiment_id=None if run_id else experiment_id, run_name=run_name
        ) as run,
    ):
        mlflow.set_tags(dict(tags))
        if params:
            mlflow.log_params(dict(params))
        if checked_metrics:
            mlflow.log_metrics(checked_metrics)
        for name, figure in figures.items():
            file_name = name if name.endswith((".png", ".svg", ".pdf")) else f"{name}.png"
            mlflow.log_figure(figure, f"figures/{file_name}")
        info = log_model(
            name="model",
            python_model=python_model,
            artifacts=dict(artifacts),
            signature=signature,
            input_example=input_example,
            registered_model_name=model_name,
            pip_requirements=pip_requirements,
        )
        run_id = run.info.run_id
    if info.registered_model_version is None:
        raise RegistryError(f"MLflow logged the model but did not register {model_name!r}")
    version = str(info.registered_model_version)
    client(config).set_registered_model_alias(model_name, CHALLENGER, version)
    logger.info("registered %s version %s (run %s) as %s", model_name, version, run_id, CHALLENGER)
    return RegisteredVersion(
        name=model_name, version=version, run_id=run_id, model_uri=version_uri(model_name, version)
    )


@contextmanager
def training_run(
    config: RegistryConfig, run_name: str | None = None
) -> Iterator[tuple[str, Callable[[dict[str, float], int], None]]]:
    """An MLflow run to log training curves to, later continued by :func:`log_and_register`.

    Yields:
        The run id and a ``log(metrics, step)`` function for training callbacks
        (non-finite values are skipped: a curve with a NaN point is still a curve).
    """
    import mlflow

    with (
        tracking(config) as experiment_id,
        mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run,
    ):
        run_id = run.info.run_id

        def log(metrics: dict[str, float], step: int) -> None:
            finite = {k: float(v) for k, v in metrics.items() if math.isfinite(v)}
            mlflow.log_metrics(finite, step=int(step), run_id=run_id)

        yield run_id, log


# ------------------------------------------------------------------- folder-backed pyfunc

FOLDER_ARTIFACT = "folder"
"""Artifact name of the folder a :data:`FolderModel` loads."""
_LOADER = re.compile(r"^models(\.\w+)+:\w+$")


def _folder_model_class() -> type:
    """Build the :data:`FolderModel` class (imports MLflow, so only on first use)."""
    import importlib

    from mlflow.pyfunc import PythonModel

    class FolderModel(PythonModel):
        """A pyfunc over a saved model folder and a loader function of this project.

        The model is a folder (artifact :data:`FOLDER_ARTIFACT`) and a loader
        ``"models.<module>:<function>"`` that turns the folder into an object with
        ``predict(frame) -> frame``. Pickling this wrapper stores only the loader name,
        so the model's own code and format stay in its package, not in the pickle.

        Args:
            loader: ``"package.module:function"`` inside the ``models`` package.
        """

        def __init__(self, loader: str) -> None:
            if not _LOADER.match(loader):
                raise ValueError(
                    f"loader {loader!r} must be 'models.<module>:<function>' of this project"
                )
            self.loader = loader
            self._predictor: Any = None

        def load_context(self, context: Any) -> None:
            module, function = self.loader.split(":")
            load = getattr(importlib.import_module(module), function)
            self._predictor = load(context.artifacts[FOLDER_ARTIFACT])

        def predict(
            self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
        ) -> pd.DataFrame:
            if self._predictor is None:
                raise RegistryError("the model's folder was not loaded (load_context not run)")
            result: pd.DataFrame = self._predictor.predict(model_input)
            return result

    # Importable as models.registry.FolderModel, so cloudpickle stores a reference to the
    # class rather than its code, and loading resolves it through __getattr__ below.
    FolderModel.__module__ = __name__
    FolderModel.__qualname__ = "FolderModel"
    return FolderModel


def folder_predictor(model: PyFuncModel) -> Any:
    """The object a :data:`FolderModel`'s loader built (the project's own model class).

    Raises:
        RegistryError: If ``model`` is not a folder-backed model of this project.
    """
    inner = model.unwrap_python_model()
    predictor = getattr(inner, "_predictor", None)
    if predictor is None or not hasattr(inner, "loader"):
        raise RegistryError("the model is not a folder-backed model of this project")
    return predictor


def __getattr__(name: str) -> Any:
    # Module-level lazy attribute (PEP 562): FolderModel subclasses MLflow's PythonModel,
    # and importing MLflow here at import time would cost every importer ~2 s.
    if name == "FolderModel":
        cls = _folder_model_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def infer_signature(
    model_input: Any, model_output: Any, optional: tuple[str, ...] = ()
) -> ModelSignature:
    """MLflow's signature of an input and output example (``mlflow.models.infer_signature``).

    Args:
        model_input: Input example (a table holding every column, optional ones too).
        model_output: Output example.
        optional: Input columns callers may leave out. Columns absent from a signature
            would be dropped by MLflow's input check, so optional inputs must be listed.

    Returns:
        The signature.
    """
    from mlflow.models import ModelSignature as Signature
    from mlflow.models import infer_signature as infer
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    signature = infer(model_input, model_output)
    if not optional:
        return signature
    inputs = signature.inputs
    unknown = set(optional) - set(inputs.input_names())
    if unknown:
        raise ValueError(f"optional columns {sorted(unknown)} are not in the input example")
    specs: list[ColSpec | TensorSpec] = [
        ColSpec(spec.type, spec.name, required=spec.name not in optional) for spec in inputs.inputs
    ]
    return Signature(inputs=Schema(specs), outputs=signature.outputs, params=signature.params)


# --------------------------------------------------------------------------- aliases


def resolve_alias(config: RegistryConfig, model_name: str, alias: str) -> str | None:
    """The version an alias points to.

    Args:
        config: Registry configuration.
        model_name: Registered model name.
        alias: Alias, e.g. ``champion``.

    Returns:
        The version, or None when the alias is not set (or the model is not registered).

    Raises:
        mlflow.exceptions.MlflowException: If the registry cannot be reached.
    """
    from mlflow.exceptions import MlflowException

    try:
        registered = client(config).get_registered_model(model_name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = registered.aliases.get(alias)
    return None if version is None else str(version)


def _history(mlflow_client: MlflowClient, model_name: str) -> list[str]:
    raw = mlflow_client.get_registered_model(model_name).tags.get(HISTORY_TAG)
    if not raw:
        return []
    try:
        entries = json.loads(raw)
    except json.JSONDecodeError:
        logger.warning("tag %s of %s is not JSON; starting a new history", HISTORY_TAG, model_name)
        return []
    return [str(entry) for entry in entries] if isinstance(entries, list) else []


def _move_champion(
    mlflow_client: MlflowClient, model_name: str, version: str, history: list[str]
) -> None:
    """Point ``champion`` at ``version`` and store ``history`` (ending with it)."""
    mlflow_client.set_registered_model_alias(model_name, CHAMPION, version)
    mlflow_client.set_registered_model_tag(
        model_name, HISTORY_TAG, json.dumps(history[-HISTORY_LIMIT:])
    )


def set_alias(config: RegistryConfig, model_name: str, alias: str, version: str) -> None:
    """Point an alias at a version by hand (as the MLflow UI does).

    Moving ``champion`` this way is recorded in the champion history, so a later
    :func:`rollback` returns to the version it replaced.

    Args:
        config: Registry configuration.
        model_name: Registered model name.
        alias: Alias to move.
        version: Target version; it must exist.

    Raises:
        ValueError: If the alias is not valid.
        mlflow.exceptions.MlflowException: If the version does not exist.
    """
    _check_alias(alias)
    mlflow_client = client(config)
    mlflow_client.get_model_version(model_name, version)  # fails clearly when missing
    if alias == CHAMPION:
        _move_champion(
            mlflow_client, model_name, version, [*_history(mlflow_client, model_name), version]
        )
    else:
        mlflow_client.set_registered_model_alias(model_name, alias, version)


def rollback(config: RegistryConfig, *, model_name: str, to_version: str | None = None) -> str:
    """Move ``champion`` back: to ``to_version``, or to the champion before the current one.

    The previous champion comes from the ``champion_history`` tag. When the alias was
    moved in the UI (so the history does not end with the current champion), the
    previous champion is the last one recorded.

    Args:
        config: Registry configuration.
        model_name: Registered model name.
        to_version: Version to make champion; None for the previous champion.

    Returns:
        The version ``champion`` now points to.

    Raises:
        RegistryError: If there is no earlier champion to go back to.
        mlflow.exceptions.MlflowException: If ``to_version`` does not exist.
    """
    mlflow_client = client(config)
    current = resolve_alias(config, model_name, CHAMPION)
    history = _history(mlflow_client, model_name)
    if to_version is not None:
        mlflow_client.get_model_version(model_name, to_version)
        target, new_history = to_version, [*history, to_version]
    else:
        remaining = list(history)
        while remaining and remaining[-1] == current:
            remaining.pop()
        if not remaining:
            raise RegistryError(
                f"nothing to roll back to: {model_name!r} has no champion before "
                f"{current or '(none)'}; pass to_version to pick one"
            )
        target, new_history = remaining[-1], remaining
    _move_champion(mlflow_client, model_name, target, new_history)
    logger.warning("rolled back %s champion from %s to %s", model_name, current, target)
    return target


# --------------------------------------------------------------------------- promotion gate


def _beats(challenger: float, other: float, *, lower_is_better: bool, margin: float) -> bool:
    """Strictly better than ``other`` by the relative ``margin`` (of ``|other|``)."""
    if lower_is_better:
        return challenger < other - margin * abs(other)
    return challenger > other + margin * abs(other)


def promotion_gate(
    config: RegistryConfig,
    *,
    model_name: str,
    challenger_version: str,
    metric: str,
    challenger_score: float,
    champion_score: float | None,
    baseline_scores: Mapping[str, float],
    lower_is_better: bool = True,
    min_improvement: float = 0.0,
    champion_version: str | None = None,
    requirements: Mapping[str, str | None] | None = None,
) -> GateDecision:
    """Promote the challenger to ``champion`` only if it beats the champion and every baseline.

    The caller scores challenger, champion and baselines on the same held-back data; the
    gate never computes or invents scores. With no champion yet, the challenger only has
    to beat the baselines. The evidence is written whatever the decision: run metrics
    ``gate_challenger_<metric>``, ``gate_champion_<metric>``,
    ``gate_baseline_<name>_<metric>`` and tags ``gate.decision`` (promoted|refused),
    ``gate.reason``, ``gate.champion_before`` on the challenger's run, and the same tags
    on the model version.

    Args:
        config: Registry configuration.
        model_name: Registered model name.
        challenger_version: Version to judge (usually the ``challenger`` alias).
        metric: Metric name, e.g. ``wql_h15``.
        challenger_score: The challenger's score.
        champion_score: The current champion's score on the same data; None only when
            there is no champion.
        baseline_scores: Each baseline's score on the same data, by baseline name.
        lower_is_better: True for errors and costs, False for rewards and compliance.
        min_improvement: Relative margin the challenger must win by (0.02 = 2 % of the
            opponent's score); 0 means strictly better.
        champion_version: The version ``champion_score`` belongs to; when given, the gate
            refuses to run if the champion has moved since (e.g. a promotion in the UI).
        requirements: Conditions besides the metric, checked by the caller on the same
            data (e.g. "SLA at least the champion's on every trace"): name -> None when
            met, else one sentence saying how it failed. Any failure refuses the
            promotion; each is tagged ``gate.requirement.<name>``.

    Returns:
        The decision.

    Raises:
        ValueError: If a score is not finite, the champion score is missing (or given
            without a champion), the champion moved, or the challenger already is champion.
    """
    _check_key("metric", metric)
    if not 0.0 <= min_improvement < 1.0:
        raise ValueError(f"min_improvement must be in [0, 1), got {min_improvement}")
    mlflow_client = client(config)
    version = mlflow_client.get_model_version(model_name, challenger_version)
    champion_before = resolve_alias(config, model_name, CHAMPION)
    if champion_before == challenger_version:
        raise ValueError(f"version {challenger_version} of {model_name!r} already is champion")
    if champion_version is not None and champion_version != champion_before:
        raise ValueError(
            f"champion_score belongs to version {champion_version} but champion is now "
            f"{champion_before}; evaluate the current champion and run the gate again"
        )
    if champion_before is not None and champion_score is None:
        raise ValueError(
            f"{model_name!r} has champion version {champion_before}; score it on the same "
            "evaluation and pass champion_score"
        )
    if champion_before is None and champion_score is not None:
        raise ValueError(f"champion_score given but {model_name!r} has no champion")

    scores = {f"gate_challenger_{metric}": _finite("challenger score", metric, challenger_score)}
    opponents: list[tuple[str, float]] = []
    if champion_score is not None:
        scores[f"gate_champion_{metric}"] = _finite("champion score", metric, champion_score)
        opponents.append((f"champion v{champion_before}", scores[f"gate_champion_{metric}"]))
    for name, score in baseline_scores.items():
        key = f"gate_baseline_{name}_{metric}"
        _check_key("baseline", key)
        scores[key] = _finite("baseline score", name, score)
        opponents.append((f"baseline {name}", scores[key]))
    if not opponents:
        raise ValueError("no champion and no baseline scores: the gate has nothing to compare")

    challenger = scores[f"gate_challenger_{metric}"]
    lost = [
        (who, score)
        for who, score in opponents
        if not _beats(challenger, score, lower_is_better=lower_is_better, margin=min_improvement)
    ]
    direction = "lower" if lower_is_better else "higher"
    margin = f" by at least {min_improvement:.1%}" if min_improvement else ""
    listed = ", ".join(f"{who} {score:.6g}" for who, score in (lost or opponents))
    failed = {k: v for k, v in (requirements or {}).items() if v is not None}
    for name in requirements or {}:
        _check_key("requirement", name)
    promoted = not lost and not failed
    reason = (
        f"challenger v{challenger_version} {metric}={challenger:.6g} "
        f"{'is' if not lost else 'is not'} {direction}{margin} than {listed}"
    )
    if failed:
        reason += "; requirements failed: " + "; ".join(f"{k}: {v}" for k, v in failed.items())

    gate_tags = {
        "gate.decision": "promoted" if promoted else "refused",
        "gate.reason": reason,
        "gate.champion_before": champion_before or "none",
        "gate.metric": metric,
        "gate.lower_is_better": str(lower_is_better).lower(),
        "gate.min_improvement": str(min_improvement),
    }
    for name, failure in (requirements or {}).items():
        gate_tags[f"gate.requirement.{name}"] = "met" if failure is None else f"failed: {failure}"
    if version.run_id:
        from mlflow.entities import Metric, RunTag

        now_ms = int(time.time() * 1000)
        mlflow_client.log_batch(
            version.run_id,
            metrics=[Metric(key, value, now_ms, 0) for key, value in scores.items()],
            tags=[RunTag(key, value) for key, value in gate_tags.items()],
        )
    for key, value in gate_tags.items():
        mlflow_client.set_model_version_tag(model_name, challenger_version, key, value)
    if promoted:
        history = _history(mlflow_client, model_name)
        if champion_before is not None and (not history or history[-1] != champion_before):
            # Promoted by hand in the UI since the last gate: keep it as a rollback target.
            history.append(champion_before)
        _move_champion(
            mlflow_client, model_name, challenger_version, [*history, challenger_version]
        )
    logger.info("gate %s: %s", gate_tags["gate.decision"], reason)
    return GateDecision(
        promoted=promoted,
        reason=reason,
        challenger_version=challenger_version,
        champion_version_before=champion_before,
        metric=metric,
        scores=scores,
    )


# --------------------------------------------------------------------------- loading


def version_uri(model_name: str, version: str) -> str:
    """Registry URI of one version, ``models:/<name>/<version>``."""
    return f"models:/{model_name}/{version}"


def load(config: RegistryConfig, model_uri: str) -> PyFuncModel:
    """Load a pyfunc model from the configured registry.

    Args:
        config: Registry configuration.
        model_uri: ``models:/<name>@<alias>`` or ``models:/<name>/<version>``.

    Returns:
        The loaded model.

    Raises:
        ValueError: If the URI is not a model of the configured registry (a run or file
            URI, a path, or a ``models://`` URI naming another server).
    """
    if not _MODEL_URI.match(model_uri):
        raise ValueError(
            f"models loaded only from the configured registry: {model_uri!r} is not "
            "models:/<name>@<alias> or models:/<name>/<version>"
        )
    from mlflow.pyfunc import load_model

    with _registry_uris(config.tracking_uri):
        return load_model(model_uri)


@dataclass
class _Entry:
    model: PyFuncModel
    version: str
    checked_at: float


class AliasCache:
    """Loaded pyfunc models by (model name, alias), reloaded when the alias moves.

    ``get`` asks the registry where the alias points (one cheap query) and loads the
    model only when the version changed, so a promotion or rollback, including one made
    by hand in the MLflow UI, is served from the next call (the next inference cycle).
    With ``max_age_s`` > 0 the registry is asked at most that often per key, and a move
    is picked up within ``max_age_s`` seconds.

    When the registry cannot be reached (or the new version fails to load, or the alias
    was removed) after a model was loaded, ``get`` keeps serving the loaded model and
    stores the error in ``last_error``, so inference goes on; ``last_error`` is reset by
    the next successful check. With nothing loaded yet it raises :class:`RegistryError`.
    Over HTTP, MLflow retries a failed request several times; lower
    ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` and ``MLFLOW_HTTP_REQUEST_TIMEOUT`` at the entry
    point so an outage does not stall a cycle.

    Args:
        config: Registry configuration.
        max_age_s: Seconds a check stays valid; 0 asks the registry on every call.
        clock: Monotonic clock in seconds (injectable for tests).
    """

    def __init__(
        self,
        config: RegistryConfig,
        *,
        max_age_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_age_s < 0:
            raise ValueError(f"max_age_s must be >= 0, got {max_age_s}")
        self.config = config
        self.max_age_s = max_age_s
        self.last_error: Exception | None = None
        self._clock = clock
        self._entries: dict[tuple[str, str], _Entry] = {}

    def get(self, model_name: str, alias: str = CHAMPION) -> tuple[PyFuncModel, str]:
        """The model the alias points to, and its version.

        Args:
            model_name: Registered model name.
            alias: Alias to follow.

        Returns:
            ``(model, version)``.

        Raises:
            RegistryError: If no model was loaded for this key yet and the registry cannot
                provide one.
        """
        key = (model_name, alias)
        entry = self._entries.get(key)
        now = self._clock()
        if entry is not None and self.max_age_s > 0 and now - entry.checked_at < self.max_age_s:
            return entry.model, entry.version
        # Any failure (unreachable server, database error, broken artifact) must not stop
        # inference once a model is loaded; the exception types differ by backend.
        try:
            version = resolve_alias(self.config, model_name, alias)
            if version is None:
                raise RegistryError(f"alias {alias!r} of model {model_name!r} is not set")
            if entry is None or entry.version != version:
                model = load(self.config, version_uri(model_name, version))
                logger.info("loaded %s version %s (%s)", model_name, version, alias)
                entry = _Entry(model=model, version=version, checked_at=now)
            else:
                entry.checked_at = now
        except Exception as error:
            if entry is None:
                raise RegistryError(
                    f"no {model_name}@{alias} model loaded and the registry cannot provide "
                    f"one: {error}"
                ) from error
            self.last_error = error
            logger.warning(
                "serving cached %s version %s (%s): %s", model_name, entry.version, alias, error
            )
            return entry.model, entry.version
        self.last_error = None
        self._entries[key] = entry
        return entry.model, entry.version

    def loaded(self) -> dict[tuple[str, str], str]:
        """Version held for each (model name, alias) key."""
        return {key: entry.version for key, entry in self._entries.items()}
