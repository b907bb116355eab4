"""The hybrid forecaster (:mod:`models.forecaster`) as a forecast provider of the controllers.

The controllers read :class:`~models.controller.rollout.ForecastArrays`: at origin ``o`` (the
step about to run, decided from ``series[:o]``), horizon ``h`` is the count of step
``o + h - 1``, for per-minute horizons ``1..K`` and levels such as 0.5, 0.9, 0.95, 0.99.

**Horizons.** The hybrid's convention is the same one: its forecast made at the last
observed minute ``ts = o - 1`` for horizon ``h`` is for minute ``ts + h = o + h - 1``
(:mod:`models.forecaster.windows`), and its inputs are the sequence features of ``ts``,
built from ``series[: o]`` only. So hybrid horizon ``h`` *is* control horizon ``h``; no
shift. The hybrid forecasts horizons 1, 5, 15, 30, 60 and 120 minutes; a horizon between
two of them is the linear interpolation of the two calibrated forecasts in count space,
level by level. A weighted mean of two quantile functions is again one (it never crosses
and stays >= 0), it reproduces a level that changes linearly over the gap (a few minutes
up to an hour), and it does not pull the median down as a mean in log space would when the
neighbours differ. The network could be queried at the in-between horizons directly, but
it never trained on them and its conformal offsets exist only for its own horizons.
Horizons outside the hybrid's range (below 1, above 120) are refused.

**Levels.** A level the hybrid has is its own calibrated quantile (per-service offsets for
a service it trained on, pooled offsets otherwise). A level between two of its levels is
interpolated linearly in the level. A level outside its range (above 0.95, below 0.05) is
the nearest hybrid level plus a split-conformal offset on log1p scale, per horizon: the
smallest ``d`` such that ``log1p(y) <= log1p(q_nearest) + d`` for a share ``tau`` of the
calibration range's (origin, actual) pairs, i.e. the level covers ``tau`` there. On log1p
scale one offset fits busy and quiet hours alike (count noise grows with the level). The
tail never moves inside its neighbour (an upper tail stays >= the top level, a lower one
<= the bottom level; where that level already covers more than ``tau`` of the calibration
range, the tail equals it), values are clipped at 0, and the levels never cross. The
calibration range should lie outside the hybrid's training ranges: on minutes it trained
on its errors are smaller than on new ones, and the tails come out too narrow.

**Early origins.** The hybrid trained on windows with at least ``MIN_HISTORY`` (180)
minutes before their last observed minute; an origin ``o < FIRST_ORIGIN`` (181) has less,
so it gets the ``recent`` conformal forecast of :func:`models.controller.providers.
conformal_forecasts` calibrated on the same range (which reads ``series[:o]`` too), and such
calibration origins are left out of the tail offsets. The label stays ``hybrid``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from models.controller.providers import conformal_forecasts
from models.controller.rollout import ForecastArrays
from models.forecaster.train import (
    MIN_HISTORY,
    Forecaster,
    SeriesData,
    TrainConfig,
    TrainReport,
    cut_windows,
    train,
)

LABEL = "hybrid"
FIRST_ORIGIN = MIN_HISTORY + 1
"""First origin the hybrid forecasts itself (its last observed minute has MIN_HISTORY
minutes before it, as its first training windows had)."""
MIN_TAIL_CALIBRATION = 100
"""Calibration origins the conformal offsets of levels outside the hybrid's range need."""

Array = np.ndarray


@dataclass(frozen=True)
class HistorySeries:
    """One series to train on.

    Args:
        name: Series (service) name; keys the forecaster's per-series calibration.
        start: Timestamp of ``series[0]`` (one-minute steps).
        series: Arrivals per minute (NaN where missing).
        train_end: Training windows, their targets included, end before this index.
    """

    name: str
    start: pd.Timestamp
    series: Array
    train_end: int

    def __post_init__(self) -> None:
        if np.ndim(self.series) != 1:
            raise ValueError(f"series {self.name!r} must be one-dimensional")
        if not 0 < self.train_end <= len(self.series):
            raise ValueError(
                f"series {self.name!r}: train_end must be in 1..{len(self.series)}, "
                f"got {self.train_end}"
            )


