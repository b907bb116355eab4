"""The `features` flow: stored metrics -> engineered features -> Feast apply -> materialize.

Each step is one task over a tested function of ``features.refresh`` / ``features.store``;
``features.refresh.refresh_features`` runs the same steps without Prefect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from autoscaler.runtime import feast_config
from autoscaler.settings import Settings, build_settings
from features import refresh
from features import store as feast_io
from features.engineering import FeatureFrames
from features.offline import OfflineStore

IO_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [2, 5, 15],
    "cache_policy": NO_CACHE,
}


@task(**IO_RETRIES)
def load_inputs(settings: Settings, full: bool) -> tuple[refresh.FeaturePlan, dict[str, Any]]:
    """Plan the refresh and read the stored metrics it needs."""
    cfg = feast_config(settings)
    if full:
        feast_io.clear_features(cfg)
    offline = OfflineStore(settings.offline_dir)
    plan = refresh.plan_refresh(offline, feast_io.read_watermark(cfg), cfg.sequence_days, full)
    tables = refresh.load_inputs(offline, plan) if plan.newest is not None else {}
    return plan, tables


@task(cache_policy=NO_CACHE)
def compute_features(tables: dict[str, Any], plan: refresh.FeaturePlan) -> FeatureFrames:
    """Engineer the features of the planned range."""
    return refresh.compute(tables, plan)


@task(**IO_RETRIES)
def write_features(settings: Settings, frames: FeatureFrames) -> dict[str, int]:
    """Write the feature Parquet the repo's FileSources read."""
    return feast_io.write_features(feast_config(settings), frames)


@task(**IO_RETRIES)
def apply_repo(settings: Settings) -> None:
    """Register the feature repo's definitions (``feast apply``)."""
    feast_io.apply(feast_config(settings))


@task(**IO_RETRIES)
def materialize(settings: Settings, start: pd.Timestamp, end: pd.Timestamp) -> None:
    """Load the new feature rows into the online store."""
    feast_io.materialize(feast_io.open_store(feast_config(settings)), start, end)


@flow(name="features", log_prints=True)
def features_flow(full_rebuild: bool = False, state_dir: str | None = None) -> dict[str, Any]:
    """Compute features from new metrics, write them, apply the repo, materialize.

    Args:
        full_rebuild: Recompute every minute instead of only the new ones (after a
            backfill of old data or a change of feature code).
        state_dir: State folder (default from settings / AUTOSCALER_STATE_DIR).

    Returns:
        Rows written per feature view and the materialized range.
    """
    settings = build_settings(state_dir=Path(state_dir) if state_dir else None)
    plan, tables = load_inputs(settings, full_rebuild)
    run = refresh.FeatureRun(plan)
    apply_repo(settings)
    if plan.newest is not None:
        frames = compute_features(tables, plan)
        run.rows = write_features(settings, frames)
        run.services = sorted(frames.minute["service_id"].unique().tolist())
        run.materialized = refresh.new_rows_range(frames)
        if run.materialized is not None:
            materialize(settings, *run.materialized)
    create_markdown_artifact(
        markdown=run.markdown(), key="features-summary", description="Feature refresh summary"
    )
    get_run_logger().info("features written: %s", run.rows)
    return {
        "rows": run.rows,
        "services": run.services,
        "materialized": [str(t) for t in run.materialized] if run.materialized else None,
    }
