"""The forecasting benchmark protocol: which series, which origins, which targets.

Every model (the baselines here and the learned hybrid) is scored on the same
:class:`PreparedSeries`, built by these pure functions. Rules:

* **Series.** Events per minute as float64, with the timestamp of its first minute.
  A trace file is loaded with ``load_trace(path, mode="even")``: 5- and 30-minute
  counts are spread evenly over their minutes, one-minute data is taken as it is,
  gaps are interpolated (see :mod:`simulator.traces`). Synthetic services come from
  the project's own generator (:mod:`simulator.synthetic`) with a fixed seed.
* **Split.** The first ``round(0.7 * T)`` minutes are the history range (the same
  index as :meth:`Trace.split`); the rest is the evaluation range.
* **Origins.** An origin ``o`` is an absolute minute index; a forecast made at ``o``
  sees only ``series[:o]``, and horizon ``h`` forecasts ``series[o + h - 1]``.
  Origins are the minutes on a whole clock hour (timestamp minute 0) with
  ``o >= history_end`` and ``o + max(horizons) - 1 < T``. If there are more than
  ``max_origins`` (300), ``max_origins`` of them are taken evenly spaced
  (``np.linspace`` over their positions, rounded, duplicates dropped).
* **Forecasts** are arrays ``(n_origins, n_horizons, n_quantiles)``: levels
  ascending, values non-negative and sorted along the last axis
  (:func:`check_forecasts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from simulator.traces import TraceError, load_trace

QUANTILES: tuple[float, ...] = (0.05, 0.1, 0.5, 0.9, 0.95)
"""Quantile levels every model forecasts in the benchmark."""
HORIZONS: tuple[int, ...] = (15, 60, 120)
"""Horizons in minutes the benchmark scores."""
HISTORY_FRACTION = 0.7
MAX_ORIGINS = 300
SYNTHETIC_DAYS = 35
SYNTHETIC_SEED = 11


@dataclass(frozen=True, eq=False)
class PreparedSeries:
    """One series ready for the benchmark.

    ``eq=False``: element-wise array comparison in a generated ``__eq__`` is
    ambiguous; compare fields explicitly.

    Attributes:
        name: Trace file stem, or ``synthetic_<service_id>``.
        start: Timestamp of ``series[0]`` (naive, on a whole minute).
        series: Events per minute, float64, shape ``(T,)``.
        history_end: Length of the history range; models may fit on
            ``series[:history_end]`` plus what is observed before each origin.
        origins: Forecast origins (absolute indices, ascending), all in the
            evaluation range.
        is_real: True for a real trace, False for a synthetic service.
    """

    name: str
    start: pd.Timestamp
    series: np.ndarray
    history_end: int
    origins: np.ndarray
    is_real: bool


def hourly_origins(
    start: pd.Timestamp,
    n_steps: int,
    history_end: int,
    max_horizon: int,
    max_origins: int = MAX_ORIGINS,
) -> np.ndarray:
    """Whole-hour origins in the evaluation range whose longest horizon fits.

    Args:
        start: Timestamp of minute 0 (on a whole minute).
        n_steps: Length of the series in minutes.
        history_end: First minute of the evaluation range.
        max_horizon: Longest horizon in minutes.
        max_origins: Keep at most this many, evenly spaced.

    Returns:
        Ascending int64 minute indices (possibly empty).

    Raises:
        ValueError: If ``max_horizon`` or ``max_origins`` is < 1.
    """
    if max_horizon < 1 or max_origins < 1:
        raise ValueError(
            f"max_horizon and max_origins must be >= 1, got {max_horizon}, {max_origins}"
        )
    first_hour = (60 - pd.Timestamp(start).minute) % 60
    candidates = np.arange(first_hour, n_steps, 60, dtype=np.int64)
    keep = (candidates >= history_end) & (candidates + max_horizon - 1 < n_steps)
    candidates = candidates[keep]
    if candidates.size > max_origins:
        picks = np.unique(np.round(np.linspace(0, candidates.size - 1, max_origins)).astype(int))
        candidates = candidates[picks]
    return candidates


def prepare_series(
    name: str,
    start: pd.Timestamp,
    series: np.ndarray,
    *,
    is_real: bool,
    horizons: Sequence[int] = HORIZONS,
    max_origins: int = MAX_ORIGINS,
    history_fraction: float = HISTORY_FRACTION,
) -> PreparedSeries:
    """Split a per-minute series and pick its origins (module docstring rules).

    Args:
        name: Series name.
        start: Timestamp of the first minute.
        series: Events per minute, finite and >= 0.
        is_real: Whether it is a real trace.
        horizons: Horizons in minutes; the longest must fit after every origin.
        max_origins: At most this many origins.
        history_fraction: Share of the minutes in the history range.

    Returns:
        The prepared series.

    Raises:
        ValueError: If the series is invalid or too short to have an origin.
    """
    x = np.array(series, dtype=np.float64)
    if x.ndim != 1 or not np.all(np.isfinite(x)) or np.any(x < 0):
        raise ValueError(f"series {name!r}: must be 1-D, finite and >= 0")
    if not 0 < history_fraction < 1:
        raise ValueError(f"history_fraction must be in (0, 1), got {history_fraction}")
    if not horizons or min(horizons) < 1:
        raise ValueError(f"horizons must be >= 1 minute, got {tuple(horizons)}")
    history_end = round(len(x) * history_fraction)  # the index Trace.split uses
    origins = hourly_origins(start, len(x), history_end, max(horizons), max_origins)
    if origins.size == 0:
        raise ValueError(
            f"series {name!r}: {len(x)} minutes leave no whole-hour origin in the "
            f"evaluation range with {max(horizons)} minutes after it; use a longer series"
        )
    x.flags.writeable = False
    origins.flags.writeable = False
    return PreparedSeries(name, pd.Timestamp(start), x, history_end, origins, is_real)


def prepare_trace(
    path: Path,
    *,
    horizons: Sequence[int] = HORIZONS,
    max_origins: int = MAX_ORIGINS,
    history_fraction: float = HISTORY_FRACTION,
) -> PreparedSeries:
    """Load a trace CSV with ``mode="even"`` and prepare it.

    Args:
        path: ``timestamp,value`` CSV (see :mod:`simulator.traces`).
        horizons: Horizons in minutes.
        max_origins: At most this many origins.
        history_fraction: Share of the minutes in the history range.

    Returns:
        The prepared series, named after the file stem, ``is_real=True``.

    Raises:
        TraceError: If the file is invalid or too short.
    """
    trace = load_trace(Path(path), mode="even")
    try:
        return prepare_series(
            trace.name,
            trace.start,
            trace.counts,
            is_real=True,
            horizons=horizons,
            max_origins=max_origins,
            history_fraction=history_fraction,
        )
    except ValueError as exc:
        raise TraceError(f"{path}: {exc}") from exc


def prepare_synthetic(
    *,
    days: int = SYNTHETIC_DAYS,
    seed: int = SYNTHETIC_SEED,
    horizons: Sequence[int] = HORIZONS,
    max_origins: int = MAX_ORIGINS,
    history_fraction: float = HISTORY_FRACTION,
) -> list[PreparedSeries]:
    """The project's synthetic services (one per default profile), prepared.

    Args:
        days: Days generated per service.
        seed: Root seed of :func:`simulator.synthetic.generate` (deterministic).
        horizons: Horizons in minutes.
        max_origins: At most this many origins per service.
        history_fraction: Share of the minutes in the history range.

    Returns:
        One series per service of :func:`simulator.synthetic.default_services`,
        named ``synthetic_<service_id>``, ``is_real=False``; the observed
        ``events_in`` counts (noise included), not the noiseless rates.
    """
    from simulator.synthetic import SyntheticConfig, generate, to_traces

    traces = to_traces(generate(SyntheticConfig(days=days, seed=seed)))
    return [
        prepare_series(
            f"synthetic_{t.name}",
            t.start,
            t.counts,
            is_real=False,
            horizons=horizons,
            max_origins=max_origins,
            history_fraction=history_fraction,
        )
        for t in traces
    ]


def origin_days(start: pd.Timestamp, origins: np.ndarray) -> np.ndarray:
    """Calendar day of each origin, counted from the day of ``start``.

    Args:
        start: Timestamp of minute 0.
        origins: Minute indices.

    Returns:
        int64 day numbers (0 = the day ``start`` falls on); models that refit once a
        day group origins by them.
    """
    ts = pd.Timestamp(start)
    return (ts.hour * 60 + ts.minute + np.asarray(origins, dtype=np.int64)) // 1440


def targets(series: np.ndarray, origins: np.ndarray, horizons: Sequence[int]) -> np.ndarray:
    """The actual values each forecast is scored against.

    Args:
        series: Events per minute.
        origins: Forecast origins (absolute indices).
        horizons: Horizons in minutes.

    Returns:
        ``series[o + h - 1]`` for every origin and horizon, shape
        ``(n_origins, n_horizons)``.

    Raises:
        ValueError: If a target falls outside the series.
    """
    x = np.asarray(series, dtype=np.float64)
    idx = np.asarray(origins, dtype=np.int64)[:, None] + np.asarray(horizons)[None, :] - 1
    if idx.size and (idx.min() < 0 or idx.max() >= len(x)):
        raise ValueError(
            f"targets reach minute {int(idx.max())} but the series has {len(x)}; "
            "drop origins whose longest horizon does not fit"
        )
    return x[idx]


def check_forecasts(
    forecasts: np.ndarray,
    n_origins: int,
    horizons: Sequence[int],
    quantiles: Sequence[float],
    who: str = "model",
) -> np.ndarray:
    """Check a model's output against the forecast conventions.

    Args:
        forecasts: The model's output.
        n_origins: Expected number of origins.
        horizons: Expected horizons.
        quantiles: Expected levels.
        who: Name used in the error message.

    Returns:
        The forecasts as float64.

    Raises:
        ValueError: On a wrong shape, non-finite or negative values, or crossing
            quantiles.
    """
    f = np.asarray(forecasts, dtype=np.float64)
    want = (n_origins, len(horizons), len(quantiles))
    if f.shape != want:
        raise ValueError(f"{who}: forecasts have shape {f.shape}, expected {want}")
    if not np.all(np.isfinite(f)) or np.any(f < 0):
        raise ValueError(f"{who}: forecasts must be finite and >= 0 (clip at 0)")
    if np.any(np.diff(f, axis=2) < 0):
        raise ValueError(f"{who}: quantiles cross; sort them along the last axis")
    return f
