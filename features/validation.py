"""Great Expectations validation of ingested batches, one suite per table (DESIGN.md 3, 4).

The ingest pipeline runs ``conform -> validate -> store valid services, quarantine the
rest``. Validation answers, per service of a batch, "may these rows land?". Every finding
names its kind from :data:`features.contracts.BAD_INPUT_KINDS`.

Blocking rules (the service's rows of this batch are rejected as a whole; other services
of the same batch are unaffected):

* a present value that could not be read as its column's type (from :func:`conform`):
  ``wrong_type``, ``non_finite``, ``non_integer``, ``bad_timestamp``;
* ``null_value`` in a non-nullable column; ``bad_service_id`` (null or empty);
* bounds from :attr:`Column.min_value` / :attr:`Column.max_value`: ``negative_count``
  (below a lower bound of 0), ``out_of_range`` (any other bound);
* ``duplicate_key``: a ``(service_id, ts)`` twice in the batch;
* per-minute tables: ``off_minute`` (ts not on the whole minute); every table except
  ``business_calendar`` (known-future context by design): ``future_timestamp``;
* cross-column rules (:func:`_pair_rules`, :data:`DERIVED_COLUMNS`): ``inverted_pair``,
  ``flow_imbalance``;
* observed tables (:data:`OBSERVED_TABLES`), when the caller passes the context:
  ``unknown_service`` (no stored profile) and ``out_of_order`` (a row older than the
  service's newest stored minute that differs from the stored row: history is not
  rewritten; identical replays and never-stored minutes are fine).

Out-of-order rows *inside* a batch are not bad input: the store sorts them.

Non-blocking warnings (rows land, the finding is reported as a :class:`Notice`): ``gap``
(minutes missing inside a service's batch or since its last stored row) and ``stale``
(newest row older than the freshness limit). (Columns conform filled or dropped are in
:class:`Conformed`; the caller reports them.)

Every row-level rule is a GE expectation in the table's suite. Rules GE cannot say on the
raw columns (a timestamp's seconds, the previous minute's queue, a sum with tolerance) are
expectations on derived helper columns added to a copy of the batch (see
:data:`DERIVED_COLUMNS`), so the GE result is the single record of what was checked.

Great Expectations is imported lazily (it takes seconds); ``import features.validation``
stays fast.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.contracts import (
    KEYS,
    TABLES,
    Conformed,
    ContractError,
    TableContract,
    bad_input_kind,
    contract,
    to_utc_naive,
)

if TYPE_CHECKING:
    import great_expectations as gx
    from great_expectations.core.batch_definition import BatchDefinition
    from great_expectations.expectations.expectation import Expectation

MISSING_SERVICE = "(missing service_id)"
"""Service label of rows whose ``service_id`` is null."""

MINUTE = pd.Timedelta(minutes=1)

TOLERANCE = 1e-6
"""Relative tolerance of the flow balances: the simulator's flows are fractional floats."""

KNOWN_FUTURE_TABLES = frozenset({"business_calendar"})
"""Tables whose rows describe the future by design: no future-ts rule, no freshness."""

OBSERVED_TABLES = frozenset({"event_metrics", "system_metrics", "scaling_decisions"})
"""Per-service records of what happened: their service needs a profile, and their stored
past is not rewritten (``unknown_service``, ``out_of_order``)."""

DERIVED_COLUMNS: dict[str, str] = {
    "check__ts_seconds_past_minute": "seconds of ts past the start of its minute (must be 0)",
    "check__ts_seconds_after_now": "seconds ts lies after `now` (must be <= 0)",
    "check__processed_excess": (
        "events_processed - (events_in + previous minute's queue_length) - tolerance "
        "(must be <= 0; null when the previous queue is unknown)"
    ),
    "check__priority_mismatch": (
        "|events_high_priority + events_normal_priority - events_in| - tolerance "
        "(must be <= 0; null when a part is unknown)"
    ),
    "check__jobs_mismatch": "jobs_after - jobs_before - action (must be 0)",
    "check__service_unknown": (
        "1 when the row's service has no stored profile, else 0 (must be 0; null when not checked)"
    ),
    "check__rewrites_stored": (
        "1 when the row is older than its service's newest stored row and differs from "
        "the stored row with its key, else 0 (must be 0; null when not checked)"
    ),
}
"""Helper columns added to a copy of the batch before validation, and what they hold."""

