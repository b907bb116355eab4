"""Behaviour of the GE validation of ingested batches and of the quarantine.

Real Great Expectations (no mocks): one validator per module, since building its context
and suites is the slow part. Frames are built raw and go through ``conform`` as in the
ingest pipeline, so parse failures are the real ones.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.contracts import TABLES, Conformed, ContractError, conform, contract
from features.quarantine import list_quarantine, safe_name, write_quarantine
from features.validation import MISSING_SERVICE, BatchValidation, BatchValidator, Failure

START = pd.Timestamp("2026-01-05 10:00")
MINUTES = 5
NOW = START + pd.Timedelta(minutes=MINUTES)  # one minute after the last row


@pytest.fixture(scope="module")
def validator() -> BatchValidator:
    return BatchValidator(freshness=pd.Timedelta(minutes=15))


def events(services: tuple[str, ...] = ("a", "b"), minutes: int = MINUTES) -> pd.DataFrame:
    """A clean raw event_metrics batch: rows ordered by service then minute."""
    ts = pd.date_range(START, periods=minutes, freq="min")
    n = len(services) * minutes
    frame = pd.DataFrame(
        {
            "service_id": np.repeat(list(services), minutes),
            "ts": np.tile(ts, len(services)),
            "events_in": 100.0,
            "events_processed": 90.0,
            "queue_length": 10.0,
            "queue_wait_p50_s": 0.5,
            "queue_wait_p95_s": 2.0,
            "proc_duration_mean_ms": 4.0,
            "proc_duration_p95_ms": 9.0,
            "events_dropped": 0.0,
            "events_high_priority": 30.0,
            "events_normal_priority": 70.0,
            "error_rate": 0.0,
        },
        index=range(n),
    )
    return frame


def check(
    validator: BatchValidator,
    raw: pd.DataFrame,
    table: str = "event_metrics",
    now: pd.Timestamp = NOW,
    previous: pd.DataFrame | None = None,
) -> BatchValidation:
    return validator.validate(conform(raw, table), table, now=now, previous=previous)


def only_failure(result: BatchValidation, service: str) -> Failure:
    failures = result.services[service].failures
    assert len(failures) == 1, [f.reason for f in failures]
    return failures[0]


def row(service_index: int, minute: int) -> int:
    """Positional index of (service, minute) in :func:`events`' layout."""
    return service_index * MINUTES + minute


# --- suites and the clean path ---------------------------------------------------------------


