"""The simulated cluster as a live platform: the default actuator target and data source.

:class:`SimulatedCluster` is :class:`simulator.cluster.ClusterSimulator` run as a cluster
that lives on between processes. Its state sits in a folder, so each scheduled Prefect
run (a new process) continues where the last one stopped; it advances with the schedule
(``advance(now)``) or faster (``advance(now + 1 h)`` for a demo), and every simulated
minute is emitted as contract rows into an outbox that ingestion drains, which closes
the loop: decisions -> jobs -> metrics -> features -> decisions.

Life cycle:

* :meth:`SimulatedCluster.bootstrap` simulates ``history_days`` of synthetic traffic with
  the reactive scaler exactly as the ``simulator`` ingest source does
  (:func:`features.sources.simulate_history`: same traffic, same service configs, same
  tables, row for row, for the same ``end``, ``history_days`` and ``seed``), keeps the
  simulator's final state (jobs, pipeline, queue, RNG) and saves the cluster with its
  clock at ``end``.
* :meth:`SimulatedCluster.advance` runs every minute from the clock up to ``until``
  (exclusive) with the current targets; the simulator's step limit and min/max jobs
  apply as always.
* :meth:`SimulatedCluster.apply` (the :class:`~serving.actuators.base.Actuator`
  protocol) sets targets; a target takes effect from the next advanced minute.
* :meth:`SimulatedCluster.crash_wave` (fault injection) crashes a share of a service's
  serving jobs at the end of the next advanced minute
  (:meth:`simulator.cluster.ClusterSimulator.crash_wave`): they restart after the startup
  delay as randomly failed jobs do, and show in that minute's ``job_failures``.

Traffic. The live traffic is pregenerated in chunks of ``future_days`` (the first at
bootstrap, later ones when an advance reaches them). Chunk ``k`` is
``generate(start=end + k * future_days, days=future_days, seed=<derived from seed and
k>)``, a pure function of the settings, so a lost chunk file is regenerated identically.
Generating history and future in one ``generate`` call would have made the traffic
continuous at ``end`` but changed the history (its holidays, campaigns, anomalies and
Poisson draws depend on the generated length), so the history would no longer match the
ingest source; chunks keep it identical. The price is a seam at every chunk start: the
trend restarts (checkout, +0.3 %/day, steps down about 4 % after 14 days of history),
campaigns, holidays and flash crowds are drawn per chunk (a 7-day chunk has one holiday
and, at two campaigns a month, no campaign: ``round(2 * 7 / 30) == 0``; use
``future_days >= 8`` for one per chunk). The daily and weekly cycles follow the wall
clock, so they are continuous.

Scale-down is graceful by construction: the simulator first cancels jobs still
starting (newest first), then drains running jobs, which serve and are billed for their
last minute before they go. Scale-up jobs serve after the startup delay.

Catch-up. One advance simulates at most ``max_minutes`` minutes. When the clock lags
``until`` by more (a cluster left idle for days), the clock first jumps to
``until - max_minutes``: the skipped minutes are never simulated (no metrics rows, so
ingestion sees a gap and warns; no truth rows, no cost) and their traffic is never
delivered; jobs, pipeline and queue carry over the gap unchanged, as a cluster that was
paused. Skipped ranges are kept in :attr:`SimulatedCluster.skipped`.

Outbox. Every advance appends its ``event_metrics``, ``system_metrics`` and
``business_calendar`` rows to an outbox in the folder (bootstrap also puts the history
tables there unless ``outbox_history=False``). Draining is two-phase:
:meth:`~SimulatedCluster.pending` returns the rows without removing them and
:meth:`~SimulatedCluster.acknowledge` removes rows up to a timestamp once ingestion
stored (or quarantined) them. A failed ingestion loses nothing (no acknowledgement, the
rows stay); a repeated one is harmless (ingestion is idempotent on ``(service_id, ts)``).

Queue waits. ``queue_wait_p50_s`` / ``_p95_s`` of a minute are final once its events have
left the queue. Events still queued when an advance ends get the wait the last serving
jobs would give them (the simulator's horizon rule); the next advance does not revise
rows already emitted. So the wait columns of the last minutes of a chunk that ends with
a backlog depend on where the chunk ended; every other column and the truth log do not.

Truth log. Per advanced minute and service: arrivals, accepted, processed, dropped, late
(missed the SLA while queued), queue, jobs serving/starting, the target asked for and the
target the simulator acted on (after step limit and min/max), job failures and cost
(:data:`TRUTH_COLUMNS`); :meth:`~SimulatedCluster.truth` returns it for reports.

Persistence (folder layout), no pickle anywhere::

    cluster.json                 settings: format, seed, times, service specs and configs
    state.npz                    jobs, pipeline, queue, queue history, targets, pending
                                 crash wave, step, clock, RNG bit-generator state,
                                 skipped ranges
    traffic/history/*.npy        the history's arrivals and calendar (time-major)
    traffic/future-00000/*.npy   live traffic chunks (memory-mapped when read)
    outbox/<table>/<from>_<to>.parquet, truth/<from>_<to>.parquet   append-only segments
    cluster.lock                 file lock

Every write goes to a temporary file that replaces its target (``os.replace``), so a
crashed process leaves either the old or the new file (against process crashes; there is
no fsync, for speed, so a power loss may lose the last writes). ``state.npz`` is written
last and is the commit point of an advance; segments written by an advance that did not
commit are removed by the next one. Every change takes the file lock and first re-reads
the state, so two processes never advance the cluster at once and an object loaded
earlier continues from the newest state; a process that cannot get the lock within
``lock_timeout`` seconds gets :class:`ClusterBusyError`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout

from features.contracts import TABLES, empty
from features.sources import SimulatorSourceConfig, profiles_frame, simulate_history
from serving.actuators.base import Actuation, ActuatorError, validate_targets
from simulator.cluster import ClusterSimulator, ClusterState
from simulator.config import ClusterParams, ServiceConfig
from simulator.metrics import SimLog, event_metrics, system_metrics
from simulator.run import run_schedule
from simulator.synthetic import (
    SyntheticConfig,
    SyntheticData,
    SyntheticServiceSpec,
    default_services,
    generate,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version of the folder layout this code writes; it reads this one and older."""