DEFAULT_FRESHNESS = pd.Timedelta(minutes=15)
"""A service whose newest row is older than this gets a staleness warning."""

# How many row numbers a reason spells out before it says "+N more".
_ROWS_SHOWN = 10


def _import_gx() -> ModuleType:
    """Import Great Expectations with its analytics off (the env var is read at import)."""
    os.environ["GX_ANALYTICS_ENABLED"] = "False"
    import great_expectations

    return great_expectations


@dataclass(frozen=True)
class Failure:
    """One broken rule.

    Attributes:
        kind: The bad-input kind (:data:`features.contracts.BAD_INPUT_KINDS`).
        expectation: GE expectation type (``expect_column_values_to_be_between``),
            ``"parse"`` for values that could not be read as the column's type, or
            ``"contract"`` for a batch that could not be read or put in its contract.
        column: The column at fault (the first of a pair); None for multi-column rules.
        reason: A sentence naming the column, what is wrong and the rows.
        rows: Positional row indices in the batch that broke the rule; empty means the
            whole batch.
    """

    kind: str
    expectation: str
    column: str | None
    reason: str
    rows: tuple[int, ...]

    def __post_init__(self) -> None:
        bad_input_kind(self.kind)


@dataclass(frozen=True)
class Notice:
    """A non-blocking finding: the rows landed, this is reported.

    Attributes:
        kind: The bad-input kind (a non-blocking one of the catalogue).
        message: A sentence naming the service and what was found.
    """

    kind: str
    message: str

    def __post_init__(self) -> None:
        if bad_input_kind(self.kind).blocking:
            raise ValueError(f"{self.kind} is a blocking kind; report it as a Failure")

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class ServiceVerdict:
    """Whether one service's rows of a batch may land.

    Attributes:
        service_id: The service, or :data:`MISSING_SERVICE` for rows without one.
        n_rows: Rows of that service in the batch.
        failures: Blocking findings; any one rejects all of the service's rows.
        notices: Non-blocking findings (gaps, freshness).
    """

    service_id: str
    n_rows: int
    failures: tuple[Failure, ...]
    notices: tuple[Notice, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def warnings(self) -> tuple[str, ...]:
        """The notices' messages."""
        return tuple(n.message for n in self.notices)


@dataclass(frozen=True)
class BatchValidation:
    """The verdict on one batch.

    Attributes:
        table: Table name.
        n_rows: Rows in the batch.
        table_failures: Failures that cannot be attributed to a service; they reject the
            whole batch.
        services: Verdict per service, in order of first appearance.
        notices: Every non-blocking finding of the batch (service notices included).
        ge_result: JSON-serialisable GE validation result, plus ``parse_failures``
            (column -> rows), ``derived_columns`` (name -> meaning) and ``now``.
    """

    table: str
    n_rows: int
    table_failures: tuple[Failure, ...]
    services: dict[str, ServiceVerdict]
    notices: tuple[Notice, ...]
    ge_result: dict[str, Any]
    _rows: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def warnings(self) -> tuple[str, ...]:
        """The notices' messages."""
        return tuple(n.message for n in self.notices)

    @property
    def accepted_services(self) -> list[str]:
        if self.table_failures:
            return []
        return [s for s, v in self.services.items() if v.passed]

    @property
    def rejected_services(self) -> list[str]:
        if self.table_failures:
            return list(self.services)
        return [s for s, v in self.services.items() if not v.passed]

    def rows_of(self, service_id: str) -> np.ndarray:
        """Positional row indices of ``service_id``'s rows in the batch.

        Args:
            service_id: A service of the batch (or :data:`MISSING_SERVICE`).

        Returns:
            Sorted int64 indices; empty when the service is not in the batch.
        """
        return self._rows.get(service_id, np.empty(0, dtype=np.int64))


class BatchValidator:
    """Holds one ephemeral GE context and the suites; build once per run (building is slow).

    Args:
        freshness: A per-minute service whose newest row is older than ``now - freshness``
            gets a staleness warning.
    """

    def __init__(self, *, freshness: pd.Timedelta = DEFAULT_FRESHNESS) -> None:
        if freshness <= pd.Timedelta(0):
            raise ValueError(f"freshness must be positive, got {freshness}")
        self.freshness = freshness
        gx_module = _import_gx()
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self._context = gx_module.get_context(mode="ephemeral")
        # Progress bars would litter logs and flow-run output on every validation.
        self._context.variables.progress_bars = ProgressBarsConfig(
            globally=False, metric_calculations=False
        )
        source = self._context.data_sources.add_pandas("ingest")
        self._suites: dict[str, gx.ExpectationSuite] = {}
        self._batches: dict[str, BatchDefinition] = {}
        for table in TABLES:
            spec = contract(table)
            suite = self._context.suites.add(
                gx_module.ExpectationSuite(name=table, expectations=_expectations(spec))
            )
            self._suites[table] = suite
            asset = source.add_dataframe_asset(table)
            self._batches[table] = asset.add_batch_definition_whole_dataframe(table)

    def suite(self, table: str) -> gx.ExpectationSuite:
        """The expectation suite of ``table``.

        Raises:
            ContractError: If the table is unknown.
        """
        contract(table)
        return self._suites[table]

    def validate(
        self,
        conformed: Conformed,
        table: str,
        *,
        now: pd.Timestamp,
        previous: pd.DataFrame | None = None,
        known_services: Collection[str] | None = None,
        stored: pd.DataFrame | None = None,
    ) -> BatchValidation:
        """Validate one conformed batch.

        Args:
            conformed: The batch after :func:`features.contracts.conform`.
            table: Its table.
            now: Current time, naive UTC (an aware one is converted); never read here
                from the clock so results are reproducible.
            previous: For per-minute tables, the last stored row per service (at least
                ``service_id``, ``ts`` and, for ``event_metrics``, ``queue_length``), so
                the first row's flow balance and the gap since the last batch are checked.
            known_services: For :data:`OBSERVED_TABLES`, the services with a stored
                profile; rows of any other service are ``unknown_service``. None: not
                checked.
            stored: For :data:`OBSERVED_TABLES`, with ``previous``: the stored rows (in
                the contract) at the batch's keys older than their service's newest
                stored row. A batch row there that differs from the stored one is
                ``out_of_order``. None: not checked (a batch that may replace history).

        Returns:
            Verdict per service, table-level failures, warnings and the GE result.

        Raises:
            ContractError: If the frame is not in ``table``'s contract (conform it first).
        """
        spec = contract(table)
        frame = conformed.frame.reset_index(drop=True)
        if list(frame.columns) != spec.names:
            raise ContractError(
                f"{table}: the frame's columns {list(frame.columns)} are not the contract's "
                f"{spec.names}; pass the result of conform(frame, {table!r})"
            )
        now = _utc_naive(now)
        prev = _previous(previous, table)
        context = _Context(
            now=now,
            newest_stored=_newest_stored(prev),
            known_services=None if known_services is None else frozenset(known_services),
            stored=None if stored is None or prev is None else _stored_by_key(stored, spec),
        )
        checked = _with_derived_columns(frame, spec, prev, context)
        batch = self._batches[table].get_batch(batch_parameters={"dataframe": checked})
        result = batch.validate(self._suites[table], result_format="COMPLETE")
        ge_result: dict[str, Any] = _json_safe(result.to_json_dict())
        ge_result["parse_failures"] = {k: list(v) for k, v in conformed.unparseable.items()}
        ge_result["derived_columns"] = {
            k: v for k, v in DERIVED_COLUMNS.items() if k in checked.columns
        }
        ge_result["now"] = now.isoformat()

        labels = _service_labels(frame)
        row_failures, table_failures = _failures(ge_result, conformed, spec)
        notices = _service_notices(frame, labels, spec, now, prev, self.freshness)
        rows = {str(k): np.sort(v).astype(np.int64) for k, v in _group_positions(labels)}
        services = {
            s: ServiceVerdict(
                service_id=s,
                n_rows=len(idx),
                failures=tuple(_split_by_service(row_failures, labels, s, context)),
                notices=tuple(notices.get(s, ())),
            )
            for s, idx in rows.items()
        }
        all_notices = [n for v in services.values() for n in v.notices]
        return BatchValidation(
            table=table,
            n_rows=len(frame),
            table_failures=tuple(table_failures),
            services=services,
            notices=tuple(all_notices),
            ge_result=ge_result,
            _rows=rows,
        )


# --- suites -------------------------------------------------------------------------------


def _meta(kind: str, column: str | None, what: str) -> dict[str, Any]:
    """An expectation's meta: bad-input kind, column reported at fault, how a break reads."""
    bad_input_kind(kind)
    return {"kind": kind, "column": column, "what": what}


def _expectations(spec: TableContract) -> list[Expectation]:
    """The table's expectations, built from its contract.

    Every expectation carries ``meta`` = {kind, column, what}: the bad-input kind it
    catches, the column reported as at fault and how a broken value is described.
    """
    _import_gx()
    import great_expectations.expectations as gxe

    out: list[Expectation] = []
    for col in spec.columns:
        if not col.nullable:
            kind = "bad_service_id" if col.name == "service_id" else "null_value"
            out.append(
                gxe.ExpectColumnValuesToNotBeNull(
                    column=col.name, meta=_meta(kind, col.name, "null value(s)")
                )
            )
        # One expectation per bound, so a negative count and a too-large rate are told apart.
        if col.min_value is not None:
            out.append(
                gxe.ExpectColumnValuesToBeBetween(
                    column=col.name,
                    min_value=col.min_value,
                    meta=_meta(
                        "negative_count" if col.min_value == 0 else "out_of_range",
                        col.name,
                        f"value(s) below {col.min_value:g}",
                    ),
                )
            )
        if col.max_value is not None:
            out.append(
                gxe.ExpectColumnValuesToBeBetween(
                    column=col.name,
                    max_value=col.max_value,
                    meta=_meta("out_of_range", col.name, f"value(s) above {col.max_value:g}"),
                )
            )
    # An empty id is as unattributable as a null one, but it is a value a source sent.
    out.append(
        gxe.ExpectColumnValueLengthsToBeBetween(
            column="service_id",
            min_value=1,
            meta=_meta("bad_service_id", "service_id", "empty id(s)"),
        )
    )
    out.append(
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=list(KEYS),
            meta=_meta(
                "duplicate_key", None, "row(s) share their (service_id, ts) with another row"
            ),
        )
    )
    if spec.per_minute:
        out.append(
            gxe.ExpectColumnValuesToBeBetween(
                column="check__ts_seconds_past_minute",
                min_value=0,
                max_value=0,
                meta=_meta("off_minute", "ts", "timestamp(s) not on the whole minute"),
            )
        )
    if spec.name not in KNOWN_FUTURE_TABLES:
        out.append(
            gxe.ExpectColumnValuesToBeBetween(
                column="check__ts_seconds_after_now",
                max_value=0,
                meta=_meta("future_timestamp", "ts", "timestamp(s) in the future"),
            )
        )
    if spec.name in OBSERVED_TABLES:
        out.append(
            gxe.ExpectColumnValuesToBeBetween(
                column="check__service_unknown",
                max_value=0,
                meta=_meta(
                    "unknown_service",
                    "service_id",
                    "row(s) of a service with no stored service profile; "
                    "ingest its service_profiles row first",
                ),
            )
        )
        out.append(
            gxe.ExpectColumnValuesToBeBetween(
                column="check__rewrites_stored",
                max_value=0,
                meta=_meta(
                    "out_of_order",
                    "ts",
                    "row(s) older than the service's newest stored minute that differ from "
                    "the stored row; stored history is not rewritten",
                ),
            )
        )
    out.extend(_cross_column(spec.name))
    return out


