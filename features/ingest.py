"""Ingestion: source batch -> contract -> Great Expectations -> offline store or quarantine.

The unit of acceptance is one service's rows of one batch: if any of them breaks a
blocking expectation, that group goes to quarantine whole (with its validation result
and report) and the other services' rows of the batch still land. A batch that cannot be
read or put in its contract at all is quarantined whole. Nothing is dropped: every input
row ends up either in the store or in quarantine. Every rejection and warning names its
kind from :data:`features.contracts.BAD_INPUT_KINDS`.

What ingestion adds to the batch for validation: the newest stored row per service (flow
balance, gaps), the services with a stored profile (``unknown_service``) and, unless the
batch may replace history, the stored rows its late rows would overwrite
(``out_of_order``). Profile batches of a run are ingested first, so metrics that arrive
together with their service's profile are not refused.

A batch id already in the store's ledger is skipped (reported as "already ingested"); the
store itself is idempotent on (service_id, ts) as well, so even a ledger-less re-run
leaves one copy. One exception: a batch that had services refused as ``unknown_service``
is validated again on every run (its quarantine entries are rewritten in place), because
that refusal ends without touching the batch: once the service's profile lands, the same
file or push lands too instead of staying "already ingested" in quarantine.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from features.contracts import TABLES, ContractError, conform, contract, empty
from features.offline import AppendResult, OfflineStore
from features.sources import Batch

if TYPE_CHECKING:
    from features.contracts import Conformed
    from features.validation import BatchValidation, BatchValidator, Notice


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
        rejected_kinds: Bad-input kinds per rejected group, in order of first reason.
        notices: Non-blocking findings (gaps, stale data, filled or unknown columns).
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
    rejected_kinds: dict[str, list[str]] = field(default_factory=dict)
    notices: list[Notice] = field(default_factory=list)
    quarantine_dirs: list[str] = field(default_factory=list)
    skipped: str | None = None

    @property
    def warnings(self) -> list[str]:
        """The notices' messages."""
        return [n.message for n in self.notices]


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
                "| table | batch | group | kinds | reasons |",
                "|---|---|---|---|---|",
            ]
            for o in rejected:
                for group, reasons in o.rejected.items():
                    text = "; ".join(reasons).replace("|", "\\|")
                    kinds = ", ".join(o.rejected_kinds.get(group, []))
                    lines.append(
                        f"| {o.table or '?'} | `{o.batch_id}` | {group} | {kinds} | {text} |"
                    )
        warned = [(o, n) for o in self.outcomes for n in o.notices]
        if warned:
            lines += ["", "## Warnings", ""]
            shown = warned[:50]
            lines += [f"- {o.table} `{o.batch_id}` ({n.kind}): {n.message}" for o, n in shown]
            if len(warned) > len(shown):
                lines.append(f"- ... and {len(warned) - len(shown)} more")
        return "\n".join(lines) + "\n"


