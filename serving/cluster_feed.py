"""The simulated cluster's metrics back into ingestion: the loop's return path.

The cluster keeps what it emitted in an outbox until ingestion has stored it; only then
is the outbox acknowledged, so a failed ingestion loses nothing and a repeated one is
harmless (the offline store is idempotent on service and minute).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from features.ingest import IngestReport
    from features.offline import OfflineStore
    from features.validation import BatchValidator
    from serving.actuators.simulated import SimulatedCluster

BATCH_MINUTES = 1440
"""Rows per service in one ingestion batch (a bootstrap's history goes in day batches)."""


def ingest_outbox(
    cluster: SimulatedCluster,
    offline: OfflineStore,
    validator: BatchValidator,
    quarantine_root: Path,
    now: pd.Timestamp,
) -> IngestReport:
    """Validate and store the cluster's pending rows, then acknowledge what was handled.

    Rows that fail validation are quarantined by ingestion (never dropped), so they are
    acknowledged too: the outbox holds only what has not been through ingestion yet.

    Args:
        cluster: The simulated cluster.
        offline: The offline store.
        validator: The ingestion validator.
        quarantine_root: Where rejected batches go.
        now: The current minute (the cluster's clock), for freshness checks.

    Returns:
        The ingestion report.
    """
    from features.ingest import ingest
    from features.sources import split_batches

    pending = cluster.pending()
    if not pending:
        return ingest(
            [], store=offline, validator=validator, quarantine_root=quarantine_root, now=now
        )
    batches = list(split_batches(pending, BATCH_MINUTES, "simulated-cluster"))
    report = ingest(
        batches,
        store=offline,
        validator=validator,
        quarantine_root=quarantine_root,
        now=now,
    )
    cluster.acknowledge(max(pd.Timestamp(frame["ts"].max()) for frame in pending.values()))
    return report
