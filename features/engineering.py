"""Feature engineering: one code path computes the features for training and for serving.

Training materialises :func:`compute_features` over months of history; serving calls the
same function on the last :func:`lookback_needed` of history with ``since`` set to the
current minute. Because both go through the same code, there is no training/serving skew.

Timestamps
    A metrics row stamped ``ts`` (naive UTC minute start) describes the minute
    ``[ts, ts + 1 min)`` and is complete at ``ts + AVAILABLE_AFTER``. Every output row
    carries ``event_timestamp = ts + AVAILABLE_AFTER``: the moment its data existed.

Point-in-time rule
    A feature at ``event_timestamp`` E uses only metrics rows with ``ts <= E - 1 min``.
    Calendar rows (known in advance) and service profiles (``ts`` = valid-from) may be
    used for the minute being described, ``ts``. The unit tests prove the rule by
    recomputing on data truncated at several cut times and comparing bit for bit.

Gaps
    Each service gets a complete minute grid from its first to its last observed
    minute (a minute is observed when ``event_metrics`` or ``system_metrics`` has a row
    for it). Windows and lags run on that grid, so "1 h" always means 60 wall-clock
    minutes; a missing minute is NaN inside windows, a lag that lands on it is NaN, and
    no output row is emitted for it. Rolling statistics use ``min_periods=1``: they are
    over the observed minutes of the window (the standard deviation needs two).

Missing values
    NaN stays NaN (never silently 0). Float features are float32 (Feast ``Float32``);
    int64 features are pandas nullable ``Int64`` (null where the input was missing);
    bool features are plain ``bool`` with the documented rule for "unknown".

Features of one minute (``MINUTE_FEATURES``, in order):

* ``events_in`` and, over the events of the last 5 min / 15 min / 1 h / 1 day
  (current minute included), ``events_{mean,std,max}_{5m,15m,1h,1d}``.
* ``events_ewm_{5,15,60,1440}``: exponentially weighted means with those spans in
  minutes (pandas ``adjust=True``; a missing minute still ages the weights).
* ``events_lag_{1m,5m,15m,1h,1d,1w}``: ``events_in`` of the minute ``ts - lag``.
* ``events_slope_1h``: least-squares slope of events_in over the observed minutes of
  the last hour, events/min per minute (NaN with fewer than 2 points).
* ``events_ratio_1h``: mean of the last hour / mean of the hour before it (NaN when
  that mean is 0 or unknown).
* calendar features of the minute ``ts`` (:data:`CALENDAR_FEATURES`, see
  :func:`calendar_features`).
* ``events_seasonal_median``: median of events_in at the same minute on the previous 7
  days; ``events_robust_z`` = (events_in - median) / scale with
  ``scale = max(1.4826 * MAD, sqrt(|median|), MAD_FLOOR_REL * |median|, MAD_FLOOR_ABS)``
  (floors: the Poisson noise of counts, 1 % of the level, 1 event/min); both NaN when
  fewer than ``SEASONAL_MIN_DAYS`` (3) of those minutes exist. ``spike_flag`` =
  ``|z| > SPIKE_Z`` (4), False when z is NaN.
* ``level_shift_ratio`` = mean of the last 15 min / mean of the hour before those 15
  min (NaN when that mean is 0 or unknown); ``level_shift_flag`` when the ratio is
  above ``LEVEL_SHIFT_FACTOR`` (1.5) or below its inverse, False when NaN.
* system state: ``utilization``, ``jobs_running``, ``jobs_starting``,
  ``queue_length``, ``queue_wait_p95_s``, ``events_dropped``, ``error_rate`` as
  reported for the minute;
  ``drain_time_s`` = queue_length / (jobs_running * job_capacity_eps): 0 when the
  queue is empty (whatever the capacity), ``DRAIN_CAP_S`` (1 day) when there is a queue
  and no serving job, and never above that cap;
  ``headroom`` = 1 - (events_in / 60) / (jobs_running * job_capacity_eps): 0 when there
  are neither jobs nor events, never below ``HEADROOM_MIN`` (-100, also the value with
  events and no jobs);
  ``job_failure_rate_1h`` = job failures of the last hour / job-hours of
  ``jobs_running`` in that hour (NaN when no job ran).
* business context: ``criticality``, ``sla_latency_s``, ``sla_target`` from the
  profile in force at ``ts`` (latest profile row with profile ts <= ts);
  ``budget_used_today`` = cost so far in the UTC day of ``ts`` (minute ``ts``
  included): sum over the day's observed minutes of ``(jobs_running + jobs_starting)
  * cost_per_job_hour / 60``, divided by ``daily_budget``. A null ``jobs_starting``
  counts as 0; a minute without ``jobs_running`` adds nothing and its own value is NaN;
  NaN without a profile or with a daily budget of 0 or null.

Sequences (``SEQUENCE_FEATURES``, float32 numpy arrays, oldest first, fixed length):

* ``recent_events_120m``: events_in of the 120 minutes ``ts - 119 min .. ts``; the last
  element is the newest available minute. Missing minutes and minutes before the
  service's history are NaN (so short histories are padded with NaN at the start).
* ``hourly_events_7d``: 168 sums of events_in per UTC clock hour. The last element is
  the *partial* current hour: the sum over ``[floor_hour(ts), ts]``; the 167 before it
  are the complete clock hours before. A sum is over the observed minutes of the hour
  and is NaN when the hour has none (so a partly missing hour reads low).

Profiles (``PROFILE_FEATURES``): the ``service_profiles`` contract columns, one row per
profile row, ``event_timestamp`` = the profile's ``ts`` (valid-from). ``criticality``,
``sla_latency_s`` and ``sla_target`` are also minute features (as-of the minute), so a
Feast feature service that joins both views needs view-prefixed names
(``full_feature_names=True``) or only one of them.

Filters: ``since`` keeps minute rows with ``event_timestamp >= since`` and the profile
rows from the one in force at ``since`` on (an as-of join needs it);
``sequences_since`` (None = same as ``since``) does the same for the sequence rows.
Speed: 10 services x 30 days (432,000 rows) take about 1 s (``python -m bench.features``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from features.contracts import to_utc_naive

AVAILABLE_AFTER = pd.Timedelta(minutes=1)
"""A minute's metrics row (stamped at the minute start ts) is complete at ts + 1 min."""

