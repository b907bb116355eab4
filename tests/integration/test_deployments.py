"""prefect.yaml on a real Prefect server, run by a real process worker.

The module starts its own ``prefect server start`` in a subprocess (its own PREFECT_HOME
and database, SQLite or on scaled-out engines PostgreSQL; no analytics, no UI, no scheduler
so that only the run made here executes), creates the work pool, deploys ``ingest`` from
the repository's prefect.yaml with ``prefect deploy`` as an operator would, starts one run
of it on a tiny drop-folder CSV and lets ``prefect worker start --run-once`` execute it in
a fresh process. The state folder is given only at deploy time (AUTOSCALER_STATE_DIR), so
the rows landing there show that prefect.yaml carries it to the worker's run. The server
and worker are stopped by their process ids, also when a test fails. About 45 s.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import scaled_out
import yaml
from prefect_server import client_env, prefect_executable, running_server, stop, tail

from features.offline import OfflineStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POOL = "autoscaler-process"
DEPLOYMENT = "ingest/ingest"
RUN_TIMEOUT_S = 180
CLI_TIMEOUT_S = 120
# Ten minutes old: on the minute, not in the future, older than the freshness window
# (a warning, not a rejection).
DROP_START = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("min") - pd.Timedelta(minutes=10)
DROP_ROWS = pd.DataFrame(
    {
        "service_id": ["orders"] * 3 + ["search"] * 3,
        "ts": [DROP_START + pd.Timedelta(minutes=i) for i in (0, 1, 2)] * 2,
        "events_in": [120.0, 130.0, 125.0, 40.0, 45.0, 50.0],
    }
)
# Metrics land only for services with a profile (else `unknown_service`): the export's.
DROP_PROFILES = pd.DataFrame(
    {
        "service_id": ["orders", "search"],
        "ts": [f"{DROP_START - pd.Timedelta(days=1):%Y-%m-%d %H:%M:%S}"] * 2,
        "criticality": [1, 2],
        "sla_latency_s": [30.0, 60.0],
        "sla_target": [0.99, 0.99],
        "cost_per_job_hour": [0.2, 0.2],
        "daily_budget": [50.0, 50.0],
        "min_jobs": [1, 1],
        "max_jobs": [10, 10],
        "max_step": [2, 2],
        "job_capacity_eps": [25.0, 25.0],
        "job_startup_s": [90.0, 90.0],
    }
)


@dataclass
class Server:
    """A running Prefect server and what the CLI needs to reach it."""

    url: str
    env: dict[str, str]
    root: Path
    tmp: Path

    def cli(self, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        """Run the venv's ``prefect`` in the repository root against this server."""
        done = subprocess.run(
            [str(prefect_executable()), *args],
            cwd=self.root,
            env={**self.env, **extra_env},
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
        )
        assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}{done.stderr}"
        return done


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("prefect-server")
    # On scaled-out engines its database is a fresh one on PostgreSQL, else SQLite.
    with running_server(tmp, scaled_out.prefect_database("prefect_deployments")) as (url, home):
        yield Server(url=url, env=client_env(home, url), root=pytestconfig.rootpath, tmp=tmp)


@pytest.fixture(scope="module")
def state_dir(server: Server) -> Path:
    """The state folder, with an event_metrics export and its services' profiles to drop."""
    state = server.tmp / "state"
    drop = state / "drop"
    drop.mkdir(parents=True)
    out = DROP_ROWS.assign(ts=DROP_ROWS["ts"].dt.strftime("%Y-%m-%d %H:%M:%S"))
    out.to_csv(drop / "event_metrics-export.csv", index=False)
    DROP_PROFILES.to_csv(drop / "service_profiles-export.csv", index=False)
    return state


