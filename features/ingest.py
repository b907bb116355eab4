"""Ingestion: source batch -> contract -> Great Expectations -> offline store or quarantine.

The unit of acceptance is one service's rows of one batch: if any of them breaks a
blocking expectation, that group goes to quarantine whole (with its validation result
and report) and the other services' rows of the batch still land. A batch that cannot be
read or put in its contract at all is quarantined whole. Nothing is dropped: every input
row ends up either in the store or in quarantine.

A batch id already in the store's ledger is skipped (reported as "already ingested"); the
store itself is idempotent on (service_id, ts) as well, so even a ledger-less re-run
leaves one copy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from features.contracts import ContractError, conform, contract
from features.offline import AppendResult, OfflineStore
from features.sources import Batch

if TYPE_CHECKING:
    from features.validation import BatchValidation, BatchValidator

FRESHNESS_MARK = "freshness limit"
"""Text every freshness warning of features.validation carries."""


@dataclass
class BatchOutcome:
    """What happened to one batch.

    Attributes:
        table: Contract table ('' when unknown).
        batch_id: The batch's id.
        origin: Where it came from.
        rows_in: Rows received.
        stored: New, replaced and unchanged rows in the offline store.
        rows_quarantined: Rows sent to quarantine.
        rejected: Reasons per rejected group (service id, or '_batch' for all of it).
        warnings: Non-blocking findings (gaps, stale data, filled columns).
        quarantine_dirs: Folders written under the quarantine root.
        skipped: Why the batch was not processed again, if so.
    """

    table: str
    batch_id: str
    origin: str
    rows_in: int
    stored: AppendResult = field(default_factory=AppendResult)
    rows_quarantined: int = 0
    rejected: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    quarantine_dirs: list[str] = field(default_factory=list)
    skipped: str | None = None


@dataclass
class IngestReport:
    """Every batch of one ingestion run."""

    outcomes: list[BatchOutcome] = field(default_factory=list)

    @property
    def rows_in(self) -> int:
        return sum(o.rows_in for o in self.outcomes if o.skipped is None)

    @property
    def rows_stored(self) -> int:
        """Rows new to the store in this run (replaced rows count separately)."""
        return sum(o.stored.new for o in self.outcomes)

    @property
    def rows_quarantined(self) -> int:
        return sum(o.rows_quarantined for o in self.outcomes)

    @property
    def batches_quarantined(self) -> int:
        return sum(1 for o in self.outcomes if o.rejected)

    def markdown(self) -> str:
        """A summary for the Prefect artifact and the CLI: rows in, stored, quarantined
        batches and why."""
        skipped = sum(1 for o in self.outcomes if o.skipped)
        replaced = sum(o.stored.replaced for o in self.outcomes)
        unchanged = sum(o.stored.unchanged for o in self.outcomes)
        lines = [
            "# Ingestion",
            "",
            "| batches | skipped (already ingested) | rows in | rows stored (new) | "
            "rows replaced | rows unchanged | rows quarantined | batches quarantined |",
            "|---|---|---|---|---|---|---|---|",
            f"| {len(self.outcomes)} | {skipped} | {self.rows_in} | {self.rows_stored} | "
            f"{replaced} | {unchanged} | {self.rows_quarantined} | {self.batches_quarantined} |",
        ]
        by_table: dict[str, list[BatchOutcome]] = {}
        for o in self.outcomes:
            by_table.setdefault(o.table or "(unknown)", []).append(o)
        lines += [
            "",
            "| table | batches | rows in | stored (new) | quarantined |",
            "|---|---|---|---|---|",
        ]
        for table, outs in by_table.items():
            lines.append(
                f"| {table} | {len(outs)} | {sum(o.rows_in for o in outs if not o.skipped)} | "
                f"{sum(o.stored.new for o in outs)} | {sum(o.rows_quarantined for o in outs)} |"
            )
        rejected = [o for o in self.outcomes if o.rejected]
        if rejected:
            lines += [
                "",
                "## Quarantined",
                "",
                "| table | batch | group | reasons |",
                "|---|---|---|---|",
            ]
            for o in rejected:
                for group, reasons in o.rejected.items():
                    text = "; ".join(reasons).replace("|", "\\|")
                    lines.append(f"| {o.table or '?'} | `{o.batch_id}` | {group} | {text} |")
        warned = [(o, w) for o in self.outcomes for w in o.warnings]
        if warned:
            lines += ["", "## Warnings", ""]
            shown = warned[:50]
            lines += [f"- {o.table} `{o.batch_id}`: {w}" for o, w in shown]
            if len(warned) > len(shown):
                lines.append(f"- ... and {len(warned) - len(shown)} more")
        return "\n".join(lines) + "\n"


def _quarantine_whole(
    batch: Batch, reason: str, quarantine_root: Path, outcome: BatchOutcome
) -> None:
    from features.quarantine import write_quarantine
    from features.validation import BatchValidation, Failure

    verdict = BatchValidation(
        table=batch.table,
        n_rows=len(batch.frame),
        table_failures=(Failure(expectation="contract", column=None, reason=reason, rows=()),),
        services={},
        warnings=(),
        ge_result={},
    )
    folder = write_quarantine(
        quarantine_root,
        table=batch.table or "_unknown",
        batch_id=batch.batch_id,
        service_id=None,
        raw_rows=batch.frame,
        validation=verdict,
        source=batch.origin,
    )
    outcome.rows_quarantined += len(batch.frame)
    outcome.rejected["_batch"] = [reason]
    outcome.quarantine_dirs.append(str(folder))


def _quarantine_groups(
    batch: Batch,
    validation: BatchValidation,
    quarantine_root: Path,
    outcome: BatchOutcome,
) -> None:
    from features.quarantine import write_quarantine

    if validation.table_failures:
        groups: list[str | None] = [None]
    else:
        groups = list(validation.rejected_services)
    for group in groups:
        if group is None:
            rows = batch.frame
            reasons = [f.reason for f in validation.table_failures]
        else:
            rows = batch.frame.iloc[validation.rows_of(group)]
            reasons = [f.reason for f in validation.services[group].failures]
        folder = write_quarantine(
            quarantine_root,
            table=batch.table,
            batch_id=batch.batch_id,
            service_id=group,
            raw_rows=rows,
            validation=validation,
            source=batch.origin,
        )
        outcome.rows_quarantined += len(rows)
        outcome.rejected[group or "_batch"] = reasons
        outcome.quarantine_dirs.append(str(folder))


def ingest_batch(
    batch: Batch,
    *,
    store: OfflineStore,
    validator: BatchValidator,
    quarantine_root: Path,
    now: pd.Timestamp,
    force: bool = False,
) -> BatchOutcome:
    """Validate one batch and land its valid service groups; quarantine the rest.

    Args:
        batch: Raw rows from a source.
        store: The offline store.
        validator: Great Expectations validator (built once per run).
        quarantine_root: Folder for rejected rows and their reports.
        now: The current time, naive UTC (for the "not in the future" and freshness
            checks).
        force: Process the batch even if its id is in the ledger.

    Returns:
        What happened to the batch.
    """
    outcome = BatchOutcome(batch.table, batch.batch_id, batch.origin, len(batch.frame))
    if not force and store.batch_record(batch.batch_id) is not None:
        outcome.skipped = "already ingested"
        return outcome
    if batch.error is not None:
        _quarantine_whole(batch, batch.error, quarantine_root, outcome)
    elif batch.frame.empty:
        outcome.warnings.append("empty batch: nothing to store")
    else:
        try:
            conformed = conform(batch.frame, batch.table)
        except ContractError as exc:
            _quarantine_whole(batch, str(exc), quarantine_root, outcome)
        else:
            for name, rule in conformed.filled.items():
                outcome.warnings.append(f"column {name} missing from the source: {rule}")
            if conformed.dropped_columns:
                outcome.warnings.append(
                    "columns not in the contract were not stored: "
                    + ", ".join(conformed.dropped_columns)
                )
            previous = None
            if contract(batch.table).per_minute:
                sids = conformed.frame["service_id"].dropna().unique().tolist()
                previous = store.last_rows(batch.table, [str(s) for s in sids])
            validation = validator.validate(conformed, batch.table, now=now, previous=previous)
            # Each warning already names its service.
            outcome.warnings += list(validation.warnings)
            accepted = validation.accepted_services
            if accepted:
                rows = conformed.frame[conformed.frame["service_id"].isin(accepted)]
                outcome.stored = store.append(batch.table, rows.reset_index(drop=True))
            if validation.table_failures or validation.rejected_services:
                _quarantine_groups(batch, validation, quarantine_root, outcome)
    store.record_batch(
        batch.batch_id,
        {
            "table": batch.table,
            "origin": batch.origin,
            "rows_in": outcome.rows_in,
            "rows_stored_new": outcome.stored.new,
            "rows_quarantined": outcome.rows_quarantined,
            "rejected": outcome.rejected,
            "ingested_at": now.isoformat(),
        },
    )
    return outcome


def ingest(
    batches: Iterable[Batch],
    *,
    store: OfflineStore,
    validator: BatchValidator,
    quarantine_root: Path,
    now: pd.Timestamp,
    force: bool = False,
) -> IngestReport:
    """Ingest every batch in order (see :func:`ingest_batch`)."""
    report = IngestReport()
    for batch in batches:
        report.outcomes.append(
            ingest_batch(
                batch,
                store=store,
                validator=validator,
                quarantine_root=quarantine_root,
                now=now,
                force=force,
            )
        )
    _keep_last_freshness(report.outcomes)
    return report


def _keep_last_freshness(outcomes: list[BatchOutcome]) -> None:
    """Keep freshness warnings only on the last batch of each table in the run.

    A backfill of many days makes every older batch "stale"; only whether the newest data
    is fresh says something about the source.
    """
    last: dict[str, BatchOutcome] = {}
    for outcome in outcomes:
        if outcome.skipped is None:
            last[outcome.table] = outcome
    for outcome in outcomes:
        if last.get(outcome.table) is not outcome:
            outcome.warnings = [w for w in outcome.warnings if FRESHNESS_MARK not in w]
