"""Where metrics come from: the simulated cluster (default), a drop folder of CSV/Parquet
exports, and a push entry point for fresh rows. Every source yields :class:`Batch` objects
holding raw rows for one contract table; ingestion conforms and validates them.

A batch id is derived from the batch's content (and, for files, the file name), so the
same data always gets the same id: ingesting it twice is recognised, whichever source it
came through.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.contracts import TABLES, bad_input_kind

if TYPE_CHECKING:
    from simulator.cluster import ClusterSimulator
    from simulator.config import ClusterParams, ServiceConfig
    from simulator.metrics import SimLog
    from simulator.synthetic import SyntheticData, SyntheticServiceSpec

DROP_SUFFIXES = (".csv", ".parquet")


@dataclass(frozen=True, eq=False)
class Batch:
    """Raw rows of one table from one source.

    Attributes:
        table: Contract table the rows claim to belong to ('' when it cannot be told).
        batch_id: Stable id derived from the content (see module docstring).
        frame: The rows exactly as received (strings stay strings).
        origin: Where they came from ('simulator', a file path, 'push').
        error: Why the rows could not be read or assigned to a table, if so; such a
            batch is quarantined whole.
        error_kind: The bad-input kind of ``error`` (``unreadable_file`` or
            ``unknown_table``, see :data:`features.contracts.BAD_INPUT_KINDS`).
        replaces_history: Whether the rows may change minutes already stored before the
            service's newest one. A regenerated simulation supersedes an earlier one; an
            export or a push may not rewrite history (``out_of_order``).
    """

    table: str
    batch_id: str
    frame: pd.DataFrame
    origin: str
    error: str | None = None
    error_kind: str | None = None
    replaces_history: bool = False

    def __post_init__(self) -> None:
        if (self.error is None) != (self.error_kind is None):
            raise ValueError("a batch with an error names its kind, and only then")
        if self.error_kind is not None:
            bad_input_kind(self.error_kind)


def content_id(prefix: str, frame: pd.DataFrame, extra: str = "") -> str:
    """A short stable id of a frame's content (column names, order and values)."""
    digest = hashlib.sha256()
    digest.update(extra.encode())
    digest.update("\x1f".join(map(str, frame.columns)).encode())
    hashed = pd.util.hash_pandas_object(frame.astype(str), index=False).to_numpy()
    digest.update(hashed.tobytes())
    return f"{prefix}-{digest.hexdigest()[:16]}"


# -- push ---------------------------------------------------------------------------------


def push_batch(
    table: str,
    rows: pd.DataFrame | Sequence[Mapping[str, Any]],
    origin: str = "push",
    *,
    replaces_history: bool = False,
) -> Batch:
    """Turn fresh rows handed over by a caller (API, CLI, another flow) into a batch.

    Args:
        table: Contract table name.
        rows: A frame or a list of row mappings.
        origin: Label of the caller for reports.
        replaces_history: The rows are deliberate corrections: they may change stored
            minutes older than the service's newest (see :class:`Batch`).

    Returns:
        The batch; an unknown table gives a batch with ``error`` set, so the rows are
        quarantined rather than lost.
    """
    frame = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    # A correction is a new submission even with the content of a refused batch.
    batch_id = content_id(
        f"push-{table or 'unknown'}", frame, extra="replaces-history" if replaces_history else ""
    )
    if table not in TABLES:
        return Batch(
            "", batch_id, frame, origin, error=_unknown_table(table), error_kind="unknown_table"
        )
    return Batch(table, batch_id, frame, origin, replaces_history=replaces_history)


def _unknown_table(name: str) -> str:
    return f"unknown table {name!r}; expected one of {', '.join(TABLES)}"


# -- drop folder --------------------------------------------------------------------------


def table_of(path: Path) -> str | None:
    """The table a dropped file belongs to: its folder's name or its file name's prefix.

    ``drop/event_metrics/2026-01-05.csv`` and ``drop/event_metrics-2026-01-05.csv`` are
    both ``event_metrics``; the longest matching table name wins.
    """
    if path.parent.name in TABLES:
        return path.parent.name
    matches = [
        t for t in TABLES if path.stem == t or path.stem.startswith((t + "-", t + "_", t + "."))
    ]
    return max(matches, key=len) if matches else None


def read_drop_file(path: Path, *, replaces_history: bool = False) -> Batch:
    """Read one exported file as a batch, keeping CSV text as text.

    CSV cells are read as strings so a malformed value ('12x') reaches validation (and
    the quarantine copy) exactly as written instead of failing the whole read.

    Args:
        path: The exported file.
        replaces_history: The file holds deliberate corrections: its rows may change stored
            minutes older than the service's newest (see :class:`Batch`).
    """
    table = table_of(path)
    origin = str(path)
    try:
        if path.suffix.lower() == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        else:
            frame = pd.read_parquet(path)
    except Exception as exc:  # any reader failure: quarantine the raw bytes, never drop them
        raw = pd.DataFrame({"raw_line": path.read_text(errors="replace").splitlines()})
        return Batch(
            table or "",
            content_id(f"file-{path.name}", raw),
            raw,
            origin,
            error=f"cannot read {path.name}: {exc}",
            error_kind="unreadable_file",
        )
    # A correction is a new submission even with the content of a refused file.
    extra = f"{path.name}|replaces-history" if replaces_history else path.name
    batch_id = content_id(f"file-{path.name}", frame, extra=extra)
    if table is None:
        return Batch(
            "",
            batch_id,
            frame,
            origin,
            error=(
                f"cannot tell the table of {path.name}: put it in a folder named after the table "
                f"or start its name with one of {', '.join(TABLES)}"
            ),
            error_kind="unknown_table",
        )
    return Batch(table, batch_id, frame, origin, replaces_history=replaces_history)