_NS_PER_MIN = 60_000_000_000
_MIN_PER_HOUR = 60
_MIN_PER_DAY = 1440
_MIN_PER_WEEK = 7 * _MIN_PER_DAY
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)

ROLLING_WINDOWS: tuple[tuple[str, int], ...] = (("5m", 5), ("15m", 15), ("1h", 60), ("1d", 1440))
"""(suffix, minutes) of the rolling mean/std/max windows."""
EWM_SPANS: tuple[int, ...] = (5, 15, 60, 1440)
"""Spans, in minutes, of the exponentially weighted means."""
LAGS: tuple[tuple[str, int], ...] = (
    ("1m", 1),
    ("5m", 5),
    ("15m", 15),
    ("1h", 60),
    ("1d", _MIN_PER_DAY),
    ("1w", _MIN_PER_WEEK),
)
"""(suffix, minutes) of the lagged events_in values."""
SLOPE_MINUTES = 60
"""Window of the least-squares trend slope."""
SEASONAL_DAYS = 7
"""Previous days whose same minute forms the seasonal profile of the robust z-score."""
SEASONAL_MIN_DAYS = 3
"""Fewest of those days that must exist for a z-score (else NaN)."""
MAD_SCALE = 1.4826
"""Makes the MAD a consistent estimate of the standard deviation for normal noise."""
MAD_FLOOR_ABS = 1.0
"""Smallest scale of the z-score, events/min: a flat history (MAD 0) must not divide by 0."""
MAD_FLOOR_REL = 0.01
"""Smallest scale relative to the seasonal median (1 % of the level): real traffic has
multiplicative noise at least that large."""
SPIKE_Z = 4.0
"""|robust z| above this sets spike_flag."""
LEVEL_SHIFT_MINUTES = 15
"""Recent window of the level-shift test, compared with the hour before it."""
LEVEL_SHIFT_FACTOR = 1.5
"""level_shift_flag when the recent mean is this many times the previous hour's, or less
than its inverse: well outside minute-to-minute noise, well inside a flash crowd."""
DRAIN_CAP_S = 86_400.0
"""Largest backlog drain time, seconds (one day); also its value with a queue and no jobs."""
HEADROOM_MIN = -100.0
"""Smallest headroom (demand 101 times capacity); also its value with events and no jobs."""
RECENT_MINUTES = 120
HOURLY_HOURS = 168
DAILY_HARMONICS = 3
WEEKLY_HARMONICS = 2
YEARLY_HARMONICS = 1
LOOKBACK_MARGIN = pd.Timedelta(days=1)
"""History beyond the week the longest features look at: the EWM of span 1440 keeps a
weight of about exp(-16) = 1e-7 for data older than 8 days."""

PANDAS_DTYPES: dict[str, str] = {"float32": "float32", "int64": "Int64", "bool": "bool"}
"""pandas dtype of each feature kind in the output frames."""


def _fourier(prefix: str, harmonics: int) -> tuple[tuple[str, str], ...]:
    return tuple(
        (f"{prefix}_{fn}_{k}", "float32") for k in range(1, harmonics + 1) for fn in ("sin", "cos")
    )


CALENDAR_FEATURES: tuple[tuple[str, str], ...] = (
    ("minute_of_day", "int64"),
    ("day_of_week", "int64"),
    ("month", "int64"),
    *_fourier("daily", DAILY_HARMONICS),
    *_fourier("weekly", WEEKLY_HARMONICS),
    *_fourier("yearly", YEARLY_HARMONICS),
    ("is_holiday", "bool"),
    ("in_business_event", "bool"),
    ("expected_traffic_multiplier", "float32"),
)
"""Columns of :func:`calendar_features` after ``ts`` (also part of MINUTE_FEATURES)."""

