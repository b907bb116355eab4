"""Feature refresh: offline store -> engineered features -> feature Parquet -> Feast online.

Incremental by default: only minutes newer than the watermark of the last write are
computed (with a week of history before them, so lags and seasonal profiles are
complete) and only they are materialized. A full rebuild recomputes everything, e.g.
after a late backfill of old minutes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd

from features.offline import OfflineStore

if TYPE_CHECKING:
    from feast import FeatureStore

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


class OnlineRefresher:
    """Brings the online store up to the newest metrics, without touching Parquet.

    The inference cycle's path: it computes the minutes after the feature watermark (with
    their lookback, as an incremental refresh does) and writes each service's newest row
    straight to the online store. The watermark does not move, so the features flow still
    writes these minutes to the offline feature Parquet (for training) on its own schedule.

    ``fresh`` rows are metrics not yet through ingestion (DESIGN: fresh per-minute rows
    are pushed online between ingestion runs). They are put in their contract, so a
    malformed value fails here rather than reaching a feature, and they join the stored
    rows for this computation only; the stored row wins where both have a minute.

    A refresher used every minute keeps the lookback (a week of metrics) in memory and
    reads only the newest day partitions each time; every ``rebuild_every`` calls it
    reads everything again, so rows stored late for older minutes are seen then.

    Args:
        offline: The validated metrics.
        cfg: Feast configuration (for the watermark).
        store: The applied store (applying takes seconds, so the caller does it once).
        rebuild_every: Calls between full reads of the lookback.
    """

    def __init__(
        self,
        offline: OfflineStore,
        cfg: FeastConfig,
        store: FeatureStore,
        rebuild_every: int = 60,
    ) -> None:
        if rebuild_every < 1:
            raise ValueError(f"rebuild_every must be >= 1, got {rebuild_every}")
        self.offline = offline
        self.cfg = cfg
        self.store = store
        self.rebuild_every = rebuild_every
        self._tables: dict[str, pd.DataFrame] = {}
        self._read_from: pd.Timestamp | None = None
        self._calls = 0

    def _inputs(self, plan: FeaturePlan) -> dict[str, pd.DataFrame]:
        from features.contracts import KEYS

        stale = (
            not self._tables
            or self._calls % self.rebuild_every == 0
            or plan.read_from is None
            or self._read_from is None
            or plan.read_from < self._read_from
        )
        self._calls += 1
        if stale:
            self._tables = load_inputs(self.offline, plan)
            self._read_from = plan.read_from
            return dict(self._tables)
        tables: dict[str, pd.DataFrame] = {}
        for table in ("event_metrics", "system_metrics", "business_calendar"):
            held = self._tables[table]
            # Re-read from the newest minute held: a minute stored in two steps (one
            # table, then another) is picked up whole.
            since = pd.Timestamp(held["ts"].max()) if len(held) else plan.read_from
            new = self.offline.read(table, start=since)
            both = pd.concat([held, new], ignore_index=True)
            both = both.drop_duplicates(list(KEYS), keep="last")
            tables[table] = both[both["ts"] >= plan.read_from].sort_values(
                list(KEYS), ignore_index=True
            )
        tables["service_profiles"] = self.offline.read("service_profiles")
        self._tables = tables
        self._read_from = plan.read_from
        return dict(tables)

    def refresh(self, fresh: Mapping[str, pd.DataFrame] | None = None) -> FeatureRun:
        """Compute the new minutes and write each service's newest row online.

        Args:
            fresh: Not-yet-ingested rows of ``event_metrics``, ``system_metrics`` or
                ``business_calendar``.

        Returns:
            What was computed; ``rows`` counts online rows written per view.

        Raises:
            ContractError: If a fresh frame lacks a required column.
        """
        from features import store as feast_io
        from features.contracts import KEYS, conform
        from features.engineering import AVAILABLE_AFTER

        extra = {
            table: conform(frame, table).frame
            for table, frame in (fresh or {}).items()
            if table in INPUT_TABLES and len(frame)
        }
        plan = plan_refresh(
            self.offline, feast_io.read_watermark(self.cfg), self.cfg.sequence_days, full=False
        )
        if "event_metrics" in extra:
            newest = pd.Timestamp(extra["event_metrics"]["ts"].max()) + AVAILABLE_AFTER
            if plan.newest is None or newest > plan.newest:
                plan.newest = newest
        run = FeatureRun(plan)
        if plan.newest is None or (plan.since is not None and plan.since > plan.newest):
            return run
        tables = self._inputs(plan)
        for table, rows in extra.items():
            both = pd.concat([tables[table], rows], ignore_index=True)
            tables[table] = both.drop_duplicates(list(KEYS), keep="first").sort_values(
                list(KEYS), ignore_index=True
            )
        frames = compute(tables, plan)
        run.rows = feast_io.write_online(self.store, frames)
        run.services = sorted(frames.minute["service_id"].unique().tolist())
        run.materialized = new_rows_range(frames)
        return run


def refresh_online(
    offline: OfflineStore,
    cfg: FeastConfig,
    store: FeatureStore,
    fresh: Mapping[str, pd.DataFrame] | None = None,
) -> FeatureRun:
    """One :meth:`OnlineRefresher.refresh` (for a loop, keep a refresher instead)."""
    return OnlineRefresher(offline, cfg, store).refresh(fresh)
