"""Real event-volume traces: strict CSV reading, resampling to one-minute steps, rescaling.

A trace file is a CSV with (at least) the columns ``timestamp`` and ``value``:
``timestamp`` is a naive ISO 8601 local time at the *start* of an interval, ``value``
the number of events in that interval. Extra columns are ignored. Timestamps stay
naive; a timestamp with a UTC offset is rejected rather than guessed at.

Validation (:func:`read_trace_csv`) raises :class:`TraceError` naming the file, the
1-based line number in the file and what to do, for: an unreadable or empty file, a
missing ``timestamp`` or ``value`` column, an unparsable timestamp, a non-numeric,
NaN or infinite value, a negative value, a duplicate timestamp, a row that goes back
in time, fewer than 2 rows, and spacing that is not a whole multiple of the base
interval. The base interval is the median spacing between rows; spacings that are
whole multiples of it are *missing intervals* (gaps), not errors.

Resampling rules (:func:`load_trace`), which turn a file into one count per minute:

1. Timestamps are floored to the minute first (NAB's twitter files stamp at :53 s).
   ``Trace.start`` is the floored first timestamp.
2. The interval is the base interval above. It must be a whole number of minutes, or
   divide one minute evenly (sub-minute data). Anything else (e.g. 90 s) is an error:
   resample the file to a regular interval first.
3. Sub-minute data is summed into minutes. A minute with only some of its
   sub-intervals present (file edges) is scaled up to a full minute at the observed
   rate.
4. Missing intervals are filled by linear interpolation of the per-minute rate
   between the neighbouring observed intervals.
5. One-minute files (and summed sub-minute files) are taken as they are in both
   modes; only gap minutes get the interpolated rate, which mode ``"poisson"`` then
   samples (a rate is not a count).
6. Intervals of ``k > 1`` minutes have the per-minute rate ``value / k``.

   * mode ``"even"`` spreads each interval's count evenly over its ``k`` minutes:
     no noise, the total is preserved exactly. This is the forecasting benchmark
     protocol (every model sees the same deterministic series).
   * mode ``"poisson"`` interpolates the rate linearly between interval midpoints
     so the curve has no steps at interval borders, rescales each interval's
     minutes so their expected total equals the interval's count (intervals with
     count 0 stay 0, so outages are not smeared), and samples counts from a
     Poisson distribution with ``np.random.default_rng(seed)``. This is the
     simulator's arrival protocol (DESIGN.md section 5).

Rescaling (:func:`rescale_to_peak`): a trace's volume rarely matches a scenario's
cluster, so counts are multiplied by one factor chosen so that the ``quantile``
(default p99) of the per-minute counts equals ``peak_eps * 60`` events per minute.
A quantile rather than the maximum keeps a single spike from setting the scale.
Counts stay float: the simulator works on fluid counts.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

_MINUTE_NS = 60 * 1_000_000_000
_HEADER_LINE = 1


class TraceError(ValueError):
    """A trace file or trace that cannot be used, with where and what to do."""


@dataclass(frozen=True, eq=False)
class Trace:
    """Event counts of one source on the simulator's one-minute grid.

    ``eq=False``: comparing arrays element-wise inside a generated ``__eq__`` would be
    ambiguous; compare ``counts`` explicitly. ``counts`` is stored as a read-only
    float64 copy so a frozen trace really cannot change under a caller.

    Args:
        name: Name of the source (the file stem for CSV traces).
        start: Timestamp of the first minute (naive, minute-aligned).
        counts: Events per one-minute step, shape ``(T,)``, finite and >= 0.
        source_interval_min: Interval of the data the trace was made from, minutes
            (1/60 for per-second data).
    """

    name: str
    start: pd.Timestamp
    counts: np.ndarray
    source_interval_min: float

    def __post_init__(self) -> None:
        counts = np.array(self.counts, dtype=np.float64)
        if counts.ndim != 1 or counts.size == 0:
            raise TraceError(
                f"trace {self.name!r}: counts must be a non-empty 1-D array, "
                f"got shape {counts.shape}"
            )
        if not np.all(np.isfinite(counts)) or np.any(counts < 0):
            raise TraceError(f"trace {self.name!r}: counts must be finite and >= 0")
        if not self.source_interval_min > 0:
            raise TraceError(f"trace {self.name!r}: source_interval_min must be > 0")
        start = pd.Timestamp(self.start)
        if start.tz is not None:
            raise TraceError(f"trace {self.name!r}: start must be naive, got {start}")
        if start != start.floor("min"):
            raise TraceError(f"trace {self.name!r}: start {start} is not on a whole minute")
        counts.flags.writeable = False
        object.__setattr__(self, "counts", counts)
        object.__setattr__(self, "start", start)

    def __len__(self) -> int:
        return int(self.counts.size)

    @property
    def timestamps(self) -> pd.DatetimeIndex:
        """Start of every one-minute step."""
        return pd.date_range(self.start, periods=len(self), freq="min")

    def split(self, history_fraction: float = 0.7) -> tuple[Trace, Trace]:
        """Split by time into a history part and an evaluation part.

        Args:
            history_fraction: Share of the steps that go to the history part; the
                split index is ``int(round(T * history_fraction))``.

        Returns:
            ``(history, evaluation)``; evaluation starts where history ends.
        """
        if not 0 < history_fraction < 1:
            raise ValueError(f"history_fraction must be in (0, 1), got {history_fraction}")
        cut = round(len(self) * history_fraction)
        if not 0 < cut < len(self):
            raise TraceError(
                f"trace {self.name!r}: {len(self)} steps are too few to split at "
                f"{history_fraction}; use a longer trace"
            )
        history = Trace(self.name, self.start, self.counts[:cut], self.source_interval_min)
        evaluation = Trace(
            self.name,
            self.start + pd.Timedelta(minutes=cut),
            self.counts[cut:],
            self.source_interval_min,
        )
        return history, evaluation

    def rescaled(self, factor: float) -> Trace:
        """The same trace with every count multiplied by ``factor``.

        Args:
            factor: Finite multiplier, >= 0.

        Returns:
            A new trace; this one is unchanged.
        """
        if not (math.isfinite(factor) and factor >= 0):
            raise ValueError(f"rescale factor must be finite and >= 0, got {factor}")
        return Trace(self.name, self.start, self.counts * factor, self.source_interval_min)


def _fail(path: Path, what: str, todo: str, line: int | None = None) -> TraceError:
    where = f"{path}" if line is None else f"{path}, line {line}"
    return TraceError(f"{where}: {what}; {todo}")


def read_trace_csv(path: Path) -> pd.DataFrame:
    """Read and strictly validate a ``timestamp,value`` trace file.

    Args:
        path: CSV file with columns ``timestamp`` (naive ISO 8601) and ``value``
            (events in the interval starting at ``timestamp``); other columns are
            ignored.

    Returns:
        DataFrame with columns ``timestamp`` (datetime64, naive) and ``value``
        (float64), in file order (which is validated to be increasing).

    Raises:
        TraceError: For any of the problems listed in the module docstring.
    """
    path = Path(path)
    # The csv module (not pandas) so every record keeps its real line number in the
    # file, blank lines and quoted fields included.
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            records = [(reader.line_num, row) for row in reader if row]
    except FileNotFoundError as exc:
        raise _fail(path, "file not found", "check the path") from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise _fail(path, f"cannot read the file ({exc})", "pass a UTF-8 CSV file") from exc
    if not records:
        raise _fail(path, "the file is empty", "write a header 'timestamp,value' and rows")

    header_line, header = records[0]
    names = [name.strip() for name in header]
    for required in ("timestamp", "value"):
        if required not in names:
            near = [n for n in names if n.lower() == required]
            hint = f" (found {near[0]!r}; names are case-sensitive)" if near else ""
            raise _fail(
                path,
                f"missing column {required!r}{hint}; header is {names}",
                "the header must name the columns 'timestamp' and 'value'",
                header_line,
            )
    ts_col, value_col = names.index("timestamp"), names.index("value")

    body = records[1:]
    for line, row in body:
        if len(row) != len(names):
            raise _fail(
                path,
                f"row has {len(row)} fields but the header has {len(names)}",
                "fix the row's commas",
                line,
            )
    if len(body) < 2:
        raise _fail(
            path,
            f"{len(body)} data row(s)",
            "a trace needs at least 2 rows to have an interval",
        )
    lines = np.array([line for line, _ in body], dtype=np.int64)
    raw_ts = pd.Series([row[ts_col].strip() for _, row in body], dtype=object)
    raw_values = pd.Series([row[value_col].strip() for _, row in body], dtype=object)

    timestamps = _parse_timestamps(path, raw_ts, lines)
    values = _parse_values(path, raw_values, lines)
    _check_order_and_spacing(path, timestamps, lines)
    return pd.DataFrame({"timestamp": timestamps, "value": values})


def _parse_timestamps(path: Path, raw: pd.Series, lines: np.ndarray) -> pd.Series:
    try:
        parsed = pd.to_datetime(raw, format="ISO8601", errors="coerce")
    except (ValueError, TypeError) as exc:
        # pandas refuses outright e.g. a mix of UTC offsets.
        raise _fail(
            path,
            f"timestamps cannot be parsed ({exc})",
            "write naive ISO 8601 timestamps like 2014-07-01 00:30:00",
        ) from exc
    if isinstance(parsed.dtype, pd.DatetimeTZDtype):
        raise _fail(
            path,
            "timestamps carry a UTC offset",
            "write naive local timestamps (drop the offset) like 2014-07-01 00:30:00",
            int(lines[0]),
        )
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if bad.size:
        i = int(bad[0])
        raise _fail(
            path,
            f"cannot parse timestamp {raw.iloc[i]!r}",
            "write naive ISO 8601 timestamps like 2014-07-01 00:30:00",
            int(lines[i]),
        )
    return parsed.astype("datetime64[ns]")


def _parse_values(path: Path, raw: pd.Series, lines: np.ndarray) -> np.ndarray:
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        i = int(bad[0])
        raise _fail(
            path,
            f"value {raw.iloc[i]!r} is not a finite number",
            "write the event count as a number (no NaN, inf or text)",
            int(lines[i]),
        )
    negative = np.flatnonzero(values < 0)
    if negative.size:
        i = int(negative[0])
        raise _fail(
            path,
            f"value {raw.iloc[i]!r} is negative",
            "event counts must be >= 0",
            int(lines[i]),
        )
    return values


def _check_order_and_spacing(path: Path, timestamps: pd.Series, lines: np.ndarray) -> None:
    ns = timestamps.to_numpy().astype(np.int64)
    duplicated = np.flatnonzero(timestamps.duplicated().to_numpy())
    backwards = np.flatnonzero(np.diff(ns) < 0) + 1
    if duplicated.size and (not backwards.size or duplicated[0] <= backwards[0]):
        i = int(duplicated[0])
        raise _fail(
            path,
            f"duplicate timestamp {timestamps.iloc[i]}",
            "keep one row per interval (sum or drop the duplicate)",
            int(lines[i]),
        )
    if backwards.size:
        i = int(backwards[0])
        raise _fail(
            path,
            f"timestamp {timestamps.iloc[i]} goes back in time "
            f"(previous row is {timestamps.iloc[i - 1]})",
            "sort the rows by timestamp",
            int(lines[i]),
        )
    diffs = np.diff(ns)
    base = _base_interval_ns(diffs)
    irregular = np.flatnonzero(diffs % base != 0)
    if irregular.size:
        i = int(irregular[0]) + 1
        raise _fail(
            path,
            f"spacing {pd.Timedelta(int(diffs[i - 1]))} from the previous row is not a "
            f"whole multiple of the base interval {pd.Timedelta(base)} (the median spacing)",
            "fix the timestamp or resample the file to a regular interval",
            int(lines[i]),
        )


def _base_interval_ns(diffs: np.ndarray) -> int:
    # The lower median: an observed spacing, never the mean of two (with as many 5-min
    # as 10-min steps a 7.5-min base would make every row irregular), and gaps only
    # lengthen spacings, so ties go to the shorter one.
    return int(np.sort(diffs)[(diffs.size - 1) // 2])


def _fill_gaps(rate: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``rate`` over the unobserved positions."""
    if observed.all():
        return rate
    idx = np.arange(rate.size)
    filled = rate.copy()
    filled[~observed] = np.interp(idx[~observed], idx[observed], rate[observed])
    return filled