def train_forecaster(
    histories: Sequence[HistorySeries],
    config: TrainConfig,
    progress: Callable[[int, float, float], None] | None = None,
) -> tuple[Forecaster, TrainReport]:
    """One global hybrid trained on every series' range before its ``train_end``.

    A thin wrapper over :func:`models.forecaster.train.train`: the last
    ``config.holdout_fraction`` of each range picks the checkpoint and calibrates, and a
    series too short to train on is skipped with a warning.

    Args:
        histories: The series, with distinct names.
        config: Training configuration.
        progress: Called after each held-back evaluation with (step, train loss,
            held-back loss).

    Returns:
        The calibrated forecaster and the training report.

    Raises:
        ValueError: If there are no series, names repeat, or none is long enough.
    """
    names = [h.name for h in histories]
    if not names:
        raise ValueError("no series to train on")
    if len(set(names)) != len(names):
        raise ValueError(f"series names must be distinct (they key calibration), got {names}")
    series = [
        SeriesData(h.name, pd.Timestamp(h.start), np.asarray(h.series, float), h.train_end)
        for h in histories
    ]
    return train(series, config, progress=progress)


@dataclass(frozen=True)
class _Plan:
    """How requested horizons and levels come from the hybrid's (index pairs and weights)."""

    h_lo: Array
    h_hi: Array
    h_w: Array
    q_lo: Array
    q_hi: Array
    q_w: Array
    upper: Array  # requested levels above the hybrid's top level
    lower: Array  # ... below its bottom level

    @classmethod
    def make(
        cls,
        own_h: tuple[int, ...],
        own_q: tuple[float, ...],
        horizons: tuple[int, ...],
        quantiles: tuple[float, ...],
    ) -> _Plan:
        h_lo, h_hi, h_w = _brackets(np.asarray(own_h, float), np.asarray(horizons, float))
        q_lo, q_hi, q_w = _brackets(np.asarray(own_q), np.asarray(quantiles))
        q = np.asarray(quantiles)
        return cls(h_lo, h_hi, h_w, q_lo, q_hi, q_w, q > own_q[-1], q < own_q[0])

    def apply(self, fc: Array) -> Array:
        """(n, H_own, Q_own) -> (n, H, Q); tail levels still equal their nearest level."""
        w = self.h_w[None, :, None]
        by_h = fc[:, self.h_lo] * (1.0 - w) + fc[:, self.h_hi] * w
        return by_h[:, :, self.q_lo] * (1.0 - self.q_w) + by_h[:, :, self.q_hi] * self.q_w


def regrid(
    fc: Array,
    own_horizons: tuple[int, ...],
    own_quantiles: tuple[float, ...],
    horizons: tuple[int, ...],
    quantiles: tuple[float, ...],
) -> Array:
    """Forecasts on the hybrid's grid mapped onto other horizons and levels (serving).

    Horizons and levels in between are interpolated as in the module docstring. A level
    outside the hybrid's range takes its nearest level: serving has no calibration range
    for the tail offsets, so it never claims a wider interval than the model gives.

    Args:
        fc: Forecasts, shape (n, len(own_horizons), len(own_quantiles)).
        own_horizons: The hybrid's horizons, ascending.
        own_quantiles: The hybrid's levels, ascending.
        horizons: Wanted horizons, ascending, within the hybrid's range.
        quantiles: Wanted levels, ascending.

    Returns:
        Shape (n, len(horizons), len(quantiles)).

    Raises:
        ValueError: On a shape mismatch or a horizon outside the hybrid's range.
    """
    fc = np.asarray(fc, dtype=np.float64)
    if fc.ndim != 3 or fc.shape[1:] != (len(own_horizons), len(own_quantiles)):
        raise ValueError(
            f"forecasts of shape {fc.shape} do not match {len(own_horizons)} horizons x "
            f"{len(own_quantiles)} levels"
        )
    if not horizons or horizons[0] < own_horizons[0] or horizons[-1] > own_horizons[-1]:
        raise ValueError(
            f"horizons {horizons} must lie in the forecaster's range "
            f"{own_horizons[0]}..{own_horizons[-1]}"
        )
    return _Plan.make(own_horizons, own_quantiles, horizons, quantiles).apply(fc)


