"""Soak: the live inference loop for 24 simulated hours, checked for leaks and lost decisions.

    python -m bench.soak --json PATH [--hours 24] [--services 3] [--models untrained]

What runs. The per-minute loop of the ``inference`` flow (:mod:`flows.inference`) against
the simulated cluster, accelerated (each cycle advances the cluster one minute), in this
process, for ``--hours`` x 60 cycles: advance the cluster, every ``--ingest-every`` cycles
validate and store what it emitted, refresh the online features, then one engine cycle
(read online features, champion forecaster, champion controller, shield, decision log
write-ahead, actuate, publish online). Beside it, as the deployments would run them:
every ``--features-every`` cycles the features flow's work
(:func:`features.refresh.refresh_features`), and every ``--monitor-every`` cycles the
feedback check's evidence read and assessment (not its retraining trigger nor its Prefect
artifact, which need a Prefect server).

Without Prefect. The loop calls the flow's own task functions (``advance_cluster.fn``,
``ingest_cluster_metrics.fn``, ``refresh_online_features.fn``, ``decide_and_act.fn``, and
``open_serving.fn`` once), in the flow's order and under the flow's state-folder lock, but
not through Prefect's task machinery: 1,440 flow runs would add about 1 s each of Prefect
bookkeeping (``bench.latency``) and measure Prefect rather than the loop. So this is one
long-lived process holding its stores, models and cluster for a day, the case where a
leak shows; a scheduled deployment starts a new process each minute instead.

Set-up (not part of the soak's numbers), in a temporary state folder unless
``--state-dir`` (settings from :func:`autoscaler.settings.build_settings`, so
``AUTOSCALER_*`` variables such as ``AUTOSCALER_ONLINE_STORE=redis`` apply): a simulated
cluster of ``--services`` services (:func:`serving.actuators.simulated.synthetic_fleet`)
with ``--history-days`` of history ending ``--hours`` before now (so the loop ends about
now), the history ingested and validated, features built and materialized, and the
models: ``untrained`` registers an untrained default hybrid forecaster and a random
default PPO actor as ``champion`` (``bench.latency``'s models: the served code path and
its arithmetic, decisions the shield keeps in bounds), ``rule`` registers none (the
engine serves its fallbacks: recent-window forecasts, the predictive rule).

Checked and reported (JSON keys):

* memory: the process's resident set (``VmRSS``) after set-up and at the end of every
  simulated hour, after a ``gc.collect()`` and a heap trim (:func:`trim_heap`), so
  garbage awaiting collection and freed pages the allocator kept are not read as growth;
  ``rss_growth_mib`` from the end of hour 1 (warm: models loaded, caches full) to the end
  of the last hour, against ``rss_bound_mib`` (:data:`RSS_BOUND_MIB`), and
  ``rss_trend_mib_per_hour``, the least-squares slope over those hourly samples;
* decisions: the offline ``scaling_decisions`` table (read through
  :meth:`features.offline.OfflineStore.read`) against the keys the cycles had to decide,
  one per service and cycle minute: ``decisions_lost`` (keys with no row),
  ``decisions_duplicated`` (keys with more than one row), ``decisions_unexpected`` (rows
  in the window for a key no cycle decided) and ``decisions_not_applied`` (a logged
  target that is not the target the cluster then ran with, from its truth log);
* SLA and cost of the 24 h on the cluster, scored by :func:`bench.live.live_summary`
  beside HPA and KEDA replayed on the same traffic (:func:`bench.live.replay_baselines`).

The exit code is 1 when a decision was lost, duplicated, unexpected or not applied as
logged, or the memory bound was exceeded, so CI can gate on it.

Shared Redis: the loop skips a service already decided for a minute by the online
``service_decisions`` view, so a Redis online store that kept another run's decisions for
the same service ids (within a day) makes this run skip, and count, lost decisions; give
the soak a Redis database of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from autoscaler.settings import Settings

HOURS = 24
SERVICES = 3
"""Default fleet: the demo's size, one service of each synthetic profile. The loop's cost
per cycle hardly depends on it (about 0.3 s of online refresh over a week of lookback and
0.1 s of engine cycle for 3 services), so 24 hours take about 16 min on 2 cores whatever
the fleet; fewer services would not make the soak short, more would make it longer."""
HISTORY_DAYS = 8
"""Days of history before the loop: a week of lags and 7-day sequences plus a day (the least
``Settings.history_days`` allows)."""
INGEST_EVERY = 15
"""Cycles between ingestions of the cluster's metrics. The flow's default is every cycle and
the demo's every 5; validation costs about 1.5 s a run whatever its size, so every cycle
would take about 40 min of the soak alone. Between ingestions the fresh minutes reach the
online features straight from the cluster's outbox, as in the flow."""
FEATURES_EVERY = 60
"""Cycles between runs of the features flow's work (:func:`features.refresh.refresh_features`:
compute, write the feature Parquet, ``feast apply``, materialize). Deployed it runs every 5
minutes; at about 3 s a run, hourly keeps the soak in its time budget while the feature
watermark still moves, as the inference loop expects."""
MONITOR_EVERY = 60
"""Cycles between feedback checks (evidence read and assessment)."""
MAX_FEATURE_AGE_MINUTES = 5
"""The inference flow's default staleness limit."""
RSS_BOUND_MIB = 64.0
"""Most resident-set growth allowed from the end of hour 1 to the end of the soak.

A production threshold, chosen before any 24-hour run, not fitted to one. A long-lived
worker gets a memory limit a few hundred MiB above its working set (here several hundred
MiB: Python, pandas, Feast, MLflow, PyTorch, Great Expectations); growing 64 MiB a day, it
spends 448 MiB of headroom in a week, the cadence of the weekly controller retrain and of a
routine deploy that restarts it. Over the 1,380 cycles from hour 1 to hour 24, anything the
loop keeps of each cycle (a frame, a model, a connection) exceeds it from about 47 KiB a
cycle on.
"""

