"""The engines the settings name are the ones the code talks to, on each CI pass.

On the embedded defaults: a SQLite online store and MLflow on SQLite, both in the state
folder. On scaled-out engines (``make test-scaled``): Redis and PostgreSQL, picked from the
settings alone. So a pass that silently fell back to the defaults fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import scaled_out

from autoscaler.runtime import feast_config, registry_config
from autoscaler.settings import build_settings
from features.store import open_store
from models import registry

pytestmark = pytest.mark.integration


def test_online_store_is_the_configured_engine(tmp_path: Path) -> None:
    settings = build_settings(state_dir=tmp_path / "state")
    store = open_store(feast_config(settings))
    online = store.config.online_store
    if settings.online_store == "redis":
        assert online.type == "redis"
        # The settings' server; this folder's own database on it (scaled_out.py).
        assert online.connection_string.startswith(f"{settings.redis_url},db=")
        from redis import Redis

        host, port = settings.redis_url.split(":")
        assert Redis(host=host, port=int(port)).ping()
    else:
        assert online.type == "sqlite"
        assert Path(online.path).resolve() == (settings.feast_dir / "online.db").resolve()


def test_registry_is_the_configured_engine(tmp_path: Path) -> None:
    settings = build_settings(state_dir=tmp_path / "state")
    config = registry_config(settings, "engines")
    client = registry.client(config)
    # Creating an experiment is a write: it lands in the configured database.
    experiment = client.create_experiment("engines", artifact_location=config.artifact_location)
    assert client.get_experiment(experiment).name == "engines"
    dialect = client._tracking_client.store.engine.dialect.name
    if (settings.mlflow_tracking_uri or "").startswith("postgresql"):
        assert dialect == "postgresql"
    else:
        assert dialect == "sqlite"
        assert (settings.state_dir / "mlflow" / "mlflow.db").exists()
    # Artifacts stay in the state folder (standing in for object storage) on either engine.
    assert config.artifact_location.startswith(settings.mlflow_artifacts_dir.resolve().as_uri())


def test_flows_report_to_the_configured_prefect_server(prefect_harness: None) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client

    @flow
    def probe() -> int:
        return 1

    state = probe(return_state=True)
    assert state.is_completed()
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(run_id).state.is_completed()
    database = scaled_out.prefect_suite_database()
    if database is not None:
        # The run is a row in the PostgreSQL database the harness's server was started on.
        from sqlalchemy import create_engine, text

        engine = create_engine(database.replace("+asyncpg", "", 1))
        try:
            with engine.connect() as conn:
                found = conn.execute(
                    text("SELECT count(*) FROM flow_run WHERE id = :id"), {"id": run_id}
                ).scalar_one()
        finally:
            engine.dispose()
        assert found == 1
