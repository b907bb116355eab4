"""The simulated cluster as a live, persisted actuator target (serving.actuators.simulated).

A cluster is bootstrapped once per module (one day of history) and copied into each
test's tmp_path, so every test starts from the same saved cluster without re-simulating.
"""

from __future__ import annotations

import itertools
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from filelock import FileLock

import serving.actuators.simulated as simulated
from features.contracts import conform, contract
from features.sources import SimulatorSourceConfig, simulated_tables
from serving.actuators.base import Actuator
from serving.actuators.simulated import (
    EMITTED_TABLES,
    LOCK_FILE,
    META_FILE,
    STATE_FILE,
    TRUTH_COLUMNS,
    ClusterBusyError,
    ClusterNotFoundError,
    ClusterStateError,
    SimulatedCluster,
)

END = pd.Timestamp("2026-11-27 12:00")
SEED = 3
MIN = pd.Timedelta(minutes=1)
# Crashing jobs and noisy capacity: the simulator draws random numbers every minute.
RANDOM = {"job_failure_rate_per_hour": 6.0, "capacity_noise_cv": 0.2}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, pd.DataFrame]]:
    folder = tmp_path_factory.mktemp("cluster") / "c"
    _, tables = SimulatedCluster.bootstrap(folder, END, history_days=1, future_days=1, seed=SEED)
    return folder, tables


@pytest.fixture(scope="module")
def saved_random(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cluster") / "r"
    SimulatedCluster.bootstrap(
        folder, END, history_days=1, future_days=1, seed=SEED, service_overrides=RANDOM
    )
    return folder


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(LOCK_FILE))
    return dst


@pytest.fixture
def cluster(saved: tuple[Path, dict[str, pd.DataFrame]], tmp_path: Path) -> SimulatedCluster:
    return SimulatedCluster.load(_copy(saved[0], tmp_path / "c"))


def test_history_is_the_ingest_sources(saved: tuple[Path, dict[str, pd.DataFrame]]) -> None:
    _, tables = saved
    reference = simulated_tables(SimulatorSourceConfig(end=END, days=1, seed=SEED))
    assert set(tables) == set(reference)
    for table, frame in reference.items():
        pd.testing.assert_frame_equal(tables[table], frame, check_exact=True)
    cluster = SimulatedCluster.load(saved[0])
    pd.testing.assert_frame_equal(cluster.profiles, reference["service_profiles"])
    assert cluster.clock == END
    assert cluster.history_start == END - pd.Timedelta(days=1)
    # The demo's services do not crash: without overrides the simulator draws nothing.
    assert all(
        c.job_failure_rate_per_hour == 0 and c.capacity_noise_cv == 0 for c in cluster.configs
    )