def test_import_does_not_load_great_expectations() -> None:
    code = (
        "import sys, features.validation, features.quarantine; "
        "print('great_expectations' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("table", TABLES)
def test_every_table_has_a_suite_built_from_its_contract(
    validator: BatchValidator, table: str
) -> None:
    suite = validator.suite(table)
    assert suite.name == table
    types = {e.expectation_type for e in suite.expectations}
    assert "expect_column_values_to_not_be_null" in types
    assert "expect_compound_columns_to_be_unique" in types
    not_null = {
        e.column for e in suite.expectations if e.expectation_type.endswith("to_not_be_null")
    }
    assert {"service_id", "ts"} <= not_null


def test_unknown_table_has_no_suite(validator: BatchValidator) -> None:
    with pytest.raises(ContractError):
        validator.suite("nope")


def test_clean_batch_passes(validator: BatchValidator) -> None:
    result = check(validator, events())
    assert result.accepted_services == ["a", "b"]
    assert result.rejected_services == []
    assert result.table_failures == ()
    assert result.warnings == ()
    assert result.n_rows == 2 * MINUTES
    assert result.services["b"].n_rows == MINUTES
    np.testing.assert_array_equal(result.rows_of("b"), np.arange(MINUTES, 2 * MINUTES))
    assert result.ge_result["success"] is True
    json.dumps(result.ge_result, allow_nan=False)  # strict JSON


def test_empty_batch_is_not_an_error(validator: BatchValidator) -> None:
    result = check(validator, events().iloc[:0])
    assert result.n_rows == 0
    assert result.services == {}
    assert result.table_failures == ()
    assert result.accepted_services == []


def test_frame_outside_the_contract_is_refused(validator: BatchValidator) -> None:
    conformed = conform(events(), "event_metrics")
    with pytest.raises(ContractError, match="conform"):
        validator.validate(conformed, "system_metrics", now=NOW)


@pytest.mark.parametrize(
    "table", ["system_metrics", "business_calendar", "service_profiles", "scaling_decisions"]
)
def test_clean_rows_of_other_tables_pass(validator: BatchValidator, table: str) -> None:
    result = check(validator, clean_rows(table), table)
    assert result.rejected_services == [], [
        f.reason for v in result.services.values() for f in v.failures
    ]
    assert result.accepted_services == ["a"]


def clean_rows(table: str) -> pd.DataFrame:
    ts = pd.date_range(START, periods=MINUTES, freq="min")
    base = pd.DataFrame({"service_id": "a", "ts": ts})
    if table == "system_metrics":
        return base.assign(
            jobs_running=3,
            jobs_starting=1,
            utilization=0.7,
            cpu_pct=60.0,
            mem_pct=40.0,
            net_mbps=5.0,
            throughput_eps=20.0,
            job_failures=0,
        )
    if table == "business_calendar":
        return base.assign(is_holiday=False, business_event="", expected_traffic_multiplier=1.0)
    if table == "service_profiles":
        return base.iloc[:1].assign(
            criticality=1,
            sla_latency_s=30.0,
            sla_target=0.99,
            cost_per_job_hour=0.5,
            daily_budget=100.0,
            min_jobs=1,
            max_jobs=10,
            max_step=2,
            job_capacity_eps=50.0,
            job_startup_s=60.0,
        )
    assert table == "scaling_decisions"
    return base.assign(
        jobs_before=3,
        action=1,
        jobs_after=4,
        controller="predictive",
        forecast_q10=80.0,
        forecast_q50=100.0,
        forecast_q90=130.0,
    )


def test_unattributable_ge_failure_rejects_the_whole_batch(validator: BatchValidator) -> None:
    from features.validation import _failures

    conformed = conform(events(), "event_metrics")
    ge_result = {
        "results": [
            {
                "success": False,
                "expectation_config": {
                    "type": "expect_column_values_to_be_between",
                    "kwargs": {"column": "events_in"},
                    "meta": {"kind": "negative_count", "column": "events_in", "what": "x"},
                },
                "result": {},
                "exception_info": {"raised_exception": True, "exception_message": "boom"},
            }
        ]
    }
    rows, table = _failures(ge_result, conformed, contract("event_metrics"))
    assert rows == []
    assert [(f.kind, f.column, f.rows) for f in table] == [("negative_count", "events_in", ())]
    assert "could not be evaluated: boom" in table[0].reason

    clean = check(validator, events())
    whole = BatchValidation(
        table=clean.table,
        n_rows=clean.n_rows,
        table_failures=tuple(table),
        services=clean.services,
        notices=(),
        ge_result={},
    )
    assert whole.accepted_services == []
    assert whole.rejected_services == ["a", "b"]


# --- blocking rules: only the affected service is rejected -----------------------------------


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("events_in", -5.0, "events_in: 1 value(s) below 0 (row 7)"),
        ("error_rate", 1.5, "error_rate: 1 value(s) above 1 (row 7)"),
        ("queue_wait_p50_s", -1.0, "queue_wait_p50_s: 1 value(s) below 0 (row 7)"),
    ],
)
def test_out_of_range_value_rejects_only_its_service(
    validator: BatchValidator, column: str, value: float, expected: str
) -> None:
    raw = events()
    raw.loc[row(1, 2), column] = value
    result = check(validator, raw)
    assert result.accepted_services == ["a"]
    assert result.rejected_services == ["b"]
    # A negative arrival count also breaks the flow balances; the range failure is one of them.
    (failure,) = [f for f in result.services["b"].failures if f.column == column]
    assert failure.reason == expected
    assert failure.rows == (7,)
    assert failure.expectation == "expect_column_values_to_be_between"


def test_range_reason_lists_rows_in_batch_positions(validator: BatchValidator) -> None:
    raw = events(services=("a", "b"), minutes=MINUTES)
    raw.loc[[row(0, 1), row(0, 3)], "events_dropped"] = -1.0
    result = check(validator, raw)
    failure = only_failure(result, "a")
    assert failure.reason == "events_dropped: 2 value(s) below 0 (rows 1, 3)"
    assert failure.rows == (1, 3)
    assert result.services["b"].passed