@pytest.fixture(scope="module")
def deployed(server: Server, state_dir: Path) -> Any:
    """The work pool and the `ingest` deployment, made with the CLI from prefect.yaml."""
    from prefect.client.orchestration import SyncPrefectClient

    server.cli("work-pool", "create", POOL, "--type", "process")
    # The state folder is known only here, at deploy time, as an operator would give it.
    server.cli("--no-prompt", "deploy", "--name", "ingest", AUTOSCALER_STATE_DIR=str(state_dir))
    with SyncPrefectClient(api=server.url) as client:
        return client.read_deployment_by_name(DEPLOYMENT)


@pytest.fixture(scope="module")
def finished_run(server: Server, deployed: Any) -> Any:
    """One run of the deployment on the drop folder, executed by a process worker."""
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(api=server.url) as client:
        run = client.create_flow_run_from_deployment(deployed.id, parameters={"source": "drop"})
        log = server.tmp / "worker.log"
        with log.open("wb") as out:
            # Started after the run exists: --run-once polls once, runs what is due, exits.
            worker = subprocess.Popen(
                [str(prefect_executable()), "worker", "start", "--pool", POOL, "--run-once"],
                cwd=server.tmp,  # the pull step, not the worker's folder, sets the checkout
                env=server.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while True:
                run = client.read_flow_run(run.id)
                if run.state is not None and run.state.is_final():
                    break
                assert time.monotonic() < deadline, f"run not finished in time:\n{tail(log)}"
                time.sleep(1)
            worker.wait(timeout=30)
        finally:
            stop(worker)
        assert run.state.is_completed(), f"run ended {run.state!r}:\n{tail(log)}"
        return run


def test_deployment_matches_prefect_yaml(server: Server, deployed: Any, state_dir: Path) -> None:
    spec = next(
        d
        for d in yaml.safe_load((server.root / "prefect.yaml").read_text())["deployments"]
        if d["name"] == "ingest"
    )
    assert [(s.schedule.cron, s.schedule.timezone) for s in deployed.schedules] == [
        (s["cron"], s["timezone"]) for s in spec["schedules"]
    ]
    assert all(s.active for s in deployed.schedules)
    assert deployed.entrypoint == spec["entrypoint"]
    assert deployed.work_pool_name == POOL
    assert deployed.parameters == spec["parameters"]
    assert sorted(deployed.tags) == sorted(spec["tags"])
    assert deployed.global_concurrency_limit.limit == spec["concurrency_limit"]["limit"]
    assert (
        deployed.concurrency_options.collision_strategy
        == (spec["concurrency_limit"]["collision_strategy"])
    )
    # Paths were resolved at deploy time: the checkout and the absolute state folder.
    assert deployed.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(server.root)}}
    ]
    env = deployed.job_variables["env"]
    assert env["AUTOSCALER_STATE_DIR"] == str(state_dir.resolve())
    # The UI's run form comes from the flow's signature.
    schema = deployed.parameter_openapi_schema["properties"]
    assert schema["source"]["enum"][:3] == ["simulator", "drop", "push"]
    assert {"days", "end", "force", "state_dir"} <= set(schema)


def test_worker_run_lands_the_rows_in_the_deployed_state_folder(
    server: Server, finished_run: Any, state_dir: Path
) -> None:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    assert finished_run.parameters == {"source": "drop"}
    stored = OfflineStore(state_dir / "offline").read("event_metrics")
    got = stored[["service_id", "ts", "events_in"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, DROP_ROWS, check_dtype=False)
    assert not (state_dir / "quarantine").exists()
    with SyncPrefectClient(api=server.url) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[finished_run.id]))
        )
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[finished_run.id]))
        )
    # The run started in the checkout through the pull step, not in the worker's folder.
    messages = [log.message for log in logs]
    assert any("set_working_directory" in m and "completed successfully" in m for m in messages), (
        messages
    )
    # Its summary is an artifact the Prefect UI shows.
    summary = next(a for a in artifacts if a.key == "ingest-summary")
    assert summary.type == "markdown" and "event_metrics" in str(summary.data)
