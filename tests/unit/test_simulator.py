"""Behaviour of the cluster simulator (DESIGN.md section 5) and its metric frames.

The latency cases are computed by hand in the comments; the fluid FIFO is also checked
against an independent brute-force simulation on a fine time grid.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from simulator.cluster import ClusterSimulator, StepRecord
from simulator.config import STEP_S, ClusterParams, ServiceConfig
from simulator.metrics import SimLog, event_metrics, summarize, system_metrics
from simulator.queueing import history_steps
from simulator.run import check_arrivals, simulate_schedule, simulate_totals

EVENT_COLUMNS = [
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
SYSTEM_COLUMNS = [
    "service_id",
    "ts",
    "jobs_running",
    "jobs_starting",
    "utilization",
    "cpu_pct",
    "mem_pct",
    "net_mbps",
    "throughput_eps",
    "job_failures",
]

# A service that is easy to reason about by hand: one event/s per job (processing
# time 1 s), jobs serve at once, no rebalance pause, a queue that never overflows.
SIMPLE = {
    "job_capacity_eps": 1.0,
    "job_startup_s": 0.0,
    "rebalance_s": 0.0,
    "queue_max_events": 1e9,
    "min_jobs": 0,
    "max_jobs": 10,
    "max_step": 10,
}


def one_service(**overrides: object) -> ClusterParams:
    return ClusterParams.from_services([ServiceConfig(**{**SIMPLE, **overrides})])  # type: ignore[arg-type]


def run_one(
    arrivals: list[float],
    targets: list[int] | int,
    initial: int,
    seed: int = 0,
    **overrides: object,
) -> SimLog:
    """Simulate one service with the SIMPLE settings plus ``overrides``."""
    params = one_service(**overrides)
    arr = np.asarray(arrivals, dtype=np.float64)[:, None]
    tgt = np.broadcast_to(np.asarray(targets, dtype=np.int64).reshape(-1, 1), arr.shape)
    return simulate_schedule(params, arr, tgt, np.array([initial]), seed=seed)


def col(log: SimLog, name: str) -> np.ndarray:
    return np.asarray(getattr(log, name)[:, 0])


def mean_wait(log: SimLog) -> float:
    _, wait, weight = log.waits(0)
    return float(np.average(wait, weights=weight))


def random_services(rng: np.random.Generator, n: int) -> list[ServiceConfig]:
    """Services with random startup, pause, queue bound, failures and noise."""
    out = []
    for i in range(n):
        lo = int(rng.integers(0, 3))
        out.append(
            ServiceConfig(
                service_id=f"s{i}",
                job_capacity_eps=float(rng.choice([0.5, 1.0, 7.5, 40.0])),
                job_startup_s=float(rng.choice([0, 30, 60, 90, 150, 240])),
                rebalance_s=float(rng.uniform(0, 30)),
                queue_max_events=float(rng.choice([50.0, 500.0, 5_000.0, 1e9])),
                sla_latency_s=float(rng.choice([11, 31, 61, 91, 150, 400])),
                min_jobs=lo,
                max_jobs=lo + int(rng.integers(1, 8)),
                max_step=int(rng.integers(1, 4)),
                job_failure_rate_per_hour=float(rng.choice([0.0, 2.0, 20.0])),
                capacity_noise_cv=float(rng.choice([0.0, 0.3])),
            )
        )
    return out


def random_arrivals(rng: np.random.Generator, params: ClusterParams, n_steps: int) -> np.ndarray:
    """Bursty arrivals around a few jobs' worth of capacity, with idle stretches."""
    scale = params.job_step_capacity * (params.min_jobs + params.max_jobs) / 2
    base = rng.gamma(2.0, 0.6, size=(n_steps, params.n_services)) * scale
    idle = rng.random((n_steps, params.n_services)) < 0.15
    return np.where(idle, 0.0, base)


# ------------------------------------------------------------------ conservation