def test_system_metrics_utilization_range(validator: BatchValidator) -> None:
    raw = clean_rows("system_metrics")
    raw.loc[2, "utilization"] = 1.6
    result = check(validator, raw, "system_metrics")
    assert only_failure(result, "a").reason == "utilization: 1 value(s) above 1.5 (row 2)"


def test_null_in_non_nullable_column(validator: BatchValidator) -> None:
    raw = events()
    raw.loc[row(0, 4), "events_in"] = np.nan
    result = check(validator, raw)
    failure = only_failure(result, "a")
    assert failure.expectation == "expect_column_values_to_not_be_null"
    assert failure.reason == "events_in: 1 null value(s) (row 4)"
    assert result.accepted_services == ["b"]


def test_null_service_id_is_its_own_rejected_group(validator: BatchValidator) -> None:
    raw = events()
    raw.loc[row(1, 0), "service_id"] = None
    result = check(validator, raw)
    assert result.rejected_services == [MISSING_SERVICE]
    assert sorted(result.accepted_services) == ["a", "b"]
    failure = only_failure(result, MISSING_SERVICE)
    assert failure.column == "service_id"
    assert failure.reason == "service_id: 1 null value(s) (row 5)"
    np.testing.assert_array_equal(result.rows_of(MISSING_SERVICE), [5])


def test_empty_service_id_is_rejected(validator: BatchValidator) -> None:
    # conform turns blank cells into nulls; the suite still guards frames built otherwise.
    frame = conform(events(), "event_metrics").frame
    frame.loc[row(1, 0), "service_id"] = ""
    result = validator.validate(Conformed(frame, {}, {}, []), "event_metrics", now=NOW)
    assert result.rejected_services == [""]
    assert only_failure(result, "").reason == "service_id: 1 empty id(s) (row 5)"


def test_null_ts_is_rejected(validator: BatchValidator) -> None:
    raw = events()
    raw["ts"] = raw["ts"].astype(object)
    raw.loc[row(1, 1), "ts"] = None
    result = check(validator, raw)
    assert result.rejected_services == ["b"]
    failure = result.services["b"].failures[0]
    assert failure.reason == "ts: 1 null value(s) (row 6)"


def test_unparseable_value_is_a_parse_failure(validator: BatchValidator) -> None:
    raw = events().astype({"events_in": object, "ts": object})
    raw.loc[row(1, 3), "events_in"] = "12 events"
    raw.loc[row(0, 0), "ts"] = "yesterday-ish"
    result = check(validator, raw)
    assert result.accepted_services == []
    parse_b = [f for f in result.services["b"].failures if f.expectation == "parse"]
    assert parse_b == [
        Failure(
            "wrong_type",
            "parse",
            "events_in",
            "events_in: 1 value(s) that cannot be read as a number (row 8)",
            (8,),
        )
    ]
    parse_a = [f for f in result.services["a"].failures if f.expectation == "parse"]
    assert [(f.kind, f.column) for f in parse_a] == [("bad_timestamp", "ts")]
    # The null left by the parse is not reported twice as a "null value".
    assert all(f.expectation == "parse" for f in result.services["b"].failures)
    assert all(f.expectation == "parse" for f in result.services["a"].failures)
    assert result.ge_result["parse_failures"] == {"ts": [0], "events_in": [8]}


@pytest.mark.parametrize("value", [np.inf, -np.inf, "inf", "-Infinity", "NaN"])
def test_nan_or_infinite_value_is_rejected(validator: BatchValidator, value: object) -> None:
    raw = events().astype({"events_in": object})
    raw.loc[row(0, 2), "events_in"] = value
    result = check(validator, raw)
    assert result.accepted_services == ["b"]
    failure = only_failure(result, "a")
    assert (failure.kind, failure.column, failure.rows) == ("non_finite", "events_in", (2,))
    assert failure.reason == (
        "events_in: 1 NaN or infinite value(s); leave the cell empty when the value is "
        "unknown (row 2)"
    )