_EVENT_FEATURES: tuple[tuple[str, str], ...] = (
    ("events_in", "float32"),
    *(
        (f"events_{stat}_{suffix}", "float32")
        for suffix, _ in ROLLING_WINDOWS
        for stat in ("mean", "std", "max")
    ),
    *((f"events_ewm_{span}", "float32") for span in EWM_SPANS),
    *((f"events_lag_{suffix}", "float32") for suffix, _ in LAGS),
    ("events_slope_1h", "float32"),
    ("events_ratio_1h", "float32"),
)
_ANOMALY_FEATURES: tuple[tuple[str, str], ...] = (
    ("events_seasonal_median", "float32"),
    ("events_robust_z", "float32"),
    ("spike_flag", "bool"),
    ("level_shift_ratio", "float32"),
    ("level_shift_flag", "bool"),
)
_SYSTEM_FEATURES: tuple[tuple[str, str], ...] = (
    ("utilization", "float32"),
    ("jobs_running", "int64"),
    ("jobs_starting", "int64"),
    ("queue_length", "float32"),
    ("queue_wait_p95_s", "float32"),
    ("events_dropped", "float32"),
    ("error_rate", "float32"),
    ("drain_time_s", "float32"),
    ("headroom", "float32"),
    ("job_failure_rate_1h", "float32"),
)
_BUSINESS_FEATURES: tuple[tuple[str, str], ...] = (
    ("criticality", "int64"),
    ("sla_latency_s", "float32"),
    ("sla_target", "float32"),
    ("budget_used_today", "float32"),
)

MINUTE_FEATURES: tuple[tuple[str, str], ...] = (
    *_EVENT_FEATURES,
    *CALENDAR_FEATURES,
    *_ANOMALY_FEATURES,
    *_SYSTEM_FEATURES,
    *_BUSINESS_FEATURES,
)
"""(name, kind) of every column of :attr:`FeatureFrames.minute` after the keys, in order."""

SEQUENCE_FEATURES: tuple[tuple[str, int], ...] = (
    ("recent_events_120m", RECENT_MINUTES),
    ("hourly_events_7d", HOURLY_HOURS),
)
"""(name, length) of the float32 array columns of :attr:`FeatureFrames.sequences`."""

PROFILE_FEATURES: tuple[tuple[str, str], ...] = (
    ("criticality", "int64"),
    ("sla_latency_s", "float32"),
    ("sla_target", "float32"),
    ("cost_per_job_hour", "float32"),
    ("daily_budget", "float32"),
    ("min_jobs", "int64"),
    ("max_jobs", "int64"),
    ("max_step", "int64"),
    ("job_capacity_eps", "float32"),
    ("job_startup_s", "float32"),
)
"""(name, kind) of every column of :attr:`FeatureFrames.profiles` after the keys."""

KEY_COLUMNS = ("service_id", "event_timestamp")

_EVENT_INPUTS = ("events_in", "queue_length", "queue_wait_p95_s", "events_dropped", "error_rate")
_SYSTEM_INPUTS = ("jobs_running", "jobs_starting", "utilization", "job_failures")
_PROFILE_INPUTS = tuple(name for name, _ in PROFILE_FEATURES)

Array = np.ndarray


@dataclass(frozen=True)
class FeatureFrames:
    """Engineered features, each frame keyed by (service_id, event_timestamp).

    Attributes:
        minute: One row per observed (service, minute): the scalar MINUTE_FEATURES.
        sequences: One row per observed (service, minute) from ``sequences_since`` on:
            the SEQUENCE_FEATURES as float32 numpy arrays.
        profiles: One row per service profile row: the PROFILE_FEATURES.
    """

    minute: pd.DataFrame
    sequences: pd.DataFrame
    profiles: pd.DataFrame


def lookback_needed() -> pd.Timedelta:
    """History a caller must pass before ``since`` so that features at ``since`` are complete.

    The longest features (weekly lag, 7-day seasonal profile, 168-hour sequence) reach one
    week back; one more day lets the 1-day windows fill and the span-1440 EWM forget its
    start (remaining weight about 1e-7).

    Returns:
        8 days.
    """
    return pd.Timedelta(minutes=_MIN_PER_WEEK) + AVAILABLE_AFTER + LOOKBACK_MARGIN


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class _Rows:
    """One service's rows of one table: sorted unique times and float64 columns."""

    times: Array  # int64: minutes since the epoch (metrics), nanoseconds (profiles)
    values: dict[str, Array]


def _as_float(values: pd.Series) -> Array:
    if pd.api.types.is_bool_dtype(values.dtype) or pd.api.types.is_numeric_dtype(values.dtype):
        return np.asarray(values.to_numpy(dtype="float64", na_value=np.nan))
    numeric = pd.to_numeric(values, errors="coerce")
    return np.asarray(numeric.to_numpy(dtype="float64", na_value=np.nan))


def _timestamps_ns(values: pd.Series, table: str) -> Array:
    ns = to_utc_naive(values).to_numpy(dtype="datetime64[ns]").view(np.int64)
    if (ns == np.iinfo(np.int64).min).any():
        raise ValueError(f"{table}: ts has null values; validate the table before features")
    return np.asarray(ns)


def _check_columns(frame: pd.DataFrame, columns: tuple[str, ...], table: str) -> None:
    missing = [c for c in ("service_id", "ts", *columns) if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{table}: missing column(s) {', '.join(missing)}; conform the frame to its "
            "contract first (features.contracts.conform)"
        )


