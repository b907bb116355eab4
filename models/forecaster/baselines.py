"""Baseline forecasters of the forecasting benchmark (DESIGN.md sections 7 and 11).

Every baseline has the signature of :data:`BaselineFn`::

    fn(series, start, history_end, origins, horizons, quantiles) -> (n_origins, H, Q)

and follows the protocol of :mod:`models.forecaster.protocol`: the forecast at
origin ``o`` uses only ``series[:o]``; anything fitted uses only the history range
``series[:history_end]`` plus what is observed before the origin. Outputs are
clipped at 0 and sorted along the quantile axis (non-crossing).

``seasonal_naive_day`` / ``seasonal_naive_week`` (period ``P`` = 1440 / 10080 min):
    point ``series[o + h - 1 - P]`` (valid because every horizon is <= P). The
    quantile ``q`` is ``point + Q_q(r)`` where ``r_t = y_t - y_{t-P}`` are the
    in-sample residuals over the history range (``P <= t < history_end``) and
    ``Q_q`` their empirical (linearly interpolated) quantile: additive offsets,
    the same for every horizon and origin, because the one-period seasonal naive
    forecast of any target is the value one period before it, whatever the horizon.

``auto_ets`` and ``mstl`` (statsforecast):
    The minutes are summed into 15-minute buckets on a grid that ends at the
    origin (a whole-hour origin sits on a clock quarter-hour boundary; an origin
    off the grid gets its own grid). A refit sees the buckets of the last
    :data:`ETS_FIT_WEEKS` (2) weeks (AutoETS) or :data:`MSTL_FIT_WEEKS` (4) weeks
    (MSTL, two cycles of the weekly season and more) before the refit origin.
    AutoETS gets 2 weeks for speed: at m = 96 one AutoETS fit on 4 weeks took 4-11 s
    here (it fits up to 15 candidate models, 9 of them with 96 seasonal states);
    on 20 origins of nasa_http and twitter_goog, 4 instead of 2 weeks changed wQL
    by -5 % to +5 % depending on trace and horizon, with no consistent direction.
    The forecast of a minute is its bucket's forecast divided by 15; quantiles
    come from statsforecast's native prediction intervals (``level=80`` gives
    q0.1/q0.9, ``level=90`` q0.05/q0.95, in general level ``100 * |2q - 1|``) and
    the median is the mean forecast. Such an
    interval describes the 15-minute mean, which varies less than single minutes,
    so on noisy minute data its coverage of minutes is below nominal.

    * Refit cadence: once per calendar day, at the first origin of that day in
      ``origins``. The other origins of the day update the fitted model with the
      buckets observed since, without re-estimating anything: AutoETS through
      ``AutoETS.forward`` (same parameters and initial state, states re-filtered
      over the longer series); MSTL by extending each seasonal component one
      season ahead (what MSTL forecasts them with) to deseasonalize the new
      buckets and calling ``forward`` of its trend model on the extended
      seasonally adjusted series. ``MSTL.forward`` itself re-runs the STL
      decomposition, which costs as much as a refit, so it is not used.
      Consequence: a forecast depends on the first origin of its day in
      ``origins`` (never on anything at or after its own origin).
    * ``auto_ets``: ``AutoETS(season_length=96)`` (daily season; statsforecast
      allows m > 24). Its model selection by AICc frequently picks a non-seasonal
      model at m = 96, as statsforecast's optimizer handles the 96 initial seasonal
      states poorly; that is the standard AutoETS and it is kept as it is.
    * ``mstl``: ``MSTL(season_length=[96, 672])`` (daily and weekly) with the
      default AutoETS(model="ZZN") trend. A season is kept only if the history
      range holds two full cycles of it (STL's minimum), so a series with under
      two weeks of history gets the daily season only. The STL fits use R's
      ``stats::stl`` default interpolation steps (``jump = ceil(window / 10)``)
      of the daily season, ``seasonal_jump=2, trend_jump=17, low_pass_jump=10``
      (:data:`MSTL_STL_KWARGS`), for both seasons because statsforecast passes one
      ``stl_kwargs`` to every STL. statsmodels' default (every point, jump 1) is
      ~10x slower here and changed wQL by under 1 % on nasa_http and
      twitter_goog (30 and 20 origins); the weekly STL is still interpolated more
      finely than R's defaults would.
    * If an update yields non-finite values (a multiplicative model meeting a new
      zero), the model is refitted at that origin instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from models.forecaster.protocol import origin_days

DAY = 1440
WEEK = 7 * DAY
BUCKET_MIN = 15
"""Minutes per bucket the statsforecast baselines model."""
DAY_BUCKETS = DAY // BUCKET_MIN
WEEK_BUCKETS = WEEK // BUCKET_MIN
ETS_FIT_WEEKS = 2
"""Weeks of buckets before a refit origin that AutoETS is fitted on."""
MSTL_FIT_WEEKS = 4
"""Weeks of buckets before a refit origin that MSTL is fitted on."""
MSTL_STL_KWARGS: dict[str, int] = {"seasonal_jump": 2, "trend_jump": 17, "low_pass_jump": 10}
"""R's stl default jumps for the daily season (module docstring)."""

