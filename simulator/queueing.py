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

    late = np.zeros_like(q0)
    # Without a backlog, a pause or a rate below the arrivals the queue stays empty
    # and nobody waits: only the other rows need the integration below.
    rows = np.flatnonzero((q0 > 0) | (pause_s > 0) | (rate < lam))
    if len(rows):
        late[rows] = _late(
            q0[rows], lam[rows], rate[rows], pause_s[rows], history[rows], wait_budget_s[rows]
        )
    return QueueStep(
        processed=processed, dropped=dropped, accepted=accepted, queue=queue, late=late
    )


def _late(
    q0: np.ndarray,
    lam: np.ndarray,
    rate: np.ndarray,
    pause_s: np.ndarray,
    history: np.ndarray,
    wait_budget_s: np.ndarray,
) -> np.ndarray:
    """Events whose deadline passes in the step while they are still queued."""
    cuts = np.empty((len(q0), 5))
    cuts[:, 0] = 0.0
    cuts[:, 4] = STEP_S
    # Kinks of dep(u): end of the pause and the moment the queue empties.
    cuts[:, 1] = np.minimum(pause_s, STEP_S)
    gap = rate - lam
    positive = gap > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        u_empty = (q0 + rate * pause_s) / np.where(positive, gap, 1.0)
    cuts[:, 2] = np.where(positive, np.minimum(np.maximum(u_empty, 0.0), STEP_S), STEP_S)
    # Kink of h(u): where the deadline of the arrivals crosses a step boundary.
    cuts[:, 3] = np.mod(wait_budget_s, STEP_S)
    cuts.sort(axis=1)

    # dep(u): departures since the step start; h(u): queued-at-start events plus
    # this step's arrivals whose deadline has passed by u. Late where dep < h.
    dep = np.minimum(
        rate[:, None] * np.maximum(cuts - pause_s[:, None], 0.0), q0[:, None] + lam[:, None] * cuts
    )
    since = cuts - wait_budget_s[:, None]
    h = np.where(
        since >= 0.0,
        q0[:, None] + lam[:, None] * np.maximum(since, 0.0),
        q0[:, None] - _recent_arrivals(history, -since),
    )
    g = h - dep
    g0, g1 = g[:, :-1], g[:, 1:]
    rise = np.maximum(h[:, 1:] - h[:, :-1], 0.0)
    # Share of a linear piece from g0 to g1 on which g > 0.
    span = np.abs(g0) + np.abs(g1)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(span > 0, (np.maximum(g0, 0.0) + np.maximum(g1, 0.0)) / span, 0.0)
    # Tiny negative values come from float rounding only.
    return np.asarray(np.maximum(np.sum(rise * share, axis=1), 0.0))


def push_history(history: np.ndarray, accepted: np.ndarray) -> np.ndarray:
    """Shift the accepted-arrival history by one step (newest in column 0)."""
    out = np.empty_like(history)
    out[:, 1:] = history[:, :-1]
    out[:, 0] = accepted
    return out
