"""The soak benchmark (bench.soak): its decision counting, its verdict, and a one-hour soak.

The counting is checked on hand-made tables and on the real decision log of the tiny soak
with a row removed or repeated, so a counting that misses either fails here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bench.soak import (
    Cadence,
    DecisionAudit,
    audit_decisions,
    failures,
    main,
    not_applied,
    soak,
)

T0 = pd.Timestamp("2026-11-27 12:00")
MINUTES = list(pd.date_range(T0, periods=4, freq="min"))
SERVICES = ["a", "b"]
KEYS = (
    "hours",
    "services",
    "cycles",
    "decisions_expected",
    "decisions_lost",
    "decisions_duplicated",
    "rss_start_mib",
    "rss_end_mib",
    "rss_growth_mib",
    "rss_bound_mib",
    "memory_bound_held",
    "sla_pct",
    "cost",
    "wall_s",
)


def full_log() -> pd.DataFrame:
    """One decision per service and minute, as a clean log holds."""
    return pd.DataFrame(
        [{"service_id": s, "ts": t, "jobs_after": 2} for t in MINUTES for s in SERVICES]
    )


# --------------------------------------------------------------------------- counting


def test_a_complete_log_has_nothing_lost_duplicated_or_unexpected() -> None:
    audit = audit_decisions(full_log(), SERVICES, MINUTES)
    assert audit == DecisionAudit(expected=8, rows=8, lost=0, duplicated=0, unexpected=0)
    assert audit.ok


def test_a_missing_row_is_lost() -> None:
    log = full_log()
    audit = audit_decisions(log.drop(index=3), SERVICES, MINUTES)
    assert (audit.lost, audit.duplicated, audit.unexpected) == (1, 0, 0)
    assert not audit.ok


def test_a_repeated_row_is_a_duplicated_key() -> None:
    log = full_log()
    twice = pd.concat([log, log.iloc[[5]], log.iloc[[5]], log.iloc[[0]]], ignore_index=True)
    audit = audit_decisions(twice, SERVICES, MINUTES)
    # Two keys appear more than once (one of them three times): two duplicated keys.
    assert (audit.lost, audit.duplicated, audit.unexpected, audit.rows) == (0, 2, 0, 11)


def test_rows_for_a_service_or_minute_no_cycle_decided_are_unexpected() -> None:
    extra = pd.DataFrame(
        [
            {"service_id": "c", "ts": MINUTES[0], "jobs_after": 1},
            {"service_id": "a", "ts": MINUTES[-1] + pd.Timedelta(minutes=1), "jobs_after": 1},
        ]
    )
    audit = audit_decisions(pd.concat([full_log(), extra]), SERVICES, MINUTES)
    assert (audit.lost, audit.duplicated, audit.unexpected) == (0, 0, 2)


def test_a_target_the_cluster_did_not_run_is_counted() -> None:
    log = full_log()
    truth = log.rename(columns={"jobs_after": "jobs_target"})
    truth.loc[2, "jobs_target"] = 3
    # The last minute has no truth yet (the cluster has not run it): not checked.
    truth = truth[truth["ts"] < MINUTES[-1]]
    assert not_applied(log, truth) == (6, 1)


def test_the_verdict_names_every_failed_check() -> None:
    ok = {
        "decisions_lost": 0,
        "decisions_duplicated": 0,
        "decisions_unexpected": 0,
        "decisions_not_applied": 0,
        "memory_bound_held": True,
        "rss_growth_mib": 3.0,
        "rss_bound_mib": 64.0,
    }
    assert failures(ok) == []
    bad = ok | {"decisions_lost": 2, "decisions_duplicated": 1, "memory_bound_held": False}
    why = failures(bad)
    assert len(why) == 3
    assert "2 decision(s) lost" in why[0] and "1 decision(s) duplicated" in why[1]
    assert "bound 64.0 MiB" in why[2]


def test_the_cadence_refuses_a_loop_without_ingestion() -> None:
    with pytest.raises(ValueError, match="ingest_every >= 1"):
        Cadence(ingest_every=0)
    assert Cadence.due(15, 30) and not Cadence.due(15, 31) and not Cadence.due(0, 60)


# --------------------------------------------------------------------------- a tiny soak


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One simulated hour of the loop on two services (rule: no models to register)."""
    from autoscaler.runtime import prefect_environment
    from autoscaler.settings import build_settings

    state = tmp_path_factory.mktemp("soak") / "state"
    with pytest.MonkeyPatch.context() as mp:
        # A unit test: embedded stores whatever the environment says, and Prefect's
        # variables (the soak exports them) restored afterwards.
        for name in ("ONLINE_STORE", "REDIS_URL", "MLFLOW_TRACKING_URI"):
            mp.delenv(f"AUTOSCALER_{name}", raising=False)
        for key, value in prefect_environment(build_settings(state_dir=state)).items():
            mp.setenv(key, value)
        record = soak(
            state,
            hours=1,
            services=2,
            history_days=2,
            cadence=Cadence(ingest_every=20, features_every=60, monitor_every=30),
            models="rule",
            log=lambda line: None,
        )
    return {"record": record, "state": state}


