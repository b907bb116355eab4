"""One inference cycle under faults (the online store or the actuator failing) and its log."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from test_engine import request

import features.offline
from features.offline import OfflineStore
from serving.actuators.base import Actuation
from serving.cycle import DecisionLog, run_cycle
from serving.engine import DecisionEngine
from serving.inputs import epoch_seconds
from serving.metrics import ServingMetrics

NOW = pd.Timestamp("2026-11-27 12:01")


class Reader:
    """Serves a fixed online read, or raises ``error``."""

    def __init__(self, error: Exception | None = None) -> None:
        online = request()
        online["recent_events_120m__ts"] = epoch_seconds(online["ts"] + pd.Timedelta(minutes=1))
        self.online = online
        self.error = error

    def read(self, services: Sequence[str], *, with_timestamps: bool = False) -> pd.DataFrame:
        if self.error is not None:
            raise self.error
        return self.online[self.online["service_id"].isin(list(services))]


class Actuator:
    """Records targets; raises ``error`` or fails the services in ``failing``."""

    name = "fake"

    def __init__(self, error: Exception | None = None, failing: set[str] | None = None) -> None:
        self.error = error
        self.failing = failing or set()
        self.calls: list[dict[str, int]] = []
        self.log: Log | None = None

    def current(self, services: Sequence[str]) -> dict[str, int | None]:
        return {}

    def apply(self, targets: Mapping[str, int]) -> list[Actuation]:
        self.calls.append(dict(targets))
        if self.log is not None:
            self.log.events.append("apply")
        if self.error is not None:
            raise self.error
        return [
            Actuation(
                sid,
                t,
                applied=sid not in self.failing,
                error="HTTP 503" if sid in self.failing else None,
            )
            for sid, t in targets.items()
        ]


class Log:
    """Records what the cycle logs, in order."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.writes: list[tuple[pd.DataFrame, np.ndarray, np.ndarray]] = []

    def record(self, decisions: pd.DataFrame) -> None:
        self.events.append("record")

    def publish(self, decisions: pd.DataFrame, previous: np.ndarray, in_force: np.ndarray) -> None:
        self.events.append("publish")
        self.writes.append((decisions, previous, in_force))


SERVICES = ["svc-0", "svc-1", "svc-2"]


def cycle(reader: Reader, actuator: Actuator, log: Log, metrics: Any = None) -> Any:
    return run_cycle(
        DecisionEngine(None),
        reader,
        actuator,
        log,
        SERVICES,
        NOW,  # type: ignore[arg-type]
        max_feature_age=pd.Timedelta(minutes=5),
        metrics=metrics,
    )


def test_an_unreachable_online_store_decides_nothing_and_says_why() -> None:
    actuator, log = Actuator(), Log()
    report = cycle(Reader(ConnectionError("redis:6379 refused")), actuator, log)
    assert report.decisions.empty
    assert set(report.skipped) == set(SERVICES)
    assert all(
        "online store unreachable: ConnectionError" in why for why in report.skipped.values()
    )
    assert actuator.calls == [] and log.writes == []
    # The store is back: the next cycle decides again.
    assert len(cycle(Reader(), actuator, log).decisions) == 3


@pytest.mark.parametrize("error", [TimeoutError("no answer in 10 s"), OSError("network down")])
def test_an_actuator_that_fails_keeps_the_old_targets_in_force(error: Exception) -> None:
    metrics = ServingMetrics()
    actuator, log = Actuator(error=error), Log()
    report = cycle(Reader(), actuator, log, metrics)
    decisions, _, in_force = log.writes[0]
    # Decided and logged, but what is in force next cycle is what was there before.
    assert len(decisions) == 3 and (decisions["jobs_after"] != decisions["jobs_before"]).any()
    np.testing.assert_array_equal(in_force, decisions["jobs_before"].to_numpy())
    assert len(report.failed_actuations) == 3
    assert all(type(error).__name__ in (a.error or "") for a in report.failed_actuations)
    assert b'autoscaler_actuation_errors_total{actuator="fake"} 3.0' in metrics.exposition()