def _pair_rules(table: str) -> list[tuple[str, str]]:
    """(A, B) pairs with the rule A >= B (both known), per table."""
    return {
        "event_metrics": [("queue_wait_p95_s", "queue_wait_p50_s")],
        "service_profiles": [("max_jobs", "min_jobs")],
        # Quantiles of one forecast cannot cross.
        "scaling_decisions": [("forecast_q50", "forecast_q10"), ("forecast_q90", "forecast_q50")],
    }.get(table, [])


def _cross_column(table: str) -> list[Expectation]:
    _import_gx()
    import great_expectations.expectations as gxe

    out: list[Expectation] = []
    for a, b in _pair_rules(table):
        out.append(
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A=a,
                column_B=b,
                or_equal=True,
                ignore_row_if="either_value_is_missing",
                meta=_meta("inverted_pair", a, f"value(s) below {b}"),
            )
        )
    if table == "event_metrics":
        out.append(
            gxe.ExpectColumnValuesToBeBetween(
                column="check__processed_excess",
                max_value=0,
                meta=_meta(
                    "flow_imbalance",
                    "events_processed",
                    "value(s) above events_in + the previous minute's queue_length",
                ),
            )
        )
        out.append(
            gxe.ExpectColumnValuesToBeBetween(
                column="check__priority_mismatch",
                max_value=0,
                meta=_meta(
                    "flow_imbalance",
                    "events_high_priority",
                    "row(s) where events_high_priority + events_normal_priority != events_in",
                ),
            )
        )
    if table == "scaling_decisions":
        out.append(
            gxe.ExpectColumnValuesToBeBetween(
                column="check__jobs_mismatch",
                min_value=0,
                max_value=0,
                meta=_meta(
                    "flow_imbalance",
                    "jobs_after",
                    "row(s) where jobs_after != jobs_before + action",
                ),
            )
        )
    return out


