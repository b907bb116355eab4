"""The demo's live report (bench.live): baselines replayed on the live traffic, the
summary's numbers against the truth log, and the HTML/PNG/JSON report.

One simulated cluster is bootstrapped per module (one day of history) and run for two
hours twice: by a reactive rule applied minute by minute (the "engine"), and, from a
copy of the same bootstrap, pinned at max_jobs.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.live import (
    ALL_SERVICES,
    BASELINES,
    LIVE,
    SUMMARY_COLUMNS,
    format_live_table,
    initial_jobs_at,
    live_summary,
    replay_baselines,
    write_live_report,
)
from serving.actuators.simulated import LOCK_FILE, SimulatedCluster
from simulator.metrics import SimLog

END = pd.Timestamp("2026-11-27 12:00")
SEED = 3
MINUTES = 120
MIN = pd.Timedelta(minutes=1)
SKIP = 10
"""The report window starts this many minutes into the live run (a decision before it)."""


@dataclass
class Run:
    cluster: SimulatedCluster
    truth: pd.DataFrame
    decisions: pd.DataFrame
    start: pd.Timestamp
    end: pd.Timestamp


def _rule_target(cluster: SimulatedCluster) -> dict[str, int]:
    # A reactive rule on the last minute's arrivals at 70 % utilization.
    clock = cluster.clock
    last = cluster.arrivals_between(clock - MIN, clock).set_index("service_id")["events_in"]
    return {
        c.service_id: int(
            min(max(math.ceil(last[c.service_id] / (c.job_step_capacity * 0.7)), 1), c.max_jobs)
        )
        for c in cluster.configs
    }


def _decisions(truth: pd.DataFrame, before: dict[pd.Timestamp, dict[str, int]]) -> pd.DataFrame:
    """Plausible decisions: noisy forecasts of the truth, gaps, versions, shield reasons."""
    rng = np.random.default_rng(0)
    rows = []
    for k, r in enumerate(truth.itertuples(index=False)):
        y = float(r.arrivals)
        med = y * (1 + rng.normal(0, 0.05))
        missing = k % 17 == 0  # the forecaster was unavailable: fallback, no forecast
        rows.append(
            {
                "service_id": r.service_id,
                "ts": r.ts,
                "jobs_before": before[r.ts][r.service_id],
                "jobs_after": int(r.jobs_target),
                "action": int(r.jobs_target) - before[r.ts][r.service_id],
                "controller": "predictive-rule",
                "forecaster_version": None if missing else "3",
                "controller_version": None,
                "forecast_q10": np.nan if missing else 0.85 * med,
                "forecast_q50": np.nan if missing else med,
                "forecast_q90": np.nan if missing else 1.15 * med,
                "shield_reason": "fallback:no_forecast"
                if missing
                else ("floor" if k % 11 == 0 else ""),
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    base = tmp_path_factory.mktemp("live")
    cluster, _ = SimulatedCluster.bootstrap(
        base / "rule", END, history_days=1, future_days=1, seed=SEED
    )
    shutil.copytree(base / "rule", base / "max", ignore=shutil.ignore_patterns(LOCK_FILE))

    before: dict[pd.Timestamp, dict[str, int]] = {}
    for _ in range(MINUTES):
        clock = cluster.clock
        before[clock] = {k: int(v or 0) for k, v in cluster.current(cluster.services).items()}
        cluster.apply(_rule_target(cluster))
        cluster.advance(clock + MIN)
    truth = cluster.truth()
    start, end = END + SKIP * MIN, cluster.clock

    pinned = SimulatedCluster.load(base / "max")
    pinned.apply({c.service_id: c.max_jobs for c in pinned.configs})
    pinned.advance(END + MINUTES * MIN)
    return {
        "rule": Run(cluster, truth, _decisions(truth, before), start, end),
        "max": Run(pinned, pinned.truth(), truth.iloc[:0], start, end),
    }


@pytest.fixture(scope="module")
def replays(runs: dict[str, Run]) -> dict[str, SimLog]:
    run = runs["rule"]
    return replay_baselines(run.cluster, run.start, run.end, truth=run.truth)


def _window(run: Run) -> pd.DataFrame:
    t = run.truth
    return t[(t["ts"] >= run.start) & (t["ts"] < run.end)]


def test_replays_see_the_live_arrivals_and_jobs(
    runs: dict[str, Run], replays: dict[str, SimLog]
) -> None:
    run = runs["rule"]
    window = _window(run)
    going_in = run.truth[run.truth["ts"] == run.start - MIN].set_index("service_id")
    assert list(replays) == list(BASELINES)
    for log in replays.values():
        assert log.start == run.start and log.n_steps == MINUTES - SKIP
        for i, sid in enumerate(run.cluster.services):
            rows = window[window["service_id"] == sid].sort_values("ts")
            np.testing.assert_array_equal(log.arrivals[:, i], rows["arrivals"].to_numpy())
            np.testing.assert_array_equal(log.timestamps, rows["ts"].to_numpy())
        np.testing.assert_array_equal(log.params.max_jobs, run.cluster.params.max_jobs)
    # The warm-up starts from the jobs the live run had going into the window.
    jobs = initial_jobs_at(run.truth, run.cluster.services, run.start)
    expected = [going_in.at[sid, "jobs_target_bounded"] for sid in run.cluster.services]
    np.testing.assert_array_equal(jobs, expected)


def test_replay_from_the_first_live_minute_uses_serving_plus_starting(
    runs: dict[str, Run],
) -> None:
    run = runs["rule"]
    first = run.truth[run.truth["ts"] == END].set_index("service_id")
    jobs = initial_jobs_at(run.truth, run.cluster.services, END)
    expected = [
        first.at[s, "jobs_serving"] + first.at[s, "jobs_starting"] for s in run.cluster.services
    ]
    np.testing.assert_array_equal(jobs, expected)
    # The first live minute still gets a warm-up: the history's traffic comes before it.
    again = replay_baselines(run.cluster, END, END + 30 * MIN, ("keda",), truth=run.truth)
    assert again["keda"].start == END and again["keda"].n_steps == 30
    # Having seen the load, KEDA does not open the window at min_jobs as if idle.
    assert (again["keda"].target[0] > run.cluster.params.min_jobs).all()


def test_replay_is_deterministic(runs: dict[str, Run], replays: dict[str, SimLog]) -> None:
    run = runs["rule"]
    again = replay_baselines(run.cluster, run.start, run.end, ("keda",), truth=run.truth)
    np.testing.assert_array_equal(again["keda"].target, replays["keda"].target)
    np.testing.assert_array_equal(again["keda"].cost, replays["keda"].cost)


@pytest.mark.parametrize(
    ("start", "end", "controllers", "match"),
    [
        (END + SKIP * MIN, END + (MINUTES + 5) * MIN, BASELINES, "not inside the live run"),
        (END - 5 * MIN, END + 5 * MIN, BASELINES, "not inside the live run"),
        (END + 5 * MIN, END + 5 * MIN, BASELINES, "empty window"),
        (END, END + 5 * MIN, ("hpa", "ppo"), "unknown baseline"),
    ],
)
def test_replay_rejects_bad_windows(
    runs: dict[str, Run],
    start: pd.Timestamp,
    end: pd.Timestamp,
    controllers: tuple[str, ...],
    match: str,
) -> None:
    run = runs["rule"]
    with pytest.raises(ValueError, match=match):
        replay_baselines(run.cluster, start, end, controllers, truth=run.truth)


def test_live_summary_matches_the_truth_by_hand(
    runs: dict[str, Run], replays: dict[str, SimLog]
) -> None:
    run = runs["rule"]
    window = _window(run)
    summary = live_summary(run.truth, replays, run.cluster.profiles)
    assert list(summary.columns) == [*SUMMARY_COLUMNS, "cost_vs_hpa", "cost_vs_keda"]
    services = list(run.cluster.services)
    assert len(summary) == (len(services) + 1) * 3
    rows = summary.set_index(["service_id", "controller"])
    targets = run.cluster.profiles.set_index("service_id")["sla_target"]
    for sid in services:
        t = window[window["service_id"] == sid].sort_values("ts")
        live = rows.loc[(sid, LIVE)]
        assert live["cost"] == pytest.approx(t["cost"].sum(), rel=1e-12)
        missed = t["late"].sum() + t["dropped"].sum()
        assert live["sla_compliance_pct"] == pytest.approx(100 * (1 - missed / t["arrivals"].sum()))
        assert live["job_minutes"] == (t["jobs_serving"] + t["jobs_starting"]).sum()
        assert live["meets_sla"] == (live["sla_compliance_pct"] >= 100 * targets[sid])
        # Actions: minutes whose bounded target moved from the minute before (the
        # minute before the window included).
        full = run.truth[run.truth["service_id"] == sid].sort_values("ts")
        moved = full["jobs_target_bounded"].diff().fillna(0).ne(0)
        assert live["actions"] == int(moved[full["ts"] >= run.start].sum())
        assert math.isnan(live["p95_latency_s"])
        # The baselines: the simulator's own figures, ratios against themselves.
        for name, log in replays.items():
            i = services.index(sid)
            row = rows.loc[(sid, name)]
            assert row["cost"] == pytest.approx(log.total_cost()[i])
            assert row["sla_compliance_pct"] == pytest.approx(100 * log.sla_compliance()[i])
            assert row["actions"] == log.actions()[i]
            assert row[f"cost_vs_{name}"] == pytest.approx(1.0)
            assert live[f"cost_vs_{name}"] == pytest.approx(live["cost"] / row["cost"])
            assert row["p95_latency_s"] > 0
    overall = rows.loc[(ALL_SERVICES, LIVE)]
    assert overall["cost"] == pytest.approx(window["cost"].sum())
    missed = window["late"].sum() + window["dropped"].sum()
    assert overall["sla_compliance_pct"] == pytest.approx(
        100 * (1 - missed / window["arrivals"].sum())
    )
    assert overall["meets_sla"] == all(rows.loc[(s, LIVE), "meets_sla"] for s in services)
    assert rows.loc[(ALL_SERVICES, "hpa"), "cost_vs_keda"] == pytest.approx(
        rows.loc[(ALL_SERVICES, "hpa"), "cost"] / rows.loc[(ALL_SERVICES, "keda"), "cost"]
    )


def test_pinning_max_jobs_costs_more_than_hpa(runs: dict[str, Run]) -> None:
    run = runs["max"]
    replays = replay_baselines(run.cluster, run.start, run.end, ("hpa",), truth=run.truth)
    summary = live_summary(run.truth, replays, run.cluster.profiles)
    live = summary[summary["controller"] == LIVE].set_index("service_id")
    assert (live["cost_vs_hpa"] > 1.5).all()
    assert live["meets_sla"].all()  # paying for every job buys the SLA
    # Same traffic, so the rule's run and the pinned run see the same arrivals.
    rule = live_summary(runs["rule"].truth, replays, run.cluster.profiles)
    np.testing.assert_array_equal(rule["arrivals"], summary["arrivals"])


def test_live_summary_rejects_a_truth_log_with_gaps(
    runs: dict[str, Run], replays: dict[str, SimLog]
) -> None:
    run = runs["rule"]
    holed = run.truth[run.truth["ts"] != run.start + 7 * MIN]
    with pytest.raises(ValueError, match="does not cover every minute"):
        live_summary(holed, replays, run.cluster.profiles)


def test_format_live_table(runs: dict[str, Run], replays: dict[str, SimLog]) -> None:
    run = runs["rule"]
    summary = live_summary(run.truth, replays, run.cluster.profiles)
    text = format_live_table(summary)
    lines = text.splitlines()
    assert len(lines) == len(summary) + 2
    assert "cost/hpa" in lines[0] and "cost/keda" in lines[0]
    for sid in [*run.cluster.services, ALL_SERVICES]:
        assert any(line.startswith(sid) for line in lines[2:])
    hpa_all = next(
        line for line in lines if line.startswith(f"{ALL_SERVICES} ") and " hpa " in line
    )
    assert "1.000" in hpa_all


def test_report_writes_html_pngs_and_json(
    runs: dict[str, Run], replays: dict[str, SimLog], tmp_path: Path
) -> None:
    run = runs["rule"]
    index = write_live_report(
        run.truth, run.decisions, replays, run.cluster.profiles, tmp_path / "report", title="Demo"
    )
    assert index == tmp_path / "report" / "index.html"
    page = index.read_text()
    sources = re.findall(r"<img src='([^']+)'", page)
    assert len(sources) == 2 * len(run.cluster.services)
    for src in sources:
        png = index.parent / src
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<table>" in page and "Demo" in page

    decisions = run.decisions[(run.decisions["ts"] >= run.start) & (run.decisions["ts"] < run.end)]
    data = json.loads((index.parent / "summary.json").read_text())
    assert data["minutes"] == MINUTES - SKIP and data["baselines"] == list(BASELINES)
    assert data["decisions"] == len(decisions)
    assert sum(d["decisions"] for d in data["decided_by"]) == len(decisions)
    versions = {d["forecaster_version"]: d["decisions"] for d in data["decided_by"]}
    assert versions["none"] == int(decisions["forecaster_version"].isna().sum())
    reasons = decisions["shield_reason"][decisions["shield_reason"] != ""].value_counts()
    assert data["shield"]["by_reason"] == {k: int(v) for k, v in reasons.items()}
    assert f"changed {reasons.sum()} of {len(decisions)} decisions" in page
    assert len(data["summary"]) == (len(run.cluster.services) + 1) * 3
    assert data["summary"][0]["p95_latency_s"] is None  # live: not logged, NaN -> null
    # Minutes without a forecast are gaps, not scored as zeros.
    for score in data["forecast"]:
        d = decisions[decisions["service_id"] == score["service_id"]]
        assert score["forecast_minutes"] == int(d["forecast_q50"].notna().sum())
        assert 50 <= score["coverage_80_pct"] <= 100


def test_report_without_decisions(runs: dict[str, Run], tmp_path: Path) -> None:
    run = runs["max"]
    index = write_live_report(run.truth, run.decisions, {}, run.cluster.profiles, tmp_path)
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["minutes"] == MINUTES and data["decided_by"] == []
    assert "no decisions recorded" in index.read_text()
    assert {r["controller"] for r in data["summary"]} == {LIVE}
