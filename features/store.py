"""Feast I/O: write engineered features where the repo's FileSources read them, apply the
repo, materialize to the online store, and read point-in-time training sets and online
features.

``feature_repo/`` stays declarative and is read through Feast's own loader, never imported
as a package module. Its ``feature_store.yaml`` holds the project-wide choices (project,
provider, offline store); the paths and the online store backend come from settings, so
tests and scaled-out deployments use the same repo with their own state folder or Redis.
The FileSource paths in the repo come from ``AUTOSCALER_FEAST_DATA_DIR`` (exported here
while Feast parses the repo) and default to the default state folder, which is what the
``feast`` CLI sees when run in ``feature_repo/``.

Feature Parquet layout under ``<feast_dir>/data``: one folder per feature view, one part
file per write (``part-<first>-<last>.parquet``), timestamps tz-aware UTC as Feast expects.
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml

if TYPE_CHECKING:
    from feast import FeatureStore

    from features.engineering import FeatureFrames

DATA_DIR_ENV = "AUTOSCALER_FEAST_DATA_DIR"
"""Environment variable the feature repo reads for its FileSource folder."""

VIEW_DIRS = {
    "minute": "service_minute",
    "sequences": "service_sequences",
    "profiles": "service_profile",
}
"""Folder (= feature view name) of each :class:`FeatureFrames` member."""

PUSHED_VIEWS = ("service_decisions",)
"""Feature views fed only by pushes; their FileSource folders must exist for ``apply``."""

ONLINE_VIEWS = {
    "minute": ("service_minute", "service_control"),
    "sequences": ("service_sequences",),
    "profiles": ("service_profile",),
}
"""Online feature views each :class:`FeatureFrames` member feeds."""

_WATERMARK = "_watermark.json"


@dataclass(frozen=True)
class FeastConfig:
    """Where the Feast state lives and which online store to use.

    Args:
        repo_dir: The declarative feature repository (``feature_repo/``).
        feast_dir: Folder for the registry, the SQLite online store and feature Parquet.
        online_store: ``sqlite`` (file in ``feast_dir``) or ``redis``.
        redis_url: Redis connection string (``host:port[,db=N]``) for ``redis``.
        sequence_days: Days of sequence (array) features kept offline; the arrays are
            large and serving only needs the newest, training rebuilds windows itself.
    """

    repo_dir: Path
    feast_dir: Path
    online_store: str = "sqlite"
    redis_url: str = "localhost:6379"
    sequence_days: int = 2

    @property
    def data_dir(self) -> Path:
        return self.feast_dir / "data"

    def view_dir(self, member: str) -> Path:
        return self.data_dir / VIEW_DIRS[member]


@contextlib.contextmanager
def _data_dir_env(path: Path) -> Iterator[None]:
    old = os.environ.get(DATA_DIR_ENV)
    os.environ[DATA_DIR_ENV] = str(path.resolve())
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(DATA_DIR_ENV, None)
        else:
            os.environ[DATA_DIR_ENV] = old


def repo_config(cfg: FeastConfig) -> Any:
    """The repo's ``feature_store.yaml`` with paths and online store from ``cfg``.

    Raises:
        FileNotFoundError: If the repo has no feature_store.yaml.
        ValueError: If the online store is neither sqlite nor redis.
    """
    from feast.repo_config import RepoConfig

    yaml_path = cfg.repo_dir / "feature_store.yaml"
    if not yaml_path.exists():
        raise FileNotFoundError(f"no feature_store.yaml in {cfg.repo_dir}")
    raw = yaml.safe_load(os.path.expandvars(yaml_path.read_text()))
    feast_dir = cfg.feast_dir.resolve()
    raw["registry"] = str(feast_dir / "registry.db")
    if cfg.online_store == "sqlite":
        raw["online_store"] = {"type": "sqlite", "path": str(feast_dir / "online.db")}
    elif cfg.online_store == "redis":
        raw["online_store"] = {"type": "redis", "connection_string": cfg.redis_url}
    else:
        raise ValueError(f"online_store must be 'sqlite' or 'redis', got {cfg.online_store!r}")
    config = RepoConfig(**raw)
    config.repo_path = cfg.repo_dir.resolve()
    return config


def load_definitions(cfg: FeastConfig) -> list[Any]:
    """Every Feast object defined in the repo's Python files, paths bound to ``cfg``.

    Each file is executed afresh (not imported), so two configurations in one process
    (tests, a scaled-out worker) never share module state.
    """
    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource

    kinds = (Entity, DataSource, FeatureView, FeatureService)
    objects: list[Any] = []
    with _data_dir_env(cfg.data_dir):
        for path in sorted(cfg.repo_dir.glob("*.py")):
            namespace = runpy.run_path(str(path))
            for value in namespace.values():
                if isinstance(value, kinds) and not any(value is o for o in objects):
                    objects.append(value)
    if not objects:
        raise ValueError(f"no Feast definitions found in {cfg.repo_dir}")
    return objects


def open_store(cfg: FeastConfig) -> FeatureStore:
    """A FeatureStore on ``cfg`` (the repo must have been applied for reads)."""
    from feast import FeatureStore

    return FeatureStore(config=repo_config(cfg))


def apply(cfg: FeastConfig) -> FeatureStore:
    """Register the repo's definitions (``feast apply``) and return the store.

    The feature folders are created first: Feast checks that FileSources exist.
    """
    for member in VIEW_DIRS:
        cfg.view_dir(member).mkdir(parents=True, exist_ok=True)
    definitions = load_definitions(cfg)
    for view in PUSHED_VIEWS:
        _seed_pushed_view(cfg.data_dir / view, _view_named(definitions, view))
    store = open_store(cfg)
    store.apply(definitions)
    return store


def _view_named(definitions: Sequence[Any], name: str) -> Any:
    from feast import FeatureView

    for obj in definitions:
        if isinstance(obj, FeatureView) and obj.name == name:
            return obj
    raise ValueError(f"the feature repo defines no feature view {name!r}")


def _seed_pushed_view(folder: Path, view: Any) -> None:
    """Give a push-fed view's FileSource one empty Parquet file with the view's schema.

    Its rows only ever arrive by push, but Feast still reads the folder when a user runs
    ``feast materialize`` over every view, and an empty folder fails that read.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.glob("*.parquet")):
        return
    from feast.types import Float32, Float64, Int64, String

    dtypes = {Int64: "int64", Float32: "float32", Float64: "float64", String: "object"}
    columns = {
        "service_id": pd.Series(dtype="object"),
        "event_timestamp": pd.Series(dtype="datetime64[ns, UTC]"),
    }
    for f in view.schema:
        columns[f.name] = pd.Series(dtype=dtypes.get(f.dtype, "object"))
    path = folder / "part-empty.parquet"
    tmp = path.with_suffix(".tmp")
    pd.DataFrame(columns).to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _to_feast_frame(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"]).dt.tz_localize("UTC")
    return out


def read_watermark(cfg: FeastConfig) -> pd.Timestamp | None:
    """Newest event_timestamp written to the minute features (naive UTC), or None."""
    path = cfg.data_dir / _WATERMARK
    if not path.exists():
        return None
    return pd.Timestamp(json.loads(path.read_text())["minute"])


def _write_part(folder: Path, frame: pd.DataFrame) -> Path | None:
    if frame.empty:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    first = pd.Timestamp(frame["event_timestamp"].min())
    last = pd.Timestamp(frame["event_timestamp"].max())
    path = folder / f"part-{first:%Y%m%dT%H%M}-{last:%Y%m%dT%H%M}.parquet"
    tmp = path.with_suffix(".tmp")
    _to_feast_frame(frame).to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


def clear_features(cfg: FeastConfig) -> None:
    """Delete all written feature Parquet and the watermark (for a full rebuild)."""
    for member in VIEW_DIRS:
        for path in cfg.view_dir(member).glob("part-*.parquet"):
            path.unlink()
    (cfg.data_dir / _WATERMARK).unlink(missing_ok=True)


def write_features(cfg: FeastConfig, frames: FeatureFrames) -> dict[str, int]:
    """Append feature rows as new part files and move the watermark.

    Callers pass only rows newer than :func:`read_watermark` (or clear first), so parts
    never overlap. Sequence parts entirely older than ``sequence_days`` before the newest
    row are deleted.

    Returns:
        Rows written per feature view folder.
    """
    written: dict[str, int] = {}
    for member, folder in VIEW_DIRS.items():
        frame: pd.DataFrame = getattr(frames, member)
        _write_part(cfg.view_dir(member), frame)
        written[folder] = len(frame)
    if not frames.minute.empty:
        newest = pd.Timestamp(frames.minute["event_timestamp"].max())
        old = read_watermark(cfg)
        mark = newest if old is None else max(old, newest)
        (cfg.data_dir / _WATERMARK).write_text(json.dumps({"minute": mark.isoformat()}) + "\n")
        keep_from = mark - pd.Timedelta(days=cfg.sequence_days)
        for path in cfg.view_dir("sequences").glob("part-*.parquet"):
            last = pd.Timestamp(path.stem.split("-")[-1])
            if last < keep_from:
                path.unlink()
    return written


def materialize(store: FeatureStore, start: pd.Timestamp, end: pd.Timestamp) -> None:
    """Load feature rows with event_timestamp in [start, end] into the online store.

    Args:
        store: The applied store.
        start: First event_timestamp to load (naive UTC).
        end: Last event_timestamp to load (naive UTC), inclusive.
    """
    # Feast's window is [start, end) on tz-aware datetimes. Only the views fed from the
    # feature Parquet: pushed views have no offline rows to load (an empty FileSource
    # folder even fails the read).
    views = [view for views in ONLINE_VIEWS.values() for view in views]
    store.materialize(
        start_date=pd.Timestamp(start).tz_localize("UTC").to_pydatetime(),
        end_date=(pd.Timestamp(end) + pd.Timedelta(seconds=1)).tz_localize("UTC").to_pydatetime(),
        feature_views=views,
    )


def write_online(store: FeatureStore, frames: FeatureFrames) -> dict[str, int]:
    """Write the newest row of each service of every frame straight to the online store.

    The every-minute path: ``materialize`` scans the feature Parquet (seconds), while the
    online store only ever keeps the newest row per service, which this writes directly
    (milliseconds). The offline feature Parquet is left to the features flow.

    Returns:
        Rows written per online feature view.
    """
    written: dict[str, int] = {}
    for member, views in ONLINE_VIEWS.items():
        frame: pd.DataFrame = getattr(frames, member)
        if frame.empty:
            continue
        newest = frame.sort_values("event_timestamp").groupby("service_id", sort=False).tail(1)
        rows = _to_feast_frame(newest.reset_index(drop=True))
        for view in views:
            store.write_to_online_store(view, rows)
            written[view] = len(rows)
    return written


def push_online(store: FeatureStore, push_source: str, rows: pd.DataFrame) -> None:
    """Push rows (naive-UTC ``event_timestamp``) to the online store through a PushSource."""
    from feast.data_source import PushMode

    if rows.empty:
        return
    store.push(push_source, _to_feast_frame(rows), to=PushMode.ONLINE)


def training_set(
    store: FeatureStore,
    entity_rows: pd.DataFrame,
    feature_service: str = "forecaster_v1",
    features: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Point-in-time correct features for (service_id, event_timestamp) rows.

    Each row gets the newest feature values whose event_timestamp is at or before its
    own (within the views' TTL), so a label at time t never sees later data.

    Args:
        store: The applied store.
        entity_rows: Columns service_id and event_timestamp (naive UTC), plus any labels.
        feature_service: Name of a feature service in the repo.
        features: Feature references (``view:feature``) to join instead of the feature
            service, for a training set that needs only a few columns.

    Returns:
        The entity rows with the service's features, event_timestamp naive UTC, sorted
        like the input.
    """
    missing = {"service_id", "event_timestamp"} - set(entity_rows.columns)
    if missing:
        raise ValueError(f"entity_rows needs columns {sorted(missing)}")
    rows = entity_rows.reset_index(drop=True).copy()
    rows["_row"] = range(len(rows))
    wanted = list(features) if features is not None else store.get_feature_service(feature_service)
    job = store.get_historical_features(entity_df=_to_feast_frame(rows), features=wanted)
    out = job.to_df().sort_values("_row").drop(columns="_row").reset_index(drop=True)
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True).dt.tz_localize(None)
    return out


def view_rows(
    store: FeatureStore,
    view: str,
    features: Sequence[str],
    start: pd.Timestamp,
    end: pd.Timestamp,
    services: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Every offline row of a feature view stamped in [start, end), through Feast.

    A training set that needs a view's value at *every* minute should read the rows
    themselves: each row is stamped when its values became available, so they are the
    point-in-time values already. (``get_historical_features`` on the file offline store
    merges every entity row with every feature row of its service before filtering, so
    a per-minute training set costs minutes squared in memory.)

    Args:
        store: The applied store.
        view: Feature view name.
        features: Feature names of the view to return.
        start: Earliest event timestamp (naive UTC), inclusive.
        end: Latest event timestamp (naive UTC), exclusive.
        services: Keep only these services (None = all).

    Returns:
        service_id, event_timestamp (naive UTC) and the features, sorted by service and time.
    """
    from feast.infra.offline_stores.offline_utils import get_offline_store_from_config

    fv = store.get_feature_view(view)
    source = fv.batch_source
    if source is None:
        raise ValueError(f"feature view {view!r} has no batch source to read")
    offline = get_offline_store_from_config(store.config.offline_store)
    job = offline.pull_all_from_table_or_query(
        config=store.config,
        data_source=source,
        join_key_columns=["service_id"],
        feature_name_columns=list(features),
        timestamp_field=source.timestamp_field,
        start_date=pd.Timestamp(start).tz_localize("UTC").to_pydatetime(),
        end_date=pd.Timestamp(end).tz_localize("UTC").to_pydatetime(),
    )
    frame = job.to_df()
    ts = pd.to_datetime(frame[source.timestamp_field], utc=True).dt.tz_localize(None)
    frame = frame.assign(event_timestamp=ts)
    frame = frame[(frame["event_timestamp"] >= start) & (frame["event_timestamp"] < end)]
    if services is not None:
        frame = frame[frame["service_id"].isin(list(services))]
    columns = ["service_id", "event_timestamp", *features]
    return frame[columns].sort_values(["service_id", "event_timestamp"]).reset_index(drop=True)


class OnlineReader:
    """Reads one feature service from the online store, resolved once.

    Resolving a feature service goes through the registry (milliseconds); a reader that
    serves every minute resolves it once and reuses it.

    Args:
        store: The applied store.
        feature_service: Name of a feature service in the repo.
    """

    def __init__(self, store: FeatureStore, feature_service: str) -> None:
        self._store = store
        self._service = store.get_feature_service(feature_service)

    def read(self, services: Sequence[str], *, with_timestamps: bool = False) -> pd.DataFrame:
        """The newest materialized features of each service, one row per service, in the
        order given; unknown services get nulls.

        With ``with_timestamps``, every feature also gets a ``<feature>__ts`` column: the
        event timestamp (seconds since the epoch, UTC) of the row it came from.
        """
        response = self._store.get_online_features(
            features=self._service,
            entity_rows=[{"service_id": sid} for sid in services],
        )
        # to_dict is cheaper than to_df for small reads and keeps arrays as lists.
        return pd.DataFrame(response.to_dict(include_event_timestamps=with_timestamps))


def online_features(
    store: FeatureStore,
    services: Sequence[str],
    feature_service: str = "controller_v1",
    *,
    with_timestamps: bool = False,
) -> pd.DataFrame:
    """One-off online read (see :class:`OnlineReader` for repeated reads)."""
    return OnlineReader(store, feature_service).read(services, with_timestamps=with_timestamps)
