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

What counts as bad input, for every table and for the HTTP API, is one catalogue:
:data:`BAD_INPUT_KINDS`. Every rejection and every warning names its kind from it.
"""

from __future__ import annotations

import math
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


# --- the bad-input catalogue ---------------------------------------------------------------

Surface = Literal["ingest", "api"]


@dataclass(frozen=True)
class BadInputKind:
    """One kind of bad input: what it is, where it is caught and whether it blocks.

    Attributes:
        name: The kind's name, as reports carry it (``Failure.kind``, ``Notice.kind``,
            the quarantine record, the API error body's ``kind``).
        surfaces: Where it is caught: ``ingest`` (every contract table, whatever the
            source) and/or ``api`` (the body of ``POST /v1/decisions``).
        blocking: True: the service's rows of the batch (or the whole batch, or the
            request) are refused; False: the rows land and the finding is reported.
        description: What the input looks like, in one line.
    """

    name: str
    surfaces: tuple[Surface, ...]
    blocking: bool
    description: str


_INGEST: tuple[Surface, ...] = ("ingest",)
_API: tuple[Surface, ...] = ("api",)
_BOTH: tuple[Surface, ...] = ("ingest", "api")


def _kind(
    name: str, surfaces: tuple[Surface, ...], description: str, *, blocking: bool = True
) -> BadInputKind:
    return BadInputKind(name, surfaces, blocking, description)


BAD_INPUT_KINDS: tuple[BadInputKind, ...] = (
    # Whole batches and requests.
    _kind("unreadable_file", _INGEST, "a dropped file cannot be read as CSV or Parquet"),
    _kind("unknown_table", _INGEST, "a batch names no contract table (file or push target)"),
    _kind("malformed_json", _API, "the request body is not JSON (400)"),
    _kind(
        "unsupported_media_type",
        _API,
        "Content-Type is not JSON, or the body is compressed (415)",
    ),
    _kind("oversize_payload", _API, "the body exceeds the byte limit; refused unread (413)"),
    _kind("too_many_services", _API, "more services in one request than the limit (422)"),
    # Schema drift.
    _kind(
        "missing_required",
        _BOTH,
        "a required column (the whole batch) or body field is absent",
    ),
    _kind(
        "unknown_column",
        _INGEST,
        "a column not in the contract: not stored, reported",
        blocking=False,
    ),
    _kind(
        "missing_optional_column",
        _INGEST,
        "an optional column is absent: filled by its documented rule (derived or null)",
        blocking=False,
    ),
    _kind("empty_batch", _INGEST, "a batch without rows: nothing stored", blocking=False),
    _kind("unknown_field", _API, "a body field not in the schema: refused, never ignored"),
    # Values.
    _kind(
        "wrong_type",
        _BOTH,
        "text where a number or boolean belongs; a string, boolean or list in a JSON number",
    ),
    _kind(
        "non_finite",
        _BOTH,
        "NaN or +-infinity where a measurement belongs (an empty cell says 'unknown')",
    ),
    _kind("non_integer", _BOTH, "a fractional value where a whole number belongs"),
    _kind(
        "bad_timestamp",
        _BOTH,
        "ts cannot be read as a time (bare epoch numbers included: their unit is ambiguous)",
    ),
    _kind("null_value", _INGEST, "an empty value in a column that must be known"),
    _kind(
        "bad_service_id",
        _BOTH,
        "service_id missing or empty, or (API) not [A-Za-z0-9][A-Za-z0-9._-]{0,127}",
    ),
    _kind(
        "negative_count",
        _BOTH,
        "a count, duration, price or other non-negative quantity below 0",
    ),
    _kind(
        "out_of_range",
        _BOTH,
        "a value outside its bounds (error_rate > 1, utilization > 1.5, tier not 1-3, ...)",
    ),
    _kind(
        "wrong_length",
        _API,
        "a count sequence not of its length (120 minutes, 168 hours) or no services at all",
    ),
    # Rows and time.
    _kind(
        "duplicate_key",
        _BOTH,
        "the same (service_id, ts) twice in a batch; the same service twice in a request",
    ),
    _kind("off_minute", _INGEST, "a per-minute row whose ts is not on the whole minute"),
    _kind(
        "future_timestamp",
        _BOTH,
        "ts after now (the calendar excepted); API: more than 5 minutes after the server clock",
    ),
    _kind(
        "out_of_order",
        _INGEST,
        "a row older than its service's newest stored minute that changes a stored row "
        "(it would rewrite history already used)",
    ),
    _kind(
        "gap",
        _INGEST,
        "minutes missing inside a service's batch or since its last stored row",
        blocking=False,
    ),
    _kind(
        "stale",
        _INGEST,
        "a service's newest row is older than the freshness limit",
        blocking=False,
    ),
    # Across columns and tables.
    _kind(
        "unknown_service",
        _INGEST,
        "metrics or decisions of a service that has no stored service profile",
    ),
    _kind(
        "inverted_pair",
        _BOTH,
        "a value below one it must not be below (p95 < p50, max_jobs < min_jobs, "
        "forecast quantiles crossing)",
    ),
    _kind(
        "flow_imbalance",
        _INGEST,
        "counts that do not add up (processed > arrived + queued, priorities != arrivals, "
        "jobs_after != jobs_before + action)",
    ),
)
"""Every kind of bad input the system recognises, for every table and the HTTP API."""

BAD_INPUT: Mapping[str, BadInputKind] = {k.name: k for k in BAD_INPUT_KINDS}


def bad_input_kind(name: str) -> BadInputKind:
    """The catalogue entry ``name``; reports call this so an uncatalogued kind fails loudly.

    Raises:
        ValueError: If ``name`` is not in :data:`BAD_INPUT_KINDS`.
    """
    try:
        return BAD_INPUT[name]
    except KeyError:
        raise ValueError(f"{name!r} is not a kind of the bad-input catalogue") from None


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
    failing the whole batch here. So do bare numbers: epoch seconds, milliseconds and
    nanoseconds look alike, and pandas would read them all as nanoseconds (1970).
    """
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        parsed = values
    else:
        if pd.api.types.is_numeric_dtype(values.dtype) or values.map(_is_number).any():
            values = values.map(lambda v: None if _is_number(v) else v)
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
    # pandas reads True as 1: a boolean where a number belongs is a type error, not a count.
    if pd.api.types.is_bool_dtype(values.dtype):
        values = pd.Series(np.nan, index=values.index)
    elif values.dtype == object:
        values = values.map(lambda v: None if isinstance(v, bool | np.bool_) else v)
    numeric = pd.to_numeric(values, errors="coerce")
    # An infinite count, rate or duration is no measurement: unparseable, like text.
    numeric = numeric.where(~np.isinf(numeric.astype("float64")))
    if kind == "int":
        whole = numeric.where(numeric.isna() | (numeric == np.floor(numeric)))
        return whole.astype("Float64").astype("Int64")
    return numeric.astype("float64")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


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