# --- the checked frame -----------------------------------------------------------------------


def _utc_naive(ts: pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(ts)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts


def _previous(previous: pd.DataFrame | None, table: str) -> pd.DataFrame | None:
    """The stored rows given as context, keys typed like the batch; None when none."""
    if previous is None or previous.empty:
        return None
    missing = [c for c in KEYS if c not in previous.columns]
    if missing:
        raise ValueError(f"{table}: `previous` lacks column(s) {', '.join(missing)}")
    prev = previous.reset_index(drop=True)
    # Typed like a conformed batch so (service_id, ts) lookups match.
    prev["ts"] = to_utc_naive(prev["ts"])
    prev = prev[prev["service_id"].notna() & prev["ts"].notna()].copy()
    prev["service_id"] = prev["service_id"].astype(str)
    return prev


@dataclass(frozen=True)
class _Context:
    """What the rules of one batch compare its rows with, besides the rows themselves."""

    now: pd.Timestamp
    newest_stored: dict[str, pd.Timestamp]
    known_services: frozenset[str] | None
    stored: pd.DataFrame | None  # indexed by (service_id, ts), contract columns


def _newest_stored(prev: pd.DataFrame | None) -> dict[str, pd.Timestamp]:
    if prev is None:
        return {}
    return {str(k): pd.Timestamp(v) for k, v in prev.groupby("service_id")["ts"].max().items()}


def _stored_by_key(stored: pd.DataFrame, spec: TableContract) -> pd.DataFrame:
    """Stored rows typed like a conformed batch, one per key, indexed by (service_id, ts)."""
    missing = [c for c in spec.names if c not in stored.columns]
    if missing:
        raise ValueError(f"{spec.name}: `stored` lacks column(s) {', '.join(missing)}")
    rows = stored[spec.names].astype(spec.dtypes())
    rows = rows[rows["service_id"].notna() & rows["ts"].notna()]
    rows = rows.drop_duplicates(list(KEYS), keep="last")
    return rows.set_index(list(KEYS))


def _seconds(delta: pd.Series) -> pd.Series:
    return delta.dt.total_seconds()


def _with_derived_columns(
    frame: pd.DataFrame, spec: TableContract, prev: pd.DataFrame | None, context: _Context
) -> pd.DataFrame:
    """A copy of ``frame`` with the helper columns its suite checks (see DERIVED_COLUMNS)."""
    out = frame.copy()
    ts = out["ts"]
    if spec.per_minute:
        out["check__ts_seconds_past_minute"] = _seconds(ts - ts.dt.floor("min"))
    if spec.name not in KNOWN_FUTURE_TABLES:
        out["check__ts_seconds_after_now"] = _seconds(ts - context.now)
    if spec.name in OBSERVED_TABLES:
        out["check__service_unknown"] = _service_unknown(frame, context.known_services)
        out["check__rewrites_stored"] = _rewrites_stored(frame, spec, context)
    if spec.name == "event_metrics":
        events_in = out["events_in"]
        available = events_in + _previous_queue(frame, prev)
        out["check__processed_excess"] = (
            out["events_processed"] - available - TOLERANCE * available.abs().clip(lower=1.0)
        )
        parts = out["events_high_priority"] + out["events_normal_priority"]
        out["check__priority_mismatch"] = (parts - events_in).abs() - TOLERANCE * (
            events_in.abs().clip(lower=1.0)
        )
    if spec.name == "scaling_decisions":
        mismatch = out["jobs_after"] - out["jobs_before"] - out["action"]
        out["check__jobs_mismatch"] = mismatch.astype("Float64").astype("float64")
    return out


def _service_unknown(frame: pd.DataFrame, known: frozenset[str] | None) -> pd.Series:
    """1.0 for rows whose service has no profile, 0.0 for known ones, NaN when unchecked.

    Rows without a usable id are left to the id rules (``bad_service_id``).
    """
    ids = frame["service_id"]
    values = np.full(len(frame), np.nan)
    if known is not None:
        usable = (ids.notna() & (ids.astype(str) != "")).to_numpy()
        unknown = ~ids.astype(str).isin(known).to_numpy()
        values[usable] = unknown[usable].astype(float)
    return pd.Series(values, index=frame.index)


def _rewrites_stored(frame: pd.DataFrame, spec: TableContract, context: _Context) -> pd.Series:
    """1.0 where a row older than its service's newest stored row differs from the stored
    row with its key; 0.0 for other checked rows; NaN when there is nothing to check
    against (no stored context, no id or ts)."""
    values = np.full(len(frame), np.nan)
    if context.stored is None:
        return pd.Series(values, index=frame.index)
    ids, ts = frame["service_id"], frame["ts"]
    checkable = (ids.notna() & ts.notna()).to_numpy()
    values[checkable] = 0.0
    newest = ids.map(context.newest_stored)
    late = checkable & (ts < pd.to_datetime(newest)).fillna(False).to_numpy(dtype=bool)
    if not late.any():
        return pd.Series(values, index=frame.index)
    rows = frame[late]
    keys = pd.MultiIndex.from_arrays([rows["service_id"], rows["ts"]])
    found = keys.isin(context.stored.index)
    if not found.any():
        return pd.Series(values, index=frame.index)
    mine = rows[found].reset_index(drop=True)
    theirs = context.stored.loc[keys[found]].reset_index()[spec.names]
    differs = ~_same_values(mine, theirs)
    positions = np.flatnonzero(late)[found]
    values[positions] = differs.astype(float)
    return pd.Series(values, index=frame.index)


def _same_values(a: pd.DataFrame, b: pd.DataFrame) -> np.ndarray:
    """Row-wise equality of two aligned frames in one contract, null equal to null."""
    same = np.ones(len(a), dtype=bool)
    for name in a.columns:
        x, y = a[name], b[name]
        both_null = x.isna().to_numpy() & y.isna().to_numpy()
        equal = x.eq(y).fillna(False).to_numpy(dtype=bool)
        same &= equal | both_null
    return same


def _previous_queue(frame: pd.DataFrame, prev: pd.DataFrame | None) -> pd.Series:
    """queue_length at the end of the minute before each row, same service; NaN if unknown.

    Looked up by (service_id, ts - 1 min) among the batch's rows and the stored ``prev``
    rows (the batch wins when both have it). A gap or a first-ever row leaves it unknown,
    so the flow balance is skipped there rather than guessed.
    """
    cols = ["service_id", "ts", "queue_length"]
    known = [frame[cols]]
    if prev is not None and "queue_length" in prev.columns:
        known.insert(0, prev[cols].astype({"queue_length": "float64"}))
    lookup = pd.concat(known, ignore_index=True)
    lookup = lookup[lookup["service_id"].notna() & lookup["ts"].notna()]
    lookup = lookup.drop_duplicates(["service_id", "ts"], keep="last")
    queue = pd.Series(
        lookup["queue_length"].to_numpy(),
        index=pd.MultiIndex.from_arrays([lookup["service_id"], lookup["ts"]]),
    )
    wanted = pd.MultiIndex.from_arrays([frame["service_id"], frame["ts"] - MINUTE])
    values = queue.reindex(wanted).to_numpy(dtype="float64")
    # pandas would match a null id with a null id; a row without a service has no past.
    values[frame["service_id"].isna().to_numpy()] = np.nan
    return pd.Series(values, index=frame.index)


def _service_labels(frame: pd.DataFrame) -> np.ndarray:
    ids = frame["service_id"]
    return np.where(ids.isna(), MISSING_SERVICE, ids.astype(str)).astype(object)


def _group_positions(labels: np.ndarray) -> Iterable[tuple[Any, np.ndarray]]:
    """(label, positions) in order of first appearance."""
    if len(labels) == 0:
        return []
    codes, uniques = pd.factorize(labels)
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    return zip(uniques, np.split(order, bounds), strict=True)


def _json_safe(value: Any) -> Any:
    """Strict-JSON copy: numpy scalars to Python, NaN/inf to None, timestamps to ISO text.

    GE's ``to_json_dict`` leaves numpy scalars of unexpected values (np.int64 is not JSON)
    and NaN in place.
    """
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, datetime.date | datetime.timedelta | pd.Timedelta):
        return value.isoformat() if hasattr(value, "isoformat") else str(value)
    return str(value)


