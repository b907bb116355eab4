"""The `ingest` flow: source -> Great Expectations -> offline store or quarantine.

Run it from the CLI (``autoscaler ingest``, which sets up Prefect's environment first) or
from a Prefect deployment; every input is a typed flow parameter so the UI shows a form.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from autoscaler.settings import Settings, build_settings
from features.ingest import IngestReport, ingest
from features.offline import OfflineStore
from features.sources import (
    Batch,
    SimulatorSourceConfig,
    drop_folder_batches,
    push_batch,
    simulator_batches,
)

if TYPE_CHECKING:
    from features.validation import BatchValidator

SourceName = Literal["simulator", "drop", "push", "cluster"]

# I/O tasks retry with back-off: a drop folder on a network share or a busy disk recovers.
# No caching: inputs are frames and settings, and every run must see the current data.
IO_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [2, 5, 15],
    "cache_policy": NO_CACHE,
}


def current_minute() -> pd.Timestamp:
    """The current minute, naive UTC (what the contracts store)."""
    return pd.Timestamp.now(tz="UTC").tz_localize(None).floor("min")


@task(**IO_RETRIES)
def read_source(
    source: SourceName,
    settings: Settings,
    now: pd.Timestamp,
    days: int | None,
    end: datetime | None,
    table: str | None,
    rows: list[dict[str, Any]] | None,
    corrections: bool = False,
) -> list[Batch]:
    """Collect the batches of one source (``corrections``: see :func:`ingest_flow`)."""
    if source == "simulator":
        last = now if end is None else pd.Timestamp(end).floor("min")
        config = SimulatorSourceConfig(
            end=last, days=days or settings.history_days, seed=settings.seed
        )
        return list(simulator_batches(config))
    if source == "drop":
        return list(drop_folder_batches(settings.drop_folder, replaces_history=corrections))
    if table is None or rows is None:
        raise ValueError("source 'push' needs a table and rows")
    return [push_batch(table, rows, replaces_history=corrections)]


def make_validator(settings: Settings) -> BatchValidator:
    """The ingestion validator the settings describe."""
    from features.validation import BatchValidator

    return BatchValidator(freshness=pd.Timedelta(minutes=settings.freshness_minutes))


def ingest_cluster_outbox(
    settings: Settings,
    now: pd.Timestamp,
    days: int | None = None,
    end: pd.Timestamp | None = None,
) -> IngestReport:
    """Ingest what the simulated cluster emitted; bootstrap the cluster if there is none.

    A new cluster's history (``days`` before ``end``, default the settings' history before
    ``now``) goes through the same outbox, so a crash between bootstrap and ingestion
    loses nothing: the next run ingests it.
    """
    from serving.actuators.simulated import SimulatedCluster
    from serving.cluster_feed import ingest_outbox

    folder = settings.cluster_dir
    if SimulatedCluster.exists(folder):
        cluster = SimulatedCluster.load(folder)
    else:
        cluster, _ = SimulatedCluster.bootstrap(
            folder,
            end=now if end is None else end,
            history_days=days or settings.history_days,
            seed=settings.seed,
        )
    return ingest_outbox(
        cluster,
        OfflineStore(settings.offline_dir),
        make_validator(settings),
        settings.quarantine_dir,
        now,
    )


@task(**IO_RETRIES)
def ingest_cluster(
    settings: Settings, now: pd.Timestamp, days: int | None, end: datetime | None
) -> IngestReport:
    """The simulated cluster's outbox (bootstrapped on first use) into the offline store."""
    last = None if end is None else pd.Timestamp(end).floor("min")
    return ingest_cluster_outbox(settings, now if last is None else max(now, last), days, last)


@task(cache_policy=NO_CACHE)
def validate_and_store(
    batches: list[Batch], settings: Settings, now: pd.Timestamp, force: bool
) -> IngestReport:
    """Validate every batch and store or quarantine it."""
    return ingest(
        batches,
        store=OfflineStore(settings.offline_dir),
        validator=make_validator(settings),
        quarantine_root=settings.quarantine_dir,
        now=now,
        force=force,
    )


@flow(name="ingest", log_prints=True)
def ingest_flow(
    source: SourceName = "simulator",
    days: int | None = None,
    end: datetime | None = None,
    table: str | None = None,
    rows: list[dict[str, Any]] | None = None,
    force: bool = False,
    state_dir: str | None = None,
    corrections: bool = False,
) -> dict[str, int]:
    """Ingest metrics from a source into the validated offline store.

    Args:
        source: ``simulator`` (a simulated cluster's recent history), ``drop`` (every
            CSV/Parquet file in the drop folder), ``push`` (``rows`` of ``table``) or
            ``cluster`` (what the live simulated cluster of the state folder emitted; the
            first run creates it with ``days`` of history before ``end``).
        days: Days of history for the simulator source (default from settings).
        end: End (exclusive, UTC) of the simulated history; default the current minute.
            A fixed end reproduces the same history (a backfill).
        table: Contract table of pushed rows.
        rows: Pushed rows (list of column -> value mappings).
        force: Re-process batches already in the ledger.
        state_dir: State folder (default from settings / AUTOSCALER_STATE_DIR).
        corrections: The drop files or pushed rows are deliberate corrections: they may
            replace stored minutes older than a service's newest. Without it such rows are
            refused as ``out_of_order`` (quarantined with the reason; re-run with this set
            to land them).

    Returns:
        Counts: rows_in, rows_stored, rows_quarantined, batches, batches_quarantined.
    """
    settings = build_settings(state_dir=Path(state_dir) if state_dir else None)
    now = current_minute()
    if source == "cluster":
        report = ingest_cluster(settings, now, days, end)
    else:
        batches = read_source(source, settings, now, days, end, table, rows, corrections)
        report = validate_and_store(batches, settings, now, force)
    create_markdown_artifact(
        markdown=report.markdown(), key="ingest-summary", description="Ingestion run summary"
    )
    get_run_logger().info(
        "ingested %d rows: %d stored, %d quarantined in %d batch(es)",
        report.rows_in,
        report.rows_stored,
        report.rows_quarantined,
        report.batches_quarantined,
    )
    return {
        "batches": len(report.outcomes),
        "rows_in": report.rows_in,
        "rows_stored": report.rows_stored,
        "rows_quarantined": report.rows_quarantined,
        "batches_quarantined": report.batches_quarantined,
    }
