"""The inference flow against the simulated cluster, with models from a real MLflow registry.

One module-scoped state folder: the cluster's history ingested and featurized through the
flows, a small untrained forecaster and two hand-made controllers registered in MLflow.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
from policies import register_constant

from autoscaler.runtime import registry_config
from autoscaler.settings import Settings, build_settings
from features.offline import OfflineStore
from models import registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HISTORY_DAYS = 9
CONTROLLER = "scaling-controller"
FORECASTER = "event-forecaster"


def register_forecaster(settings: Settings) -> str:
    """A small untrained hybrid: real code path, meaningless numbers (the flow is tested)."""
    from bench.latency import register_untrained_forecaster
    from models.forecaster.model import NetworkConfig

    return register_untrained_forecaster(settings, NetworkConfig(hidden=8, heads=2))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> dict[str, Any]:
    """Cluster history ingested and featurized, forecaster v1 and controllers v1, v2 registered."""
    from flows.features import features_flow
    from flows.ingest import ingest_flow

    settings = build_settings(state_dir=tmp_path_factory.mktemp("live"), history_days=HISTORY_DAYS)
    end = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("min") - pd.Timedelta(minutes=30)
    state = str(settings.state_dir)
    ingested = ingest_flow(
        source="cluster", days=HISTORY_DAYS, end=end.to_pydatetime(), state_dir=state
    )
    features_flow(state_dir=state)
    forecaster = register_forecaster(settings)
    plain = register_constant(settings, extra_jobs=0)
    generous = register_constant(settings, extra_jobs=2)
    registry.set_alias(registry_config(settings, CONTROLLER), CONTROLLER, "champion", plain)
    return {
        "settings": settings,
        "end": end,
        "ingested": ingested,
        "versions": {"forecaster": forecaster, "plain": plain, "generous": generous},
    }


def run(settings: Settings, cycles: int = 1, **kw: Any) -> dict[str, Any]:
    from flows.inference import inference_flow

    return inference_flow(
        actuator="simulated",
        cycles=cycles,
        accelerated=True,
        monitor_every=0,
        state_dir=str(settings.state_dir),
        **kw,
    )


def decisions(settings: Settings) -> pd.DataFrame:
    rows = OfflineStore(settings.offline_dir).read("scaling_decisions")
    return rows[rows["controller"] != "reactive"]  # the history's own scaler


def test_the_flow_moves_the_simulated_cluster(live: dict[str, Any]) -> None:
    from serving.actuators.simulated import SimulatedCluster

    settings = live["settings"]
    assert live["ingested"]["rows_quarantined"] == 0
    cluster = SimulatedCluster.load(settings.cluster_dir)
    start = cluster.clock
    assert start == live["end"]
    result = run(settings, cycles=3)
    assert result["cycles"] == 3 and result["decisions"] == 9

    cluster = SimulatedCluster.load(settings.cluster_dir)
    assert cluster.clock == start + pd.Timedelta(minutes=3)
    made = decisions(settings)
    # Each cycle runs a minute, then decides the next one from what that minute emitted.
    first = start + pd.Timedelta(minutes=1)
    assert sorted(made["ts"].unique()) == list(pd.date_range(first, periods=3, freq="min"))
    # Champions decided, with the forecaster's quantiles logged beside each decision.
    assert set(made["controller"]) == {"ppo"}
    assert set(made["controller_version"]) == {live["versions"]["plain"]}
    assert set(made["forecaster_version"]) == {live["versions"]["forecaster"]}
    assert made[["forecast_q10", "forecast_q50", "forecast_q90"]].notna().all().all()
    # The cluster now runs the last decisions' targets: the loop is closed.
    last = made[made["ts"] == made["ts"].max()].set_index("service_id")["jobs_after"]
    assert cluster.current(list(last.index)) == {k: int(v) for k, v in last.items()}
    # What the cluster emitted was ingested (validated and stored), and acknowledged.
    assert cluster.pending() == {}
    stored = OfflineStore(settings.offline_dir).read("event_metrics", start=start)
    assert len(stored) == 3 * len(cluster.services)
    truth = cluster.truth()
    assert (truth["ts"] >= start).sum() == 3 * len(cluster.services)


def test_an_alias_moved_by_hand_serves_the_next_cycle(live: dict[str, Any]) -> None:
    settings = live["settings"]
    versions = live["versions"]
    cfg = registry_config(settings, CONTROLLER)
    registry.set_alias(cfg, CONTROLLER, "champion", versions["generous"])
    try:
        run(settings, cycles=1)
        made = decisions(settings)
        newest = made[made["ts"] == made["ts"].max()]
        assert set(newest["controller_version"]) == {versions["generous"]}
    finally:
        registry.set_alias(cfg, CONTROLLER, "champion", versions["plain"])
    run(settings, cycles=1)
    made = decisions(settings)
    assert set(made[made["ts"] == made["ts"].max()]["controller_version"]) == {versions["plain"]}


def test_an_overlapping_run_does_not_act(live: dict[str, Any]) -> None:
    from flows.inference import cycle_lock
    from serving.actuators.simulated import SimulatedCluster

    settings = live["settings"]
    before = SimulatedCluster.load(settings.cluster_dir).clock
    count = len(decisions(settings))
    with cycle_lock(settings.state_dir):
        result = run(settings, cycles=1)
    assert result["cycles"] == 0 and "another inference run" in result["skipped"]
    assert SimulatedCluster.load(settings.cluster_dir).clock == before
    assert len(decisions(settings)) == count


def test_a_minute_already_decided_is_not_decided_again(live: dict[str, Any]) -> None:
    from features.store import OnlineReader
    from flows.inference import open_store
    from serving.actuators.dry_run import DryRunActuator
    from serving.actuators.simulated import SimulatedCluster
    from serving.cycle import FEATURE_SERVICE, DecisionLog, run_cycle
    from serving.engine import DecisionEngine

    settings = live["settings"]
    store = open_store(settings)
    cluster = SimulatedCluster.load(settings.cluster_dir)
    now = cluster.clock - pd.Timedelta(minutes=1)  # the minute the last run decided
    report = run_cycle(
        DecisionEngine(None),
        OnlineReader(store, FEATURE_SERVICE),
        DryRunActuator(),
        DecisionLog(OfflineStore(settings.offline_dir), store),
        list(cluster.services),
        now,
        max_feature_age=pd.Timedelta(days=1),
    )
    assert report.decisions.empty
    assert set(report.skipped.values()) == {"already decided for this minute"}


def _unique_and_complete(
    settings: Settings, start: pd.Timestamp, services: tuple[str, ...]
) -> None:
    """Every minute from ``start`` to the cluster's clock stored once per service."""
    from serving.actuators.simulated import SimulatedCluster

    clock = SimulatedCluster.load(settings.cluster_dir).clock
    minutes = pd.date_range(start, clock - pd.Timedelta(minutes=1), freq="min")
    stored = OfflineStore(settings.offline_dir).read("event_metrics", start=start)
    assert not stored.duplicated(["service_id", "ts"]).any()
    assert len(stored) == len(minutes) * len(services)
    made = decisions(settings)
    assert not made.duplicated(["service_id", "ts"]).any()