# --- failures -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RowFailure:
    """A broken expectation with all its rows, before it is split by service."""

    kind: str
    expectation: str
    column: str | None
    what: str
    rows: np.ndarray


_PARSE_WHAT = {
    "non_finite": "NaN or infinite value(s); leave the cell empty when the value is unknown",
    "non_integer": "fractional value(s) where a whole number belongs",
    "bad_timestamp": (
        "value(s) that cannot be read as a timestamp (ISO 8601 text or a datetime; bare "
        "numbers are refused, their unit is ambiguous)"
    ),
}
_TYPE_NAMES = {"float": "a number", "int": "a whole number", "bool": "a boolean (true/false)"}


def _parse_failures(conformed: Conformed, spec: TableContract) -> list[_RowFailure]:
    """One failure per (column, kind) of the values conform could not read."""
    out = []
    for col, rows in conformed.unparseable.items():
        kinds = conformed.parse_kinds.get(col, {})
        by_kind: dict[str, list[int]] = {}
        for r in rows:
            by_kind.setdefault(kinds.get(r, "wrong_type"), []).append(r)
        type_name = spec.column(col).kind if col in spec.names else "its type"
        for kind, kind_rows in by_kind.items():
            what = _PARSE_WHAT.get(
                kind, f"value(s) that cannot be read as {_TYPE_NAMES.get(type_name, type_name)}"
            )
            out.append(_RowFailure(kind, "parse", col, what, np.asarray(kind_rows, dtype=np.int64)))
    return out


