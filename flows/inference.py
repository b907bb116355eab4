"""The `inference` flow: scheduled every minute, it decides and applies every service's job count.

One cycle (:func:`serving.cycle.run_cycle`): online features for all services -> champion
forecaster -> champion controller -> safety shield -> actuator, each decision logged to
the offline ``scaling_decisions`` table and pushed to the online store. With the
``simulated`` actuator (the default) the cycle first advances the simulated cluster to
the current minute and ingests the metrics it emitted (validated, as any source), then
refreshes the online features from them: the loop is closed.

Overlapping runs do not act twice: the run holds a lock in the state folder (a run that
cannot take it at once does nothing and says so), the deployment has a concurrency limit
of one, and the cycle skips services already decided for the minute.

Every ``monitor_every`` cycles the feedback check (:mod:`flows.monitor`) compares the
forecasts with what arrived, SLA, cost and input drift, and triggers the retraining
deployments when a threshold is passed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from autoscaler.runtime import feast_config, registry_config
from autoscaler.settings import Settings, build_settings
from features.offline import OfflineStore
from flows.ingest import make_validator
from serving.actuators.base import Actuator
from serving.cycle import FEATURE_SERVICE, CycleReport, DecisionLog, run_cycle
from serving.engine import DecisionEngine

if TYPE_CHECKING:
    from feast import FeatureStore

    from features.refresh import OnlineRefresher
    from features.store import OnlineReader
    from features.validation import BatchValidator
    from serving.actuators.simulated import SimulatedCluster
    from serving.metrics import ServingMetrics

ActuatorName = Literal["simulated", "kubernetes", "dry-run"]

IO_RETRIES: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": [1, 3],
    "cache_policy": NO_CACHE,
}
LOCK_FILE = "inference.lock"


class CycleBusy(RuntimeError):
    """Another inference run holds the state folder's lock."""


