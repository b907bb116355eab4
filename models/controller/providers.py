"""Forecast providers for the `predictive` rule until the learned forecaster exists.

Each provider turns a service's per-minute arrival series into quantile forecasts
for every step of an evaluation range, looking only at minutes before the step
(the observed past). The point forecast is:

* ``recent``: the mean of the last 5 observed minutes (persistence);
* ``seasonal_day``: the mean of the 5 minutes around the same minute one day before
  the forecast target, scaled by how the last hour compares with the same hour a
  day earlier (a level-adjusted seasonal naive forecast);
* ``seasonal_week``: the same with one week.

Quantiles come from split-conformal calibration: on the calibration range the
residuals ``log1p(actual) - log1p(point)`` per horizon give empirical quantiles,
which are added back to ``log1p(point)``. So an interval is as wide as the
provider's past errors say it must be, per horizon.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from models.controller.rollout import ForecastArrays

ProviderName = Literal["recent", "seasonal_day", "seasonal_week"]
PROVIDERS: tuple[ProviderName, ...] = ("recent", "seasonal_day", "seasonal_week")
_PERIOD = {"seasonal_day": 1440, "seasonal_week": 10080}
_SMOOTH = 5  # minutes averaged, so a single noisy minute does not drive the forecast
_LEVEL = 60  # minutes compared for the level adjustment


def _rolling_mean(x: np.ndarray, width: int) -> np.ndarray:
    """Mean of ``x[i - width + 1 .. i]`` at i (shorter windows at the start)."""
    cum = np.concatenate([[0.0], np.cumsum(x)])
    i = np.arange(len(x))
    lo = np.maximum(i + 1 - width, 0)
    return np.asarray((cum[i + 1] - cum[lo]) / (i + 1 - lo))


def point_forecasts(
    series: np.ndarray, origins: np.ndarray, horizons: tuple[int, ...], provider: ProviderName
) -> np.ndarray:
    """Point forecasts made at each origin for each horizon.

    Args:
        series: Arrivals per minute of the whole trace, shape (N,).
        origins: Absolute indices of the steps about to run; only ``series[:origin]``
            is used for a forecast made at ``origin``.
        horizons: Horizon h forecasts step ``origin + h - 1``.
        provider: Which point forecast (module docstring).

    Returns:
        Shape (len(origins), len(horizons)); NaN where the past is too short.
    """
    x = np.asarray(series, dtype=np.float64)
    recent = _rolling_mean(x, _SMOOTH)  # recent[i]: mean of minutes i-4..i
    out = np.full((len(origins), len(horizons)), np.nan)
    last = origins - 1
    valid_last = last >= 0
    if provider == "recent":
        val = np.where(valid_last, recent[np.clip(last, 0, None)], np.nan)
        out[:] = val[:, None]
        return out
    period = _PERIOD[provider]
    hour = _rolling_mean(x, _LEVEL)
    for j, h in enumerate(horizons):
        target = origins + h - 1
        centre = target - period + _SMOOTH // 2  # window centred on the same minute
        ok = valid_last & (centre >= 0) & (centre < last + 1) & (last - period >= 0)
        c = np.clip(centre, 0, len(x) - 1)
        lvl_now = hour[np.clip(last, 0, None)]
        lvl_then = hour[np.clip(last - period, 0, None)]
        # Level adjustment, bounded so an outage a period ago cannot blow it up.
        ratio = np.clip((lvl_now + 1.0) / (lvl_then + 1.0), 0.5, 2.0)
        out[:, j] = np.where(ok, recent[c] * ratio, np.nan)
    return out


def conformal_forecasts(
    series: np.ndarray,
    calib: tuple[int, int],
    evaluate: tuple[int, int],
    horizons: tuple[int, ...],
    quantiles: tuple[float, ...],
    provider: ProviderName,
) -> ForecastArrays:
    """Quantile forecasts for every step of ``evaluate``, calibrated on ``calib``.

    Args:
        series: Arrivals per minute of the whole trace.
        calib: [start, end) absolute step range whose residuals set the quantiles;
            it must end at or before the evaluation range starts.
        evaluate: [start, end) absolute step range to forecast.
        horizons: Horizons in steps.
        quantiles: Quantile levels.
        provider: Point forecast.

    Returns:
        Forecasts of shape (T, 1, H, Q); where the past is too short for a seasonal
        provider, the ``recent`` point forecast stands in.
    """
    if calib[1] > evaluate[0]:
        raise ValueError("the calibration range must end before the evaluation range starts")
    x = np.asarray(series, dtype=np.float64)
    c_orig = np.arange(calib[0], max(calib[0], calib[1] - max(horizons) + 1))
    if len(c_orig) < 100:
        raise ValueError("the calibration range is too short for conformal quantiles")
    pts = _with_fallback(x, c_orig, horizons, provider)
    actual = np.stack([x[c_orig + h - 1] for h in horizons], axis=1)
    resid = np.log1p(actual) - np.log1p(pts)
    offsets = np.nanquantile(resid, np.array(quantiles), axis=0).T  # (H, Q)
    e_orig = np.arange(evaluate[0], evaluate[1])
    e_pts = _with_fallback(x, e_orig, horizons, provider)
    values = np.expm1(np.log1p(e_pts)[:, :, None] + offsets[None, :, :])
    values = np.maximum.accumulate(np.maximum(values, 0.0), axis=2)  # non-crossing
    return ForecastArrays(
        values=values[:, None, :, :].astype(np.float32),
        horizons=horizons,
        quantiles=quantiles,
        label=f"{provider}+conformal",
    )


def _with_fallback(
    x: np.ndarray, origins: np.ndarray, horizons: tuple[int, ...], provider: ProviderName
) -> np.ndarray:
    pts = point_forecasts(x, origins, horizons, provider)
    if provider != "recent":
        fallback = point_forecasts(x, origins, horizons, "recent")
        pts = np.where(np.isnan(pts), fallback, pts)
    # Before any minute is observed there is nothing to forecast from: assume 0.
    return np.nan_to_num(pts, nan=0.0)