def _brackets(own: Array, wanted: Array) -> tuple[Array, Array, Array]:
    """Neighbours in ``own`` (ascending) and the weight of the upper one.

    An exact hit, and a value beyond either end, uses one neighbour with weight 0.
    """
    idx = np.searchsorted(own, wanted)  # own[idx - 1] < wanted <= own[idx]
    hi = np.clip(idx, 0, len(own) - 1)
    lo = np.clip(idx - 1, 0, len(own) - 1)
    lo = np.where(np.isclose(own[hi], wanted), hi, lo)
    span = own[hi] - own[lo]
    w = np.where(span > 0, (wanted - own[lo]) / np.where(span > 0, span, 1.0), 0.0)
    return lo, hi, np.clip(w, 0.0, 1.0)


def _checked(
    forecaster: Forecaster,
    series: Array,
    calib: tuple[int, int],
    evaluate: tuple[int, int],
    horizons: tuple[int, ...],
    quantiles: tuple[float, ...],
    batch: int,
) -> Array:
    x = np.asarray(series, dtype=np.float64)
    if x.ndim != 1 or not np.isfinite(x).all() or (x < 0).any():
        raise ValueError("series must be a one-dimensional array of finite counts >= 0")
    own_h = forecaster.horizons
    if not horizons or list(horizons) != sorted(set(horizons)):
        raise ValueError(f"horizons must be non-empty and strictly ascending, got {horizons}")
    if horizons[0] < own_h[0] or horizons[-1] > own_h[-1]:
        raise ValueError(
            f"horizons must lie in the hybrid's range {own_h[0]}..{own_h[-1]} minutes, "
            f"got {horizons}"
        )
    if not quantiles or list(quantiles) != sorted(set(quantiles)):
        raise ValueError(f"quantiles must be non-empty and strictly ascending, got {quantiles}")
    if not all(0.0 < q < 1.0 for q in quantiles):
        raise ValueError(f"quantile levels must lie in (0, 1), got {quantiles}")
    (c0, c1), (e0, e1) = calib, evaluate
    if not 0 <= e0 < e1 <= len(x):
        raise ValueError(f"evaluate must be a non-empty range inside 0..{len(x)}, got {evaluate}")
    if not 0 <= c0 < c1:
        raise ValueError(f"calib must be a non-empty range of steps >= 0, got {calib}")
    if c1 > e0:
        raise ValueError(
            f"the calibration range {calib} must end at or before the evaluation range "
            f"{evaluate} starts"
        )
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    return x


def _forecast(
    forecaster: Forecaster,
    name: str,
    start: pd.Timestamp,
    x: Array,
    origins: Array,
    plan: _Plan,
    batch: int,
) -> Array:
    """Hybrid forecasts at ``origins`` (all >= 1) mapped onto the requested grid."""
    out = np.empty((len(origins), len(plan.h_w), len(plan.q_w)))
    with torch.inference_mode():
        for lo in range(0, len(origins), batch):
            o = origins[lo : lo + batch]
            # The batch sees the series only up to its last origin (exclusive), and each
            # window only up to its own last observed minute o - 1.
            last = int(o[-1])
            data = SeriesData(name, start, x[:last], last)
            w = cut_windows(data, o - 1, forecaster.horizons, with_targets=False)
            out[lo : lo + len(o)] = plan.apply(forecaster.predict_windows(w))
    return out


