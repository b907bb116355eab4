"""Feature refresh: offline store -> engineered features -> feature Parquet -> Feast online.

Incremental by default: only minutes newer than the watermark of the last write are
computed (with a week of history before them, so lags and seasonal profiles are
complete) and only they are materialized. A full rebuild recomputes everything, e.g.
after a late backfill of old minutes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd

from features.offline import OfflineStore

if TYPE_CHECKING:
    from features.engineering import FeatureFrames
    from features.store import FeastConfig

INPUT_TABLES = ("event_metrics", "system_metrics", "business_calendar", "service_profiles")


@dataclass
class FeaturePlan:
    """Which minutes a refresh computes.

    Attributes:
        since: First event_timestamp to emit (None: everything).
        read_from: First metrics ts to read (since minus the lookback).
        sequences_since: First event_timestamp of the array features kept.
        newest: Newest event_timestamp the stored metrics allow.
    """

    since: pd.Timestamp | None
    read_from: pd.Timestamp | None
    sequences_since: pd.Timestamp | None
    newest: pd.Timestamp | None


@dataclass
class FeatureRun:
    """What one refresh did (for the flow's artifact)."""

    plan: FeaturePlan
    rows: dict[str, int] = field(default_factory=dict)
    services: list[str] = field(default_factory=list)
    materialized: tuple[pd.Timestamp, pd.Timestamp] | None = None

    def markdown(self) -> str:
        lines = ["# Features", ""]
        if not self.rows or not any(self.rows.values()):
            lines.append("No new metrics since the last refresh: nothing written.")
            return "\n".join(lines) + "\n"
        lines += ["| feature view | rows written |", "|---|---|"]
        lines += [f"| {name} | {n} |" for name, n in self.rows.items()]
        lines += ["", f"Services: {', '.join(self.services)}"]
        if self.materialized is not None:
            lines.append(
                f"Materialized to the online store: {self.materialized[0]} .. "
                f"{self.materialized[1]} (UTC)"
            )
        return "\n".join(lines) + "\n"


def plan_refresh(
    offline: OfflineStore, watermark: pd.Timestamp | None, sequence_days: int, full: bool
) -> FeaturePlan:
    """Decide the range of a refresh from the stored metrics and the last watermark."""
    from features.engineering import AVAILABLE_AFTER, lookback_needed

    newest_metrics = offline.newest_ts("event_metrics")
    if newest_metrics is None:
        return FeaturePlan(None, None, None, None)
    newest = newest_metrics + AVAILABLE_AFTER
    seq_since = newest - pd.Timedelta(days=sequence_days)
    if full or watermark is None:
        return FeaturePlan(None, None, seq_since, newest)
    since = watermark + pd.Timedelta(minutes=1)
    return FeaturePlan(since, since - lookback_needed(), max(seq_since, since), newest)


def load_inputs(offline: OfflineStore, plan: FeaturePlan) -> dict[str, pd.DataFrame]:
    """The stored tables feature engineering needs, from ``plan.read_from`` on.

    The calendar is read in full (one small row per minute) and profiles always in full:
    the profile valid at the first minute may date from long before it.
    """
    return {
        "event_metrics": offline.read("event_metrics", start=plan.read_from),
        "system_metrics": offline.read("system_metrics", start=plan.read_from),
        "business_calendar": offline.read("business_calendar", start=plan.read_from),
        "service_profiles": offline.read("service_profiles"),
    }


def compute(tables: dict[str, pd.DataFrame], plan: FeaturePlan) -> FeatureFrames:
    """Engineered features for the plan's range (see features.engineering)."""
    from features.engineering import compute_features

    return compute_features(
        tables["event_metrics"],
        tables["system_metrics"],
        tables["business_calendar"],
        tables["service_profiles"],
        since=plan.since,
        sequences_since=plan.sequences_since,
    )


def new_rows_range(frames: FeatureFrames) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """First and last event_timestamp over every feature frame, or None when all are empty.

    Profiles are stamped when they became valid, often before the first minute, so the
    range covers them too.
    """
    stamps = [
        f["event_timestamp"]
        for f in (frames.minute, frames.sequences, frames.profiles)
        if not f.empty
    ]
    if not stamps:
        return None
    return pd.Timestamp(min(s.min() for s in stamps)), pd.Timestamp(max(s.max() for s in stamps))


def refresh_features(offline: OfflineStore, cfg: FeastConfig, *, full: bool = False) -> FeatureRun:
    """Compute, write, apply and materialize in one call (the flow runs the same steps
    as separate tasks)."""
    from features import store as feast_io

    if full:
        feast_io.clear_features(cfg)
    plan = plan_refresh(offline, feast_io.read_watermark(cfg), cfg.sequence_days, full)
    run = FeatureRun(plan)
    fs = feast_io.apply(cfg)
    if plan.newest is None:
        return run
    frames = compute(load_inputs(offline, plan), plan)
    run.rows = feast_io.write_features(cfg, frames)
    run.services = sorted(frames.minute["service_id"].unique().tolist())
    run.materialized = new_rows_range(frames)
    if run.materialized is not None:
        feast_io.materialize(fs, *run.materialized)
    return run
