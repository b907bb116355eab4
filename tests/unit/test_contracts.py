"""Data contracts: conforming keeps information, fills by documented rules, flags bad text."""

from __future__ import annotations

import pandas as pd
import pytest

from features.contracts import CONTRACTS, KEYS, TABLES, ContractError, conform, contract, empty


def test_every_table_has_the_keys_first_and_a_documented_fill_rule() -> None:
    assert set(TABLES) == set(CONTRACTS)
    for table in TABLES:
        spec = contract(table)
        assert spec.names[:2] == list(KEYS)
        for col in spec.columns:
            assert col.description
            # "Never silently with zeros": every optional column names its rule.
            if not col.required:
                assert col.fill
                assert not col.fill.startswith("0 "), col.name


def test_design_columns_are_all_present() -> None:
    # DESIGN.md section 4, column by column.
    assert contract("event_metrics").names == [
        "service_id",
        "ts",
        "events_in",
        "events_processed",
        "queue_length",
        "queue_wait_p50_s",
        "queue_wait_p95_s",
        "proc_duration_mean_ms",
        "proc_duration_p95_ms",
        "events_dropped",
        "events_high_priority",
        "events_normal_priority",
        "error_rate",
    ]
    assert contract("system_metrics").names[2:] == [
        "jobs_running",
        "jobs_starting",
        "utilization",
        "cpu_pct",
        "mem_pct",
        "net_mbps",
        "throughput_eps",
        "job_failures",
    ]
    assert {"is_holiday", "business_event", "expected_traffic_multiplier"} <= set(
        contract("business_calendar").names
    )
    assert {
        "criticality",
        "sla_latency_s",
        "sla_target",
        "cost_per_job_hour",
        "daily_budget",
        "min_jobs",
        "max_jobs",
        "max_step",
        "job_capacity_eps",
        "job_startup_s",
    } <= set(contract("service_profiles").names)
    assert {
        "jobs_before",
        "action",
        "jobs_after",
        "controller",
        "forecaster_version",
        "controller_version",
        "forecast_q10",
        "forecast_q50",
        "forecast_q90",
        "shield_reason",
    } <= set(contract("scaling_decisions").names)


def test_conform_parses_text_and_flags_what_it_cannot_read() -> None:
    raw = pd.DataFrame(
        {
            "ts": ["2026-01-05 00:00", "2026-01-05T00:01:00+01:00", "yesterday"],
            "service_id": ["a", 42, "a"],
            "events_in": ["10", "12x", "3.5"],
            "events_dropped": ["0", "", "1"],
            "extra": [1, 2, 3],
        }
    )
    out = conform(raw, "event_metrics")
    frame = out.frame
    assert frame.columns.tolist() == contract("event_metrics").names
    assert frame["service_id"].tolist() == ["a", "42", "a"]
    # Aware input is converted to UTC and made naive.
    assert frame["ts"].iloc[1] == pd.Timestamp("2026-01-04 23:01")
    assert out.unparseable == {"ts": [2], "events_in": [1]}
    assert out.dropped_columns == ["extra"]
    # Derived where exact, null (never 0) where unknown.
    assert frame["error_rate"].iloc[0] == 0.0
    assert pd.isna(frame["error_rate"].iloc[1])
    assert frame["events_processed"].isna().all()
    assert "events_processed" in out.filled and "unknown" in out.filled["events_processed"]


def test_missing_required_column_is_a_clear_error() -> None:
    with pytest.raises(ContractError, match=r"missing required column.*events_in"):
        conform(pd.DataFrame({"service_id": ["a"], "ts": ["2026-01-05"]}), "event_metrics")
    with pytest.raises(ContractError, match="unknown table"):
        contract("metrics")


def test_fractional_job_counts_and_odd_booleans_are_unparseable() -> None:
    out = conform(
        pd.DataFrame(
            {
                "service_id": ["a", "a"],
                "ts": ["2026-01-05", "2026-01-05 00:01"],
                "jobs_running": ["2.5", "3"],
            }
        ),
        "system_metrics",
    )
    assert out.unparseable == {"jobs_running": [0]}
    assert out.frame["jobs_running"].iloc[1] == 3
    cal = conform(
        pd.DataFrame(
            {"service_id": ["*"] * 3, "ts": ["2026-01-05"] * 3, "is_holiday": ["yes", "0", "maybe"]}
        ),
        "business_calendar",
    )
    assert cal.frame["is_holiday"].iloc[:2].tolist() == [True, False]
    assert cal.unparseable == {"is_holiday": [2]}
    assert cal.frame["expected_traffic_multiplier"].eq(1.0).all()


def test_empty_frames_carry_the_contract_dtypes() -> None:
    for table in TABLES:
        frame = empty(table)
        assert frame.empty
        assert {k: str(v) for k, v in frame.dtypes.items()} == contract(table).dtypes()