def _tail_offsets(
    forecaster: Forecaster,
    name: str,
    start: pd.Timestamp,
    x: Array,
    calib: tuple[int, int],
    horizons: tuple[int, ...],
    quantiles: tuple[float, ...],
    plan: _Plan,
    batch: int,
) -> Array:
    """(H, Q) log1p offsets of the tail levels (0 elsewhere), from the calibration range."""
    # Origins whose every target lies inside the range, as the providers calibrate.
    origins = np.arange(max(calib[0], FIRST_ORIGIN), calib[1] - horizons[-1] + 1)
    if len(origins) < MIN_TAIL_CALIBRATION:
        raise ValueError(
            f"levels outside the hybrid's {forecaster.quantiles[0]}..{forecaster.quantiles[-1]} "
            f"need at least {MIN_TAIL_CALIBRATION} calibration origins >= {FIRST_ORIGIN} "
            f"whose targets lie inside {calib}; got {len(origins)}: "
            "widen the calibration range"
        )
    fc = _forecast(forecaster, name, start, x, origins, plan, batch)
    actual = x[origins[:, None] + np.asarray(horizons)[None, :] - 1]  # (n, H)
    offsets = np.zeros((len(horizons), len(quantiles)))
    for k in np.flatnonzero(plan.upper | plan.lower):
        resid = np.log1p(actual) - np.log1p(fc[:, :, k])
        # The smallest offset with a share >= tau of residuals at or below it.
        offsets[:, k] = np.quantile(resid, quantiles[k], axis=0, method="inverted_cdf")
    return offsets


def hybrid_forecasts(
    forecaster: Forecaster,
    name: str,
    start: pd.Timestamp,
    series: Array,
    calib: tuple[int, int],
    evaluate: tuple[int, int],
    horizons: tuple[int, ...],
    quantiles: tuple[float, ...],
    batch: int = 4096,
) -> ForecastArrays:
    """Per-step quantile forecasts of the hybrid for every origin of ``evaluate``.

    The forecast at origin ``o`` reads only ``series[:o]`` (module docstring for the
    horizon and level mapping and for origins before ``FIRST_ORIGIN``).

    Args:
        forecaster: The trained hybrid.
        name: Series name the forecaster knows (its per-series calibration); an unseen
            name gets the pooled calibration.
        start: Timestamp of ``series[0]`` (time-of-day and week inputs).
        series: Arrivals per minute of the whole trace (finite, >= 0; fill missing minutes
            from the past only, or the fill leaks the future into the forecasts).
        calib: [start, end) steps whose actuals set the offsets of levels outside the
            hybrid's range (and calibrate the early-origin fallback); must end at or
            before ``evaluate`` starts.
        evaluate: [start, end) steps to forecast, inside the series.
        horizons: Per-minute horizons, ascending, within the hybrid's (1..120).
        quantiles: Levels in (0, 1), ascending.
        batch: Origins per network call.

    Returns:
        Forecasts of shape (T, 1, H, Q), non-negative and non-crossing, label ``hybrid``.

    Raises:
        ValueError: On a bad series, horizon, level or range, or a calibration range with
            too few usable origins for the levels that need it.
    """
    x = _checked(forecaster, series, calib, evaluate, horizons, quantiles, batch)
    start = pd.Timestamp(start)
    plan = _Plan.make(forecaster.horizons, forecaster.quantiles, horizons, quantiles)
    e0, e1 = evaluate
    values = np.empty((e1 - e0, len(horizons), len(quantiles)))
    split = min(max(e0, FIRST_ORIGIN), e1)
    if split > e0:
        early = conformal_forecasts(x, calib, (e0, split), horizons, quantiles, "recent")
        values[: split - e0] = early.values[:, 0]
    if split < e1:
        fc = _forecast(forecaster, name, start, x, np.arange(split, e1), plan, batch)
        tails = plan.upper | plan.lower
        if tails.any():
            offsets = _tail_offsets(
                forecaster, name, start, x, calib, horizons, quantiles, plan, batch
            )
            base = fc[:, :, tails]
            moved = np.expm1(np.log1p(base) + offsets[None, :, tails])
            fc[:, :, tails] = np.where(
                plan.upper[tails], np.maximum(moved, base), np.minimum(moved, base)
            )
        values[split - e0 :] = fc
    values = np.maximum.accumulate(np.maximum(values, 0.0), axis=2)
    return ForecastArrays(
        values=values[:, None].astype(np.float32),
        horizons=tuple(horizons),
        quantiles=tuple(quantiles),
        label=LABEL,
    )