def _split(
    frame: pd.DataFrame, columns: tuple[str, ...], table: str, *, minute_aligned: bool
) -> dict[str, _Rows]:
    """Rows of ``frame`` per service, sorted by time; a repeated (service, ts) keeps the last."""
    _check_columns(frame, columns, table)
    if frame.empty:
        return {}
    ns = _timestamps_ns(frame["ts"], table)
    if minute_aligned:
        if (ns % _NS_PER_MIN != 0).any():
            raise ValueError(f"{table}: ts must be minute starts (naive UTC)")
        keys = ns // _NS_PER_MIN
    else:
        keys = ns
    codes, uniques = pd.factorize(frame["service_id"].astype(str), sort=True)
    # lexsort is stable, so among equal keys the last input row stays last.
    order = np.lexsort((keys, codes))
    codes, keys = codes[order], keys[order]
    last = np.ones(len(keys), dtype=bool)
    last[:-1] = (codes[1:] != codes[:-1]) | (keys[1:] != keys[:-1])
    keep = order[last]
    codes, keys = codes[last], keys[last]
    values = {c: _as_float(frame[c])[keep] for c in columns}
    bounds = np.searchsorted(codes, np.arange(len(uniques) + 1))
    out: dict[str, _Rows] = {}
    for i, sid in enumerate(uniques):
        lo, hi = bounds[i], bounds[i + 1]
        if hi > lo:
            out[str(sid)] = _Rows(keys[lo:hi], {c: v[lo:hi] for c, v in values.items()})
    return out


@dataclass(frozen=True)
class _Calendar:
    """Calendar rows per service id ('*' included): sorted minute starts (ns) and values."""

    rows: dict[str, tuple[Array, Array, Array, Array]]

    @classmethod
    def from_frame(cls, calendar: pd.DataFrame, only: set[str] | None = None) -> _Calendar:
        _check_columns(calendar, ("is_holiday",), "business_calendar")
        frame = calendar
        if only is not None:
            frame = frame[frame["service_id"].astype(str).isin(only)]
        if frame.empty:
            return cls({})
        n = len(frame)
        ns = _timestamps_ns(frame["ts"], "business_calendar")
        holiday = frame["is_holiday"].astype("boolean").to_numpy(dtype=bool, na_value=False)
        if "business_event" in frame.columns:
            names = frame["business_event"].fillna("").astype(str).str.strip()
            event = (names != "").to_numpy(dtype=bool)
        else:
            event = np.zeros(n, dtype=bool)
        if "expected_traffic_multiplier" in frame.columns:
            mult = _as_float(frame["expected_traffic_multiplier"])
            # Unknown multiplier reads as "normal traffic", like a missing calendar minute.
            mult = np.where(np.isnan(mult), 1.0, mult)
        else:
            mult = np.ones(n)
        codes, uniques = pd.factorize(frame["service_id"].astype(str), sort=True)
        order = np.lexsort((ns, codes))
        codes, ns = codes[order], ns[order]
        last = np.ones(n, dtype=bool)
        last[:-1] = (codes[1:] != codes[:-1]) | (ns[1:] != ns[:-1])
        keep = order[last]
        codes, ns = codes[last], ns[last]
        holiday, event, mult = holiday[keep], event[keep], mult[keep]
        bounds = np.searchsorted(codes, np.arange(len(uniques) + 1))
        rows = {
            str(sid): (
                ns[bounds[i] : bounds[i + 1]],
                holiday[bounds[i] : bounds[i + 1]],
                event[bounds[i] : bounds[i + 1]],
                mult[bounds[i] : bounds[i + 1]],
            )
            for i, sid in enumerate(uniques)
        }
        return cls(rows)

    def lookup(self, service_id: str, ns: Array) -> tuple[Array, Array, Array]:
        """is_holiday, in_business_event, multiplier at minute starts ``ns``."""
        holiday = np.zeros(len(ns), dtype=bool)
        event = np.zeros(len(ns), dtype=bool)
        mult = np.ones(len(ns))
        # '*' first, then the service's own rows overwrite the minutes they cover.
        for key in ("*", service_id):
            if key not in self.rows:
                continue
            cal_ns, cal_holiday, cal_event, cal_mult = self.rows[key]
            pos = np.searchsorted(cal_ns, ns)
            pos_c = np.minimum(pos, len(cal_ns) - 1)
            hit = (pos < len(cal_ns)) & (cal_ns[pos_c] == ns)
            src = pos_c[hit]
            holiday[hit] = cal_holiday[src]
            event[hit] = cal_event[src]
            mult[hit] = cal_mult[src]
        return holiday, event, mult


# --------------------------------------------------------------------------- calendar


def _calendar_columns(ns: Array, calendar: _Calendar, service_id: str) -> dict[str, Array]:
    """Calendar feature arrays (float64 / int64 / bool) for minute starts ``ns``."""
    minutes = ns // _NS_PER_MIN
    minute_of_day = minutes % _MIN_PER_DAY
    days = minutes // _MIN_PER_DAY
    day_of_week = (days + _EPOCH_WEEKDAY) % 7
    stamps = ns.astype("datetime64[ns]")
    months = stamps.astype("datetime64[M]").astype(np.int64)
    year_start = stamps.astype("datetime64[Y]")
    year_start_days = year_start.astype("datetime64[D]").astype(np.int64)
    next_year_days = (year_start + np.timedelta64(1, "Y")).astype("datetime64[D]").astype(np.int64)
    out: dict[str, Array] = {
        "minute_of_day": minute_of_day,
        "day_of_week": day_of_week,
        "month": months % 12 + 1,
    }
    phases = {
        "daily": (minute_of_day / _MIN_PER_DAY, DAILY_HARMONICS),
        "weekly": ((day_of_week * _MIN_PER_DAY + minute_of_day) / _MIN_PER_WEEK, WEEKLY_HARMONICS),
        # Day of year over the length of that year (365 or 366 days).
        "yearly": (
            (days - year_start_days + minute_of_day / _MIN_PER_DAY)
            / (next_year_days - year_start_days),
            YEARLY_HARMONICS,
        ),
    }
    for prefix, (phase, harmonics) in phases.items():
        for k in range(1, harmonics + 1):
            angle = 2.0 * np.pi * k * phase
            out[f"{prefix}_sin_{k}"] = np.sin(angle)
            out[f"{prefix}_cos_{k}"] = np.cos(angle)
    holiday, event, mult = calendar.lookup(service_id, minutes * _NS_PER_MIN)
    out["is_holiday"] = holiday
    out["in_business_event"] = event
    out["expected_traffic_multiplier"] = mult
    return out


