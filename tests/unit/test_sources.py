"""Sources: simulated cluster, drop folder, push; ids stable by content; nothing dropped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.contracts import TABLES, conform
from features.sources import (
    SimulatorSourceConfig,
    drop_folder_batches,
    push_batch,
    read_drop_file,
    simulated_tables,
    split_batches,
    table_of,
)

END = pd.Timestamp("2026-11-27 12:00")


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    return simulated_tables(SimulatorSourceConfig(end=END, days=2, seed=3))


def test_simulator_emits_every_table_in_contract(tables: dict[str, pd.DataFrame]) -> None:
    assert set(tables) == set(TABLES)
    for table, frame in tables.items():
        out = conform(frame, table)
        assert not out.unparseable, table
        assert not out.dropped_columns, table
    events = tables["event_metrics"]
    assert events["ts"].max() == END - pd.Timedelta(minutes=1)
    assert events["ts"].min() == END - pd.Timedelta(days=2)
    assert len(events) == 3 * 2 * 1440
    # The simulated cluster conserves events: what is processed came in or was queued.
    for _, g in events.groupby("service_id"):
        prev_q = np.concatenate([[0.0], g["queue_length"].to_numpy()[:-1]])
        assert (g["events_processed"].to_numpy() <= g["events_in"].to_numpy() + prev_q + 1e-6).all()
    decisions = tables["scaling_decisions"]
    assert (decisions["jobs_after"] == decisions["jobs_before"] + decisions["action"]).all()
    assert set(decisions["controller"]) == {"reactive"}


def test_simulator_is_reproducible() -> None:
    a = simulated_tables(SimulatorSourceConfig(end=END, days=1, seed=5))
    b = simulated_tables(SimulatorSourceConfig(end=END, days=1, seed=5))
    for table in TABLES:
        pd.testing.assert_frame_equal(a[table], b[table])


def test_split_batches_cuts_by_time_and_ids_follow_content(tables: dict[str, pd.DataFrame]) -> None:
    batches = list(split_batches(tables, 1440, "simulator"))
    per_table = {t: [b for b in batches if b.table == t] for t in TABLES}
    assert len(per_table["service_profiles"]) == 1
    assert len(per_table["event_metrics"]) == 2
    assert sum(len(b.frame) for b in per_table["event_metrics"]) == len(tables["event_metrics"])
    again = list(split_batches(tables, 1440, "simulator"))
    assert [b.batch_id for b in batches] == [b.batch_id for b in again]
    assert len({b.batch_id for b in batches}) == len(batches)


def test_table_of_reads_folder_or_prefix(tmp_path: Path) -> None:
    assert table_of(tmp_path / "event_metrics" / "x.csv") == "event_metrics"
    assert table_of(tmp_path / "system_metrics-2026-01-05.csv") == "system_metrics"
    assert table_of(tmp_path / "scaling_decisions_week1.parquet") == "scaling_decisions"
    assert table_of(tmp_path / "metrics.csv") is None


def test_drop_folder_keeps_text_and_quarantines_what_it_cannot_place(tmp_path: Path) -> None:
    (tmp_path / "event_metrics").mkdir()
    (tmp_path / "event_metrics" / "a.csv").write_text(
        "service_id,ts,events_in\ns,2026-01-05 00:00,12x\ns,2026-01-05 00:01,\n"
    )
    (tmp_path / "notes.csv").write_text("a,b\n1,2\n")
    (tmp_path / "event_metrics-bad.parquet").write_bytes(b"not parquet")
    (tmp_path / "readme.txt").write_text("ignored: not an export")
    batches = {Path(b.origin).name: b for b in drop_folder_batches(tmp_path)}
    assert set(batches) == {"a.csv", "notes.csv", "event_metrics-bad.parquet"}
    good = batches["a.csv"]
    assert good.error is None and good.table == "event_metrics"
    assert good.frame["events_in"].tolist()[0] == "12x"
    assert pd.isna(good.frame["events_in"].tolist()[1])
    assert "cannot tell the table" in (batches["notes.csv"].error or "")
    bad = batches["event_metrics-bad.parquet"]
    assert "cannot read" in (bad.error or "") and bad.frame["raw_line"].tolist() == ["not parquet"]
    assert read_drop_file(tmp_path / "event_metrics" / "a.csv").batch_id == good.batch_id
    with pytest.raises(FileNotFoundError):
        list(drop_folder_batches(tmp_path / "missing"))


def test_push_batches_are_content_addressed() -> None:
    rows = [{"service_id": "a", "ts": "2026-01-05 00:00", "events_in": 3}]
    a, b = push_batch("event_metrics", rows), push_batch("event_metrics", list(rows))
    assert a.batch_id == b.batch_id and a.error is None
    assert push_batch("event_metrics", [{**rows[0], "events_in": 4}]).batch_id != a.batch_id
    unknown = push_batch("events", rows)
    assert unknown.error and "unknown table" in unknown.error and len(unknown.frame) == 1