def parse_failure_kind(value: object, kind: Kind) -> str:
    """The bad-input kind of a present ``value`` that could not be read as ``kind``.

    ``bad_timestamp`` for a time column; for numbers ``non_finite`` (NaN, infinity, as a
    number or as text), ``non_integer`` (2.5 where a whole number belongs); else
    ``wrong_type``.
    """
    if kind == "timestamp":
        return "bad_timestamp"
    if kind in ("float", "int"):
        number: float | None = None
        if _is_number(value):
            number = float(value)  # type: ignore[arg-type]
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        if number is not None and not math.isfinite(number):
            return "non_finite"
        if number is not None and kind == "int" and not number.is_integer():
            return "non_integer"
    return "wrong_type"


@dataclass(frozen=True)
class Conformed:
    """A frame put in its contract.

    Attributes:
        frame: Contract columns in order, contract dtypes; extra input columns dropped.
        unparseable: Per column, the row labels whose present value could not be read as
            the column's type (they are null in ``frame``; validation rejects them).
        filled: Columns the source lacked and the rule that filled them.
        dropped_columns: Input columns that are not in the contract.
        parse_kinds: Per column, the bad-input kind of each unparseable row (see
            :func:`parse_failure_kind`); a row not listed is ``wrong_type``.
    """

    frame: pd.DataFrame
    unparseable: dict[str, list[int]]
    filled: dict[str, str]
    dropped_columns: list[str]
    parse_kinds: dict[str, dict[int, str]] = field(default_factory=dict)


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
    parse_kinds: dict[str, dict[int, str]] = {}
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
                rows = [int(i) for i in np.flatnonzero(bad.to_numpy())]
                unparseable[col.name] = rows
                parse_kinds[col.name] = {
                    i: parse_failure_kind(given.iloc[i], col.kind) for i in rows
                }
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
    return Conformed(conformed, unparseable, filled, extra, parse_kinds)


def empty(table: str) -> pd.DataFrame:
    """A frame with no rows in the contract of ``table``."""
    spec = contract(table)
    return pd.DataFrame({name: pd.Series(dtype=dt) for name, dt in spec.dtypes().items()})