BaselineFn = Callable[
    [np.ndarray, pd.Timestamp, int, np.ndarray, tuple[int, ...], tuple[float, ...]], np.ndarray
]
"""``fn(series, start, history_end, origins, horizons, quantiles) -> (n_origins, H, Q)``."""


def _check(
    series: np.ndarray,
    history_end: int,
    origins: np.ndarray,
    horizons: tuple[int, ...],
    quantiles: tuple[float, ...],
) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(series, dtype=np.float64)
    o = np.asarray(origins, dtype=np.int64)
    if x.ndim != 1 or not np.all(np.isfinite(x)):
        raise ValueError("series must be a 1-D array of finite values")
    if not 0 < history_end <= len(x):
        raise ValueError(f"history_end must be in (0, {len(x)}], got {history_end}")
    if o.ndim != 1 or (o.size and (o.min() < history_end or o.max() > len(x))):
        raise ValueError(
            f"origins must be a 1-D array within [history_end={history_end}, {len(x)}]"
        )
    if not horizons or min(horizons) < 1:
        raise ValueError(f"horizons must be >= 1 minute, got {horizons}")
    q = np.asarray(quantiles, dtype=np.float64)
    if q.size == 0 or np.any((q <= 0) | (q >= 1)) or np.any(np.diff(q) <= 0):
        raise ValueError(f"quantiles must be ascending levels in (0, 1), got {quantiles}")
    return x, o


def _finish(values: np.ndarray) -> np.ndarray:
    """Clip at 0 and sort along the quantile axis (non-crossing)."""
    return np.sort(np.maximum(values, 0.0), axis=-1)


# --- seasonal naive -----------------------------------------------------------


def _seasonal_naive(
    series: np.ndarray,
    history_end: int,
    origins: np.ndarray,
    horizons: tuple[int, ...],
    quantiles: tuple[float, ...],
    period: int,
) -> np.ndarray:
    x, o = _check(series, history_end, origins, horizons, quantiles)
    if max(horizons) > period:
        raise ValueError(f"horizons must be <= the period {period} min, got {max(horizons)}")
    if history_end <= period:
        raise ValueError(
            f"a {period}-minute seasonal naive forecast needs more than {period} minutes "
            f"of history for its residual quantiles, got {history_end}; use a longer series"
        )
    residuals = x[period:history_end] - x[: history_end - period]
    offsets = np.quantile(residuals, np.asarray(quantiles))
    target = o[:, None] + np.asarray(horizons)[None, :] - 1
    point = x[target - period]  # target - period < o since h <= period
    return _finish(point[:, :, None] + offsets[None, None, :])


def seasonal_naive_day(
    series: np.ndarray,
    start: pd.Timestamp,
    history_end: int,
    origins: np.ndarray,
    horizons: tuple[int, ...],
    quantiles: tuple[float, ...],
) -> np.ndarray:
    """Value one day before the target, plus history residual quantiles.

    Args:
        series: Events per minute (only ``series[:o]`` is used at origin ``o``).
        start: Timestamp of minute 0 (unused; part of the shared signature).
        history_end: Length of the history range the residuals come from.
        origins: Forecast origins, each >= ``history_end``.
        horizons: Horizons in minutes, each <= 1440.
        quantiles: Ascending levels in (0, 1).

    Returns:
        Forecasts, shape ``(len(origins), len(horizons), len(quantiles))``.

    Raises:
        ValueError: On bad input or a history of one day or less.
    """
    return _seasonal_naive(series, history_end, origins, horizons, quantiles, DAY)


