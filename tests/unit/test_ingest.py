"""Ingestion pipeline: good groups land, bad groups go to quarantine, nothing is lost."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from features.ingest import ingest
from features.offline import OfflineStore
from features.sources import push_batch

NOW = pd.Timestamp("2026-11-27 12:00")


@pytest.fixture(scope="module")
def validator():  # type: ignore[no-untyped-def]
    from features.validation import BatchValidator

    return BatchValidator()


def _rows(service: str, start: str, n: int, events: float = 10.0) -> list[dict[str, object]]:
    ts = pd.date_range(start, periods=n, freq="min")
    return [{"service_id": service, "ts": str(t), "events_in": events} for t in ts]


def _profiles(*services: str) -> list[dict[str, object]]:
    return [
        {
            "service_id": s,
            "ts": "2026-11-01 00:00",
            "criticality": 2,
            "sla_latency_s": 60.0,
            "sla_target": 0.99,
            "cost_per_job_hour": 0.2,
            "min_jobs": 1,
            "max_jobs": 10,
            "max_step": 2,
            "job_capacity_eps": 25.0,
            "job_startup_s": 90.0,
        }
        for s in services
    ]


def test_every_row_ends_in_the_store_or_in_quarantine(tmp_path: Path, validator) -> None:  # type: ignore[no-untyped-def]
    store = OfflineStore(tmp_path / "offline")
    rows = _rows("good", "2026-11-27 10:00", 5) + _rows("bad", "2026-11-27 10:00", 5, -1.0)
    batches = [
        push_batch("event_metrics", rows),
        push_batch("event_metrics", [{"service_id": "x", "ts": "2026-11-27 10:00"}]),
        push_batch("events", rows[:2]),
        # Last in the list, ingested first: the metrics above name these services.
        push_batch("service_profiles", _profiles("good", "bad")),
    ]
    report = ingest(
        batches, store=store, validator=validator, quarantine_root=tmp_path / "q", now=NOW
    )
    assert report.rows_in == 15
    assert report.rows_stored == 7
    assert report.rows_quarantined == 8
    profiles, first, missing, unknown = report.outcomes
    assert profiles.table == "service_profiles" and profiles.stored.new == 2
    assert list(first.rejected) == ["bad"]
    assert first.rejected_kinds == {"bad": ["negative_count"]}
    assert "events_in" in " ".join(first.rejected["bad"])
    assert "missing required column" in missing.rejected["_batch"][0]
    assert missing.rejected_kinds == {"_batch": ["missing_required"]}
    assert "unknown table" in unknown.rejected["_batch"][0]
    assert unknown.rejected_kinds == {"_batch": ["unknown_table"]}
    assert set(store.read("event_metrics")["service_id"]) == {"good"}
    md = report.markdown()
    assert "| 4 | 0 | 15 | 7 |" in md and "## Quarantined" in md
    assert "| bad | negative_count | events_in: 5 value(s) below 0" in md
    again = ingest(
        batches, store=store, validator=validator, quarantine_root=tmp_path / "q", now=NOW
    )
    assert all(o.skipped == "already ingested" for o in again.outcomes)
    assert again.rows_in == 0


def test_only_the_newest_batch_reports_staleness(tmp_path: Path, validator) -> None:  # type: ignore[no-untyped-def]
    store = OfflineStore(tmp_path / "offline")
    batches = [
        push_batch("service_profiles", _profiles("s")),
        push_batch("event_metrics", _rows("s", "2026-11-25 00:00", 3)),
        push_batch("event_metrics", _rows("s", "2026-11-26 00:00", 3)),
    ]
    report = ingest(
        batches, store=store, validator=validator, quarantine_root=tmp_path / "q", now=NOW
    )
    stale = [[n for n in o.notices if n.kind == "stale"] for o in report.outcomes[1:]]
    assert stale[0] == [] and len(stale[1]) == 1
    assert "freshness limit" in stale[1][0].message
