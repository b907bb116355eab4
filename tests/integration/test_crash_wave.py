"""A crash wave in the simulated cluster while the inference loop runs (issue 7, faults).

The loop is the inference flow's own, minute by minute, through its task functions
(``advance_cluster``, ``ingest_cluster_metrics``, ``refresh_online_features``,
``decide_and_act``) without Prefect's task machinery, as ``bench.soak`` runs it: the
simulated cluster (one day of history), ingestion with validation, the Feast online store,
the real decision engine and safety shield, the decision log. The registry is not the
fault here (tests/integration/test_faults.py covers it), so the engine gets its champion
from memory: a careless learned policy that asks for two jobs fewer than the target in
force every minute, crash or not. The only thing that keeps the services provisioned
is the shield, which is what this test watches while the jobs crash and come back.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from autoscaler.settings import Settings, build_settings
from models.controller.env import RuleSettings
from models.controller.package import ControllerPackage
from models.controller.policy_inputs import N_FEATURES
from models.controller.ppo import POLICY_SHIELD, LearnedPolicy
from serving.cycle import CycleReport
from serving.engine import CONTROLLER, DecisionEngine

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MIN = pd.Timedelta(minutes=1)
# A fixed clock, so the traffic and every decision are the same on each run (the online
# store does not expire rows by their age; the loop passes the cluster's clock as now).
START = pd.Timestamp("2026-03-02 09:00")
LIMIT = 4  # the policy's action limit: actions are -4..+4 jobs
CUT = 2  # what the careless policy asks to cut, every minute
VERSION = "7"
WAVE_AT = 6  # cycles before the wave
CYCLES = 24
INGEST_EVERY = 5  # as the demo runs the flow: fresh minutes reach the features directly
# Checkout loses every job, notifications half of them; analytics is left alone.
WAVE = {"checkout": 1.0, "notifications": 0.5}


def careless_policy() -> ControllerPackage:
    """A direct policy that always asks for ``CUT`` jobs fewer than the target in force."""
    from bench.control import HORIZONS, QUANTILES

    head = np.zeros(2 * LIMIT + 1, np.float32)
    head[LIMIT - CUT] = 1.0
    layers = [
        (np.zeros((4, N_FEATURES), np.float32), np.zeros(4, np.float32)),
        (np.zeros((2 * LIMIT + 1, 4), np.float32), head),
    ]
    policy = LearnedPolicy(layers, "direct", LIMIT, RuleSettings(), POLICY_SHIELD)
    return ControllerPackage(policy, HORIZONS, QUANTILES)


class Champion:
    """The engine's model source: the careless controller; no forecaster (its fallback)."""

    def __init__(self) -> None:
        self.package = careless_policy()

    def get(self, model_name: str, alias: str = "champion") -> tuple[Any, str]:
        if model_name != CONTROLLER:
            raise LookupError(f"{model_name}@{alias} is not set")
        return self.package, VERSION


def set_up(settings: Settings, start: pd.Timestamp) -> None:
    """A simulated cluster with one day of history, ingested and featurized."""
    from autoscaler.runtime import feast_config
    from features.offline import OfflineStore
    from features.refresh import refresh_features
    from flows.ingest import make_validator
    from serving.actuators.simulated import SimulatedCluster
    from serving.cluster_feed import ingest_outbox

    cluster, _ = SimulatedCluster.bootstrap(settings.cluster_dir, end=start, history_days=1)
    offline = OfflineStore(settings.offline_dir)
    stored = ingest_outbox(
        cluster, offline, make_validator(settings), settings.quarantine_dir, start
    )
    assert stored.rows_quarantined == 0
    refresh_features(offline, feast_config(settings), full=True)


