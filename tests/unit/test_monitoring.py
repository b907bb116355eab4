"""Feedback monitoring (serving.monitoring): forecast error, coverage, SLA, cost and drift."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from monitor_world import synthetic_world

from features.contracts import empty
from serving.monitoring import (
    MonitorReport,
    MonitorThresholds,
    ServiceHealth,
    evaluate,
    population_stability_index,
    sla_compliance,
)

NOW = pd.Timestamp("2024-03-04 12:00")
# One day of reference, compared at a one-day lag: small frames, same rules as a week.
LIMITS = MonitorThresholds(reference_days=1.0, seasonal_lag_days=1, min_reference_minutes=600)
SERVICES = ("api", "billing")
BASE = {"api": 3000.0, "billing": 1200.0}
PRICE = 0.2
CAPACITY_EPS = 2.0  # many small jobs: utilization stays near its target all day


def _world(
    shift: dict[str, float] | None = None,
    forecast_scale: dict[str, float] | None = None,
    interval: float = 1.0,
    seed: int = 0,
) -> dict[str, pd.DataFrame]:
    """Metrics of every minute the check reads, decisions of the window, profiles.

    ``shift`` multiplies a service's traffic in the window (a level shift); forecasts
    follow the old level times ``forecast_scale``, with intervals ``interval`` times the
    calibrated 80 % width.
    """
    tables = synthetic_world(
        BASE,
        NOW - LIMITS.lookback("event_metrics"),
        NOW,
        NOW - LIMITS.window,
        shift=shift,
        forecast_scale=forecast_scale,
        interval=interval,
        seed=seed,
        capacity_eps=CAPACITY_EPS,
        price=PRICE,
    )
    return {
        "decisions": tables["scaling_decisions"],
        "event_metrics": tables["event_metrics"],
        "system_metrics": tables["system_metrics"],
        "profiles": tables["service_profiles"],
    }


def _evaluate(world: dict[str, pd.DataFrame], limits: MonitorThresholds = LIMITS) -> MonitorReport:
    return evaluate(
        world["decisions"],
        world["event_metrics"],
        world["system_metrics"],
        world["profiles"],
        NOW,
        limits,
    )


def _health(report: MonitorReport, service: str) -> ServiceHealth:
    return next(h for h in report.services if h.service_id == service)


def _kinds(report: MonitorReport, service: str) -> set[str]:
    return {f.kind for f in report.findings if f.service == service}


def _window(world: dict[str, pd.DataFrame], table: str, service: str) -> pd.DataFrame:
    frame = world[table]
    return frame[(frame["service_id"] == service) & (frame["ts"] >= NOW - LIMITS.window)]


# -- forecasts ---------------------------------------------------------------------------


def test_calibrated_forecasts_on_steady_traffic_give_no_findings() -> None:
    world = _world()
    report = _evaluate(world)
    assert report.findings == ()
    assert report.retrain == {}
    for sid in SERVICES:
        h = _health(report, sid)
        assert h.decisions == h.forecast_minutes == 60
        assert h.wql < 0.1
        assert 0.6 <= h.coverage_80 <= 1.0
        assert abs(h.bias) < 0.05
        assert h.sla_compliance == 1.0
        jobs = _window(world, "system_metrics", sid)["jobs_running"].astype(float)
        assert h.cost == pytest.approx(jobs.sum() * PRICE / 60.0)
    assert report.overall.forecast_minutes == 120
    assert report.overall.cost == pytest.approx(sum(_health(report, s).cost for s in SERVICES))


def test_biased_forecasts_are_a_forecast_error_of_that_service() -> None:
    report = _evaluate(_world(forecast_scale={"api": 0.5}))
    assert _kinds(report, "api") == {"forecast_error", "coverage"}
    assert _kinds(report, "billing") == set()
    api = _health(report, "api")
    assert api.wql > LIMITS.max_wql
    assert api.bias == pytest.approx(-0.5, abs=0.05)
    assert list(report.retrain) == ["forecaster"]
    assert all(reason.startswith("api: ") for reason in report.retrain["forecaster"])


def test_too_narrow_intervals_are_a_coverage_finding_only() -> None:
    report = _evaluate(_world(interval=0.05))
    for sid in SERVICES:
        assert _kinds(report, sid) == {"coverage"}
        assert _health(report, sid).coverage_80 < 0.2
        assert _health(report, sid).wql < LIMITS.max_wql
    assert set(report.retrain) == {"forecaster"}


# -- drift -------------------------------------------------------------------------------


def test_level_shift_is_drift_of_that_service_only() -> None:
    report = _evaluate(_world(shift={"billing": 4.0}))
    drift = [f for f in report.findings if f.kind == "drift"]
    assert {(f.service, f.feature) for f in drift} == {("billing", "events_in")}
    assert drift[0].value > LIMITS.max_drift_psi
    assert "x4." in drift[0].message or "x3." in drift[0].message
    # The forecasts followed the old level: the error is found too; api is clean.
    assert _kinds(report, "billing") == {"drift", "forecast_error", "coverage"}
    assert _kinds(report, "api") == set()
    psi = {(d.service_id, d.feature): d.psi for d in report.drift}
    assert psi[("api", "events_in")] < LIMITS.max_drift_psi
    assert any("events_in drifted" in r for r in report.retrain["forecaster"])
    assert "controller" not in report.retrain


def test_drift_alone_asks_for_a_forecaster_retrain() -> None:
    # Forecasts that already follow the new level: only the input distribution moved.
    report = _evaluate(_world(shift={"billing": 4.0}, forecast_scale={"billing": 4.0}))
    assert _kinds(report, "billing") == {"drift"}
    assert report.retrain == {"forecaster": [f"billing: {report.findings[0].message}"]}


def test_daily_cycle_is_not_drift() -> None:
    # The window (11:00-12:00) sits on the daily peak; the level over the whole reference
    # day would differ, its change against the day before does not.
    report = _evaluate(_world(seed=3))
    scores = {(d.service_id, d.feature): d for d in report.drift}
    for sid in SERVICES:
        assert scores[(sid, "events_in")].psi < 0.25
        assert scores[(sid, "proc_duration_mean_ms")].psi == 0.0
    level = MonitorThresholds(reference_days=1.0, seasonal_lag_days=0, min_reference_minutes=600)
    by_level = _evaluate(_world(seed=3), level)
    assert any(f.feature == "events_in" for f in by_level.findings)


def test_psi_binning() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=5000)
    assert population_stability_index(reference, rng.normal(size=2000)) < 0.02
    assert population_stability_index(reference, rng.normal(loc=2.0, size=60)) > 2.0
    # A constant reference keeps its value as a bin: a change is still seen.
    constant = np.full(1000, 40.0)
    assert population_stability_index(constant, np.full(60, 40.0)) == 0.0
    assert population_stability_index(constant, np.full(60, 80.0)) > 5.0
    assert population_stability_index(constant, np.full(60, 20.0)) > 5.0
    # A mostly empty queue: the share of zeros is what moves.
    zeros = np.r_[np.zeros(900), rng.exponential(5.0, 100)]
    assert population_stability_index(zeros, np.r_[np.zeros(54), rng.exponential(5.0, 6)]) < 0.1
    assert population_stability_index(zeros, rng.exponential(5.0, 60)) > 1.0
    assert math.isnan(population_stability_index(np.array([]), np.ones(3)))
    assert math.isnan(population_stability_index(np.ones(3), np.array([np.nan])))


# -- SLA ---------------------------------------------------------------------------------


def test_sla_estimate_reads_the_wait_percentiles() -> None:
    y = np.array([100.0, 100.0, 100.0, 100.0, 100.0, np.nan])
    dropped = np.array([0.0, 10.0, 0.0, 0.0, 0.0, 0.0])
    p50 = np.array([0.0, 0.0, 30.0, 90.0, 30.0, 0.0])
    p95 = np.array([10.0, 10.0, 90.0, 120.0, np.nan, 0.0])
    proc = np.zeros(6)
    met, total, minutes = sla_compliance(y, dropped, p50, p95, proc, sla_latency_s=60.0)
    # within p95 (100), dropped are misses (90), halfway p50..p95 (72.5), above p50 (0);
    # the minutes without p95 or events_in are not used.
    assert minutes == 4
    assert total == 400.0
    assert met == pytest.approx(100 + 90 + 72.5 + 0)
    # Processing time eats into the budget.
    met_slow, _, _ = sla_compliance(y, dropped, p50, p95, np.full(6, 55_000.0), 60.0)
    assert met_slow < met


def test_sla_breach_retrains_the_controller_when_the_forecast_is_fine() -> None:
    world = _world()
    events = world["event_metrics"]
    late = (events["service_id"] == "api") & (events["ts"] >= NOW - pd.Timedelta(minutes=20))
    events.loc[late, ["queue_wait_p50_s", "queue_wait_p95_s"]] = [150.0, 300.0]
    report = _evaluate(world)
    sla = [f for f in report.findings if f.kind == "sla"]
    assert [(f.service, f.target) for f in sla] == [("api", "controller")]
    assert _health(report, "api").sla_compliance == pytest.approx(2 / 3, abs=0.05)
    assert sla[0].threshold == 0.99
    assert list(report.retrain) == ["controller"]
    assert _kinds(report, "billing") == set()


def test_sla_breach_with_a_bad_forecast_blames_the_forecast() -> None:
    world = _world(forecast_scale={"api": 0.3})
    events = world["event_metrics"]
    events.loc[events["service_id"] == "api", ["queue_wait_p50_s", "queue_wait_p95_s"]] = [
        150.0,
        300.0,
    ]
    report = _evaluate(world)
    sla = next(f for f in report.findings if f.kind == "sla")
    assert sla.target is None
    assert set(report.retrain) == {"forecaster"}


def test_sla_breach_of_a_service_nobody_decided_for_retrains_nothing() -> None:
    world = _world()
    world["decisions"] = world["decisions"][world["decisions"]["service_id"] != "api"]
    events = world["event_metrics"]
    events.loc[events["service_id"] == "api", ["queue_wait_p50_s", "queue_wait_p95_s"]] = [
        150.0,
        300.0,
    ]
    report = _evaluate(world)
    assert [(f.kind, f.target) for f in report.findings] == [("sla", None)]
    assert report.retrain == {}
    assert _health(report, "api").decisions == 0


# -- evidence ----------------------------------------------------------------------------


def test_too_little_evidence_judges_nothing_and_says_so() -> None:
    world = _world(forecast_scale={"api": 0.2}, shift={"api": 4.0})
    recent = NOW - pd.Timedelta(minutes=10)
    for table in ("decisions", "event_metrics", "system_metrics"):
        frame = world[table]
        gap = (frame["ts"] >= NOW - LIMITS.window) & (frame["ts"] < recent)
        world[table] = frame[~gap]
    report = _evaluate(world)
    assert report.findings == ()
    assert report.retrain == {}
    assert _health(report, "api").forecast_minutes == 10
    assert any("api: forecast not judged" in n for n in report.notes)
    assert any("api: drift of events_in not judged" in n for n in report.notes)
    assert "Not judged" in report.markdown()


def test_short_reference_is_not_judged() -> None:
    world = _world(shift={"api": 4.0}, forecast_scale={"api": 4.0})
    frame = world["event_metrics"]
    world["event_metrics"] = frame[frame["ts"] >= NOW - pd.Timedelta(hours=6)]
    report = _evaluate(world)
    assert report.findings == ()
    assert any("reference value(s) (need 600)" in n for n in report.notes)


def test_fallback_decisions_without_forecasts_are_not_forecast_evidence() -> None:
    world = _world()
    d = world["decisions"]
    d.loc[d["service_id"] == "api", ["forecast_q10", "forecast_q50", "forecast_q90"]] = np.nan
    report = _evaluate(world)
    api = _health(report, "api")
    assert (api.decisions, api.fallback_decisions, api.forecast_minutes) == (60, 60, 0)
    assert math.isnan(api.wql)
    assert report.findings == ()
    assert _health(report, "billing").forecast_minutes == 60
    assert report.overall.forecast_minutes == 60


def test_empty_inputs() -> None:
    report = evaluate(
        empty("scaling_decisions"),
        empty("event_metrics"),
        empty("system_metrics"),
        empty("service_profiles"),
        NOW,
    )
    assert report.services == ()
    assert report.findings == ()
    assert report.retrain == {}
    assert any("nothing to judge" in n for n in report.notes)
    assert report.metrics() == {
        "findings": 0.0,
        "retrain_forecaster": 0.0,
        "retrain_controller": 0.0,
        "all.decisions": 0.0,
        "all.fallback_decisions": 0.0,
        "all.forecast_minutes": 0.0,
        "all.events_in": 0.0,
    }
    assert "no retraining needed" in report.markdown()
    # Frames without the columns at all are no different.
    bare = pd.DataFrame()
    assert evaluate(bare, bare, bare, bare, NOW).findings == ()


def test_metrics_and_markdown() -> None:
    report = _evaluate(_world(shift={"billing": 4.0}))
    metrics = report.metrics()
    assert metrics["retrain_forecaster"] == 1.0
    assert metrics["retrain_controller"] == 0.0
    assert metrics["findings"] == float(len(report.findings))
    assert metrics["billing.psi_events_in"] > LIMITS.max_drift_psi
    assert metrics["api.wql"] < 0.1
    assert metrics["all.cost"] == pytest.approx(report.overall.cost)
    assert all(math.isfinite(v) for v in metrics.values())
    text = report.markdown()
    assert "**retrain forecaster**" in text
    assert "| drift | billing | events_in |" in text
    assert "| api | 60 (0) | 60 |" in text


def test_window_and_lookback() -> None:
    limits = MonitorThresholds()
    assert limits.lookback("scaling_decisions") == pd.Timedelta(minutes=60)
    assert limits.lookback("event_metrics") == pd.Timedelta(days=14, minutes=60)
    assert limits.lookback("system_metrics") == pd.Timedelta(days=7, minutes=60)
    only_traffic = MonitorThresholds(drift_features=("events_in",))
    assert only_traffic.lookback("system_metrics") == pd.Timedelta(minutes=60)
    # Rows at or after `now` are not evidence; an aware `now` is the same UTC minute.
    world = _world(forecast_scale={"api": 0.5})
    late = world["decisions"].assign(ts=world["decisions"]["ts"] + pd.Timedelta(hours=1))
    world["decisions"] = pd.concat([world["decisions"], late], ignore_index=True)
    report = evaluate(
        world["decisions"],
        world["event_metrics"],
        world["system_metrics"],
        world["profiles"],
        NOW.tz_localize("UTC").tz_convert("Europe/Berlin") + pd.Timedelta(seconds=30),
        LIMITS,
    )
    assert report.now == NOW
    assert _health(report, "api").decisions == 60


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window_minutes": 0}, "window_minutes"),
        ({"min_minutes": 90}, "min_minutes"),
        ({"drift_features": ("cpu",)}, "unknown drift_features"),
        ({"min_coverage_80": 1.5}, "min_coverage_80"),
        ({"drift_bins": 1}, "drift_bins"),
    ],
)
def test_thresholds_are_checked(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MonitorThresholds(**kwargs)  # type: ignore[arg-type]


def test_sla_estimate_is_close_to_the_simulator_exact_compliance() -> None:
    from simulator.config import ClusterParams, ServiceConfig
    from simulator.metrics import event_metrics
    from simulator.run import simulate_schedule

    # Bursty traffic on too few jobs, with a small queue bound: late and dropped events.
    services = [
        ServiceConfig(service_id="steady", job_capacity_eps=50.0),
        ServiceConfig(service_id="bursty", job_capacity_eps=50.0, sla_latency_s=30.0),
        ServiceConfig(service_id="tight", job_capacity_eps=50.0, queue_max_events=20_000.0),
    ]
    params = ClusterParams.from_services(services)
    minutes = np.arange(720)
    rng = np.random.default_rng(1)
    burst = np.where((minutes % 120) < 20, 3.0, 1.0)
    base = np.column_stack([np.full(720, 5000.0), 4000.0 * burst, 5200.0 * burst])
    arrivals = rng.poisson(base).astype(np.float64)
    jobs = np.array([2, 3, 2])
    log = simulate_schedule(params, arrivals, jobs, jobs)
    exact = log.sla_compliance()
    events = event_metrics(log)
    assert exact.min() < 0.95  # the case is not trivial
    for i, config in enumerate(services):
        e = events[events["service_id"] == config.service_id]
        met, total, _ = sla_compliance(
            e["events_in"].to_numpy(float),
            e["events_dropped"].to_numpy(float),
            e["queue_wait_p50_s"].to_numpy(float),
            e["queue_wait_p95_s"].to_numpy(float),
            e["proc_duration_mean_ms"].to_numpy(float),
            config.sla_latency_s,
        )
        assert met / total == pytest.approx(exact[i], abs=0.03), config.service_id
