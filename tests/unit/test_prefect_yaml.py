"""prefect.yaml: the deployments of DESIGN.md section 9, checked without a server.

Entry points, schedules, the inference concurrency limit, the shared state folder and
every parameter are checked against the flows' source: the flow functions are found in
the syntax tree (no import), and the parameters a deployment sets are validated against
the schema Prefect builds for the UI form. Deploying and running for real is
tests/integration/test_deployments.py.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import itertools
import os
import shlex
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
POOL = "autoscaler-process"

# deployment -> (entrypoint, cron schedules)
EXPECTED: dict[str, tuple[str, list[str]]] = {
    "ingest": ("flows.ingest:ingest_flow", ["*/5 * * * *"]),
    "features": ("flows.features:features_flow", ["1-59/5 * * * *"]),
    "inference": ("flows.inference:inference_flow", ["* * * * *"]),
    "train-forecaster": ("flows.train_forecaster:train_forecaster_flow", ["30 2 * * *"]),
    "train-controller": ("flows.train_controller:train_controller_flow", ["0 4 * * 0"]),
    "backtest": ("flows.backtest:backtest_flow", []),
    "promote": ("flows.promote:promote_flow", []),
}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def deployments(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    names = [d["name"] for d in doc["deployments"]]
    assert len(names) == len(set(names)), f"deployment names repeat: {names}"
    return {d["name"]: d for d in doc["deployments"]}


def source_file(entrypoint: str) -> Path:
    """The file of a ``package.module:function`` entry point."""
    module, _, _ = entrypoint.partition(":")
    return ROOT / (module.replace(".", "/") + ".py")


def flow_function(entrypoint: str) -> ast.FunctionDef:
    """The module-level function an entry point names, which must be a Prefect flow."""
    module, _, name = entrypoint.partition(":")
    path = source_file(entrypoint)
    assert path.is_file(), f"{entrypoint} names {path}, which does not exist"
    tree = ast.parse(path.read_text(), filename=str(path))
    found = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    assert found, f"{path} defines no function {name}"
    decorators = [d.func if isinstance(d, ast.Call) else d for d in found[0].decorator_list]
    assert any(isinstance(d, ast.Name) and d.id == "flow" for d in decorators), (
        f"{module}.{name} is not decorated with @flow"
    )
    return found[0]


def argument_names(function: ast.FunctionDef) -> list[str]:
    args = function.args
    return [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]]


@functools.cache
def parameter_schema(entrypoint: str) -> dict[str, Any]:
    """The flow's parameter schema as the deployment gets it, read from the source.

    Prefect resolves the annotations by running the module's imports (torch for the
    training flows), so each schema is built once.
    """
    from prefect.utilities.callables import parameter_schema_from_entrypoint

    function = entrypoint.partition(":")[2]
    schema = parameter_schema_from_entrypoint(f"{source_file(entrypoint)}:{function}")
    return schema.model_dump()


def cron_dates(cron: str, n: int, start: datetime) -> list[datetime]:
    """The first ``n`` times the server would schedule ``cron`` (UTC) from ``start``."""
    from prefect.server.schemas.schedules import CronSchedule

    dates = asyncio.run(CronSchedule(cron=cron, timezone="UTC").get_dates(n, start=start))
    return [datetime.fromisoformat(d.isoformat()) for d in dates]


def test_the_expected_deployments_and_nothing_else(
    deployments: dict[str, dict[str, Any]],
) -> None:
    assert sorted(deployments) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_entrypoint_names_a_flow_function_in_an_existing_file(
    deployments: dict[str, dict[str, Any]], name: str
) -> None:
    entrypoint = deployments[name]["entrypoint"]
    assert entrypoint == EXPECTED[name][0]
    # Every flow takes the state folder, so a run can be pointed at another one.
    assert "state_dir" in argument_names(flow_function(entrypoint))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_entrypoint_is_a_module_path_not_a_file_path(
    deployments: dict[str, dict[str, Any]], name: str
) -> None:
    # A file entry point (flows/ingest.py:ingest_flow) puts flows/ first on sys.path when
    # the worker loads it, so `import features` finds flows/features.py instead of the
    # features package and the run crashes before it starts.
    entrypoint = deployments[name]["entrypoint"]
    assert ".py:" not in entrypoint and entrypoint.startswith("flows.")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_parameter_is_a_valid_flow_parameter(
    deployments: dict[str, dict[str, Any]], name: str
) -> None:
    from prefect.utilities.schema_tools import validate

    deployment = deployments[name]
    given = deployment.get("parameters") or {}
    unknown = set(given) - set(argument_names(flow_function(deployment["entrypoint"])))
    assert not unknown, f"{name}: {sorted(unknown)} are not parameters of the flow"
    if given:
        # Types and enums, as the server checks them when it creates a run.
        schema = parameter_schema(deployment["entrypoint"])
        validate(given, schema, raise_on_error=True, ignore_required=True)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_schedules_are_the_specified_utc_crons(
    deployments: dict[str, dict[str, Any]], name: str
) -> None:
    schedules = deployments[name].get("schedules")
    # On-demand deployments say `schedules: []`: an explicit empty list also removes a
    # schedule left on the server by an earlier deploy (an absent key would keep it).
    assert schedules is not None, f"{name}: give `schedules` ([] for on demand)"
    assert [s["cron"] for s in schedules] == EXPECTED[name][1]
    assert all(s.get("timezone") == "UTC" for s in schedules)


def test_schedule_rhythms() -> None:
    start = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)  # a Monday
    ingest = cron_dates(EXPECTED["ingest"][1][0], 12, start)
    features = cron_dates(EXPECTED["features"][1][0], 12, start)
    assert all(b - a == timedelta(minutes=5) for a, b in itertools.pairwise(ingest))
    # Features run one minute after each ingest, never at the same time.
    assert [f - i for i, f in zip(ingest, features, strict=True)] == [timedelta(minutes=1)] * 12
    inference = cron_dates(EXPECTED["inference"][1][0], 3, start)
    assert inference[1] - inference[0] == timedelta(minutes=1)
    daily = cron_dates(EXPECTED["train-forecaster"][1][0], 3, start)
    assert [b - a for a, b in itertools.pairwise(daily)] == [timedelta(days=1)] * 2
    weekly = cron_dates(EXPECTED["train-controller"][1][0], 3, start)
    assert [b - a for a, b in itertools.pairwise(weekly)] == [timedelta(days=7)] * 2
    # The weekly controller retrain starts after that day's forecaster retrain.
    midnight = weekly[0].replace(hour=0, minute=0)
    (that_day,) = cron_dates(EXPECTED["train-forecaster"][1][0], 1, midnight)
    assert that_day.date() == weekly[0].date() and that_day < weekly[0]


def test_inference_runs_one_at_a_time_and_drops_overlapping_runs(
    deployments: dict[str, dict[str, Any]],
) -> None:
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy

    limit = deployments["inference"]["concurrency_limit"]
    assert limit["limit"] == 1
    assert ConcurrencyLimitStrategy(limit["collision_strategy"]) is (
        ConcurrencyLimitStrategy.CANCEL_NEW
    )


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_deployment_runs_on_the_process_pool_with_the_shared_state_folder(
    deployments: dict[str, dict[str, Any]], name: str
) -> None:
    deployment = deployments[name]
    pool = deployment["work_pool"]
    assert pool["name"] == POOL
    env = pool["job_variables"]["env"]
    assert env["AUTOSCALER_STATE_DIR"] == "{{ state.stdout }}"
    assert env["GX_ANALYTICS_ENABLED"] == "false"
    assert env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    assert deployment["tags"] and "autoscaler" in deployment["tags"]
    assert deployment["description"].strip()


def test_runs_start_in_the_checkout_the_deployment_was_made_from(doc: dict[str, Any]) -> None:
    # Build steps run where `prefect deploy` runs (the repository root); their output is
    # written into each deployment, so the worker needs no guess about paths.
    (checkout, state) = (
        step["prefect.deployments.steps.run_shell_script"] for step in doc["build"]
    )
    assert (checkout["id"], checkout["script"]) == ("checkout", "pwd")
    assert state["id"] == "state"
    (pull,) = doc["pull"]
    assert pull == {
        "prefect.deployments.steps.set_working_directory": {"directory": "{{ checkout.stdout }}"}
    }
    assert not any("pull" in d or "build" in d for d in doc["deployments"])


def _state_step(doc: dict[str, Any], env: dict[str, str]) -> str:
    """Run the `state` build step's command as `prefect deploy` would, in the repo root."""
    step = next(iter(doc["build"][1].values()))
    assert step["id"] == "state"
    done = subprocess.run(
        shlex.split(step["script"]), cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_state_step_resolves_the_state_folder_as_the_settings_do(
    doc: dict[str, Any], tmp_path: Path
) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AUTOSCALER_")}
    assert _state_step(doc, base) == str((ROOT / ".state").resolve())
    relative = _state_step(doc, {**base, "AUTOSCALER_STATE_DIR": "elsewhere/state"})
    assert relative == str((ROOT / "elsewhere/state").resolve())
    given = _state_step(doc, {**base, "AUTOSCALER_STATE_DIR": str(tmp_path)})
    assert given == str(tmp_path.resolve())