def seasonal_naive_week(
    series: np.ndarray,
    start: pd.Timestamp,
    history_end: int,
    origins: np.ndarray,
    horizons: tuple[int, ...],
    quantiles: tuple[float, ...],
) -> np.ndarray:
    """Value one week before the target, plus history residual quantiles.

    Args:
        series: Events per minute (only ``series[:o]`` is used at origin ``o``).
        start: Timestamp of minute 0 (unused; part of the shared signature).
        history_end: Length of the history range the residuals come from.
        origins: Forecast origins, each >= ``history_end``.
        horizons: Horizons in minutes, each <= 10080.
        quantiles: Ascending levels in (0, 1).

    Returns:
        Forecasts, shape ``(len(origins), len(horizons), len(quantiles))``.

    Raises:
        ValueError: On bad input or a history of one week or less.
    """
    return _seasonal_naive(series, history_end, origins, horizons, quantiles, WEEK)


# --- statsforecast on 15-minute buckets ---------------------------------------

Levels = list[int | float]
Forecast = dict[str, np.ndarray]


_Fitted = Callable[[np.ndarray, int, Levels], Forecast]
"""A model fitted on ``y_fit``, called as ``(y_fit + newer buckets, h, levels)``."""
Fitter = Callable[[np.ndarray], _Fitted]


def _level_keys(quantiles: tuple[float, ...]) -> tuple[Levels, list[str]]:
    """statsforecast interval levels and the output key of each quantile."""
    levels: Levels = []
    keys: list[str] = []
    for q in quantiles:
        if math.isclose(q, 0.5):
            keys.append("mean")
            continue
        raw = round(100 * abs(2 * q - 1), 6)
        level: int | float = int(raw) if float(raw).is_integer() else raw
        if level not in levels:
            levels.append(level)
        keys.append(f"{'lo' if q < 0.5 else 'hi'}-{level}")
    return sorted(levels), keys


def _buckets(x: np.ndarray, phase: int) -> np.ndarray:
    """Sums of the complete 15-minute buckets starting at minute ``phase``."""
    n = (len(x) - phase) // BUCKET_MIN
    return np.asarray(x[phase : phase + n * BUCKET_MIN].reshape(n, BUCKET_MIN).sum(axis=1))


def _bucketed(
    series: np.ndarray,
    start: pd.Timestamp,
    history_end: int,
    origins: np.ndarray,
    horizons: tuple[int, ...],
    quantiles: tuple[float, ...],
    fit: Fitter,
    fit_weeks: int,
) -> np.ndarray:
    """Drive a bucket model over the origins: daily refit, update in between."""
    x, o = _check(series, history_end, origins, horizons, quantiles)
    levels, keys = _level_keys(quantiles)
    steps = (np.asarray(horizons) - 1) // BUCKET_MIN  # bucket step of each horizon
    n_ahead = int(steps.max()) + 1
    days = origin_days(start, o)
    window = fit_weeks * WEEK_BUCKETS
    grids: dict[int, np.ndarray] = {}
    out = np.empty((len(o), len(horizons), len(quantiles)))
    refit_key: tuple[int, int] | None = None
    model: _Fitted | None = None
    fit_lo = 0
    for i, (origin, day) in enumerate(zip(o.tolist(), days.tolist(), strict=True)):
        phase = origin % BUCKET_MIN
        if phase not in grids:
            grids[phase] = _buckets(x, phase)
        j = (origin - phase) // BUCKET_MIN  # buckets[:j] end exactly at the origin
        observed = grids[phase][:j]
        key = (day, phase)
        if key != refit_key or model is None:
            fit_lo = max(0, j - window)
            model = fit(observed[fit_lo:])
            refit_key = key
        res = model(observed[fit_lo:], n_ahead, levels)
        if not all(np.all(np.isfinite(res[k])) for k in keys):
            fit_lo = max(0, j - window)
            model = fit(observed[fit_lo:])
            res = model(observed[fit_lo:], n_ahead, levels)
        per_bucket = np.stack([np.asarray(res[k], dtype=np.float64) for k in keys], axis=-1)
        out[i] = per_bucket[steps] / BUCKET_MIN
    return _finish(out)


def _fit_ets(y: np.ndarray) -> _Fitted:
    from statsforecast.models import AutoETS

    n_fit = len(y)
    model = AutoETS(season_length=DAY_BUCKETS).fit(y)

    def forecast(y_now: np.ndarray, h: int, level: Levels) -> Forecast:
        if len(y_now) == n_fit:
            res: Forecast = model.predict(h=h, level=level)
        else:
            res = model.forward(y=y_now, h=h, level=level)
        return res

    return forecast