def test_one_failing_service_does_not_hold_back_the_others() -> None:
    actuator, log = Actuator(failing={"svc-1"}), Log()
    report = cycle(Reader(), actuator, log)
    decisions, _, in_force = log.writes[0]
    expected = decisions["jobs_after"].to_numpy().copy()
    expected[1] = decisions["jobs_before"].iloc[1]
    np.testing.assert_array_equal(in_force, expected)
    assert [a.service_id for a in report.failed_actuations] == ["svc-1"]


def test_decisions_are_on_record_before_any_target_is_applied() -> None:
    log = Log()
    actuator = Actuator()
    actuator.log = log
    cycle(Reader(), actuator, log)
    assert log.events == ["record", "apply", "publish"]


def test_stale_features_get_the_shields_fallback_and_never_scale_down() -> None:
    reader = Reader()
    reader.online["jobs_running"] = 9  # more than the traffic needs: a rule would scale down
    reader.online["recent_events_120m__ts"] -= 10 * 60  # ten minutes old: stale at NOW
    log = Log()
    report = cycle(reader, Actuator(), log)
    out = report.decisions
    assert len(out) == 3
    assert out["shield_reason"].str.startswith("fallback").all()
    assert (out["jobs_after"] >= 9).all()
    assert out["forecast_q50"].isna().all()
    # Fresh again: the rule decides from forecasts and may scale down.
    fresh = Reader()
    fresh.online["jobs_running"] = 9
    again = cycle(fresh, Actuator(), log).decisions
    assert not again["shield_reason"].str.startswith("fallback").any()
    assert (again["jobs_after"] < 9).any()


def decision_files(root: Path) -> list[Path]:
    return sorted((root / "scaling_decisions").rglob("*.parquet"))


def test_the_decision_log_is_on_record_before_the_actuator_runs(tmp_path: Path) -> None:
    offline = OfflineStore(tmp_path)
    on_record: list[pd.DataFrame] = []

    class Checking(Actuator):
        def apply(self, targets: Mapping[str, int]) -> list[Actuation]:
            on_record.append(offline.read("scaling_decisions"))
            return super().apply(targets)

    report = cycle(Reader(), Checking(), DecisionLog(offline, None))  # type: ignore[arg-type]
    assert len(on_record) == 1
    pd.testing.assert_frame_equal(
        on_record[0][["service_id", "ts", "jobs_after"]],
        report.decisions[["service_id", "ts", "jobs_after"]].astype({"jobs_after": "Int64"}),
    )
    assert len(decision_files(tmp_path)) == 1  # one file for the cycle, not one per service


def test_a_rerun_of_the_minute_leaves_one_decision_per_service(tmp_path: Path) -> None:
    offline = OfflineStore(tmp_path)
    # No online store: nothing marks the minute as decided, so the rerun decides again.
    for _ in range(2):
        cycle(Reader(), Actuator(), DecisionLog(offline, None))  # type: ignore[arg-type]
    stored = offline.read("scaling_decisions")
    assert stored["service_id"].tolist() == SERVICES
    assert len(decision_files(tmp_path)) == 1  # the same decisions: nothing rewritten


def test_the_log_folds_the_days_journal_after_actuation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(features.offline, "FOLD_AT", 3)
    offline = OfflineStore(tmp_path)
    log = DecisionLog(offline, None)
    reader = Reader()
    for k in range(3):
        report = run_cycle(
            DecisionEngine(None),
            reader,
            Actuator(),
            log,
            SERVICES,
            NOW + pd.Timedelta(minutes=k),
            max_feature_age=pd.Timedelta(minutes=5),
        )
        assert len(report.decisions) == 3
        reader.online["recent_events_120m__ts"] += 60  # the next minute's features
    files = decision_files(tmp_path)
    assert len(files) == 1 and "-cmp-" in files[0].name
    assert len(offline.read("scaling_decisions")) == 9

    def broken(*args: Any, **kwargs: Any) -> int:
        raise OSError("disk full")

    # A fold that fails costs readers files, never the cycle (its decisions are applied).
    monkeypatch.setattr(offline, "fold", broken)
    report = cycle(Reader(), Actuator(), log)  # type: ignore[arg-type]
    assert len(report.decisions) == 3
    assert "could not fold the decision journal" in caplog.text
