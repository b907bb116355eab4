"""The `monitor` flow: the feedback loop's check of forecasts, SLA, cost and input drift.

Each step is a task over a tested function:

1. ``read_evidence``: from the offline store, only the time range the check needs: the
   window's ``scaling_decisions``, the metrics of the window plus the drift reference
   (and, for traffic, its seasonal lag), and the service profiles.
2. ``assess``: :func:`serving.monitoring.evaluate`: forecast wQL and coverage against
   what arrived, estimated SLA compliance, cost, PSI of the input features, findings and
   the retraining targets they call for.
3. ``request_retraining``: for each target, ``run_deployment`` of its deployment (a
   scheduled run tagged ``feedback``, not waited for, not a subflow: a retraining must
   outlive the cycle that asked for it, and Prefect cancels the subflows of a cancelled
   parent), unless the deployment already has a run that makes a new one pointless.
4. The ``feedback`` markdown artifact: the tables, the findings (the why) and, per target,
   the run triggered or why none was.

A deployment is *not* triggered when, on the Prefect server (so the rule survives restarts
of whatever runs the check), it has a run that is

* pending, running or paused;
* scheduled to start before ``now + cooldown`` (late runs included: piling more runs on a
  deployment no worker picks up helps nobody; a scheduled retrain due soon will do); or
* expected to start or started within the last ``cooldown_minutes``, whatever its state
  (a failed or cancelled retrain is not retried in a loop every minute).

The cooldown is wall-clock time on the server; the flow's ``now`` only places the evidence
window (a backfill may look at an old window). A deployment missing on the server is
reported in the artifact and the result; it does not fail the cycle, nor does any other
error of the Prefect API while triggering.

:func:`feedback_cycle` runs the same steps without tasks, for the inference flow to call
after its cycles.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, cast
from uuid import UUID

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
    Operator,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.deployments import run_deployment
from prefect.exceptions import MissingContextError, ObjectNotFound

from autoscaler.settings import Settings, build_settings
from features.offline import OfflineStore
from serving.monitoring import CONTROLLER, FORECASTER, MonitorReport, MonitorThresholds, evaluate

FEEDBACK_TAG = "feedback"
"""Tag of the retraining runs this flow triggers."""
ARTIFACT_KEY = "feedback"
"""Key of the markdown artifact of every check."""
DEFAULT_DEPLOYMENTS: dict[str, str] = {
    FORECASTER: "train-forecaster/train-forecaster",
    CONTROLLER: "train-controller/train-controller",
}
"""Retraining target -> deployment (``flow name/deployment name``, as in prefect.yaml)."""

IO_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [2, 5, 15],
    "cache_policy": NO_CACHE,
}

Status = Literal["triggered", "active", "cooldown", "missing", "disabled", "error"]


@dataclass(frozen=True)
class Evidence:
    """What the check reads from the offline store."""

    decisions: pd.DataFrame
    event_metrics: pd.DataFrame
    system_metrics: pd.DataFrame
    profiles: pd.DataFrame


@dataclass(frozen=True)
class TriggerOutcome:
    """What happened to one retraining target.

    Attributes:
        target: ``forecaster`` or ``controller``.
        deployment: The deployment asked for.
        status: ``triggered`` (a run was created), ``active`` (a run is pending, running,
            paused or scheduled soon), ``cooldown`` (one started or was due within the
            cooldown), ``missing`` (no such deployment on the server), ``disabled``
            (triggering was off) or ``error`` (the Prefect API failed).
        reasons: The findings behind the request.
        flow_run_id: The run created, or the one that blocked a new run.
        flow_run_name: Its name.
        detail: One line for people.
    """

    target: str
    deployment: str
    status: Status
    reasons: list[str] = field(default_factory=list)
    flow_run_id: str | None = None
    flow_run_name: str | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain values for the flow result."""
        return {
            "target": self.target,
            "deployment": self.deployment,
            "status": self.status,
            "reasons": list(self.reasons),
            "flow_run_id": self.flow_run_id,
            "flow_run_name": self.flow_run_name,
            "detail": self.detail,
        }


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def current_minute() -> pd.Timestamp:
    """The current minute, naive UTC (what the contracts store)."""
    return pd.Timestamp.now(tz="UTC").tz_localize(None).floor("min")


