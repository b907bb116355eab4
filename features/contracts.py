"""Data contracts of DESIGN.md section 4: one typed schema per table, used by the sources,
validation, the offline store and feature engineering alike.

Conventions every table follows:

* ``service_id`` is a non-empty string; ``"*"`` in ``business_calendar`` means "every
  service".
* ``ts`` is a naive UTC timestamp (``datetime64[ns]``). Time-zone-aware input is converted
  to UTC and made naive, so one instant has one spelling in the store. Minute tables carry
  one row per service per minute, stamped at the start of the minute.
* Counts and measurements are float64 (the simulator's flows are fractional; a count
  exported as ``12.0`` must not fail a type check); job counts are int64.
* A source that lacks an optional column fills it by the rule in :attr:`Column.fill`:
  derived from other columns where the derivation is exact, else null ("unknown"), never
  silently 0. Required columns must be present.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

Kind = Literal["string", "timestamp", "float", "int", "bool"]

TABLES = (
    "event_metrics",
    "system_metrics",
    "business_calendar",
    "service_profiles",
    "scaling_decisions",
)
"""Every table of the contract, in the order sources emit them."""

KEYS = ("service_id", "ts")
"""Primary key of every table: ingestion is idempotent on it."""


class ContractError(ValueError):
    """A frame cannot be put in its table's contract (a required column is missing)."""


Filler = Callable[[pd.DataFrame], pd.Series]


@dataclass(frozen=True)
class Column:
    """One column of a table.

    Args:
        name: Column name.
        kind: Logical type; sets the pandas dtype after conforming.
        required: Whether every source must provide it.
        nullable: Whether null values are valid once present.
        min_value: Inclusive lower bound of valid values (numbers), if any.
        max_value: Inclusive upper bound of valid values (numbers), if any.
        fill: What fills the column when a source lacks it (documented rule).
        derive: Computes the fill from the other columns; None fills null.
        description: What the column means, with its unit.
    """

    name: str
    kind: Kind
    description: str
    required: bool = False
    nullable: bool = True
    min_value: float | None = None
    max_value: float | None = None
    fill: str = "null (unknown)"
    derive: Filler | None = None


@dataclass(frozen=True)
class TableContract:
    """The schema of one table.

    Args:
        name: Table name (DESIGN.md section 4).
        columns: Columns in storage order, keys first.
        per_minute: Whether rows are one per service per minute (gap and minute checks).
        description: What one row is.
    """

    name: str
    columns: tuple[Column, ...]
    per_minute: bool
    description: str
    _by_name: Mapping[str, Column] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {c.name: c for c in self.columns})

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def required(self) -> list[str]:
        return [c.name for c in self.columns if c.required]

    def column(self, name: str) -> Column:
        return self._by_name[name]

    def dtypes(self) -> dict[str, str]:
        """pandas dtype of every column after conforming."""
        return {c.name: _DTYPE[c.kind] for c in self.columns}


_DTYPE: dict[Kind, str] = {
    "string": "object",
    "timestamp": "datetime64[ns]",
    "float": "float64",
    "int": "Int64",
    "bool": "boolean",
}


def _ratio(num: str, den: str) -> Filler:
    def derive(frame: pd.DataFrame) -> pd.Series:
        n = pd.to_numeric(frame[num], errors="coerce")
        d = pd.to_numeric(frame[den], errors="coerce")
        # 0/0 is "no events, no errors", not unknown.
        return (n / d.where(d > 0)).where(d != 0, 0.0)

    return derive


def _difference(total: str, part: str) -> Filler:
    def derive(frame: pd.DataFrame) -> pd.Series:
        return pd.to_numeric(frame[total], errors="coerce") - pd.to_numeric(
            frame[part], errors="coerce"
        )

    return derive


def _constant(value: object) -> Filler:
    def derive(frame: pd.DataFrame) -> pd.Series:
        return pd.Series(value, index=frame.index)

    return derive


