"""Registering the forecaster in MLflow and judging it against the champion.

The registered model ``event-forecaster`` is a pyfunc over the saved forecaster folder
(:mod:`models.forecaster.package`): input and output are the table interface, with a
signature inferred from an example. The run logs the training parameters, the training
report, per-horizon scores of the hybrid and of each baseline, the held-back coverage
before and after calibration, and one forecast-vs-actual plot per evaluated service.

The promotion gate's metric is ``wql``: the mean over services and the horizons 15, 60
and 120 minutes of the weighted quantile loss on the evaluation range. The challenger
must beat seasonal naive (day and week) and the current champion, all scored on the same
range by :mod:`models.forecaster.evaluate`.
"""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models import registry
from models.forecaster import evaluate, package, protocol
from models.forecaster.train import Forecaster, SeriesData, TrainConfig, TrainReport
from models.requirements import MODEL_RUNTIME, pinned_requirements

MODEL_NAME = "event-forecaster"
LOADER = "models.forecaster.package:load_predictor"
GATE_METRIC = "wql"
REQUIREMENTS = (*MODEL_RUNTIME, "torch")
"""What the registered forecaster needs to load and predict (its networks are torch)."""
MAX_PLOTS = 6


def champion_forecasts(
    config: registry.RegistryConfig,
    prepared: Sequence[protocol.PreparedSeries],
    context: Mapping[str, SeriesData] | None = None,
) -> tuple[str, dict[str, np.ndarray]] | None:
    """The current champion's forecasts on the evaluation origins, or None without one.

    The champion is asked through its pyfunc, with the calendar and criticality of
    ``context``, for the horizons its output schema names.
    """
    version = registry.resolve_alias(config, MODEL_NAME, registry.CHAMPION)
    if version is None:
        return None
    model = registry.load(config, registry.version_uri(MODEL_NAME, version))

    def predict(frame: pd.DataFrame) -> pd.DataFrame:
        out = model.predict(frame)
        if not isinstance(out, pd.DataFrame):
            raise TypeError(f"{MODEL_NAME} v{version} returned {type(out).__name__}, not a table")
        return out

    horizons = _model_horizons(model)
    return version, evaluate.frame_forecasts(predict, prepared, horizons, context)


def _model_horizons(model: Any) -> tuple[int, ...]:
    """Horizons of a registered forecaster, read from its output schema (``h<h>_q<pp>``)."""
    names = model.metadata.get_output_schema().input_names()
    found = sorted({int(n.split("_")[0][1:]) for n in names if re.match(r"^h\d+_q\d+$", n)})
    if not found:
        raise ValueError("the registered model's outputs name no horizons (h<h>_q<pp>)")
    return tuple(found)


def training_params(config: TrainConfig) -> dict[str, Any]:
    """Flat parameters of a training configuration, for the run."""
    net = config.network
    return {
        "hidden": net.hidden,
        "heads": net.heads,
        "dropout": net.dropout,
        "horizons": ",".join(str(h) for h in net.horizons),
        "quantiles": ",".join(str(q) for q in net.quantiles),
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "weight_decay": config.weight_decay,
        "max_steps": config.max_steps,
        "members": config.members,
        "epochs": config.epochs if config.epochs is not None else "",
        "max_minutes": config.max_minutes,
        "holdout_fraction": config.holdout_fraction,
        "seed": config.seed,
        "device": config.device,
    }


def run_metrics(
    report: TrainReport, forecaster: Forecaster, evaluation: evaluate.Evaluation
) -> dict[str, float]:
    """Metrics of the run: per-horizon scores per model, training and calibration figures."""
    out: dict[str, float] = {}
    for model in evaluation.models():
        prefix = "" if model == "hybrid" else f"{model}_"
        for name, value in evaluation.metrics_for(model).items():
            out[prefix + name] = value
        out[f"{prefix}{GATE_METRIC}"] = evaluation.mean(model, GATE_METRIC)
    out["train_seconds"] = report.seconds
    out["train_steps"] = float(report.steps)
    out["best_step"] = float(report.best_step)
    out["best_holdout_loss"] = report.best_holdout_loss
    cal = forecaster.calibration
    if cal is not None:
        before = [v for v in cal.coverage_before.values() if not math.isnan(v)]
        after = [v for v in cal.coverage_after.values() if not math.isnan(v)]
        if before:
            out["holdout_coverage_80_before_calibration"] = float(np.mean(before))
        if after:
            out["holdout_coverage_80_after_calibration"] = float(np.mean(after))
    return {k: v for k, v in out.items() if not math.isnan(v)}


def register(
    config: registry.RegistryConfig,
    forecaster: Forecaster,
    *,
    train_config: TrainConfig,
    report: TrainReport,
    evaluation: evaluate.Evaluation,
    prepared: Sequence[protocol.PreparedSeries],
    hybrid: Mapping[str, np.ndarray],
    tags: Mapping[str, str] | None = None,
) -> registry.RegisteredVersion:
    """Log the run, register ``event-forecaster`` and point ``challenger`` at it."""
    example = package.example_frame(horizons=forecaster.horizons)
    signature = registry.infer_signature(
        example, package.predict_frame(forecaster, example), optional=package.OPTIONAL_COLUMNS
    )
    figures = {
        f"forecast_{p.name}.png": evaluate.plot_forecasts(p, hybrid[p.name])
        for p in list(prepared)[:MAX_PLOTS]
    }
    with tempfile.TemporaryDirectory(prefix="forecaster-") as tmp:
        folder = package.save(forecaster, Path(tmp) / "forecaster")
        return registry.log_and_register(
            config,
            model_name=MODEL_NAME,
            python_model=registry.FolderModel(LOADER),
            artifacts={registry.FOLDER_ARTIFACT: str(folder)},
            signature=signature,
            input_example=example,
            params=training_params(train_config),
            metrics=run_metrics(report, forecaster, evaluation),
            figures=figures,
            tags={"device": report.device, **(tags or {})},
            run_name="train-forecaster",
            pip_requirements=pinned_requirements(REQUIREMENTS),
        )


def gate(
    config: registry.RegistryConfig,
    version: str,
    evaluation: evaluate.Evaluation,
    champion_version: str | None,
) -> registry.GateDecision:
    """Promote ``version`` if it beats the champion and the seasonal naive baselines."""
    baselines = {
        b: evaluation.mean(b, GATE_METRIC)
        for b in evaluate.GATE_BASELINES
        if b in evaluation.models()
    }
    champion = (
        evaluation.mean("champion", GATE_METRIC) if "champion" in evaluation.models() else None
    )
    return registry.promotion_gate(
        config,
        model_name=MODEL_NAME,
        challenger_version=version,
        metric=GATE_METRIC,
        challenger_score=evaluation.mean("hybrid", GATE_METRIC),
        champion_score=champion,
        baseline_scores=baselines,
        champion_version=champion_version,
    )