def _season_ahead(components: np.ndarray, seasons: list[int], steps: int) -> np.ndarray:
    """Each seasonal component continued ``steps`` ahead by its own last cycle, summed."""
    total = np.zeros(steps)
    for col, period in enumerate(seasons):
        last = components[-period:, col]
        total += np.tile(last, steps // period + 1)[:steps]
    return total


def _mstl_fitter(seasons: list[int]) -> Fitter:
    def fit(y: np.ndarray) -> _Fitted:
        from statsforecast.models import MSTL

        n_fit = len(y)
        model = MSTL(season_length=seasons, stl_kwargs=dict(MSTL_STL_KWARGS)).fit(y)
        frame = model.model_
        components = frame.filter(regex="^seasonal").to_numpy(dtype=np.float64)
        adjusted = frame["trend"].to_numpy(dtype=np.float64) + frame["remainder"].to_numpy(
            dtype=np.float64
        )
        trend: Any = model.trend_forecaster

        def forecast(y_now: np.ndarray, h: int, level: Levels) -> Forecast:
            n_new = len(y_now) - n_fit
            seas = _season_ahead(components, seasons, n_new + h)
            if n_new == 0:
                res: Forecast = trend.predict(h=h, level=level)
            else:
                x_sa = np.concatenate([adjusted, y_now[n_fit:] - seas[:n_new]])
                res = trend.forward(y=x_sa, h=h, level=level)
            return {k: np.asarray(v) + seas[n_new:] for k, v in res.items()}

        return forecast

    return fit


def auto_ets(
    series: np.ndarray,
    start: pd.Timestamp,
    history_end: int,
    origins: np.ndarray,
    horizons: tuple[int, ...],
    quantiles: tuple[float, ...],
) -> np.ndarray:
    """statsforecast AutoETS (daily season) on 15-minute buckets, refitted daily.

    Args:
        series: Events per minute (only ``series[:o]`` is used at origin ``o``).
        start: Timestamp of minute 0 (sets the calendar days of the refits).
        history_end: Length of the history range.
        origins: Forecast origins, ascending, each >= ``history_end``.
        horizons: Horizons in minutes.
        quantiles: Ascending levels in (0, 1).

    Returns:
        Forecasts, shape ``(len(origins), len(horizons), len(quantiles))``.

    Raises:
        ValueError: On bad input.
    """
    return _bucketed(
        series, start, history_end, origins, horizons, quantiles, _fit_ets, ETS_FIT_WEEKS
    )


def mstl(
    series: np.ndarray,
    start: pd.Timestamp,
    history_end: int,
    origins: np.ndarray,
    horizons: tuple[int, ...],
    quantiles: tuple[float, ...],
) -> np.ndarray:
    """statsforecast MSTL (daily + weekly seasons) on 15-minute buckets, refitted daily.

    Args:
        series: Events per minute (only ``series[:o]`` is used at origin ``o``).
        start: Timestamp of minute 0 (sets the calendar days of the refits).
        history_end: Length of the history range; seasons need two full cycles in it.
        origins: Forecast origins, ascending, each >= ``history_end``.
        horizons: Horizons in minutes.
        quantiles: Ascending levels in (0, 1).

    Returns:
        Forecasts, shape ``(len(origins), len(horizons), len(quantiles))``.

    Raises:
        ValueError: On bad input or under two days of history.
    """
    # -1: an origin off the quarter-hour grid loses up to one partial bucket.
    n_hist = history_end // BUCKET_MIN - 1
    seasons = [p for p in (DAY_BUCKETS, WEEK_BUCKETS) if n_hist >= 2 * p]
    if not seasons:
        raise ValueError(
            f"mstl needs two full days of history for its daily season, got "
            f"{history_end} minutes; use a longer series"
        )
    return _bucketed(
        series,
        start,
        history_end,
        origins,
        horizons,
        quantiles,
        _mstl_fitter(seasons),
        MSTL_FIT_WEEKS,
    )


BASELINES: dict[str, BaselineFn] = {
    "seasonal_naive_day": seasonal_naive_day,
    "seasonal_naive_week": seasonal_naive_week,
    "auto_ets": auto_ets,
    "mstl": mstl,
}
"""The benchmark's baselines by name."""
