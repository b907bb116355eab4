"""One step of the bounded FIFO queue as a fluid model, with exact SLA accounting.

Both the simulator and the oracle's dynamic programme call :func:`queue_step`, so
the oracle optimises the very dynamics every controller is scored on.

Within a step of 60 s (local time u in [0, 60]):

* accepted arrivals come at a constant rate ``acc / 60``;
* no event leaves during a rebalance pause of ``pause_s`` seconds at the start of the
  step, then the serving jobs drain the queue at ``rate`` events/s; the departure
  curve is ``dep(u) = min(rate * (u - pause_s)^+, q0 + acc * u / 60)`` (the queue
  empties, then departures follow arrivals);
* if the queue would end the step above ``queue_max``, the excess is dropped (tail
  drop); the drops are spread evenly over the step's arrivals, a simplification
  that keeps every quantity per step;
* an event accepted at time v departs at the time the departure curve reaches it;
  it meets its SLA when its queue wait is at most ``wait_budget_s`` (the SLA latency
  minus its processing time). A late event is counted in the step in which its
  deadline passes while it is still queued, which makes the count per step depend
  only on the queue at the start of the step and the accepted arrivals of the last
  ``ceil(wait_budget_s / 60) + 1`` steps (the ``history``).

The late count is exact for this fluid model: both curves are piecewise linear in
u, so the step is cut at their kinks and integrated piece by piece.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simulator.config import STEP_S


@dataclass(frozen=True)
class QueueStep:
    """Outcome of one step (arrays of the input shape)."""

    processed: np.ndarray
    dropped: np.ndarray
    accepted: np.ndarray
    queue: np.ndarray
    late: np.ndarray


def history_steps(wait_budget_s: float) -> int:
    """Steps of accepted-arrival history the late count needs."""
    return math.ceil(wait_budget_s / STEP_S) + 1


def _recent_arrivals(history: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Accepted arrivals in the last ``seconds`` before the step start.

    ``history[:, k]`` holds the accepted arrivals of the step ``k + 1`` steps back;
    arrivals are uniform within a step, and nothing arrived before the history.
    ``seconds`` has shape (n, m); so has the result.
    """
    n, k_steps = history.shape
    x = np.clip(seconds, 0.0, k_steps * STEP_S)
    full = np.minimum((x // STEP_S).astype(np.int64), k_steps)
    cum = np.zeros((n, k_steps + 1))
    np.cumsum(history, axis=1, out=cum[:, 1:])
    rows = np.arange(n)[:, None]
    partial = history[rows, np.minimum(full, k_steps - 1)] * (x - full * STEP_S) / STEP_S
    return np.asarray(cum[rows, full] + np.where(full < k_steps, partial, 0.0))


def queue_step(
    q0: np.ndarray,
    arrivals: np.ndarray,
    rate: np.ndarray,
    pause_s: np.ndarray,
    queue_max: np.ndarray,
    history: np.ndarray,
    wait_budget_s: np.ndarray,
) -> QueueStep:
    """Advance the fluid queue by one step and count the events that turn late.

    Args:
        q0: Events queued at the start of the step, shape (n,).
        arrivals: Events arriving during the step, shape (n,).
        rate: Service rate of the serving jobs, events/s, shape (n,).
        pause_s: Seconds without consumption at the start of the step.
        queue_max: Queue bound; arrivals beyond it are dropped.
        history: Accepted arrivals of previous steps, shape (n, K), column 0 the
            previous step; K must be at least ``history_steps(max wait budget)``.
        wait_budget_s: Queue wait an event may have and still meet its SLA.

    Returns:
        Processed, dropped and accepted events, the queue at the end of the step and
        the events whose SLA deadline passed during the step while still queued.
    """
    work_s = STEP_S - pause_s
    processed = np.minimum(q0 + arrivals, rate * work_s)
    dropped = np.maximum(0.0, q0 + arrivals - processed - queue_max)
    accepted = arrivals - dropped
    queue = q0 + accepted - processed
    lam = accepted / STEP_S

    # Kinks of dep(u): end of the pause and the moment the queue empties.
    gap = rate - lam
    with np.errstate(divide="ignore", invalid="ignore"):
        u_empty = np.where(gap > 0, (q0 + rate * pause_s) / np.where(gap > 0, gap, 1.0), np.inf)
    # Kink of h(u): where the deadline of the arrivals crosses a step boundary.
    u_boundary = np.mod(wait_budget_s, STEP_S)
    zeros = np.zeros_like(q0)
    cuts = np.stack(
        [
            zeros,
            np.clip(pause_s, 0.0, STEP_S),
            np.clip(u_empty, 0.0, STEP_S),
            np.clip(u_boundary, 0.0, STEP_S),
            zeros + STEP_S,
        ],
        axis=1,
    )
    cuts.sort(axis=1)

    def dep(u: np.ndarray) -> np.ndarray:
        served = rate[:, None] * np.maximum(u - pause_s[:, None], 0.0)
        return np.minimum(served, q0[:, None] + lam[:, None] * u)

    def deadline_curve(u: np.ndarray) -> np.ndarray:
        # h(u): queued-at-start events plus this step's arrivals whose deadline has
        # passed by u; an event is late where dep(u) < h(u).
        since = u - wait_budget_s[:, None]
        inside = q0[:, None] + lam[:, None] * np.maximum(since, 0.0)
        back = _recent_arrivals(history, -since)
        return np.where(since >= 0.0, inside, q0[:, None] - back)

    h = deadline_curve(cuts)
    g = h - dep(cuts)
    g0, g1 = g[:, :-1], g[:, 1:]
    rise = np.maximum(h[:, 1:] - h[:, :-1], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(
            (g0 > 0) & (g1 > 0),
            1.0,
            np.where(
                (g0 > 0) & (g1 <= 0),
                g0 / (g0 - g1),
                np.where((g0 <= 0) & (g1 > 0), g1 / (g1 - g0), 0.0),
            ),
        )
    late = np.sum(rise * np.nan_to_num(share), axis=1)
    # Tiny negative or overshooting values come from float rounding only.
    late = np.clip(late, 0.0, None)
    return QueueStep(
        processed=processed, dropped=dropped, accepted=accepted, queue=queue, late=late
    )


def push_history(history: np.ndarray, accepted: np.ndarray) -> np.ndarray:
    """Shift the accepted-arrival history by one step (newest in column 0)."""
    out = np.empty_like(history)
    out[:, 1:] = history[:, :-1]
    out[:, 0] = accepted
    return out
