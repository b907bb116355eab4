"""Forecast metrics against hand-computed values (DESIGN.md section 11)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.forecaster.metrics import coverage, mase, mase_scale, pinball, score, wql


def test_pinball_is_asymmetric() -> None:
    # y - yhat = +2 -> 0.9 * 2; y - yhat = -2 -> (0.9 - 1) * -2.
    loss = pinball(np.array([10.0, 10.0]), np.array([8.0, 12.0]), 0.9)
    np.testing.assert_allclose(loss, [1.8, 0.2])


def test_pinball_rejects_bad_level() -> None:
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        pinball(np.ones(2), np.ones(2), 1.0)


def test_mase_scale_is_seasonal_naive_mae() -> None:
    # Every step is 1440 above the one a day earlier.
    assert mase_scale(np.arange(1443, dtype=float)) == 1440.0
    # |2-1|, |4-2|, |7-4| -> mean 2.
    assert mase_scale(np.array([1.0, 2.0, 4.0, 7.0]), period=1) == 2.0


def test_mase_scale_rejects_short_or_periodic_history() -> None:
    with pytest.raises(ValueError, match="more than 1440"):
        mase_scale(np.ones(1440))
    periodic = np.tile(np.arange(1440, dtype=float), 2)
    with pytest.raises(ValueError, match="undefined"):
        mase_scale(periodic)


def test_mase() -> None:
    # mean(|0|, |1|, |2|) = 1, over a scale of 2.
    assert mase(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 1.0]), 2.0) == 0.5
    with pytest.raises(ValueError, match="scale"):
        mase(np.ones(2), np.ones(2), 0.0)
    with pytest.raises(ValueError, match="shape"):
        mase(np.ones(2), np.ones(3), 1.0)


def test_wql_by_hand() -> None:
    y = np.array([10.0, 20.0])
    # q0.1: 0.1*2 + 0.9*5 = 4.7; q0.5: 0 + 0.5*2 = 1.0; q0.9: 0.1*2 + 0.1*10 = 1.2.
    got = wql(y, np.array([8.0, 25.0]), np.array([10.0, 18.0]), np.array([12.0, 30.0]))
    assert got == pytest.approx(2 * (4.7 + 1.0 + 1.2) / (3 * 30))


def test_wql_is_nan_when_all_actuals_are_zero() -> None:
    zeros = np.zeros(3)
    assert math.isnan(wql(zeros, zeros, zeros + 1, zeros + 2))


def test_coverage_includes_bounds() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0])
    lo = np.array([1.0, 0.0, 4.0, 0.0])
    hi = np.array([1.0, 3.0, 5.0, 3.0])
    assert coverage(y, lo, hi) == 0.5


def test_score_per_horizon() -> None:
    quantiles = (0.05, 0.1, 0.5, 0.9, 0.95)
    y = np.array([[10.0, 4.0], [20.0, 4.0]])
    f = np.empty((2, 2, 5))
    # Horizon 15: the wQL example above, outer interval 0..100 (covers everything).
    f[:, 0, :] = [[0.0, 8.0, 10.0, 12.0, 100.0], [0.0, 25.0, 18.0, 30.0, 100.0]]
    # Horizon 60: perfect medians, 80 % interval misses, 90 % interval covers.
    f[:, 1, :] = [[0.0, 5.0, 4.0, 6.0, 9.0], [0.0, 5.0, 4.0, 6.0, 9.0]]
    recs = score(y, f, quantiles, scale=2.0, horizons=(15, 60))
    assert [r["horizon_min"] for r in recs] == [15, 60]
    assert recs[0]["mase"] == pytest.approx(((0 + 2) / 2) / 2.0)
    assert recs[0]["wql"] == pytest.approx(2 * 6.9 / 90)
    assert recs[0]["coverage_80"] == 0.5  # 10 in [8, 12]; 20 not in [25, 30]
    assert recs[0]["coverage_90"] == 1.0
    assert recs[1]["mase"] == 0.0
    assert recs[1]["coverage_80"] == 0.0
    assert recs[1]["coverage_90"] == 1.0


def test_score_needs_the_levels_and_shapes() -> None:
    y = np.ones((2, 1))
    with pytest.raises(ValueError, match=r"0\.05 is missing"):
        score(y, np.ones((2, 1, 3)), (0.1, 0.5, 0.9), 1.0, (15,))
    with pytest.raises(ValueError, match="expected"):
        score(y, np.ones((2, 2, 5)), (0.05, 0.1, 0.5, 0.9, 0.95), 1.0, (15,))