ModelChoice = Literal["untrained", "rule"]
STAGES = ("advance", "ingest", "features", "refresh", "engine_cycle", "feedback_check")
"""Stages of one loop cycle, in order (``engine_cycle``: read, decide, log, act, publish)."""


@dataclass(frozen=True)
class Cadence:
    """How often the loop's periodic steps run, in cycles (0: never, where allowed).

    Attributes:
        ingest_every: Ingest (validate and store) the cluster's metrics (>= 1).
        features_every: Run the features flow's work (0: never).
        monitor_every: Run the feedback check (0: never).
    """

    ingest_every: int = INGEST_EVERY
    features_every: int = FEATURES_EVERY
    monitor_every: int = MONITOR_EVERY

    def __post_init__(self) -> None:
        if self.ingest_every < 1 or self.features_every < 0 or self.monitor_every < 0:
            raise ValueError(
                f"need ingest_every >= 1, features_every >= 0 and monitor_every >= 0, got {self}"
            )

    @staticmethod
    def due(every: int, cycle: int) -> bool:
        """Whether a step run every ``every`` cycles runs after cycle ``cycle`` (from 1)."""
        return every > 0 and cycle % every == 0


# --------------------------------------------------------------------------- memory


def _status_mib(field: str) -> float:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), MiB."""
    status = Path("/proc/self/status")
    if not status.exists():
        raise RuntimeError("the soak reads memory from /proc/self/status: run it on Linux")
    for line in status.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024.0  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_mib() -> float:
    """This process's resident set size, MiB."""
    return _status_mib("VmRSS")


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, MiB."""
    return _status_mib("VmHWM")


def trim_heap() -> bool:
    """Hand the C heap's free pages back to the OS (glibc's ``malloc_trim``); False without.

    Freed memory otherwise stays in the process's resident set until the allocator reuses
    it, so an hourly sample taken after a big temporary (the hourly features run) reads tens
    of MiB higher than one that is not: noise, not growth.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, macOS): the samples keep that noise
        return False
    libc.malloc_trim(0)
    return True