def _failures(
    ge_result: dict[str, Any], conformed: Conformed, spec: TableContract
) -> tuple[list[_RowFailure], list[Failure]]:
    """Row-level failures (parse first, then GE's in result order) and table-level ones.

    A GE expectation that raised, or failed without row indices, cannot be attributed to a
    service: it becomes a table failure and rejects the whole batch.
    """
    row_failures = _parse_failures(conformed, spec)
    table_failures: list[Failure] = []
    unparseable = {c: np.asarray(r, dtype=np.int64) for c, r in conformed.unparseable.items()}
    for res in ge_result["results"]:
        if res["success"]:
            continue
        config = res["expectation_config"]
        meta = config.get("meta") or {}
        exc = res.get("exception_info") or {}
        index = res.get("result", {}).get("unexpected_index_list")
        if exc.get("raised_exception") or index is None:
            message = exc.get("exception_message") or "no failing rows reported"
            table_failures.append(
                Failure(
                    kind=meta["kind"],
                    expectation=config["type"],
                    column=meta.get("column"),
                    reason=f"{config['type']} on {_kwargs_text(config['kwargs'])} could not "
                    f"be evaluated: {message}",
                    rows=(),
                )
            )
            continue
        rows = np.asarray(index, dtype=np.int64)
        column = meta.get("column")
        if config["type"] == "expect_column_values_to_not_be_null" and column in unparseable:
            # Unparseable values are null after conforming; the parse failure names them.
            rows = np.setdiff1d(rows, unparseable[column])
            if len(rows) == 0:
                continue
        row_failures.append(
            _RowFailure(meta["kind"], config["type"], column, meta.get("what", ""), rows)
        )
    return row_failures, table_failures