def test_events_are_conserved_and_never_exceed_capacity() -> None:
    rng = np.random.default_rng(7)
    services = random_services(rng, 40)
    params = ClusterParams.from_services(services)
    n_steps = 150
    arrivals = random_arrivals(rng, params, n_steps)
    targets = rng.integers(0, 10, size=(n_steps, params.n_services))
    log = simulate_schedule(params, arrivals, targets, rng.integers(0, 5, 40), seed=3)

    total = arrivals.sum(axis=0)
    accounted = log.processed.sum(axis=0) + log.queue[-1] + log.dropped.sum(axis=0)
    np.testing.assert_allclose(accounted, total, rtol=1e-6, atol=1e-9)
    # Step by step too: the queue moves by accepted minus processed.
    prev = np.vstack([np.zeros((1, 40)), log.queue[:-1]])
    np.testing.assert_allclose(log.queue, prev + log.accepted - log.processed, atol=1e-6)
    np.testing.assert_allclose(log.accepted, arrivals - log.dropped, atol=1e-9)
    assert np.all(log.processed <= log.capacity + 1e-9)
    assert np.all(log.queue >= -1e-9)
    assert np.all(log.queue <= params.queue_max_events + 1e-6)
    assert np.all(log.dropped >= 0) and np.all(log.late >= 0)
    # Nothing misses twice: at most every event misses.
    assert np.all(log.missed() <= total + 1e-6)
    # The random setup really exercised drops, failures, noise and pauses.
    assert log.dropped.sum() > 0 and log.failed.sum() > 0 and log.paused.any()


def test_totals_match_the_full_log() -> None:
    rng = np.random.default_rng(8)
    params = ClusterParams.from_services(random_services(rng, 12))
    arrivals = random_arrivals(rng, params, 80)
    targets = rng.integers(0, 8, size=(80, 12))
    initial = rng.integers(0, 5, 12)
    log = simulate_schedule(params, arrivals, targets, initial, seed=5)
    totals = simulate_totals(params, arrivals, targets, initial, seed=5)
    np.testing.assert_allclose(totals.missed, log.missed(), rtol=1e-12)
    np.testing.assert_allclose(totals.cost, log.total_cost(), rtol=1e-12)
    np.testing.assert_allclose(totals.arrivals, arrivals.sum(axis=0))
    assert totals.steps == 80


# ------------------------------------------------------------------ latency by hand


def test_latency_of_one_burst_served_at_one_event_per_second() -> None:
    # 120 events arrive uniformly over the first minute (2/s) and leave at 1/s, so the
    # event arriving at u leaves at 2u and waits u = x/2 (x = its position). With a
    # wait budget of 31 - 1 = 30 s, the events x > 60 are late: exactly 60 of 120.
    log = run_one([120, 0, 0, 0], 1, initial=1, sla_latency_s=31.0)
    assert log.missed()[0] == pytest.approx(60.0, abs=1e-9)
    assert log.sla_compliance()[0] == pytest.approx(0.5, abs=1e-12)
    np.testing.assert_allclose(col(log, "processed"), [60, 60, 0, 0], atol=1e-9)
    # Waits are uniform on [0, 60]: p95 wait 57 s, plus 1 s of processing.
    assert log.latency_percentile(0, 0.95) == pytest.approx(58.0, abs=1e-9)
    assert mean_wait(log) == pytest.approx(30.0, abs=1e-9)
    summary = summarize(log)[0]
    assert summary.missed_events == pytest.approx(60.0, abs=1e-9)
    assert summary.p95_latency_s == pytest.approx(58.0, abs=1e-9)
    assert summary.dropped_events == 0.0
    # The late events are counted in the step where their deadline passes: x in
    # (60, 120] arrived at (30, 60] s and turn late at (60, 90] s, all in step 1.
    np.testing.assert_allclose(col(log, "late"), [0, 60, 0, 0], atol=1e-9)


def test_latency_with_a_rebalance_pause() -> None:
    # Step 1: 60 events at 1/s; one job serves, a second joins at step 1 (startup 0),
    # which pauses consumption for 10 s. Then 2 jobs serve at 2/s: dep(u) = 2(u - 10)
    # reaches the arrivals u at u = 20. The event arriving at v <= 20 leaves at
    # 10 + v/2 and waits 10 - v/2; later ones do not wait.
    # Budget 6 - 1 = 5 s: the events v < 10 are late, 10 of 60.
    log = run_one([0, 60, 0, 0], [1, 2, 2, 2], initial=1, sla_latency_s=6.0, rebalance_s=10.0)
    np.testing.assert_array_equal(col(log, "paused"), [False, True, False, False])
    np.testing.assert_array_equal(col(log, "serving"), [1, 2, 2, 2])
    assert log.missed()[0] == pytest.approx(10.0, abs=1e-9)
    # Capacity of the paused step: 2 jobs * 1/s * (60 - 10) s.
    assert col(log, "capacity")[1] == pytest.approx(100.0)
    # Mean wait: a third of the events wait 5 s on average -> 5/3 s (the waits are
    # sampled 16 times per step, so a kink inside the step costs a little accuracy).
    assert mean_wait(log) == pytest.approx(5.0 / 3.0, rel=0.01)
    # p95: the 3 events with the longest waits arrived at v < 6, the 95th percentile
    # event at v = 3, waiting 8.5 s; plus 1 s processing.
    assert log.latency_percentile(0, 0.95) == pytest.approx(9.5, abs=1e-9)

    # Without the pause nobody waits and nobody is late.
    calm = run_one([0, 60, 0, 0], [1, 2, 2, 2], initial=1, sla_latency_s=6.0, rebalance_s=0.0)
    assert calm.missed()[0] == pytest.approx(0.0, abs=1e-9)
    assert mean_wait(calm) == pytest.approx(0.0, abs=1e-9)