META_FILE = "cluster.json"
STATE_FILE = "state.npz"
LOCK_FILE = "cluster.lock"
TRAFFIC_DIR = "traffic"
OUTBOX_DIR = "outbox"
TRUTH_DIR = "truth"

EMITTED_TABLES = ("event_metrics", "system_metrics", "business_calendar")
"""Tables every advance emits (and appends to the outbox)."""

DEFAULT_MAX_MINUTES = 1440
"""Most minutes one advance simulates (about 1 s for the three demo services)."""

DEFAULT_LOCK_TIMEOUT_S = 60.0
"""How long a call waits for another process's advance before it gives up."""

TRUTH_COLUMNS = (
    "service_id",
    "ts",
    "arrivals",
    "accepted",
    "processed",
    "dropped",
    "late",
    "queue",
    "jobs_serving",
    "jobs_starting",
    "jobs_target",
    "jobs_target_bounded",
    "job_failures",
    "cost",
)
"""Columns of :meth:`SimulatedCluster.truth`, one row per advanced minute and service."""

_MINUTE = pd.Timedelta(minutes=1)
# A segment folder beyond this many files gets its newest ones merged, so reading stays
# cheap; one folder per advance, so each holds at most this + 3 (four folders).
_MAX_SEGMENTS = 16
# Chunk k's root seed is drawn from SeedSequence(seed, spawn_key=(2, k)): a root other
# than the history's, so no chunk repeats the history's (or another chunk's) streams.
_CHUNK_SEED_KEY = 2
_TRAFFIC_FIELDS = (
    "events_in",
    "events_high_priority",
    "is_holiday",
    "business_event",
    "multiplier",
)
_STATE_ARRAYS = ("running", "pipeline", "queue", "history", "changed_last", "targets")
# Arrays a state file written before they existed lacks; read as zeros of this dtype.
_OPTIONAL_ARRAYS = {"crashing": np.float64}


class ClusterStateError(ActuatorError):
    """The folder holds no usable simulated cluster (missing, corrupt or too new)."""


class ClusterNotFoundError(ClusterStateError):
    """The folder holds no simulated cluster."""


class ClusterBusyError(ActuatorError):
    """Another process held the cluster's lock for longer than the lock timeout."""


def synthetic_fleet(n: int) -> tuple[SyntheticServiceSpec, ...]:
    """``n`` synthetic services: the three demo profiles in turn, at different volumes.

    Service ``i`` copies profile ``i % 3`` under the id ``<profile>-<i>`` with its base
    rate scaled from 0.5x (first) to 2x (last), as ``bench.features`` builds its fleets.

    Args:
        n: Number of services (>= 1).

    Returns:
        The service specs.
    """
    if n < 1:
        raise ValueError(f"need at least one service, got {n}")
    base = default_services()
    return tuple(
        dataclasses.replace(
            base[i % len(base)],
            service_id=f"{base[i % len(base)].service_id}-{i}",
            base_eps=base[i % len(base)].base_eps * (0.5 + 1.5 * i / max(n - 1, 1)),
        )
        for i in range(n)
    )


# --------------------------------------------------------------------------- file helpers


def _minute(value: pd.Timestamp | str) -> pd.Timestamp:
    """A naive-UTC timestamp floored to its minute (the minute in progress is not done)."""
    ts = pd.Timestamp(value)
    if ts.tz is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.floor("min")