def _kwargs_text(kwargs: dict[str, Any]) -> str:
    cols = (
        kwargs.get("column")
        or kwargs.get("column_list")
        or [kwargs.get("column_A"), kwargs.get("column_B")]
    )
    return str(cols)


def _split_by_service(
    failures: list[_RowFailure], labels: np.ndarray, service: str, context: _Context
) -> list[Failure]:
    out = []
    for f in failures:
        rows = f.rows[labels[f.rows] == service] if len(f.rows) else f.rows
        if len(rows) == 0:
            continue
        out.append(
            Failure(
                kind=f.kind,
                expectation=f.expectation,
                column=f.column,
                reason=_reason(f, rows, service, context),
                rows=tuple(int(r) for r in rows),
            )
        )
    return out


def _reason(f: _RowFailure, rows: np.ndarray, service: str, context: _Context) -> str:
    """'events_in: 3 value(s) below 0 (rows 4, 17, 20)'."""
    what = f.what
    if f.kind == "future_timestamp":
        what = f"{what}, after now = {context.now:%Y-%m-%d %H:%M:%S}"
    elif f.kind == "out_of_order" and service in context.newest_stored:
        what = f"{what} (newest stored minute {context.newest_stored[service]:%Y-%m-%d %H:%M})"
    subject = f.column if f.column is not None else "(service_id, ts)"
    return f"{subject}: {len(rows)} {what} ({_rows_text(rows)})"


