"""The event-processing cluster: jobs, startup, drain, rebalance, failures, queue, cost.

Discrete time, one step = 60 s, vectorised over S services with NumPy
(DESIGN.md section 5). A step ``t`` runs in this order:

1. Jobs whose startup completes at ``t`` join the serving set.
2. The controller sees the :class:`~models.controller.base.Observation` and returns a
   target; it is bounded by the step limit ``max_step`` and ``[min_jobs, max_jobs]``.
3. A higher target asks for new jobs, which serve from ``t + ceil(job_startup_s/60)``
   (immediately when the startup is 0). A lower target first cancels starting jobs,
   newest first (Kubernetes deletes not-ready pods first), then drains running jobs:
   a draining job serves and is billed for step ``t`` and is gone at ``t + 1``.
4. Consumption pauses for ``rebalance_s`` at the start of any step in which the set
   of serving jobs changed: jobs joined at ``t``, or jobs drained or crashed at
   ``t - 1`` (a consumer-group rebalance).
5. The queue advances (:func:`simulator.queueing.queue_step`): serving jobs drain it
   at ``serving * job_capacity_eps`` events/s (times a lognormal factor when
   ``capacity_noise_cv > 0``); the bounded queue drops the excess; late events are
   counted exactly.
6. Each serving, non-draining job crashes with probability
   ``job_failure_rate_per_hour / 60`` at the end of the step; a crashed job restarts
   (startup delay again) and stays billed, as a Deployment restarts a pod. A crash wave
   (:meth:`ClusterSimulator.crash_wave`, fault injection) crashes a set share of the
   jobs that survived those draws at the end of the next step, through the same path.
7. Billing: starting + serving (draining included) jobs, times
   ``cost_per_job_hour / 60``.

After the last step, :meth:`ClusterSimulator.finish` drains the queue for the SLA
window with the last serving jobs and no arrivals, and counts whatever is still
queued then as late, so a controller cannot hide a backlog past the horizon.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Real

import numpy as np

from simulator.config import STEP_S, ClusterParams
from simulator.queueing import history_steps, push_history, queue_step


@dataclass
class StepRecord:
    """What happened in one step, arrays of shape (S,)."""

    target: np.ndarray
    serving: np.ndarray
    starting: np.ndarray
    joined: np.ndarray
    drained: np.ndarray
    failed: np.ndarray
    paused: np.ndarray
    capacity: np.ndarray
    arrivals: np.ndarray
    accepted: np.ndarray
    processed: np.ndarray
    dropped: np.ndarray
    queue: np.ndarray
    late: np.ndarray
    billed: np.ndarray
    cost: np.ndarray


@dataclass
class ClusterState:
    """The mutable state between steps (arrays of shape (S,) unless noted)."""

    running: np.ndarray
    pipeline: np.ndarray  # (S, L): jobs becoming ready at step t where slot = t % L
    queue: np.ndarray
    history: np.ndarray  # (S, K): accepted arrivals of the last K steps, newest first
    changed_last: np.ndarray  # jobs left (drain or crash) at the end of the last step
    last: StepRecord | None = None
    step: int = 0
    extra_late: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # Share of the serving jobs a crash wave takes at the end of the next step (empty or
    # all zero: none pending).
    crashing: np.ndarray = field(default_factory=lambda: np.zeros(0))


class ClusterSimulator:
    """Simulate S services' clusters step by step.

    Args:
        params: Per-service parameters.
        initial_jobs: Jobs serving at step 0 (bounded by min/max jobs).
        seed: Seed of the random streams (job failures, capacity noise).
    """

    def __init__(self, params: ClusterParams, initial_jobs: np.ndarray, seed: int = 0) -> None:
        self.params = params
        self._rng = np.random.default_rng(seed)
        n = params.n_services
        self._slots = int(params.startup_steps.max()) + 1
        self._k = history_steps(float(params.wait_budget_s.max()))
        self._rows = np.arange(n)
        jobs = np.clip(np.asarray(initial_jobs, dtype=np.int64), params.min_jobs, params.max_jobs)
        self.initial_jobs = jobs.copy()
        self.state = ClusterState(
            running=jobs.copy(),
            pipeline=np.zeros((n, self._slots), dtype=np.int64),
            queue=np.zeros(n),
            history=np.zeros((n, self._k)),
            changed_last=np.zeros(n, dtype=bool),
            extra_late=np.zeros(n),
            crashing=np.zeros(n),
        )
        self._price_per_step = params.cost_per_job_hour / 60.0
        self._fail_p = params.job_failure_rate_per_hour / 60.0
        self._any_fail = bool(np.any(self._fail_p > 0))
        self._any_noise = bool(np.any(params.capacity_noise_cv > 0))

    @property
    def rng(self) -> np.random.Generator:
        """The random streams (job failures, capacity noise); its ``bit_generator.state``
        is what a simulator that continues in another process must carry over."""
        return self._rng

    @property
    def starting(self) -> np.ndarray:
        return np.asarray(self.state.pipeline.sum(axis=1))

    def crash_wave(self, service_id: str, fraction: float = 1.0) -> None:
        """Crash a share of a service's serving jobs at once, at the end of the next step.

        Fault injection (a bad deploy, a node pool lost): at the end of the next step,
        after that step's random failures are drawn, ``round(fraction * n)`` (halves up)
        of the ``n`` serving, non-draining jobs left crash too. They take the random
        failures' path: counted in the step's ``failed``, restarted with the startup
        delay, billed while they restart, and the next step pauses for the rebalance.
        Two waves asked for before the same step combine as independent ones (the share
        that survives is the product of what each spares).

        Args:
            service_id: The service whose jobs crash.
            fraction: Share of its serving jobs that crash, in [0, 1] (1: all of them).

        Raises:
            ValueError: If the service is unknown or ``fraction`` is not in [0, 1].
        """
        lane = _lane(self.params, service_id)
        share = _crash_share(fraction)
        st = self.state
        if st.crashing.shape != (self.params.n_services,):
            st.crashing = np.zeros(self.params.n_services)
        st.crashing[lane] = 1.0 - (1.0 - st.crashing[lane]) * (1.0 - share)

    def begin_step(self) -> np.ndarray:
        """Let the jobs whose startup completes now join; return how many joined."""
        st = self.state
        slot = st.step % self._slots
        joined = st.pipeline[:, slot].copy()
        st.pipeline[:, slot] = 0
        st.running += joined
        return joined

    def apply_target(
        self, target: np.ndarray, joined: np.ndarray, arrivals: np.ndarray
    ) -> StepRecord:
        """Act on a (raw) target, run the step against ``arrivals`` and return it."""
        p, st = self.params, self.state
        current = st.running + self.starting
        target = p.clip_target(target, current)
        delta = target - current

        # Scale up: new jobs enter the pipeline (or serve now when startup is 0).
        up = np.maximum(delta, 0)
        instant = p.startup_steps == 0
        joined = joined + np.where(instant, up, 0)
        st.running += np.where(instant, up, 0)
        ready_slot = (st.step + p.startup_steps) % self._slots
        st.pipeline[self._rows, ready_slot] += np.where(instant, 0, up)

        # Scale down: cancel the newest starting jobs first, then drain running ones.
        cut = np.maximum(-delta, 0)
        for ahead in range(self._slots - 1, 0, -1):
            if not cut.any():
                break
            slot = (st.step + ahead) % self._slots
            take = np.minimum(cut, st.pipeline[:, slot])
            st.pipeline[:, slot] -= take
            cut = cut - take
        drained = np.minimum(cut, st.running)
        serving = st.running.copy()  # draining jobs still serve this step
        st.running = st.running - drained

        paused = (joined > 0) | st.changed_last
        factor = 1.0
        if self._any_noise:
            cv = p.capacity_noise_cv
            sigma = np.sqrt(np.log1p(cv**2))
            factor = np.exp(self._rng.normal(-0.5 * sigma**2, sigma))
        rate = serving * p.job_capacity_eps * factor
        pause_s = np.where(paused, p.rebalance_s, 0.0)
        out = queue_step(
            st.queue, arrivals, rate, pause_s, p.queue_max_events, st.history, p.wait_budget_s
        )

        # Jobs starting during this step; a job that crashes at its end restarts from
        # the next step, so it is billed here once (as serving), not also as starting.
        starting = self.starting
        failed = np.zeros_like(st.running)
        wave = st.crashing.any()
        if self._any_fail or wave:
            if self._any_fail:
                failed = self._rng.binomial(st.running, self._fail_p)
            if wave:
                # Drawn after the random failures, so the random streams are unchanged.
                survivors = st.running - failed
                failed = failed + np.floor(st.crashing * survivors + 0.5).astype(np.int64)
                st.crashing = np.zeros_like(st.crashing)
            st.running = st.running - failed
            restart_slot = (st.step + 1 + p.startup_steps) % self._slots
            # A crashed job with zero startup is back for the next step.
            st.pipeline[
                self._rows, np.where(instant, (st.step + 1) % self._slots, restart_slot)
            ] += failed

        billed = serving + starting
        record = StepRecord(
            target=target,
            serving=serving,
            starting=starting,
            joined=joined,
            drained=drained,
            failed=failed,
            paused=paused,
            capacity=rate * (STEP_S - pause_s),
            arrivals=arrivals,
            accepted=out.accepted,
            processed=out.processed,
            dropped=out.dropped,
            queue=out.queue,
            late=out.late,
            billed=billed,
            cost=billed * self._price_per_step,
        )
        st.queue = out.queue
        st.history = push_history(st.history, out.accepted)
        st.changed_last = (drained > 0) | (failed > 0)
        st.last = record
        st.step += 1
        return record

    def step(self, target: np.ndarray, arrivals: np.ndarray) -> StepRecord:
        """Run one step with a target decided without looking at the joins."""
        joined = self.begin_step()
        return self.apply_target(target, joined, arrivals)

    def finish(self) -> np.ndarray:
        """Drain the queue for the SLA window after the horizon; return late events.

        The serving jobs of the last step keep working with no new arrivals until
        every queued event's deadline has passed; those still queued then are late.
        """
        st, p = self.state, self.params
        serving = st.last.serving if st.last is not None else st.running
        rate = serving * p.job_capacity_eps
        queue, history = st.queue.copy(), st.history.copy()
        late = np.zeros_like(queue)
        zeros = np.zeros_like(queue)
        for _ in range(self._k):
            out = queue_step(
                queue, zeros, rate, zeros, p.queue_max_events, history, p.wait_budget_s
            )
            late += out.late
            queue = out.queue
            history = push_history(history, out.accepted)
        # Whatever is still queued now had its deadline pass during the loop and is
        # already in ``late``.
        st.extra_late = late
        return late


def _lane(params: ClusterParams, service_id: str) -> int:
    """Index of ``service_id`` in ``params``; a clear error for an unknown one."""
    try:
        return params.service_ids.index(service_id)
    except ValueError:
        raise ValueError(
            f"unknown service {service_id!r}; the cluster runs {', '.join(params.service_ids)}"
        ) from None


def _crash_share(fraction: float) -> float:
    """``fraction`` as a float in [0, 1]; a clear error otherwise (NaN included)."""
    if isinstance(fraction, bool) or not isinstance(fraction, Real):
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in [0, 1] (1: every serving job), got {fraction}")
    return float(fraction)