def test_bootstrap_then_load_gives_the_same_state(tmp_path: Path) -> None:
    first, _ = SimulatedCluster.bootstrap(
        tmp_path / "c", END, history_days=1, future_days=1, seed=SEED, service_overrides=RANDOM
    )
    again = SimulatedCluster.load(tmp_path / "c")
    a, b = first._read_state(), again._read_state()
    for name in ("running", "pipeline", "queue", "history", "changed_last", "targets"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert (a.step, a.clock, a.rng) == (b.step, b.clock, b.rng)
    assert a.clock == END and a.step == 1440
    assert again.services == first.services and again.configs == first.configs
    assert again.current(again.services) == first.current(first.services)
    assert all(c.job_failure_rate_per_hour == 6.0 for c in again.configs)


def test_advance_emits_contract_rows_for_exactly_the_advanced_minutes(
    cluster: SimulatedCluster, saved: tuple[Path, dict[str, pd.DataFrame]]
) -> None:
    out = cluster.advance(END + 7 * MIN + pd.Timedelta(seconds=30))  # floored to :07
    minutes = pd.date_range(END, periods=7, freq="min")
    assert set(out) == set(EMITTED_TABLES)
    for table, frame in out.items():
        assert set(frame.columns) == set(contract(table).names), table
        conformed = conform(frame, table)
        assert not conformed.unparseable and not conformed.filled and not conformed.dropped_columns
        ids = {"*"} if table == "business_calendar" else set(cluster.services)
        for sid in ids:
            ts = frame.loc[frame["service_id"] == sid, "ts"]
            assert list(ts) == list(minutes), (table, sid)
    assert cluster.clock == END + 7 * MIN
    # The queue carries over from the history: the first live minute's flow balance holds.
    history = saved[1]["event_metrics"]
    last_queue = history[history["ts"] == END - MIN].set_index("service_id")["queue_length"]
    first = out["event_metrics"][out["event_metrics"]["ts"] == END].set_index("service_id")
    assert (first["events_processed"] <= first["events_in"] + last_queue + 1e-6).all()
    truth = cluster.truth()
    assert list(truth.columns) == list(TRUTH_COLUMNS)
    assert len(truth) == 7 * len(cluster.services)
    merged = out["event_metrics"].merge(truth, on=["service_id", "ts"])
    np.testing.assert_array_equal(merged["events_in"], merged["arrivals"])
    np.testing.assert_array_equal(merged["events_processed"], merged["processed"])
    live = cluster.arrivals_between(END, END + 7 * MIN).merge(truth, on=["service_id", "ts"])
    np.testing.assert_array_equal(live["events_in"], live["arrivals"])


def test_advance_not_after_the_clock_is_a_no_op(cluster: SimulatedCluster) -> None:
    cluster.advance(END + 3 * MIN)
    before = cluster.pending()
    for until in (END + 3 * MIN, END, END - pd.Timedelta(hours=2)):
        out = cluster.advance(until)
        assert all(frame.empty for frame in out.values())
        assert set(out["event_metrics"].columns) == set(contract("event_metrics").names)
    assert cluster.clock == END + 3 * MIN
    assert len(cluster.truth()) == 3 * len(cluster.services)
    after = cluster.pending()
    for table in before:
        pd.testing.assert_frame_equal(before[table], after[table])


def test_two_processes_continue_like_one(saved_random: Path, tmp_path: Path) -> None:
    one = SimulatedCluster.load(_copy(saved_random, tmp_path / "one"))
    in_one_go = one.advance(END + 40 * MIN)

    folder = _copy(saved_random, tmp_path / "two")
    first = SimulatedCluster.load(folder)
    parts = [first.advance(END + 13 * MIN)]
    second = SimulatedCluster.load(folder)  # a new process, from disk only
    parts.append(second.advance(END + 29 * MIN))
    parts.append(SimulatedCluster.load(folder).advance(END + 40 * MIN))

    truth_one, truth_two = one.truth(), SimulatedCluster.load(folder).truth()
    assert truth_one["job_failures"].sum() > 0  # the random streams were used
    pd.testing.assert_frame_equal(truth_one, truth_two, check_exact=True)
    for table in EMITTED_TABLES:
        split = pd.concat([p[table] for p in parts]).sort_values(["service_id", "ts"])
        whole = in_one_go[table].sort_values(["service_id", "ts"])
        waits = ["queue_wait_p50_s", "queue_wait_p95_s"] if table == "event_metrics" else []
        pd.testing.assert_frame_equal(
            split.drop(columns=waits).reset_index(drop=True),
            whole.drop(columns=waits).reset_index(drop=True),
            check_exact=True,
        )
    # Waits are final for minutes whose events all left before their chunk ended; the
    # events still queued then get a projected wait (module docstring).
    events = pd.concat([p["event_metrics"] for p in parts]).set_index(["service_id", "ts"])
    whole = in_one_go["event_metrics"].set_index(["service_id", "ts"]).loc[events.index]
    settled = _settled(truth_one, [END, END + 13 * MIN, END + 29 * MIN, END + 40 * MIN])
    settled = settled.loc[events.index].to_numpy()
    assert 0 < settled.sum() < len(settled)
    for column in ("queue_wait_p50_s", "queue_wait_p95_s"):
        np.testing.assert_allclose(
            events.loc[settled, column], whole.loc[settled, column], rtol=1e-9, atol=1e-6
        )


def _settled(truth: pd.DataFrame, bounds: list[pd.Timestamp]) -> pd.Series:
    """Per (service, minute): whether the minute's events all left before its chunk ended.

    FIFO: they did when the queue at the chunk's end is no more than what was accepted
    after the minute.
    """
    out = []
    for _, group in truth.groupby("service_id"):
        group = group.sort_values("ts")
        for start, stop in itertools.pairwise(bounds):
            chunk = group[(group["ts"] >= start) & (group["ts"] < stop)]
            accepted = chunk["accepted"].to_numpy()
            after = accepted[::-1].cumsum()[::-1] - accepted  # accepted after each minute
            left = chunk["queue"].to_numpy()[-1] <= after + 1e-9
            out.append(pd.Series(left, index=pd.MultiIndex.from_frame(chunk[["service_id", "ts"]])))
    return pd.concat(out)


def test_apply_sets_targets_idempotently_and_from_the_next_minute(
    cluster: SimulatedCluster,
) -> None:
    actuator: Actuator = cluster
    assert actuator.name == "simulated"
    cluster.advance(END + 2 * MIN)
    before = cluster.current(["checkout", "nope"])
    assert before["nope"] is None
    t0 = before["checkout"]
    assert t0 is not None
    config = cluster.configs[cluster.services.index("checkout")]
    target = min(t0 + 10, config.max_jobs)
    assert target - t0 > config.max_step  # the step limit will show

    results = cluster.apply({"checkout": target, "nope": 3, "analytics": np.int64(6)})
    assert [r.service_id for r in results] == ["checkout", "nope", "analytics"]
    assert results[0].applied and results[0].previous == t0 and results[0].attempts == 1
    assert not results[1].applied and results[1].error and "nope" in results[1].error
    assert results[2].applied and results[2].target == 6
    again = cluster.apply({"checkout": target})
    assert again[0].applied and again[0].attempts == 0 and again[0].previous == target
    assert SimulatedCluster.load(cluster.folder).current(["checkout"]) == {"checkout": target}
    with pytest.raises(ValueError, match="nothing applied"):
        cluster.apply({"checkout": -1, "analytics": 2})
    with pytest.raises(ValueError):
        cluster.apply({"checkout": 2.0})  # type: ignore[dict-item]
    assert cluster.current(["checkout", "analytics"]) == {"checkout": target, "analytics": 6}

    cluster.advance(END + 6 * MIN)
    truth = cluster.truth().query("service_id == 'checkout'").set_index("ts")
    # Minutes run before the apply keep the old target.
    assert (truth.loc[: END + MIN, "jobs_target"] == t0).all()
    assert (truth.loc[END + 2 * MIN :, "jobs_target"] == target).all()
    bounded = truth.loc[END + 2 * MIN :, "jobs_target_bounded"].to_numpy()
    steps = np.diff(np.concatenate([[t0], bounded]))
    assert ((steps >= 0) & (steps <= config.max_step)).all()
    assert steps[0] == config.max_step and bounded[-1] == target
    # New jobs start first and serve after the startup delay.
    assert truth.loc[END + 2 * MIN, "jobs_starting"] >= config.max_step


def test_scale_down_is_graceful(cluster: SimulatedCluster) -> None:
    cluster.apply({"notifications": 12})
    cluster.advance(END + 10 * MIN)  # settle at 12 jobs, none starting
    cluster.apply({"notifications": 9})
    cluster.advance(END + 12 * MIN)
    truth = cluster.truth().query("service_id == 'notifications'").set_index("ts")
    settled, down, after = (
        truth.loc[END + 9 * MIN],
        truth.loc[END + 10 * MIN],
        truth.loc[END + 11 * MIN],
    )
    assert settled["jobs_serving"] == 12 and settled["jobs_starting"] == 0
    # Draining jobs serve (and are billed for) the minute they are asked to go.
    assert down["jobs_target_bounded"] == 9 and down["jobs_serving"] == 12
    assert down["cost"] == pytest.approx(settled["cost"])
    assert after["jobs_serving"] == 9


def test_a_crash_wave_is_saved_and_run_by_the_next_advance(
    saved: tuple[Path, dict[str, pd.DataFrame]], tmp_path: Path
) -> None:
    calm = SimulatedCluster.load(_copy(saved[0], tmp_path / "calm"))
    hit = SimulatedCluster.load(_copy(saved[0], tmp_path / "hit"))
    targets = hit.current(list(hit.services))
    hit.crash_wave("checkout", 1.0)
    # The wave is saved with the cluster: the process that advances next runs it.
    first = SimulatedCluster.load(hit.folder).advance(END + MIN)
    delay = hit.configs[hit.services.index("checkout")].startup_steps
    until = END + (delay + 4) * MIN
    hit.advance(until)
    calm.advance(until)
    mine = hit.truth().query("service_id == 'checkout' and ts >= @END").set_index("ts")
    twin = calm.truth().query("service_id == 'checkout' and ts >= @END").set_index("ts")
    n = int(mine.loc[END, "jobs_serving"])
    # Every serving job crashed at the end of the first minute, and its rows say so.
    assert n > 0 and mine.loc[END, "job_failures"] == n
    row = first["system_metrics"].query("service_id == 'checkout'")
    assert row["job_failures"].tolist() == [n] and row["jobs_running"].tolist() == [n]
    # None serves while they restart (startup delay), then all are back.
    down = mine.loc[END + MIN : END + delay * MIN]
    assert (down["jobs_serving"] == 0).all() and (down["jobs_starting"] == n).all()
    assert (
        mine.loc[END + (delay + 1) * MIN, "jobs_serving"]
        == twin.loc[END + (delay + 1) * MIN, "jobs_serving"]
    )
    # Meanwhile the queue builds; the crash is spent after one minute.
    assert (down["queue"] > twin.loc[down.index, "queue"]).all()
    assert mine["job_failures"].iloc[1:].sum() == 0
    # Targets are untouched and restarting jobs stay billed.
    assert hit.current(list(hit.services)) == targets
    pd.testing.assert_series_equal(mine["jobs_target_bounded"], twin["jobs_target_bounded"])
    pd.testing.assert_series_equal(mine["cost"], twin["cost"])
    # The other services run exactly as in the twin without the wave.
    others = "service_id != 'checkout'"
    pd.testing.assert_frame_equal(hit.truth().query(others), calm.truth().query(others))


def test_a_crash_wave_with_bad_arguments_saves_nothing(cluster: SimulatedCluster) -> None:
    before = (cluster.folder / STATE_FILE).read_bytes()
    with pytest.raises(ValueError, match="unknown service 'nope'"):
        cluster.crash_wave("nope")
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\]"):
        cluster.crash_wave("checkout", 1.5)
    assert (cluster.folder / STATE_FILE).read_bytes() == before
    frames = cluster.advance(END + MIN)
    assert frames["system_metrics"]["job_failures"].sum() == 0


