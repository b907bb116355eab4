"""Forecast accuracy metrics, exactly as DESIGN.md section 11 defines them.

All functions take per-minute values (events per minute). Rules:

* ``pinball(y, yhat, q)`` is the element-wise quantile loss
  ``max(q * (y - yhat), (q - 1) * (y - yhat))``.
* ``mase_scale(history)`` is the in-sample MAE of the seasonal naive forecast with
  a one-day period: ``mean(|y_t - y_{t-1440}|)`` over ``t = 1440 .. len(history)-1``.
  It needs more than one day of history. A scale of 0 (a history that repeats
  exactly every day, e.g. all zeros) makes MASE undefined, so it raises
  :class:`ValueError` rather than hiding a division by zero behind a floor.
* ``mase(y, median, scale) = mean(|y - median|) / scale``.
* ``wql(y, q10, q50, q90) = 2 * sum_q sum_t pinball_q(y_t, yhat_q,t) / (3 * sum_t |y_t|)``
  for ``q in {0.1, 0.5, 0.9}``. When ``sum_t |y_t| == 0`` (every actual value is 0)
  the ratio is undefined and ``wql`` returns NaN; the benchmark writes it as null.
* ``coverage(y, lo, hi)`` is the share of ``y`` with ``lo <= y <= hi`` (inclusive:
  a forecast of exactly 0 covers an actual 0).
* ``score`` applies these per horizon. Its records hold ``coverage_80`` (inside
  ``[q0.1, q0.9]``) and ``coverage_90`` (inside ``[q0.05, q0.95]``). The benchmark's
  quantile levels stop at 0.05/0.95, so the outer interval is a *90 %* interval and
  is named so; there is no ``coverage_95``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypedDict

import numpy as np

DAY_MINUTES = 1440
"""Seasonal period of the MASE scale (one day of one-minute steps)."""
SCORE_LEVELS = (0.05, 0.1, 0.5, 0.9, 0.95)
"""Quantile levels :func:`score` needs among the forecast's levels."""


class HorizonScore(TypedDict):
    """Scores of one model on one series at one horizon."""

    horizon_min: int
    mase: float
    wql: float
    coverage_80: float
    coverage_90: float


