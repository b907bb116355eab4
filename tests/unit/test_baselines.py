"""Baseline forecasters: exactness, history-only quantiles, no look-ahead, shapes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.forecaster import baselines
from models.forecaster.baselines import BASELINES, seasonal_naive_day, seasonal_naive_week
from models.forecaster.metrics import mase_scale, score
from models.forecaster.protocol import HORIZONS, QUANTILES, prepare_series, targets

START = pd.Timestamp("2026-01-05 00:00")  # a Monday, on a whole hour


def _seasonal(days: int, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    t = np.arange(days * 1440)
    daily = 100 + 50 * np.sin(2 * np.pi * t / 1440) + 20 * np.sin(2 * np.pi * t / 360)
    rng = np.random.default_rng(seed)
    return np.asarray(np.maximum(daily + rng.normal(0, noise, t.size), 0.0))


def _run(name: str, x: np.ndarray, history_end: int, origins: np.ndarray) -> np.ndarray:
    return BASELINES[name](x, START, history_end, origins, HORIZONS, QUANTILES)


def test_registry_names() -> None:
    assert list(BASELINES) == ["seasonal_naive_day", "seasonal_naive_week", "auto_ets", "mstl"]


@pytest.mark.parametrize(
    ("fn", "period"), [(seasonal_naive_day, 1440), (seasonal_naive_week, 10080)]
)
def test_seasonal_naive_reproduces_a_periodic_series(fn: baselines.BaselineFn, period: int) -> None:
    rng = np.random.default_rng(1)
    x = np.tile(rng.uniform(0, 100, period), 3)
    ps = prepare_series("p", START, x, is_real=False)
    f = fn(ps.series, START, ps.history_end, ps.origins, HORIZONS, QUANTILES)
    y = targets(ps.series, ps.origins, HORIZONS)
    # Zero residuals in the history: every quantile is the exact value.
    np.testing.assert_array_equal(f, np.repeat(y[:, :, None], len(QUANTILES), axis=2))


def test_seasonal_naive_quantiles_come_from_history_only() -> None:
    x = 1000 + _seasonal(12, noise=5.0)  # far from 0, so nothing is clipped
    ps = prepare_series("p", START, x, is_real=False, max_origins=20)
    o, h_end = ps.origins, ps.history_end
    target = o[:, None] + np.array(HORIZONS)[None, :] - 1

    def offsets(series: np.ndarray) -> np.ndarray:
        f = seasonal_naive_day(series, START, h_end, o, HORIZONS, QUANTILES)
        return f - series[target - 1440][:, :, None]

    changed = x.copy()
    changed[h_end:] *= 3.0  # a different evaluation range
    resid = x[1440:h_end] - x[: h_end - 1440]
    np.testing.assert_allclose(offsets(x), offsets(changed))
    np.testing.assert_allclose(offsets(x)[0, 0], np.quantile(resid, QUANTILES))


# Fast for every baseline: 11 days (the weekly naive needs > 7 days of history),
# two origins on the same day so AutoETS and MSTL fit once and update once.
LOOKAHEAD_X = _seasonal(11, noise=3.0, seed=2)
LOOKAHEAD_END = round(len(LOOKAHEAD_X) * 0.7)
LOOKAHEAD_ORIGINS = np.array([11100 + 60, 11100 + 300])  # 2026-01-12 18:00 and 22:00


@pytest.mark.parametrize(
    "name",
    [
        "seasonal_naive_day",
        "seasonal_naive_week",
        "mstl",
        pytest.param("auto_ets", marks=pytest.mark.slow),
    ],
)
def test_no_look_ahead(name: str) -> None:
    x, o = LOOKAHEAD_X, LOOKAHEAD_ORIGINS
    base = _run(name, x, LOOKAHEAD_END, o)
    assert base.shape == (2, len(HORIZONS), len(QUANTILES))
    assert np.all(base >= 0) and np.all(np.diff(base, axis=2) >= 0)
    for i, origin in enumerate(o):
        changed = x.copy()
        changed[origin:] = np.random.default_rng(9).uniform(0, 1000, len(x) - origin)
        got = _run(name, changed, LOOKAHEAD_END, o)
        # The forecast at this origin and every earlier one is unchanged.
        np.testing.assert_array_equal(got[: i + 1], base[: i + 1])


def test_bucket_driver_refits_daily_and_sees_only_the_past() -> None:
    # A fake model records what it was fitted on and what it forecast from.
    fits: list[int] = []
    seen: list[np.ndarray] = []

    def fit(y: np.ndarray) -> baselines._Fitted:
        fits.append(len(y))

        def forecast(y_now: np.ndarray, h: int, level: list[int | float]) -> dict[str, np.ndarray]:
            seen.append(y_now.copy())
            last = np.full(h, y_now[-1])
            return {"mean": last, **{f"lo-{lv}": last - lv for lv in level}} | {
                f"hi-{lv}": last + lv for lv in level
            }

        return forecast

    x = np.arange(4 * 1440, dtype=float)
    origins = np.array([3000, 3060, 3120, 4320 + 60])  # day 2 (three), day 3 (one)
    out = baselines._bucketed(x, START, 2880, origins, HORIZONS, QUANTILES, fit, fit_weeks=4)
    assert len(fits) == 2  # one refit per calendar day
    for origin, y_now in zip(origins, seen, strict=True):
        assert len(y_now) == origin // 15
        # The last bucket sums the 15 minutes just before the origin.
        assert y_now[-1] == x[origin - 15 : origin].sum()
    # Per-minute value = bucket forecast / 15; median from the mean.
    assert out[0, 0, 2] == x[3000 - 15 : 3000].sum() / 15
    assert np.all(np.diff(out, axis=2) >= 0)


def test_mstl_has_low_error_on_a_clean_seasonal_series() -> None:
    x = _seasonal(11, noise=1.0, seed=3)
    ps = prepare_series("s", START, x, is_real=False, max_origins=3)
    f = _run("mstl", ps.series, ps.history_end, ps.origins)
    recs = score(
        targets(x, ps.origins, HORIZONS), f, QUANTILES, mase_scale(x[: ps.history_end]), HORIZONS
    )
    assert all(r["wql"] < 0.03 for r in recs)


@pytest.mark.slow
def test_auto_ets_has_low_error_on_a_clean_seasonal_series() -> None:
    x = _seasonal(11, noise=1.0, seed=3)
    ps = prepare_series("s", START, x, is_real=False, max_origins=3)
    f = _run("auto_ets", ps.series, ps.history_end, ps.origins)
    recs = score(
        targets(x, ps.origins, HORIZONS), f, QUANTILES, mase_scale(x[: ps.history_end]), HORIZONS
    )
    assert all(r["wql"] < 0.03 for r in recs)


def test_bad_input_is_rejected() -> None:
    x = _seasonal(3)
    with pytest.raises(ValueError, match="more than 10080 minutes"):
        seasonal_naive_week(x, START, 3000, np.array([3060]), HORIZONS, QUANTILES)
    with pytest.raises(ValueError, match="origins"):
        seasonal_naive_day(x, START, 3000, np.array([60]), HORIZONS, QUANTILES)
    with pytest.raises(ValueError, match="two full days"):
        BASELINES["mstl"](x[:2000], START, 1500, np.array([1560]), HORIZONS, QUANTILES)