def _count(name: str, description: str, **kw: object) -> Column:
    return Column(name, "float", description, min_value=0.0, **kw)  # type: ignore[arg-type]


_SERVICE = Column("service_id", "string", "Service name.", required=True, nullable=False)
_TS = Column("ts", "timestamp", "Start of the minute, naive UTC.", required=True, nullable=False)

EVENT_METRICS = TableContract(
    name="event_metrics",
    per_minute=True,
    description="Traffic and queue of one service in one minute.",
    columns=(
        _SERVICE,
        _TS,
        _count("events_in", "Events that arrived in the minute.", required=True, nullable=False),
        _count("events_processed", "Events processed in the minute."),
        _count("queue_length", "Events waiting at the end of the minute."),
        _count("queue_wait_p50_s", "Median queue wait of the minute's events, seconds."),
        _count("queue_wait_p95_s", "95th percentile queue wait, seconds."),
        _count("proc_duration_mean_ms", "Mean processing time of one event, ms."),
        _count("proc_duration_p95_ms", "95th percentile processing time, ms."),
        _count("events_dropped", "Arrivals dropped because the queue was full."),
        _count("events_high_priority", "High-priority events among events_in."),
        _count(
            "events_normal_priority",
            "Normal-priority events among events_in.",
            fill="events_in - events_high_priority (null when that is unknown)",
            derive=_difference("events_in", "events_high_priority"),
        ),
        Column(
            "error_rate",
            "float",
            "Share of the minute's events that failed (dropped included).",
            min_value=0.0,
            max_value=1.0,
            fill="events_dropped / events_in (0 when no events; null when unknown)",
            derive=_ratio("events_dropped", "events_in"),
        ),
    ),
)

SYSTEM_METRICS = TableContract(
    name="system_metrics",
    per_minute=True,
    description="Jobs and resource use of one service in one minute.",
    columns=(
        _SERVICE,
        _TS,
        Column(
            "jobs_running",
            "int",
            "Jobs serving at the end of the minute.",
            required=True,
            nullable=False,
            min_value=0,
        ),
        Column("jobs_starting", "int", "Jobs asked for and not yet serving.", min_value=0),
        Column(
            "utilization",
            "float",
            "Busy fraction of the serving jobs (may exceed 1 briefly on bursty hosts).",
            min_value=0.0,
            max_value=1.5,
        ),
        Column("cpu_pct", "float", "Mean CPU use of the jobs, percent.", min_value=0.0),
        Column("mem_pct", "float", "Mean memory use of the jobs, percent.", min_value=0.0),
        _count("net_mbps", "Network throughput of the jobs, megabit/s."),
        _count("throughput_eps", "Events processed per second, averaged over the minute."),
        Column("job_failures", "int", "Jobs that crashed in the minute.", min_value=0),
    ),
)

BUSINESS_CALENDAR = TableContract(
    name="business_calendar",
    per_minute=True,
    description="Known-future context of one minute; service_id '*' applies to all services.",
    columns=(
        _SERVICE,
        _TS,
        Column(
            "is_holiday",
            "bool",
            "Public holiday.",
            required=True,
            nullable=False,
        ),
        Column(
            "business_event",
            "string",
            "Name of the running business event ('' when none).",
            nullable=False,
            fill="'' (no event known)",
            derive=_constant(""),
        ),
        Column(
            "expected_traffic_multiplier",
            "float",
            "Traffic expected relative to a normal minute (1 = normal).",
            nullable=False,
            min_value=0.0,
            fill="1.0 (no event known)",
            derive=_constant(1.0),
        ),
    ),
)