def sample_rss() -> float:
    """RSS of what the process retains: after a full garbage collection and a heap trim."""
    gc.collect()
    trim_heap()
    return rss_mib()


def trend_mib_per_hour(samples: Sequence[float]) -> float | None:
    """Least-squares slope of hourly RSS samples, MiB per hour (None for fewer than 2)."""
    if len(samples) < 2:
        return None
    return float(np.polyfit(np.arange(len(samples), dtype=np.float64), samples, 1)[0])


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class DecisionAudit:
    """The decision log against the decisions the cycles had to make.

    Attributes:
        expected: Keys (service, minute) the cycles had to decide.
        rows: Rows of the log in the checked minutes.
        lost: Expected keys with no row.
        duplicated: Keys with more than one row.
        unexpected: Rows whose key was not expected (a service or minute no cycle decided).
    """

    expected: int
    rows: int
    lost: int
    duplicated: int
    unexpected: int

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.unexpected == 0


def audit_decisions(
    rows: pd.DataFrame, services: Sequence[str], minutes: Sequence[pd.Timestamp]
) -> DecisionAudit:
    """Count lost, duplicated and unexpected decisions in ``rows``.

    Args:
        rows: ``scaling_decisions`` rows of the checked minutes (``service_id``, ``ts``).
        services: Services every cycle had to decide for.
        minutes: The minutes decided for (one per cycle).

    Returns:
        The counts.
    """
    expected = pd.MultiIndex.from_product(
        [[str(s) for s in services], pd.DatetimeIndex(list(minutes))], names=["service_id", "ts"]
    )
    keys = pd.MultiIndex.from_arrays(
        [rows["service_id"].astype(str).to_numpy(), pd.DatetimeIndex(rows["ts"])],
        names=["service_id", "ts"],
    )
    counts = pd.Series(1, index=keys).groupby(level=[0, 1]).size()
    present = counts.index
    return DecisionAudit(
        expected=len(expected),
        rows=len(rows),
        lost=int((~expected.isin(present)).sum()),
        duplicated=int((counts > 1).sum()),
        unexpected=int((~keys.isin(expected)).sum()),
    )


def not_applied(decisions: pd.DataFrame, truth: pd.DataFrame) -> tuple[int, int]:
    """Logged targets the cluster did not run with.

    The decision for minute ``t`` is applied before the cluster simulates ``t``, so the
    truth log's ``jobs_target`` of ``(service, t)`` must equal the logged ``jobs_after``.
    Decisions for minutes the cluster has not run yet (the last cycle's) are not checked.

    Args:
        decisions: ``scaling_decisions`` rows.
        truth: The cluster's truth log.

    Returns:
        ``(checked, mismatched)``: decisions compared, and those that differ.
    """
    ran = truth[["service_id", "ts", "jobs_target"]].drop_duplicates(["service_id", "ts"])
    both = decisions[["service_id", "ts", "jobs_after"]].merge(
        ran, on=["service_id", "ts"], how="inner"
    )
    mismatched = both["jobs_after"].astype(np.int64) != both["jobs_target"].astype(np.int64)
    return len(both), int(mismatched.sum())


# --------------------------------------------------------------------------- set-up