@pytest.mark.slow
def test_a_one_hour_soak_decides_every_minute_once(tiny: dict[str, Any]) -> None:
    record = tiny["record"]
    assert set(KEYS) <= set(record)
    assert (record["hours"], record["services"], record["cycles"]) == (1, 2, 60)
    assert record["decisions_expected"] == 120 == record["decisions_logged"]
    assert record["decisions_lost"] == record["decisions_duplicated"] == 0
    assert record["decisions_unexpected"] == 0
    # Every decision but the last cycle's was run by the cluster with the logged target.
    assert (record["decisions_applied_checked"], record["decisions_not_applied"]) == (118, 0)
    assert record["decisions_skipped_by_cycles"] == 0 and record["actuation_errors"] == 0
    assert record["controller_used"] == {"predictive-rule": 120}
    # One hour measures memory from the end of the set-up: only the decisions must pass.
    assert [why for why in failures(record) if "RSS" not in why] == []
    # Memory: a sample after set-up and one per hour; growth is end minus start.
    assert len(record["rss_hourly_mib"]) == 2
    assert record["rss_growth_mib"] == pytest.approx(
        record["rss_end_mib"] - record["rss_start_mib"], abs=0.11
    )
    assert record["memory_bound_held"] == (record["rss_growth_mib"] <= record["rss_bound_mib"])
    assert 0 <= record["sla_pct"] <= 100 and record["cost"] > 0
    assert set(record["controllers"]) == {"live", "hpa", "keda"}
    assert record["feedback_checks"] == 2
    assert record["wall_s"] > record["loop_s"] > 0


@pytest.mark.slow
def test_the_real_log_with_a_row_lost_or_repeated_is_caught(tiny: dict[str, Any]) -> None:
    from autoscaler.settings import build_settings
    from features.offline import OfflineStore

    record = tiny["record"]
    first, last = (pd.Timestamp(t) for t in record["window"])
    offline = OfflineStore(build_settings(state_dir=tiny["state"]).offline_dir)
    rows = offline.read("scaling_decisions", start=first + pd.Timedelta(minutes=1), end=last)
    services = sorted(rows["service_id"].unique())
    minutes = list(pd.date_range(first + pd.Timedelta(minutes=1), last, freq="min"))
    assert len(minutes) == record["cycles"]
    assert audit_decisions(rows, services, minutes).ok
    assert audit_decisions(rows.drop(index=rows.index[7]), services, minutes).lost == 1
    again = pd.concat([rows, rows.iloc[[7]]], ignore_index=True)
    assert audit_decisions(again, services, minutes).duplicated == 1


@pytest.mark.slow
def test_the_exit_code_gates_on_the_checks(
    tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bench.soak

    record = tiny["record"] | {"memory_bound_held": True}
    monkeypatch.setattr(bench.soak, "soak", lambda state, **kw: record)
    out = tmp_path / "soak.json"
    assert main(["--hours", "1", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["decisions_lost"] == 0
    monkeypatch.setattr(bench.soak, "soak", lambda state, **kw: record | {"decisions_lost": 1})
    assert main(["--hours", "1", "--json", str(out)]) == 1
    assert json.loads(out.read_text())["decisions_lost"] == 1