SERVICE_PROFILES = TableContract(
    name="service_profiles",
    per_minute=False,
    description="What one service must deliver and how it scales, valid from ts on.",
    columns=(
        _SERVICE,
        _TS,
        Column(
            "criticality",
            "int",
            "Business tier, 1 (most critical) to 3.",
            required=True,
            nullable=False,
            min_value=1,
            max_value=3,
        ),
        Column(
            "sla_latency_s",
            "float",
            "Latency an event must meet, seconds.",
            required=True,
            nullable=False,
            min_value=0.0,
        ),
        Column(
            "sla_target",
            "float",
            "Fraction of events that must meet it.",
            required=True,
            nullable=False,
            min_value=0.0,
            max_value=1.0,
        ),
        Column(
            "cost_per_job_hour",
            "float",
            "Price of one job-hour.",
            required=True,
            nullable=False,
            min_value=0.0,
        ),
        Column("daily_budget", "float", "Money per day the service may spend.", min_value=0.0),
        Column("min_jobs", "int", "Fewest jobs.", required=True, nullable=False, min_value=0),
        Column("max_jobs", "int", "Most jobs.", required=True, nullable=False, min_value=0),
        Column(
            "max_step",
            "int",
            "Largest change of the job count per minute (N).",
            required=True,
            nullable=False,
            min_value=1,
        ),
        Column(
            "job_capacity_eps",
            "float",
            "Events per second one job processes.",
            required=True,
            nullable=False,
            min_value=0.0,
        ),
        Column(
            "job_startup_s",
            "float",
            "Seconds from asking for a job to it serving.",
            required=True,
            nullable=False,
            min_value=0.0,
        ),
    ),
)

SCALING_DECISIONS = TableContract(
    name="scaling_decisions",
    per_minute=True,
    description="One scaling decision of one service.",
    columns=(
        _SERVICE,
        _TS,
        Column(
            "jobs_before",
            "int",
            "Job target before the decision.",
            required=True,
            nullable=False,
            min_value=0,
        ),
        Column(
            "action",
            "int",
            "Change applied: jobs_after - jobs_before.",
            required=True,
            nullable=False,
        ),
        Column(
            "jobs_after",
            "int",
            "Job target after the decision.",
            required=True,
            nullable=False,
            min_value=0,
        ),
        Column("controller", "string", "Controller that decided.", required=True, nullable=False),
        Column("forecaster_version", "string", "Model version of the forecaster used."),
        Column("controller_version", "string", "Model version of the controller used."),
        _count("forecast_q10", "Forecast 10% quantile used, events per minute."),
        _count("forecast_q50", "Forecast median used, events per minute."),
        _count("forecast_q90", "Forecast 90% quantile used, events per minute."),
        Column(
            "shield_reason",
            "string",
            "Why the safety shield intervened ('' if not).",
            nullable=False,
            fill="'' (no shield ran)",
            derive=_constant(""),
        ),
    ),
)

CONTRACTS: dict[str, TableContract] = {
    c.name: c
    for c in (EVENT_METRICS, SYSTEM_METRICS, BUSINESS_CALENDAR, SERVICE_PROFILES, SCALING_DECISIONS)
}


def contract(table: str) -> TableContract:
    """The contract of ``table``.

    Raises:
        ContractError: If the table is unknown.
    """
    try:
        return CONTRACTS[table]
    except KeyError:
        raise ContractError(
            f"unknown table {table!r}; expected one of {', '.join(TABLES)}"
        ) from None


def to_utc_naive(values: pd.Series) -> pd.Series:
    """Parse timestamps, convert aware ones to UTC and drop the zone.

    Unparseable values become NaT, so validation can report them row by row instead of
    failing the whole batch here.
    """
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        parsed = values
    else:
        parsed = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
    if isinstance(parsed.dtype, pd.DatetimeTZDtype):
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    return parsed.astype("datetime64[ns]")