def _pair(y: np.ndarray, other: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(y, dtype=np.float64)
    b = np.asarray(other, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"y has shape {a.shape} but {what} has {b.shape}; pass equal shapes")
    if a.size == 0:
        raise ValueError("y is empty; score at least one value")
    return a, b


def pinball(y: np.ndarray, yhat: np.ndarray, q: float) -> np.ndarray:
    """Element-wise pinball (quantile) loss.

    Args:
        y: Actual values.
        yhat: Forecasts of the ``q`` quantile, same shape as ``y``.
        q: Quantile level in (0, 1).

    Returns:
        ``max(q * (y - yhat), (q - 1) * (y - yhat))`` element-wise, shape of ``y``.

    Raises:
        ValueError: If ``q`` is outside (0, 1) or the shapes differ.
    """
    if not 0 < q < 1:
        raise ValueError(f"quantile level must be in (0, 1), got {q}")
    a, b = _pair(y, yhat, "yhat")
    diff = a - b
    return np.asarray(np.maximum(q * diff, (q - 1) * diff))


def mase_scale(history: np.ndarray, period: int = DAY_MINUTES) -> float:
    """In-sample MAE of the seasonal naive forecast over the history range.

    Args:
        history: Per-minute values of the history range only.
        period: Seasonal lag in steps (one day by default).

    Returns:
        ``mean(|y_t - y_{t-period}|)`` for ``t = period .. len(history) - 1``; > 0.

    Raises:
        ValueError: If the history is not longer than one period, or the scale is 0
            or not finite (MASE would be undefined).
    """
    x = np.asarray(history, dtype=np.float64)
    if x.ndim != 1 or x.size <= period:
        raise ValueError(
            f"the MASE scale needs more than {period} steps of history, got shape "
            f"{x.shape}; use a longer series"
        )
    scale = float(np.mean(np.abs(x[period:] - x[:-period])))
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(
            f"the MASE scale is {scale}: the history repeats exactly every {period} "
            "steps (or is constant), so MASE is undefined; drop this series"
        )
    return scale


def mase(y: np.ndarray, median: np.ndarray, scale: float) -> float:
    """Mean absolute error of the median forecast over the MASE scale.

    Args:
        y: Actual values.
        median: Median forecasts, same shape as ``y``.
        scale: :func:`mase_scale` of the series' history range.

    Returns:
        ``mean(|y - median|) / scale``.

    Raises:
        ValueError: If ``scale`` is not finite and > 0 or the shapes differ.
    """
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be finite and > 0, got {scale}; use mase_scale")
    a, b = _pair(y, median, "median")
    return float(np.mean(np.abs(a - b)) / scale)


def wql(y: np.ndarray, q10: np.ndarray, q50: np.ndarray, q90: np.ndarray) -> float:
    """Weighted quantile loss over the 0.1, 0.5 and 0.9 quantiles.

    Args:
        y: Actual values.
        q10: Forecasts of the 0.1 quantile, same shape as ``y``.
        q50: Forecasts of the median.
        q90: Forecasts of the 0.9 quantile.

    Returns:
        ``2 * sum_q sum_t pinball_q / (3 * sum_t |y|)``; NaN when ``sum_t |y| == 0``.

    Raises:
        ValueError: If the shapes differ.
    """
    a = np.asarray(y, dtype=np.float64)
    total = sum(float(np.sum(pinball(a, f, q))) for q, f in ((0.1, q10), (0.5, q50), (0.9, q90)))
    denom = 3.0 * float(np.sum(np.abs(a)))
    return 2.0 * total / denom if denom > 0 else math.nan


def coverage(y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """Share of actual values inside ``[lo, hi]`` (bounds included).

    Args:
        y: Actual values.
        lo: Lower bounds, same shape as ``y``.
        hi: Upper bounds, same shape as ``y``.

    Returns:
        A share in [0, 1].

    Raises:
        ValueError: If the shapes differ.
    """
    a, low = _pair(y, lo, "lo")
    _, high = _pair(y, hi, "hi")
    return float(np.mean((a >= low) & (a <= high)))


def _level_index(quantiles: Sequence[float], level: float) -> int:
    hits = np.flatnonzero(np.isclose(np.asarray(quantiles, dtype=np.float64), level))
    if hits.size == 0:
        raise ValueError(
            f"quantile level {level} is missing from {tuple(quantiles)}; "
            f"forecast at least the levels {SCORE_LEVELS}"
        )
    return int(hits[0])


def score(
    y: np.ndarray,
    forecasts: np.ndarray,
    quantiles: Sequence[float],
    scale: float,
    horizons: Sequence[int],
) -> list[HorizonScore]:
    """MASE, wQL and interval coverage of quantile forecasts, per horizon.

    Args:
        y: Actual values, shape ``(n_origins, n_horizons)``.
        forecasts: Quantile forecasts, shape ``(n_origins, n_horizons, n_quantiles)``.
        quantiles: Levels of the last axis of ``forecasts``; must include
            :data:`SCORE_LEVELS`.
        scale: :func:`mase_scale` of the series' history range.
        horizons: Horizon in minutes of each column of ``y``.

    Returns:
        One record per horizon, in the order of ``horizons``.

    Raises:
        ValueError: If the shapes disagree or a needed level is missing.
    """
    a = np.asarray(y, dtype=np.float64)
    f = np.asarray(forecasts, dtype=np.float64)
    if a.ndim != 2 or f.shape != (*a.shape, len(quantiles)) or a.shape[1] != len(horizons):
        raise ValueError(
            f"y has shape {a.shape} and forecasts {f.shape}; expected y (n_origins, "
            f"{len(horizons)}) and forecasts (n_origins, {len(horizons)}, {len(quantiles)})"
        )
    i05, i10, i50, i90, i95 = (_level_index(quantiles, q) for q in SCORE_LEVELS)
    out: list[HorizonScore] = []
    for j, h in enumerate(horizons):
        col, fc = a[:, j], f[:, j, :]
        out.append(
            HorizonScore(
                horizon_min=int(h),
                mase=mase(col, fc[:, i50], scale),
                wql=wql(col, fc[:, i10], fc[:, i50], fc[:, i90]),
                coverage_80=coverage(col, fc[:, i10], fc[:, i90]),
                coverage_90=coverage(col, fc[:, i05], fc[:, i95]),
            )
        )
    return out