def load_trace(
    path: Path,
    *,
    mode: Literal["poisson", "even"] = "poisson",
    seed: int = 0,
) -> Trace:
    """Read a trace file and resample it to one count per minute.

    Args:
        path: CSV trace file (see :func:`read_trace_csv`).
        mode: ``"poisson"`` (smooth rate, Poisson-sampled counts; the simulator's
            arrivals) or ``"even"`` (each interval spread evenly; the forecasting
            benchmark). The rules are in the module docstring.
        seed: Seed of ``np.random.default_rng`` for mode ``"poisson"``.

    Returns:
        The trace, named after the file stem.

    Raises:
        TraceError: If the file is invalid or its interval cannot be put on minutes.
    """
    if mode not in ("poisson", "even"):
        raise ValueError(f"mode must be 'poisson' or 'even', got {mode!r}")
    path = Path(path)
    frame = read_trace_csv(path)
    ns = frame["timestamp"].to_numpy().astype(np.int64)
    values = frame["value"].to_numpy(dtype=np.float64)
    base = _base_interval_ns(np.diff(ns))
    floored = (ns // _MINUTE_NS) * _MINUTE_NS
    start = pd.Timestamp(int(floored[0]))
    rng = np.random.default_rng(seed)

    if base < _MINUTE_NS:
        if _MINUTE_NS % base:
            raise _fail(
                path,
                f"interval {pd.Timedelta(base)} does not divide one minute",
                "resample the file to an interval that divides 60 s or is whole minutes",
            )
        minute = (floored - floored[0]) // _MINUTE_NS
        n_minutes = int(minute[-1]) + 1
        sums = np.bincount(minute, weights=values, minlength=n_minutes)
        present = np.bincount(minute, minlength=n_minutes)
        observed = present > 0
        per_minute = _MINUTE_NS // base
        rate = np.zeros(n_minutes)
        rate[observed] = sums[observed] * per_minute / present[observed]
        counts = _one_minute_counts(rate, observed, mode, rng)
        return Trace(path.stem, start, counts, base / _MINUTE_NS)

    if base % _MINUTE_NS:
        raise _fail(
            path,
            f"interval {pd.Timedelta(base)} is not a whole number of minutes",
            "resample the file to whole minutes (or an interval that divides 60 s)",
        )
    k = base // _MINUTE_NS
    slot = (ns - ns[0]) // base
    n_slots = int(slot[-1]) + 1
    observed = np.zeros(n_slots, dtype=bool)
    observed[slot] = True
    slot_rate = np.zeros(n_slots)
    slot_rate[slot] = values / k
    slot_rate = _fill_gaps(slot_rate, observed)

    if k == 1:
        counts = _one_minute_counts(slot_rate, observed, mode, rng)
    elif mode == "even":
        counts = np.repeat(slot_rate, k)
    else:
        counts = rng.poisson(_smooth_minute_rate(slot_rate, k)).astype(np.float64)
    return Trace(path.stem, start, counts, float(k))


def _one_minute_counts(
    rate: np.ndarray,
    observed: np.ndarray,
    mode: str,
    rng: np.random.Generator,
) -> np.ndarray:
    filled = _fill_gaps(rate, observed)
    if mode == "poisson" and not observed.all():
        filled = filled.copy()
        filled[~observed] = rng.poisson(filled[~observed])
    return filled


def _smooth_minute_rate(slot_rate: np.ndarray, k: int) -> np.ndarray:
    """Per-minute rate interpolated between slot midpoints, each slot's total kept."""
    n_slots = slot_rate.size
    midpoints = np.arange(n_slots) * k + k / 2.0
    minute_centres = np.arange(n_slots * k) + 0.5
    rate = np.interp(minute_centres, midpoints, slot_rate).reshape(n_slots, k)
    slot_total = slot_rate * k
    got = rate.sum(axis=1)
    # got > 0 wherever slot_rate > 0: each minute of a slot has a positive weight on
    # the slot's own midpoint value. Zero slots stay zero so outages are kept.
    scale = np.divide(slot_total, got, out=np.zeros(n_slots), where=got > 0)
    return (rate * scale[:, None]).ravel()


def rescale_to_peak(trace: Trace, peak_eps: float, quantile: float = 0.99) -> Trace:
    """Multiply a trace so its ``quantile`` of per-minute counts is ``peak_eps * 60``.

    Args:
        trace: Trace to rescale.
        peak_eps: Target events per second at the quantile.
        quantile: Quantile of the per-minute counts that is mapped to the target;
            below 1 so a single spike does not set the scale.

    Returns:
        The rescaled trace (float counts).

    Raises:
        TraceError: If the trace's quantile is 0 (nothing to scale).
    """
    if not (math.isfinite(peak_eps) and peak_eps > 0):
        raise ValueError(f"peak_eps must be finite and > 0, got {peak_eps}")
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    current = float(np.quantile(trace.counts, quantile))
    if current <= 0:
        raise TraceError(
            f"trace {trace.name!r}: the {quantile} quantile of per-minute counts is 0, "
            "so no factor reaches the peak; use a higher quantile or another trace"
        )
    return trace.rescaled(peak_eps * 60.0 / current)


def list_traces(directory: Path) -> list[Path]:
    """The ``*.csv`` files of a directory, sorted by name.

    Args:
        directory: Folder holding trace files.

    Returns:
        Sorted paths (possibly empty).

    Raises:
        TraceError: If ``directory`` does not exist or is not a directory.
    """
    directory = Path(directory)
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise TraceError(f"{directory}: trace directory {what}; check the traces path setting")
    return sorted(p for p in directory.glob("*.csv") if p.is_file())
