"""The scaling_decisions journal: one file per append, newest row per key, folds, legacy."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from features.contracts import conform
from features.offline import OfflineStore

TABLE = "scaling_decisions"
MINUTE = pd.Timestamp("2026-03-02 12:00")


def decisions(services: int, ts: pd.Timestamp, jobs_after: int = 4) -> pd.DataFrame:
    """One cycle's decisions: ``services`` services decided for minute ``ts``."""
    raw = pd.DataFrame(
        {
            "service_id": [f"svc-{i:05d}" for i in range(services)],
            "ts": ts,
            "jobs_before": 3,
            "action": jobs_after - 3,
            "jobs_after": jobs_after,
            "controller": "ppo",
            "forecaster_version": "1",
            "controller_version": "2",
            "forecast_q10": 10.0,
            "forecast_q50": 20.0,
            "forecast_q90": None,
            "shield_reason": "",
        }
    )
    return conform(raw, TABLE).frame


def parquet_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.parquet"))


def minutes(store: OfflineStore, count: int, services: int = 3) -> pd.DataFrame:
    """Append ``count`` cycles from MINUTE on; returns every row appended."""
    rows = [decisions(services, MINUTE + pd.Timedelta(minutes=k)) for k in range(count)]
    for frame in rows:
        store.append(TABLE, frame)
    return pd.concat(rows, ignore_index=True).sort_values(["service_id", "ts"], ignore_index=True)


@pytest.mark.parametrize("services", [1, 1000])
def test_a_cycle_writes_one_file_whatever_the_number_of_services(
    tmp_path: Path, services: int
) -> None:
    store = OfflineStore(tmp_path)
    rows = decisions(services, MINUTE)
    result = store.append(TABLE, rows)
    assert (result.new, result.replaced, result.unchanged) == (services, 0, 0)
    files = parquet_files(tmp_path)
    assert len(files) == 1 and files[0].startswith(f"{TABLE}/date=2026-03-02/part-000000001-seg-")
    pd.testing.assert_frame_equal(store.read(TABLE), rows)
    # The next minute adds one file more, not one per service.
    store.append(TABLE, decisions(services, MINUTE + pd.Timedelta(minutes=1)))
    assert len(parquet_files(tmp_path)) == 2


def test_a_rerun_of_the_minute_replaces_rows_and_an_identical_one_writes_nothing(
    tmp_path: Path,
) -> None:
    store = OfflineStore(tmp_path)
    store.append(TABLE, decisions(5, MINUTE))
    again = store.append(TABLE, decisions(5, MINUTE))
    assert (again.new, again.replaced, again.unchanged) == (0, 0, 5)
    assert len(parquet_files(tmp_path)) == 1
    # The rerun decided otherwise for two services (say the champion moved meanwhile).
    rerun = decisions(5, MINUTE)
    rerun.loc[[1, 3], "jobs_after"] = 9
    rerun.loc[[1, 3], "action"] = 6
    changed = store.append(TABLE, rerun)
    assert (changed.new, changed.replaced, changed.unchanged) == (0, 2, 3)
    assert len(parquet_files(tmp_path)) == 2  # the second holds only the two new rows
    back = store.read(TABLE)
    assert len(back) == 5
    pd.testing.assert_frame_equal(back, rerun)


def test_reads_by_service_and_time_open_only_the_segments_they_need(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = OfflineStore(tmp_path)
    everything = minutes(store, 30)
    opened: list[str] = []
    real = pd.read_parquet

    def counting(path: Any, *args: Any, **kwargs: Any) -> pd.DataFrame:
        opened.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pd, "read_parquet", counting)
    start, end = MINUTE + pd.Timedelta(minutes=25), MINUTE + pd.Timedelta(minutes=27)
    part = store.read(TABLE, ["svc-00001"], start=start, end=end)
    assert len(opened) == 3
    expected = everything[
        (everything["service_id"] == "svc-00001") & everything["ts"].between(start, end)
    ].reset_index(drop=True)
    pd.testing.assert_frame_equal(part, expected)
    assert store.read(TABLE, start=MINUTE + pd.Timedelta(days=1)).empty


def test_last_rows_newest_ts_and_services_see_the_journal(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path)
    minutes(store, 3, services=2)
    store.append(TABLE, decisions(1, MINUTE + pd.Timedelta(days=1)))  # only svc-00000
    last = store.last_rows(TABLE, ["svc-00001", "svc-00000", "missing"])
    assert last["service_id"].tolist() == ["svc-00001", "svc-00000"]
    assert last["ts"].tolist() == [MINUTE + pd.Timedelta(minutes=2), MINUTE + pd.Timedelta(days=1)]
    assert store.newest_ts(TABLE) == MINUTE + pd.Timedelta(days=1)
    assert store.services(TABLE) == ["svc-00000", "svc-00001"]
    assert OfflineStore(tmp_path / "empty").newest_ts(TABLE) is None