def test_duplicate_keys_reject_their_service(validator: BatchValidator) -> None:
    raw = events()
    raw = pd.concat([raw, raw.iloc[[row(1, 2)]]], ignore_index=True)
    result = check(validator, raw)
    assert result.accepted_services == ["a"]
    failure = only_failure(result, "b")
    assert failure.expectation == "expect_compound_columns_to_be_unique"
    assert failure.column is None
    assert failure.rows == (7, 10)
    assert "(service_id, ts)" in failure.reason and "rows 7, 10" in failure.reason


def test_future_ts_is_rejected_current_minute_is_fine(validator: BatchValidator) -> None:
    raw = events()
    now = START + pd.Timedelta(minutes=MINUTES - 1, seconds=30)  # inside the last minute
    assert check(validator, raw, now=now).rejected_services == []
    raw.loc[row(0, 4), "ts"] = START + pd.Timedelta(minutes=15)
    result = check(validator, raw, now=now)
    failure = only_failure(result, "a")
    assert failure.column == "ts"
    assert failure.reason == (
        "ts: 1 timestamp(s) in the future, after now = 2026-01-05 10:04:30 (row 4)"
    )
    assert failure.rows == (4,)
    assert result.accepted_services == ["b"]


def test_calendar_may_describe_the_future(validator: BatchValidator) -> None:
    raw = clean_rows("business_calendar")
    result = check(validator, raw, "business_calendar", now=START - pd.Timedelta(days=1))
    assert result.accepted_services == ["a"]
    assert result.warnings == ()


def test_off_minute_ts_is_rejected(validator: BatchValidator) -> None:
    raw = events()
    raw.loc[row(1, 4), "ts"] = raw.loc[row(1, 4), "ts"] + pd.Timedelta(seconds=20)
    result = check(validator, raw)
    failure = only_failure(result, "b")
    assert failure.reason == "ts: 1 timestamp(s) not on the whole minute (row 9)"
    assert result.accepted_services == ["a"]


def test_off_minute_ts_is_fine_for_profiles(validator: BatchValidator) -> None:
    raw = clean_rows("service_profiles")
    raw.loc[0, "ts"] = START + pd.Timedelta(seconds=17)
    assert check(validator, raw, "service_profiles").accepted_services == ["a"]


# --- cross-column rules ----------------------------------------------------------------------


def test_processed_above_arrivals_plus_previous_queue(validator: BatchValidator) -> None:
    raw = events()
    # Minute 2 may process 100 arrivals + 10 queued = 110; within the tolerance is fine.
    raw.loc[row(0, 2), "events_processed"] = 110.0 + 1e-5
    raw.loc[row(1, 2), "events_processed"] = 111.0
    result = check(validator, raw)
    assert result.accepted_services == ["a"]
    failure = only_failure(result, "b")
    assert failure.column == "events_processed"
    assert failure.reason == (
        "events_processed: 1 value(s) above events_in + the previous minute's queue_length (row 7)"
    )


def test_first_row_uses_the_previous_batch_queue(validator: BatchValidator) -> None:
    raw = events()
    raw.loc[[row(0, 0), row(1, 0)], "events_processed"] = 150.0
    # Without history the first row's previous queue is unknown: the rule is skipped.
    assert check(validator, raw).rejected_services == []
    previous = pd.DataFrame(
        {
            "service_id": ["a", "b"],
            "ts": [START - pd.Timedelta(minutes=1)] * 2,
            "queue_length": [60.0, 20.0],
        }
    )
    result = check(validator, raw, previous=previous)
    # a: 150 <= 100 + 60; b: 150 > 100 + 20.
    assert result.accepted_services == ["a"]
    assert only_failure(result, "b").rows == (row(1, 0),)


def test_previous_queue_is_skipped_across_a_gap(validator: BatchValidator) -> None:
    raw = events(services=("a",))
    raw.loc[0, "events_processed"] = 150.0
    previous = pd.DataFrame(
        {"service_id": ["a"], "ts": [START - pd.Timedelta(minutes=3)], "queue_length": [0.0]}
    )
    result = check(validator, raw, previous=previous)
    # The queue at 09:59 is unknown (09:58 and 09:59 are missing), so no balance failure.
    assert result.accepted_services == ["a"]
    assert result.warnings == ("a: 1 gap(s), 2 minutes missing, first at 2026-01-05 09:58",)


