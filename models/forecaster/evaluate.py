"""Scoring the forecaster beside its baselines on a held-back time range.

Shared by the training flow (the promotion gate's evidence) and the forecast benchmark,
so both score exactly alike: the benchmark protocol of :mod:`models.forecaster.protocol`
(hourly origins in the evaluation range, horizons 15, 60 and 120 minutes) and the metrics
of :mod:`models.forecaster.metrics`. Missing minutes are filled by linear interpolation
first, as the protocol does for traces, so every model sees the same values.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from models.forecaster import metrics, protocol
from models.forecaster.baselines import BASELINES
from models.forecaster.train import Forecaster, SeriesData, cut_windows

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

EVAL_HORIZONS: tuple[int, ...] = protocol.HORIZONS
LEVELS: tuple[float, ...] = metrics.SCORE_LEVELS
GATE_BASELINES: tuple[str, ...] = ("seasonal_naive_day", "seasonal_naive_week")

Array = np.ndarray
FrameModel = Callable[[pd.DataFrame], pd.DataFrame]


def interpolated(values: Array) -> Array:
    """Missing minutes filled linearly (edges by the nearest value; all-missing -> 0)."""
    x = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(x)
    if ok.all():
        return x
    if not ok.any():
        return np.zeros_like(x)
    idx = np.arange(len(x))
    out = x.copy()
    out[~ok] = np.interp(idx[~ok], idx[ok], x[ok])
    return out


def prepare_holdout(
    series: SeriesData, max_origins: int = protocol.MAX_ORIGINS
) -> protocol.PreparedSeries | None:
    """The series with its evaluation origins after ``series.end``; None if there are none."""
    x = interpolated(series.values)
    if series.end <= 0 or series.end >= len(x):
        return None
    origins = protocol.hourly_origins(
        series.start, len(x), series.end, max(EVAL_HORIZONS), max_origins
    )
    if origins.size == 0:
        return None
    return protocol.PreparedSeries(series.name, series.start, x, series.end, origins, False)


def _pick_levels(forecast: Array, quantiles: Sequence[float]) -> Array:
    idx = []
    for q in LEVELS:
        hits = [i for i, level in enumerate(quantiles) if math.isclose(level, q)]
        if not hits:
            raise ValueError(f"the forecast lacks quantile level {q}")
        idx.append(hits[0])
    return forecast[..., idx]


def _as_series(
    p: protocol.PreparedSeries, context: Mapping[str, SeriesData] | None
) -> SeriesData:
    """The prepared values with the calendar and criticality the model trained with."""
    known = (context or {}).get(p.name)
    return SeriesData(
        p.name,
        p.start,
        np.asarray(p.series),
        len(p.series),
        calendar=None if known is None else known.calendar,
        criticality=None if known is None else known.criticality,
    )


def hybrid_forecasts(
    forecaster: Forecaster,
    prepared: Sequence[protocol.PreparedSeries],
    context: Mapping[str, SeriesData] | None = None,
) -> dict[str, Array]:
    """The hybrid's forecasts at each series' origins: (n, len(EVAL_HORIZONS), len(LEVELS)).

    Args:
        forecaster: The model.
        prepared: Series and origins.
        context: The training series by name, whose calendar (known future) and
            criticality the forecasts use as training did; None for bare traces.
    """
    missing = [h for h in EVAL_HORIZONS if h not in forecaster.horizons]
    if missing:
        raise ValueError(f"the forecaster has no horizons {missing}")
    cols = [forecaster.horizons.index(h) for h in EVAL_HORIZONS]
    out = {}
    for p in prepared:
        data = _as_series(p, context)
        w = cut_windows(data, p.origins - 1, forecaster.horizons, with_targets=False)
        fc = forecaster.predict_windows(w)[:, cols, :]
        out[p.name] = _pick_levels(fc, forecaster.quantiles)
    return out


def frame_forecasts(
    predict: FrameModel,
    prepared: Sequence[protocol.PreparedSeries],
    horizons: Sequence[int],
    context: Mapping[str, SeriesData] | None = None,
) -> dict[str, Array]:
    """Forecasts of a model behind the table interface (e.g. the registered champion).

    Args:
        predict: Takes the forecaster input table, returns the output table
            (:mod:`models.forecaster.package`).
        prepared: Series and origins.
        horizons: The model's horizons (the calendar columns hold one value per horizon).
        context: Training series by name, for their calendar and criticality.

    Returns:
        Per series, (n, len(EVAL_HORIZONS), len(LEVELS)).
    """
    from models.forecaster.package import CALENDAR_COLUMNS, column_name

    out = {}
    for p in prepared:
        data = _as_series(p, context)
        w = cut_windows(data, p.origins - 1, tuple(horizons), with_targets=False)
        frame = pd.DataFrame(
            {
                "service_id": [p.name] * len(w),
                "ts": pd.to_datetime(w.ts_minute * 60, unit="s"),
                "recent_events_120m": list(w.recent.astype(np.float64)),
                "hourly_events_7d": list(w.hourly.astype(np.float64)),
            }
        )
        if w.calendar is not None:
            for j, column in enumerate(CALENDAR_COLUMNS):
                frame[column] = list(w.calendar[:, :, j])
        if w.criticality is not None:
            frame["criticality"] = w.criticality
        result = predict(frame)
        cube = np.stack(
            [
                np.stack([result[column_name(h, q)].to_numpy(float) for q in LEVELS], axis=-1)
                for h in EVAL_HORIZONS
            ],
            axis=1,
        )
        out[p.name] = cube
    return out


def baseline_forecasts(
    prepared: Sequence[protocol.PreparedSeries], names: Sequence[str] = GATE_BASELINES
) -> dict[str, dict[str, Array]]:
    """``{baseline: {series: forecasts}}`` for the named baselines.

    A baseline that cannot forecast every series (seasonal naive week needs more than a
    week of history) is left out with a warning rather than scored on some series only,
    so every mean compares the same series.
    """
    out: dict[str, dict[str, Array]] = {}
    for name in names:
        fn = BASELINES[name]
        try:
            out[name] = {
                p.name: fn(p.series, p.start, p.history_end, p.origins, EVAL_HORIZONS, LEVELS)
                for p in prepared
            }
        except ValueError as exc:
            log.warning("baseline %s left out of the evaluation: %s", name, exc)
    return out


@dataclass
class Evaluation:
    """Scores of several models on the same series, origins and horizons."""

    records: list[dict[str, Any]] = field(default_factory=list)

    def models(self) -> list[str]:
        """Model names in first-seen order."""
        return list(dict.fromkeys(r["model"] for r in self.records))

    def mean(self, model: str, metric: str = "wql") -> float:
        """Mean of ``metric`` over the model's series and horizons (NaN ignored)."""
        vals = [r[metric] for r in self.records if r["model"] == model]
        vals = [v for v in vals if v is not None and not math.isnan(v)]
        if not vals:
            raise ValueError(f"no {metric} scores for model {model!r}")
        return float(np.mean(vals))

    def metrics_for(self, model: str) -> dict[str, float]:
        """Flat ``{metric_h<h>: mean over series}`` for logging (e.g. ``wql_h15``)."""
        out: dict[str, float] = {}
        for h in EVAL_HORIZONS:
            rows = [r for r in self.records if r["model"] == model and r["horizon_min"] == h]
            for m in ("mase", "wql", "coverage_80", "coverage_90"):
                vals = [r[m] for r in rows if not math.isnan(r[m])]
                if vals:
                    out[f"{m}_h{h}"] = float(np.mean(vals))
        return out

    def markdown(self) -> str:
        """Table of mean scores per model and horizon."""
        lines = [
            "| model | horizon min | MASE | wQL | coverage 80 | coverage 90 |",
            "|---|---|---|---|---|---|",
        ]
        for model in self.models():
            m = self.metrics_for(model)
            for h in EVAL_HORIZONS:
                lines.append(
                    f"| {model} | {h} | {m.get(f'mase_h{h}', math.nan):.3f} "
                    f"| {m.get(f'wql_h{h}', math.nan):.3f} "
                    f"| {m.get(f'coverage_80_h{h}', math.nan):.3f} "
                    f"| {m.get(f'coverage_90_h{h}', math.nan):.3f} |"
                )
        return "\n".join(lines)


