"""The soak benchmark (bench.soak): its decision counting and its verdict, on hand-made tables.

A one-hour soak on the real components, and the counting on its real decision log, are in
tests/integration/test_soak.py.
"""

from __future__ import annotations

import pandas as pd
import pytest

from bench.soak import (
    Cadence,
    DecisionAudit,
    audit_decisions,
    failures,
    not_applied,
)

T0 = pd.Timestamp("2026-11-27 12:00")
MINUTES = list(pd.date_range(T0, periods=4, freq="min"))
SERVICES = ["a", "b"]
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