def test_a_run_that_crashed_after_advancing_loses_nothing(live: dict[str, Any]) -> None:
    from serving.actuators.simulated import SimulatedCluster

    settings = live["settings"]
    cluster = SimulatedCluster.load(settings.cluster_dir)
    start = cluster.clock
    # A run advanced the cluster and died before ingesting what it emitted.
    cluster.advance(start + pd.Timedelta(minutes=1))
    assert cluster.pending()
    run(settings, cycles=1)
    assert SimulatedCluster.load(settings.cluster_dir).pending() == {}
    _unique_and_complete(settings, start, cluster.services)


@pytest.mark.parametrize("step", ["record", "publish"])
def test_a_task_crash_mid_flow_is_rerun_without_duplicates(
    live: dict[str, Any], monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    from serving.actuators.simulated import SimulatedCluster
    from serving.cycle import DecisionLog

    settings = live["settings"]
    cluster = SimulatedCluster.load(settings.cluster_dir)
    start = cluster.clock
    before = cluster.current(list(cluster.services))
    real = getattr(DecisionLog, step)

    def crash(*args: Any, **kwargs: Any) -> None:
        raise OSError(f"disk full in {step}")

    monkeypatch.setattr(DecisionLog, step, crash)
    with pytest.raises(OSError, match="disk full"):
        run(settings, cycles=1)
    crashed_minute = start + pd.Timedelta(minutes=1)
    on_record = decisions(settings)
    on_record = on_record[on_record["ts"] == crashed_minute]
    after_crash = SimulatedCluster.load(settings.cluster_dir).current(list(cluster.services))
    if step == "record":
        # Died before anything was applied: no decision on record, targets untouched.
        assert on_record.empty and after_crash == before
    else:
        # Died after applying: every applied target is on record.
        assert after_crash == {r.service_id: r.jobs_after for r in on_record.itertuples()}
    monkeypatch.setattr(DecisionLog, step, real)
    run(settings, cycles=1)
    _unique_and_complete(settings, start, cluster.services)