def calendar_features(
    minutes: pd.DatetimeIndex | pd.Series, calendar: pd.DataFrame, service_id: str
) -> pd.DataFrame:
    """Time encodings and holiday/business-event features of arbitrary (also future) minutes.

    The forecaster uses this for its known-future covariates; :func:`compute_features`
    uses the same code for the minute each row describes.

    Rules: a ``service_id`` row of the calendar overrides the ``'*'`` row of the same ts;
    a minute without a calendar row is not a holiday, has no business event and a traffic
    multiplier of 1.0 (as does a row whose multiplier is null). Instants inside a minute
    are looked up at their minute start; time-zone-aware input is converted to UTC.

    Args:
        minutes: Minute starts (naive UTC, or aware).
        calendar: ``business_calendar`` rows (contract columns; ``'*'`` = every service).
        service_id: Service whose calendar rows override the ``'*'`` rows.

    Returns:
        One row per input minute, in input order (RangeIndex): ``ts`` (the minute start)
        then the :data:`CALENDAR_FEATURES` columns with their declared dtypes.
    """
    series = pd.Series(minutes) if isinstance(minutes, pd.DatetimeIndex) else minutes
    ns = _timestamps_ns(series.reset_index(drop=True), "minutes")
    ns = (ns // _NS_PER_MIN) * _NS_PER_MIN
    cal = _Calendar.from_frame(calendar, only={"*", service_id})
    columns = _calendar_columns(ns, cal, service_id)
    frame = pd.DataFrame({"ts": ns.astype("datetime64[ns]")})
    for name, kind in CALENDAR_FEATURES:
        frame[name] = _typed(columns[name], kind)
    return frame


# --------------------------------------------------------------------------- helpers


def _typed(values: Array, kind: str) -> pd.api.extensions.ExtensionArray | Array:
    """Cast a float64/int64/bool feature array to the output dtype of ``kind``."""
    if kind == "float32":
        return np.asarray(values, dtype=np.float32)
    if kind == "bool":
        return np.asarray(values, dtype=bool)
    arr = np.asarray(values)
    if arr.dtype.kind == "f":
        mask = np.isnan(arr)
        ints = np.rint(np.where(mask, 0.0, arr)).astype(np.int64)
    else:
        mask = np.zeros(len(arr), dtype=bool)
        ints = arr.astype(np.int64)
    return pd.arrays.IntegerArray(ints, mask)


def _shift(values: Array, lag: int) -> Array:
    """values[i - lag] on the grid, NaN before its start."""
    out = np.full(len(values), np.nan)
    if lag < len(values):
        out[lag:] = values[: len(values) - lag]
    return out


def _ratio(num: Array, den: Array) -> Array:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _window_sum(cumsum: Array, window: int) -> Array:
    """Sum over the last ``window`` grid minutes from a cumsum with a leading 0."""
    n = len(cumsum) - 1
    idx = np.arange(1, n + 1)
    return np.asarray(cumsum[idx] - cumsum[np.maximum(idx - window, 0)])


def _cumsum0(values: Array) -> Array:
    return np.concatenate([np.zeros(1, dtype=values.dtype), np.cumsum(values)])


def _slope(x: Array) -> Array:
    """Least-squares slope of x over the observed minutes of the last SLOPE_MINUTES."""
    n = len(x)
    valid = ~np.isnan(x)
    x0 = np.where(valid, x, 0.0)
    j = np.arange(n, dtype=np.int64)
    w = valid.astype(np.int64)
    # Position sums are integers: exact, so only the event sums carry rounding.
    s0 = _window_sum(_cumsum0(w), SLOPE_MINUTES).astype(np.float64)
    sj = _window_sum(_cumsum0(w * j), SLOPE_MINUTES).astype(np.float64)
    jj_dtype = np.int64 if n < 2_000_000 else np.float64  # int64 sum of j^2 overflows later
    sjj = _window_sum(_cumsum0((w * j * j).astype(jj_dtype)), SLOPE_MINUTES).astype(np.float64)
    sx = _window_sum(_cumsum0(x0), SLOPE_MINUTES)
    sjx = _window_sum(_cumsum0(j * x0), SLOPE_MINUTES)
    # Positions relative to the window end keep the terms small.
    i = j.astype(np.float64)
    su = sj - i * s0
    suu = sjj - 2.0 * i * sj + i * i * s0
    sux = sjx - i * sx
    den = s0 * suu - su * su
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((s0 >= 2) & (den > 0), (s0 * sux - su * sx) / den, np.nan)


def _nan_median_rows(values: Array) -> tuple[Array, Array]:
    """Row medians ignoring NaN, and the count of non-NaN values per row."""
    ordered = np.sort(values, axis=1)  # NaN sorts last
    count = (~np.isnan(values)).sum(axis=1)
    lo = np.clip((count - 1) // 2, 0, None)
    hi = np.clip(count // 2, 0, values.shape[1] - 1)
    rows = np.arange(len(values))
    med = 0.5 * (ordered[rows, lo] + ordered[rows, hi])
    return np.where(count > 0, med, np.nan), count


def _robust_z(x: Array, out: Array) -> tuple[Array, Array]:
    """Seasonal median and robust z-score of x at grid positions ``out``."""
    back = out[:, None] - _MIN_PER_DAY * np.arange(1, SEASONAL_DAYS + 1)[None, :]
    past = np.where(back >= 0, x[np.maximum(back, 0)], np.nan)
    med, count = _nan_median_rows(past)
    mad, _ = _nan_median_rows(np.abs(past - med[:, None]))
    # The MAD of 7 values is itself noisy and often far below the true spread; event
    # counts are at least Poisson-noisy (sd = sqrt(level)), so the scale never goes below
    # that, nor below 1 % of the level or 1 event/min.
    level = np.abs(med)
    floor = np.maximum(np.maximum(np.sqrt(level), MAD_FLOOR_REL * level), MAD_FLOOR_ABS)
    scale = np.maximum(MAD_SCALE * mad, floor)
    enough = count >= SEASONAL_MIN_DAYS
    med = np.where(enough, med, np.nan)
    z = np.where(enough, (x[out] - med) / scale, np.nan)
    return med, z


def _asof(profile: _Rows | None, ns: Array, column: str) -> Array:
    """The profile value in force at each instant (latest profile ts <= instant)."""
    if profile is None:
        return np.full(len(ns), np.nan)
    pos = np.searchsorted(profile.times, ns, side="right") - 1
    vals = profile.values[column]
    return np.where(pos >= 0, vals[np.maximum(pos, 0)], np.nan)


# ------------------------------------------------------------------------- per service


@dataclass(frozen=True)
class _ServiceOutput:
    ts_ns: Array  # metrics minute starts of the minute rows
    minute: dict[str, Array]
    seq_ts_ns: Array
    sequences: dict[str, Array]


def _service_features(
    service_id: str,
    events: _Rows | None,
    system: _Rows | None,
    calendar: _Calendar,
    profile: _Rows | None,
    since_ns: int | None,
    seq_since_ns: int | None,
) -> _ServiceOutput:
    present = [r.times for r in (events, system) if r is not None]
    first = int(min(m[0] for m in present))
    last = int(max(m[-1] for m in present))
    n = last - first + 1
    grid_ns = (first + np.arange(n, dtype=np.int64)) * _NS_PER_MIN
    observed = np.zeros(n, dtype=bool)

    def dense(rows: _Rows | None, column: str) -> Array:
        arr = np.full(n, np.nan)
        if rows is not None:
            arr[rows.times - first] = rows.values[column]
        return arr

    for rows in (events, system):
        if rows is not None:
            observed[rows.times - first] = True

    available_ns = grid_ns + AVAILABLE_AFTER.value

    def positions(start_ns: int | None) -> Array:
        keep = observed if start_ns is None else observed & (available_ns >= start_ns)
        return np.flatnonzero(keep)

    out = positions(since_ns)
    seq_out = positions(seq_since_ns)
    x = dense(events, "events_in")
    s = pd.Series(x)
    f: dict[str, Array] = {"events_in": x[out]}

    # Windows run on the dense grid, so they cover wall-clock time whatever is missing.
    means: dict[int, Array] = {}
    for suffix, window in ROLLING_WINDOWS:
        roll = s.rolling(window, min_periods=1)
        mean = roll.mean().to_numpy()
        means[window] = mean
        f[f"events_mean_{suffix}"] = mean[out]
        f[f"events_std_{suffix}"] = roll.std().to_numpy()[out]
        f[f"events_max_{suffix}"] = roll.max().to_numpy()[out]
    for span in EWM_SPANS:
        # ignore_na=False: a missing minute still ages the older weights (wall clock).
        ewm = s.ewm(span=span, adjust=True, ignore_na=False).mean().to_numpy()
        f[f"events_ewm_{span}"] = ewm[out]
    for suffix, lag in LAGS:
        back = out - lag
        f[f"events_lag_{suffix}"] = np.where(back >= 0, x[np.maximum(back, 0)], np.nan)
    f["events_slope_1h"] = _slope(x)[out]
    f["events_ratio_1h"] = _ratio(means[60], _shift(means[60], 60))[out]

    ts_out = grid_ns[out]
    f.update(_calendar_columns(ts_out, calendar, service_id))

    med, z = _robust_z(x, out)
    f["events_seasonal_median"] = med
    f["events_robust_z"] = z
    f["spike_flag"] = np.abs(np.nan_to_num(z, nan=0.0)) > SPIKE_Z
    shift_ratio = _ratio(means[LEVEL_SHIFT_MINUTES], _shift(means[60], LEVEL_SHIFT_MINUTES))[out]
    f["level_shift_ratio"] = shift_ratio
    with np.errstate(invalid="ignore"):
        f["level_shift_flag"] = (shift_ratio > LEVEL_SHIFT_FACTOR) | (
            shift_ratio < 1.0 / LEVEL_SHIFT_FACTOR
        )

    running = dense(system, "jobs_running")
    starting = dense(system, "jobs_starting")
    failures = dense(system, "job_failures")
    queue = dense(events, "queue_length")
    f["utilization"] = dense(system, "utilization")[out]
    f["jobs_running"] = running[out]
    f["jobs_starting"] = starting[out]
    f["queue_length"] = queue[out]
    f["queue_wait_p95_s"] = dense(events, "queue_wait_p95_s")[out]
    f["events_dropped"] = dense(events, "events_dropped")[out]
    f["error_rate"] = dense(events, "error_rate")[out]

    capacity = _asof(profile, ts_out, "job_capacity_eps")
    serve_eps = running[out] * capacity
    q = queue[out]
    with np.errstate(divide="ignore", invalid="ignore"):
        drain = np.where(
            q == 0,
            0.0,
            np.where(serve_eps > 0, q / np.where(serve_eps > 0, serve_eps, 1.0), DRAIN_CAP_S),
        )
        # An empty queue drains in 0 s even when the capacity is unknown.
        unknown = np.isnan(q) | ((q != 0) & np.isnan(serve_eps))
        drain = np.where(unknown, np.nan, np.minimum(drain, DRAIN_CAP_S))
        demand_eps = x[out] / 60.0
        headroom = np.where(
            serve_eps > 0,
            1.0 - demand_eps / np.where(serve_eps > 0, serve_eps, 1.0),
            np.where(demand_eps > 0, HEADROOM_MIN, 0.0),
        )
        headroom = np.where(
            np.isnan(demand_eps) | np.isnan(serve_eps), np.nan, np.maximum(headroom, HEADROOM_MIN)
        )
    f["drain_time_s"] = drain
    f["headroom"] = headroom
    fail_sum = pd.Series(failures).rolling(60, min_periods=1).sum().to_numpy()
    job_minutes = pd.Series(running).rolling(60, min_periods=1).sum().to_numpy()
    f["job_failure_rate_1h"] = _ratio(fail_sum, job_minutes / 60.0)[out]

    for column in ("criticality", "sla_latency_s", "sla_target"):
        f[column] = _asof(profile, ts_out, column)
    price = _asof(profile, grid_ns, "cost_per_job_hour")
    cost = (running + np.nan_to_num(starting, nan=0.0)) * price / 60.0
    day = (first + np.arange(n)) // _MIN_PER_DAY
    # groupby-cumsum restarts at each UTC midnight and leaves NaN minutes NaN.
    spent = pd.Series(cost).groupby(day).cumsum().to_numpy()
    f["budget_used_today"] = _ratio(spent[out], _asof(profile, ts_out, "daily_budget"))

    seqs = sequence_arrays(x, first, seq_out)
    return _ServiceOutput(ts_out, f, grid_ns[seq_out], seqs)


def sequence_arrays(x: Array, first_minute: int, positions: Array) -> dict[str, Array]:
    """The ``SEQUENCE_FEATURES`` arrays of a dense per-minute series at given minutes.

    The one implementation of the sequence rules in the module docstring, shared by the
    feature views and the forecaster's training windows.

    Args:
        x: events_in on a dense minute grid, NaN where missing, shape (n,).
        first_minute: Minutes since the epoch of ``x[0]`` (sets the clock hours).
        positions: Grid positions of the rows to build (the row's minute is included).

    Returns:
        ``{name: float32 array of shape (len(positions), length)}`` per sequence feature.
    """
    positions = np.asarray(positions, dtype=np.int64)
    if not len(positions):
        return {name: np.empty((0, length), dtype=np.float32) for name, length in SEQUENCE_FEATURES}
    n = len(x)
    xpad = np.concatenate([np.full(RECENT_MINUTES - 1, np.nan), x]).astype(np.float32)
    seqs = {"recent_events_120m": sliding_window_view(xpad, RECENT_MINUTES)[positions]}
    hour = (first_minute + np.arange(n)) // _MIN_PER_HOUR
    h_idx = hour - hour[0]
    valid = ~np.isnan(x)
    x0 = np.where(valid, x, 0.0)
    n_hours = int(h_idx[-1]) + 1
    sums = np.bincount(h_idx, weights=x0, minlength=n_hours)
    counts = np.bincount(h_idx, weights=valid, minlength=n_hours)
    hourly = np.where(counts > 0, sums, np.nan)
    seen = pd.Series(valid.astype(np.int64)).groupby(h_idx).cumsum().to_numpy()
    # The current minute may be missing (system row only): sum of the hour so far.
    partial_so_far = pd.Series(x0).groupby(h_idx).cumsum().to_numpy()
    partial = np.where(seen > 0, partial_so_far, np.nan)
    hpad = np.concatenate([np.full(HOURLY_HOURS - 1, np.nan), hourly]).astype(np.float32)
    before = sliding_window_view(hpad[:-1], HOURLY_HOURS - 1)[h_idx[positions]]
    seqs["hourly_events_7d"] = np.concatenate(
        [before, partial[positions].astype(np.float32)[:, None]], axis=1
    )
    return seqs


# ------------------------------------------------------------------------------ public


def _instant(value: pd.Timestamp | None) -> int | None:
    if value is None:
        return None
    stamp = pd.Timestamp(value)
    if stamp.tz is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return int(stamp.as_unit("ns").value)


def _keys(ids: list[str], counts: list[int], ts_ns: list[Array]) -> dict[str, object]:
    stamps = (
        np.concatenate(ts_ns) if ts_ns else np.empty(0, dtype=np.int64)
    ) + AVAILABLE_AFTER.value
    return {
        "service_id": np.repeat(np.array(ids, dtype=object), counts),
        "event_timestamp": stamps.astype("datetime64[ns]"),
    }


def _profiles_frame(profiles: dict[str, _Rows], since_ns: int | None) -> pd.DataFrame:
    ids: list[str] = []
    counts: list[int] = []
    stamps: list[Array] = []
    values: dict[str, list[Array]] = {name: [] for name, _ in PROFILE_FEATURES}
    for sid in sorted(profiles):
        rows = profiles[sid]
        keep = np.ones(len(rows.times), dtype=bool)
        if since_ns is not None:
            # Keep the profile in force at `since` too: an as-of join needs it.
            in_force = np.searchsorted(rows.times, since_ns, side="right") - 1
            keep = np.arange(len(rows.times)) >= max(int(in_force), 0)
        ids.append(sid)
        counts.append(int(keep.sum()))
        stamps.append(rows.times[keep])
        for name in values:
            values[name].append(rows.values[name][keep])
    data: dict[str, object] = {
        "service_id": np.repeat(np.array(ids, dtype=object), counts),
        "event_timestamp": (
            np.concatenate(stamps) if stamps else np.empty(0, dtype=np.int64)
        ).astype("datetime64[ns]"),
    }
    for name, kind in PROFILE_FEATURES:
        arr = np.concatenate(values[name]) if values[name] else np.empty(0)
        data[name] = _typed(arr, kind)
    return pd.DataFrame(data)


def compute_features(
    event_metrics: pd.DataFrame,
    system_metrics: pd.DataFrame,
    calendar: pd.DataFrame,
    profiles: pd.DataFrame,
    *,
    since: pd.Timestamp | None = None,
    sequences_since: pd.Timestamp | None = None,
) -> FeatureFrames:
    """Compute every feature frame from contract-conformed tables.

    Training passes the whole history; serving passes :func:`lookback_needed` of history
    before ``since`` and gets the rows from ``since`` on, computed by the same code.

    Args:
        event_metrics: ``event_metrics`` rows (uses events_in, queue_length,
            queue_wait_p95_s, events_dropped, error_rate).
        system_metrics: ``system_metrics`` rows (uses jobs_running, jobs_starting,
            utilization, job_failures).
        calendar: ``business_calendar`` rows; ``'*'`` rows apply to every service, a
            service's own row overrides them for its ts.
        profiles: ``service_profiles`` rows, ``ts`` = valid-from.
        since: Keep minute rows with ``event_timestamp >= since`` (None = all). Profile
            rows from the one in force at ``since`` on are kept.
        sequences_since: Keep sequence rows with ``event_timestamp >= sequences_since``;
            None = the same as ``since``. Arrays are large, so callers materialise them
            for the last days only.

    Returns:
        The minute, sequence and profile frames, sorted by service then time.

    Raises:
        ValueError: If a needed column is missing, or metrics ts are not minute starts.
    """
    since_ns = _instant(since)
    seq_since_ns = _instant(sequences_since) if sequences_since is not None else since_ns
    events = _split(event_metrics, _EVENT_INPUTS, "event_metrics", minute_aligned=True)
    system = _split(system_metrics, _SYSTEM_INPUTS, "system_metrics", minute_aligned=True)
    profile_rows = _split(profiles, _PROFILE_INPUTS, "service_profiles", minute_aligned=False)
    services = sorted(set(events) | set(system))
    cal = _Calendar.from_frame(calendar, only={"*", *services})

    outputs = [
        _service_features(
            sid,
            events.get(sid),
            system.get(sid),
            cal,
            profile_rows.get(sid),
            since_ns,
            seq_since_ns,
        )
        for sid in services
    ]

    minute_data = _keys(services, [len(o.ts_ns) for o in outputs], [o.ts_ns for o in outputs])
    for name, kind in MINUTE_FEATURES:
        parts = [np.asarray(o.minute[name]) for o in outputs]
        minute_data[name] = _typed(np.concatenate(parts) if parts else np.empty(0), kind)
    minute = pd.DataFrame(minute_data)

    seq_data = _keys(services, [len(o.seq_ts_ns) for o in outputs], [o.seq_ts_ns for o in outputs])
    for name, length in SEQUENCE_FEATURES:
        parts = [o.sequences[name] for o in outputs]
        matrix = np.concatenate(parts) if parts else np.empty((0, length), dtype=np.float32)
        column = np.empty(len(matrix), dtype=object)
        column[:] = list(matrix)
        seq_data[name] = column
    sequences = pd.DataFrame(seq_data)

    return FeatureFrames(
        minute=minute, sequences=sequences, profiles=_profiles_frame(profile_rows, since_ns)
    )