def test_a_state_saved_before_crash_waves_existed_loads_with_none_pending(
    cluster: SimulatedCluster,
) -> None:
    path = cluster.folder / STATE_FILE
    with np.load(path, allow_pickle=False) as z:
        arrays = {name: z[name] for name in z.files if name != "crashing"}
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    old = SimulatedCluster.load(cluster.folder)
    assert old.advance(END + MIN)["system_metrics"]["job_failures"].sum() == 0
    old.crash_wave("analytics", 1.0)  # and it saves one from now on
    rows = old.advance(END + 2 * MIN)["system_metrics"].query("service_id == 'analytics'")
    assert rows["job_failures"].tolist() == rows["jobs_running"].tolist() != [0]


def test_outbox_loses_nothing_until_acknowledged(cluster: SimulatedCluster) -> None:
    history = cluster.pending()
    # The history waits in the outbox too, so a crash before its ingestion loses nothing.
    assert set(history) == {
        "event_metrics",
        "system_metrics",
        "business_calendar",
        "service_profiles",
        "scaling_decisions",
    }
    assert history["event_metrics"]["ts"].max() == END - MIN
    assert cluster.acknowledge(END - MIN) > 0
    assert cluster.pending() == {}

    first = cluster.advance(END + 3 * MIN)
    # Ingestion fails: nothing acknowledged; the next cycle advances again.
    second = cluster.advance(END + 5 * MIN)
    pending = SimulatedCluster.load(cluster.folder).pending()
    for table in EMITTED_TABLES:
        expected = pd.concat([first[table], second[table]]).sort_values(["service_id", "ts"])
        pd.testing.assert_frame_equal(
            pending[table].reset_index(drop=True),
            expected.reset_index(drop=True),
            check_dtype=False,
        )
    # The retried ingestion stored everything up to :02 (say) and acknowledges it.
    removed = cluster.acknowledge(END + 2 * MIN)
    assert removed == 3 * (2 * len(cluster.services) + 1)
    left = cluster.pending()
    assert all(frame["ts"].min() == END + 3 * MIN for frame in left.values())
    assert cluster.acknowledge(END + 2 * MIN) == 0  # repeating it is harmless
    cluster.acknowledge(END + 4 * MIN, tables=["business_calendar"])
    assert "business_calendar" not in cluster.pending()
    cluster.acknowledge(END + 4 * MIN)
    assert cluster.pending() == {}
    with pytest.raises(ValueError, match="unknown table"):
        cluster.acknowledge(END, tables=["nope"])