def _minutes(delta: pd.Timedelta) -> int:
    return int(delta // _MINUTE)


def _tmp(path: Path) -> Path:
    # A per-process name: a crashed writer's leftover never collides with a live one.
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = _tmp(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


def _chunk_seed(seed: int, chunk: int) -> int:
    state = np.random.SeedSequence(seed, spawn_key=(_CHUNK_SEED_KEY, chunk)).generate_state(
        2, np.uint64
    )
    return int(state[0]) << 64 | int(state[1])


def _chunk_name(chunk: int) -> str:
    return f"future-{chunk:05d}"


def _chunk_config(
    live_start: pd.Timestamp,
    chunk_days: int,
    specs: tuple[SyntheticServiceSpec, ...],
    seed: int,
    chunk: int,
) -> SyntheticConfig:
    """What live-traffic chunk ``chunk`` is generated from (a pure function of these)."""
    return SyntheticConfig(
        start=live_start + pd.Timedelta(days=chunk * chunk_days),
        days=chunk_days,
        services=specs,
        seed=_chunk_seed(seed, chunk),
    )


def _read_tables(paths: Sequence[Path]) -> Any:
    """The Arrow table of several Parquet files, in order (pyarrow imported when used)."""
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    # ParquetFile.read skips the dataset machinery of read_table: faster on small files.
    tables = [pq.ParquetFile(path).read() for path in paths]
    return pa.concat_tables(tables, promote_options="default")


def _write_table(table: Any, path: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(table, path)


def _stamp(ts: pd.Timestamp) -> str:
    return ts.strftime("%Y%m%dT%H%M")


_STAMP_LEN = len("20260105T0000")


def _invert(stamp: str) -> str:
    # Sorts a later stamp first (digits mapped 0<->9), for "outer segments first".
    return stamp.translate(_INVERT_DIGITS)


_INVERT_DIGITS = str.maketrans("0123456789", "9876543210")


class _Segments:
    """Append-only time segments of one frame in a folder: ``<from>_<to>.parquet``.

    ``from`` is inclusive and ``to`` exclusive (whole minutes). A crash while merging or
    trimming can leave a segment inside another one; readers skip such a segment (the
    outer one holds its rows) and the next write removes it.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _list(self) -> list[tuple[str, str, Path]]:
        """Segments to read, oldest first, without those inside another one."""
        return self._scan()[0]

    def _scan(self) -> tuple[list[tuple[str, str, Path]], list[Path]]:
        """(segments to read as (from, to, path), segments inside another one).

        The stamps stay strings: fixed-width ``YYYYmmddTHHMM`` sorts as time does, and
        this runs on every advance.
        """
        if not self.folder.is_dir():
            return [], []
        found = []
        with os.scandir(self.folder) as entries:
            for entry in entries:
                first, _, rest = entry.name.partition("_")
                last = rest.removesuffix(".parquet")
                if len(first) == len(last) == _STAMP_LEN and rest.endswith(".parquet"):
                    found.append((first, last, Path(entry.path)))
        # Sorted by start, outer segments first: one inside an earlier one ends no later
        # than the furthest end seen so far.
        found.sort(key=lambda seg: (seg[0], _invert(seg[1])))
        kept: list[tuple[str, str, Path]] = []
        inner: list[Path] = []
        furthest = ""
        for seg in found:
            if seg[1] <= furthest:
                inner.append(seg[2])
                continue
            kept.append(seg)
            furthest = seg[1]
        return kept, inner

    def _path(self, first: pd.Timestamp, last: pd.Timestamp) -> Path:
        return self.folder / f"{_stamp(first)}_{_stamp(last)}.parquet"

    def write(self, frame: pd.DataFrame, first: pd.Timestamp, last: pd.Timestamp) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(first, last)
        tmp = _tmp(path)
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)

    def read(self) -> pd.DataFrame | None:
        paths = [path for _, _, path in self._list()]
        # One conversion to pandas for all segments: several times faster than one each.
        return _read_tables(paths).to_pandas() if paths else None

    def tidy(self, first: pd.Timestamp | None = None) -> int:
        """Remove segments inside another one (a crash while merging or trimming left
        them) and, given ``first``, those starting at or after it (written by an advance
        that crashed before its commit); return how many segments remain."""
        kept, inner = self._scan()
        for path in inner:
            path.unlink(missing_ok=True)
        remaining = len(kept)
        if first is not None:
            stamp = _stamp(first)
            for start, _, path in kept:
                if start >= stamp:
                    path.unlink(missing_ok=True)
                    remaining -= 1
        return remaining

    def drop_through(self, through: pd.Timestamp) -> int:
        """Remove rows with ``ts <= through``; return how many."""
        removed, stamp = 0, _stamp(through)
        for start, stop, path in self._list():
            if start > stamp:
                continue
            frame = pd.read_parquet(path)
            keep = frame["ts"] > through
            removed += int((~keep).sum())
            if keep.any():
                # New segment first: a crash in between leaves it inside the old one.
                rest = frame.loc[keep].reset_index(drop=True)
                self.write(rest, through + _MINUTE, pd.Timestamp(stop))
            path.unlink(missing_ok=True)
        return removed

    def compact(self) -> None:
        """Merge the newest segments into one, size-tiered.

        Walking back from the newest segment, it takes segments while the pile taken is
        at least as big as the next older one, so piles grow geometrically: a row is
        rewritten about log(n) times, not on every merge.
        """
        segments = self._list()
        sizes = [path.stat().st_size for _, _, path in segments]
        take, pile = 0, 0
        for size in reversed(sizes):
            if take >= 2 and size > pile:
                break
            take, pile = take + 1, pile + size
        if take < 2:
            return
        chosen = segments[-take:]
        merged = _read_tables([path for _, _, path in chosen])
        path = self.folder / f"{chosen[0][0]}_{max(seg[1] for seg in chosen)}.parquet"
        tmp = _tmp(path)
        _write_table(merged, tmp)
        os.replace(tmp, path)
        self.tidy()


@dataclass
class _State:
    """What changes as the cluster runs (arrays of shape (S,) unless noted)."""

    running: np.ndarray
    pipeline: np.ndarray  # (S, L), as ClusterState.pipeline
    queue: np.ndarray
    history: np.ndarray  # (S, K), as ClusterState.history
    changed_last: np.ndarray
    targets: np.ndarray  # job target asked for through apply()
    crashing: np.ndarray  # crash wave pending for the next minute (share of serving jobs)
    step: int  # simulated steps so far (the pipeline's slot clock)
    clock: pd.Timestamp  # next minute to simulate
    rng: dict[str, Any]  # bit_generator.state of the simulator's random streams
    skipped: list[tuple[pd.Timestamp, pd.Timestamp]]


# --------------------------------------------------------------------------- the cluster


class SimulatedCluster:
    """The simulator as a live cluster persisted in a folder (see the module docstring).

    Build one with :meth:`bootstrap` (a new cluster) or :meth:`load` (an existing one).

    Attributes:
        name: Actuator name, ``"simulated"``.
        folder: Where the cluster lives.
    """

    name = "simulated"

    def __init__(
        self, folder: Path, meta: Mapping[str, Any], *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S
    ) -> None:
        """Open a cluster from its parsed ``cluster.json``; use :meth:`load` instead.

        Args:
            folder: The cluster's folder.
            meta: The parsed ``cluster.json``.
            lock_timeout: Seconds a change waits for another process's lock.
        """
        self.folder = Path(folder)
        self._lock_timeout = lock_timeout
        self._lock = FileLock(self.folder / LOCK_FILE)
        try:
            version = int(meta["format"])
            if version > FORMAT_VERSION:
                raise ClusterStateError(
                    f"{self.folder / META_FILE} has format {version}, newer than this code "
                    f"reads ({FORMAT_VERSION}); upgrade the package to use this cluster"
                )
            self._seed = int(meta["seed"])
            self._history_start = pd.Timestamp(meta["history_start"])
            self._live_start = pd.Timestamp(meta["live_start"])
            self._chunk_days = int(meta["chunk_days"])
            self._specs = tuple(_spec_from_json(d) for d in meta["services"])
            self._configs = tuple(ServiceConfig(**d) for d in meta["service_configs"])
            self._params = ClusterParams.from_services(self._configs)
        except ClusterStateError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ClusterStateError(
                f"corrupt {self.folder / META_FILE}: {exc!r}; restore it or bootstrap a new "
                "cluster with overwrite=True"
            ) from exc
        if [s.service_id for s in self._specs] != list(self._params.service_ids):
            raise ClusterStateError(f"corrupt {self.folder / META_FILE}: specs and configs differ")
        self._index = {sid: i for i, sid in enumerate(self._params.service_ids)}
        # A fresh simulator tells the state shapes this configuration needs.
        self._template = ClusterSimulator(self._params, self._params.min_jobs).state
        self._outbox = {t: _Segments(self.folder / OUTBOX_DIR / t) for t in TABLES}
        self._truth = _Segments(self.folder / TRUTH_DIR)
        self._arrays: dict[tuple[str, str], np.ndarray] = {}
        self._state = self._read_state()

    # ----------------------------------------------------------------- construction

    @staticmethod
    def exists(folder: Path) -> bool:
        """Whether ``folder`` holds a (committed) simulated cluster."""
        return (Path(folder) / META_FILE).is_file()

    @classmethod
    def load(
        cls, folder: Path, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S
    ) -> SimulatedCluster:
        """Open the cluster saved in ``folder``.

        Args:
            folder: The cluster's folder.
            lock_timeout: Seconds a change waits for another process's lock.

        Returns:
            The cluster at its saved state.

        Raises:
            ClusterNotFoundError: If the folder holds no cluster.
            ClusterStateError: If its files are corrupt or of a newer format.
        """
        folder = Path(folder)
        path = folder / META_FILE
        if not path.is_file():
            raise ClusterNotFoundError(
                f"no simulated cluster in {folder} (no {META_FILE}); create one with "
                "SimulatedCluster.bootstrap(folder, end, history_days)"
            )
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ClusterStateError(
                f"corrupt {path}: {exc}; restore it or bootstrap a new cluster with overwrite=True"
            ) from exc
        if not isinstance(meta, dict):
            raise ClusterStateError(f"corrupt {path}: not a JSON object")
        return cls(folder, meta, lock_timeout=lock_timeout)

    @classmethod
    def bootstrap(
        cls,
        folder: Path,
        end: pd.Timestamp,
        history_days: int,
        future_days: int = 7,
        seed: int = 0,
        *,
        services: int | Sequence[SyntheticServiceSpec] | None = None,
        job_capacity_eps: float = 25.0,
        target_utilization: float = 0.7,
        service_overrides: Mapping[str, Any] | None = None,
        outbox_history: bool = True,
        overwrite: bool = False,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
    ) -> tuple[SimulatedCluster, dict[str, pd.DataFrame]]:
        """Simulate the history, save the cluster at clock ``end`` and return both.

        The history is :func:`features.sources.simulate_history` of
        ``SimulatorSourceConfig(end, history_days, seed, ...)``: for the same arguments
        its tables equal the ``simulator`` ingest source's row for row.

        Args:
            folder: Where the cluster lives (created if missing).
            end: First live minute (naive UTC, or aware, converted); the history is the
                ``history_days`` before it.
            history_days: Days of history (>= 1).
            future_days: Days of live traffic generated per chunk (>= 1), see the module
                docstring.
            seed: Seed of the traffic and the simulator's random streams.
            services: Synthetic services: None for the demo's three, a count for
                :func:`synthetic_fleet`, or the specs.
            job_capacity_eps: Events per second one job processes (every service).
            target_utilization: Utilization target of the history's reactive scaler.
            service_overrides: ServiceConfig fields set on every service (say
                ``job_failure_rate_per_hour``); with any, the history no longer matches
                the ingest source's.
            outbox_history: Also put the history tables in the outbox, so the ingestion
                that drains it stores them even if the caller crashes before it does.
            overwrite: Replace a cluster already in ``folder`` (else an error).
            lock_timeout: Seconds a change waits for another process's lock.

        Returns:
            The cluster and the history tables (``event_metrics``, ``system_metrics``,
            ``business_calendar``, ``service_profiles``, ``scaling_decisions``).

        Raises:
            ClusterStateError: If ``folder`` already holds a cluster and not ``overwrite``.
            ValueError: On invalid arguments.
        """
        folder = Path(folder)
        if future_days < 1:
            raise ValueError(f"future_days must be >= 1, got {future_days}")
        if cls.exists(folder) and not overwrite:
            raise ClusterStateError(
                f"{folder} already holds a simulated cluster; load it, or pass "
                "overwrite=True to replace it"
            )
        specs = (
            default_services()
            if services is None
            else synthetic_fleet(services)
            if isinstance(services, int)
            else tuple(services)
        )
        config = SimulatorSourceConfig(
            end=end,
            days=history_days,
            seed=seed,
            job_capacity_eps=job_capacity_eps,
            target_utilization=target_utilization,
            services=specs,
        )
        history = simulate_history(config, service_overrides=service_overrides)
        first_chunk = generate(_chunk_config(config.end, future_days, specs, seed, 0))
        sim = history.simulator
        assert sim.state.last is not None  # the history has at least one day of steps
        history_start = config.end - pd.Timedelta(days=history_days)
        meta = {
            "format": FORMAT_VERSION,
            "seed": seed,
            "history_start": history_start.isoformat(),
            "live_start": config.end.isoformat(),
            "chunk_days": future_days,
            "job_capacity_eps": job_capacity_eps,
            "target_utilization": target_utilization,
            "service_overrides": dict(service_overrides or {}),
            "services": [dataclasses.asdict(s) for s in specs],
            "service_configs": [dataclasses.asdict(c) for c in history.configs],
        }
        state = _State(
            running=sim.state.running.copy(),
            pipeline=sim.state.pipeline.copy(),
            queue=sim.state.queue.copy(),
            history=sim.state.history.copy(),
            changed_last=sim.state.changed_last.copy(),
            # What the reactive scaler last asked (bounded), so an idle cluster holds it.
            targets=sim.state.last.target.astype(np.int64),
            crashing=np.zeros(len(specs)),
            step=sim.state.step,
            clock=config.end,
            rng=dict(sim.rng.bit_generator.state),
            skipped=[],
        )
        folder.mkdir(parents=True, exist_ok=True)
        with _acquired(FileLock(folder / LOCK_FILE), lock_timeout, folder):
            if cls.exists(folder):
                if not overwrite:
                    raise ClusterStateError(f"{folder} already holds a simulated cluster")
                # Uncommit first: a crash while replacing must not leave a mixed cluster.
                (folder / META_FILE).unlink()
            for name in (STATE_FILE,):
                (folder / name).unlink(missing_ok=True)
            for name in (TRAFFIC_DIR, OUTBOX_DIR, TRUTH_DIR):
                shutil.rmtree(folder / name, ignore_errors=True)
            _write_traffic(folder / TRAFFIC_DIR / "history", history.data)
            _write_traffic(folder / TRAFFIC_DIR / _chunk_name(0), first_chunk)
            if outbox_history:
                for table, frame in history.tables.items():
                    _Segments(folder / OUTBOX_DIR / table).write(frame, history_start, config.end)
            _write_state(folder / STATE_FILE, state)
            # cluster.json last: the cluster exists once it does.
            _write_bytes_atomic(folder / META_FILE, json.dumps(meta, indent=1).encode())
        return cls(folder, meta, lock_timeout=lock_timeout), history.tables

    # ----------------------------------------------------------------- read-only views

    @property
    def services(self) -> tuple[str, ...]:
        """Service ids, in simulator order."""
        return self._params.service_ids

    @property
    def configs(self) -> tuple[ServiceConfig, ...]:
        """The services' cluster configs (what the simulator enforces)."""
        return self._configs

    @property
    def params(self) -> ClusterParams:
        """The configs as simulator arrays (to replay other controllers on the traffic)."""
        return self._params

    @property
    def profiles(self) -> pd.DataFrame:
        """``service_profiles`` rows of the services, valid from the history's start."""
        return profiles_frame(self._configs, self._history_start)

    @property
    def history_start(self) -> pd.Timestamp:
        """First minute of the simulated history."""
        return self._history_start

    @property
    def live_start(self) -> pd.Timestamp:
        """First live minute (the bootstrap's ``end``)."""
        return self._live_start

    @property
    def clock(self) -> pd.Timestamp:
        """Next minute to simulate (naive UTC), as saved now."""
        self._state = self._read_state()
        return self._state.clock

    @property
    def skipped(self) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
        """Ranges ``[from, to)`` the clock jumped over because a catch-up was too long."""
        self._state = self._read_state()
        return list(self._state.skipped)

    # ----------------------------------------------------------------- actuator protocol

    def current(self, services: Sequence[str]) -> dict[str, int | None]:
        """The job target each service has now (None for a service not in the cluster).

        The target is what running + starting jobs converge to; the step limit and
        min/max jobs may hold them elsewhere for a few minutes.
        """
        state = self._read_state()
        self._state = state
        return {
            sid: (int(state.targets[self._index[sid]]) if sid in self._index else None)
            for sid in services
        }

    def apply(self, targets: Mapping[str, int]) -> list[Actuation]:
        """Set job targets; they take effect from the next advanced minute.

        Setting a target the service already has changes nothing (``attempts == 0``).
        A service not in the cluster gets ``applied=False`` with the reason; the others
        are still applied.

        Args:
            targets: Job target per service id (integers >= 0).

        Returns:
            One :class:`Actuation` per service, in the order given.

        Raises:
            ValueError: If a target is not an integer >= 0 (nothing is applied).
            ClusterBusyError: If another process holds the lock too long.
        """
        checked = validate_targets(targets)
        results: list[Actuation] = []
        with self._locked():
            state = self._read_state()
            changed = False
            for sid, target in checked.items():
                i = self._index.get(sid)
                if i is None:
                    results.append(
                        Actuation(
                            sid,
                            target,
                            applied=False,
                            previous=None,
                            attempts=0,
                            error=f"unknown service {sid!r}; the simulated cluster in "
                            f"{self.folder} runs {', '.join(self.services)}",
                        )
                    )
                    continue
                previous = int(state.targets[i])
                if previous != target:
                    state.targets[i] = target
                    changed = True
                results.append(
                    Actuation(
                        sid,
                        target,
                        applied=True,
                        previous=previous,
                        attempts=int(previous != target),
                    )
                )
            if changed:
                _write_state(self.folder / STATE_FILE, state)
            self._state = state
        return results

    # ----------------------------------------------------------------- faults

    def crash_wave(self, service_id: str, fraction: float = 1.0) -> None:
        """Crash a share of a service's serving jobs at the end of the next advanced minute.

        Fault injection for tests and drills, by the simulator's own rule
        (:meth:`simulator.cluster.ClusterSimulator.crash_wave`): the crashed jobs count
        in that minute's ``job_failures``, serve no more from the minute after, restart
        after the startup delay and stay billed meanwhile. Targets are not touched. The
        wave is saved with the cluster, so the process that advances it next (this one
        or another) runs it.

        Args:
            service_id: The service whose jobs crash.
            fraction: Share of its serving jobs that crash, in [0, 1] (1: all of them).

        Raises:
            ValueError: If the service is unknown or ``fraction`` is not in [0, 1].
            ClusterBusyError: If another process holds the lock too long.
        """
        with self._locked():
            state = self._read_state()
            sim = self._simulator(state)
            sim.crash_wave(service_id, fraction)
            state.crashing = sim.state.crashing
            _write_state(self.folder / STATE_FILE, state)
            self._state = state

    # ----------------------------------------------------------------- running

    def advance(
        self, until: pd.Timestamp, *, max_minutes: int = DEFAULT_MAX_MINUTES
    ) -> dict[str, pd.DataFrame]:
        """Simulate every minute from the clock up to ``until`` (exclusive).

        Args:
            until: End of the minutes to run (naive UTC, or aware, converted; floored to
                the minute). Not after the clock: nothing happens.
            max_minutes: Most minutes this call simulates; older ones are skipped (see
                the module docstring).

        Returns:
            ``event_metrics``, ``system_metrics`` and ``business_calendar`` rows of the
            simulated minutes (the simulator ingest source's columns; empty frames when
            nothing ran). They are also appended to the outbox.

        Raises:
            ClusterBusyError: If another process holds the lock too long.
            ValueError: If ``max_minutes < 1``.
        """
        if max_minutes < 1:
            raise ValueError(f"max_minutes must be >= 1, got {max_minutes}")
        stop = _minute(until)
        with self._locked():
            state = self._read_state()
            self._state = state
            if stop <= state.clock:
                return {t: empty(t) for t in EMITTED_TABLES}
            # Segments of an advance that crashed before its commit; redone below.
            logs = {t: self._outbox[t] for t in EMITTED_TABLES} | {"truth": self._truth}
            counts = {name: segments.tidy(state.clock) for name, segments in logs.items()}
            first = state.clock
            if _minutes(stop - first) > max_minutes:
                first = stop - max_minutes * _MINUTE
                logger.warning(
                    "simulated cluster %s: skipping %s to %s (catch-up limited to %d minutes)",
                    self.folder,
                    state.clock,
                    first,
                    max_minutes,
                )
                state.skipped.append((state.clock, first))
            n = _minutes(stop - first)
            traffic = self._traffic(first, stop)
            sim = self._simulator(state)
            arrivals = traffic["events_in"].astype(np.float64)
            log = run_schedule(sim, arrivals, state.targets, start=first)
            high = traffic["events_high_priority"].astype(np.float64)
            frames = {
                "event_metrics": event_metrics(log, high_priority=high),
                "system_metrics": system_metrics(log),
                "business_calendar": pd.DataFrame(
                    {
                        "ts": pd.date_range(first, periods=n, freq="min"),
                        "service_id": "*",
                        "is_holiday": traffic["is_holiday"].astype(bool),
                        "business_event": traffic["business_event"].astype(object),
                        "expected_traffic_multiplier": traffic["multiplier"].astype(np.float64),
                    }
                ),
            }
            written = frames | {"truth": _truth_frame(log, state.targets)}
            for name, frame in written.items():
                logs[name].write(frame, first, stop)
            # Merged now and then, so reading never opens more than a few dozen files;
            # one folder per advance, so the merges of the four spread over advances.
            fullest = max(counts, key=lambda name: counts[name])
            if counts[fullest] + 1 > _MAX_SEGMENTS:
                logs[fullest].compact()
            st = sim.state
            state.running, state.pipeline, state.queue = st.running, st.pipeline, st.queue
            state.history, state.changed_last = st.history, st.changed_last
            state.crashing = st.crashing
            state.step, state.clock, state.rng = st.step, stop, dict(sim.rng.bit_generator.state)
            _write_state(self.folder / STATE_FILE, state)  # the commit point
        return frames

    # ----------------------------------------------------------------- outbox

    def pending(self) -> dict[str, pd.DataFrame]:
        """Rows emitted and not yet acknowledged, per table (tables with rows only).

        Reading removes nothing: call :meth:`acknowledge` once ingestion stored them.
        """
        with self._locked():
            out = {}
            for table in TABLES:
                frame = self._outbox[table].read()
                if frame is not None and len(frame):
                    out[table] = frame.sort_values(["service_id", "ts"], ignore_index=True)
        return out

    def acknowledge(self, through: pd.Timestamp, tables: Sequence[str] | None = None) -> int:
        """Remove outbox rows with ``ts <= through`` (ingestion has them now).

        Args:
            through: Newest timestamp ingestion stored (or quarantined), inclusive.
            tables: Tables to acknowledge; None for every table.

        Returns:
            Rows removed.
        """
        cutoff = _minute(through)  # rows are stamped on whole minutes
        unknown = sorted(set(tables or ()) - set(TABLES))
        if unknown:
            raise ValueError(f"unknown table(s) {unknown}; expected some of {TABLES}")
        with self._locked():
            return sum(self._outbox[t].drop_through(cutoff) for t in (tables or TABLES))

    # ----------------------------------------------------------------- truth and traffic

    def truth(self) -> pd.DataFrame:
        """What really happened in every advanced minute (:data:`TRUTH_COLUMNS`)."""
        # Under the lock: an advance may be merging the segments.
        with self._locked():
            frame = self._truth.read()
        if frame is None:
            return pd.DataFrame({c: [] for c in TRUTH_COLUMNS})
        frame = frame.drop_duplicates(["service_id", "ts"], keep="last")
        return frame.sort_values(["ts", "service_id"], ignore_index=True)

    def arrivals_between(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """The true arrivals of ``[start, end)``, history included, to replay controllers.

        Args:
            start: First minute (not before :attr:`history_start`).
            end: End (exclusive); live traffic is generated as far as needed.

        Returns:
            ``service_id, ts, events_in, events_high_priority, events_normal_priority``,
            service by service (int64 counts).
        """
        first, stop = _minute(start), _minute(end)
        if stop <= first:
            return pd.DataFrame(
                {c: [] for c in ("service_id", "ts", "events_in", "events_high_priority")}
            ).assign(events_normal_priority=[])
        traffic = self._traffic(first, stop)
        n, s = traffic["events_in"].shape
        events, high = traffic["events_in"], traffic["events_high_priority"]
        return pd.DataFrame(
            {
                "service_id": np.repeat(np.array(self.services, dtype=object), n),
                "ts": np.tile(pd.date_range(first, periods=n, freq="min").to_numpy(), s),
                "events_in": events.T.ravel(),
                "events_high_priority": high.T.ravel(),
                "events_normal_priority": (events - high).T.ravel(),
            }
        )

    def calendar_between(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """``business_calendar`` rows of ``[start, end)``: known-future context included."""
        first, stop = _minute(start), _minute(end)
        if stop <= first:
            return empty("business_calendar")
        traffic = self._traffic(first, stop)
        return pd.DataFrame(
            {
                "ts": pd.date_range(first, periods=len(traffic["multiplier"]), freq="min"),
                "service_id": "*",
                "is_holiday": traffic["is_holiday"].astype(bool),
                "business_event": traffic["business_event"].astype(object),
                "expected_traffic_multiplier": traffic["multiplier"].astype(np.float64),
            }
        )

    # ----------------------------------------------------------------- internals

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with _acquired(self._lock, self._lock_timeout, self.folder):
            yield

    def _read_state(self) -> _State:
        path = self.folder / STATE_FILE
        if not (self.folder / META_FILE).is_file():
            raise ClusterNotFoundError(f"no simulated cluster in {self.folder} any more")
        try:
            with np.load(path, allow_pickle=False) as z:
                version = int(z["format"])
                if version > FORMAT_VERSION:
                    raise ClusterStateError(
                        f"{path} has format {version}, newer than this code reads "
                        f"({FORMAT_VERSION}); upgrade the package to use this cluster"
                    )
                arrays = {name: z[name] for name in _STATE_ARRAYS}
                for name, dtype in _OPTIONAL_ARRAYS.items():
                    absent = np.zeros(len(self.services), dtype=dtype)
                    arrays[name] = z[name] if name in z.files else absent
                step, clock_ns = int(z["step"]), int(z["clock_ns"])
                extra = json.loads(str(z["extra"][()]))
            rng = extra["rng"]
            skipped = [(pd.Timestamp(a), pd.Timestamp(b)) for a, b in extra["skipped"]]
        except ClusterStateError:
            raise
        except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as exc:
            raise ClusterStateError(
                f"corrupt cluster state {path}: {exc!r}; restore it or bootstrap a new "
                "cluster with overwrite=True"
            ) from exc
        t = self._template
        expected = {
            "running": t.running.shape,
            "pipeline": t.pipeline.shape,
            "queue": t.queue.shape,
            "history": t.history.shape,
            "changed_last": t.changed_last.shape,
            "targets": t.running.shape,
            "crashing": t.running.shape,
        }
        wrong = [k for k, shape in expected.items() if arrays[k].shape != shape]
        if wrong:
            raise ClusterStateError(
                f"corrupt cluster state {path}: {', '.join(wrong)} do not fit the "
                f"{len(self.services)} services of {META_FILE}"
            )
        return _State(
            running=arrays["running"].astype(np.int64),
            pipeline=arrays["pipeline"].astype(np.int64),
            queue=arrays["queue"].astype(np.float64),
            history=arrays["history"].astype(np.float64),
            changed_last=arrays["changed_last"].astype(bool),
            targets=arrays["targets"].astype(np.int64),
            crashing=arrays["crashing"].astype(np.float64),
            step=step,
            clock=pd.Timestamp(clock_ns),
            rng=rng,
            skipped=skipped,
        )

    def _simulator(self, state: _State) -> ClusterSimulator:
        sim = ClusterSimulator(self._params, state.running)
        sim.state = ClusterState(
            running=state.running.copy(),
            pipeline=state.pipeline.copy(),
            queue=state.queue.copy(),
            history=state.history.copy(),
            changed_last=state.changed_last.copy(),
            step=state.step,
            extra_late=np.zeros(len(self.services)),
            crashing=state.crashing.copy(),
        )
        sim.rng.bit_generator.state = state.rng
        return sim

    def _chunk(self, k: int) -> Path:
        """Folder of live-traffic chunk ``k``, generated first if missing (under the lock)."""
        folder = self.folder / TRAFFIC_DIR / _chunk_name(k)
        if folder.is_dir():
            return folder
        with self._locked():
            if not folder.is_dir():
                config = _chunk_config(
                    self._live_start, self._chunk_days, self._specs, self._seed, k
                )
                _write_traffic(folder, generate(config))
        return folder

    def _array(self, folder: Path, field: str) -> np.ndarray:
        key = (folder.name, field)
        if key not in self._arrays:
            try:
                self._arrays[key] = np.load(folder / f"{field}.npy", mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise ClusterStateError(f"cannot read traffic {folder / field}.npy: {exc}") from exc
        return self._arrays[key]

    def _traffic(self, first: pd.Timestamp, stop: pd.Timestamp) -> dict[str, np.ndarray]:
        """Traffic arrays of ``[first, stop)``: counts (T, S), calendar columns (T,)."""
        if first < self._history_start:
            raise ValueError(
                f"{first} is before the simulated history, which starts at {self._history_start}"
            )
        chunk_len = pd.Timedelta(days=self._chunk_days)
        parts: list[dict[str, np.ndarray]] = []
        t = first
        while t < stop:
            if t < self._live_start:
                folder, begin, end = (
                    self.folder / TRAFFIC_DIR / "history",
                    self._history_start,
                    (self._live_start),
                )
            else:
                k = int((t - self._live_start) // chunk_len)
                folder = self._chunk(k)
                begin = self._live_start + k * chunk_len
                end = begin + chunk_len
            upto = min(stop, end)
            i0, i1 = _minutes(t - begin), _minutes(upto - begin)
            parts.append({f: np.asarray(self._array(folder, f)[i0:i1]) for f in _TRAFFIC_FIELDS})
            t = upto
        if len(parts) == 1:
            return parts[0]
        return {f: np.concatenate([p[f] for p in parts]) for f in _TRAFFIC_FIELDS}


@contextmanager
def _acquired(lock: FileLock, timeout: float, folder: Path) -> Iterator[None]:
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise ClusterBusyError(
            f"another process is using the simulated cluster in {folder} (its lock "
            f"{lock.lock_file} was held for more than {timeout:g} s); retry later"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _spec_from_json(values: Mapping[str, Any]) -> SyntheticServiceSpec:
    # JSON has no tuples; the range fields of a spec are tuples.
    fixed: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return SyntheticServiceSpec(**fixed)


def _write_state(path: Path, state: _State) -> None:
    extra = {
        "rng": state.rng,
        "skipped": [[a.isoformat(), b.isoformat()] for a, b in state.skipped],
    }
    tmp = _tmp(path)
    with open(tmp, "wb") as fh:
        np.savez(
            fh,
            format=np.int64(FORMAT_VERSION),
            running=state.running,
            pipeline=state.pipeline,
            queue=state.queue,
            history=state.history,
            changed_last=state.changed_last,
            targets=state.targets,
            crashing=state.crashing,
            step=np.int64(state.step),
            clock_ns=np.int64(state.clock.value),
            extra=np.array(json.dumps(extra)),
        )
    os.replace(tmp, path)


def _write_traffic(folder: Path, data: SyntheticData) -> None:
    """Save generated traffic time-major (T, S), so a few minutes are a few pages."""
    n = data.config.n_minutes
    s = len(data.config.services)
    arrays = {
        "events_in": data.events["events_in"].to_numpy(np.int64).reshape(s, n).T,
        "events_high_priority": data.events["events_high_priority"]
        .to_numpy(np.int64)
        .reshape(s, n)
        .T,
        "is_holiday": data.calendar["is_holiday"].to_numpy(bool),
        "business_event": data.calendar["business_event"].to_numpy().astype(str),
        "multiplier": data.calendar["expected_traffic_multiplier"].to_numpy(np.float64),
    }
    # Written aside and renamed into place, so the folder exists only when complete.
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in _TRAFFIC_FIELDS:
        _save_npy(tmp / f"{name}.npy", np.ascontiguousarray(arrays[name]))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _truth_frame(log: SimLog, requested: np.ndarray) -> pd.DataFrame:
    n, s = log.n_steps, log.params.n_services

    def per_service(values: np.ndarray) -> np.ndarray:
        # (T, S) -> service by service, as the metrics frames are laid out.
        return np.asarray(values).T.ravel()

    return pd.DataFrame(
        {
            "service_id": np.repeat(np.array(log.params.service_ids, dtype=object), n),
            "ts": np.tile(log.timestamps.to_numpy(), s),
            "arrivals": per_service(log.arrivals),
            "accepted": per_service(log.accepted),
            "processed": per_service(log.processed),
            "dropped": per_service(log.dropped),
            "late": per_service(log.late),
            "queue": per_service(log.queue),
            "jobs_serving": per_service(log.serving),
            "jobs_starting": per_service(log.starting),
            "jobs_target": np.repeat(np.asarray(requested, dtype=np.int64), n),
            "jobs_target_bounded": per_service(log.target),
            "job_failures": per_service(log.failed),
            "cost": per_service(log.cost),
        }
    )