def test_a_full_queue_drops_and_drops_count_as_misses() -> None:
    # 120 events in a minute, 1 job at 1/s, queue bound 30: 60 are served, 60 would
    # stay but only 30 fit, so 30 are dropped. The 90 accepted events come at 1.5/s and
    # leave at 1/s: event x arrives at x/1.5 and leaves at x, waiting x/3. With a
    # budget of 21 - 1 = 20 s, x > 60 are late: 30. Missed = 30 dropped + 30 late.
    log = run_one([120, 0, 0], 1, initial=1, sla_latency_s=21.0, queue_max_events=30.0)
    np.testing.assert_allclose(col(log, "dropped"), [30, 0, 0], atol=1e-9)
    np.testing.assert_allclose(col(log, "accepted"), [90, 0, 0], atol=1e-9)
    np.testing.assert_allclose(col(log, "queue"), [30, 0, 0], atol=1e-9)
    assert log.late.sum() == pytest.approx(30.0, abs=1e-9)
    assert log.missed()[0] == pytest.approx(60.0, abs=1e-9)
    assert log.sla_compliance()[0] == pytest.approx(0.5, abs=1e-12)
    # Latency percentiles are over accepted events: waits uniform on [0, 30].
    assert log.latency_percentile(0, 0.95) == pytest.approx(28.5 + 1.0, abs=1e-9)
    frame = event_metrics(log)
    assert frame["events_dropped"].tolist() == pytest.approx([30, 0, 0])
    assert frame["error_rate"].tolist() == pytest.approx([0.25, 0, 0])


def brute_force_late(log: SimLog, dt: float = 0.01, n_events: int = 40_000) -> float:
    """Late events of service 0 by stepping the fluid FIFO on a fine time grid.

    Accepted events arrive at a constant rate within each step; no event leaves during
    the pause at the start of a step, then the serving jobs take events at their rate
    while there are any. After the horizon the last serving jobs keep going with no
    arrivals. An event is late when it leaves more than the wait budget after it came,
    or never leaves.
    """
    p = log.params
    per_step = round(STEP_S / dt)
    budget = float(p.wait_budget_s[0])
    tail = history_steps(budget) + 1
    acc = np.concatenate([log.accepted[:, 0], np.zeros(tail)])
    rate = np.concatenate(
        [log.rate[:, 0], np.full(tail, log.serving[-1, 0] * p.job_capacity_eps[0])]
    )
    pause = np.concatenate([log.pause_s[:, 0], np.zeros(tail)])
    n_total = len(acc) * per_step
    arr_curve = np.zeros(n_total + 1)
    dep_curve = np.zeros(n_total + 1)
    a = d = 0.0
    k = 0
    for step in range(len(acc)):
        inflow = acc[step] / per_step
        pause_ticks = round(pause[step] / dt)
        for tick in range(per_step):
            a += inflow
            if tick >= pause_ticks:
                d = min(d + rate[step] * dt, a)
            k += 1
            arr_curve[k] = a
            dep_curve[k] = d
        # The per-step processing of the grid matches the simulator's.
        if step < log.n_steps:
            assert d == pytest.approx(log.processed[: step + 1, 0].sum(), rel=1e-6, abs=1e-6)
    total = arr_curve[-1]
    if total <= 0:
        return 0.0
    x = (np.arange(n_events) + 0.5) * total / n_events
    times = np.arange(n_total + 1) * dt
    t_arrive = times[np.searchsorted(arr_curve, x, side="left")]
    left = np.searchsorted(dep_curve, x, side="left")
    t_leave = np.where(left <= n_total, times[np.minimum(left, n_total)], np.inf)
    late = (t_leave - t_arrive) > budget
    return float(late.sum() * total / n_events)


