"""The feedback loop on Prefect's test server: drift -> monitor flow -> retraining run.

The offline store holds two weeks of two services' traffic (a week of drift reference
plus its week of seasonal lag) and an hour of decisions whose forecasts follow the old
level. The retraining deployment exists on the server with no worker and no schedule, so
``run_deployment`` can create its run and nothing ever trains.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pandas as pd
import pytest
from monitor_world import synthetic_world

from features.offline import OfflineStore

pytestmark = pytest.mark.integration

END = pd.Timestamp("2024-06-03 12:00")
DEPLOYMENT = "train-forecaster/train-forecaster"
DRIFTING, STEADY = "checkout", "search"
BASE = {DRIFTING: 3000.0, STEADY: 1200.0}


def _write_store(state: Path, shift: float) -> None:
    """Metrics of the 14 days and 1 hour before END, the last hour of DRIFTING times
    ``shift``; decisions of that hour forecasting the old level; profiles."""
    tables = synthetic_world(
        BASE,
        END - pd.Timedelta(days=14, hours=1),
        END,
        END - pd.Timedelta(hours=1),
        shift={DRIFTING: shift},
        seed=7,
        max_jobs=200,
        forecaster_version="1",
    )
    store = OfflineStore(state / "offline")
    for table, frame in tables.items():
        store.append(table, frame)


@pytest.fixture(scope="module")
def deployment_id(prefect_harness: None) -> Iterator[UUID]:
    """The retraining deployment, registered without a worker or schedule; no runs."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("train-forecaster")
        dep_id = client.create_deployment(
            flow_id=flow_id,
            name="train-forecaster",
            entrypoint="flows/train_forecaster.py:train_forecaster_flow",
        )
        for run in _runs(dep_id):
            client.delete_flow_run(run.id)
    yield dep_id


@pytest.fixture(scope="module")
def drift_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state folder whose last hour of checkout traffic is 4x its old level."""
    state = tmp_path_factory.mktemp("drift")
    _write_store(state, shift=4.0)
    return state


def _runs(dep_id: UUID) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id]))
        )


def _monitor(state: Path, **kwargs: Any) -> tuple[dict[str, Any], str]:
    """Run the monitor flow; its result and the markdown of its ``feedback`` artifact."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    from flows.monitor import monitor_flow

    state_obj = monitor_flow(
        state_dir=str(state), now=END.to_pydatetime(), return_state=True, **kwargs
    )
    result = state_obj.result()
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["feedback"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[state_obj.state_details.flow_run_id]),
            )
        )
    assert len(artifacts) == 1
    return result, str(artifacts[0].data)


def test_drift_triggers_one_retraining_run_and_cooldown_holds(
    drift_state: Path, deployment_id: UUID
) -> None:
    from prefect.states import Cancelled

    before = {r.id for r in _runs(deployment_id)}
    result, markdown = _monitor(drift_state)

    drift = [f for f in result["findings"] if f["kind"] == "drift"]
    assert [(f["service"], f["feature"]) for f in drift] == [(DRIFTING, "events_in")]
    assert {f["service"] for f in result["findings"]} == {DRIFTING}
    assert list(result["retrain"]) == ["forecaster"]
    [triggered] = result["triggered"]
    assert triggered["status"] == "triggered"
    assert triggered["deployment"] == DEPLOYMENT
    new = [r for r in _runs(deployment_id) if r.id not in before]
    assert [str(r.id) for r in new] == [triggered["flow_run_id"]]
    run = new[0]
    assert run.state is not None and run.state.is_scheduled()
    assert "feedback" in run.tags
    assert run.parent_task_run_id is None  # not a subflow: outlives the monitor run
    # The artifact says why and what it triggered.
    assert "| drift | checkout | events_in |" in markdown
    assert "### forecaster: **triggered**" in markdown
    assert triggered["flow_run_id"] in markdown and run.name in markdown

    # Within the cooldown: the scheduled run is enough ...
    again, markdown = _monitor(drift_state)
    [outcome] = again["retraining"]
    assert outcome["status"] == "active"
    assert outcome["flow_run_id"] == triggered["flow_run_id"]
    assert again["triggered"] == []
    assert "### forecaster: **active**" in markdown
    # ... and once it is over (here: cancelled), the cooldown still holds.
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run.id, Cancelled(), force=True)
    third, _ = _monitor(drift_state)
    assert [o["status"] for o in third["retraining"]] == ["cooldown"]
    assert len([r for r in _runs(deployment_id) if r.id not in before]) == 1


def test_without_drift_no_run_is_created(tmp_path: Path, deployment_id: UUID) -> None:
    _write_store(tmp_path, shift=1.0)
    before = {r.id for r in _runs(deployment_id)}
    result, markdown = _monitor(tmp_path)
    assert result["findings"] == []
    assert result["retrain"] == {}
    assert result["retraining"] == []
    assert {r.id for r in _runs(deployment_id)} == before
    assert result["metrics"]["checkout.forecast_minutes"] == 60.0
    assert "no retraining needed" in markdown


def test_a_missing_deployment_is_reported_not_raised(
    drift_state: Path, deployment_id: UUID
) -> None:
    result, markdown = _monitor(drift_state, forecaster_deployment="train-forecaster/nowhere")
    [outcome] = result["retraining"]
    assert outcome["status"] == "missing"
    assert "does not exist" in outcome["detail"]
    assert "### forecaster: **missing**" in markdown
    assert "'train-forecaster/nowhere' does not exist" in markdown


def test_feedback_cycle_inside_another_flow_can_report_only(
    drift_state: Path, deployment_id: UUID
) -> None:
    from prefect import flow

    from autoscaler.settings import build_settings
    from flows.monitor import feedback_cycle

    @flow(name="inference-like")
    def cycle() -> dict[str, Any]:
        return feedback_cycle(build_settings(state_dir=drift_state), END, trigger=False)

    before = {r.id for r in _runs(deployment_id)}
    result = cycle()
    assert [(o["target"], o["status"]) for o in result["retraining"]] == [
        ("forecaster", "disabled")
    ]
    assert result["metrics"]["retrain_forecaster"] == 1.0
    assert {r.id for r in _runs(deployment_id)} == before