def evaluate(
    prepared: Sequence[protocol.PreparedSeries], forecasts: Mapping[str, Mapping[str, Array]]
) -> Evaluation:
    """Score every model's forecasts on every series.

    Args:
        prepared: Series with history_end and origins.
        forecasts: ``{model: {series: (n, len(EVAL_HORIZONS), len(LEVELS))}}``.

    Returns:
        One record per (series, model, horizon).
    """
    ev = Evaluation()
    for p in prepared:
        y = protocol.targets(p.series, p.origins, EVAL_HORIZONS)
        scale = metrics.mase_scale(p.series[: p.history_end])
        for model, per_series in forecasts.items():
            for rec in metrics.score(y, per_series[p.name], LEVELS, scale, EVAL_HORIZONS):
                ev.records.append({"series": p.name, "model": model, **rec})
    return ev


def plot_forecasts(prepared: protocol.PreparedSeries, forecast: Array, horizon: int = 60) -> Figure:
    """Actual minutes of the evaluation range and one horizon's median and bands."""
    from matplotlib.figure import Figure

    j = EVAL_HORIZONS.index(horizon)
    fig = Figure(figsize=(10, 3.2))
    ax = fig.add_subplot()
    lo, hi = prepared.origins.min(), prepared.origins.max() + horizon
    t = pd.date_range(prepared.start, periods=len(prepared.series), freq="min")
    ax.plot(t[lo:hi], prepared.series[lo:hi], lw=0.5, color="0.55", label="actual")
    at = t[prepared.origins + horizon - 1]
    ax.fill_between(at, forecast[:, j, 0], forecast[:, j, -1], alpha=0.2, label="5-95%")
    ax.fill_between(at, forecast[:, j, 1], forecast[:, j, -2], alpha=0.3, label="10-90%")
    ax.plot(at, forecast[:, j, LEVELS.index(0.5)], lw=1.0, label="median")
    ax.set_title(f"{prepared.name}: {horizon}-minute-ahead forecast")
    ax.set_ylabel("events / min")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    return fig