@pytest.mark.parametrize(
    ("seed", "startup_s", "rebalance_s", "sla_latency_s", "queue_jobs"),
    [
        (0, 0.0, 10.0, 31.0, None),
        (1, 60.0, 20.0, 11.0, 0.7),
        (2, 0.0, 0.0, 91.0, None),
        (3, 60.0, 10.0, 150.0, None),
        (4, 0.0, 20.0, 31.0, 1.5),
        (5, 120.0, 5.0, 45.5, None),
    ],
)
def test_late_count_matches_a_fine_grid_simulation(
    seed: int, startup_s: float, rebalance_s: float, sla_latency_s: float, queue_jobs: float | None
) -> None:
    rng = np.random.default_rng(100 + seed)
    n_steps = 7
    cap = float(rng.choice([1.0, 2.5]))
    queue_max = 1e9 if queue_jobs is None else queue_jobs * cap * STEP_S
    arrivals = rng.uniform(0, 4.0 * cap * STEP_S, n_steps) * (rng.random(n_steps) > 0.2)
    targets = rng.integers(0, 5, n_steps)
    log = run_one(
        list(arrivals),
        list(targets),
        initial=1,
        job_capacity_eps=cap,
        job_startup_s=startup_s,
        rebalance_s=rebalance_s,
        sla_latency_s=sla_latency_s,
        queue_max_events=queue_max,
        max_jobs=4,
    )
    exact = float(log.late.sum() + log.late_after_horizon[0])
    brute = brute_force_late(log)
    assert exact == pytest.approx(brute, rel=0.01, abs=0.5)


# ------------------------------------------------------------------ jobs


@pytest.mark.parametrize("startup_s", [0, 30, 60, 90, 120, 150])
def test_startup_delay_is_honoured_and_billed_from_the_request(startup_s: float) -> None:
    # Target raised from 1 to 3 at step 2.
    log = run_one([100] * 9, [1, 1, 3, 3, 3, 3, 3, 3, 3], initial=1, job_startup_s=startup_s)
    delay = math.ceil(startup_s / STEP_S)
    serving = col(log, "serving")
    assert serving[: 2 + delay].tolist() == [1] * (2 + delay)
    assert serving[2 + delay :].tolist() == [3] * (9 - 2 - delay)
    assert col(log, "joined")[2 + delay] == 2
    assert col(log, "billed").tolist() == [1, 1] + [3] * 7
    assert col(log, "starting")[2 : 2 + delay].tolist() == [2] * delay
    np.testing.assert_allclose(
        log.cost[:, 0], col(log, "billed") * log.params.cost_per_job_hour[0] / 60
    )


def test_graceful_drain_serves_and_bills_the_draining_step() -> None:
    log = run_one([200] * 5, [4, 4, 2, 2, 2], initial=4, job_startup_s=60.0, rebalance_s=5.0)
    assert col(log, "serving").tolist() == [4, 4, 4, 2, 2]
    assert col(log, "drained").tolist() == [0, 0, 2, 0, 0]
    assert col(log, "billed").tolist() == [4, 4, 4, 2, 2]
    # The draining jobs still work through step 2 at full capacity (no pause there).
    np.testing.assert_allclose(col(log, "capacity")[:3], [240, 240, 240])
    # They are gone the next step, which pays the rebalance pause.
    assert col(log, "paused").tolist() == [False, False, False, True, False]
    assert col(log, "capacity")[3] == pytest.approx(2 * 55.0)


def test_scale_down_cancels_newest_starting_jobs_first() -> None:
    # Startup 3 steps. Step 0 asks for a 3rd job (serves at 3), step 1 for a 4th (serves
    # at 4), step 2 lowers the target to 3: the newest request (the 4th) is cancelled.
    log = run_one([60] * 7, [3, 4, 3, 3, 3, 3, 3], initial=2, job_startup_s=180.0)
    assert col(log, "serving").tolist() == [2, 2, 2, 3, 3, 3, 3]
    assert col(log, "starting").tolist() == [1, 2, 1, 0, 0, 0, 0]
    assert col(log, "billed").tolist() == [3, 4, 3, 3, 3, 3, 3]
    assert col(log, "drained").sum() == 0


def test_scale_down_cancels_starting_jobs_before_draining_running_ones() -> None:
    # Two jobs starting, two running; the target drops to 1: cancel both starting jobs,
    # then drain one running job.
    log = run_one([60] * 6, [4, 1, 1, 1, 1, 1], initial=2, job_startup_s=120.0)
    assert col(log, "starting").tolist() == [2, 0, 0, 0, 0, 0]
    assert col(log, "drained").tolist() == [0, 1, 0, 0, 0, 0]
    assert col(log, "serving").tolist() == [2, 2, 1, 1, 1, 1]
    assert col(log, "joined").sum() == 0
    assert col(log, "billed").tolist() == [4, 2, 1, 1, 1, 1]


