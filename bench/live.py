"""The demo's report: what the inference loop did on the simulated cluster, against
HPA and KEDA run on the same traffic.

The demo lets the engine scale the live :class:`~serving.actuators.simulated.SimulatedCluster`
for a few simulated hours (each minute: a job target per service from the online
features, then the cluster runs the minute). Afterwards:

* :func:`replay_baselines` runs HPA and KEDA through the simulator on exactly the
  arrivals the live cluster saw, with the same cluster parameters, initial job count
  and seed, through :func:`models.controller.rollout.run_controller` (the benchmark's
  rollout, so the numbers are comparable with ``bench.control``'s);
* :func:`live_summary` scores the live run (from the cluster's truth log) and the
  replays with the simulator's definitions (DESIGN.md sections 5 and 11);
* :func:`write_live_report` writes ``index.html`` (tables, forecast-vs-actual and
  jobs-vs-demand plots as PNG files beside it) and ``summary.json``;
* :func:`format_live_table` is the summary as plain text for the terminal.

Nothing here reads settings or the environment; paths are passed in.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.controller.base import Controller
from models.controller.hpa import HPAController
from models.controller.keda import KEDAController
from models.controller.rollout import run_controller
from serving.actuators.simulated import META_FILE, SimulatedCluster
from simulator.config import STEP_S, ClusterParams
from simulator.metrics import SimLog, weighted_quantile

BASELINES = ("hpa", "keda")
"""Controllers :func:`replay_baselines` can run, in report order."""

LIVE = "live"
"""Controller label of what the engine did on the live cluster."""

ALL_SERVICES = "*"
"""``service_id`` of the rows over every service."""

HPA_TARGET_UTILIZATION = 0.8
"""HPA's ``averageUtilization`` target: 80 %, the default of autoscaling/v1 and
``kubectl autoscale`` (and :class:`~models.controller.hpa.HPAController`'s)."""

KEDA_TARGET_UTILIZATION = 0.8
"""Utilization the KEDA lag threshold aims at (the same as HPA's, see
:func:`keda_lag_threshold`)."""

KAFKA_UNCOMMITTED_S = 2.5
"""Seconds of traffic a consumer group that keeps up shows as lag: half of Kafka's 5 s
auto-commit interval (the rule ``bench.control`` builds its KEDA thresholds from)."""

SUMMARY_COLUMNS = (
    "service_id",
    "controller",
    "arrivals",
    "cost",
    "job_minutes",
    "sla_compliance_pct",
    "sla_target_pct",
    "meets_sla",
    "late",
    "dropped",
    "p95_latency_s",
    "actions",
    "backlog_end",
)
"""Columns of :func:`live_summary`, followed by one ``cost_vs_<baseline>`` per replay."""

_MINUTE = pd.Timedelta(minutes=1)
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


# --------------------------------------------------------------------------- replay


def keda_lag_threshold(
    params: ClusterParams, utilization: float = KEDA_TARGET_UTILIZATION
) -> np.ndarray:
    """KEDA's ``lagThreshold`` per service that holds the jobs near ``utilization``.

    A group that keeps up shows ``rate * 2.5 s`` of lag (events consumed, not yet
    committed), so ``job_capacity_eps * 2.5 / utilization`` events of lag per job asks
    for as many jobs as the load needs at that utilization: the rule of
    ``bench.control``'s KEDA grid. Kafka's own default (10 events) would ask for about
    six jobs per busy job here, a setting nobody would run.

    Args:
        params: The services.
        utilization: Target utilization in (0, 1].

    Returns:
        Thresholds (S,), events of lag per job.
    """
    if not 0 < utilization <= 1:
        raise ValueError(f"utilization must be in (0, 1], got {utilization}")
    return np.asarray(params.job_capacity_eps * KAFKA_UNCOMMITTED_S / utilization)


def baseline_controller(name: str, params: ClusterParams) -> Controller:
    """A baseline controller with its default settings for the services of ``params``.

    ``bench.control`` calibrates HPA's utilization target and KEDA's lag threshold per
    scenario on a history; the live report does not (the live window has no held-out
    history of its own), so it uses the defaults: HPA at 80 % utilization
    (:data:`HPA_TARGET_UTILIZATION`), KEDA with :func:`keda_lag_threshold` at the same
    80 %, every other knob at the Kubernetes and KEDA defaults (tolerance 0.1, 15 s
    syncs, 300 s scale-down stabilization, 30 s polling, 300 s cooldown).

    Args:
        name: One of :data:`BASELINES`.
        params: The services (KEDA's thresholds scale with their capacity).

    Returns:
        The controller (reset by the rollout).
    """
    if name == "hpa":
        return HPAController(target_utilization=HPA_TARGET_UTILIZATION)
    if name == "keda":
        return KEDAController(lag_threshold=keda_lag_threshold(params))
    raise ValueError(f"unknown baseline {name!r}; expected one of {BASELINES}")


def _minute(value: pd.Timestamp | str) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    if ts.tz is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.floor("min")


def _cluster_seed(cluster: SimulatedCluster) -> int:
    # The cluster exposes no seed property; cluster.json is its documented settings file.
    meta = json.loads((cluster.folder / META_FILE).read_text())
    return int(meta["seed"])


def initial_jobs_at(
    truth: pd.DataFrame, services: Sequence[str], start: pd.Timestamp
) -> np.ndarray:
    """The jobs (running + starting) the live run had going into minute ``start``.

    That is the bounded target of minute ``start - 1`` (crashed jobs restart and stay
    counted); where the truth log has no such minute (``start`` is its first), the
    serving + starting jobs of minute ``start``, which already include the engine's
    decision for that minute.

    Args:
        truth: The cluster's truth log (:data:`~serving.actuators.simulated.TRUTH_COLUMNS`).
        services: Service ids, in simulator order.
        start: First minute of the window.

    Returns:
        Job counts (S,), int64.

    Raises:
        ValueError: If the truth log has neither minute for some service.
    """
    first = _minute(start)
    before = truth[truth["ts"] == first - _MINUTE]
    at = truth[truth["ts"] == first]
    going_in = dict(
        zip(before["service_id"], before["jobs_target_bounded"].to_numpy(np.int64), strict=True)
    )
    billed = at["jobs_serving"].to_numpy(np.int64) + at["jobs_starting"].to_numpy(np.int64)
    held = dict(zip(at["service_id"], billed, strict=True))
    out = np.empty(len(services), dtype=np.int64)
    for i, sid in enumerate(services):
        if sid in going_in:
            out[i] = going_in[sid]
        elif sid in held:
            out[i] = held[sid]
        else:
            raise ValueError(
                f"the truth log has no minute {first} for {sid!r}: replay a window the "
                "live cluster has run"
            )
    return out


WARM_UP_MINUTES = 30
"""Minutes each baseline runs before the scored window (see :func:`replay_baselines`)."""


def replay_baselines(
    cluster: SimulatedCluster,
    start: pd.Timestamp,
    end: pd.Timestamp,
    controllers: Sequence[str] = BASELINES,
    *,
    truth: pd.DataFrame | None = None,
    seed: int | None = None,
) -> dict[str, SimLog]:
    """Run baseline controllers on the traffic the live cluster saw in ``[start, end)``.

    Each controller (default settings, see :func:`baseline_controller`; ``bench.control``
    calibrates them per scenario instead) runs through
    :func:`models.controller.rollout.run_controller`, the benchmark's rollout, on:

    * the same arrivals: :meth:`SimulatedCluster.arrivals_between`, minute for minute
      what the live cluster was fed (checked against its truth log);
    * the same :attr:`SimulatedCluster.params` (capacities, startup, rebalance, queue
      bound, step limit, min/max jobs, prices, failure rate, capacity noise);
    * the same job count going into ``start`` (:func:`initial_jobs_at`);
    * the cluster's seed.

    What differs from the live run, so read small gaps with care:

    * the live cluster may have entered ``start`` with a backlog; the replay starts
      with an empty queue, and all its initial jobs serve at once (no job still
      starting, no rebalance pause in the first minute);
    * each baseline runs :data:`WARM_UP_MINUTES` before the window first (same traffic,
      from the live job count at ``start``) and is scored from ``start`` on, so it
      enters the window in its own steady state, having seen the last minute's load
      (a rollout's first step shows no previous minute, which KEDA reads as idle);
    * the replay charges events still queued at ``end`` that will miss their SLA
      (the simulator's ``finish``), the live truth log only what missed before
      ``end`` (its backlog at ``end``, ``backlog_end`` in :func:`live_summary`, is
      charged in later minutes); the live run's late events in the first minutes may
      include events that arrived before ``start``;
    * random job failures and capacity noise (when configured) draw from a fresh
      generator seeded with the cluster's seed, not from the live cluster's stream,
      which has run the whole history; different job counts draw differently anyway.

    Args:
        cluster: The live simulated cluster.
        start: First minute of the window (naive UTC).
        end: End of the window (exclusive); not after the cluster's clock.
        controllers: Which baselines to run, from :data:`BASELINES`.
        truth: The cluster's truth log, if already read (else read here).
        seed: Seed of the simulator's random streams; None uses the cluster's.

    Returns:
        One episode log per controller, lanes in ``cluster.services`` order, steps the
        minutes of ``[start, end)``.

    Raises:
        ValueError: On an empty window, one the cluster has not run (entirely), an
            unknown controller, or arrivals that differ from the truth log.
    """
    first, stop = _minute(start), _minute(end)
    if stop <= first:
        raise ValueError(f"empty window [{first}, {stop})")
    unknown = [c for c in controllers if c not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; expected some of {BASELINES}")
    if first < cluster.live_start or stop > cluster.clock:
        raise ValueError(
            f"window [{first}, {stop}) is not inside the live run "
            f"[{cluster.live_start}, {cluster.clock})"
        )
    for a, b in cluster.skipped:
        if a < stop and b > first:
            raise ValueError(
                f"the cluster skipped [{a}, {b}) (a catch-up longer than its limit), so "
                f"[{first}, {stop}) was not all run; replay a window without the gap"
            )
    truth = cluster.truth() if truth is None else truth
    services = cluster.services
    n = int((stop - first) // _MINUTE)
    frame = cluster.arrivals_between(first, stop)
    arrivals = (
        frame.pivot(index="ts", columns="service_id", values="events_in")
        .reindex(columns=list(services))
        .to_numpy(dtype=np.float64)
    )
    window = truth[(truth["ts"] >= first) & (truth["ts"] < stop)]
    seen = (
        window.pivot(index="ts", columns="service_id", values="arrivals")
        .reindex(index=pd.date_range(first, periods=n, freq="min"), columns=list(services))
        .to_numpy(dtype=np.float64)
    )
    # A cluster rebuilt with other settings in the same folder would replay other traffic.
    if not np.array_equal(arrivals, seen):
        raise ValueError(
            f"the cluster's traffic for [{first}, {stop}) differs from its truth log; "
            "was the cluster re-bootstrapped after this run?"
        )
    jobs = initial_jobs_at(truth, services, first)
    run_seed = _cluster_seed(cluster) if seed is None else seed
    # Warm-up: each baseline first runs the minutes before the window on the same traffic,
    # so it enters the window having seen the last minute's load (at step 0 a rollout's
    # controller sees none, and KEDA reads that as an idle trigger). Only the window is
    # scored; the warm-up starts from the live run's job count at ``start``.
    warm = min(WARM_UP_MINUTES, int((first - cluster.history_start) // _MINUTE))
    before = cluster.arrivals_between(first - warm * _MINUTE, first)
    lead = (
        before.pivot(index="ts", columns="service_id", values="events_in")
        .reindex(columns=list(services))
        .to_numpy(dtype=np.float64)
        if warm
        else np.zeros((0, len(services)))
    )
    return {
        name: _drop_warm_up(
            run_controller(
                cluster.params,
                np.vstack([lead, arrivals]),
                baseline_controller(name, cluster.params),
                jobs,
                start=first - warm * _MINUTE,
                seed=run_seed,
            ),
            warm,
        )
        for name in controllers
    }


def _drop_warm_up(log: SimLog, steps: int) -> SimLog:
    """The log from step ``steps`` on, starting from the state the warm-up left."""
    if steps == 0:
        return log
    from dataclasses import fields, replace

    from simulator.cluster import StepRecord

    tail = {f.name: getattr(log, f.name)[steps:] for f in fields(StepRecord)}
    return replace(
        log,
        start=log.start + steps * _MINUTE,
        initial_jobs=log.target[steps - 1].copy(),
        initial_queue=log.queue[steps - 1].copy(),
        **tail,
    )


# --------------------------------------------------------------------------- summary


def _latest_profiles(profiles: pd.DataFrame) -> pd.DataFrame:
    """One profile row per service: the newest (profiles are valid from ``ts``)."""
    if "ts" in profiles.columns:
        profiles = profiles.sort_values("ts", kind="stable")
    return profiles.drop_duplicates("service_id", keep="last").set_index("service_id")


def _window(
    truth: pd.DataFrame, replays: Mapping[str, SimLog]
) -> tuple[pd.Timestamp, pd.Timestamp, tuple[str, ...]]:
    """``(start, end, services)`` the report covers: the replays' window, or the truth's."""
    if replays:
        logs = list(replays.values())
        ref = logs[0]
        for name, log in replays.items():
            if (
                log.start != ref.start
                or log.n_steps != ref.n_steps
                or log.params.service_ids != ref.params.service_ids
            ):
                raise ValueError(f"replay {name!r} covers another window or other services")
        return ref.start, ref.start + ref.n_steps * _MINUTE, ref.params.service_ids
    if truth.empty:
        raise ValueError("the truth log is empty and there is no replay: nothing to report")
    services = tuple(dict.fromkeys(truth["service_id"].astype(str)))
    return truth["ts"].min(), truth["ts"].max() + _MINUTE, services


def _live_frame(
    truth: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp, services: Sequence[str]
) -> pd.DataFrame:
    """Truth rows of ``[start, end)`` with the live run's target changes, checked complete."""
    frame = truth.sort_values(["service_id", "ts"], kind="stable")
    bounded = frame["jobs_target_bounded"].to_numpy(dtype=np.int64)
    same_service = frame["service_id"].to_numpy() == frame["service_id"].shift().to_numpy()
    # Changes against the previous logged minute; the first logged minute has no
    # previous one, so it counts no action (the replays compare with their start count).
    changed = np.zeros(len(frame), dtype=bool)
    changed[1:] = (bounded[1:] != bounded[:-1]) & same_service[1:]
    frame = frame.assign(changed=changed)
    frame = frame[(frame["ts"] >= start) & (frame["ts"] < end)]
    n = int((end - start) // _MINUTE)
    counts = frame.groupby("service_id")["ts"].nunique()
    short = [sid for sid in services if counts.get(sid, 0) != n]
    if short:
        raise ValueError(
            f"the truth log does not cover every minute of [{start}, {end}) for {short}"
        )
    return frame[frame["service_id"].isin(list(services))]


def _pct(missed: float, arrivals: float) -> float:
    # The simulator's definition: no arrivals, nothing missed.
    return 100.0 * (1.0 - missed / arrivals) if arrivals > 0 else 100.0


def _pooled_p95(log: SimLog) -> float:
    """p95 latency of every accepted event of every service of a log, seconds."""
    waits, weights = [], []
    for i in range(log.params.n_services):
        _, wait, weight = log.waits(i)
        waits.append(wait + log.params.processing_time_s[i])
        weights.append(weight)
    w = np.concatenate(weights)
    if w.sum() == 0:
        return 0.0
    return weighted_quantile(np.concatenate(waits), w, 0.95)


def live_summary(
    truth: pd.DataFrame, replays: Mapping[str, SimLog], profiles: pd.DataFrame
) -> pd.DataFrame:
    """Cost, SLA and actions of the live run and of each replay, per service and overall.

    Definitions (DESIGN.md sections 5 and 11, as :func:`simulator.metrics.summarize`):
    cost = billed job-minutes (starting + serving, draining included) x
    ``cost_per_job_hour / 60``; SLA compliance = 1 - (late + dropped) / arrivals, in
    percent. The live run's figures come from the truth log (its ``cost``, ``late``,
    ``dropped`` and ``arrivals`` columns) over the replays' window (all of the truth
    log without replays); its p95 latency is NaN (the truth log keeps no per-event
    waits) and its actions are the minutes whose bounded target changed from the
    minute before. The replays' late events include those still queued at the end that
    will miss (see :func:`replay_baselines`). The ``*`` rows pool every service: SLA
    over all events, ``meets_sla`` when every service met its own ``sla_target``.

    Args:
        truth: The cluster's truth log (:data:`~serving.actuators.simulated.TRUTH_COLUMNS`).
        replays: Baseline logs from :func:`replay_baselines` (may be empty).
        profiles: ``service_profiles`` rows (the newest per service is used).

    Returns:
        :data:`SUMMARY_COLUMNS` plus ``cost_vs_<name>`` (cost over that baseline's
        cost on the same service, NaN when that is 0) per replay; rows per service
        (``live`` then the replays), then the ``*`` rows.

    Raises:
        ValueError: If the truth log misses minutes of the window or a profile is missing.
    """
    start, end, services = _window(truth, replays)
    live = _live_frame(truth, start, end, services)
    prof = _latest_profiles(profiles)
    missing = [sid for sid in services if sid not in prof.index]
    if missing:
        raise ValueError(f"no service profile for {missing}")
    target = prof.loc[list(services), "sla_target"].to_numpy(dtype=np.float64)

    by = live.groupby("service_id")
    per: dict[str, dict[str, np.ndarray]] = {}

    def col(name: str) -> np.ndarray:
        return by[name].sum().reindex(list(services)).to_numpy(dtype=np.float64)

    last = live.sort_values("ts").groupby("service_id").last().reindex(list(services))
    per[LIVE] = {
        "arrivals": col("arrivals"),
        "cost": col("cost"),
        "job_minutes": col("jobs_serving") + col("jobs_starting"),
        "late": col("late"),
        "dropped": col("dropped"),
        "p95_latency_s": np.full(len(services), np.nan),
        "actions": col("changed"),
        "backlog_end": last["queue"].to_numpy(dtype=np.float64),
    }
    p95_all = {LIVE: math.nan}
    for name, log in replays.items():
        per[name] = {
            "arrivals": log.arrivals.sum(axis=0),
            "cost": log.total_cost(),
            "job_minutes": log.billed.sum(axis=0).astype(np.float64),
            "late": log.late.sum(axis=0) + log.late_after_horizon,
            "dropped": log.dropped.sum(axis=0),
            "p95_latency_s": np.array(
                [log.latency_percentile(i, 0.95) for i in range(len(services))]
            ),
            "actions": log.actions().astype(np.float64),
            "backlog_end": log.queue[-1].astype(np.float64),
        }
        p95_all[name] = _pooled_p95(log)

    rows: list[dict[str, Any]] = []
    for i, sid in enumerate(services):
        for name, m in per.items():
            missed = m["late"][i] + m["dropped"][i]
            sla = _pct(missed, m["arrivals"][i])
            rows.append(
                {
                    "service_id": sid,
                    "controller": name,
                    "arrivals": float(m["arrivals"][i]),
                    "cost": float(m["cost"][i]),
                    "job_minutes": float(m["job_minutes"][i]),
                    "sla_compliance_pct": sla,
                    "sla_target_pct": 100.0 * float(target[i]),
                    "meets_sla": bool(sla >= 100.0 * target[i]),
                    "late": float(m["late"][i]),
                    "dropped": float(m["dropped"][i]),
                    "p95_latency_s": float(m["p95_latency_s"][i]),
                    "actions": int(m["actions"][i]),
                    "backlog_end": float(m["backlog_end"][i]),
                }
            )
    met = {(r["service_id"], r["controller"]): r["meets_sla"] for r in rows}
    for name, m in per.items():
        arrivals = float(m["arrivals"].sum())
        rows.append(
            {
                "service_id": ALL_SERVICES,
                "controller": name,
                "arrivals": arrivals,
                "cost": float(m["cost"].sum()),
                "job_minutes": float(m["job_minutes"].sum()),
                "sla_compliance_pct": _pct(float((m["late"] + m["dropped"]).sum()), arrivals),
                "sla_target_pct": math.nan,
                "meets_sla": all(met[(sid, name)] for sid in services),
                "late": float(m["late"].sum()),
                "dropped": float(m["dropped"].sum()),
                "p95_latency_s": float(p95_all[name]),
                "actions": int(m["actions"].sum()),
                "backlog_end": float(m["backlog_end"].sum()),
            }
        )
    out = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    cost_of = {(r["service_id"], r["controller"]): r["cost"] for r in rows}
    for name in replays:
        base = np.array([cost_of[(sid, name)] for sid in out["service_id"]])
        with np.errstate(divide="ignore", invalid="ignore"):
            out[f"cost_vs_{name}"] = np.where(
                base > 0, out["cost"] / np.where(base > 0, base, 1), np.nan
            )
    return out


def format_live_table(summary: pd.DataFrame) -> str:
    """The summary as a plain-text table for the terminal.

    Args:
        summary: From :func:`live_summary`.

    Returns:
        The table, one line per row, with a header.
    """
    ratios = [c for c in summary.columns if c.startswith("cost_vs_")]
    head = (
        f"{'service':<16} {'controller':<10} {'cost':>9} {'SLA %':>8} {'target %':>8} "
        f"{'met':>4} {'p95 lat s':>9} {'actions':>7} {'backlog':>9}"
        + "".join(f" {'cost/' + c.removeprefix('cost_vs_'):>10}" for c in ratios)
    )
    lines = [head, "-" * len(head)]

    def num(value: float, fmt: str, width: int) -> str:
        return f"{value:>{width}{fmt}}" if np.isfinite(value) else f"{'-':>{width}}"

    for row in summary.to_dict(orient="records"):
        lines.append(
            f"{row['service_id']:<16} {row['controller']:<10} {row['cost']:>9.3f} "
            f"{row['sla_compliance_pct']:>8.3f} {num(row['sla_target_pct'], '.1f', 8)} "
            f"{'yes' if row['meets_sla'] else 'NO':>4} {num(row['p95_latency_s'], '.1f', 9)} "
            f"{row['actions']:>7d} {row['backlog_end']:>9.0f}"
            + "".join(f" {num(row[c], '.3f', 10)}" for c in ratios)
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- report


def _decisions_in(decisions: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """Decisions for the minutes of ``[start, end)``, the last one per service and minute."""
    if decisions.empty:
        return decisions
    frame = decisions.assign(ts=pd.to_datetime(decisions["ts"]))
    frame = frame[(frame["ts"] >= start) & (frame["ts"] < end)]
    return frame.drop_duplicates(["service_id", "ts"], keep="last")


def _label(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return "none"
    return str(value)


def decided_by(decisions: pd.DataFrame) -> list[dict[str, Any]]:
    """Which controller and model versions decided, with how many decisions each.

    Args:
        decisions: ``scaling_decisions`` rows.

    Returns:
        ``{controller, controller_version, forecaster_version, decisions}`` per
        combination, most decisions first; missing versions read ``"none"``.
    """
    if decisions.empty:
        return []
    keys = ("controller", "controller_version", "forecaster_version")
    frame = pd.DataFrame({k: decisions[k].map(_label) if k in decisions else "none" for k in keys})
    counts = frame.value_counts(list(keys), sort=True).reset_index(name="decisions")
    return [
        {str(k): (int(v) if k == "decisions" else str(v)) for k, v in rec.items()}
        for rec in counts.to_dict(orient="records")
    ]


def shield_changes(decisions: pd.DataFrame) -> dict[str, int]:
    """How many decisions the safety shield changed, by reason string.

    Args:
        decisions: ``scaling_decisions`` rows.

    Returns:
        Reason -> count, most frequent first (empty when the shield changed nothing).
    """
    if decisions.empty or "shield_reason" not in decisions:
        return {}
    reasons = decisions["shield_reason"].fillna("").astype(str)
    counts = reasons[reasons != ""].value_counts()
    return {str(k): int(v) for k, v in counts.items()}


def forecast_scores(
    truth: pd.DataFrame, decisions: pd.DataFrame, services: Sequence[str]
) -> pd.DataFrame:
    """One-minute-ahead forecast quality per service on the minutes that had a forecast.

    Metrics as DESIGN.md section 11: coverage of ``[q10, q90]`` and wQL over
    ``{0.1, 0.5, 0.9}``; plus the mean absolute error of the median.

    Args:
        truth: Truth rows of the window.
        decisions: Decisions of the window (``forecast_q10/q50/q90`` of minute ``ts``).
        services: Service ids.

    Returns:
        ``service_id, minutes, forecast_minutes, coverage_80_pct, mae, wql`` per service.
    """
    quantiles = (("forecast_q10", 0.1), ("forecast_q50", 0.5), ("forecast_q90", 0.9))
    rows = []
    for sid in services:
        actual = truth[truth["service_id"] == sid].set_index("ts")["arrivals"].astype(float)
        d = decisions[decisions["service_id"] == sid].set_index("ts") if len(decisions) else None
        fc = {
            c: (
                pd.to_numeric(d[c], errors="coerce").reindex(actual.index)
                if d is not None and c in d
                else pd.Series(np.nan, index=actual.index)
            )
            for c, _ in quantiles
        }
        ok = np.isfinite(np.column_stack([fc[c].to_numpy() for c, _ in quantiles])).all(axis=1)
        y = actual.to_numpy()[ok]
        row: dict[str, Any] = {
            "service_id": sid,
            "minutes": len(actual),
            "forecast_minutes": int(ok.sum()),
        }
        if ok.any():
            lo, med, hi = (fc[c].to_numpy()[ok] for c, _ in quantiles)
            pinball = sum(
                np.maximum(
                    q * (y - fc[c].to_numpy()[ok]), (q - 1) * (y - fc[c].to_numpy()[ok])
                ).sum()
                for c, q in quantiles
            )
            scale = np.abs(y).sum()
            row |= {
                "coverage_80_pct": 100.0 * float(((y >= lo) & (y <= hi)).mean()),
                "mae": float(np.abs(y - med).mean()),
                "wql": float(2.0 * pinball / (3.0 * scale)) if scale > 0 else math.nan,
            }
        else:
            row |= {"coverage_80_pct": math.nan, "mae": math.nan, "wql": math.nan}
        rows.append(row)
    return pd.DataFrame(rows)


def _file_stem(index: int, service: str) -> str:
    # Service ids may hold characters a file name or a URL should not.
    return f"{index:02d}-{_SAFE_NAME.sub('_', service) or 'service'}"


def plot_forecast(
    service: str,
    truth: pd.DataFrame,
    decisions: pd.DataFrame,
    path: Path,
) -> Path:
    """Actual events per minute against the engine's one-minute-ahead forecast.

    Minutes without a forecast (the decision had none, or there was no decision) are
    gaps in the median and the band, not zeros.

    Args:
        service: The service id.
        truth: Truth rows of the window.
        decisions: Decisions of the window.
        path: PNG to write.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    actual = truth[truth["service_id"] == service].set_index("ts")["arrivals"].sort_index()
    d = decisions[decisions["service_id"] == service].set_index("ts") if len(decisions) else None

    def quantile(column: str) -> np.ndarray:
        if d is None or column not in d:
            return np.full(len(actual), np.nan)
        return pd.to_numeric(d[column], errors="coerce").reindex(actual.index).to_numpy(float)

    lo, med, hi = quantile("forecast_q10"), quantile("forecast_q50"), quantile("forecast_q90")
    fig, ax = plt.subplots(figsize=(12, 3.2))
    ts = actual.index
    band = np.isfinite(lo) & np.isfinite(hi)
    ax.fill_between(ts, lo, hi, where=band, color="C0", alpha=0.25, lw=0, label="forecast q10-q90")
    ax.plot(ts, med, color="C0", lw=1.0, label="forecast median")
    ax.plot(ts, actual.to_numpy(float), color="k", lw=0.8, label="actual events")
    ax.set_ylabel("events per minute")
    ax.set_title(
        f"{service}: events per minute, actual vs one-minute-ahead forecast",
        loc="left",
        fontsize=10,
    )
    return _save(fig, ax, path)


def plot_jobs(
    service: str,
    truth: pd.DataFrame,
    replays: Mapping[str, SimLog],
    job_capacity_eps: float,
    path: Path,
) -> Path:
    """Demand in jobs against the live run's jobs and target and the baselines' jobs.

    Demand is the jobs the minute's arrivals need at full speed:
    ``arrivals / (job_capacity_eps * 60)``.

    Args:
        service: The service id.
        truth: Truth rows of the window.
        replays: Baseline logs of the same window.
        job_capacity_eps: Events per second one job serves.
        path: PNG to write.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    rows = truth[truth["service_id"] == service].sort_values("ts")
    ts = pd.DatetimeIndex(rows["ts"])
    fig, ax = plt.subplots(figsize=(12, 3.2))
    demand = rows["arrivals"].to_numpy(float) / (job_capacity_eps * STEP_S)
    ax.plot(ts, demand, color="0.55", lw=0.8, label="demand (jobs needed)")
    ax.step(ts, rows["jobs_serving"], where="post", color="k", lw=1.2, label="live serving jobs")
    ax.step(ts, rows["jobs_target"], where="post", color="k", lw=0.8, ls="--", label="live target")
    for k, (name, log) in enumerate(replays.items()):
        lane = log.params.service_ids.index(service)
        ax.step(
            log.timestamps,
            log.serving[:, lane],
            where="post",
            color=f"C{k + 1}",
            lw=0.9,
            alpha=0.85,
            label=f"{name} serving jobs",
        )
    ax.set_ylabel("jobs")
    ax.set_title(f"{service}: jobs vs demand", loc="left", fontsize=10)
    return _save(fig, ax, path)


def _save(fig: Any, ax: Any, path: Path) -> Path:
    """Legend above the plot, dates slanted, saved as PNG; the figure is closed."""
    import matplotlib.pyplot as plt

    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=8, ncol=5, frameon=False)
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _jsonable(value: Any) -> Any:
    """Plain JSON values: NaN and infinities become null (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value


def _html_table(frame: pd.DataFrame) -> str:
    def fmt(value: Any) -> str:
        if isinstance(value, bool | np.bool_):
            return "yes" if value else "no"
        if isinstance(value, float | np.floating):
            return "-" if not np.isfinite(value) else f"{value:,.3f}".rstrip("0").rstrip(".")
        return html.escape(str(value))

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = (
    "body{font-family:sans-serif;margin:1.5em;max-width:1200px}"
    "table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0 1em}"
    "th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}"
    "th:first-child,td:first-child,th:nth-child(2),td:nth-child(2){text-align:left}"
    "img{width:100%;margin:0.3em 0}"
)


def write_live_report(
    truth: pd.DataFrame,
    decisions: pd.DataFrame,
    replays: Mapping[str, SimLog],
    profiles: pd.DataFrame,
    out_dir: Path,
    title: str = "Live run: engine vs HPA and KEDA",
) -> Path:
    """Write the live run's report: ``index.html``, its PNGs and ``summary.json``.

    The page (self-contained but for the PNG files beside it) states the window, which
    controller and model versions decided, how many decisions the safety shield
    changed and why, the :func:`live_summary` table, the forecast scores, and per
    service two plots: actual events vs the one-minute-ahead forecast (median and
    q10-q90 band) and demand in jobs vs the live run's jobs and target and the
    baselines' jobs.

    Args:
        truth: The cluster's truth log.
        decisions: ``scaling_decisions`` rows of the run (``ts`` = the minute decided
            for; its forecasts are of that minute's events).
        replays: Baseline logs from :func:`replay_baselines` (they set the window).
        profiles: ``service_profiles`` rows.
        out_dir: Folder to write into (created if missing).
        title: Page title.

    Returns:
        The path of ``index.html``.
    """
    start, end, services = _window(truth, replays)
    summary = live_summary(truth, replays, profiles)
    window = _live_frame(truth, start, end, services)
    chosen = _decisions_in(decisions, start, end)
    who = decided_by(chosen)
    shield = shield_changes(chosen)
    scores = forecast_scores(window, chosen, services)
    prof = _latest_profiles(profiles)

    capacity = dict(
        zip(prof.index.astype(str), prof["job_capacity_eps"].to_numpy(np.float64), strict=True)
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images: dict[str, tuple[str, str]] = {}
    for i, sid in enumerate(services):
        stem = _file_stem(i, sid)
        fc = plot_forecast(sid, window, chosen, out_dir / f"{stem}-forecast.png")
        jobs = plot_jobs(
            sid,
            window,
            replays,
            capacity[sid],
            out_dir / f"{stem}-jobs.png",
        )
        images[sid] = (fc.name, jobs.name)

    minutes = int((end - start) // _MINUTE)
    if who:
        decided_text = "; ".join(
            f"{w['controller']} (controller version {w['controller_version']}, "
            f"forecaster version {w['forecaster_version']}): {w['decisions']} decisions"
            for w in who
        )
    else:
        decided_text = "no decisions recorded for this window"
    changed = sum(shield.values())
    n_decisions = len(chosen)
    shield_text = f"The safety shield changed {changed} of {n_decisions} decisions" + (
        ": " + ", ".join(f"{html.escape(k)} {v}" for k, v in shield.items()) if shield else ""
    )
    baselines = ", ".join(replays) or "none"
    parts = [
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Window {start} to {end} ({minutes} minutes, {len(services)} services). "
        f"Decided by: {html.escape(decided_text)}. {shield_text}.</p>",
        f"<p>Baselines ({html.escape(baselines)}) replayed through the simulator on the same "
        "arrivals, cluster parameters, initial job count and seed, with their default "
        "settings (HPA at 80 % utilization, KEDA's lag threshold for 80 %; the benchmark "
        "calibrates them instead). They start with an empty queue and are charged for "
        "events still queued at the end that will miss; the live run is charged for what "
        "missed before the end (its backlog then is <em>backlog_end</em>). Live p95 "
        "latency is not logged (-).</p>",
        "<h2>Summary</h2>",
        _html_table(summary),
        "<h2>Forecasts (one minute ahead)</h2>",
        _html_table(scores),
    ]
    for sid in services:
        fc_name, jobs_name = images[sid]
        parts.append(
            f"<h2>{html.escape(sid)}</h2>"
            f"<img src='{html.escape(fc_name)}' alt='{html.escape(sid)} forecast vs actual'>"
            f"<img src='{html.escape(jobs_name)}' alt='{html.escape(sid)} jobs vs demand'>"
        )
    index = out_dir / "index.html"
    index.write_text("\n".join(parts) + "\n")

    payload = {
        "title": title,
        "start": start,
        "end": end,
        "minutes": minutes,
        "services": list(services),
        "baselines": list(replays),
        "decided_by": who,
        "decisions": n_decisions,
        "shield": {"changed": changed, "by_reason": shield},
        "summary": summary.to_dict(orient="records"),
        "forecast": scores.to_dict(orient="records"),
        "images": {sid: list(names) for sid, names in images.items()},
    }
    (out_dir / "summary.json").write_text(
        json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n"
    )
    return index
