"""The ingest and features flows end to end, on the real components: Great Expectations,
Feast on SQLite in a temporary folder, Prefect's test server.

Bad-input scenarios through the drop folder and the ingest flow (each is one dropped file
holding a good service and a bad one; the bad service's rows are rejected with the reason
shown and the catalogued kind (features.contracts.BAD_INPUT_KINDS) in brackets, the good
service's rows land; one more file holds the profiles of every service named here):

 1. negative_count        events_in < 0                                  [negative_count]
 2. non_numeric           events_in = "12x"                              [wrong_type]
 3. null_service          rows without service_id                        [bad_service_id]
 4. bad_timestamp         ts = "not a time"                              [bad_timestamp]
 5. duplicate_key         the same (service_id, ts) twice                [duplicate_key]
 6. off_minute            ts = hh:mm:30                                  [off_minute]
 7. future                ts a day after now                             [future_timestamp]
 8. utilization_range     utilization = 2.0 (> 1.5)                      [out_of_range]
 9. negative_latency      queue_wait_p50_s < 0                           [negative_count]
10. processed_too_many    events_processed > events_in + previous queue  [flow_imbalance]
11. priority_mismatch     events_high_priority + events_normal_priority != events_in
                                                                         [flow_imbalance]
12. error_rate_range      error_rate = 1.7                               [out_of_range]
13. fractional_jobs       jobs_running = 2.5                             [non_integer]
14. wait_order            queue_wait_p95_s < queue_wait_p50_s            [inverted_pair]
15. decision_arithmetic   jobs_after != jobs_before + action             [flow_imbalance]
16. profile_limits        min_jobs > max_jobs                            [inverted_pair]
17. unknown_service       metrics of a service without a profile         [unknown_service]
Whole-file rejections (every row quarantined, other files still land):
18. missing_column        no events_in column                            [missing_required]
19. unknown_table         a file whose name names no table               [unknown_table]
20. unreadable_file       a .parquet file that is not Parquet            [unreadable_file]

Every catalogued kind, on every table and the API, has a fast case in
tests/unit/test_bad_input_catalogue.py; these run the same protections end to end.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pipeline_state import PIPELINE_DAYS, PIPELINE_END, PIPELINE_SERVICES

from autoscaler.runtime import feast_config
from autoscaler.settings import Settings, build_settings
from features.offline import OfflineStore

pytestmark = pytest.mark.integration

DAYS = PIPELINE_DAYS
SERVICES = PIPELINE_SERVICES
END = PIPELINE_END


@pytest.fixture(scope="module")
def settings(pipeline_settings: Settings) -> Settings:
    return pipeline_settings


@pytest.fixture(scope="module")
def first_run(pipeline_run: dict[str, Any]) -> dict[str, Any]:
    """The simulated history ingested and featurized through the flows (conftest)."""
    return pipeline_run


@pytest.fixture(scope="module")
def feast_store(settings: Settings, first_run: dict[str, Any]) -> Any:
    from features.store import open_store

    return open_store(feast_config(settings))


def test_clean_history_lands_and_is_online(
    settings: Settings, first_run: dict[str, Any], feast_store: Any
) -> None:
    from features.store import online_features

    rows = len(SERVICES) * DAYS * 1440
    assert first_run["ingest"]["rows_quarantined"] == 0
    offline = OfflineStore(settings.offline_dir)
    events = offline.read("event_metrics")
    assert len(events) == rows
    assert first_run["features"]["rows"]["service_minute"] == rows
    online = online_features(feast_store, SERVICES, "controller_v1").set_index("service_id")
    last = events.sort_values("ts").groupby("service_id").tail(1).set_index("service_id")
    for sid in SERVICES:
        assert online.loc[sid, "events_in"] == pytest.approx(last.loc[sid, "events_in"])
        assert online.loc[sid, "max_jobs"] > 0


def test_rerunning_a_batch_adds_nothing(prefect_harness: None, tmp_path: Path) -> None:
    """A backfill run again is skipped batch by batch (the ledger of batch ids); forced, its
    rows are validated again and none is stored twice (the store is keyed on (service_id,
    ts)). One day of history in a state folder of its own: the claim holds for any length,
    and the shared history (nine days) took 20 s to ingest twice more."""
    from flows.ingest import ingest_flow

    settings = build_settings(state_dir=tmp_path / "state")
    state = str(settings.state_dir)
    first = ingest_flow(source="simulator", days=1, end=END.to_pydatetime(), state_dir=state)
    assert first["rows_in"] > 0 and first["rows_quarantined"] == 0
    offline = OfflineStore(settings.offline_dir)
    before = {t: len(offline.read(t)) for t in ("event_metrics", "business_calendar")}
    assert before["event_metrics"] == len(SERVICES) * 1440
    again = ingest_flow(source="simulator", days=1, end=END.to_pydatetime(), state_dir=state)
    assert again["rows_in"] == 0  # every batch id is in the ledger: skipped
    forced = ingest_flow(
        source="simulator", days=1, end=END.to_pydatetime(), state_dir=state, force=True
    )
    assert forced["rows_in"] == first["rows_in"]
    assert forced["rows_stored"] == 0  # the store itself is idempotent on (service_id, ts)
    after = {t: len(offline.read(t)) for t in before}
    assert after == before


# -- bad-input catalogue ------------------------------------------------------------------

T0 = END - pd.Timedelta(hours=1)


def _events(service: str, n: int = 5) -> pd.DataFrame:
    ts = pd.date_range(T0, periods=n, freq="min")
    return pd.DataFrame(
        {
            "service_id": service,
            "ts": ts.strftime("%Y-%m-%d %H:%M:%S"),
            "events_in": 100.0,
            "events_processed": 100.0,
            "queue_length": 0.0,
            "queue_wait_p50_s": 0.5,
            "queue_wait_p95_s": 1.0,
            "events_dropped": 0.0,
            "events_high_priority": 10.0,
            "events_normal_priority": 90.0,
            "error_rate": 0.0,
        }
    )


def _system(service: str, n: int = 5) -> pd.DataFrame:
    ts = pd.date_range(T0, periods=n, freq="min")
    return pd.DataFrame(
        {
            "service_id": service,
            "ts": ts.strftime("%Y-%m-%d %H:%M"),
            "jobs_running": 3,
            "jobs_starting": 0,
            "utilization": 0.6,
        }
    )


def _decisions(service: str, n: int = 5) -> pd.DataFrame:
    ts = pd.date_range(T0, periods=n, freq="min")
    return pd.DataFrame(
        {
            "service_id": service,
            "ts": ts.strftime("%Y-%m-%d %H:%M"),
            "jobs_before": 3,
            "action": 1,
            "jobs_after": 4,
            "controller": "hpa",
        }
    )


def _profiles(service: str, n: int = 1) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "service_id": [service],
            "ts": [f"{T0:%Y-%m-%d %H:%M}"],
            "criticality": [2],
            "sla_latency_s": [60],
            "sla_target": [0.99],
            "cost_per_job_hour": [0.2],
            "min_jobs": [1],
            "max_jobs": [10],
            "max_step": [2],
            "job_capacity_eps": [25],
            "job_startup_s": [90],
        }
    )


def _set(col: str, value: object, row: int = 2) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.astype(object)
        frame.loc[row, col] = value
        return frame

    return change


def _set_all(col: str, value: object) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.astype(object)
        frame[col] = value
        return frame

    return change


def _duplicate(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([frame, frame.iloc[[1]]], ignore_index=True)


def _same(frame: pd.DataFrame) -> pd.DataFrame:
    return frame


# scenario -> (table, maker of good rows, corruption of the bad service's rows, reason
# pattern, the catalogued kind the bad rows are refused with)
CATALOGUE: dict[
    str,
    tuple[str, Callable[..., pd.DataFrame], Callable[[pd.DataFrame], pd.DataFrame], str, str],
] = {
    "negative_count": (
        "event_metrics",
        _events,
        _set("events_in", -5),
        r"events_in",
        "negative_count",
    ),
    "non_numeric": (
        "event_metrics",
        _events,
        _set("events_in", "12x"),
        r"events_in.*(read|pars)",
        "wrong_type",
    ),
    "null_service": (
        "event_metrics",
        _events,
        _set_all("service_id", None),
        r"service_id",
        "bad_service_id",
    ),
    "bad_timestamp": (
        "event_metrics",
        _events,
        _set("ts", "not a time"),
        r"\bts\b",
        "bad_timestamp",
    ),
    "duplicate_key": (
        "event_metrics",
        _events,
        _duplicate,
        r"(?i)duplicate|unique|share their",
        "duplicate_key",
    ),
    "off_minute": (
        "event_metrics",
        _events,
        _set("ts", f"{T0:%Y-%m-%d %H}:02:30"),
        r"(?i)minute",
        "off_minute",
    ),
    "future": (
        "event_metrics",
        _events,
        _set("ts", f"{END + pd.Timedelta(days=400):%Y-%m-%d %H:%M}"),
        r"(?i)future",
        "future_timestamp",
    ),
    "utilization_range": (
        "system_metrics",
        _system,
        _set("utilization", 2.0),
        r"utilization",
        "out_of_range",
    ),
    "negative_latency": (
        "event_metrics",
        _events,
        _set("queue_wait_p50_s", -1.0),
        r"queue_wait_p50_s",
        "negative_count",
    ),
    "processed_too_many": (
        "event_metrics",
        _events,
        _set("events_processed", 500.0),
        r"events_processed",
        "flow_imbalance",
    ),
    "priority_mismatch": (
        "event_metrics",
        _events,
        _set("events_high_priority", 50.0),
        r"priority",
        "flow_imbalance",
    ),
    "error_rate_range": (
        "event_metrics",
        _events,
        _set("error_rate", 1.7),
        r"error_rate",
        "out_of_range",
    ),
    "fractional_jobs": (
        "system_metrics",
        _system,
        _set("jobs_running", "2.5"),
        r"jobs_running",
        "non_integer",
    ),
    "wait_order": (
        "event_metrics",
        _events,
        _set("queue_wait_p95_s", 0.1),
        r"queue_wait_p95_s",
        "inverted_pair",
    ),
    "decision_arithmetic": (
        "scaling_decisions",
        _decisions,
        _set("jobs_after", 9),
        r"jobs_after",
        "flow_imbalance",
    ),
    "profile_limits": (
        "service_profiles",
        _profiles,
        _set("max_jobs", 0, row=0),
        r"max_jobs",
        "inverted_pair",
    ),
    # Not in the profiles file below: its rows name a service nobody described.
    "unknown_service": (
        "system_metrics",
        _system,
        _same,
        r"no stored service profile",
        "unknown_service",
    ),
}


def _profiled_services() -> list[str]:
    """Every service of the scenarios but those whose profile is the scenario itself, and
    the service whose missing profile is."""
    names = [
        f"{side}-{kind}"
        for kind, (table, *_) in CATALOGUE.items()
        if table != "service_profiles"
        for side in ("ok", "bad")
    ]
    return [n for n in names if n != "bad-unknown_service"]


@pytest.fixture(scope="module")
def catalogue_run(settings: Settings, first_run: dict[str, Any]) -> dict[str, Any]:
    from flows.ingest import ingest_flow

    drop = settings.drop_folder
    drop.mkdir(parents=True, exist_ok=True)
    # Sorted after the metrics files, ingested before them (profiles go first).
    profiles = pd.concat([_profiles(s) for s in _profiled_services()], ignore_index=True)
    profiles.to_csv(drop / "service_profiles-zz-catalogue.csv", index=False)
    for kind, (table, make, corrupt, *_) in CATALOGUE.items():
        good, bad = make(f"ok-{kind}"), corrupt(make(f"bad-{kind}"))
        pd.concat([good, bad], ignore_index=True).to_csv(drop / f"{table}-{kind}.csv", index=False)
    _events("whole-missing").drop(columns="events_in").to_csv(
        drop / "event_metrics-missing_column.csv", index=False
    )
    _events("whole-unknown").to_csv(drop / "metrics-unknown_table.csv", index=False)
    (drop / "event_metrics-unreadable.parquet").write_bytes(b"PAR1 this is not parquet")
    counts = ingest_flow(source="drop", state_dir=str(settings.state_dir))
    from features.quarantine import list_quarantine

    return {"counts": counts, "quarantine": list_quarantine(settings.quarantine_dir)}


@pytest.mark.parametrize("kind", sorted(CATALOGUE))
def test_bad_input_is_rejected_with_a_reason_and_good_rows_land(
    settings: Settings, catalogue_run: dict[str, Any], kind: str
) -> None:
    import re

    table, make, _, pattern, catalogued = CATALOGUE[kind]
    offline = OfflineStore(settings.offline_dir)
    stored = offline.read(table, [f"ok-{kind}", f"bad-{kind}"])
    # The good service of the same file landed in full; nothing of the bad one did.
    assert len(stored) == len(make(f"ok-{kind}"))
    assert set(stored["service_id"]) == {f"ok-{kind}"}
    groups = [
        q
        for q in catalogue_run["quarantine"]
        if q["batch_id"].startswith(f"file-{table}-{kind}.csv")
    ]
    assert groups, f"{kind}: nothing quarantined"
    reasons = " | ".join(r for q in groups for r in q["reasons"])
    assert re.search(pattern, reasons), f"{kind}: reason {reasons!r} lacks {pattern!r}"
    assert catalogued in [k for q in groups for k in q["kinds"]], groups
    # The quarantined rows are the bad service's, raw and complete.
    quarantined = sum(q["n_rows"] for q in groups)
    bad_rows = len(CATALOGUE[kind][2](make(f"bad-{kind}")))
    assert quarantined == bad_rows
    for q in groups:
        folder = Path(q["path"])
        assert {p.name for p in folder.iterdir()} >= {"rows.csv", "validation.json", "report.html"}


WHOLE_FILES = [
    ("event_metrics-missing_column.csv", r"missing required column.*events_in", "missing_required"),
    ("metrics-unknown_table.csv", r"cannot tell the table", "unknown_table"),
    ("event_metrics-unreadable.parquet", r"cannot read", "unreadable_file"),
]


@pytest.mark.parametrize(("name", "pattern", "catalogued"), WHOLE_FILES)
def test_unusable_files_are_quarantined_whole(
    catalogue_run: dict[str, Any], name: str, pattern: str, catalogued: str
) -> None:
    import re

    groups = [q for q in catalogue_run["quarantine"] if q["batch_id"].startswith(f"file-{name}")]
    assert len(groups) == 1 and groups[0]["service"] is None
    assert re.search(pattern, " ".join(groups[0]["reasons"]))
    assert groups[0]["kinds"] == [catalogued]
    assert groups[0]["n_rows"] > 0


def test_catalogue_has_at_least_twenty_kinds(catalogue_run: dict[str, Any]) -> None:
    from features.contracts import BAD_INPUT_KINDS

    assert len(BAD_INPUT_KINDS) >= 20
    assert len(CATALOGUE) + len(WHOLE_FILES) >= 20
    scenario_kinds = {c[4] for c in CATALOGUE.values()} | {k for *_, k in WHOLE_FILES}
    assert scenario_kinds <= {k.name for k in BAD_INPUT_KINDS if k.blocking}
    assert catalogue_run["counts"]["batches_quarantined"] == len(CATALOGUE) + len(WHOLE_FILES)
    # Re-dropping the same files stores nothing and quarantines nothing new. Only the file
    # refused for an unknown service is validated again (it lands once the profile does);
    # it is refused again and its quarantine entry is rewritten in place.
    from features.quarantine import list_quarantine
    from flows.ingest import ingest_flow

    settings_dir = Path(catalogue_run["quarantine"][0]["path"]).parents[3]
    again = ingest_flow(source="drop", state_dir=str(settings_dir))
    waiting = [q for q in catalogue_run["quarantine"] if "unknown_service" in q["kinds"]]
    assert len(waiting) == 1
    assert again["rows_stored"] == 0 and again["rows_quarantined"] == waiting[0]["n_rows"]
    assert list_quarantine(settings_dir / "quarantine") == catalogue_run["quarantine"]


# -- Feast: point in time, online = offline, CLI ----------------------------------------


def _same(a: object, b: object) -> bool:
    if isinstance(a, float | np.floating) or isinstance(b, float | np.floating):
        fa, fb = float(a), float(b)  # type: ignore[arg-type]
        return (np.isnan(fa) and np.isnan(fb)) or bool(np.isclose(fa, fb, rtol=1e-5, atol=1e-4))
    return bool(a == b)


def test_training_sets_are_point_in_time_correct(settings: Settings, feast_store: Any) -> None:
    """Features joined at time E equal features recomputed from only the data available
    at E: no feature uses data from after its timestamp."""
    from features.engineering import MINUTE_FEATURES, compute_features
    from features.store import training_set

    offline = OfflineStore(settings.offline_dir)
    tables = {
        t: offline.read(t)
        for t in ("event_metrics", "system_metrics", "business_calendar", "service_profiles")
    }
    rng = np.random.default_rng(0)
    start = END - pd.Timedelta(days=1)
    stamps = [start + pd.Timedelta(seconds=int(s)) for s in rng.integers(0, 86_000, 6)]
    entity = pd.DataFrame(
        {"service_id": rng.choice(SERVICES, len(stamps)), "event_timestamp": stamps}
    )
    joined = training_set(feast_store, entity, "controller_v1")
    names = [n for n, _ in MINUTE_FEATURES if n in joined.columns]
    assert len(names) > 20
    for (_, row), stamp in zip(joined.iterrows(), stamps, strict=True):
        cut = {
            t: f[f["ts"] <= stamp - pd.Timedelta(minutes=1)] if t != "service_profiles" else f
            for t, f in tables.items()
        }
        cut["business_calendar"] = tables["business_calendar"]  # known in advance
        recomputed = compute_features(
            cut["event_metrics"],
            cut["system_metrics"],
            cut["business_calendar"],
            cut["service_profiles"],
            sequences_since=stamp,
        )
        mine = recomputed.minute[recomputed.minute["service_id"] == row["service_id"]].iloc[-1]
        assert mine["event_timestamp"] <= stamp
        bad = [n for n in names if not _same(row[n], mine[n])]
        assert not bad, f"{row['service_id']} at {stamp}: {bad}"


def test_online_and_offline_values_agree(
    settings: Settings, first_run: dict[str, Any], feast_store: Any
) -> None:
    from features.store import online_features, training_set

    newest = pd.Timestamp(first_run["features"]["materialized"][1])
    for service in ("forecaster_v1", "controller_v1"):
        online = online_features(feast_store, SERVICES, service).set_index("service_id")
        offline = training_set(
            feast_store,
            pd.DataFrame({"service_id": SERVICES, "event_timestamp": newest}),
            service,
        ).set_index("service_id")
        columns = [c for c in online.columns if c in offline.columns]
        assert len(columns) > 10
        for sid in SERVICES:
            for col in columns:
                a, b = online.loc[sid, col], offline.loc[sid, col]
                if isinstance(a, list | np.ndarray):
                    assert np.allclose(
                        np.asarray(a, float), np.asarray(b, float), equal_nan=True
                    ), (sid, col)
                else:
                    assert _same(a, b), (service, sid, col, a, b)


def test_repo_schema_matches_feature_engineering(settings: Settings) -> None:
    from feast import FeatureView

    from features.engineering import MINUTE_FEATURES, PROFILE_FEATURES, SEQUENCE_FEATURES
    from features.store import load_definitions

    views = {
        o.name: o for o in load_definitions(feast_config(settings)) if isinstance(o, FeatureView)
    }
    kinds = {"Float32": "float32", "Int64": "int64", "Bool": "bool"}

    def declared(view: str) -> list[tuple[str, str]]:
        return [(f.name, kinds.get(str(f.dtype), str(f.dtype))) for f in views[view].features]

    assert declared("service_minute") == list(MINUTE_FEATURES)
    assert declared("service_profile") == list(PROFILE_FEATURES)
    assert [n for n, _ in declared("service_sequences")] == [n for n, _ in SEQUENCE_FEATURES]


@pytest.mark.slow
def test_feast_cli_applies_and_materializes_the_repo(
    tmp_path: Path, settings: Settings, first_run: dict[str, Any]
) -> None:
    """`feast apply` and `feast materialize-incremental` in a copy of feature_repo/, with
    its default relative paths (../.state/feast) pointing into the temporary project."""
    project = tmp_path / "project"
    repo = project / "feature_repo"
    shutil.copytree(settings.feature_repo, repo)
    shutil.copytree(settings.feast_dir / "data", project / ".state" / "feast" / "data")
    feast = str(Path(sys.executable).parent / "feast")
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}
    applied = subprocess.run(
        [feast, "apply"], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )
    assert applied.returncode == 0, applied.stderr[-2000:]
    end = pd.Timestamp.now(tz="UTC").floor("s")
    mat = subprocess.run(
        [feast, "materialize-incremental", end.isoformat()],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert mat.returncode == 0, mat.stderr[-2000:]
    assert (project / ".state" / "feast" / "online.db").stat().st_size > 0
    from features.store import FeastConfig, online_features, open_store

    cfg = FeastConfig(repo_dir=repo, feast_dir=project / ".state" / "feast")
    online = online_features(open_store(cfg), SERVICES, "controller_v1")
    assert online["events_in"].notna().all()
