"""The bad-input catalogue (features.contracts.BAD_INPUT_KINDS), one case per kind and surface.

Ingestion cases run the real pipeline (conform -> Great Expectations -> offline store or
quarantine) on a batch holding a good service and a bad one: the bad service's rows are
refused with the catalogued kind and a reason naming the column and rows, the good
service's rows land. Whole-batch kinds are ingested in one run with a good batch, which
lands. Non-blocking kinds are reported as notices and every row lands.

API cases post a request holding a good service and a bad one to the real app: a 4xx JSON
error names the kind and the field, the engine never runs; the good service alone is
then decided, so the refusal came from the bad part.

The last tests check that every catalogued (kind, surface) has a case here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from test_api import JSON, Engine, make_client, post, service

from features.contracts import BAD_INPUT_KINDS
from features.ingest import BatchOutcome, ingest
from features.offline import OfflineStore
from features.quarantine import list_quarantine
from features.sources import Batch, drop_folder_batches, push_batch
from features.validation import MISSING_SERVICE, BatchValidator

T0 = pd.Timestamp("2026-03-02 10:00")
NOW = T0 + pd.Timedelta(minutes=10)
N = 5  # rows per service; the good service's rows come first (0-4), the bad's after (5-9)


@pytest.fixture(scope="session")
def validator() -> BatchValidator:
    # Building the GE context and suites is the slow part: once for the whole session.
    return BatchValidator()


# --- clean rows per table -------------------------------------------------------------------


def _minutes(start: pd.Timestamp = T0, n: int = N) -> list[str]:
    return [f"{t:%Y-%m-%d %H:%M}" for t in pd.date_range(start, periods=n, freq="min")]


def events(service_id: str, start: pd.Timestamp = T0, n: int = N) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "service_id": service_id,
            "ts": _minutes(start, n),
            "events_in": 100.0,
            "events_processed": 100.0,
            "queue_length": 0.0,
            "queue_wait_p50_s": 0.5,
            "queue_wait_p95_s": 1.0,
            "proc_duration_mean_ms": 4.0,
            "proc_duration_p95_ms": 9.0,
            "events_dropped": 0.0,
            "events_high_priority": 10.0,
            "events_normal_priority": 90.0,
            "error_rate": 0.0,
        }
    )


def system(service_id: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "service_id": service_id,
            "ts": _minutes(),
            "jobs_running": 3,
            "jobs_starting": 0,
            "utilization": 0.6,
            "cpu_pct": 50.0,
            "mem_pct": 40.0,
            "net_mbps": 5.0,
            "throughput_eps": 20.0,
            "job_failures": 0,
        }
    )


def decisions(service_id: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "service_id": service_id,
            "ts": _minutes(),
            "jobs_before": 3,
            "action": 1,
            "jobs_after": 4,
            "controller": "predictive",
            "forecast_q10": 80.0,
            "forecast_q50": 100.0,
            "forecast_q90": 130.0,
        }
    )


def calendar(service_id: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "service_id": service_id,
            "ts": _minutes(),
            "is_holiday": "false",
            "business_event": "",
            "expected_traffic_multiplier": 1.0,
        }
    )


def profiles(*service_ids: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "service_id": list(service_ids),
            "ts": f"{T0 - pd.Timedelta(days=1):%Y-%m-%d %H:%M}",
            "criticality": 2,
            "sla_latency_s": 60.0,
            "sla_target": 0.99,
            "cost_per_job_hour": 0.2,
            "daily_budget": 50.0,
            "min_jobs": 1,
            "max_jobs": 10,
            "max_step": 2,
            "job_capacity_eps": 25.0,
            "job_startup_s": 90.0,
        }
    )


MAKERS: dict[str, Callable[[str], pd.DataFrame]] = {
    "event_metrics": events,
    "system_metrics": system,
    "scaling_decisions": decisions,
    "business_calendar": calendar,
    "service_profiles": profiles,
}


def setting(column: str, value: object, row: int = 2) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """A corruption: ``column`` of the bad service's ``row`` set to ``value``."""

    def corrupt(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.astype(object)
        frame.loc[row, column] = value
        return frame

    return corrupt


def duplicating(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([frame, frame.iloc[[1]]], ignore_index=True)


def without_id(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(service_id=None)


# --- ingestion: blocking row kinds ------------------------------------------------------------


@dataclass(frozen=True)
class RowCase:
    """A batch of a good and a bad service; the bad one's rows are refused with ``kind``.

    Attributes:
        kind: The catalogued kind the bad service's rows are refused with (the only one).
        table: The batch's table.
        corrupt: Turns the bad service's clean rows into bad ones.
        reason: Text the rejection reason contains (column, what, rows).
        profiled: Services with a stored profile before the batch.
        stored_before: Rows of the table stored before the batch, per service.
        group: The rejected group (the bad service, or rows without a service).
    """

    kind: str
    table: str
    corrupt: Callable[[pd.DataFrame], pd.DataFrame]
    reason: str
    profiled: tuple[str, ...] = ("good", "bad")
    stored_before: dict[str, pd.DataFrame] = field(default_factory=dict)
    group: str = "bad"


def _changed_history(frame: pd.DataFrame) -> pd.DataFrame:
    """The stored minutes re-sent with 10:01 changed (consistently: the row is valid alone)."""
    frame = frame.copy()
    frame.loc[1, ["events_in", "events_normal_priority"]] = [101.0, 91.0]
    return frame


ROW_CASES: dict[str, RowCase] = {
    "wrong_type": RowCase(
        "wrong_type",
        "event_metrics",
        setting("events_in", "12x"),
        "events_in: 1 value(s) that cannot be read as a number (row 7)",
    ),
    "wrong_type/calendar": RowCase(
        "wrong_type",
        "business_calendar",
        setting("is_holiday", "maybe"),
        "is_holiday: 1 value(s) that cannot be read as a boolean (true/false) (row 7)",
    ),
    "wrong_type/bool": RowCase(
        "wrong_type",
        "event_metrics",
        setting("queue_length", True),
        "queue_length: 1 value(s) that cannot be read as a number (row 7)",
    ),
    "non_finite": RowCase(
        "non_finite",
        "event_metrics",
        setting("queue_wait_p50_s", "NaN"),
        "queue_wait_p50_s: 1 NaN or infinite value(s); leave the cell empty",
    ),
    "non_finite/infinity": RowCase(
        "non_finite",
        "system_metrics",
        setting("cpu_pct", math.inf),
        "cpu_pct: 1 NaN or infinite value(s)",
    ),
    "non_integer": RowCase(
        "non_integer",
        "system_metrics",
        setting("jobs_running", "2.5"),
        "jobs_running: 1 fractional value(s) where a whole number belongs (row 7)",
    ),
    "bad_timestamp": RowCase(
        "bad_timestamp",
        "event_metrics",
        setting("ts", "not a time"),
        "ts: 1 value(s) that cannot be read as a timestamp",
    ),
    "bad_timestamp/epoch_number": RowCase(
        "bad_timestamp",
        "service_profiles",
        setting("ts", 1772445600, row=0),
        "bare numbers are refused, their unit is ambiguous) (row 1)",
    ),
    "null_value": RowCase(
        "null_value",
        "event_metrics",
        setting("events_in", None),
        "events_in: 1 null value(s) (row 7)",
    ),
    "null_value/profile": RowCase(
        "null_value",
        "service_profiles",
        setting("max_step", None, row=0),
        "max_step: 1 null value(s) (row 1)",
    ),
    "bad_service_id": RowCase(
        "bad_service_id",
        "event_metrics",
        without_id,
        "service_id: 5 null value(s) (rows 5, 6, 7, 8, 9)",
        group=MISSING_SERVICE,
    ),
    "negative_count": RowCase(
        "negative_count",
        "event_metrics",
        setting("events_dropped", -1.0),
        "events_dropped: 1 value(s) below 0 (row 7)",
    ),
    "negative_count/decisions": RowCase(
        "negative_count",
        "scaling_decisions",
        setting("forecast_q10", -5.0),
        "forecast_q10: 1 value(s) below 0 (row 7)",
    ),
    "out_of_range": RowCase(
        "out_of_range",
        "event_metrics",
        setting("error_rate", 1.7),
        "error_rate: 1 value(s) above 1 (row 7)",
    ),
    "out_of_range/utilization": RowCase(
        "out_of_range",
        "system_metrics",
        setting("utilization", 2.0),
        "utilization: 1 value(s) above 1.5 (row 7)",
    ),
    "out_of_range/tier": RowCase(
        "out_of_range",
        "service_profiles",
        setting("criticality", 4, row=0),
        "criticality: 1 value(s) above 3 (row 1)",
    ),
    "out_of_range/max_step": RowCase(
        "out_of_range",
        "service_profiles",
        setting("max_step", 0, row=0),
        "max_step: 1 value(s) below 1 (row 1)",
    ),
    "duplicate_key": RowCase(
        "duplicate_key",
        "event_metrics",
        duplicating,
        "(service_id, ts): 2 row(s) share their (service_id, ts) with another row (rows 6, 10)",
    ),
    "off_minute": RowCase(
        "off_minute",
        "event_metrics",
        setting("ts", f"{T0:%Y-%m-%d} 10:04:30", row=4),
        "ts: 1 timestamp(s) not on the whole minute (row 9)",
    ),
    "future_timestamp": RowCase(
        "future_timestamp",
        "system_metrics",
        setting("ts", f"{NOW + pd.Timedelta(days=1):%Y-%m-%d %H:%M}", row=4),
        "ts: 1 timestamp(s) in the future, after now = 2026-03-02 10:10:00 (row 9)",
    ),
    "out_of_order": RowCase(
        "out_of_order",
        "event_metrics",
        _changed_history,
        "ts: 1 row(s) older than the service's newest stored minute that differ from the "
        "stored row; stored history is not rewritten (newest stored minute 2026-03-02 10:04) "
        "(row 6)",
        stored_before={"bad": events("bad")},
    ),
    "unknown_service": RowCase(
        "unknown_service",
        "system_metrics",
        lambda frame: frame,
        "service_id: 5 row(s) of a service with no stored service profile; ingest its "
        "service_profiles row first (rows 5, 6, 7, 8, 9)",
        profiled=("good",),
    ),
    "inverted_pair": RowCase(
        "inverted_pair",
        "event_metrics",
        setting("queue_wait_p95_s", 0.1),
        "queue_wait_p95_s: 1 value(s) below queue_wait_p50_s (row 7)",
    ),
    "inverted_pair/profile": RowCase(
        "inverted_pair",
        "service_profiles",
        setting("min_jobs", 12, row=0),
        "max_jobs: 1 value(s) below min_jobs (row 1)",
    ),
    "inverted_pair/quantiles": RowCase(
        "inverted_pair",
        "scaling_decisions",
        setting("forecast_q90", 90.0),
        "forecast_q90: 1 value(s) below forecast_q50 (row 7)",
    ),
    "flow_imbalance": RowCase(
        "flow_imbalance",
        "event_metrics",
        setting("events_processed", 500.0),
        "events_processed: 1 value(s) above events_in + the previous minute's queue_length",
    ),
    "flow_imbalance/priorities": RowCase(
        "flow_imbalance",
        "event_metrics",
        setting("events_high_priority", 50.0),
        "events_high_priority + events_normal_priority != events_in (row 7)",
    ),
    "flow_imbalance/decisions": RowCase(
        "flow_imbalance",
        "scaling_decisions",
        setting("jobs_after", 9),
        "jobs_after: 1 row(s) where jobs_after != jobs_before + action (row 7)",
    ),
}


def _ingest(
    batches: list[Batch], store: OfflineStore, validator: BatchValidator, root: Path
) -> list[BatchOutcome]:
    report = ingest(batches, store=store, validator=validator, quarantine_root=root, now=NOW)
    return report.outcomes


def _seed_profiles(store: OfflineStore, validator: BatchValidator, root: Path, *ids: str) -> None:
    if ids:
        (outcome,) = _ingest(
            [push_batch("service_profiles", profiles(*ids))], store, validator, root
        )
        assert outcome.stored.new == len(ids) and not outcome.rejected


@pytest.mark.parametrize("case_id", list(ROW_CASES))
def test_bad_rows_are_refused_with_their_kind_and_good_rows_land(
    case_id: str, validator: BatchValidator, tmp_path: Path
) -> None:
    case = ROW_CASES[case_id]
    store, root = OfflineStore(tmp_path / "offline"), tmp_path / "quarantine"
    if case.table != "service_profiles":
        _seed_profiles(store, validator, root, *case.profiled)
    for stored in case.stored_before.values():
        (before,) = _ingest([push_batch(case.table, stored)], store, validator, root)
        assert not before.rejected, before.rejected
    make = MAKERS[case.table]
    good, bad = make("good"), case.corrupt(make("bad"))
    (outcome,) = _ingest(
        [push_batch(case.table, pd.concat([good, bad], ignore_index=True))], store, validator, root
    )

    # Refused: only the bad group, with this kind alone and a reason that says where.
    assert outcome.rejected_kinds == {case.group: [case.kind]}, outcome.rejected
    assert any(case.reason in r for r in outcome.rejected[case.group]), outcome.rejected
    assert outcome.rows_quarantined == len(bad)
    (record,) = list_quarantine(root)
    assert (record["service"], record["kinds"], record["n_rows"]) == (
        case.group,
        [case.kind],
        len(bad),
    )
    # The good service's rows of the same batch landed, in full.
    assert len(store.read(case.table, ["good"])) == len(good)
    # Nothing of the bad rows landed; what was stored before is untouched.
    kept = store.read(case.table, ["bad"])
    before = case.stored_before.get("bad")
    if before is None:
        assert kept.empty
    else:
        assert kept["events_in"].tolist() == before["events_in"].tolist()


# --- ingestion: whole-batch kinds -----------------------------------------------------------


def _unreadable_file(folder: Path) -> list[Batch]:
    (folder / "event_metrics-broken.parquet").write_bytes(b"PAR1 this is not parquet")
    events("good").to_csv(folder / "event_metrics-good.csv", index=False)
    return list(drop_folder_batches(folder))


def _unknown_table_file(folder: Path) -> list[Batch]:
    events("bad").to_csv(folder / "metrics-2026-03-02.csv", index=False)
    events("good").to_csv(folder / "event_metrics-good.csv", index=False)
    return list(drop_folder_batches(folder))


def _unknown_table_push(folder: Path) -> list[Batch]:
    return [push_batch("events", events("bad")), push_batch("event_metrics", events("good"))]


def _missing_required(folder: Path) -> list[Batch]:
    return [
        push_batch("event_metrics", events("bad").drop(columns="events_in")),
        push_batch("event_metrics", events("good")),
    ]


# case id -> (kind, the run's batches: the bad one first, reason text)
WHOLE_CASES: dict[str, tuple[str, Callable[[Path], list[Batch]], str]] = {
    "unreadable_file": (
        "unreadable_file",
        _unreadable_file,
        "cannot read event_metrics-broken.parquet",
    ),
    "unknown_table": ("unknown_table", _unknown_table_file, "cannot tell the table of metrics-"),
    "unknown_table/push": ("unknown_table", _unknown_table_push, "unknown table 'events'"),
    "missing_required": (
        "missing_required",
        _missing_required,
        "event_metrics: missing required column(s) events_in",
    ),
}


@pytest.mark.parametrize("case_id", list(WHOLE_CASES))
def test_unusable_batches_are_refused_whole_and_the_run_goes_on(
    case_id: str, validator: BatchValidator, tmp_path: Path
) -> None:
    kind, make, reason = WHOLE_CASES[case_id]
    store, root = OfflineStore(tmp_path / "offline"), tmp_path / "quarantine"
    _seed_profiles(store, validator, root, "good", "bad")
    folder = tmp_path / "drop"
    folder.mkdir()
    batches = make(folder)
    outcomes = _ingest(batches, store, validator, root)
    refused = [o for o in outcomes if o.rejected]
    assert len(refused) == 1
    assert refused[0].rejected_kinds == {"_batch": [kind]}
    assert reason in refused[0].rejected["_batch"][0]
    assert refused[0].rows_quarantined > 0
    (record,) = list_quarantine(root)
    assert (record["service"], record["kinds"]) == (None, [kind])
    # The good batch of the same run landed.
    assert len(store.read("event_metrics", ["good"])) == N
    assert store.read("event_metrics", ["bad"]).empty


# --- ingestion: non-blocking kinds ------------------------------------------------------------


def _drop_row(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(index=2).reset_index(drop=True)


@dataclass(frozen=True)
class NoticeCase:
    """A batch that lands in full, with a notice of ``kind`` whose message has ``text``."""

    kind: str
    corrupt: Callable[[pd.DataFrame], pd.DataFrame]
    text: str
    now: pd.Timestamp = NOW


NOTICE_CASES: dict[str, NoticeCase] = {
    "gap": NoticeCase(
        "gap", _drop_row, "bad: 1 gap(s), 1 minute missing, first at 2026-03-02 10:02"
    ),
    "stale": NoticeCase(
        "stale",
        lambda frame: frame,
        "bad: newest row 2026-03-02 10:04 is 2 h old (freshness limit 15 min)",
        now=T0 + pd.Timedelta(hours=2, minutes=4),
    ),
    "unknown_column": NoticeCase(
        "unknown_column",
        lambda frame: frame.assign(cpu_temperature=70.0),
        "columns not in the contract were not stored: cpu_temperature",
    ),
    "missing_optional_column": NoticeCase(
        "missing_optional_column",
        lambda frame: frame.drop(columns="proc_duration_p95_ms"),
        "column proc_duration_p95_ms missing from the source: null (unknown)",
    ),
    "empty_batch": NoticeCase("empty_batch", lambda frame: frame.iloc[:0], "empty batch"),
}


@pytest.mark.parametrize("case_id", list(NOTICE_CASES))
def test_non_blocking_findings_are_reported_and_every_row_lands(
    case_id: str, validator: BatchValidator, tmp_path: Path
) -> None:
    case = NOTICE_CASES[case_id]
    store, root = OfflineStore(tmp_path / "offline"), tmp_path / "quarantine"
    _seed_profiles(store, validator, root, "good", "bad")
    bad = case.corrupt(events("bad"))
    batches = [push_batch("event_metrics", events("good")), push_batch("event_metrics", bad)]
    report = ingest(batches, store=store, validator=validator, quarantine_root=root, now=case.now)
    outcome = report.outcomes[1]
    found = [n for n in outcome.notices if n.kind == case.kind]
    assert len(found) == 1, outcome.notices
    assert case.text in found[0].message
    assert not outcome.rejected and list_quarantine(root) == []
    assert len(store.read("event_metrics", ["good"])) == N
    assert len(store.read("event_metrics", ["bad"])) == len(bad)


# --- out_of_order: what is and is not rewriting history ---------------------------------------


def test_replays_late_minutes_and_simulations_are_not_out_of_order(
    validator: BatchValidator, tmp_path: Path
) -> None:
    store, root = OfflineStore(tmp_path / "offline"), tmp_path / "quarantine"
    _seed_profiles(store, validator, root, "s")
    history = events("s", n=10).drop(index=[3, 4]).reset_index(drop=True)  # 10:03-10:04 missing
    assert not _ingest([push_batch("event_metrics", history)], store, validator, root)[0].rejected

    late = events("s", start=T0 + pd.Timedelta(minutes=3), n=2)  # the missing minutes, late
    replay = events("s", n=3)  # identical to what is stored
    newest = events("s", start=T0 + pd.Timedelta(minutes=9), n=1).assign(events_dropped=1.0)
    for frame in (late, replay, newest):  # newest: a correction of the newest minute
        (outcome,) = _ingest([push_batch("event_metrics", frame)], store, validator, root)
        assert not outcome.rejected, outcome.rejected
    assert len(store.read("event_metrics", ["s"])) == 10

    # A batch that may replace history (a regenerated simulation, a deliberate correction).
    changed = _changed_history(events("s"))
    (refused,) = _ingest([push_batch("event_metrics", changed)], store, validator, root)
    assert refused.rejected_kinds == {"s": ["out_of_order"]}
    correction = push_batch("event_metrics", changed, replaces_history=True)
    (outcome,) = _ingest([correction], store, validator, root)
    assert not outcome.rejected and outcome.stored.replaced == 1


def test_a_corrected_export_is_refused_then_lands_when_marked_as_corrections(
    validator: BatchValidator, tmp_path: Path
) -> None:
    store, root = OfflineStore(tmp_path / "offline"), tmp_path / "quarantine"
    _seed_profiles(store, validator, root, "s")
    (stored,) = _ingest([push_batch("event_metrics", events("s"))], store, validator, root)
    assert not stored.rejected
    drop = tmp_path / "drop"
    drop.mkdir()
    _changed_history(events("s")).to_csv(drop / "event_metrics-fixed.csv", index=False)

    (refused,) = _ingest(list(drop_folder_batches(drop)), store, validator, root)
    assert refused.rejected_kinds == {"s": ["out_of_order"]}
    # The same file as corrections (`autoscaler ingest --corrections`, the flow's
    # `corrections`): a new submission, not the refused batch again, and it lands.
    (corrected,) = drop_folder_batches(drop, replaces_history=True)
    assert corrected.replaces_history and corrected.batch_id != refused.batch_id
    (outcome,) = _ingest([corrected], store, validator, root)
    assert not outcome.rejected and outcome.stored.replaced == 1


def test_metrics_refused_for_want_of_a_profile_land_once_the_profile_does(
    validator: BatchValidator, tmp_path: Path
) -> None:
    store, root = OfflineStore(tmp_path / "offline"), tmp_path / "quarantine"
    _seed_profiles(store, validator, root, "s")
    batch = push_batch("event_metrics", pd.concat([events("s"), events("new")]))
    (first,) = _ingest([batch], store, validator, root)
    assert first.rejected_kinds == {"new": ["unknown_service"]} and first.stored.new == N
    # Not "already ingested": validated again, still refused, its quarantine entry rewritten.
    (again,) = _ingest([batch], store, validator, root)
    assert not again.skipped and again.rejected_kinds == {"new": ["unknown_service"]}
    assert again.stored.new == 0 and len(list_quarantine(root)) == 1
    _seed_profiles(store, validator, root, "new")
    (landed,) = _ingest([batch], store, validator, root)
    assert not landed.rejected and landed.stored.new == N
    assert len(store.read("event_metrics", ["new"])) == N
    # Nothing refused any more: the next run skips it as usual.
    (after,) = _ingest([batch], store, validator, root)
    assert after.skipped == "already ingested"


# --- the HTTP API -------------------------------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(entry: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = entry
        for part in parents:
            node = node[part]
        node[last] = value

    return mutate


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(entry: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = entry
        for part in parents:
            node = node[part]
        del node[last]

    return mutate


@dataclass(frozen=True)
class ApiCase:
    """A request with a good service and a bad one, refused with ``status`` and ``kind``.

    Attributes:
        mutate: Turns the bad service's entry (``services[1]``) bad; None leaves it be.
        status: Expected HTTP status.
        detail: Text the error's detail contains (the field path first, for a 422).
        send: Sends the request itself (headers, raw body) instead of posting the JSON.
        limits: ``create_app`` limits of the client.
    """

    kind: str
    mutate: Callable[[dict[str, Any]], None] | None
    status: int
    detail: str
    send: Callable[[Any, dict[str, Any]], Any] | None = None
    limits: dict[str, int] = field(default_factory=dict)


def _send_raw(content: bytes, headers: dict[str, str]) -> Callable[[Any, dict[str, Any]], Any]:
    def send(client: Any, body: dict[str, Any]) -> Any:
        return client.post("/v1/decisions", content=content, headers=headers)

    return send


def _send_as(headers: dict[str, str]) -> Callable[[Any, dict[str, Any]], Any]:
    def send(client: Any, body: dict[str, Any]) -> Any:
        return client.post("/v1/decisions", content=json.dumps(body).encode(), headers=headers)

    return send


def _chunked(client: Any, body: dict[str, Any]) -> Any:
    data = json.dumps(body).encode()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(data), 500):
            yield data[i : i + 500]

    return client.post("/v1/decisions", content=chunks(), headers=JSON)


API_CASES: dict[str, ApiCase] = {
    "malformed_json": ApiCase(
        "malformed_json",
        None,
        400,
        "request body is not valid JSON",
        send=_send_raw(b'{"services": [', JSON),
    ),
    "unsupported_media_type": ApiCase(
        "unsupported_media_type",
        None,
        415,
        "Content-Type must be application/json, got 'text/plain'",
        send=_send_as({"content-type": "text/plain"}),
    ),
    "unsupported_media_type/gzip": ApiCase(
        "unsupported_media_type",
        None,
        415,
        "Content-Encoding 'gzip' is not supported",
        send=_send_as({"content-type": "application/json", "content-encoding": "gzip"}),
    ),
    "oversize_payload": ApiCase(
        "oversize_payload",
        None,
        413,
        "exceeds the limit of 3000 bytes; split the batch",
        limits={"max_body_bytes": 3000},
    ),
    "oversize_payload/chunked": ApiCase(
        "oversize_payload",
        None,
        413,
        "request body of more than 3000 bytes exceeds the limit",
        send=_chunked,
        limits={"max_body_bytes": 3000},
    ),
    "too_many_services": ApiCase(
        "too_many_services",
        None,
        422,
        "services: at most 1 services per request, got 2; split the batch",
        limits={"max_services": 1},
    ),
    "missing_required": ApiCase(
        "missing_required",
        _drop("profile.max_step"),
        422,
        "services[1].profile.max_step: field required",
    ),
    "unknown_field": ApiCase(
        "unknown_field", _set("state.cpu", 0.5), 422, "services[1].state.cpu: unknown field"
    ),
    "wrong_type": ApiCase(
        "wrong_type",
        _set("profile.daily_budget", "12"),
        422,
        "services[1].profile.daily_budget: must be a number (strings and booleans",
    ),
    "wrong_type/bool": ApiCase(
        "wrong_type",
        _set("state.jobs_running", True),
        422,
        "services[1].state.jobs_running: must be an integer",
    ),
    "non_finite": ApiCase(
        "non_finite",
        _set("state.utilization", math.nan),
        422,
        "services[1].state.utilization: must be a finite number",
    ),
    "non_finite/list": ApiCase(
        "non_finite",
        _set("recent_events_120m.5", math.inf),
        422,
        "services[1].recent_events_120m[5]: must be a finite number",
    ),
    "non_integer": ApiCase(
        "non_integer",
        _set("profile.max_jobs", 2.5),
        422,
        "services[1].profile.max_jobs: must be an integer",
    ),
    "bad_timestamp": ApiCase("bad_timestamp", _set("ts", "yesterday"), 422, "services[1].ts:"),
    "bad_timestamp/number": ApiCase("bad_timestamp", _set("ts", 1772445540), 422, "services[1].ts"),
    "bad_service_id": ApiCase(
        "bad_service_id", _set("service_id", "-svc"), 422, "services[1].service_id:"
    ),
    "bad_service_id/empty": ApiCase(
        "bad_service_id", _set("service_id", ""), 422, "services[1].service_id:"
    ),
    "negative_count": ApiCase(
        "negative_count", _set("state.events_in", -1), 422, "services[1].state.events_in:"
    ),
    "negative_count/list": ApiCase(
        "negative_count", _set("hourly_events_7d.0", -3), 422, "services[1].hourly_events_7d[0]:"
    ),
    "out_of_range": ApiCase(
        "out_of_range", _set("state.utilization", 1.6), 422, "services[1].state.utilization:"
    ),
    "out_of_range/tier": ApiCase(
        "out_of_range", _set("profile.criticality", 4), 422, "services[1].profile.criticality:"
    ),
    "wrong_length": ApiCase(
        "wrong_length",
        _set("recent_events_120m", [1.0] * 119),
        422,
        "services[1].recent_events_120m:",
    ),
    "duplicate_key": ApiCase(
        "duplicate_key",
        _set("service_id", "good"),
        422,
        "services: duplicate service_id 'good' (services[0] and services[1])",
    ),
    "future_timestamp": ApiCase(
        "future_timestamp",
        _set("ts", "2026-03-02T12:06:00Z"),
        422,
        "services[1].ts: ts 2026-03-02T12:06:00Z is more than 5 minutes after the server clock",
    ),
    "inverted_pair": ApiCase(
        "inverted_pair",
        _set("profile.min_jobs", 11),
        422,
        "services[1].profile: min_jobs (11) must be <= max_jobs (10)",
    ),
}


@pytest.mark.parametrize("case_id", list(API_CASES))
def test_bad_requests_are_refused_with_their_kind(case_id: str) -> None:
    case = API_CASES[case_id]
    engine = Engine()
    client = make_client(engine, **case.limits)
    bad = service("bad")
    if case.mutate is not None:
        case.mutate(bad)
    body = {"services": [service("good"), bad]}
    response = case.send(client, body) if case.send is not None else post(client, body)

    assert response.status_code == case.status, response.text
    error = response.json()
    assert error["kind"] == case.kind, error
    assert case.detail in error["detail"], error["detail"]
    if case.status == 422:
        assert error["error"] == "validation_error"
        assert error["errors"][0]["kind"] == case.kind
        assert error["detail"].startswith(error["errors"][0]["loc"])
    assert engine.frames == []  # refused before the engine ran
    # The good service alone is decided: the refusal came from the bad part.
    alone = post(client, {"services": [service("good")]})
    assert alone.status_code == 200, alone.text
    assert [d["service_id"] for d in alone.json()["decisions"]] == ["good"]


# --- the catalogue ------------------------------------------------------------------------------


def _kind_of(case_id: str) -> str:
    return case_id.split("/")[0]


def test_case_ids_name_their_kind() -> None:
    for cases in (ROW_CASES, WHOLE_CASES, NOTICE_CASES, API_CASES):
        for case_id, case in cases.items():
            kind = case[0] if isinstance(case, tuple) else case.kind
            assert _kind_of(case_id) == kind, case_id


def test_every_catalogued_kind_has_a_case_on_each_of_its_surfaces() -> None:
    catalogued = {(k.name, s) for k in BAD_INPUT_KINDS for s in k.surfaces}
    ingest_cases = {_kind_of(c) for c in (*ROW_CASES, *WHOLE_CASES, *NOTICE_CASES)}
    covered = {(k, "ingest") for k in ingest_cases} | {(_kind_of(c), "api") for c in API_CASES}
    assert covered == catalogued


def test_notice_cases_are_exactly_the_non_blocking_kinds() -> None:
    non_blocking = {k.name for k in BAD_INPUT_KINDS if not k.blocking}
    assert {_kind_of(c) for c in NOTICE_CASES} == non_blocking


def test_catalogue_covers_the_issue() -> None:
    names = [k.name for k in BAD_INPUT_KINDS]
    assert len(names) == len(set(names)) >= 20
    # Issue 7's categories, each by at least one kind.
    assert {
        "wrong_type",
        "non_finite",
        "negative_count",
        "duplicate_key",
        "out_of_order",
        "future_timestamp",
        "gap",
        "unknown_service",
        "oversize_payload",
        "missing_required",
        "unknown_field",
        "unknown_column",
    } <= set(names)
    assert all(k.description and k.surfaces for k in BAD_INPUT_KINDS)