def test_targets_are_clipped_to_the_step_limit_and_job_bounds() -> None:
    log = run_one(
        [0] * 8,
        [10, 10, 10, 0, 0, 0, 0, 4],
        initial=0,
        min_jobs=1,
        max_jobs=6,
        max_step=2,
        job_startup_s=90.0,
    )
    # The initial count is raised to min_jobs; then at most +-2 per step within [1, 6],
    # counting the jobs still starting.
    assert log.initial_jobs.tolist() == [1]
    assert col(log, "target").tolist() == [3, 5, 6, 4, 2, 1, 1, 3]
    # Step 3 cancels the job asked for at step 2 and drains one that still serves (and
    # is billed) in step 3; steps 4 and 5 drain two and one more.
    assert col(log, "drained").tolist() == [0, 0, 0, 1, 2, 1, 0, 0]
    assert col(log, "billed").tolist() == [3, 5, 6, 5, 4, 2, 1, 3]
    assert np.all(col(log, "serving") <= 6) and np.all(col(log, "serving") >= 1)


def test_rebalance_pause_exactly_where_the_serving_set_changes() -> None:
    # Startup 2 steps. Step 0 asks for a job (joins at 2); step 3 drains one (serving
    # changes at 4); step 5 asks for one and step 6 cancels it before it serves (no
    # change); step 7 asks for two (join at 9).
    targets = [3, 3, 3, 2, 2, 3, 2, 4, 4, 4, 4]
    log = run_one([100] * 11, targets, initial=2, job_startup_s=120.0, rebalance_s=12.0)
    assert col(log, "serving").tolist() == [2, 2, 3, 3, 2, 2, 2, 2, 2, 4, 4]
    expected = [False, False, True, False, True, False, False, False, False, True, False]
    assert col(log, "paused").tolist() == expected
    pause = np.where(expected, 12.0, 0.0)
    np.testing.assert_allclose(col(log, "capacity"), col(log, "serving") * (60 - pause))


def test_rebalance_pause_rule_on_random_runs_with_failures() -> None:
    rng = np.random.default_rng(21)
    services = [dataclasses.replace(s, capacity_noise_cv=0.0) for s in random_services(rng, 30)]
    params = ClusterParams.from_services(services)
    arrivals = random_arrivals(rng, params, 120)
    targets = rng.integers(0, 10, size=(120, 30))
    log = simulate_schedule(params, arrivals, targets, rng.integers(0, 5, 30), seed=9)
    left_before = np.vstack([np.zeros((1, 30), bool), (log.drained > 0) | (log.failed > 0)])[:-1]
    np.testing.assert_array_equal(log.paused, (log.joined > 0) | left_before)
    # The serving set changes exactly where the pause is (joins, drains, crashes).
    prev_serving = np.vstack([log.initial_jobs[None, :], log.serving[:-1]])
    prev_drained = np.vstack([np.zeros((1, 30)), log.drained[:-1] + log.failed[:-1]])
    np.testing.assert_array_equal(log.serving, prev_serving - prev_drained + log.joined)
    pause = np.where(log.paused, params.rebalance_s, 0.0)
    np.testing.assert_allclose(
        log.capacity, log.serving * params.job_capacity_eps * (STEP_S - pause), rtol=1e-12
    )
    assert log.failed.sum() > 0 and log.drained.sum() > 0 and log.joined.sum() > 0


# ------------------------------------------------------------------ failures, seeds


@pytest.mark.parametrize("startup_s", [0.0, 60.0, 150.0])
def test_crashed_jobs_restart_after_the_startup_delay_and_stay_billed(startup_s: float) -> None:
    n_steps = 200
    log = run_one(
        [100] * n_steps,
        4,
        initial=4,
        seed=4,
        job_startup_s=startup_s,
        job_failure_rate_per_hour=20.0,
        rebalance_s=5.0,
    )
    failed, joined = col(log, "failed"), col(log, "joined")
    assert failed.sum() > 10
    # Every crashed job is billed, serving or restarting: the bill is the target.
    assert col(log, "billed").tolist() == [4] * n_steps
    # A job that crashed at the end of step t serves again from t + 1 + delay.
    delay = math.ceil(startup_s / STEP_S)
    np.testing.assert_array_equal(joined[1 + delay :], failed[: n_steps - 1 - delay])
    assert joined[: 1 + delay].sum() == 0
    # The serving count dips by the crashed jobs while they restart (with no startup
    # delay a crashed job is back the next step).
    assert (col(log, "serving").min() < 4) == (delay > 0)
    # A crash pauses the next step.
    assert np.all(col(log, "paused")[1:][failed[:-1] > 0])