def _quarantine_whole(
    batch: Batch, reason: str, kind: str, quarantine_root: Path, outcome: BatchOutcome
) -> None:
    from features.quarantine import write_quarantine
    from features.validation import BatchValidation, Failure

    failure = Failure(kind=kind, expectation="contract", column=None, reason=reason, rows=())
    verdict = BatchValidation(
        table=batch.table,
        n_rows=len(batch.frame),
        table_failures=(failure,),
        services={},
        notices=(),
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
    outcome.rejected_kinds["_batch"] = [kind]
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
            failures = validation.table_failures
        else:
            rows = batch.frame.iloc[validation.rows_of(group)]
            failures = validation.services[group].failures
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
        outcome.rejected[group or "_batch"] = [f.reason for f in failures]
        outcome.rejected_kinds[group or "_batch"] = list(dict.fromkeys(f.kind for f in failures))
        outcome.quarantine_dirs.append(str(folder))


def _stored_late_rows(
    store: OfflineStore, table: str, frame: pd.DataFrame, previous: pd.DataFrame
) -> pd.DataFrame:
    """Stored rows in the time range of the batch's rows that are older than their
    service's newest stored row (what ``out_of_order`` compares them with)."""
    if previous.empty:
        return empty(table)
    newest = previous.groupby("service_id")["ts"].max()
    keyed = frame[frame["service_id"].notna() & frame["ts"].notna()]
    late = keyed[keyed["ts"] < pd.to_datetime(keyed["service_id"].map(newest))]
    if late.empty:
        return empty(table)
    services = sorted(str(s) for s in late["service_id"].unique())
    return store.read(table, services, start=late["ts"].min(), end=late["ts"].max())


def _validate(
    batch: Batch,
    conformed: Conformed,
    store: OfflineStore,
    validator: BatchValidator,
    now: pd.Timestamp,
) -> BatchValidation:
    """Validate with the stored context the batch's table needs (see the module docstring)."""
    from features.validation import OBSERVED_TABLES

    previous = None
    known = None
    stored = None
    if contract(batch.table).per_minute:
        sids = conformed.frame["service_id"].dropna().unique().tolist()
        previous = store.last_rows(batch.table, [str(s) for s in sids])
    if batch.table in OBSERVED_TABLES:
        known = store.services("service_profiles")
        if not batch.replaces_history and previous is not None:
            stored = _stored_late_rows(store, batch.table, conformed.frame, previous)
    return validator.validate(
        conformed,
        batch.table,
        now=now,
        previous=previous,
        known_services=known,
        stored=stored,
    )


def _waits_for_profiles(record: dict[str, Any]) -> bool:
    """Whether a ledger record has services refused only until their profile is stored."""
    kinds = record.get("rejected_kinds") or {}
    return any("unknown_service" in found for found in kinds.values())


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
    from features.validation import Notice

    outcome = BatchOutcome(batch.table, batch.batch_id, batch.origin, len(batch.frame))
    record = store.batch_record(batch.batch_id)
    if not force and record is not None and not _waits_for_profiles(record):
        outcome.skipped = "already ingested"
        return outcome
    if batch.error is not None:
        kind = batch.error_kind or "unreadable_file"
        _quarantine_whole(batch, batch.error, kind, quarantine_root, outcome)
    elif batch.table not in TABLES:
        reason = f"unknown table {batch.table!r}; expected one of {', '.join(TABLES)}"
        _quarantine_whole(batch, reason, "unknown_table", quarantine_root, outcome)
    elif batch.frame.empty:
        outcome.notices.append(Notice("empty_batch", "empty batch: nothing to store"))
    else:
        try:
            conformed = conform(batch.frame, batch.table)
        except ContractError as exc:
            _quarantine_whole(batch, str(exc), "missing_required", quarantine_root, outcome)
        else:
            for name, rule in conformed.filled.items():
                outcome.notices.append(
                    Notice(
                        "missing_optional_column", f"column {name} missing from the source: {rule}"
                    )
                )
            if conformed.dropped_columns:
                outcome.notices.append(
                    Notice(
                        "unknown_column",
                        "columns not in the contract were not stored: "
                        + ", ".join(conformed.dropped_columns),
                    )
                )
            validation = _validate(batch, conformed, store, validator, now)
            # Each notice already names its service.
            outcome.notices += list(validation.notices)
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
            "rejected_kinds": outcome.rejected_kinds,
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
    """Ingest every batch (see :func:`ingest_batch`): ``service_profiles`` batches first,
    the others in the order given, so metrics can name a service whose profile comes in
    the same run."""
    report = IngestReport()
    ordered = sorted(batches, key=lambda b: b.table != "service_profiles")
    for batch in ordered:
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
    """Keep ``stale`` notices only on the last batch of each table in the run.

    A backfill of many days makes every older batch "stale"; only whether the newest data
    is fresh says something about the source.
    """
    last: dict[str, BatchOutcome] = {}
    for outcome in outcomes:
        if outcome.skipped is None:
            last[outcome.table] = outcome
    for outcome in outcomes:
        if last.get(outcome.table) is not outcome:
            outcome.notices = [n for n in outcome.notices if n.kind != "stale"]
