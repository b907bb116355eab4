"""The offline oracle: the best schedule with perfect knowledge of the future.

It is the bound every controller is measured against (cost/oracle), not a
controller. Under the very dynamics and limits of the simulator it finds the
lexicographic optimum: fewest SLA-missing events (late or dropped), then least cost.

Method: dynamic programming over the *serving* schedule s_t (jobs that serve in step
t) rather than the target. With perfect foresight a job is never asked for and then
cancelled (that only costs), so every useful target schedule is a serving schedule
in which scale-ups are asked for ``d = ceil(job_startup_s / 60)`` steps ahead and
scale-downs drain one step ahead. In those terms:

* billed job-steps = sum_t s_t + d * (jobs joining), the startup billing of a job
  moved to the step it joins;
* the pause of step t happens iff s_t != s_{t-1};
* the step limit |target_t - target_{t-1}| <= N is |s_t - s_{t-1}| <= N, and
  min/max jobs bound s_t;
* a drain at step j cannot be followed by a join before j + d (the simulator would
  cancel the starting jobs instead), and joins cannot happen before step d; with
  d = 0 a join serves at once, so a drain cannot follow it in the next step;
* the queue evolves by :func:`simulator.queueing.queue_step`, the simulator's own.

The DP state is (s, steps since the last drain capped at d - 1, queue). The queue is
continuous, so labels are merged on a queue grid of ``queue_resolution`` events
(keeping the best label of a cell, with its exact queue) and a label is dropped
when another with the same (s, drain age) has no more queue, no more misses and no
more cost. With a resolution finer than any queue difference (as in the tests
against brute force) the result is exact; with the default grid of 1/8 of a job's
step capacity it is exact up to merging labels whose queues differ by less than
that. Every figure the benchmark reports for the oracle comes from replaying its
schedule in the simulator, never from the DP's own bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.config import ClusterParams
from simulator.queueing import history_steps, push_history, queue_step


@dataclass(frozen=True)
class OraclePlan:
    """The oracle's schedule for one service.

    Attributes:
        targets: Job target to request at each step (shape (T,)), ready to replay
            through :func:`simulator.run.simulate_schedule`.
        serving: Serving jobs per step the plan produces.
        missed_events: Late plus dropped events by the DP's accounting.
        job_steps: Billed job-steps by the DP's accounting.
        labels_max: Largest number of DP labels held at one step.
    """

    targets: np.ndarray
    serving: np.ndarray
    missed_events: float
    job_steps: float
    labels_max: int


def serving_to_targets(serving: np.ndarray, startup_steps: int) -> np.ndarray:
    """Targets that make the simulator serve ``serving`` (a plan of the oracle's form).

    target_t = s_{t+1} + jobs joining in steps t+2 .. t+d (asked for, not serving yet);
    with no startup delay, target_t = min(s_t, s_{t+1}).
    """
    s = np.asarray(serving, dtype=np.int64)
    n = len(s)
    d = startup_steps
    nxt = np.append(s[1:], s[-1])
    if d == 0:
        # Joins serve at once and drains a step later: s_t = max(J_t, J_{t-1}).
        return np.minimum(s, nxt)
    if d == 1:
        return nxt
    inc = np.maximum(np.diff(s, prepend=s[0]), 0)
    inc_pad = np.concatenate([inc, np.zeros(d, dtype=np.int64)])
    cum = np.concatenate([[0], np.cumsum(inc_pad)])
    t = np.arange(n)
    pending = cum[np.minimum(t + d + 1, len(inc_pad))] - cum[np.minimum(t + 2, len(inc_pad))]
    return nxt + pending


def solve_oracle(
    params: ClusterParams,
    arrivals: np.ndarray,
    initial_jobs: int,
    *,
    service: int = 0,
    queue_resolution: float | None = None,
) -> OraclePlan:
    """Find the lexicographic optimum (fewest misses, then least cost) for one service.

    Args:
        params: Per-service parameters; ``service`` selects the one to plan.
        arrivals: Events per step for that service, shape (T,).
        initial_jobs: Jobs serving at step 0 (as every controller starts).
        service: Index of the service in ``params``.
        queue_resolution: Queue grid in events for merging DP labels; default 1/8 of
            one job's step capacity. Use a tiny value for an exact search.

    Returns:
        The plan; replay ``targets`` in the simulator for the reported metrics.

    Raises:
        ValueError: For a service with job failures or capacity noise, whose future
            is random and so has no single perfect-knowledge plan.
    """
    i = service
    if params.job_failure_rate_per_hour[i] > 0 or params.capacity_noise_cv[i] > 0:
        raise ValueError(
            "the oracle needs deterministic dynamics: set job_failure_rate_per_hour and "
            "capacity_noise_cv to 0 for the scenarios it scores"
        )
    a = np.asarray(arrivals, dtype=np.float64)
    if a.ndim != 1 or len(a) == 0 or not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError("arrivals must be a non-empty 1-D array of finite values >= 0")
    d = int(params.startup_steps[i])
    lo, hi = int(params.min_jobs[i]), int(params.max_jobs[i])
    n_step = int(params.max_step[i])
    cap = float(params.job_capacity_eps[i])
    pause = float(params.rebalance_s[i])
    qmax = float(params.queue_max_events[i])
    budget = float(params.wait_budget_s[i])
    res = queue_resolution if queue_resolution is not None else cap * 60.0 / 8.0
    k_hist = history_steps(budget)
    j0 = int(np.clip(initial_jobs, lo, hi))

    # A schedule that serves max_jobs as early as it can bounds the optimum's misses:
    # any label already missing more can never be optimal.
    miss_bound = _max_capacity_misses(a, j0, d, hi, n_step, cap, pause, qmax, budget, k_hist)

    # Labels: parallel arrays.
    s = np.array([j0], dtype=np.int64)
    # Steps since the last drain (-1: none yet); with d = 0, whether the last step
    # did not join jobs.
    age = np.array([1 if d == 0 else -1], dtype=np.int64)
    q = np.zeros(1)
    hist = np.zeros((1, k_hist))
    missed = np.zeros(1)
    cost = np.zeros(1)
    parents: list[np.ndarray] = []
    chosen: list[np.ndarray] = []
    moves = np.arange(-n_step, n_step + 1)
    labels_max = 1

    for t in range(len(a)):
        n = len(s)
        s_new = (s[:, None] + moves[None, :]).ravel()
        src = np.repeat(np.arange(n), len(moves))
        up = s_new > s[src]
        down = s_new < s[src]
        ok = (s_new >= lo) & (s_new <= hi)
        if d == 0:
            # Instant joins, but a drain decided in the step of a join would cancel it.
            ok &= ~down | ((t >= 1) & (age[src] == 1))
        else:
            # Joins need a request d steps earlier, made after the last drain.
            ok &= ~up | ((t >= d) & (age[src] + 1 >= d))
            ok &= ~down | (t >= 1)
        s_new, src, up, down = s_new[ok], src[ok], up[ok], down[ok]
        changed = s_new != s[src]
        out = queue_step(
            q[src],
            np.full(len(src), a[t]),
            s_new * cap,
            np.where(changed, pause, 0.0),
            np.full(len(src), qmax),
            hist[src],
            np.full(len(src), budget),
        )
        m_new = missed[src] + out.late + out.dropped
        c_new = cost[src] + s_new + d * np.maximum(s_new - s[src], 0)
        # Ages from d - 1 on allow the same moves, so they share one state.
        a_new = np.where(up, 0, 1) if d == 0 else np.where(down, 0, np.minimum(age[src] + 1, d - 1))
        keep = _prune(s_new, a_new, out.queue, m_new, c_new, res, miss_bound)
        parents.append(src[keep].astype(np.int32))
        chosen.append(s_new[keep].astype(np.int32))
        s, age, q = s_new[keep], a_new[keep], out.queue[keep]
        hist = push_history(hist[src[keep]], out.accepted[keep])
        missed, cost = m_new[keep], c_new[keep]
        labels_max = max(labels_max, len(s))

    # After the horizon the last serving jobs drain the queue (as the simulator does).
    zeros = np.zeros(len(s))
    for _ in range(k_hist):
        out = queue_step(
            q, zeros, s * cap, zeros, np.full(len(s), qmax), hist, np.full(len(s), budget)
        )
        missed = missed + out.late
        q = out.queue
        hist = push_history(hist, out.accepted)

    best = int(np.lexsort((cost, _round(missed)))[0])
    serving = np.empty(len(a), dtype=np.int64)
    idx = best
    for t in range(len(a) - 1, -1, -1):
        serving[t] = chosen[t][idx]
        idx = int(parents[t][idx])
    return OraclePlan(
        targets=serving_to_targets(serving, d),
        serving=serving,
        missed_events=float(missed[best]),
        job_steps=float(cost[best]),
        labels_max=labels_max,
    )


def _round(missed: np.ndarray) -> np.ndarray:
    # Misses agree to float noise across different paths; compare them at 1e-6 events.
    return np.round(missed, 6)


def _max_capacity_misses(
    a: np.ndarray,
    j0: int,
    d: int,
    hi: int,
    n_step: int,
    cap: float,
    pause: float,
    qmax: float,
    budget: float,
    k_hist: int,
) -> float:
    """Misses of the schedule that climbs to max_jobs as fast as the limits allow."""
    serving = np.empty(len(a), dtype=np.int64)
    level = j0
    for t in range(len(a)):
        if t >= d:
            level = min(hi, level + n_step)
        serving[t] = level
    q, hist, missed = np.zeros(1), np.zeros((1, k_hist)), 0.0
    prev = j0
    for t in range(len(a)):
        out = queue_step(
            q,
            a[t : t + 1],
            np.array([serving[t] * cap]),
            np.array([pause if serving[t] != prev else 0.0]),
            np.array([qmax]),
            hist,
            np.array([budget]),
        )
        missed += float(out.late[0] + out.dropped[0])
        q, hist, prev = out.queue, push_history(hist, out.accepted), serving[t]
    zeros = np.zeros(1)
    for _ in range(k_hist):
        out = queue_step(
            q, zeros, np.array([prev * cap]), zeros, np.array([qmax]), hist, np.array([budget])
        )
        missed += float(out.late[0])
        q, hist = out.queue, push_history(hist, out.accepted)
    return missed


def _prune(
    s: np.ndarray,
    age: np.ndarray,
    q: np.ndarray,
    missed: np.ndarray,
    cost: np.ndarray,
    res: float,
    miss_bound: float,
) -> np.ndarray:
    """Indices of the labels to keep: within the miss bound, best per queue cell, then
    non-dominated."""
    within = np.flatnonzero(_round(missed) <= np.round(miss_bound, 6) + 1e-6)
    if len(within) < len(s):
        kept = _prune(s[within], age[within], q[within], missed[within], cost[within], res, np.inf)
        return np.asarray(within[kept])
    cell = np.where(q <= 1e-9, 0, 1 + np.floor(q / res).astype(np.int64))
    rank = np.empty(len(s), dtype=np.int64)
    rank[np.lexsort((q, cost, _round(missed)))] = np.arange(len(s))
    # Best label per (s, age, cell).
    order = np.lexsort((rank, cell, age, s))
    key = np.stack([s[order], age[order], cell[order]], axis=1)
    first = np.ones(len(order), dtype=bool)
    first[1:] = np.any(key[1:] != key[:-1], axis=1)
    cand = order[first]
    # Within each (s, age), sorted by queue, keep only labels that improve on every
    # label with less queue (a smaller queue never hurts the future).
    order = cand[np.lexsort((rank[cand], q[cand], age[cand], s[cand]))]
    grp = np.ones(len(order), dtype=bool)
    grp[1:] = (s[order][1:] != s[order][:-1]) | (age[order][1:] != age[order][:-1])
    gid = np.cumsum(grp) - 1
    span = len(s) + 1
    shifted = rank[order] - gid * span
    best_before = np.minimum.accumulate(shifted)
    prev_best = np.concatenate([[np.iinfo(np.int64).max], best_before[:-1]])
    prev_best[grp] = np.iinfo(np.int64).max
    return np.asarray(order[shifted < prev_best])
