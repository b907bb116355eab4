"""The `train-forecaster` flow: Feast training set -> train -> evaluate -> register -> gate.

Each task is one call to a tested function:

1. ``load_series``: the training set from Feast's offline store (``events_in`` and the
   calendar of every minute of the range, criticality point in time;
   :mod:`models.forecaster.dataset`) as one series per service. The last ``eval_days``
   are the evaluation range.
2. ``fit``: trains the hybrid on the rest (its own tail held back for the checkpoint and
   the conformal calibration; :mod:`models.forecaster.train`).
3. ``score``: the hybrid, seasonal naive (day, week) and the current champion, if any,
   on the same evaluation origins (:mod:`models.forecaster.evaluate`).
4. ``register``: one MLflow run, model version of ``event-forecaster``, alias
   ``challenger`` (:mod:`models.forecaster.publish`).
5. ``gate``: ``champion`` moves only if the challenger wins; the evidence is on the run.

Every parameter is typed, so the Prefect UI shows a form for manual runs.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from autoscaler.runtime import feast_config, registry_config
from autoscaler.settings import Settings, build_settings
from features import store as feast_io
from features.engineering import AVAILABLE_AFTER
from features.offline import OfflineStore
from models import registry
from models.forecaster import dataset, evaluate, publish
from models.forecaster.model import NetworkConfig
from models.forecaster.train import Forecaster, SeriesData, TrainConfig, TrainReport, train
from models.forecaster.windows import HORIZONS, QUANTILES

IO_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [2, 5, 15],
    "cache_policy": NO_CACHE,
}


def training_range(
    offline: OfflineStore,
    start: datetime | None,
    end: datetime | None,
    lookback_days: float,
) -> tuple[pd.Timestamp, pd.Timestamp]:
    """[start, end) of the training set: ``end`` defaults to after the newest stored minute.

    Raises:
        ValueError: If nothing is stored yet or the range is empty.
    """
    if end is None:
        newest = offline.newest_ts("event_metrics")
        if newest is None:
            raise ValueError("no event_metrics stored yet; run the ingest flow first")
        stop = pd.Timestamp(newest) + pd.Timedelta(minutes=1)
    else:
        stop = pd.Timestamp(end)
    begin = pd.Timestamp(start) if start is not None else stop - pd.Timedelta(days=lookback_days)
    if stop <= begin:
        raise ValueError(f"empty training range [{begin}, {stop})")
    return begin.floor("min"), stop.floor("min")


@task(**IO_RETRIES)
def load_series(
    settings: Settings,
    services: list[str] | None,
    start: datetime | None,
    end: datetime | None,
    lookback_days: float,
    eval_days: float,
) -> list[SeriesData]:
    """Point-in-time training set from Feast, as one series per service."""
    offline = OfflineStore(settings.offline_dir)
    begin, stop = training_range(offline, start, end, lookback_days)
    wanted = services or offline.services("event_metrics")
    if not wanted:
        raise ValueError("no services stored yet; run the ingest flow first")
    store = feast_io.open_store(feast_config(settings))
    # Rows are stamped one minute after their metrics minute.
    frame = feast_io.view_rows(
        store,
        dataset.MINUTE_VIEW,
        dataset.MINUTE_FEATURES,
        begin + AVAILABLE_AFTER,
        stop + AVAILABLE_AFTER,
        services=wanted,
    )
    profiles = feast_io.training_set(
        store,
        pd.DataFrame({"service_id": wanted, "event_timestamp": stop}),
        features=dataset.PROFILE_REFS,
    )
    frame = frame.merge(profiles[["service_id", "criticality"]], on="service_id", how="left")
    return dataset.series_from_training_set(frame, stop - pd.Timedelta(days=eval_days))


@task(cache_policy=NO_CACHE)
def fit(series: list[SeriesData], config: TrainConfig) -> tuple[Forecaster, TrainReport]:
    """Train and calibrate the hybrid."""
    logger = get_run_logger()

    def progress(step: int, train_loss: float, holdout_loss: float) -> None:
        logger.info("step %d: train loss %.4f, held-back loss %.4f", step, train_loss, holdout_loss)

    return train(series, config, progress=progress)


@task(**IO_RETRIES)
def score(
    settings: Settings, series: list[SeriesData], forecaster: Forecaster
) -> tuple[evaluate.Evaluation, list[Any], dict[str, np.ndarray], str | None]:
    """Hybrid, baselines and the current champion on the same evaluation origins."""
    prepared = [p for p in (evaluate.prepare_holdout(s) for s in series) if p is not None]
    if not prepared:
        raise ValueError("no service has an evaluation origin; raise eval_days")
    context = {s.name: s for s in series}
    hybrid = evaluate.hybrid_forecasts(forecaster, prepared, context)
    forecasts: dict[str, dict[str, np.ndarray]] = {"hybrid": hybrid}
    forecasts.update(evaluate.baseline_forecasts(prepared))
    champion = publish.champion_forecasts(
        registry_config(settings, publish.MODEL_NAME), prepared, context
    )
    champion_version = None
    if champion is not None:
        champion_version, forecasts["champion"] = champion
    return evaluate.evaluate(prepared, forecasts), prepared, hybrid, champion_version


@task(**IO_RETRIES)
def register(
    settings: Settings,
    forecaster: Forecaster,
    config: TrainConfig,
    report: TrainReport,
    evaluation: evaluate.Evaluation,
    prepared: list[Any],
    hybrid: dict[str, np.ndarray],
) -> registry.RegisteredVersion:
    """Log and register the challenger."""
    return publish.register(
        registry_config(settings, publish.MODEL_NAME),
        forecaster,
        train_config=config,
        report=report,
        evaluation=evaluation,
        prepared=prepared,
        hybrid=hybrid,
        tags={"services": ",".join(p.name for p in prepared)},
    )


@task(**IO_RETRIES)
def gate(
    settings: Settings,
    version: str,
    evaluation: evaluate.Evaluation,
    champion_version: str | None,
) -> registry.GateDecision:
    """Promote the challenger if it wins."""
    return publish.gate(
        registry_config(settings, publish.MODEL_NAME), version, evaluation, champion_version
    )


def summary_markdown(
    report: TrainReport,
    evaluation: evaluate.Evaluation,
    version: registry.RegisteredVersion,
    decision: registry.GateDecision,
) -> str:
    """The run's artifact: training, scores, registration and the gate's decision."""
    return "\n".join(
        [
            "# Forecaster training",
            "",
            f"- trained {report.steps} steps in {report.seconds:.0f} s on {report.device}; "
            f"best held-back loss {report.best_holdout_loss:.4f} at step {report.best_step}",
            f"- windows: {report.train_windows} training, {report.holdout_windows} held back",
            f"- registered `{version.name}` version {version.version} (alias `challenger`), "
            f"run `{version.run_id}`",
            f"- gate: **{'promoted to champion' if decision.promoted else 'refused'}**: "
            f"{decision.reason}",
            "",
            "## Evaluation (mean over services)",
            "",
            evaluation.markdown(),
        ]
    )


@flow(name="train-forecaster", log_prints=True)
def train_forecaster_flow(
    horizons: list[int] | None = None,
    epochs: float = 4.0,
    max_minutes: float = 8.0,
    lookback_days: float = 14.0,
    eval_days: float = 2.0,
    services: list[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    hidden: int = 32,
    members: int = 1,
    learning_rate: float = 3e-3,
    seed: int = 0,
    state_dir: str | None = None,
) -> dict[str, Any]:
    """Train the event forecaster from Feast, evaluate, register and gate it.

    Args:
        horizons: Forecast horizons in minutes (default 1, 5, 15, 30, 60, 120); must
            include 15, 60 and 120, the evaluated ones.
        epochs: Passes over the training windows.
        max_minutes: Wall-clock budget of the optimisation.
        lookback_days: Days of history before ``end`` to train and evaluate on.
        eval_days: Final days of the range kept for the evaluation (not trained on).
        services: Services to train on (default: every stored one).
        start: Start of the range (overrides ``lookback_days``).
        end: End of the range (default: just after the newest stored minute).
        hidden: Width of the network.
        members: Networks in the ensemble (trained from successive seeds, averaged).
        learning_rate: Peak learning rate.
        seed: Seed of sampling and initial weights.
        state_dir: State folder (default from settings / AUTOSCALER_STATE_DIR).

    Returns:
        Version, gate decision and the gate's scores.
    """
    settings = build_settings(state_dir=Path(state_dir) if state_dir else None)
    chosen = tuple(sorted(set(horizons))) if horizons else HORIZONS
    missing = [h for h in evaluate.EVAL_HORIZONS if h not in chosen]
    if missing:
        raise ValueError(f"horizons must include the evaluated horizons {missing}")
    config = TrainConfig(
        network=NetworkConfig(hidden=hidden, horizons=chosen, quantiles=QUANTILES),
        epochs=epochs,
        members=members,
        max_minutes=max_minutes,
        learning_rate=learning_rate,
        seed=seed,
    )
    series = load_series(settings, services, start, end, lookback_days, eval_days)
    forecaster, report = fit(series, config)
    evaluation, prepared, hybrid, champion_version = score(settings, series, forecaster)
    version = register(settings, forecaster, config, report, evaluation, prepared, hybrid)
    decision = gate(settings, version.version, evaluation, champion_version)
    create_markdown_artifact(
        markdown=summary_markdown(report, evaluation, version, decision),
        key="forecaster-training",
        description="Forecaster training, evaluation and promotion",
    )
    get_run_logger().info("event-forecaster v%s: %s", version.version, decision.reason)
    return {
        "version": version.version,
        "run_id": version.run_id,
        "promoted": decision.promoted,
        "reason": decision.reason,
        "scores": decision.scores,
    }