def run_loop(settings: Settings) -> list[CycleReport]:
    """``CYCLES`` cycles of the inference flow's loop, each advancing the cluster one
    minute; the wave is asked for before cycle ``WAVE_AT`` and hits at the end of the
    minute that cycle advances."""
    from flows.inference import (
        advance_cluster,
        cycle_lock,
        decide_and_act,
        ingest_cluster_metrics,
        open_serving,
        refresh_online_features,
    )

    reports = []
    with cycle_lock(settings.state_dir):
        serving = open_serving.fn(settings, "simulated", "default")
        serving.engine = DecisionEngine(Champion())
        cluster, validator = serving.cluster, serving.validator
        assert cluster is not None and validator is not None
        services = list(cluster.services)
        for i in range(CYCLES):
            if i == WAVE_AT:
                for sid, fraction in WAVE.items():
                    cluster.crash_wave(sid, fraction)
            advance_cluster.fn(cluster, cluster.clock + MIN)
            now = cluster.clock
            if (i + 1) % INGEST_EVERY == 0 or i + 1 == CYCLES:
                ingest_cluster_metrics.fn(settings, cluster, validator, now)
            refresh_online_features.fn(serving.refresher, cluster)
            reports.append(decide_and_act.fn(serving, services, now, pd.Timedelta(minutes=5)))
    return reports


def backlog_jobs(decisions: pd.DataFrame, profiles: pd.DataFrame) -> np.ndarray:
    """Jobs the shield's floor adds for the queue each decision saw (shield.py): the
    queue at the end of the minute before the decided one, drained within
    ``drain_fraction`` of the SLA wait budget."""
    p = profiles.set_index("service_id").loc[decisions["service_id"]]
    cap_eps = p["job_capacity_eps"].to_numpy(dtype=float)
    wait_budget = p["sla_latency_s"].to_numpy(dtype=float) - 1.0 / cap_eps
    drain_steps = np.maximum(POLICY_SHIELD.drain_fraction * wait_budget / 60.0, 1e-3)
    return np.asarray(decisions["queue_seen"].to_numpy() / (cap_eps * 60.0 * drain_steps))


def safe_floor(decisions: pd.DataFrame, profiles: pd.DataFrame) -> np.ndarray:
    """The least target the shield's floor allows from the backlog alone (its forecast
    part only adds to it): ``ceil(backlog_jobs)`` clipped into ``[lo, hi]`` around the
    target before, as min/max jobs and the step limit bound it."""
    p = profiles.set_index("service_id").loc[decisions["service_id"]]
    before = decisions["jobs_before"].to_numpy(dtype=float)
    max_step = p["max_step"].to_numpy(dtype=float)
    lo = np.maximum(p["min_jobs"].to_numpy(dtype=float), before - max_step)
    hi = np.maximum(lo, np.minimum(p["max_jobs"].to_numpy(dtype=float), before + max_step))
    return np.asarray(np.minimum(np.maximum(np.ceil(decisions["backlog_jobs"]), lo), hi))


def restart_steps(cluster: Any, service_id: str) -> int:
    """Minutes a crashed job of the service takes to serve again."""
    return int(cluster.configs[cluster.services.index(service_id)].startup_steps)


def codes(reason: str) -> list[str]:
    return reason.split("+") if reason else []


