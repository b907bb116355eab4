"""Shared fixtures of the integration tests: one Prefect temporary server per session.

Prefect reads its settings from the environment when first imported, so they are set here,
before any test module imports a flow.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import scaled_out
from pipeline_state import PIPELINE_DAYS, PIPELINE_END, PIPELINE_MODULES
from prefect_server import drain_client_workers, running_server

from autoscaler.settings import Settings, build_settings

_PREFECT_HOME = tempfile.mkdtemp(prefix="autoscaler-prefect-")
os.environ.update(
    {
        "PREFECT_HOME": _PREFECT_HOME,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # A cold start of the temporary server took 18 s on a 2-core machine.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "GX_ANALYTICS_ENABLED": "false",
    }
)
os.environ.pop("PREFECT_API_URL", None)


_HERE = Path(__file__).parent
_PIPELINE_FIXTURES = {"pipeline_settings", "pipeline_run"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a module that uses the shared pipeline state without being listed as one.

    Under pytest-xdist those modules run in one worker (tests/conftest.py), which is what
    lets the state be ingested once; an unlisted module would get a second copy, or, if it
    changed the state, make results depend on which worker ran what.
    """
    users = {
        Path(item.path)
        for item in items
        if _PIPELINE_FIXTURES & set(getattr(item, "fixturenames", ()))
    }
    unlisted = {p.stem for p in users if p.parent == _HERE and p.stem not in PIPELINE_MODULES}
    if unlisted:
        raise pytest.UsageError(
            f"{sorted(unlisted)} use the shared pipeline state: add them to "
            "PIPELINE_MODULES in tests/integration/pipeline_state.py"
        )


@pytest.fixture(scope="session", autouse=True)
def scaled_out_installations() -> Iterator[None]:
    """On scaled-out engines, each state folder gets its own databases (scaled_out.py)."""
    with scaled_out.isolated_installations():
        yield


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One Prefect server for the whole session (starting one takes seconds).

    The temporary test server on SQLite, or on scaled-out engines a ``prefect server start``
    on PostgreSQL that every flow of the session reports to.
    """
    database = scaled_out.prefect_database(scaled_out.PREFECT_SUITE_DATABASE)
    if database is None:
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=180):
            yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    tmp = tmp_path_factory.mktemp("prefect-server")
    with (
        running_server(tmp, database) as (url, _),
        temporary_settings(updates={PREFECT_API_URL: url}),
    ):
        yield
        drain_client_workers()


@pytest.fixture(scope="session")
def pipeline_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings of the state folder the simulated history is ingested into, once a session."""
    return build_settings(state_dir=tmp_path_factory.mktemp("state"), history_days=PIPELINE_DAYS)


@pytest.fixture(scope="session")
def pipeline_run(pipeline_settings: Settings, prefect_harness: None) -> dict[str, Any]:
    """Ingest the simulated history and refresh features, through the flows (about 1 min)."""
    from flows.features import features_flow
    from flows.ingest import ingest_flow

    state = str(pipeline_settings.state_dir)
    ingested = ingest_flow(
        source="simulator",
        days=PIPELINE_DAYS,
        end=PIPELINE_END.to_pydatetime(),
        state_dir=state,
    )
    features = features_flow(state_dir=state)
    return {"ingest": ingested, "features": features}
