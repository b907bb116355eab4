"""Anomaly score: how far an observation fell outside the interval forecast for it.

``score = max(y - hi, lo - y, 0) / width`` with ``[lo, hi]`` the calibrated 5%..95%
interval forecast ``lead`` minutes before and ``width = max(hi - lo, WIDTH_FLOOR * s)``
(``s`` the service's scale, so a near-zero-width interval of an idle service cannot turn
one stray event into a huge score). 0 means inside the interval; 1 means outside by as
much as the interval is wide. The score is NaN when the observation is missing.

Live scoring needs no stored forecasts: :func:`latest_scores` rebuilds the inputs as they
were ``lead`` minutes ago from today's sequence features (:func:`windows.shift_back`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.forecaster.train import Forecaster
from models.forecaster.windows import build_inputs, shift_back

WIDTH_FLOOR = 0.05
"""Smallest interval width, as a share of the scale."""
DEFAULT_LEAD = 15
"""Minutes between the forecast and the observation it is scored against."""
LOW, HIGH = 0.05, 0.95

Array = np.ndarray


def anomaly_score(y: Array, lo: Array, hi: Array, scale: Array) -> Array:
    """Scaled exceedance of the interval (module docstring); NaN where ``y`` is NaN."""
    y = np.asarray(y, dtype=np.float64)
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    width = np.maximum(hi - lo, WIDTH_FLOOR * np.asarray(scale, dtype=np.float64))
    width = np.maximum(width, 1e-9)
    out = np.maximum(np.maximum(y - hi, lo - y), 0.0) / width
    return np.where(np.isnan(y), np.nan, out)


def latest_scores(
    forecaster: Forecaster,
    recent: Array,
    hourly: Array,
    ts_minute: Array,
    names: Sequence[str | None],
    lead: int = DEFAULT_LEAD,
) -> Array:
    """Score each row's newest minute against the forecast made ``lead`` minutes before.

    Args:
        forecaster: A forecaster whose horizons include ``lead`` and whose quantiles
            include 0.05 and 0.95.
        recent: (n, 120) recent minutes (last = the minute scored).
        hourly: (n, 168) hourly sums.
        ts_minute: (n,) last observed minute.
        names: Service of each row (per-service calibration).
        lead: Minutes between forecast and observation.

    Returns:
        (n,) scores.
    """
    if lead not in forecaster.horizons:
        raise ValueError(f"lead {lead} is not one of the model's horizons {forecaster.horizons}")
    qs = forecaster.quantiles
    if LOW not in qs or HIGH not in qs:
        raise ValueError(f"the model's quantiles {qs} must include {LOW} and {HIGH}")
    rec, hrs, ts = shift_back(recent, hourly, ts_minute, lead)
    inputs = build_inputs(rec, hrs, ts, forecaster.horizons)
    fc = forecaster.predict(inputs, list(names))
    j = forecaster.horizons.index(lead)
    lo = fc[:, j, qs.index(LOW)]
    hi = fc[:, j, qs.index(HIGH)]
    y = np.asarray(recent, dtype=np.float64)[:, -1]
    return anomaly_score(y, lo, hi, inputs.scale)


def window_detection(scores: Array, in_window: Array, threshold: float = 1.0) -> dict[str, float]:
    """How well scores separate labelled anomaly windows from the rest.

    Args:
        scores: Anomaly score per scored point.
        in_window: True where the point lies in a labelled window.
        threshold: Score above which a point is flagged.

    Returns:
        ``auc`` (probability a random in-window point outscores a random other point,
        ties half), ``flag_rate_in`` and ``flag_rate_out`` (share of points flagged in
        and out of windows), ``mean_in`` and ``mean_out``.
    """
    s = np.asarray(scores, dtype=np.float64)
    w = np.asarray(in_window, dtype=bool)
    ok = ~np.isnan(s)
    s, w = s[ok], w[ok]
    if not w.any() or w.all():
        raise ValueError("need scored points both inside and outside the windows")
    from scipy.stats import rankdata

    ranks = rankdata(s)
    n_in, n_out = int(w.sum()), int((~w).sum())
    auc = (ranks[w].sum() - n_in * (n_in + 1) / 2) / (n_in * n_out)
    return {
        "auc": float(auc),
        "flag_rate_in": float((s[w] > threshold).mean()),
        "flag_rate_out": float((s[~w] > threshold).mean()),
        "mean_in": float(s[w].mean()),
        "mean_out": float(s[~w].mean()),
    }