def to_minute(when: datetime | pd.Timestamp) -> pd.Timestamp:
    """A moment as a naive UTC minute (aware values converted, naive ones taken as UTC)."""
    ts = pd.Timestamp(when)
    if ts.tz is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.floor("min")


# -- plain steps -------------------------------------------------------------------------


def load_evidence(
    offline: OfflineStore, now: pd.Timestamp, thresholds: MonitorThresholds
) -> Evidence:
    """Read only the rows the check needs (``MonitorThresholds.lookback``) before ``now``."""
    last = now - pd.Timedelta(minutes=1)

    def recent(table: str, span: pd.Timedelta) -> pd.DataFrame:
        return offline.read(table, start=now - span, end=last)

    return Evidence(
        decisions=recent("scaling_decisions", thresholds.window),
        event_metrics=recent("event_metrics", thresholds.lookback("event_metrics")),
        system_metrics=recent("system_metrics", thresholds.lookback("system_metrics")),
        profiles=offline.read("service_profiles"),
    )


def assess_evidence(
    evidence: Evidence, now: pd.Timestamp, thresholds: MonitorThresholds
) -> MonitorReport:
    """:func:`serving.monitoring.evaluate` over the evidence."""
    return evaluate(
        evidence.decisions,
        evidence.event_metrics,
        evidence.system_metrics,
        evidence.profiles,
        now,
        thresholds,
    )


def _runs(client: SyncPrefectClient, deployment_id: UUID, **filters: Any) -> list[FlowRun]:
    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(**filters),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC,
        limit=1,
    )


def blocking_run(
    client: SyncPrefectClient, deployment_id: UUID, wall_now: datetime, cooldown: timedelta
) -> tuple[Status, FlowRun] | None:
    """The run that makes a new retraining run of the deployment pointless (module
    docstring), with ``active`` or ``cooldown``; None when there is none."""

    def states(*types: StateType) -> FlowRunFilterState:
        return FlowRunFilterState(type=FlowRunFilterStateType(any_=list(types)))

    running = _runs(
        client, deployment_id, state=states(StateType.PENDING, StateType.RUNNING, StateType.PAUSED)
    )
    if running:
        return "active", running[0]
    scheduled = _runs(
        client,
        deployment_id,
        state=states(StateType.SCHEDULED),
        expected_start_time=FlowRunFilterExpectedStartTime(before_=wall_now + cooldown),
    )
    if scheduled:
        return "active", scheduled[0]
    since = wall_now - cooldown
    recent = _runs(
        client,
        deployment_id,
        operator=Operator.or_,
        expected_start_time=FlowRunFilterExpectedStartTime(after_=since, before_=wall_now),
        start_time=FlowRunFilterStartTime(after_=since),
    )
    if recent:
        return "cooldown", recent[0]
    return None


def _describe(run: FlowRun) -> str:
    state = run.state.name if run.state is not None else "unknown"
    when = run.start_time or run.expected_start_time
    at = f" at {when:%Y-%m-%d %H:%M} UTC" if when is not None else ""
    return f"run {run.name} ({run.id}) is {state}{at}"


