"""Behaviour of the forecast providers of the predictive rule (providers.py).

Checked: the point forecasts against hand-computed values, that no forecast looks
at the step it forecasts from or later, that conformal quantiles do not cross and
cover about as often as their levels say on a stationary series.
"""

from __future__ import annotations

import numpy as np
import pytest

from models.controller.providers import PROVIDERS, conformal_forecasts, point_forecasts

DAY = 1440
WEEK = 7 * DAY


def seasonal_series(days: int, seed: int = 0, base: float = 400.0) -> np.ndarray:
    """Poisson counts around a daily cycle with a weekly ripple: stationary noise."""
    minute = np.arange(days * DAY)
    rate = base * (
        1.0 + 0.6 * np.sin(2 * np.pi * minute / DAY) + 0.1 * np.sin(2 * np.pi * minute / WEEK)
    )
    return np.random.default_rng(seed).poisson(rate).astype(np.float64)


# ------------------------------------------------------------------ point forecasts


def test_recent_forecast_is_the_mean_of_the_last_five_minutes_for_every_horizon() -> None:
    x = np.arange(20, dtype=np.float64) ** 2
    origins = np.array([0, 3, 10, 20])
    out = point_forecasts(x, origins, (1, 2, 7), "recent")
    assert np.isnan(out[0]).all()  # nothing observed before step 0
    np.testing.assert_allclose(out[1], np.full(3, x[0:3].mean()))  # shorter window
    np.testing.assert_allclose(out[2], np.full(3, x[5:10].mean()))
    np.testing.assert_allclose(out[3], np.full(3, x[15:20].mean()))


def test_seasonal_day_forecast_is_the_level_adjusted_same_minute_a_day_before() -> None:
    # Day 2 is day 1 plus a constant: the level adjustment scales by (now + 1) / (then + 1).
    rng = np.random.default_rng(0)
    day1 = rng.uniform(50, 150, DAY)
    x = np.concatenate([day1, day1 + 20.0])
    origin, h = DAY + 600, 3
    out = point_forecasts(x, np.array([origin]), (h,), "seasonal_day")
    target = origin + h - 1
    same_minute = x[target - DAY - 2 : target - DAY + 3].mean()
    now = x[origin - 60 : origin].mean()
    then = x[origin - DAY - 60 : origin - DAY].mean()
    np.testing.assert_allclose(out[0, 0], same_minute * (now + 1) / (then + 1))


def test_seasonal_level_adjustment_is_bounded() -> None:
    # An outage a day ago (zeros) must not multiply today's forecast without bound.
    x = np.concatenate([np.full(DAY, 100.0), np.full(DAY, 1e4)])
    x[DAY - 100 : DAY] = 0.0  # the hour compared a day before the origin
    origin = 2 * DAY
    out = point_forecasts(x, np.array([origin]), (1,), "seasonal_day")
    assert out[0, 0] == pytest.approx(2.0 * x[DAY - 2 : DAY + 3].mean())


def test_seasonal_forecast_is_nan_without_a_full_period_of_past() -> None:
    x = np.ones(3 * DAY)
    out = point_forecasts(x, np.array([10, DAY - 1, DAY + 1]), (1, 2), "seasonal_day")
    assert np.isnan(out[:2]).all()
    assert np.isfinite(out[2]).all()
    week = point_forecasts(x, np.array([2 * DAY]), (1,), "seasonal_week")
    assert np.isnan(week).all()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_point_forecasts_use_only_the_past(provider: str) -> None:
    x = seasonal_series(16, seed=1)
    origins = np.array([50, DAY + 7, WEEK + 3, WEEK + DAY, 15 * DAY + 17])
    # Horizons near a day reach the edge where the same minute a day ago is the last
    # observed one (DAY - 2) or would not be observed yet (DAY - 1 and beyond).
    horizons = (1, 2, 5, 30, DAY - 3, DAY - 2, DAY - 1, DAY + 5)
    before = point_forecasts(x, origins, horizons, provider)  # type: ignore[arg-type]
    for k, origin in enumerate(origins):
        changed = x.copy()
        changed[origin:] = np.random.default_rng(k).uniform(0, 1e5, len(x) - origin)
        after = point_forecasts(changed, origins[: k + 1], horizons, provider)  # type: ignore[arg-type]
        np.testing.assert_array_equal(after[k], before[k], err_msg=f"origin {origin}")
    assert np.isfinite(before[-1, :4]).all()


# ------------------------------------------------------------------ conformal quantiles