def drop_folder_batches(folder: Path, *, replaces_history: bool = False) -> Iterator[Batch]:
    """Every CSV/Parquet file under ``folder`` (recursively, sorted) as a batch.

    Args:
        folder: The drop folder.
        replaces_history: The files hold deliberate corrections (see :func:`read_drop_file`).

    Raises:
        FileNotFoundError: If the folder does not exist.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"drop folder {folder} does not exist")
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in DROP_SUFFIXES:
            yield read_drop_file(path, replaces_history=replaces_history)


# -- simulator ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulatorSourceConfig:
    """What the simulated cluster produces.

    Args:
        end: End of the history (exclusive), naive UTC on a whole minute; the history is
            the ``days`` before it. Entry points pass the current minute so the store
            holds recent data.
        days: Days of history.
        seed: Seed of the synthetic traffic and the simulator.
        batch_minutes: Rows per service in one batch (one day by default), as an
            exporter would ship them.
        job_capacity_eps: Events per second one job of every service processes.
        target_utilization: Utilization target of the HPA that scales the simulated
            cluster while it records the metrics.
        services: Synthetic service profiles; default the demo's three services.
    """

    end: pd.Timestamp
    days: int = 14
    seed: int = 0
    batch_minutes: int = 1440
    job_capacity_eps: float = 25.0
    target_utilization: float = 0.7
    services: tuple[SyntheticServiceSpec, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        end = pd.Timestamp(self.end)
        if end.tz is not None:
            end = end.tz_convert("UTC").tz_localize(None)
        if end != end.floor("min"):
            raise ValueError("SimulatorSourceConfig.end must be on a whole minute")
        if self.days < 1 or self.batch_minutes < 1 or self.job_capacity_eps <= 0:
            raise ValueError("days and batch_minutes must be >= 1, job_capacity_eps > 0")
        object.__setattr__(self, "end", end)


def _service_configs(data: SyntheticData, capacity_eps: float) -> list[ServiceConfig]:
    from simulator.config import ServiceConfig

    configs = []
    for spec, rate in zip(data.config.services, data.rates, strict=True):
        peak_jobs = float(np.quantile(rate, 0.999)) / (capacity_eps * 60.0)
        mean_jobs = float(rate.mean()) / (capacity_eps * 60.0)
        configs.append(
            ServiceConfig(
                service_id=spec.service_id,
                job_capacity_eps=capacity_eps,
                max_jobs=max(4, math.ceil(peak_jobs * 2.0)),
                max_step=4,
                cost_per_job_hour=0.20,
                # Room for about 1.5x the mean job count at 70 % utilization.
                daily_budget=round(1.5 * mean_jobs / 0.7 * 24 * 0.20, 2),
                criticality=1 if spec.high_priority_share >= 0.2 else 2,
                high_priority_share=spec.high_priority_share,
            )
        )
    return configs


def _decisions(log: SimLog, controller: str) -> pd.DataFrame:
    frames = []
    before_all = np.vstack([log.initial_jobs[None, :], log.target[:-1]])
    for i, sid in enumerate(log.params.service_ids):
        before = before_all[:, i].astype(np.int64)
        after = log.target[:, i].astype(np.int64)
        frames.append(
            pd.DataFrame(
                {
                    "service_id": sid,
                    "ts": log.timestamps,
                    "jobs_before": before,
                    "action": after - before,
                    "jobs_after": after,
                    "controller": controller,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def profiles_frame(configs: Sequence[ServiceConfig], valid_from: pd.Timestamp) -> pd.DataFrame:
    """`service_profiles` rows of simulator service configs, valid from ``valid_from``."""
    return pd.DataFrame(
        [
            {
                "service_id": c.service_id,
                "ts": valid_from,
                "criticality": c.criticality,
                "sla_latency_s": c.sla_latency_s,
                "sla_target": c.sla_target,
                "cost_per_job_hour": c.cost_per_job_hour,
                "daily_budget": c.daily_budget,
                "min_jobs": c.min_jobs,
                "max_jobs": c.max_jobs,
                "max_step": c.max_step,
                "job_capacity_eps": c.job_capacity_eps,
                "job_startup_s": c.job_startup_s,
            }
            for c in configs
        ]
    )


def reactive_targets(arrivals: np.ndarray, params: ClusterParams, utilization: float) -> np.ndarray:
    """Job targets of a plain reactive scaler: the last minute's load at ``utilization``.

    The simulated cluster needs some scaler while it records metrics; this one needs
    nothing from ``models`` (imports point from models to features, not back) and
    reacts one minute late, as a metrics-driven autoscaler does.
    """
    per_job = params.job_capacity_eps * 60.0 * utilization
    need = np.ceil(arrivals / per_job)
    lagged = np.vstack([need[:1], need[:-1]])
    return np.clip(lagged, params.min_jobs, params.max_jobs).astype(np.int64)


@dataclass(frozen=True, eq=False)
class SimulatedHistory:
    """The simulated cluster's history and what produced it.

    Attributes:
        tables: Every contract table (see :func:`simulated_tables`).
        data: The synthetic traffic it ran on.
        configs: The services' cluster configs, in simulator order.
        simulator: The simulator after the last minute, so a live cluster can continue it.
    """

    tables: dict[str, pd.DataFrame]
    data: SyntheticData
    configs: list[ServiceConfig]
    simulator: ClusterSimulator


def simulate_history(
    config: SimulatorSourceConfig, *, service_overrides: Mapping[str, Any] | None = None
) -> SimulatedHistory:
    """Run the synthetic traffic through the simulated cluster, keeping the simulator.

    Args:
        config: What to simulate.
        service_overrides: ServiceConfig fields set on every derived service config (say
            ``job_failure_rate_per_hour``); None keeps the derivation as it is.

    Returns:
        The tables of :func:`simulated_tables` plus the traffic, configs and simulator.
    """
    from simulator.cluster import ClusterSimulator
    from simulator.config import ClusterParams
    from simulator.metrics import event_metrics, system_metrics
    from simulator.run import run_schedule
    from simulator.synthetic import SyntheticConfig, default_services, generate

    start = config.end - pd.Timedelta(days=config.days)
    services = config.services or default_services()
    data = generate(
        SyntheticConfig(start=start, days=config.days, services=services, seed=config.seed)
    )
    configs = _service_configs(data, config.job_capacity_eps)
    if service_overrides:
        configs = [replace(c, **service_overrides) for c in configs]
    params = ClusterParams.from_services(configs)
    order = list(params.service_ids)
    # The simulated cluster sees the observed counts, not the noiseless rates.
    arrivals = data.events.pivot(index="ts", columns="service_id", values="events_in")
    high = data.events.pivot(index="ts", columns="service_id", values="events_high_priority")
    arr = arrivals.loc[:, order].to_numpy(dtype=np.float64)
    targets = reactive_targets(arr, params, config.target_utilization)
    sim = ClusterSimulator(params, targets[0], seed=config.seed)
    log = run_schedule(sim, arr, targets, start=start)
    tables = {
        "service_profiles": profiles_frame(configs, start),
        "business_calendar": data.calendar.copy(),
        "event_metrics": event_metrics(log, high_priority=high.loc[:, order].to_numpy(float)),
        "system_metrics": system_metrics(log),
        "scaling_decisions": _decisions(log, "reactive"),
    }
    return SimulatedHistory(tables=tables, data=data, configs=configs, simulator=sim)


def simulated_tables(config: SimulatorSourceConfig) -> dict[str, pd.DataFrame]:
    """Run the synthetic traffic through the simulated cluster and return every contract
    table (all services, the whole history).

    The cluster is scaled by :func:`reactive_targets`; its decisions are the
    ``scaling_decisions`` rows (controller ``reactive``).
    """
    return simulate_history(config).tables


def split_batches(
    tables: Mapping[str, pd.DataFrame],
    batch_minutes: int,
    origin: str,
    *,
    replaces_history: bool = True,
) -> Iterator[Batch]:
    """Cut whole tables into time batches of ``batch_minutes`` (profiles stay one batch).

    Batches come table by table in contract order and, within a table, oldest first, so
    cross-batch checks (previous queue, gaps) see the earlier batch stored.

    Args:
        tables: Whole tables of a simulation (the simulator source, the simulated
            cluster's outbox).
        batch_minutes: Minutes per batch.
        origin: Label of the source for reports.
        replaces_history: See :class:`Batch`; by default True, since a simulation run
            again (a later end, other settings) supersedes what an earlier run stored.
    """
    for table in TABLES:
        frame = tables.get(table)
        if frame is None or frame.empty:
            continue
        if table == "service_profiles":
            yield Batch(
                table,
                content_id(f"{origin}-{table}", frame),
                frame,
                origin,
                replaces_history=replaces_history,
            )
            continue
        ts = pd.to_datetime(frame["ts"])
        slot = (ts - ts.min()) // pd.Timedelta(minutes=batch_minutes)
        for _, part in frame.groupby(slot.to_numpy(), sort=True):
            part = part.reset_index(drop=True)
            yield Batch(
                table,
                content_id(f"{origin}-{table}", part),
                part,
                origin,
                replaces_history=replaces_history,
            )


def simulator_batches(config: SimulatorSourceConfig) -> Iterator[Batch]:
    """The simulated cluster's history of every table, cut into batches."""
    yield from split_batches(simulated_tables(config), config.batch_minutes, "simulator")