def _trigger_one(
    target: str,
    name: str,
    reasons: list[str],
    wall_now: datetime,
    cooldown: timedelta,
) -> TriggerOutcome:
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            return TriggerOutcome(
                target,
                name,
                "missing",
                reasons,
                detail=f"deployment {name!r} does not exist on the Prefect server "
                f"({client.api_url}); deploy it (prefect.yaml) to let feedback retrain",
            )
        blocker = blocking_run(client, deployment.id, wall_now, cooldown)
    if blocker is not None:
        status, run = blocker
        why = "already in progress" if status == "active" else "within the cooldown"
        return TriggerOutcome(
            target,
            name,
            status,
            reasons,
            flow_run_id=str(run.id),
            flow_run_name=run.name,
            detail=f"not triggered, {why}: {_describe(run)}",
        )
    # Two checks racing in the same cooldown period get the same run back.
    period = max(int(cooldown.total_seconds()), 60)
    key = f"feedback:{deployment.id}:{int(wall_now.timestamp()) // period}"
    # Called from sync code, so the sync branch of run_deployment runs and returns the run.
    run = cast(
        FlowRun,
        run_deployment(
            name=name,
            parameters=None,
            timeout=0,
            tags=[FEEDBACK_TAG],
            flow_run_name=f"feedback-{target}-{wall_now:%Y%m%d-%H%M}",
            idempotency_key=key,
            as_subflow=False,
        ),
    )
    return TriggerOutcome(
        target,
        name,
        "triggered",
        reasons,
        flow_run_id=str(run.id),
        flow_run_name=run.name,
        detail=f"scheduled run {run.name} ({run.id}) of {name}",
    )


def trigger_retraining(
    retrain: Mapping[str, list[str]],
    deployments: Mapping[str, str],
    cooldown_minutes: int,
    trigger: bool = True,
    wall_now: datetime | None = None,
) -> list[TriggerOutcome]:
    """Ask for one retraining run per target, unless one is in progress or recent.

    Args:
        retrain: Target -> reasons (:attr:`MonitorReport.retrain`).
        deployments: Target -> deployment name (``flow/deployment``).
        cooldown_minutes: The cooldown (module docstring).
        trigger: False reports what would be triggered and calls nothing.
        wall_now: Current wall-clock time (default now, UTC).

    Returns:
        One outcome per target, in the order of ``retrain``.
    """
    logger = _logger()
    wall = wall_now or datetime.now(UTC)
    cooldown = timedelta(minutes=cooldown_minutes)
    outcomes = []
    for target, reasons in retrain.items():
        name = deployments.get(target)
        if name is None:
            outcome = TriggerOutcome(
                target, "", "missing", list(reasons), detail=f"no deployment set for {target}"
            )
        elif not trigger:
            outcome = TriggerOutcome(
                target, name, "disabled", list(reasons), detail="triggering is off"
            )
        else:
            try:
                outcome = _trigger_one(target, name, list(reasons), wall, cooldown)
            except Exception as err:  # the cycle that asked must go on; the artifact says
                logger.exception("triggering %s failed", name)
                outcome = TriggerOutcome(
                    target, name, "error", list(reasons), detail=f"{type(err).__name__}: {err}"
                )
        log = logger.info if outcome.status == "triggered" else logger.warning
        log("retrain %s (%s): %s", target, outcome.status, outcome.detail)
        outcomes.append(outcome)
    return outcomes


def feedback_markdown(report: MonitorReport, outcomes: list[TriggerOutcome]) -> str:
    """The artifact: the report's tables, then what was asked of each deployment and why."""
    lines = [report.markdown(), "## Retraining", ""]
    if not outcomes:
        lines.append("Nothing to retrain.")
    for o in outcomes:
        run = f"`{o.flow_run_name}` (`{o.flow_run_id}`)" if o.flow_run_id else "-"
        lines += [
            f"### {o.target}: **{o.status}**",
            "",
            f"- deployment: `{o.deployment or '-'}`",
            f"- flow run: {run}",
            f"- {o.detail}",
            "- why:",
            *[f"  - {reason}" for reason in o.reasons],
            "",
        ]
    return "\n".join(lines) + "\n"


def publish(report: MonitorReport, outcomes: list[TriggerOutcome]) -> dict[str, Any]:
    """Write the ``feedback`` artifact, log the findings and return the check's result."""
    logger = _logger()
    for finding in report.findings:
        logger.warning("%s %s: %s", finding.kind, finding.service, finding.message)
    create_markdown_artifact(
        markdown=feedback_markdown(report, outcomes),
        key=ARTIFACT_KEY,
        description="Feedback check: forecast error, SLA, cost, drift and retraining",
    )
    return {
        "now": report.now.isoformat(),
        "window_start": report.window_start.isoformat(),
        "metrics": report.metrics(),
        "findings": [f.to_dict() for f in report.findings],
        "retrain": {target: list(reasons) for target, reasons in report.retrain.items()},
        "retraining": [o.to_dict() for o in outcomes],
        "triggered": [o.to_dict() for o in outcomes if o.status == "triggered"],
        "notes": list(report.notes),
    }


