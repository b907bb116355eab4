"""Faults of the model registry: unreachable, or a champion that fails to load.

The engine follows the aliases through a real MLflow registry (SQLite): it keeps serving
the cached champion when the registry fails, falls back to the rule when it has nothing
cached, says why in every decision cycle, and recovers when the fault clears.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from policies import register_constant
from test_engine import request

from autoscaler.runtime import registry_config
from autoscaler.settings import Settings, build_settings
from models import registry
from models.registry import AliasCache
from serving.engine import CONTROLLER, FORECASTER, DecisionEngine

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A registry with a forecaster and two controllers; v1 of each is champion."""
    from bench.latency import register_untrained_forecaster
    from models.forecaster.model import NetworkConfig

    settings = build_settings(state_dir=tmp_path_factory.mktemp("faults"))
    register_untrained_forecaster(settings, NetworkConfig(hidden=8, heads=2))
    first = register_constant(settings, extra_jobs=0)
    register_constant(settings, extra_jobs=1)
    registry.set_alias(registry_config(settings, CONTROLLER), CONTROLLER, "champion", first)
    return settings


def engine_for(settings: Settings) -> tuple[DecisionEngine, AliasCache]:
    cache = AliasCache(registry_config(settings, "faults"))
    return DecisionEngine(cache), cache


def unreachable(cache: AliasCache, tmp: Path) -> None:
    """Point the cache at a registry that cannot be opened (a file where a folder must be)."""
    blocker = tmp / "not-a-folder"
    blocker.write_text("")
    cache.config = replace(cache.config, tracking_uri=f"sqlite:///{blocker}/mlflow.db")


def test_unreachable_registry_serves_the_cached_champions_then_recovers(
    settings: Settings, tmp_path: Path
) -> None:
    engine, cache = engine_for(settings)
    first = engine.decide(request())
    assert set(first["controller_version"]) == {"1"} and engine.used.problems == {}
    good = cache.config
    unreachable(cache, tmp_path)
    during = engine.decide(request())
    # Still the champions, from the cache; every cycle says the registry failed.
    assert set(during["controller"]) == {"ppo"} and set(during["controller_version"]) == {"1"}
    assert set(during["forecaster_version"]) == {"1"}
    assert set(engine.used.problems) == {FORECASTER, CONTROLLER}
    assert all("serving the cached version 1" in p for p in engine.used.problems.values())
    cache.config = good
    after = engine.decide(request())
    assert engine.used.problems == {} and set(after["controller_version"]) == {"1"}


def test_unreachable_registry_with_nothing_cached_falls_back_to_the_rule(
    settings: Settings, tmp_path: Path
) -> None:
    engine, cache = engine_for(settings)
    unreachable(cache, tmp_path)
    out = engine.decide(request())
    assert set(out["controller"]) == {"predictive-rule"}
    assert out["forecaster_version"].isna().all()
    assert "RegistryError" in engine.used.problems[CONTROLLER]
    # Decisions stay within the service's limits and the step limit.
    frame = request()
    assert (out["jobs_after"] >= frame["min_jobs"]).all()
    assert (out["jobs_after"] <= frame["max_jobs"]).all()
    assert (out["action"].abs() <= frame["max_step"]).all()


def _break_artifacts(settings: Settings, version: str) -> None:
    """Delete the policy weights of a registered controller version."""
    client = registry.client(registry_config(settings, CONTROLLER))
    mv: Any = client.get_model_version(CONTROLLER, version)
    # The version's files live in its logged model's folder (models/m-<id>/) of the store.
    found = re.search(r"m-[0-9a-f]{32}", str(mv.source))
    assert found is not None, mv.source
    store = settings.mlflow_artifacts_dir
    removed = [p for p in store.rglob("policy.npz") if found.group() in p.parts]
    assert removed, f"no policy.npz of {found.group()} under {store}"
    for path in removed:
        path.unlink()


def test_a_champion_that_fails_to_load_is_not_served(settings: Settings) -> None:
    cfg = registry_config(settings, CONTROLLER)
    engine, _ = engine_for(settings)
    assert set(engine.decide(request())["controller_version"]) == {"1"}
    _break_artifacts(settings, "2")
    registry.set_alias(cfg, CONTROLLER, "champion", "2")
    try:
        # A running engine keeps the version it has and says why.
        out = engine.decide(request())
        assert set(out["controller_version"]) == {"1"}
        assert "serving the cached version 1" in engine.used.problems[CONTROLLER]
        # A new process (nothing cached) cannot load it either: the rule decides.
        fresh, _ = engine_for(settings)
        out = fresh.decide(request())
        assert set(out["controller"]) == {"predictive-rule"}
        assert CONTROLLER in fresh.used.problems
    finally:
        registry.set_alias(cfg, CONTROLLER, "champion", "1")
    assert set(engine.decide(request())["controller_version"]) == {"1"}
    assert CONTROLLER not in engine.used.problems
