"""The integration suite on scaled-out engines: Redis, PostgreSQL and a Prefect server.

CI (.ci/run) starts Redis and PostgreSQL (.ci/services) and runs tests/integration a second
time with their settings in the environment, exactly as a user would set them:

* ``AUTOSCALER_ONLINE_STORE=redis`` and ``AUTOSCALER_REDIS_URL``: the Feast online store;
* ``AUTOSCALER_MLFLOW_TRACKING_URI=postgresql://...``: MLflow tracking and registry (the
  artifacts stay in the state folder, standing in for object storage);
* ``AUTOSCALER_TEST_PREFECT_DATABASE=postgresql+asyncpg://...`` (tests only): the suite's
  Prefect server is a real ``prefect server start`` on that PostgreSQL server, not the
  temporary one, and test_deployments.py's server (process work pool) is too.

The code under test reads nothing here. The one thing added is isolation: each state folder
a test makes stands for one installation, so it gets its own database on the PostgreSQL
server (``<database>_<hash of the folder>``) and its own Redis database (``,db=N``), as two
installations sharing the servers would be configured. Without that, tests that expect a
fresh registry or online store would see another test's models and features (the Feast
Redis keys carry the project, not the folder).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

PREFECT_DATABASE_ENV = "AUTOSCALER_TEST_PREFECT_DATABASE"


PREFECT_SUITE_DATABASE = "prefect_suite"
# .ci/services starts Redis with this many databases; each xdist worker uses one block.
REDIS_DATABASES = 1024
REDIS_BLOCK = 128


def prefect_database(name: str) -> str | None:
    """A fresh database ``name`` for a Prefect server, or None off scaled-out engines."""
    url = _prefect_url(name)
    if url is not None:
        _recreate(url)
    return url


def prefect_suite_database() -> str | None:
    """The database of the suite's Prefect server (conftest.py), or None off scaled-out engines."""
    return _prefect_url(PREFECT_SUITE_DATABASE)


def _worker() -> tuple[str, int]:
    """This pytest-xdist worker's name and number (``gw1``, 1), or ("", 0) without xdist.

    Workers run side by side against the same servers, so each has its own databases.
    """
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    return name, int(name.removeprefix("gw")) if name.startswith("gw") else 0


def _prefect_url(name: str) -> str | None:
    base = os.environ.get(PREFECT_DATABASE_ENV)
    worker, _ = _worker()
    return _with_database(base, f"{name}_{worker}" if worker else name) if base else None


def _with_database(url: str, database: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=database).render_as_string(hide_password=False)


def _admin_engine(url: str) -> Any:
    """An engine on the server's ``postgres`` database, outside transactions (CREATE DATABASE)."""
    from sqlalchemy import create_engine

    admin = _with_database(url, "postgres").replace("+asyncpg", "", 1)
    return create_engine(admin, isolation_level="AUTOCOMMIT")


def _recreate(url: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    engine = _admin_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()


class _Installations:
    """One database on each engine per state folder, made on first use."""

    def __init__(self) -> None:
        self.mlflow: dict[Path, str] = {}
        self.redis: dict[Path, int] = {}

    def mlflow_uri(self, base: str, state_dir: Path) -> str:
        key = state_dir.resolve()
        if key not in self.mlflow:
            from sqlalchemy.engine import make_url

            digest = hashlib.sha1(str(key).encode(), usedforsecurity=False).hexdigest()[:12]
            uri = _with_database(base, f"{make_url(base).database}_{digest}")
            _recreate(uri)
            self.mlflow[key] = uri
        return self.mlflow[key]

    def redis_db(self, feast_dir: Path) -> int:
        # Database 0 is the one the settings name; folders get 1, 2, ... (.ci/services
        # starts Redis with 1,024 of them), each xdist worker from its own block of 128.
        _, worker = _worker()
        db = self.redis.setdefault(feast_dir.resolve(), 1 + REDIS_BLOCK * worker + len(self.redis))
        if db >= REDIS_BLOCK * (worker + 1) or db >= REDIS_DATABASES:
            raise RuntimeError(
                f"redis database {db} is past this worker's block: more state folders "
                f"than {REDIS_BLOCK - 1}, or more workers than {REDIS_DATABASES // REDIS_BLOCK}"
            )
        return db

    def drop_databases(self) -> None:
        from sqlalchemy import text
        from sqlalchemy.engine import make_url

        if not self.mlflow:
            return
        engine = _admin_engine(next(iter(self.mlflow.values())))
        try:
            with engine.connect() as conn:
                for uri in self.mlflow.values():
                    name = make_url(uri).database
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            engine.dispose()


@contextmanager
def isolated_installations() -> Iterator[None]:
    """Give every state folder its own databases while the settings name shared servers.

    Does nothing when the settings name the embedded defaults (SQLite files already live in
    each state folder).
    """
    from autoscaler.settings import Settings, build_settings
    from features import store

    settings = build_settings()
    on_postgres = (settings.mlflow_tracking_uri or "").startswith("postgresql")
    on_redis = settings.online_store == "redis"
    if not (on_postgres or on_redis):
        yield
        return
    installations = _Installations()
    configured_uri = Settings.mlflow_uri
    configured_repo_config = store.repo_config

    def mlflow_uri(self: Settings) -> str:
        uri: str = configured_uri.fget(self)  # type: ignore[attr-defined]
        if not uri.startswith("postgresql"):
            return uri
        return installations.mlflow_uri(uri, self.state_dir)

    def repo_config(cfg: Any) -> Any:
        if cfg.online_store == "redis" and ",db=" not in cfg.redis_url:
            db = installations.redis_db(cfg.feast_dir)
            cfg = replace(cfg, redis_url=f"{cfg.redis_url},db={db}")
        return configured_repo_config(cfg)

    with pytest.MonkeyPatch.context() as patch:
        if on_postgres:
            patch.setattr(Settings, "mlflow_uri", property(mlflow_uri))
        if on_redis:
            patch.setattr(store, "repo_config", repo_config)
        try:
            yield
        finally:
            installations.drop_databases()
