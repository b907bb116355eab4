"""A one-hour soak (bench.soak) on the real components: the inference loop's own cycle,
the simulated cluster, ingestion with Great Expectations, the Feast online store, the
decision log. Its record, its exit code, and the decision counting on its real log with a
row removed or repeated (the counting itself is unit-tested in tests/unit/test_bench_soak.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bench.soak import Cadence, audit_decisions, failures, main, soak

pytestmark = [pytest.mark.integration, pytest.mark.slow]

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


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One simulated hour of the loop on two services (rule: no models to register)."""
    from autoscaler.runtime import prefect_environment
    from autoscaler.settings import build_settings

    state = tmp_path_factory.mktemp("soak") / "state"
    with pytest.MonkeyPatch.context() as mp:
        # The stores the environment names (embedded, or Redis on scaled-out engines), as
        # `python -m bench.soak` would use; Prefect's variables (the soak exports them)
        # restored afterwards.
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