def _coerce(values: pd.Series, kind: Kind) -> pd.Series:
    if kind == "timestamp":
        return to_utc_naive(values)
    if kind == "string":
        # Ids exported as numbers (service 42) are still ids: keep their text.
        return values.map(lambda v: None if _is_missing(v) else str(v)).astype(object)
    if kind == "bool":
        if values.dtype == bool or isinstance(values.dtype, pd.BooleanDtype):
            return values.astype("boolean")
        mapped = values.map(_parse_bool)
        return mapped.astype("boolean")
    numeric = pd.to_numeric(values, errors="coerce")
    # An infinite count, rate or duration is no measurement: unparseable, like text.
    numeric = numeric.where(~np.isinf(numeric.astype("float64")))
    if kind == "int":
        whole = numeric.where(numeric.isna() | (numeric == np.floor(numeric)))
        return whole.astype("Float64").astype("Int64")
    return numeric.astype("float64")


def _is_missing(value: object) -> bool:
    return (
        value is None
        or value is pd.NA
        or value is pd.NaT
        or (isinstance(value, float) and np.isnan(value))
    )


_TRUE = {"true", "1", "yes", "t", "y"}
_FALSE = {"false", "0", "no", "f", "n"}


def _parse_bool(value: object) -> object:
    if _is_missing(value):
        return pd.NA
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | float | np.integer | np.floating) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return pd.NA


@dataclass(frozen=True)
class Conformed:
    """A frame put in its contract.

    Attributes:
        frame: Contract columns in order, contract dtypes; extra input columns dropped.
        unparseable: Per column, the row labels whose present value could not be read as
            the column's type (they are null in ``frame``; validation rejects them).
        filled: Columns the source lacked and the rule that filled them.
        dropped_columns: Input columns that are not in the contract.
    """

    frame: pd.DataFrame
    unparseable: dict[str, list[int]]
    filled: dict[str, str]
    dropped_columns: list[str]


def conform(frame: pd.DataFrame, table: str) -> Conformed:
    """Put a source's frame in the contract of ``table`` without losing information.

    Values that cannot be parsed are not guessed: they become null and are listed in
    :attr:`Conformed.unparseable`, so validation rejects their rows with the reason.

    Args:
        frame: Rows from a source, any column order, any extra columns.
        table: Table name.

    Returns:
        The conformed frame and what conforming did.

    Raises:
        ContractError: If the table is unknown or a required column is missing.
    """
    spec = contract(table)
    missing = [name for name in spec.required if name not in frame.columns]
    if missing:
        raise ContractError(
            f"{table}: missing required column(s) {', '.join(missing)}; "
            f"the table needs {', '.join(spec.required)}"
        )
    raw = frame.reset_index(drop=True)
    out: dict[str, pd.Series] = {}
    unparseable: dict[str, list[int]] = {}
    filled: dict[str, str] = {}
    for col in spec.columns:
        if col.name in raw.columns:
            given = raw[col.name]
            if col.kind != "string" or col.name == "service_id":
                # A blank cell is a missing value, not bad text; in a text column other
                # than the key, '' is a value ("no business event").
                given = given.map(lambda v: None if isinstance(v, str) and not v.strip() else v)
            values = _coerce(given, col.kind)
            bad = values.isna() & given.notna()
            if bad.any():
                unparseable[col.name] = [int(i) for i in np.flatnonzero(bad.to_numpy())]
            out[col.name] = values
    conformed = pd.DataFrame(out, index=raw.index)
    for col in spec.columns:
        if col.name in conformed.columns:
            continue
        filled[col.name] = col.fill
        values = (
            col.derive(conformed)
            if col.derive is not None
            else pd.Series(None, index=raw.index, dtype=object)
        )
        conformed[col.name] = _coerce(values, col.kind)
    conformed = conformed[spec.names].astype(spec.dtypes())
    extra = [str(c) for c in raw.columns if c not in spec.names]
    return Conformed(conformed, unparseable, filled, extra)


def empty(table: str) -> pd.DataFrame:
    """A frame with no rows in the contract of ``table``."""
    spec = contract(table)
    return pd.DataFrame({name: pd.Series(dtype=dt) for name, dt in spec.dtypes().items()})