def wave_run(
    wave: tuple[str, float] | None,
    *,
    at: int = 3,
    n_steps: int = 12,
    seed: int = 0,
    **overrides: object,
) -> list[StepRecord]:
    """Two services ("a", "b") of 6 jobs each at a steady load; ``wave`` (service,
    fraction) is asked for just before step ``at``."""
    services = [
        ServiceConfig(**{**SIMPLE, "service_id": sid, "job_startup_s": 120.0, **overrides})  # type: ignore[arg-type]
        for sid in ("a", "b")
    ]
    sim = ClusterSimulator(ClusterParams.from_services(services), np.array([6, 6]), seed=seed)
    records = []
    for t in range(n_steps):
        if wave is not None and t == at:
            sim.crash_wave(*wave)
        records.append(sim.step(np.array([6, 6]), np.array([300.0, 300.0])))
    return records


def lane(records: list[StepRecord], name: str, i: int = 0) -> np.ndarray:
    return np.array([getattr(r, name)[i] for r in records])


def test_a_crash_wave_crashes_a_share_of_the_serving_jobs_and_they_restart() -> None:
    calm, hit = wave_run(None), wave_run(("a", 0.5), at=3)
    # Half of the 6 serving jobs crash at the end of step 3, as failed jobs do.
    assert lane(hit, "failed").tolist() == [0, 0, 0, 3] + [0] * 8
    # They serve no more from step 4 and restart with the 2-step startup: back at 6.
    assert lane(hit, "serving").tolist() == [6] * 4 + [3, 3] + [6] * 6
    assert lane(hit, "starting").tolist() == [0] * 4 + [3, 3] + [0] * 6
    assert lane(hit, "joined").tolist() == [0] * 6 + [3] + [0] * 5
    # The crash and the rejoin each pause consumption for the rebalance.
    assert np.flatnonzero(lane(hit, "paused")).tolist() == [4, 6]
    # Restarting jobs stay billed; the target is untouched.
    assert lane(hit, "billed").tolist() == [6] * 12
    assert lane(hit, "target").tolist() == [6] * 12
    # While capacity is down the queue builds (300 events a step need 5 jobs).
    assert lane(hit, "queue")[4:6].min() > 0 and lane(calm, "queue").max() == 0
    # Nothing else changes: the other service, and this one before the wave.
    for name in ("serving", "starting", "failed", "queue", "billed", "processed"):
        np.testing.assert_array_equal(lane(hit, name, 1), lane(calm, name, 1), err_msg=name)
        np.testing.assert_array_equal(lane(hit, name)[:3], lane(calm, name)[:3], err_msg=name)


@pytest.mark.parametrize(("fraction", "crashed"), [(1.0, 6), (0.0, 0), (0.25, 2), (0.5, 3)])
def test_a_crash_wave_rounds_its_share_half_up(fraction: float, crashed: int) -> None:
    assert lane(wave_run(("a", fraction)), "failed")[3] == crashed


def test_a_crash_wave_comes_after_the_random_failures_and_leaves_their_draws_alone() -> None:
    calm = wave_run(None, seed=7, n_steps=30, job_failure_rate_per_hour=20.0)
    hit = wave_run(("a", 0.5), at=20, seed=7, n_steps=30, job_failure_rate_per_hour=20.0)
    np.testing.assert_array_equal(lane(hit, "failed")[:20], lane(calm, "failed")[:20])
    # At step 20 the random draws are the same; the wave takes half of the jobs they
    # spared (the target is steady, so none is draining).
    random, serving = lane(calm, "failed")[20], lane(calm, "serving")[20]
    assert random > 0 and lane(calm, "drained")[20] == 0
    assert lane(hit, "failed")[20] == random + math.floor(0.5 * (serving - random) + 0.5)
    # The other service's random failures are untouched throughout.
    np.testing.assert_array_equal(lane(hit, "failed", 1)[:21], lane(calm, "failed", 1)[:21])


def test_two_waves_before_one_step_combine_as_independent_ones() -> None:
    services = [ServiceConfig(**{**SIMPLE, "service_id": "a", "job_startup_s": 60.0})]  # type: ignore[arg-type]
    sim = ClusterSimulator(ClusterParams.from_services(services), np.array([8]))
    sim.crash_wave("a", 0.5)
    sim.crash_wave("a", 0.5)  # half of the half that the first one spares
    assert sim.step(np.array([8]), np.array([0.0])).failed.tolist() == [6]
    # A wave is spent once it ran.
    assert sim.step(np.array([8]), np.array([0.0])).failed.tolist() == [0]