def test_priorities_must_add_up_to_arrivals(validator: BatchValidator) -> None:
    raw = events()
    raw.loc[row(1, 3), "events_high_priority"] = 40.0
    raw.loc[row(0, 3), "events_high_priority"] = 30.0 + 1e-7  # fluid rounding is fine
    raw.loc[row(0, 1), ["events_high_priority", "events_normal_priority"]] = np.nan  # unknown
    result = check(validator, raw)
    assert result.accepted_services == ["a"]
    failure = only_failure(result, "b")
    assert failure.rows == (8,)
    assert "events_high_priority + events_normal_priority != events_in" in failure.reason


def test_p95_wait_below_p50_is_rejected(validator: BatchValidator) -> None:
    raw = events()
    raw.loc[row(0, 0), "queue_wait_p95_s"] = 0.1
    result = check(validator, raw)
    failure = only_failure(result, "a")
    assert failure.expectation == "expect_column_pair_values_a_to_be_greater_than_b"
    assert failure.reason == "queue_wait_p95_s: 1 value(s) below queue_wait_p50_s (row 0)"


def test_profile_min_jobs_above_max_jobs(validator: BatchValidator) -> None:
    raw = pd.concat(
        [
            clean_rows("service_profiles"),
            clean_rows("service_profiles").assign(service_id="b", min_jobs=12),
        ],
        ignore_index=True,
    )
    result = check(validator, raw, "service_profiles")
    assert result.accepted_services == ["a"]
    assert only_failure(result, "b").reason == "max_jobs: 1 value(s) below min_jobs (row 1)"


def test_profile_criticality_is_a_tier(validator: BatchValidator) -> None:
    raw = clean_rows("service_profiles").assign(criticality=4)
    result = check(validator, raw, "service_profiles")
    assert only_failure(result, "a").reason == "criticality: 1 value(s) above 3 (row 0)"


def test_decision_jobs_after_must_equal_before_plus_action(validator: BatchValidator) -> None:
    raw = clean_rows("scaling_decisions")
    raw.loc[3, "jobs_after"] = 5
    result = check(validator, raw, "scaling_decisions")
    failure = only_failure(result, "a")
    assert failure.column == "jobs_after"
    assert failure.reason == "jobs_after: 1 row(s) where jobs_after != jobs_before + action (row 3)"


def test_fractional_job_count_is_unparseable(validator: BatchValidator) -> None:
    raw = clean_rows("system_metrics")
    raw["jobs_running"] = raw["jobs_running"].astype(float)
    raw.loc[1, "jobs_running"] = 2.5
    result = check(validator, raw, "system_metrics")
    failure = only_failure(result, "a")
    assert (failure.expectation, failure.column, failure.rows) == ("parse", "jobs_running", (1,))


# --- warnings: reported, never blocking ------------------------------------------------------


def test_gaps_inside_the_batch_warn_but_pass(validator: BatchValidator) -> None:
    raw = events(minutes=30)
    raw = raw.drop(index=[3, 4, 5, 10]).reset_index(drop=True)  # service a only
    result = check(validator, raw, now=START + pd.Timedelta(minutes=30))
    assert result.accepted_services == ["a", "b"]
    assert result.warnings == ("a: 2 gap(s), 4 minutes missing, first at 2026-01-05 10:03",)
    assert result.services["a"].warnings == result.warnings
    assert result.services["b"].warnings == ()


def test_gap_since_the_previous_batch_warns(validator: BatchValidator) -> None:
    previous = pd.DataFrame(
        {
            "service_id": ["a", "b"],
            "ts": [START - pd.Timedelta(minutes=1), START - pd.Timedelta(minutes=18)],
            "queue_length": [10.0, 10.0],
        }
    )
    result = check(validator, events(), previous=previous)
    assert result.accepted_services == ["a", "b"]
    assert result.warnings == ("b: 1 gap(s), 17 minutes missing, first at 2026-01-05 09:43",)


def test_stale_data_warns_but_passes(validator: BatchValidator) -> None:
    now = START + pd.Timedelta(hours=2, minutes=MINUTES - 1)
    result = check(validator, events(services=("checkout",)), now=now)
    assert result.accepted_services == ["checkout"]
    assert result.warnings == (
        "checkout: newest row 2026-01-05 10:04 is 2 h old (freshness limit 15 min)",
    )