def _rows_text(rows: np.ndarray) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:_ROWS_SHOWN])
    more = f", +{len(rows) - _ROWS_SHOWN} more" if len(rows) > _ROWS_SHOWN else ""
    return f"{'row' if len(rows) == 1 else 'rows'} {shown}{more}"


# --- notices (warnings) -----------------------------------------------------------------------


def _service_notices(
    frame: pd.DataFrame,
    labels: np.ndarray,
    spec: TableContract,
    now: pd.Timestamp,
    prev: pd.DataFrame | None,
    freshness: pd.Timedelta,
) -> dict[str, list[Notice]]:
    """``gap`` and ``stale`` notices per service (per-minute tables only)."""
    if not spec.per_minute or frame.empty:
        return {}
    last_stored = _newest_stored(prev)
    out: dict[str, list[Notice]] = {}
    known = frame["ts"].notna().to_numpy() & (labels != MISSING_SERVICE)
    by_service = pd.Series(frame["ts"].to_numpy()[known]).groupby(labels[known], sort=False)
    for service, ts in by_service:
        found = []
        minutes = ts.dt.floor("min").drop_duplicates().sort_values()
        gap = _gap_text(minutes, last_stored.get(str(service)))
        if gap:
            found.append(Notice("gap", f"{service}: {gap}"))
        if spec.name not in KNOWN_FUTURE_TABLES:
            newest = ts.max()
            if newest < now - freshness:
                found.append(
                    Notice(
                        "stale",
                        f"{service}: newest row {newest:%Y-%m-%d %H:%M} is "
                        f"{_duration(now - newest)} old (freshness limit {_duration(freshness)})",
                    )
                )
        if found:
            out[str(service)] = found
    return out


def _gap_text(minutes: pd.Series, last_stored: pd.Timestamp | None) -> str | None:
    """'3 gap(s), 17 minutes missing, first at 2026-01-05 10:03', or None when none."""
    stamps = minutes.to_numpy()
    if last_stored is not None and last_stored < stamps[0]:
        stamps = np.concatenate([[np.datetime64(last_stored.floor("min"), "ns")], stamps])
    steps = np.diff(stamps) // np.timedelta64(1, "m")
    gaps = np.flatnonzero(steps > 1)
    if len(gaps) == 0:
        return None
    missing = int((steps[gaps] - 1).sum())
    first = pd.Timestamp(stamps[gaps[0]]) + MINUTE
    unit = "minute" if missing == 1 else "minutes"
    return f"{len(gaps)} gap(s), {missing} {unit} missing, first at {first:%Y-%m-%d %H:%M}"


def _duration(delta: pd.Timedelta) -> str:
    """'2 h', '1 d 3 h', '45 min': rounded down to the minute."""
    minutes = int(delta / MINUTE)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    parts = [
        f"{days} d" if days else "",
        f"{hours} h" if hours else "",
        f"{mins} min" if mins else "",
    ]
    return " ".join(p for p in parts if p) or "0 min"