def test_a_crash_wave_is_shielded_recorded_and_recovered_from(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from features.offline import OfflineStore
    from serving.actuators.simulated import SimulatedCluster

    settings = build_settings(state_dir=tmp_path_factory.mktemp("crash-wave"))
    set_up(settings, START)
    reports = run_loop(settings)
    wave_minute = START + WAVE_AT * MIN  # the minute whose end the wave hit
    cluster = SimulatedCluster.load(settings.cluster_dir)
    services = list(cluster.services)
    truth = cluster.truth().set_index(["service_id", "ts"])

    # The loop kept deciding: the champion, for every service, every minute.
    for report in reports:
        assert report.skipped == {} and report.failed_actuations == []
        assert set(report.decisions["controller"]) == {"ppo"}
        assert set(report.decisions["controller_version"]) == {VERSION}
    minutes = [START + (i + 1) * MIN for i in range(CYCLES)]
    assert [r.now for r in reports] == minutes
    log = OfflineStore(settings.offline_dir).read("scaling_decisions")
    log = log[log["ts"] >= minutes[0]]
    assert not log.duplicated(["service_id", "ts"]).any()
    assert sorted(zip(log["service_id"], log["ts"], strict=True)) == sorted(
        (sid, ts) for sid in services for ts in minutes
    )
    # Each logged target is the one the cluster then ran with (all but the last minute's
    # were simulated).
    ran = log[log["ts"] < cluster.clock]
    keys = list(zip(ran["service_id"], ran["ts"], strict=True))
    np.testing.assert_array_equal(
        truth.loc[keys, "jobs_target"].to_numpy(), ran["jobs_after"].to_numpy(dtype=np.int64)
    )

    # The wave hit: every checkout job and half of the notifications jobs crashed.
    hit = truth.xs(wave_minute, level="ts")
    for sid, fraction in WAVE.items():
        assert hit.loc[sid, "jobs_serving"] > 0
        crashed = math.floor(fraction * hit.loc[sid, "jobs_serving"] + 0.5)
        assert hit.loc[sid, "job_failures"] == crashed
    assert truth["job_failures"].xs("analytics").sum() == 0

    # Never below the shield's floor: a backlog is drained within half the wait budget,
    # as far as min/max jobs and the step limit allow. The careless policy cuts every
    # minute, so without the floor's backlog term this fails as the queue builds.
    decisions = log.sort_values(["service_id", "ts"]).reset_index(drop=True)
    seen = list(zip(decisions["service_id"], decisions["ts"] - MIN, strict=True))
    decisions["queue_seen"] = truth.loc[seen, "queue"].to_numpy()
    decisions["serving_seen"] = truth.loc[seen, "jobs_serving"].to_numpy()
    decisions["backlog_jobs"] = backlog_jobs(decisions, cluster.profiles)
    floor = safe_floor(decisions, cluster.profiles)
    below = decisions[decisions["jobs_after"].to_numpy(dtype=float) < floor]
    assert below.empty, below[["service_id", "ts", "jobs_before", "jobs_after", "queue_seen"]]

    # While the crashed jobs restart (the decisions that saw their minutes: capacity
    # down, the queue building), no target is cut, the backlog raises them, and each
    # decision says so.
    for sid in WAVE:
        mine = decisions[decisions["service_id"] == sid].set_index("ts")
        restart = restart_steps(cluster, sid)
        outage = mine.loc[wave_minute + 2 * MIN : wave_minute + (restart + 1) * MIN]
        assert len(outage) == restart >= 1, sid
        serving = truth.loc[(sid, wave_minute), "jobs_serving"]
        assert (outage["serving_seen"] < serving).all(), outage
        assert (np.diff(outage["queue_seen"].to_numpy()) > 0).all(), outage
        assert (outage["jobs_after"] >= outage["jobs_before"]).all(), outage
        assert (outage["jobs_after"] > outage["jobs_before"]).any(), outage
        assert all("backlog" in codes(r) for r in outage["shield_reason"]), outage

    # Recovered: the restarted jobs serve again, the backlog is drained (less than one
    # job's worth left), and the crashed services' decisions are as before the wave: no
    # higher target, no reason that was not seen then.
    for sid in WAVE:
        mine = decisions[decisions["service_id"] == sid].set_index("ts")
        observed = truth.xs(sid)
        back = observed.loc[wave_minute + (restart_steps(cluster, sid) + 1) * MIN :]
        assert back["jobs_serving"].max() >= observed.loc[wave_minute, "jobs_serving"], sid
        tail, normal = mine.iloc[-3:], mine.loc[:wave_minute]
        assert (tail["backlog_jobs"] < 1).all(), tail
        assert tail["jobs_after"].max() <= normal["jobs_after"].max(), tail
        assert set(tail["shield_reason"]) <= set(normal["shield_reason"]), tail