@pytest.mark.parametrize(
    ("service", "fraction", "message"),
    [
        ("nope", 0.5, "unknown service 'nope'; the cluster runs a"),
        ("a", -0.1, r"fraction must be in \[0, 1\]"),
        ("a", 1.5, r"fraction must be in \[0, 1\]"),
        ("a", float("nan"), r"fraction must be in \[0, 1\]"),
        ("a", "all", "fraction must be a number"),
        ("a", True, "fraction must be a number"),
    ],
)
def test_a_crash_wave_with_bad_arguments_is_refused(
    service: str, fraction: object, message: str
) -> None:
    services = [ServiceConfig(**{**SIMPLE, "service_id": "a"})]  # type: ignore[arg-type]
    sim = ClusterSimulator(ClusterParams.from_services(services), np.array([4]))
    with pytest.raises(ValueError, match=message):
        sim.crash_wave(service, fraction)  # type: ignore[arg-type]
    # Nothing was scheduled.
    assert sim.step(np.array([4]), np.array([0.0])).failed.tolist() == [0]


def log_arrays(log: SimLog) -> dict[str, np.ndarray]:
    return {
        f.name: getattr(log, f.name)
        for f in dataclasses.fields(log)
        if isinstance(getattr(log, f.name), np.ndarray)
    }


def test_same_seed_same_log_and_other_seed_differs() -> None:
    rng = np.random.default_rng(5)
    params = ClusterParams.from_services(random_services(rng, 10))
    arrivals = random_arrivals(rng, params, 100)
    targets = rng.integers(0, 9, size=(100, 10))
    initial = rng.integers(0, 5, 10)
    first = simulate_schedule(params, arrivals, targets, initial, seed=42)
    again = simulate_schedule(params, arrivals, targets, initial, seed=42)
    other = simulate_schedule(params, arrivals, targets, initial, seed=43)
    assert params.capacity_noise_cv.max() > 0 and params.job_failure_rate_per_hour.max() > 0
    for name, value in log_arrays(first).items():
        np.testing.assert_array_equal(value, getattr(again, name), err_msg=name)
    assert not np.array_equal(first.failed, other.failed)
    assert not np.array_equal(first.capacity, other.capacity)


# ------------------------------------------------------------------ after the horizon


def test_backlog_without_serving_jobs_at_the_horizon_is_missed() -> None:
    # No job ever serves; 100 events arrive in the last (only) step. Budget 30 s: the
    # events of the first 30 s turn late within the step, the rest after the horizon.
    log = run_one([100], 0, initial=0, sla_latency_s=31.0)
    assert log.late[0, 0] == pytest.approx(50.0)
    assert log.late_after_horizon[0] == pytest.approx(50.0)
    assert log.missed()[0] == pytest.approx(100.0)
    assert log.sla_compliance()[0] == pytest.approx(0.0)
    assert math.isinf(log.latency_percentile(0, 0.95))


def test_backlog_that_drains_in_time_after_the_horizon_is_not_missed() -> None:
    # 90 events in the last step, 1 job at 1/s: 30 stay queued at the horizon and the
    # job drains them in 30 s. Event x arrives at x/1.5 and leaves at x: waits <= 30 s.
    on_time = run_one([0, 90], 1, initial=1, sla_latency_s=41.0)
    assert on_time.queue[-1, 0] == pytest.approx(30.0)
    assert on_time.late_after_horizon[0] == pytest.approx(0.0, abs=1e-9)
    assert on_time.missed()[0] == pytest.approx(0.0, abs=1e-9)
    # With a budget of 20 s the events x > 60 are late; their deadlines (x/1.5 + 20 in
    # (60, 80] s) pass after the horizon.
    tight = run_one([0, 90], 1, initial=1, sla_latency_s=21.0)
    assert tight.late.sum() == pytest.approx(0.0, abs=1e-9)
    assert tight.late_after_horizon[0] == pytest.approx(30.0)
    assert tight.missed()[0] == pytest.approx(30.0)


# ------------------------------------------------------------------ metric frames