def set_up(
    settings: Settings,
    services: int,
    history_days: int,
    start: pd.Timestamp,
    models: ModelChoice,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Cluster with history ingested, features materialized, models registered.

    Args:
        settings: Settings (``seed``, the state folder's paths).
        services: Size of the fleet.
        history_days: Days of history before ``start``.
        start: The cluster's clock: first live minute.
        models: ``untrained`` (registered champions) or ``rule`` (none: fallbacks).
        log: Progress lines.

    Returns:
        Set-up facts for the record (seconds per step, model versions).
    """
    from autoscaler.runtime import feast_config
    from features.offline import OfflineStore
    from features.refresh import refresh_features
    from flows.ingest import make_validator
    from serving.actuators.simulated import SimulatedCluster
    from serving.cluster_feed import ingest_outbox

    took: dict[str, float] = {}
    t0 = time.perf_counter()
    cluster, _ = SimulatedCluster.bootstrap(
        settings.cluster_dir,
        end=start,
        history_days=history_days,
        seed=settings.seed,
        services=services,
    )
    offline = OfflineStore(settings.offline_dir)
    report = ingest_outbox(
        cluster, offline, make_validator(settings), settings.quarantine_dir, start
    )
    if report.rows_quarantined:
        raise RuntimeError(
            f"set-up: {report.rows_quarantined} history rows quarantined in "
            f"{settings.quarantine_dir}; the soak needs a clean history"
        )
    took["history_s"] = time.perf_counter() - t0
    log(f"  history: {report.rows_stored} rows stored ({took['history_s']:.0f} s)")
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # Feast prints its progress
        refresh_features(offline, feast_config(settings), full=True)
    took["features_s"] = time.perf_counter() - t0
    log(f"  features materialized ({took['features_s']:.0f} s)")
    versions: dict[str, str] = {}
    if models == "untrained":
        from bench.latency import register_models

        t0 = time.perf_counter()
        versions = register_models(settings)
        took["models_s"] = time.perf_counter() - t0
        log(f"  champions registered: {versions} ({took['models_s']:.0f} s)")
    return {"seconds": {k: round(v, 1) for k, v in took.items()}, "model_versions": versions}


# --------------------------------------------------------------------------- the loop


@dataclass
class LoopResult:
    """What the cycles did.

    Attributes:
        minutes: The minute each cycle decided for.
        services: Services every cycle decided for.
        rss_mib: RSS after set-up (index 0) and at the end of each hour (index h).
        cycle_s: Wall seconds per cycle, every stage of :data:`STAGES` included.
        skipped: Services a cycle did not decide, with the reason, per minute.
        actuation_errors: Targets the actuator did not apply.
        findings: Feedback findings per check.
        model_problems: Distinct model-loading problems the engine reported.
        stage_s: Wall seconds per stage of the loop (:data:`STAGES`), summed over cycles.
    """

    minutes: list[pd.Timestamp]
    services: list[str]
    rss_mib: list[float]
    cycle_s: list[float]
    skipped: dict[str, dict[str, str]]
    actuation_errors: int
    findings: list[int]
    model_problems: list[str]
    stage_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))


def run_loop(
    settings: Settings, hours: int, cadence: Cadence, log: Callable[[str], None]
) -> LoopResult:
    """``hours`` x 60 cycles of the inference flow's loop, without Prefect (module docstring).

    Args:
        settings: Settings of the state folder set up by :func:`set_up`.
        hours: Simulated hours.
        cadence: How often ingestion, the features flow's work and the feedback check run.
        log: One progress line per simulated hour.

    Returns:
        The loop's record.
    """
    from autoscaler.runtime import feast_config
    from features.offline import OfflineStore
    from features.refresh import refresh_features
    from flows.inference import (
        advance_cluster,
        cycle_lock,
        decide_and_act,
        ingest_cluster_metrics,
        open_serving,
        refresh_online_features,
        services_to_decide,
    )
    from flows.monitor import assess_evidence, load_evidence
    from serving.monitoring import MonitorThresholds

    cycles = hours * 60
    max_age = pd.Timedelta(minutes=MAX_FEATURE_AGE_MINUTES)
    thresholds = MonitorThresholds()
    result = LoopResult([], [], [], [], {}, 0, [], [])
    problems: set[str] = set()
    offline = OfflineStore(settings.offline_dir)
    with cycle_lock(settings.state_dir):
        serving = open_serving.fn(settings, "simulated", "default")
        cluster = serving.cluster
        validator = serving.validator
        if cluster is None or validator is None:  # "simulated" always opens both
            raise RuntimeError("the simulated actuator opened no cluster")
        result.services = services_to_decide(serving, None)
        result.rss_mib.append(sample_rss())
        hour_started = time.perf_counter()
        for i in range(cycles):
            t0 = time.perf_counter()
            # The flow's loop body (flows.inference._run), accelerated.
            advance_cluster.fn(cluster, cluster.clock + pd.Timedelta(minutes=1))
            now = cluster.clock
            marks = [t0, time.perf_counter()]
            if Cadence.due(cadence.ingest_every, i + 1) or i + 1 == cycles:
                ingest_cluster_metrics.fn(settings, cluster, validator, now)
            marks.append(time.perf_counter())
            # The features deployment's work, right after an ingestion so it sees every
            # minute the online refresh below sees (it materializes the newest minute too).
            if Cadence.due(cadence.features_every, i + 1):
                # Feast prints its materialization progress; stdout is the table's.
                with contextlib.redirect_stdout(sys.stderr):
                    refresh_features(offline, feast_config(settings))
            marks.append(time.perf_counter())
            refresh_online_features.fn(serving.refresher, cluster)
            marks.append(time.perf_counter())
            report = decide_and_act.fn(serving, result.services, now, max_age)
            marks.append(time.perf_counter())
            if Cadence.due(cadence.monitor_every, i + 1):
                evidence = load_evidence(offline, now, thresholds)
                result.findings.append(len(assess_evidence(evidence, now, thresholds).findings))
            marks.append(time.perf_counter())
            result.cycle_s.append(marks[-1] - t0)
            for stage, a, b in zip(STAGES, marks[:-1], marks[1:], strict=True):
                result.stage_s[stage] += b - a
            result.minutes.append(now)
            if report.skipped:
                result.skipped[str(now)] = dict(report.skipped)
            result.actuation_errors += len(report.failed_actuations)
            problems.update(f"{k}: {v}" for k, v in report.models.get("problems", {}).items())
            if (i + 1) % 60 == 0:
                result.rss_mib.append(sample_rss())
                hour = (i + 1) // 60
                log(
                    f"  hour {hour:>2}/{hours}: RSS {result.rss_mib[-1]:7.1f} MiB, "
                    f"{time.perf_counter() - hour_started:5.1f} s, "
                    f"{sum(len(v) for v in result.skipped.values())} skipped so far"
                )
                hour_started = time.perf_counter()
    result.model_problems = sorted(problems)
    return result


# --------------------------------------------------------------------------- scoring


def score(settings: Settings, loop: LoopResult, start: pd.Timestamp) -> dict[str, Any]:
    """Decisions audited, SLA and cost of the window (live and the HPA/KEDA replays)."""
    from bench.live import ALL_SERVICES, LIVE, live_summary, replay_baselines
    from features.offline import OfflineStore
    from serving.actuators.simulated import SimulatedCluster

    offline = OfflineStore(settings.offline_dir)
    # Read through the store's public API only: its layout is its own business. From the
    # first minute decided on, with no end: a row for a later minute is unexpected too.
    rows = offline.read("scaling_decisions", start=loop.minutes[0])
    audit = audit_decisions(rows, loop.services, loop.minutes)
    cluster = SimulatedCluster.load(settings.cluster_dir)
    truth = cluster.truth()
    checked, mismatched = not_applied(rows, truth)
    end = cluster.clock
    replays = replay_baselines(cluster, start, end, truth=truth)
    summary = live_summary(truth, replays, cluster.profiles)
    pooled = summary[summary["service_id"] == ALL_SERVICES].set_index("controller")
    controllers = {
        name: {
            "sla_pct": round(float(row["sla_compliance_pct"]), 3),
            "cost": round(float(row["cost"]), 3),
            "meets_sla": bool(row["meets_sla"]),
            "actions": int(row["actions"]),
        }
        for name, row in pooled.iterrows()
    }
    live = pooled.loc[LIVE]
    return {
        "audit": audit,
        "decisions_applied_checked": checked,
        "decisions_not_applied": mismatched,
        "window": (start, end),
        "controllers": controllers,
        "cost_vs_hpa": float(live["cost_vs_hpa"]),
        "cost_vs_keda": float(live["cost_vs_keda"]),
        "controller_used": rows["controller"].astype(str).value_counts().to_dict(),
        "per_service": [
            {
                "service_id": r["service_id"],
                "sla_pct": round(float(r["sla_compliance_pct"]), 3),
                "sla_target_pct": round(float(r["sla_target_pct"]), 3),
                "cost": round(float(r["cost"]), 3),
            }
            for r in summary[
                (summary["controller"] == LIVE) & (summary["service_id"] != ALL_SERVICES)
            ].to_dict(orient="records")
        ],
    }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def build_record(
    *,
    hours: int,
    loop: LoopResult,
    scored: dict[str, Any],
    setup: dict[str, Any],
    models: ModelChoice,
    options: dict[str, Any],
    bound_mib: float,
    wall_s: float,
    settings: Settings,
) -> dict[str, Any]:
    """The JSON record (module docstring for the keys)."""
    audit: DecisionAudit = scored["audit"]
    # Growth is measured from the end of hour 1: by then models are loaded and caches full
    # (a one-hour soak has no such window and measures from the end of the set-up).
    rss_start = loop.rss_mib[1] if hours >= 2 else loop.rss_mib[0]
    rss_end = loop.rss_mib[-1]
    growth = rss_end - rss_start
    cycle_ms = np.asarray(loop.cycle_s) * 1000
    start, end = scored["window"]
    live = scored["controllers"]["live"]
    return {
        "hours": hours,
        "services": len(loop.services),
        "cycles": len(loop.minutes),
        "decisions_expected": audit.expected,
        "decisions_logged": audit.rows,
        "decisions_lost": audit.lost,
        "decisions_duplicated": audit.duplicated,
        "decisions_unexpected": audit.unexpected,
        "decisions_applied_checked": scored["decisions_applied_checked"],
        "decisions_not_applied": scored["decisions_not_applied"],
        "decisions_skipped_by_cycles": sum(len(v) for v in loop.skipped.values()),
        "skipped_examples": dict(list(loop.skipped.items())[:5]),
        "actuation_errors": loop.actuation_errors,
        "rss_after_setup_mib": round(loop.rss_mib[0], 1),
        "rss_start_mib": round(rss_start, 1),
        "rss_end_mib": round(rss_end, 1),
        "rss_growth_mib": round(growth, 1),
        "rss_bound_mib": bound_mib,
        "memory_bound_held": bool(growth <= bound_mib),
        "rss_peak_mib": round(peak_rss_mib(), 1),
        "rss_hourly_mib": [round(v, 1) for v in loop.rss_mib],
        "rss_trend_mib_per_hour": _round(trend_mib_per_hour(loop.rss_mib[1:]), 2),
        "sla_pct": live["sla_pct"],
        "cost": live["cost"],
        "cost_vs_hpa": _round(scored["cost_vs_hpa"], 3),
        "cost_vs_keda": _round(scored["cost_vs_keda"], 3),
        "controllers": scored["controllers"],
        "per_service": scored["per_service"],
        "controller_used": scored["controller_used"],
        "models": models,
        "model_versions": setup["model_versions"],
        "model_problems": loop.model_problems,
        "feedback_checks": len(loop.findings),
        "feedback_findings": sum(loop.findings),
        "cycle_p50_ms": round(float(np.percentile(cycle_ms, 50)), 1),
        "cycle_p99_ms": round(float(np.percentile(cycle_ms, 99)), 1),
        "cycle_max_ms": round(float(cycle_ms.max()), 1),
        "loop_s": round(float(cycle_ms.sum()) / 1000, 1),
        "loop_stage_s": {k: round(v, 1) for k, v in loop.stage_s.items()},
        "setup_s": setup["seconds"],
        "wall_s": round(wall_s, 1),
        "window": [start.isoformat(), end.isoformat()],
        "options": options,
        "online_store": settings.online_store,
        "runs_through_prefect": False,
        "cpu_count": os.cpu_count(),
    }


def failures(record: dict[str, Any]) -> list[str]:
    """Why the soak failed (empty when it passed)."""
    why = [
        f"{record[key]} decision(s) {key.removeprefix('decisions_').replace('_', ' ')}"
        for key in (
            "decisions_lost",
            "decisions_duplicated",
            "decisions_unexpected",
            "decisions_not_applied",
        )
        if record[key]
    ]
    if not record["memory_bound_held"]:
        why.append(
            f"RSS grew {record['rss_growth_mib']} MiB from hour 1 to the end "
            f"(bound {record['rss_bound_mib']} MiB)"
        )
    return why


def format_table(record: dict[str, Any]) -> str:
    """The record as a small text table."""
    ctl = record["controllers"]
    rows: list[tuple[str, Any]] = [
        (
            "simulated hours / services / cycles",
            f"{record['hours']} / {record['services']} / {record['cycles']}",
        ),
        (
            "decisions expected / logged",
            f"{record['decisions_expected']} / {record['decisions_logged']}",
        ),
        (
            "decisions lost / duplicated / unexpected",
            f"{record['decisions_lost']} / "
            f"{record['decisions_duplicated']} / {record['decisions_unexpected']}",
        ),
        (
            "decisions not applied as logged",
            f"{record['decisions_not_applied']} of {record['decisions_applied_checked']} checked",
        ),
        (
            "RSS after set-up / hour 1 / end (MiB)",
            f"{record['rss_after_setup_mib']} / "
            f"{record['rss_start_mib']} / {record['rss_end_mib']}",
        ),
        (
            "RSS growth hour 1 -> end (MiB)",
            f"{record['rss_growth_mib']} (bound "
            f"{record['rss_bound_mib']}: {'held' if record['memory_bound_held'] else 'EXCEEDED'})",
        ),
        ("RSS trend from hour 1 (MiB per hour)", record["rss_trend_mib_per_hour"]),
        ("RSS peak (MiB)", record["rss_peak_mib"]),
    ]
    for name, label in (("live", "live loop"), ("hpa", "HPA replay"), ("keda", "KEDA replay")):
        if name in ctl:
            c = ctl[name]
            rows.append(
                (
                    f"{label}: SLA % / cost / actions",
                    f"{c['sla_pct']:.3f} / {c['cost']:.2f} / {c['actions']}"
                    + ("" if c["meets_sla"] else " (a service misses its target)"),
                )
            )
    rows += [
        ("live cost / HPA, / KEDA", f"{record['cost_vs_hpa']} / {record['cost_vs_keda']}"),
        (
            "cycle p50 / p99 / max (ms)",
            f"{record['cycle_p50_ms']} / {record['cycle_p99_ms']} / {record['cycle_max_ms']}",
        ),
        ("loop / wall (s)", f"{record['loop_s']} / {record['wall_s']}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


# --------------------------------------------------------------------------- entry point


def soak(
    state_dir: Path,
    *,
    hours: int = HOURS,
    services: int = SERVICES,
    history_days: int = HISTORY_DAYS,
    cadence: Cadence | None = None,
    models: ModelChoice = "untrained",
    bound_mib: float = RSS_BOUND_MIB,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Set up, run the loop, score; returns the JSON record (module docstring).

    Args:
        state_dir: An empty (or missing) state folder.
        hours: Simulated hours (growth is measured from the end of hour 1, so use >= 2).
        services: Services in the simulated cluster.
        history_days: Days of history before the loop; under 8 the weekly lags and the
            7-day hourly sequence are short (fine for a test of the loop's mechanics).
        cadence: How often the periodic steps run (default :class:`Cadence`).
        models: ``untrained`` or ``rule``.
        bound_mib: RSS growth bound, MiB.
        log: Progress lines.

    Returns:
        The record.
    """
    from autoscaler.runtime import configure_prefect
    from autoscaler.settings import build_settings

    if hours < 1 or services < 1 or history_days < 1:
        raise ValueError(
            f"need hours, services and history_days >= 1, got {hours}, {services}, {history_days}"
        )
    cadence = cadence or Cadence()
    if state_dir.exists() and any(state_dir.iterdir()):
        raise ValueError(f"{state_dir} is not empty: the soak starts from a fresh state folder")
    started = time.perf_counter()
    settings = build_settings(state_dir=state_dir)
    settings.ensure_dirs()
    configure_prefect(settings)  # before anything imports Prefect (flows.*)
    # The loop ends about now, so no row it emits lies in the future of the wall clock.
    now = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("min")
    start = now - pd.Timedelta(hours=hours)
    log(f"Set-up: {services} services, {history_days} days of history, models: {models}")
    setup = set_up(settings, services, history_days, start, models, log)
    log(f"Loop: {hours * 60} cycles ({hours} simulated hours)")
    loop = run_loop(settings, hours, cadence, log)
    log("Scoring: decision log audit, HPA and KEDA replays")
    scored = score(settings, loop, start)
    options = {
        "history_days": history_days,
        **asdict(cadence),
        "max_feature_age_minutes": MAX_FEATURE_AGE_MINUTES,
        "seed": settings.seed,
    }
    return build_record(
        hours=hours,
        loop=loop,
        scored=scored,
        setup=setup,
        models=models,
        options=options,
        bound_mib=bound_mib,
        wall_s=time.perf_counter() - started,
        settings=settings,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--json", type=Path, default=None, help="Write the record here.")
    parser.add_argument("--hours", type=int, default=HOURS, help="Simulated hours.")
    parser.add_argument("--services", type=int, default=SERVICES, help="Services simulated.")
    parser.add_argument(
        "--history-days",
        type=int,
        default=HISTORY_DAYS,
        help="Days of history before the loop (under 8 the weekly features are short).",
    )
    parser.add_argument(
        "--ingest-every", type=int, default=INGEST_EVERY, help="Cycles between ingestions."
    )
    parser.add_argument(
        "--features-every",
        type=int,
        default=FEATURES_EVERY,
        help="Cycles between runs of the features flow's work (0: none).",
    )
    parser.add_argument(
        "--monitor-every",
        type=int,
        default=MONITOR_EVERY,
        help="Cycles between feedback checks (0: none).",
    )
    parser.add_argument(
        "--models",
        choices=("untrained", "rule"),
        default="untrained",
        help="untrained: register an untrained forecaster and a random PPO actor as "
        "champions; rule: none (the engine's fallbacks).",
    )
    parser.add_argument(
        "--rss-bound-mib",
        type=float,
        default=RSS_BOUND_MIB,
        help="Most RSS growth from the end of hour 1 to the end (MiB).",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="An empty state folder to keep (default: a temporary one, removed after).",
    )
    args = parser.parse_args(argv)
    if args.hours < 1 or args.services < 1 or args.history_days < 1:
        parser.error("--hours, --services and --history-days must be >= 1")
    try:
        cadence = Cadence(args.ingest_every, args.features_every, args.monitor_every)
    except ValueError as error:
        parser.error(str(error))

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    kwargs: dict[str, Any] = {
        "hours": args.hours,
        "services": args.services,
        "history_days": args.history_days,
        "cadence": cadence,
        "models": args.models,
        "bound_mib": args.rss_bound_mib,
        "log": log,
    }
    if args.state_dir is not None:
        record = soak(args.state_dir, **kwargs)
    else:
        with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
            record = soak(Path(tmp), **kwargs)
    print(format_table(record))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2, default=str) + "\n")
        print(f"Wrote {args.json}")
    why = failures(record)
    for reason in why:
        print(f"FAILED: {reason}", file=sys.stderr)
    return 1 if why else 0


if __name__ == "__main__":
    raise SystemExit(main())