def feedback_cycle(
    settings: Settings,
    now: datetime | pd.Timestamp,
    thresholds: MonitorThresholds | None = None,
    trigger: bool = True,
    deployments: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One feedback check without tasks: read, evaluate, trigger, artifact.

    For the inference flow to call after a cycle (inside its flow or a task).

    Args:
        settings: Settings (the offline store's folder).
        now: End (exclusive) of the window; the cycle's minute.
        thresholds: Evidence and limits (default :class:`MonitorThresholds`).
        trigger: Whether to trigger retraining deployments.
        deployments: Target -> deployment (default :data:`DEFAULT_DEPLOYMENTS`).

    Returns:
        Metrics, findings, retraining reasons and outcomes (see :func:`publish`).
    """
    limits = thresholds or MonitorThresholds()
    at = to_minute(now)
    evidence = load_evidence(OfflineStore(settings.offline_dir), at, limits)
    report = assess_evidence(evidence, at, limits)
    outcomes = trigger_retraining(
        report.retrain, deployments or DEFAULT_DEPLOYMENTS, limits.cooldown_minutes, trigger
    )
    return publish(report, outcomes)


# -- tasks and flow ----------------------------------------------------------------------


@task(**IO_RETRIES)
def read_evidence(settings: Settings, now: pd.Timestamp, thresholds: MonitorThresholds) -> Evidence:
    """Decisions, metrics and profiles of the checked range from the offline store."""
    return load_evidence(OfflineStore(settings.offline_dir), now, thresholds)


@task(cache_policy=NO_CACHE)
def assess(evidence: Evidence, now: pd.Timestamp, thresholds: MonitorThresholds) -> MonitorReport:
    """Forecast error, coverage, SLA, cost and drift of the window."""
    return assess_evidence(evidence, now, thresholds)


# No retries: API errors are already caught and reported; a retry must not double a run.
@task(cache_policy=NO_CACHE)
def request_retraining(
    report: MonitorReport, deployments: dict[str, str], trigger: bool
) -> list[TriggerOutcome]:
    """Trigger the retraining deployments the findings call for."""
    return trigger_retraining(
        report.retrain, deployments, report.thresholds.cooldown_minutes, trigger
    )


@flow(name="monitor", log_prints=True)
def monitor_flow(
    state_dir: str | None = None,
    now: datetime | None = None,
    window_minutes: int = 60,
    trigger: bool = True,
    forecaster_deployment: str = DEFAULT_DEPLOYMENTS[FORECASTER],
    controller_deployment: str = DEFAULT_DEPLOYMENTS[CONTROLLER],
) -> dict[str, Any]:
    """Check the last window's forecasts, SLA, cost and drift; trigger retraining if needed.

    Args:
        state_dir: State folder (default from settings / AUTOSCALER_STATE_DIR).
        now: End (exclusive, UTC) of the checked window; default the current minute.
        window_minutes: Minutes of recent evidence.
        trigger: Trigger the retraining deployments (False: report only).
        forecaster_deployment: Deployment retraining the forecaster (``flow/deployment``).
        controller_deployment: Deployment retraining the controller.

    Returns:
        Metrics, findings, retraining reasons and what was triggered.
    """
    settings = build_settings(state_dir=Path(state_dir) if state_dir else None)
    at = current_minute() if now is None else to_minute(now)
    defaults = MonitorThresholds()
    thresholds = MonitorThresholds(
        window_minutes=window_minutes, min_minutes=min(defaults.min_minutes, window_minutes)
    )
    deployments: dict[str, str] = {
        FORECASTER: forecaster_deployment,
        CONTROLLER: controller_deployment,
    }
    evidence = read_evidence(settings, at, thresholds)
    report = assess(evidence, at, thresholds)
    outcomes = request_retraining(report, deployments, trigger)
    return publish(report, outcomes)