def test_freshness_limit_is_a_parameter() -> None:
    with pytest.raises(ValueError, match="freshness"):
        BatchValidator(freshness=pd.Timedelta(0))


def test_validation_is_fast_for_a_day_of_ten_services(validator: BatchValidator) -> None:
    import time

    raw = events(services=tuple(f"s{i}" for i in range(10)), minutes=24 * 60)
    conformed = conform(raw, "event_metrics")
    started = time.perf_counter()
    result = validator.validate(conformed, "event_metrics", now=START + pd.Timedelta(days=1))
    elapsed = time.perf_counter() - started
    assert len(result.accepted_services) == 10
    assert elapsed < 3.0


# --- quarantine ------------------------------------------------------------------------------


def test_quarantine_writes_raw_rows_json_and_html(
    validator: BatchValidator, tmp_path: Path
) -> None:
    raw = events().astype({"events_in": object})
    raw.loc[row(1, 3), "events_in"] = "<script>alert(1)</script>"
    result = check(validator, raw)
    assert result.rejected_services == ["b"]
    service_rows = raw.iloc[result.rows_of("b")]
    folder = write_quarantine(
        tmp_path,
        table="event_metrics",
        batch_id="2026-01-05T10:05/run 1",
        service_id="b",
        raw_rows=service_rows,
        validation=result,
        source="csv drop",
    )
    assert folder.parent.parent.parent == tmp_path
    assert folder.parent.parent.name == "event_metrics"
    assert "/" not in folder.parent.name
    assert folder.name == "b"
    assert sorted(p.name for p in folder.iterdir()) == [
        "report.html",
        "rows.csv",
        "validation.json",
    ]

    back = pd.read_csv(folder / "rows.csv", dtype=str)
    assert len(back) == MINUTES
    assert back.loc[3, "events_in"] == "<script>alert(1)</script>"  # raw text survives

    record = json.loads((folder / "validation.json").read_text())
    assert record["table"] == "event_metrics"
    assert record["service"] == "b"
    assert record["source"] == "csv drop"
    assert record["n_rows"] == MINUTES
    assert record["failures"][0]["expectation"] == "parse"
    assert record["failures"][0]["kind"] == "wrong_type"
    assert record["failures"][0]["rows"] == [8]
    assert "events_in" in record["failures"][0]["reason"]
    assert record["ge_result"]["suite_name"] == "event_metrics"

    page = (folder / "report.html").read_text()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "events_in: 1 value(s) that cannot be read as a number (row 8)" in page


def test_quarantine_is_idempotent_and_listed(validator: BatchValidator, tmp_path: Path) -> None:
    raw = events()
    raw.loc[row(0, 1), "error_rate"] = 2.0
    result = check(validator, raw)

    def write(service_id: str | None) -> Path:
        rows = raw if service_id is None else raw.iloc[result.rows_of(service_id)]
        return write_quarantine(
            tmp_path,
            table="event_metrics",
            batch_id="b1",
            service_id=service_id,
            raw_rows=rows,
            validation=result,
            source="sim",
        )

    first = write("a")
    content = (first / "validation.json").read_bytes()
    second = write("a")
    assert first == second
    assert (second / "validation.json").read_bytes() == content
    assert not list(first.glob(".*.tmp"))  # no temporary files left behind
    whole = write(None)
    assert whole.name == "_batch"

    listed = list_quarantine(tmp_path)
    assert [(q["table"], q["batch_id"], q["service"]) for q in listed] == [
        ("event_metrics", "b1", None),
        ("event_metrics", "b1", "a"),
    ]
    assert listed[1]["n_rows"] == MINUTES
    assert listed[1]["reasons"] == ["error_rate: 1 value(s) above 1 (row 1)"]
    assert list_quarantine(tmp_path / "missing") == []


@pytest.mark.parametrize("name", ["../../etc", "a/b", "..", ".hidden", "_batch", "x\\y", ""])
def test_unsafe_names_become_single_path_components(name: str) -> None:
    safe = safe_name(name)
    assert safe and "/" not in safe and "\\" not in safe
    assert not safe.startswith(".") and ".." not in safe
    assert safe != "_batch"


def test_safe_names_stay_distinct() -> None:
    assert safe_name("checkout") == "checkout"
    assert safe_name("a/b") != safe_name("a_b")