def test_fold_merges_the_newest_run_and_later_appends_still_win(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path)
    minutes(store, 6)
    # A correction of the first minute, appended after the run to fold.
    fix = decisions(3, MINUTE, jobs_after=7)
    store.append(TABLE, fix)
    before = store.read(TABLE)
    assert store.fold(TABLE, MINUTE, at=8) == 0  # 7 segments: not yet
    assert store.fold(TABLE, MINUTE, at=7) == 7
    files = parquet_files(tmp_path)
    assert len(files) == 1 and "-cmp-" in files[0]
    pd.testing.assert_frame_equal(store.read(TABLE), before)
    # The next append is newer than the merged segment, so its rows win.
    store.append(TABLE, decisions(3, MINUTE, jobs_after=5))
    assert set(store.read(TABLE, end=MINUTE)["jobs_after"]) == {5}
    assert store.fold(TABLE, MINUTE, at=2) == 0  # one appended segment since the fold


def test_a_crash_between_a_fold_and_its_clean_up_leaves_one_row_per_key(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path)
    minutes(store, 4)
    store.append(TABLE, decisions(3, MINUTE + pd.Timedelta(minutes=1), jobs_after=8))
    before = store.read(TABLE)
    keep = tmp_path / "kept"
    shutil.copytree(tmp_path / TABLE, keep)
    store.fold(TABLE, MINUTE, at=2)
    # Put the merged segments back, as if the process died before removing them.
    for path in keep.rglob("*.parquet"):
        shutil.copy(path, tmp_path / TABLE / path.relative_to(keep))
    shutil.rmtree(keep)
    assert len(parquet_files(tmp_path)) == 6
    pd.testing.assert_frame_equal(store.read(TABLE), before)


def test_legacy_per_service_files_keep_reading_and_compact_into_the_journal(
    tmp_path: Path,
) -> None:
    store = OfflineStore(tmp_path)
    old = decisions(2, MINUTE)
    yesterday = decisions(1, MINUTE - pd.Timedelta(days=1))
    # What earlier versions wrote: one file per service and day.
    for _, rows in pd.concat([yesterday, old]).groupby(["service_id", "ts"]):
        sid, day = rows["service_id"].iloc[0], f"{rows['ts'].iloc[0]:%Y-%m-%d}"
        path = tmp_path / TABLE / f"service={sid}" / f"date={day}" / "part.parquet"
        path.parent.mkdir(parents=True)
        rows.to_parquet(path, index=False)
    pd.testing.assert_frame_equal(store.read(TABLE, start=MINUTE), old)
    assert store.last_rows(TABLE, ["svc-00000"])["ts"].tolist() == [MINUTE]
    assert store.services(TABLE) == ["svc-00000", "svc-00001"]
    # Appends see the legacy rows as stored: unchanged, replaced, new.
    rerun = decisions(3, MINUTE)
    rerun.loc[1, "jobs_after"] = 6
    result = store.append(TABLE, rerun)
    assert (result.new, result.replaced, result.unchanged) == (1, 1, 1)
    expected = store.read(TABLE)
    assert expected["jobs_after"].tolist() == [4, 4, 6, 4]
    assert store.last_rows(TABLE, ["svc-00001"])["jobs_after"].tolist() == [6]
    assert store.newest_ts(TABLE) == MINUTE
    # Per day: two legacy files and a segment became one file; yesterday's one moved.
    assert store.compact(TABLE) == 2
    files = parquet_files(tmp_path)
    assert [f.split("/")[1] for f in files] == ["date=2026-03-01", "date=2026-03-02"]
    assert all("-cmp-" in f for f in files)
    assert not list((tmp_path / TABLE).glob("service=*"))
    pd.testing.assert_frame_equal(store.read(TABLE), expected)
    assert store.compact(TABLE) == 0


def test_compact_leaves_the_day_being_written_alone(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path)
    minutes(store, 3)
    today = MINUTE + pd.Timedelta(days=1)
    store.append(TABLE, decisions(3, today))
    store.append(TABLE, decisions(3, today + pd.Timedelta(minutes=1)))
    assert store.compact(TABLE, before=today) == 2
    per_day = {p.split("/")[1] for p in parquet_files(tmp_path)}
    assert per_day == {"date=2026-03-02", "date=2026-03-03"}
    assert len(parquet_files(tmp_path)) == 3


def test_fold_and_compact_refuse_other_tables(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path)
    with pytest.raises(ValueError, match="not journaled"):
        store.fold("event_metrics", MINUTE)
    with pytest.raises(ValueError, match="not journaled"):
        store.compact("event_metrics")