def test_an_advance_that_crashed_before_its_commit_is_redone_cleanly(
    cluster: SimulatedCluster, saved: tuple[Path, dict[str, pd.DataFrame]], tmp_path: Path
) -> None:
    cluster.acknowledge(END)  # drop the history from the outbox
    reference = SimulatedCluster.load(_copy(cluster.folder, tmp_path / "ref"))
    expected = reference.advance(END + 4 * MIN)

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk gone")

    original = simulated._write_state
    simulated._write_state = crash  # type: ignore[assignment]
    try:
        with pytest.raises(OSError, match="disk gone"):
            cluster.advance(END + 6 * MIN)  # segments written, state not committed
    finally:
        simulated._write_state = original
    assert SimulatedCluster.load(cluster.folder).clock == END
    cluster.advance(END + 4 * MIN)
    pending = cluster.pending()
    for table in EMITTED_TABLES:
        pd.testing.assert_frame_equal(
            pending[table].reset_index(drop=True),
            expected[table].sort_values(["service_id", "ts"]).reset_index(drop=True),
            check_dtype=False,
        )
    pd.testing.assert_frame_equal(cluster.truth(), reference.truth())


def test_segments_are_merged_so_reads_stay_cheap(
    cluster: SimulatedCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(simulated, "_MAX_SEGMENTS", 4)
    folders = [cluster.folder / "truth"] + [cluster.folder / "outbox" / t for t in EMITTED_TABLES]
    most = 0
    for minute in range(1, 41):
        cluster.advance(END + minute * MIN)
        most = max(most, *(len(list(f.glob("*.parquet"))) for f in folders))
    # One folder merges per advance, so each waits at most three advances.
    assert most <= 4 + 3
    truth = cluster.truth()
    assert len(truth) == 40 * len(cluster.services)
    assert not truth.duplicated(["service_id", "ts"]).any()
    pending = cluster.pending()["system_metrics"]
    assert (pending["ts"] >= END).sum() == 40 * len(cluster.services)
    assert not pending.duplicated(["service_id", "ts"]).any()


def test_a_long_catch_up_is_bounded_and_skips_the_oldest_minutes(cluster: SimulatedCluster) -> None:
    until = END + pd.Timedelta(hours=5)
    out = cluster.advance(until, max_minutes=30)
    assert out["system_metrics"]["ts"].min() == until - 30 * MIN
    assert out["system_metrics"]["ts"].nunique() == 30
    assert cluster.clock == until
    assert cluster.skipped == [(END, until - 30 * MIN)]
    assert cluster.truth()["ts"].min() == until - 30 * MIN


def test_traffic_extends_across_chunks_deterministically(
    cluster: SimulatedCluster, saved: tuple[Path, dict[str, pd.DataFrame]], tmp_path: Path
) -> None:
    # future_days=1: the second live day is a chunk generated on demand.
    boundary = END + pd.Timedelta(days=1)
    cluster.advance(boundary - 2 * MIN)
    out = cluster.advance(boundary + 3 * MIN)
    assert out["event_metrics"]["ts"].nunique() == 5
    other = SimulatedCluster.load(_copy(saved[0], tmp_path / "other"))
    window = (boundary - 2 * MIN, boundary + 3 * MIN)
    pd.testing.assert_frame_equal(
        cluster.arrivals_between(*window), other.arrivals_between(*window)
    )
    truth = cluster.truth().query("ts >= @window[0]")
    merged = other.arrivals_between(*window).merge(truth, on=["service_id", "ts"])
    assert len(merged) == 5 * len(cluster.services)
    np.testing.assert_array_equal(merged["events_in"], merged["arrivals"])
    # The history's arrivals are kept as well.
    history = saved[1]["event_metrics"]
    replay = cluster.arrivals_between(END - pd.Timedelta(hours=1), END)
    expected = history[history["ts"] >= END - pd.Timedelta(hours=1)]
    np.testing.assert_array_equal(
        replay.sort_values(["service_id", "ts"])["events_in"],
        expected.sort_values(["service_id", "ts"])["events_in"],
    )
    calendar = cluster.calendar_between(boundary, boundary + pd.Timedelta(hours=2))
    assert len(calendar) == 120 and set(calendar["service_id"]) == {"*"}
    with pytest.raises(ValueError, match="before the simulated history"):
        cluster.arrivals_between(END - pd.Timedelta(days=2), END)


def test_missing_corrupt_or_newer_folders_fail_clearly(
    saved: tuple[Path, dict[str, pd.DataFrame]], tmp_path: Path
) -> None:
    assert not SimulatedCluster.exists(tmp_path)
    with pytest.raises(ClusterNotFoundError, match="bootstrap"):
        SimulatedCluster.load(tmp_path)

    bad_json = _copy(saved[0], tmp_path / "json")
    (bad_json / META_FILE).write_text("{not json")
    with pytest.raises(ClusterStateError, match="corrupt"):
        SimulatedCluster.load(bad_json)

    newer = _copy(saved[0], tmp_path / "newer")
    (newer / META_FILE).write_text(
        (newer / META_FILE).read_text().replace('"format": 1', '"format": 99')
    )
    with pytest.raises(ClusterStateError, match="newer"):
        SimulatedCluster.load(newer)

    bad_state = _copy(saved[0], tmp_path / "state")
    (bad_state / STATE_FILE).write_bytes(b"garbage")
    with pytest.raises(ClusterStateError, match="corrupt cluster state"):
        SimulatedCluster.load(bad_state)

    with pytest.raises(ClusterStateError, match="already holds"):
        SimulatedCluster.bootstrap(saved[0], END, history_days=1)


def test_the_lock_keeps_two_processes_from_advancing_at_once(cluster: SimulatedCluster) -> None:
    stale = SimulatedCluster.load(cluster.folder, lock_timeout=0.2)
    with FileLock(cluster.folder / LOCK_FILE):
        with pytest.raises(ClusterBusyError, match="another process"):
            stale.advance(END + 5 * MIN)
        with pytest.raises(ClusterBusyError):
            stale.apply({"checkout": 3})
    assert stale.clock == END

    # One advance holds the lock while it writes; the other waits, then continues from
    # the state the first one saved (it re-reads it under the lock).
    slow = SimulatedCluster.load(cluster.folder)
    write = slow._truth.write
    started = threading.Event()

    def slow_write(*args: object, **kwargs: object) -> None:
        started.set()
        time.sleep(0.5)
        write(*args, **kwargs)  # type: ignore[arg-type]

    slow._truth.write = slow_write  # type: ignore[method-assign]
    worker = threading.Thread(target=slow.advance, args=(END + 5 * MIN,))
    worker.start()
    assert started.wait(10)
    waiting = SimulatedCluster.load(cluster.folder, lock_timeout=10)
    waited = time.perf_counter()
    out = waiting.advance(END + 8 * MIN)
    waited = time.perf_counter() - waited
    worker.join()
    assert waited > 0.2
    assert sorted(out["system_metrics"]["ts"].unique()) == list(
        pd.date_range(END + 5 * MIN, periods=3, freq="min")
    )
    truth = waiting.truth()
    assert truth["ts"].nunique() == 8 and not truth.duplicated(["service_id", "ts"]).any()


def test_many_services(tmp_path: Path) -> None:
    cluster, _ = SimulatedCluster.bootstrap(
        tmp_path / "fleet", END, history_days=1, future_days=1, services=7
    )
    assert len(cluster.services) == 7 and cluster.services[3] == "checkout-3"
    out = cluster.advance(END + 2 * MIN)
    assert len(out["event_metrics"]) == 14
    assert len(cluster.truth()) == 14


@pytest.mark.slow
def test_emitted_rows_pass_ingest_validation(
    cluster: SimulatedCluster, saved: tuple[Path, dict[str, pd.DataFrame]]
) -> None:
    from features.validation import BatchValidator

    validator = BatchValidator()
    until = END + 10 * MIN
    out = cluster.advance(until)
    history = saved[1]
    for table, frame in out.items():
        stored = history[table]
        previous = stored[stored["ts"] == END - MIN]
        verdict = validator.validate(conform(frame, table), table, now=until, previous=previous)
        assert not verdict.table_failures, (table, verdict.table_failures)
        assert verdict.rejected_services == [], (table, verdict.services)
        assert not any("gap" in w for w in verdict.warnings), verdict.warnings


def test_segments_left_by_a_crash_are_read_once_and_tidied(tmp_path: Path) -> None:
    segments = simulated._Segments(tmp_path / "log")
    frame = pd.DataFrame(
        {"service_id": "s", "ts": pd.date_range(END, periods=6, freq="min"), "x": np.arange(6.0)}
    )
    segments.write(frame.iloc[:3], END, END + 3 * MIN)
    segments.write(frame.iloc[3:], END + 3 * MIN, END + 6 * MIN)
    # A merge that crashed before removing its parts, and a trim that crashed before
    # removing the untrimmed segment: both leave a segment inside another one.
    segments.write(frame, END, END + 6 * MIN)
    segments.write(frame.iloc[5:], END + 5 * MIN, END + 6 * MIN)
    read = segments.read()
    assert read is not None
    pd.testing.assert_frame_equal(read, frame)
    segments.tidy()
    assert len(list((tmp_path / "log").glob("*.parquet"))) == 1
    assert segments.drop_through(END + 1 * MIN) == 2
    read = segments.read()
    assert read is not None and list(read["x"]) == [2.0, 3.0, 4.0, 5.0]