# np.percentile of infinite waits (events never served) subtracts inf from inf.
@pytest.mark.filterwarnings("ignore:invalid value encountered in subtract:RuntimeWarning")
def test_metric_frames_have_the_contract_columns_and_sane_values() -> None:
    rng = np.random.default_rng(11)
    params = ClusterParams.from_services(random_services(rng, 4))
    n_steps = 30
    arrivals = random_arrivals(rng, params, n_steps)
    targets = rng.integers(0, 8, size=(n_steps, 4))
    start = pd.Timestamp("2026-02-02 10:00")
    log = simulate_schedule(params, arrivals, targets, np.array([1, 2, 0, 3]), start=start, seed=2)
    events, system = event_metrics(log), system_metrics(log)
    assert list(events.columns) == EVENT_COLUMNS
    assert list(system.columns) == SYSTEM_COLUMNS
    minutes = pd.date_range(start, periods=n_steps, freq="min")
    for frame in (events, system):
        assert len(frame) == 4 * n_steps
        assert not frame.duplicated(["service_id", "ts"]).any()
        for sid in params.service_ids:
            rows = frame[frame["service_id"] == sid]
            assert rows["ts"].tolist() == list(minutes)

    for col_name in EVENT_COLUMNS[2:]:
        values = events[col_name].dropna()
        assert (values >= 0).all(), col_name
    assert events["error_rate"].between(0, 1).all()
    both = events["events_high_priority"] + events["events_normal_priority"]
    np.testing.assert_allclose(both, events["events_in"])
    # Waits of events that are never served are infinite, reported as NaN: here only
    # for a service left with no serving job and a backlog.
    p50, p95 = events["queue_wait_p50_s"], events["queue_wait_p95_s"]
    known = p50.notna() & p95.notna()
    assert (p50[known] <= p95[known] + 1e-9).all()
    unserved = [sid for i, sid in enumerate(params.service_ids) if log.serving[-1, i] == 0]
    assert set(events.loc[~known, "service_id"]) <= set(unserved)
    assert (~known).any()
    np.testing.assert_allclose(events["events_in"], arrivals.T.ravel())

    assert system["utilization"].between(0, 1 + 1e-12).all()
    assert system["cpu_pct"].between(0, 100).all()
    assert system["mem_pct"].between(0, 100 + 1e-9).all()
    for col_name in ("jobs_running", "jobs_starting", "net_mbps", "throughput_eps", "job_failures"):
        assert (system[col_name] >= 0).all(), col_name
    np.testing.assert_allclose(system["jobs_running"], log.serving.T.ravel())
    np.testing.assert_allclose(system["throughput_eps"] * STEP_S, log.processed.T.ravel())


def test_busy_step_reports_full_utilization_and_idle_step_none() -> None:
    log = run_one([120, 0, 0], 1, initial=1)
    system = system_metrics(log)
    assert system["utilization"].tolist() == pytest.approx([1.0, 1.0, 0.0])
    assert system["cpu_pct"].tolist() == pytest.approx([95.0, 95.0, 5.0])
    events = event_metrics(log)
    # Step 0's arrivals wait x/2 for x in [0, 120]: median 30 s, p95 about 57 s.
    assert events["queue_wait_p50_s"][0] == pytest.approx(30.0, abs=2.0)
    assert events["queue_wait_p95_s"][0] == pytest.approx(57.0, abs=2.0)


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"job_capacity_eps": 0.0}, "job_capacity_eps"),
        ({"job_startup_s": -1.0}, "job_startup_s"),
        ({"rebalance_s": 60.0}, "rebalance_s"),
        ({"queue_max_events": 0.0}, "queue_max_events"),
        ({"sla_latency_s": 0.01}, "sla_latency_s"),
        ({"sla_target": 0.0}, "sla_target"),
        ({"sla_target": 1.5}, "sla_target"),
        ({"cost_per_job_hour": -0.1}, "cost_per_job_hour"),
        ({"min_jobs": 5, "max_jobs": 2}, "min_jobs"),
        ({"min_jobs": -1}, "min_jobs"),
        ({"max_step": 0}, "max_step"),
        ({"job_failure_rate_per_hour": -1.0}, "job_failure_rate_per_hour"),
        ({"capacity_noise_cv": -0.2}, "capacity_noise_cv"),
        ({"criticality": 4}, "criticality"),
        ({"high_priority_share": 1.2}, "high_priority_share"),
        ({"job_capacity_eps": math.nan}, "job_capacity_eps must not be NaN"),
        ({"sla_latency_s": math.nan}, "sla_latency_s must not be NaN"),
    ],
)
def test_service_config_rejects_bad_values(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServiceConfig(service_id="bad", **overrides)  # type: ignore[arg-type]


def test_cluster_params_need_a_service() -> None:
    with pytest.raises(ValueError, match="at least one service"):
        ClusterParams.from_services([])


@pytest.mark.parametrize(
    "arrivals",
    [
        np.array([[1.0], [np.nan]]),
        np.array([[1.0], [np.inf]]),
        np.array([[1.0], [-1.0]]),
        np.array([1.0, 2.0]),
        np.ones((3, 2)),
        np.ones((0, 1)),
    ],
)
def test_bad_arrivals_are_rejected(arrivals: np.ndarray) -> None:
    with pytest.raises(ValueError, match="arrivals"):
        check_arrivals(arrivals, 1)
    with pytest.raises(ValueError, match="arrivals"):
        simulate_schedule(one_service(), arrivals, np.array([1]), np.array([1]))


def test_targets_of_the_wrong_shape_are_rejected() -> None:
    with pytest.raises(ValueError, match="targets"):
        simulate_schedule(one_service(), np.ones((4, 1)), np.ones((3, 1)), np.array([1]))