@contextmanager
def cycle_lock(state_dir: Path) -> Iterator[None]:
    """Hold the state folder's inference lock, or raise :class:`CycleBusy` at once.

    Waiting would queue runs behind a slow one and then let them act on minutes already
    gone; a run that finds the lock taken leaves the minute to the holder.
    """
    from filelock import FileLock, Timeout

    state_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(state_dir / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout as error:
        raise CycleBusy(f"another inference run holds {state_dir / LOCK_FILE}") from error
    try:
        yield
    finally:
        lock.release()


def open_store(settings: Settings) -> FeatureStore:
    """The applied feature store; applies the repo only when serving's views are missing.

    ``feast apply`` takes seconds; a per-minute run opens the registry as it is.
    """
    from features import store as feast_io

    cfg = feast_config(settings)
    store = feast_io.open_store(cfg)
    try:
        store.get_feature_service(FEATURE_SERVICE)
        store.get_feature_view("service_decisions")
    except Exception:  # missing registry or definitions: apply once
        store = feast_io.apply(cfg)
    return store


@dataclass
class Serving:
    """What the cycles of one run share (opened once per run)."""

    settings: Settings
    store: FeatureStore
    reader: OnlineReader
    engine: DecisionEngine
    log: DecisionLog
    metrics: ServingMetrics
    actuator: Actuator
    cluster: SimulatedCluster | None
    validator: BatchValidator | None
    refresher: OnlineRefresher


def make_actuator(
    name: ActuatorName, settings: Settings, namespace: str
) -> tuple[Actuator, SimulatedCluster | None]:
    """The actuator a run uses (and the simulated cluster, when it is the actuator)."""
    if name == "simulated":
        from serving.actuators.simulated import SimulatedCluster

        if not SimulatedCluster.exists(settings.cluster_dir):
            raise ValueError(
                f"no simulated cluster in {settings.cluster_dir}: run the ingest flow with "
                "source=cluster first (make demo does)"
            )
        cluster = SimulatedCluster.load(settings.cluster_dir)
        return cluster, cluster
    if name == "dry-run":
        from serving.actuators.dry_run import DryRunActuator

        return DryRunActuator(), None
    if name == "kubernetes":
        from serving.actuators.kubernetes import KubernetesActuator

        return KubernetesActuator.from_environment(namespace=namespace), None
    raise ValueError(f"unknown actuator {name!r}; use simulated, kubernetes or dry-run")


@task(**IO_RETRIES)
def open_serving(settings: Settings, actuator: ActuatorName, namespace: str) -> Serving:
    """Open the stores, the registry cache and the actuator once for the run's cycles."""
    from features.refresh import OnlineRefresher
    from features.store import OnlineReader
    from models.registry import AliasCache
    from serving.metrics import ServingMetrics

    store = open_store(settings)
    act, cluster = make_actuator(actuator, settings, namespace)
    models = AliasCache(registry_config(settings, "inference"))
    return Serving(
        settings=settings,
        store=store,
        reader=OnlineReader(store, FEATURE_SERVICE),
        engine=DecisionEngine(models),
        log=DecisionLog(OfflineStore(settings.offline_dir), store),
        metrics=ServingMetrics(),
        actuator=act,
        cluster=cluster,
        # Building the Great Expectations context takes seconds: once per run, not per cycle.
        validator=make_validator(settings) if cluster is not None else None,
        refresher=OnlineRefresher(
            OfflineStore(settings.offline_dir), feast_config(settings), store
        ),
    )


def services_to_decide(serving: Serving, services: list[str] | None) -> list[str]:
    """The services given, else the simulated cluster's, else every profiled service."""
    if services:
        return list(services)
    if serving.cluster is not None:
        return list(serving.cluster.services)
    return OfflineStore(serving.settings.offline_dir).services("service_profiles")


@task(cache_policy=NO_CACHE)
def advance_cluster(cluster: SimulatedCluster, until: pd.Timestamp) -> int:
    """Run the simulated cluster up to ``until`` (exclusive); returns the minutes run."""
    before = cluster.clock
    cluster.advance(until)
    return int((cluster.clock - before) / pd.Timedelta(minutes=1))


@task(**IO_RETRIES)
def ingest_cluster_metrics(
    settings: Settings, cluster: SimulatedCluster, validator: BatchValidator, now: pd.Timestamp
) -> int:
    """Validate and store what the cluster emitted; acknowledged only once stored."""
    from serving.cluster_feed import ingest_outbox

    report = ingest_outbox(
        cluster, OfflineStore(settings.offline_dir), validator, settings.quarantine_dir, now
    )
    return report.rows_stored


@task(**IO_RETRIES)
def refresh_online_features(
    refresher: OnlineRefresher, cluster: SimulatedCluster | None
) -> dict[str, int]:
    """Write each service's newest features to the online store (with the cluster's
    not-yet-ingested minutes)."""
    return refresher.refresh(cluster.pending() if cluster is not None else None).rows


@task(cache_policy=NO_CACHE)
def decide_and_act(
    serving: Serving, services: list[str], now: pd.Timestamp, max_age: pd.Timedelta
) -> CycleReport:
    """One engine cycle: read, decide, act, log."""
    return run_cycle(
        serving.engine,
        serving.reader,
        serving.actuator,
        serving.log,
        services,
        now,
        max_feature_age=max_age,
        metrics=serving.metrics,
    )


def current_minute() -> pd.Timestamp:
    """The current minute, naive UTC."""
    return pd.Timestamp.now(tz="UTC").tz_localize(None).floor("min")


def cycle_markdown(reports: list[CycleReport]) -> str:
    """The run's artifact: the last cycle's decisions and totals over the run."""
    lines = ["# Inference", ""]
    if not reports:
        return "\n".join([*lines, "No cycle ran."]) + "\n"
    last = reports[-1]
    decided = sum(len(r.decisions) for r in reports)
    changed = sum(int((r.decisions["action"] != 0).sum()) for r in reports if len(r.decisions))
    errors = sum(len(r.failed_actuations) for r in reports)
    lines += [
        f"{len(reports)} cycle(s), {decided} decisions, {changed} changes, "
        f"{errors} actuation error(s). Models: {last.models}",
        "",
        f"Last cycle ({last.now}):",
        "",
        "| service | minute | jobs before | jobs after | controller | shield | q50 forecast |",
        "|---|---|---|---|---|---|---|",
    ]
    for rec in last.decisions.to_dict("records"):
        lines.append(
            f"| {rec['service_id']} | {rec['ts']} | {rec['jobs_before']} | {rec['jobs_after']} | "
            f"{rec['controller']} | {rec['shield_reason'] or '-'} | {rec['forecast_q50']:.0f} |"
        )
    for sid, why in last.skipped.items():
        lines.append(f"| {sid} | - | - | - | - | skipped: {why} | - |")
    return "\n".join(lines) + "\n"


@flow(name="inference", log_prints=True)
def inference_flow(
    actuator: ActuatorName = "simulated",
    services: list[str] | None = None,
    cycles: int = 1,
    accelerated: bool = False,
    ingest_every: int = 1,
    max_feature_age_minutes: int = 5,
    monitor_every: int = 1,
    trigger_retraining: bool = True,
    kube_namespace: str = "default",
    state_dir: str | None = None,
) -> dict[str, Any]:
    """Decide and apply every service's job count (module docstring).

    Args:
        actuator: ``simulated`` (the simulated cluster in the state folder), ``kubernetes``
            (Deployment scale subresource) or ``dry-run`` (log only).
        services: Services to decide for (default: the cluster's, or every profiled one).
        cycles: Cycles to run in this flow run (the schedule runs one a minute).
        accelerated: Simulated cluster only: each cycle advances it one minute instead of
            up to the wall clock (the demo runs hours in minutes).
        ingest_every: Simulated cluster only: ingest (validate and store) what it emitted
            every this many cycles; in between, its fresh minutes reach the online
            features directly (validation takes seconds; the demo ingests every 5).
        max_feature_age_minutes: Features older than this are stale (shield fallback).
        monitor_every: Run the feedback check every this many cycles (0: never).
        trigger_retraining: Let the feedback check trigger retraining deployments.
        kube_namespace: Namespace of the Deployments (kubernetes actuator).
        state_dir: State folder (default from settings / AUTOSCALER_STATE_DIR).

    Returns:
        Per-run counts, the last cycle's summary and the feedback results.
    """
    if cycles < 1 or ingest_every < 1:
        raise ValueError(f"cycles and ingest_every must be >= 1, got {cycles}, {ingest_every}")
    logger = get_run_logger()
    settings = build_settings(state_dir=Path(state_dir) if state_dir else None)
    try:
        with cycle_lock(settings.state_dir):
            return _run(
                settings,
                actuator,
                services,
                cycles,
                accelerated,
                ingest_every,
                pd.Timedelta(minutes=max_feature_age_minutes),
                monitor_every,
                trigger_retraining,
                kube_namespace,
            )
    except CycleBusy as busy:
        logger.warning("%s: this run does nothing", busy)
        return {"cycles": 0, "skipped": str(busy)}


def _run(
    settings: Settings,
    actuator: ActuatorName,
    services: list[str] | None,
    cycles: int,
    accelerated: bool,
    ingest_every: int,
    max_age: pd.Timedelta,
    monitor_every: int,
    trigger_retraining: bool,
    kube_namespace: str,
) -> dict[str, Any]:
    logger = get_run_logger()
    serving = open_serving(settings, actuator, kube_namespace)
    chosen = services_to_decide(serving, services)
    reports: list[CycleReport] = []
    feedback: list[dict[str, Any]] = []
    for i in range(cycles):
        cluster = serving.cluster
        if cluster is not None:
            until = cluster.clock + pd.Timedelta(minutes=1) if accelerated else current_minute()
            advance_cluster(cluster, until)
            now = cluster.clock
            if (i + 1) % ingest_every == 0 or i + 1 == cycles:
                assert serving.validator is not None  # built with the cluster
                ingest_cluster_metrics(settings, cluster, serving.validator, now)
        else:
            now = current_minute()
        refresh_online_features(serving.refresher, cluster)
        report = decide_and_act(serving, chosen, now, max_age)
        reports.append(report)
        logger.info("cycle %d at %s: %s", i + 1, now, report.summary())
        if monitor_every and (i + 1) % monitor_every == 0:
            from flows.monitor import feedback_cycle

            feedback.append(feedback_cycle(settings, now, trigger=trigger_retraining))
    create_markdown_artifact(
        markdown=cycle_markdown(reports), key="inference", description="Inference cycle(s)"
    )
    return {
        "cycles": len(reports),
        "decisions": sum(len(r.decisions) for r in reports),
        "last": reports[-1].summary(),
        "feedback": feedback,
    }
