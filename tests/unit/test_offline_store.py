"""Offline store: partitioned, idempotent on (service_id, ts), atomic, readable by range."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.contracts import conform
from features.offline import OfflineStore


def _events(service: str, start: str, minutes: int, value: float = 1.0) -> pd.DataFrame:
    ts = pd.date_range(start, periods=minutes, freq="min")
    raw = pd.DataFrame({"service_id": service, "ts": ts, "events_in": value + np.arange(minutes)})
    return conform(raw, "event_metrics").frame


def test_append_partitions_by_service_and_day(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path)
    rows = _events("svc/a", "2026-01-05 23:00", 120)
    result = store.append("event_metrics", rows)
    assert (result.new, result.replaced, result.unchanged) == (120, 0, 0)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.parquet"))
    assert files == [
        "event_metrics/service=svc%2Fa/date=2026-01-05/part.parquet",
        "event_metrics/service=svc%2Fa/date=2026-01-06/part.parquet",
    ]
    assert store.services("event_metrics") == ["svc/a"]
    back = store.read("event_metrics")
    pd.testing.assert_frame_equal(back, rows.sort_values(["service_id", "ts"], ignore_index=True))


def test_appending_the_same_rows_twice_leaves_one_copy(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path)
    rows = _events("a", "2026-01-05 00:00", 60)
    store.append("event_metrics", rows)
    again = store.append("event_metrics", rows)
    assert (again.new, again.replaced, again.unchanged) == (0, 0, 60)
    assert len(store.read("event_metrics")) == 60


def test_a_corrected_row_replaces_the_old_one_and_new_rows_join(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path)
    store.append("event_metrics", _events("a", "2026-01-05 00:00", 10))
    corrected = _events("a", "2026-01-05 00:05", 10, value=100.0)
    result = store.append("event_metrics", corrected)
    assert (result.new, result.replaced, result.unchanged) == (5, 5, 0)
    back = store.read("event_metrics")
    assert len(back) == 15
    assert back["events_in"].iloc[5] == 100.0


def test_read_filters_by_service_and_time_and_last_rows(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path)
    store.append("event_metrics", _events("a", "2026-01-05 00:00", 3000))
    store.append("event_metrics", _events("b", "2026-01-05 00:00", 10))
    part = store.read(
        "event_metrics",
        ["a"],
        start=pd.Timestamp("2026-01-06 00:00"),
        end=pd.Timestamp("2026-01-06 00:09"),
    )
    assert len(part) == 10 and (part["service_id"] == "a").all()
    last = store.last_rows("event_metrics", ["a", "b", "missing"])
    assert last["ts"].tolist() == [
        pd.Timestamp("2026-01-07 01:59"),
        pd.Timestamp("2026-01-05 00:09"),
    ]
    assert store.newest_ts("event_metrics") == pd.Timestamp("2026-01-07 01:59")
    assert store.read("system_metrics").empty


def test_append_refuses_what_validation_must_have_stopped(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path)
    rows = _events("a", "2026-01-05 00:00", 3)
    with pytest.raises(ValueError, match="repeat"):
        store.append("event_metrics", pd.concat([rows, rows.iloc[:1]]))
    with pytest.raises(ValueError, match="contract columns"):
        store.append("event_metrics", rows.drop(columns="error_rate"))
    assert not list(tmp_path.rglob("*.parquet"))


def test_profiles_are_one_file_per_service_and_ledger_round_trips(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path)
    raw = pd.DataFrame(
        {
            "service_id": ["a", "a"],
            "ts": ["2026-01-01", "2026-02-01"],
            "criticality": [1, 2],
            "sla_latency_s": [60, 60],
            "sla_target": [0.99, 0.99],
            "cost_per_job_hour": [0.2, 0.2],
            "min_jobs": [1, 1],
            "max_jobs": [10, 10],
            "max_step": [2, 2],
            "job_capacity_eps": [25, 25],
            "job_startup_s": [90, 90],
        }
    )
    store.append("service_profiles", conform(raw, "service_profiles").frame)
    assert [p.name for p in tmp_path.rglob("*.parquet")] == ["part.parquet"]
    assert store.read("service_profiles")["criticality"].tolist() == [1, 2]
    assert store.batch_record("b-1") is None
    store.record_batch("b-1", {"rows_in": 2})
    assert store.batch_record("b-1") == {"rows_in": 2}