QUANTILES = (0.1, 0.5, 0.9)
HORIZONS = (1, 2, 4)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_conformal_forecasts_use_only_the_past(provider: str) -> None:
    x = seasonal_series(10, seed=2)
    calib, evaluate = (DAY, 6 * DAY), (7 * DAY, 8 * DAY)
    before = conformal_forecasts(x, calib, evaluate, HORIZONS, QUANTILES, provider)  # type: ignore[arg-type]
    for k, origin in enumerate([evaluate[0], evaluate[0] + 500, evaluate[1] - 1]):
        changed = x.copy()
        changed[origin:] = np.random.default_rng(k).uniform(0, 1e5, len(x) - origin)
        after = conformal_forecasts(changed, calib, evaluate, HORIZONS, QUANTILES, provider)  # type: ignore[arg-type]
        step = origin - evaluate[0]
        np.testing.assert_array_equal(
            after.values[: step + 1], before.values[: step + 1], err_msg=f"origin {origin}"
        )


@pytest.mark.parametrize("provider", PROVIDERS)
def test_conformal_forecast_shape_labels_and_non_crossing(provider: str) -> None:
    x = seasonal_series(9, seed=3)
    quantiles = (0.05, 0.1, 0.5, 0.9, 0.95, 0.99)
    fc = conformal_forecasts(x, (0, 5 * DAY), (5 * DAY, 9 * DAY), HORIZONS, quantiles, provider)  # type: ignore[arg-type]
    assert fc.values.shape == (4 * DAY, 1, len(HORIZONS), len(quantiles))
    assert (fc.horizons, fc.quantiles) == (HORIZONS, quantiles)
    assert fc.label == f"{provider}+conformal"
    assert np.isfinite(fc.values).all()
    assert (fc.values >= 0).all()
    assert (np.diff(fc.values, axis=3) >= 0).all()
    # The levels are not all the same number: the interval has a width.
    assert (fc.values[..., -1] > fc.values[..., 0]).mean() > 0.99


def test_conformal_quantiles_do_not_cross_even_with_zero_counts() -> None:
    # Zero stretches make many residuals identical; quantiles must still not cross
    # and never go negative.
    x = seasonal_series(4, seed=4)
    x[DAY : DAY + 300] = 0.0
    x[3 * DAY + 100 : 3 * DAY + 400] = 0.0
    fc = conformal_forecasts(x, (0, 2 * DAY), (2 * DAY, 4 * DAY), HORIZONS, QUANTILES, "recent")
    assert (fc.values >= 0).all()
    assert (np.diff(fc.values, axis=3) >= 0).all()


@pytest.mark.parametrize(
    ("provider", "days", "calib_start"),
    [("recent", 8, 0), ("seasonal_day", 10, DAY), ("seasonal_week", 21, WEEK)],
)
def test_conformal_interval_covers_about_its_nominal_share(
    provider: str, days: int, calib_start: int
) -> None:
    """On a stationary noisy series, [q0.1, q0.9] holds about 80 % of held-out actuals."""
    x = seasonal_series(days, seed=5)
    n = len(x)
    split = calib_start + (n - calib_start) // 2
    evaluate = (split, n - max(HORIZONS) + 1)
    fc = conformal_forecasts(x, (calib_start, split), evaluate, HORIZONS, QUANTILES, provider)  # type: ignore[arg-type]
    origins = np.arange(*evaluate)
    for j, h in enumerate(HORIZONS):
        actual = x[origins + h - 1]
        lo, mid, hi = (fc.values[:, 0, j, k] for k in range(3))
        inside = float(np.mean((actual >= lo) & (actual <= hi)))
        below_median = float(np.mean(actual <= mid))
        assert abs(inside - 0.8) < 0.05, f"h={h}: coverage {inside:.3f}"
        assert abs(below_median - 0.5) < 0.05, f"h={h}: median share {below_median:.3f}"


def test_calibration_range_after_the_evaluation_start_is_rejected() -> None:
    x = seasonal_series(3)
    with pytest.raises(ValueError, match="calibration range must end before"):
        conformal_forecasts(x, (0, DAY + 1), (DAY, 2 * DAY), HORIZONS, QUANTILES, "recent")


def test_calibration_range_may_end_where_evaluation_starts() -> None:
    x = seasonal_series(3)
    fc = conformal_forecasts(x, (0, DAY), (DAY, 2 * DAY), HORIZONS, QUANTILES, "recent")
    assert fc.values.shape[0] == DAY


def test_too_short_calibration_range_is_rejected() -> None:
    x = seasonal_series(1)
    with pytest.raises(ValueError, match="too short"):
        conformal_forecasts(x, (0, 50), (50, 200), HORIZONS, QUANTILES, "recent")


def test_seasonal_provider_falls_back_to_recent_without_a_period_of_past() -> None:
    x = seasonal_series(3, seed=6)
    evaluate = (200, 1000)  # less than a day of past: seasonal_day has nothing to look at
    day = conformal_forecasts(x, (0, 200), evaluate, HORIZONS, QUANTILES, "seasonal_day")
    recent = conformal_forecasts(x, (0, 200), evaluate, HORIZONS, QUANTILES, "recent")
    np.testing.assert_array_equal(day.values, recent.values)
