"""Behaviour of features/engineering.py: the point-in-time rule, hand-checked feature values,
the ``since`` filter and the declared columns.

The point-in-time test is the proof that no feature looks ahead: features computed on
data truncated at a cut time T must equal, bit for bit, the features computed on all data
for every row available by T.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from features.contracts import conform
from features.engineering import (
    AVAILABLE_AFTER,
    CALENDAR_FEATURES,
    DRAIN_CAP_S,
    HEADROOM_MIN,
    MINUTE_FEATURES,
    PANDAS_DTYPES,
    PROFILE_FEATURES,
    SEQUENCE_FEATURES,
    FeatureFrames,
    calendar_features,
    compute_features,
    lookback_needed,
)
from simulator.config import ClusterParams, ServiceConfig
from simulator.metrics import event_metrics, system_metrics
from simulator.run import simulate_schedule
from simulator.synthetic import SyntheticConfig, default_services, generate

START = pd.Timestamp("2026-01-05 00:00")  # a Monday
MIN = pd.Timedelta(minutes=1)


@dataclasses.dataclass(frozen=True)
class Tables:
    events: pd.DataFrame
    system: pd.DataFrame
    calendar: pd.DataFrame
    profiles: pd.DataFrame

    def features(
        self, since: pd.Timestamp | None = None, sequences_since: pd.Timestamp | None = None
    ) -> FeatureFrames:
        return compute_features(
            self.events,
            self.system,
            self.calendar,
            self.profiles,
            since=since,
            sequences_since=sequences_since,
        )


def _profile_row(service_id: str, ts: pd.Timestamp, **kw: object) -> dict[str, object]:
    row: dict[str, object] = {
        "service_id": service_id,
        "ts": ts,
        "criticality": 2,
        "sla_latency_s": 60.0,
        "sla_target": 0.99,
        "cost_per_job_hour": 6.0,
        "daily_budget": 100.0,
        "min_jobs": 0,
        "max_jobs": 50,
        "max_step": 5,
        "job_capacity_eps": 5.0,
        "job_startup_s": 90.0,
    }
    row.update(kw)
    return row


def _tables(
    events: pd.DataFrame,
    system: pd.DataFrame | None = None,
    calendar: pd.DataFrame | None = None,
    profiles: pd.DataFrame | None = None,
) -> Tables:
    """Contract-conformed tables from hand-made frames (missing columns filled by contract)."""
    if system is None:
        system = events[["service_id", "ts"]].assign(jobs_running=1)
    if calendar is None:
        calendar = pd.DataFrame({"service_id": ["*"], "ts": [START], "is_holiday": [False]})
    if profiles is None:
        profiles = pd.DataFrame(
            [_profile_row(s, START - pd.Timedelta(days=30)) for s in events["service_id"].unique()]
        )
    return Tables(
        conform(events, "event_metrics").frame,
        conform(system, "system_metrics").frame,
        conform(calendar, "business_calendar").frame,
        conform(profiles, "service_profiles").frame,
    )


def _series(
    values: np.ndarray, service_id: str = "svc", start: pd.Timestamp = START
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "service_id": service_id,
            "ts": pd.date_range(start, periods=len(values), freq="min"),
            "events_in": np.asarray(values, dtype=np.float64),
        }
    )


def _row(frame: pd.DataFrame, ts: pd.Timestamp, service_id: str = "svc") -> pd.Series:
    """The feature row describing metrics minute ``ts``."""
    hit = frame[(frame["service_id"] == service_id) & (frame["event_timestamp"] == ts + MIN)]
    assert len(hit) == 1, f"expected one row for {service_id} at {ts}"
    return hit.iloc[0]


# ------------------------------------------------------------------- simulated data


@pytest.fixture(scope="module")
def sim() -> Tables:
    """3 services x 9 days from the simulator, with gaps, a profile change and overrides."""
    specs = tuple(dataclasses.replace(s, outages_per_week=1.0) for s in default_services())
    data = generate(SyntheticConfig(days=9, services=specs, seed=3))
    n_services = len(specs)
    arrivals = data.events["events_in"].to_numpy(dtype=np.float64).reshape(n_services, -1).T
    configs = [
        ServiceConfig(
            service_id=s.service_id,
            job_capacity_eps=40.0,
            max_jobs=300,
            max_step=10,
            job_failure_rate_per_hour=0.05,
        )
        for s in specs
    ]
    params = ClusterParams.from_services(configs)
    peak = pd.DataFrame(arrivals).rolling(10, min_periods=1).max().to_numpy()
    targets = np.ceil(peak / (params.job_step_capacity * 0.8)).astype(np.int64)
    log = simulate_schedule(params, arrivals, targets, targets[0], start=data.config.start, seed=1)
    events = event_metrics(log)
    system = system_metrics(log)

    rng = np.random.default_rng(7)
    # Gaps: a shared 40-minute hole, plus scattered minutes missing from one table only.
    hole = (events["ts"] >= START + pd.Timedelta("3 days 05:10:00")) & (
        events["ts"] < START + pd.Timedelta("3 days 05:50:00")
    )
    hole &= events["service_id"] == "checkout"
    events = events[~hole & (rng.random(len(events)) > 0.01)]
    system = system[~hole.to_numpy() & (rng.random(len(system)) > 0.01)]

    calendar = data.calendar.copy()
    in_override = calendar["ts"].between(START + pd.Timedelta("2D"), START + pd.Timedelta("2D 3h"))
    override = calendar[in_override].assign(
        service_id="checkout",
        is_holiday=True,
        business_event="launch",
        expected_traffic_multiplier=3.0,
    )
    calendar = pd.concat([calendar, override], ignore_index=True)
    profiles = pd.DataFrame(
        [_profile_row(c.service_id, START, job_capacity_eps=40.0) for c in configs]
        + [
            _profile_row(
                c.service_id,
                START + pd.Timedelta("4 days 12:00:00"),
                criticality=1,
                job_capacity_eps=45.0,
                cost_per_job_hour=9.0,
            )
            for c in configs
        ]
    )
    return _tables(events, system, calendar, profiles)


@pytest.fixture(scope="module")
def full(sim: Tables) -> FeatureFrames:
    return sim.features()


def _truncate(tables: Tables, cut: pd.Timestamp) -> Tables:
    """Metrics available by ``cut``: minutes with ts + 1 min <= cut."""
    return dataclasses.replace(
        tables,
        events=tables.events[tables.events["ts"] + AVAILABLE_AFTER <= cut],
        system=tables.system[tables.system["ts"] + AVAILABLE_AFTER <= cut],
    )


def _matrix(frame: pd.DataFrame, column: str) -> np.ndarray:
    length = dict(SEQUENCE_FEATURES)[column]
    if frame.empty:
        return np.empty((0, length), dtype=np.float32)
    return np.stack(frame[column].to_list())


def _assert_sequences_equal(a: pd.DataFrame, b: pd.DataFrame, *, rtol: float = 0.0) -> None:
    pd.testing.assert_frame_equal(
        a[["service_id", "event_timestamp"]].reset_index(drop=True),
        b[["service_id", "event_timestamp"]].reset_index(drop=True),
    )
    for name, _ in SEQUENCE_FEATURES:
        if rtol:
            np.testing.assert_allclose(_matrix(a, name), _matrix(b, name), rtol=rtol, atol=1e-6)
        else:
            np.testing.assert_array_equal(_matrix(a, name), _matrix(b, name))


@pytest.mark.parametrize(
    "cut",
    [
        START + pd.Timedelta("0 days 02:17:00"),  # less than the shortest history of most features
        START + pd.Timedelta("2 days 01:00:00"),  # inside the per-service calendar override
        START + pd.Timedelta("3 days 05:30:00"),  # inside the hole of checkout
        START + pd.Timedelta("4 days 12:00:00"),  # the minute the new profile starts
        START + pd.Timedelta("7 days 00:01:00"),  # the first minute with a weekly lag
        START + pd.Timedelta("8 days 17:43:00"),
    ],
)
def test_point_in_time_rows_do_not_change_when_later_data_is_removed(
    sim: Tables, full: FeatureFrames, cut: pd.Timestamp
) -> None:
    part = _truncate(sim, cut).features()
    expected = full.minute[full.minute["event_timestamp"] <= cut].reset_index(drop=True)
    assert len(expected) > 0 and part.minute["event_timestamp"].max() <= cut
    pd.testing.assert_frame_equal(part.minute, expected, check_exact=True)
    expected_seq = full.sequences[full.sequences["event_timestamp"] <= cut]
    _assert_sequences_equal(part.sequences, expected_seq)


def test_newest_row_is_the_cut_time(sim: Tables) -> None:
    cut = START + pd.Timedelta("5 days 10:07:00")
    part = _truncate(sim, cut).features(since=cut)
    # One row per service: the minute that completed exactly at the cut.
    assert sorted(part.minute["service_id"]) == ["analytics", "checkout", "notifications"]
    assert (part.minute["event_timestamp"] == cut).all()
    assert len(part.sequences) == 3


def test_since_with_lookback_equals_the_full_computation(sim: Tables, full: FeatureFrames) -> None:
    since = START + pd.Timedelta("8 days 03:17:00")
    first = since - lookback_needed()
    short = dataclasses.replace(
        sim,
        events=sim.events[sim.events["ts"] >= first],
        system=sim.system[sim.system["ts"] >= first],
    )
    got = short.features(since=since)
    want = full.minute[full.minute["event_timestamp"] >= since].reset_index(drop=True)
    assert got.minute["event_timestamp"].min() >= since
    # The only difference is rounding of running sums that started a week earlier.
    pd.testing.assert_frame_equal(got.minute, want, check_exact=False, rtol=1e-6, atol=1e-6)
    _assert_sequences_equal(
        got.sequences, full.sequences[full.sequences["event_timestamp"] >= since], rtol=1e-6
    )
    # Without truncation `since` is a pure filter.
    same = sim.features(since=since)
    pd.testing.assert_frame_equal(same.minute, want, check_exact=True)


def test_sequences_since_limits_only_the_sequences(sim: Tables, full: FeatureFrames) -> None:
    since = START + pd.Timedelta("6D")
    seq_since = START + pd.Timedelta("8 days 12:00:00")
    got = sim.features(since=since, sequences_since=seq_since)
    assert got.minute["event_timestamp"].min() == since
    assert got.sequences["event_timestamp"].min() == seq_since
    _assert_sequences_equal(
        got.sequences, full.sequences[full.sequences["event_timestamp"] >= seq_since]
    )


def test_columns_and_dtypes_are_as_declared(full: FeatureFrames) -> None:
    keys = ["service_id", "event_timestamp"]
    assert list(full.minute.columns) == keys + [n for n, _ in MINUTE_FEATURES]
    assert list(full.sequences.columns) == keys + [n for n, _ in SEQUENCE_FEATURES]
    assert list(full.profiles.columns) == keys + [n for n, _ in PROFILE_FEATURES]
    for frame, declared in ((full.minute, MINUTE_FEATURES), (full.profiles, PROFILE_FEATURES)):
        assert frame["service_id"].map(lambda v: isinstance(v, str)).all()
        assert frame["event_timestamp"].dtype == "datetime64[ns]"
        for name, kind in declared:
            assert str(frame[name].dtype) == PANDAS_DTYPES[kind], name
    for name, length in SEQUENCE_FEATURES:
        arrays = full.sequences[name]
        assert all(a.dtype == np.float32 and a.shape == (length,) for a in arrays.iloc[::997])
    assert set(dict(CALENDAR_FEATURES)) <= set(dict(MINUTE_FEATURES))
    for frame in (full.minute, full.sequences):
        keyed = frame[keys]
        assert not keyed.duplicated().any()
        assert keyed.equals(keyed.sort_values(keys, ignore_index=True))


def test_rows_only_for_observed_minutes(sim: Tables, full: FeatureFrames) -> None:
    observed = pd.concat([sim.events[["service_id", "ts"]], sim.system[["service_id", "ts"]]])
    observed = observed.drop_duplicates().sort_values(["service_id", "ts"], ignore_index=True)
    got = full.minute[["service_id", "event_timestamp"]]
    assert (got["event_timestamp"] - AVAILABLE_AFTER).tolist() == observed["ts"].tolist()
    assert got["service_id"].tolist() == observed["service_id"].tolist()
    assert full.sequences[["service_id", "event_timestamp"]].equals(got)


def test_simulated_features_are_plausible(sim: Tables, full: FeatureFrames) -> None:
    m = full.minute
    # The profile change at day 4 12:00 reaches the minute rows as-of.
    row = _row(m, START + pd.Timedelta("4 days 11:59:00"), "analytics")
    assert row["criticality"] == 2
    assert _row(m, START + pd.Timedelta("4 days 12:00:00"), "analytics")["criticality"] == 1
    # The per-service calendar override applies to checkout only.
    ts = START + pd.Timedelta("2 days 01:00:00")
    assert _row(m, ts, "checkout")["is_holiday"] and _row(m, ts, "checkout")["in_business_event"]
    assert _row(m, ts, "checkout")["expected_traffic_multiplier"] == 3.0
    assert _row(m, ts, "analytics")["expected_traffic_multiplier"] != 3.0
    assert m["budget_used_today"].max() > 0 and (m["headroom"].dropna() <= 1).all()
    assert (m["drain_time_s"].dropna().between(0, DRAIN_CAP_S)).all()
    assert m["events_robust_z"].notna().mean() > 0.5
    assert (m["job_failure_rate_1h"].dropna() >= 0).all()
    assert full.profiles["event_timestamp"].nunique() == 2


# ---------------------------------------------------------------- hand-checked values


def test_rolling_windows_lags_and_slope_of_a_ramp() -> None:
    n = 3 * 1440
    ramp = np.arange(n, dtype=np.float64)
    m = _tables(_series(ramp)).features().minute
    i = 2000
    row = _row(m, START + pd.Timedelta(minutes=i))
    assert row["events_in"] == i
    assert row["events_mean_5m"] == pytest.approx(i - 2)
    assert row["events_max_5m"] == i
    assert row["events_std_5m"] == pytest.approx(np.std(np.arange(5), ddof=1), rel=1e-5)
    assert row["events_mean_1h"] == pytest.approx(i - 29.5)
    assert row["events_mean_1d"] == pytest.approx(i - 719.5)
    assert row["events_max_1d"] == i
    assert row["events_lag_1m"] == i - 1 and row["events_lag_1h"] == i - 60
    assert row["events_lag_1d"] == i - 1440  # the value a day earlier
    assert np.isnan(row["events_lag_1w"])  # only 3 days of history
    assert row["events_slope_1h"] == pytest.approx(1.0, rel=1e-6)
    assert row["events_ratio_1h"] == pytest.approx((i - 29.5) / (i - 89.5), rel=1e-6)
    # min_periods=1: at the third minute the windows hold what exists.
    first = _row(m, START + 2 * MIN)
    assert first["events_mean_1d"] == pytest.approx(1.0)
    assert np.isnan(first["events_lag_5m"])
    assert np.isnan(_row(m, START)["events_std_5m"])  # one value has no spread
    assert np.isnan(_row(m, START)["events_slope_1h"])


def test_ewm_matches_the_recursive_definition() -> None:
    values = np.array([10.0, 20.0, 40.0, 0.0, 30.0])
    m = _tables(_series(values)).features().minute
    alpha = 2 / (5 + 1)
    weights = (1 - alpha) ** np.arange(len(values))[::-1]
    assert m["events_ewm_5"].iloc[-1] == pytest.approx((weights * values).sum() / weights.sum())


def test_gap_gives_no_row_and_nan_lags() -> None:
    values = np.arange(200, dtype=np.float64) + 100
    events = _series(values)
    missing = START + pd.Timedelta(minutes=150)
    tables = _tables(events[events["ts"] != missing])
    m = tables.features().minute
    assert (m["event_timestamp"] != missing + MIN).all()
    assert len(m) == 199
    after = _row(m, missing + MIN)
    assert np.isnan(after["events_lag_1m"])
    assert after["events_lag_5m"] == values[146]
    # The 5-minute window is wall-clock: it holds the 4 observed minutes, not 5 rows.
    assert after["events_mean_5m"] == pytest.approx(np.mean(values[[147, 148, 149, 151]]))
    seq = tables.features().sequences
    recent = _row(seq, missing + MIN)["recent_events_120m"]
    assert np.isnan(recent[-2]) and recent[-1] == values[151]


def test_robust_z_flags_an_injected_spike() -> None:
    rng = np.random.default_rng(0)
    days = 9
    minute = np.arange(days * 1440)
    level = 1000 + 500 * np.sin(2 * np.pi * minute / 1440)
    values = rng.poisson(level).astype(np.float64)
    spike_at = 8 * 1440 + 600
    values[spike_at] *= 3
    m = _tables(_series(values)).features().minute
    spike = _row(m, START + pd.Timedelta(minutes=spike_at))
    assert spike["events_robust_z"] > 10 and spike["spike_flag"]
    same_minutes = values[spike_at - 1440 * np.arange(1, 8)]
    assert spike["events_seasonal_median"] == np.median(same_minutes)
    normal = m[m["event_timestamp"] >= START + pd.Timedelta("3D") + MIN]
    assert normal["events_robust_z"].notna().all()
    # Poisson noise alone rarely crosses |z| > 4 (the scale never drops below sqrt(level)).
    assert normal["spike_flag"].mean() < 0.002
    assert normal["events_robust_z"].abs().idxmax() == spike.name
    # Fewer than 3 previous days: no z-score, no flag.
    early = m[m["event_timestamp"] <= START + pd.Timedelta("3D")]
    assert early["events_robust_z"].isna().all() and not early["spike_flag"].any()


def test_robust_z_of_a_flat_history_uses_the_floor() -> None:
    values = np.full(5 * 1440, 50.0)
    values[-1] = 53.0
    m = _tables(_series(values)).features().minute
    # MAD 0 -> the Poisson floor: scale = sqrt(50) (above 1 % of 50 and 1 event/min).
    assert m["events_robust_z"].iloc[-1] == pytest.approx(3.0 / np.sqrt(50.0), rel=1e-6)
    assert not m["spike_flag"].iloc[-1]
    values[-1] = 80.0
    m = _tables(_series(values)).features().minute
    assert m["spike_flag"].iloc[-1]  # 30 / sqrt(50) = 4.2


def test_level_shift_flag_after_a_step() -> None:
    values = np.r_[np.full(120, 100.0), np.full(60, 300.0)]
    m = _tables(_series(values)).features().minute
    before = _row(m, START + pd.Timedelta(minutes=119))
    assert before["level_shift_ratio"] == pytest.approx(1.0) and not before["level_shift_flag"]
    after = _row(m, START + pd.Timedelta(minutes=134))
    assert after["level_shift_ratio"] == pytest.approx(3.0) and after["level_shift_flag"]


def test_calendar_override_per_service_and_missing_minutes() -> None:
    holiday = START + pd.Timedelta(hours=10)
    calendar = pd.DataFrame(
        {
            "service_id": ["*", "a", "*"],
            "ts": [holiday, holiday, holiday + MIN],
            "is_holiday": [True, False, True],
            "business_event": ["", "launch", "sale"],
            "expected_traffic_multiplier": [1.0, 2.0, 1.5],
        }
    )
    cal = conform(calendar, "business_calendar").frame
    minutes = pd.DatetimeIndex([holiday, holiday + MIN, holiday + 2 * MIN])
    a = calendar_features(minutes, cal, "a")
    b = calendar_features(minutes, cal, "b")
    assert list(a.columns) == ["ts"] + [n for n, _ in CALENDAR_FEATURES]
    # 'a' has its own row at `holiday`: it wins over '*' as a whole.
    assert a["is_holiday"].tolist() == [False, True, False]
    assert a["in_business_event"].tolist() == [True, True, False]
    assert a["expected_traffic_multiplier"].tolist() == [2.0, 1.5, 1.0]
    assert b["is_holiday"].tolist() == [True, True, False]
    assert b["in_business_event"].tolist() == [False, True, False]
    # The same rule inside compute_features.
    events = pd.concat([_series(np.ones(700), "a"), _series(np.ones(700), "b")])
    m = _tables(events, calendar=calendar).features().minute
    assert _row(m, holiday, "a")["expected_traffic_multiplier"] == 2.0
    assert not _row(m, holiday, "a")["is_holiday"] and _row(m, holiday, "b")["is_holiday"]


def test_time_encodings() -> None:
    minutes = pd.DatetimeIndex(
        ["2026-01-05 00:00", "2026-01-05 06:00", "2026-01-11 23:59", "2024-12-31 12:00"]
    )
    cal = conform(
        pd.DataFrame({"service_id": ["*"], "ts": [START], "is_holiday": [False]}),
        "business_calendar",
    ).frame
    f = calendar_features(minutes, cal, "svc")
    assert f["minute_of_day"].tolist() == [0, 360, 1439, 720]
    assert f["day_of_week"].tolist() == [0, 0, 6, 1]  # Monday = 0
    assert f["month"].tolist() == [1, 1, 1, 12]
    assert f["daily_sin_1"].iloc[1] == pytest.approx(1.0)
    assert f["daily_cos_2"].iloc[1] == pytest.approx(-1.0)
    assert f["weekly_sin_1"].iloc[0] == pytest.approx(0.0)
    assert f["weekly_cos_1"].iloc[0] == pytest.approx(1.0)
    # 2024 is a leap year: Dec 31 noon is day 365.5 of 366.
    assert f["yearly_sin_1"].iloc[3] == pytest.approx(np.sin(2 * np.pi * 365.5 / 366), abs=1e-6)
    # Future minutes work (known-future covariates) and keep input order.
    future = pd.Series(pd.date_range("2027-03-01", periods=3, freq="min")[::-1])
    assert calendar_features(future, cal, "svc")["ts"].tolist() == future.tolist()


def test_drain_time_and_headroom() -> None:
    ts = pd.date_range(START, periods=5, freq="min")
    events = pd.DataFrame(
        {
            "service_id": "svc",
            "ts": ts,
            "events_in": [300.0, 300.0, 0.0, 60.0, 1200.0],
            "queue_length": [600.0, 0.0, 50.0, 0.0, 1e9],
        }
    )
    system = pd.DataFrame({"service_id": "svc", "ts": ts, "jobs_running": [2, 2, 0, 0, 1]})
    m = _tables(events, system).features().minute  # job_capacity_eps = 5
    # 600 events / (2 jobs * 5 eps) = 60 s; 5 eps of 10 eps capacity -> headroom 0.5.
    # Queue without jobs -> the cap; a drain longer than the cap is capped too.
    assert m["drain_time_s"].tolist() == [60.0, 0.0, DRAIN_CAP_S, 0.0, DRAIN_CAP_S]
    # No jobs and no events -> 0; events without jobs -> the floor; 20 eps on 5 eps -> -3.
    assert m["headroom"].tolist() == [0.5, 0.5, 0.0, HEADROOM_MIN, -3.0]


def test_job_failure_rate_per_job_hour() -> None:
    ts = pd.date_range(START, periods=120, freq="min")
    failures = np.zeros(120, dtype=np.int64)
    failures[[10, 70]] = 1
    system = pd.DataFrame(
        {"service_id": "svc", "ts": ts, "jobs_running": 2, "job_failures": failures}
    )
    m = _tables(_series(np.ones(120)), system).features().minute
    # Minute 100: one failure (minute 70) in 60 minutes of 2 jobs = 2 job-hours.
    assert _row(m, START + pd.Timedelta(minutes=100))["job_failure_rate_1h"] == pytest.approx(0.5)
    assert _row(m, START + pd.Timedelta(minutes=69))["job_failure_rate_1h"] == pytest.approx(0.5)
    assert _row(m, START + pd.Timedelta(minutes=9))["job_failure_rate_1h"] == 0.0


def test_budget_resets_at_midnight() -> None:
    n = 1440 + 10
    ts = pd.date_range(START, periods=n, freq="min")
    system = pd.DataFrame({"service_id": "svc", "ts": ts, "jobs_running": 2, "jobs_starting": 1})
    m = _tables(_series(np.ones(n)), system).features().minute
    per_minute = 3 * 6.0 / 60 / 100.0  # 3 jobs at 6/h, budget 100
    assert _row(m, START)["budget_used_today"] == pytest.approx(per_minute)
    end_of_day = START + pd.Timedelta(minutes=1439)
    assert _row(m, end_of_day)["budget_used_today"] == pytest.approx(1440 * per_minute)
    assert _row(m, START + pd.Timedelta("1D"))["budget_used_today"] == pytest.approx(per_minute)
    assert _row(m, START + pd.Timedelta("1 days 00:04:00"))["budget_used_today"] == pytest.approx(
        5 * per_minute
    )


def test_profile_as_of_and_missing_profile() -> None:
    change = START + pd.Timedelta(minutes=30)
    profiles = pd.DataFrame(
        [_profile_row("svc", START, criticality=3), _profile_row("svc", change, criticality=1)]
    )
    events = pd.concat([_series(np.ones(60)), _series(np.ones(60), "other")])
    m = _tables(events, profiles=profiles).features().minute
    assert _row(m, change - MIN)["criticality"] == 3
    assert _row(m, change)["criticality"] == 1
    other = m[m["service_id"] == "other"]
    assert other["criticality"].isna().all() and other["budget_used_today"].isna().all()
    assert other["drain_time_s"].isna().all()  # queue_length not reported


def test_sequences_end_with_the_newest_minute_and_pad_with_nan() -> None:
    n = 200
    values = np.arange(n, dtype=np.float64) + 1
    start = START + pd.Timedelta(minutes=30)  # history starts mid-hour
    frames = _tables(_series(values, start=start)).features()
    seq = frames.sequences
    last = seq.iloc[-1]
    assert last["event_timestamp"] == start + n * MIN
    recent = last["recent_events_120m"]
    np.testing.assert_array_equal(recent, values[-120:].astype(np.float32))
    early = _row(seq, start + 9 * MIN)["recent_events_120m"]
    assert np.isnan(early[:110]).all()
    np.testing.assert_array_equal(early[110:], values[:10])
    # Newest minute 03:49 (start 00:30 + 199): partial hour 03:00..03:49, then full hours.
    hourly = last["hourly_events_7d"]
    hour_of = (np.arange(n) + 30) // 60
    assert hourly[-1] == values[hour_of == 3].sum()
    assert hourly[-2] == values[hour_of == 2].sum()
    assert hourly[-4] == values[hour_of == 0].sum()  # the first, partly observed hour
    assert np.isnan(hourly[:-4]).all()


def test_profiles_frame_and_since() -> None:
    profiles = pd.DataFrame(
        [
            _profile_row("svc", START - pd.Timedelta("10D"), max_jobs=10),
            _profile_row("svc", START - pd.Timedelta("1D"), max_jobs=20),
            _profile_row("svc", START + pd.Timedelta(minutes=30), max_jobs=30),
        ]
    )
    tables = _tables(_series(np.ones(60)), profiles=profiles)
    all_rows = tables.features().profiles
    assert all_rows["max_jobs"].tolist() == [10, 20, 30]
    assert all_rows["event_timestamp"].tolist() == profiles["ts"].tolist()
    # `since` keeps the profile in force at `since` (an as-of join needs it) and later ones.
    later = tables.features(since=START + pd.Timedelta(minutes=10)).profiles
    assert later["max_jobs"].tolist() == [20, 30]


def test_missing_values_stay_missing() -> None:
    ts = pd.date_range(START, periods=3, freq="min")
    events = _series(np.array([5.0, 6.0, 7.0]))
    system = pd.DataFrame({"service_id": "svc", "ts": ts[:2], "jobs_running": [1, 1]})
    m = _tables(events, system).features().minute
    assert m["utilization"].isna().all()  # not reported, not 0
    assert m["jobs_starting"].isna().all()
    assert pd.isna(m["jobs_running"].iloc[2]) and np.isnan(m["headroom"].iloc[2])
    assert m["drain_time_s"].isna().all()  # queue_length not reported
    assert np.isnan(m["budget_used_today"].iloc[2])


def test_empty_input_gives_empty_frames_with_columns() -> None:
    tables = _tables(_series(np.ones(3)))
    empty = dataclasses.replace(
        tables, events=tables.events.iloc[:0], system=tables.system.iloc[:0]
    )
    frames = empty.features()
    assert frames.minute.empty and frames.sequences.empty
    assert list(frames.minute.columns) == ["service_id", "event_timestamp"] + [
        n for n, _ in MINUTE_FEATURES
    ]


def test_missing_column_is_reported() -> None:
    tables = _tables(_series(np.ones(3)))
    with pytest.raises(ValueError, match="events_in"):
        compute_features(
            tables.events.drop(columns="events_in"),
            tables.system,
            tables.calendar,
            tables.profiles,
        )


def test_lookback_covers_a_week() -> None:
    assert lookback_needed() >= pd.Timedelta("7D") + AVAILABLE_AFTER
