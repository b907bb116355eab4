"""Model inputs of the forecaster, built from the feature store's sequence features.

The forecaster reads exactly what the ``service_sequences`` feature view serves for a
service at its last observed minute ``ts``: ``recent_events_120m`` (the 120 one-minute
counts ``ts - 119 .. ts``) and ``hourly_events_7d`` (168 clock-hour sums, the last one the
partial current hour); see :mod:`features.engineering`. Training windows are cut from a
stored series by the same :func:`features.engineering.sequence_arrays`, so training and
serving share one code path.

A forecast made at ``ts`` for horizon ``h`` (minutes) is for the count of minute
``ts + h``. In the benchmark's terms (origin ``o`` = first unobserved minute) that is
``series[o + h - 1]`` with ``ts = o - 1``.

Everything is expressed relative to a per-row *scale* ``s``: the mean events per minute
over the complete hours of the last week (the recent 120 minutes when no hour is
complete), floored at ``SCALE_FLOOR``. A single global model then serves services of any
volume, and the training loss weighs every service alike.

Tensors built here (all float32):

* ``hourly`` (n, 168, 7): per-minute rate of each hour / s, its log1p, an observed flag,
  hour-of-day and day-of-week sine/cosine of the hour;
* ``recent`` (n, 24, 3): the 120 minutes as 24 five-minute means / s, log1p, observed flag;
* ``future`` (n, H, 14): per horizon, the known-future inputs: minute-of-day and
  day-of-week sine/cosine of the target minute, holiday, business event and log of the
  expected multiplier there (zero / 1 when no calendar is given), the horizon / 120, and
  the observed rates of the same hour one day and one week before the target (from the
  hourly sequence; / s, log1p and observed flag each);
* ``static`` (n, 9): log1p of the scale, the means of the last 1, 5, 15 and 60 minutes / s,
  the observed share of the week, criticality one-hot (all zero when unknown).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.engineering import HOURLY_HOURS, RECENT_MINUTES, sequence_arrays

HORIZONS: tuple[int, ...] = (1, 5, 15, 30, 60, 120)
QUANTILES: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
SCALE_FLOOR = 0.1
"""Events per minute below which the scale stops shrinking (so an idle service's noise is
not blown up into huge relative values)."""
RECENT_STEP = 5
"""Minutes per step of the recent encoder (120 minutes -> 24 steps)."""
HOURLY_FEATURES = 7
RECENT_FEATURES = 3
FUTURE_FEATURES = 14
STATIC_FEATURES = 9
_MIN_PER_DAY = 1440
_MIN_PER_WEEK = 10080

Array = np.ndarray


@dataclass(frozen=True)
class ModelInputs:
    """Normalised model inputs for n rows (see the module docstring for the layout)."""

    hourly: Array
    recent: Array
    future: Array
    static: Array
    scale: Array

    def __len__(self) -> int:
        return int(self.scale.shape[0])

    def take(self, index: Array) -> ModelInputs:
        """The rows at ``index``."""
        return ModelInputs(
            self.hourly[index],
            self.recent[index],
            self.future[index],
            self.static[index],
            self.scale[index],
        )


def _cyc(values: Array, period: float) -> tuple[Array, Array]:
    angle = 2.0 * np.pi * (values % period) / period
    return np.sin(angle), np.cos(angle)


def _nanmean_rows(values: Array) -> Array:
    """Row means over the non-NaN entries; NaN (no warning) for an all-NaN row."""
    ok = ~np.isnan(values)
    count = ok.sum(axis=1)
    total = np.where(ok, values, 0.0).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _checked(name: str, values: Array, shape: tuple[int, ...]) -> Array:
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    if np.isinf(arr).any() or (np.nan_to_num(arr, nan=0.0) < 0).any():
        raise ValueError(f"{name} must hold counts >= 0 (NaN for missing), got inf or negatives")
    return arr


def build_inputs(
    recent: Array,
    hourly: Array,
    ts_minute: Array,
    horizons: tuple[int, ...] = HORIZONS,
    *,
    calendar: Array | None = None,
    criticality: Array | None = None,
) -> ModelInputs:
    """Turn sequence features into normalised model inputs.

    Args:
        recent: ``recent_events_120m`` rows, shape (n, 120), NaN where missing.
        hourly: ``hourly_events_7d`` rows, shape (n, 168), NaN where missing.
        ts_minute: Last observed minute of each row, minutes since the epoch, shape (n,).
        horizons: Forecast horizons in minutes.
        calendar: Known future per row and horizon, shape (n, H, 3): is_holiday,
            business_event, expected_traffic_multiplier at the target minute; None = an
            ordinary day (0, 0, 1). NaN entries count as that default.
        criticality: Service tier 1..3 per row (NaN or None = unknown).

    Returns:
        The model inputs.

    Raises:
        ValueError: On wrong shapes, infinities or negative counts.
    """
    ts = np.asarray(ts_minute, dtype=np.int64)
    n = ts.shape[0]
    rec = _checked("recent_events_120m", recent, (n, RECENT_MINUTES))
    hrs = _checked("hourly_events_7d", hourly, (n, HOURLY_HOURS))
    h_arr = np.asarray(horizons, dtype=np.int64)
    n_h = len(h_arr)

    # Per-minute rate of each hour: complete hours have 60 minutes, the current one
    # (ts % 60) + 1 so far.
    minutes_in = np.full((n, HOURLY_HOURS), 60.0)
    minutes_in[:, -1] = (ts % 60) + 1
    rate = hrs / minutes_in
    week_mean = _nanmean_rows(rate[:, :-1])
    recent_mean = _nanmean_rows(rec)
    scale: Array = np.where(np.isnan(week_mean), recent_mean, week_mean)
    scale = np.maximum(np.nan_to_num(scale, nan=SCALE_FLOOR), SCALE_FLOOR)
    s = scale[:, None]

    h_obs = ~np.isnan(rate)
    h_rel = np.where(h_obs, rate, 0.0) / s
    hour_start = (ts // 60)[:, None] - np.arange(HOURLY_HOURS - 1, -1, -1)[None, :]
    hod_s, hod_c = _cyc(hour_start, 24)
    dow_s, dow_c = _cyc(hour_start // 24, 7)
    hourly_t = np.stack(
        [h_rel, np.log1p(h_rel), h_obs.astype(float), hod_s, hod_c, dow_s, dow_c], axis=-1
    )

    steps = rec.reshape(n, RECENT_MINUTES // RECENT_STEP, RECENT_STEP)
    r_obs = ~np.isnan(steps)
    r_cnt = r_obs.sum(axis=2)
    r_mean = np.where(r_cnt > 0, np.where(r_obs, steps, 0.0).sum(axis=2) / np.maximum(r_cnt, 1), 0)
    r_rel = r_mean / s
    recent_t = np.stack([r_rel, np.log1p(r_rel), (r_cnt > 0).astype(float)], axis=-1)

    target = ts[:, None] + h_arr[None, :]  # minute being forecast
    mod_s, mod_c = _cyc(target, _MIN_PER_DAY)
    tdw_s, tdw_c = _cyc(target // _MIN_PER_DAY, 7)
    if calendar is None:
        cal = np.zeros((n, n_h, 3))
        cal[:, :, 2] = 1.0
    else:
        cal = np.asarray(calendar, dtype=np.float64)
        if cal.shape != (n, n_h, 3):
            raise ValueError(f"calendar must have shape {(n, n_h, 3)}, got {cal.shape}")
        cal = np.where(np.isnan(cal), np.array([0.0, 0.0, 1.0]), cal)
        if (cal[:, :, 2] <= 0).any():
            raise ValueError("expected_traffic_multiplier must be > 0")
    lags = []
    for back in (_MIN_PER_DAY, _MIN_PER_WEEK):
        # Hours back from the current clock hour to the hour holding (target - back).
        k = (ts // 60)[:, None] - (target - back) // 60
        idx = HOURLY_HOURS - 1 - k
        inside = (idx >= 0) & (idx < HOURLY_HOURS)
        val = np.take_along_axis(rate, np.clip(idx, 0, HOURLY_HOURS - 1), axis=1)
        ok = inside & ~np.isnan(val)
        rel = np.where(ok, val, 0.0) / s
        lags += [rel, np.log1p(rel), ok.astype(float)]
    future_t = np.stack(
        [
            mod_s,
            mod_c,
            tdw_s,
            tdw_c,
            cal[:, :, 0],
            cal[:, :, 1],
            np.log(cal[:, :, 2]),
            np.broadcast_to(h_arr[None, :] / 120.0, (n, n_h)),
            *lags,
        ],
        axis=-1,
    )

    def tail_mean(width: int) -> Array:
        return np.nan_to_num(_nanmean_rows(rec[:, -width:]), nan=0.0) / scale

    crit = np.zeros((n, 3))
    if criticality is not None:
        c = np.asarray(criticality, dtype=np.float64).reshape(n)
        for tier in (1, 2, 3):
            crit[:, tier - 1] = c == tier
    static_t = np.column_stack(
        [
            np.log1p(scale),
            tail_mean(1),
            tail_mean(5),
            tail_mean(15),
            tail_mean(60),
            h_obs[:, :-1].mean(axis=1),
            crit,
        ]
    )
    # Spikes of hundreds of times the weekly mean would dominate the LSTM's inputs; the
    # log1p channels keep their size visible beyond the clip.
    clip = 50.0
    hourly_t[..., 0] = np.minimum(hourly_t[..., 0], clip)
    recent_t[..., 0] = np.minimum(recent_t[..., 0], clip)
    for j in (8, 11):
        future_t[..., j] = np.minimum(future_t[..., j], clip)
    static_t[:, 1:5] = np.minimum(static_t[:, 1:5], clip)
    return ModelInputs(
        hourly=hourly_t.astype(np.float32),
        recent=recent_t.astype(np.float32),
        future=future_t.astype(np.float32),
        static=static_t.astype(np.float32),
        scale=scale.astype(np.float32),
    )


def minute_of(ts: pd.Timestamp) -> int:
    """Minutes since the epoch of a naive timestamp."""
    return int(pd.Timestamp(ts).value // 60_000_000_000)


def series_windows(series: Array, start: pd.Timestamp, last_observed: Array) -> tuple[Array, Array]:
    """Sequence features of a per-minute series at given last-observed positions.

    Args:
        series: Events per minute (NaN where missing), shape (T,).
        start: Timestamp of ``series[0]``.
        last_observed: Positions ``p`` (the row's ``ts``); a forecast from there uses
            ``series[: p + 1]`` only.

    Returns:
        ``(recent, hourly)`` of shapes (n, 120) and (n, 168), as the feature view serves.
    """
    seqs = sequence_arrays(np.asarray(series, dtype=np.float64), minute_of(start), last_observed)
    return seqs["recent_events_120m"], seqs["hourly_events_7d"]


def shift_back(
    recent: Array, hourly: Array, ts_minute: Array, k: int
) -> tuple[Array, Array, Array]:
    """The sequence features as they were ``k`` minutes earlier, from today's rows.

    Used to score the newest observations against a forecast made before them (the
    anomaly score) without keeping old feature rows. ``recent`` loses its last ``k``
    minutes (NaN-padded at the front); the partial hour is rebuilt from the minutes.

    Args:
        recent: (n, 120) recent minutes.
        hourly: (n, 168) hourly sums.
        ts_minute: (n,) last observed minute.
        k: Minutes to go back, 1..59.

    Returns:
        ``(recent, hourly, ts_minute)`` as of ``ts - k``.
    """
    if not 1 <= k < 60:
        raise ValueError(f"k must be in 1..59, got {k}")
    rec = np.asarray(recent, dtype=np.float64)
    hrs = np.asarray(hourly, dtype=np.float64)
    ts = np.asarray(ts_minute, dtype=np.int64)
    n = len(ts)
    new_rec = np.concatenate([np.full((n, k), np.nan), rec[:, :-k]], axis=1)
    new_ts = ts - k
    same_hour = (ts // 60) == (new_ts // 60)
    # The partial hour as of ts - k: the minutes from its clock hour start to ts - k,
    # which all lie in the last 120 minutes (k < 60).
    cols = np.arange(RECENT_MINUTES)
    minute_ts = ts[:, None] - (RECENT_MINUTES - 1 - cols)[None, :]
    in_hour = (minute_ts // 60 == (new_ts // 60)[:, None]) & (minute_ts <= new_ts[:, None])
    vals = np.where(in_hour, rec, np.nan)
    seen = (~np.isnan(vals)).any(axis=1)
    partial = np.where(seen, np.nansum(vals, axis=1), np.nan)
    new_hrs = np.where(
        same_hour[:, None],
        np.concatenate([hrs[:, :-1], partial[:, None]], axis=1),
        np.concatenate([np.full((n, 1), np.nan), hrs[:, :-2], partial[:, None]], axis=1),
    )
    return new_rec, new_hrs, new_ts
