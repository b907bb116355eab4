"""The hybrid forecaster: inputs, network, training, calibration, anomaly score, packaging."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from model_files import requirements_of

from models.forecaster import package
from models.forecaster.anomaly import anomaly_score, latest_scores, window_detection
from models.forecaster.dataset import series_from_training_set
from models.forecaster.model import HybridForecaster, NetworkConfig
from models.forecaster.train import (
    Forecaster,
    SeriesData,
    TrainConfig,
    calibrate,
    cut_windows,
    split_windows,
    train,
)
from models.forecaster.windows import (
    FUTURE_FEATURES,
    HORIZONS,
    HOURLY_FEATURES,
    QUANTILES,
    RECENT_FEATURES,
    STATIC_FEATURES,
    build_inputs,
    minute_of,
    series_windows,
    shift_back,
)

START = pd.Timestamp("2026-03-02 00:00")
DAYS = 6
N = DAYS * 1440
AMPLITUDE = 40.0


def sinusoid(n: int = N) -> np.ndarray:
    t = np.arange(n)
    return 100.0 + AMPLITUDE * np.sin(2 * np.pi * t / 1440.0)


def noisy(n: int = N, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.poisson(sinusoid(n) / 4.0).astype(float)


TINY = TrainConfig(
    network=NetworkConfig(hidden=16, heads=2, dropout=0.0),
    batch_size=64,
    learning_rate=5e-3,
    max_steps=400,
    max_minutes=3.0,
    eval_every=100,
    max_windows_per_series=6000,
    holdout_windows_per_series=1500,
)
END = N - 1440  # the last day is never trained on


def _train(config: TrainConfig) -> Forecaster:
    torch.set_num_threads(1)  # tiny batches: threads cost more than they give
    series = [
        SeriesData("sine", START, sinusoid(), END),
        SeriesData("noisy", START, noisy(), END),
    ]
    forecaster, report = train(series, config)
    assert report.steps == config.max_steps
    assert report.history and report.best_step > 0
    return forecaster


@pytest.fixture(scope="module")
def trained() -> Forecaster:
    """400 steps (about 8 s): for the claims that need a model that has learned."""
    return _train(TINY)


@pytest.fixture(scope="module")
def tiny() -> Forecaster:
    """8 steps, calibrated (under a second): for shapes, packaging and round trips, which
    hold for any weights."""
    return _train(replace(TINY, max_steps=8, eval_every=4))


# ------------------------------------------------------------------------------ inputs


def test_inputs_have_the_documented_shapes() -> None:
    x = sinusoid()
    pos = np.array([2000, 5000, 8000])
    recent, hourly = series_windows(x, START, pos)
    inp = build_inputs(recent, hourly, minute_of(START) + pos)
    n, h = len(pos), len(HORIZONS)
    assert inp.hourly.shape == (n, 168, HOURLY_FEATURES)
    assert inp.recent.shape == (n, 24, RECENT_FEATURES)
    assert inp.future.shape == (n, h, FUTURE_FEATURES)
    assert inp.static.shape == (n, STATIC_FEATURES)
    # The scale is the mean per minute of the complete hours of the last week.
    hours = np.arange(max(0, pos[-1] // 60 - 167), pos[-1] // 60)  # 133 hours so far
    expected = x[: hours[-1] * 60 + 60].reshape(-1, 60)[hours].mean()
    assert inp.scale[-1] == pytest.approx(expected, rel=1e-5)
    # The same-hour-yesterday input of horizon 60 is yesterday's rate of that hour.
    j = HORIZONS.index(60)
    target = pos[-1] + 60
    hour_then = (target - 1440) // 60
    assert inp.future[-1, j, 8] * inp.scale[-1] == pytest.approx(
        x[hour_then * 60 : hour_then * 60 + 60].mean(), rel=1e-4
    )


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("shape", "must have shape"),
        ("negative", "counts >= 0"),
        ("inf", "counts >= 0"),
    ],
)
def test_inputs_reject_bad_sequences(bad: str, message: str) -> None:
    recent, hourly = series_windows(sinusoid(), START, np.array([3000]))
    if bad == "shape":
        recent = recent[:, :100]
    elif bad == "negative":
        recent[0, 5] = -1
    else:
        hourly[0, 3] = np.inf
    with pytest.raises(ValueError, match=message):
        build_inputs(recent, hourly, np.array([minute_of(START) + 3000]))


def test_shift_back_equals_windows_cut_earlier() -> None:
    x = noisy()
    x[3010:3020] = np.nan
    pos = np.array([3000, 3013, 3059, 3060, 3061, 3100, 7000])
    recent, hourly = series_windows(x, START, pos)
    for k in (1, 5, 15, 30, 59):
        want_r, want_h = series_windows(x, START, pos - k)
        got_r, got_h, ts = shift_back(recent, hourly, minute_of(START) + pos, k)
        assert np.array_equal(ts, minute_of(START) + pos - k)
        # The oldest k minutes and the oldest hour are not in today's rows (NaN there).
        np.testing.assert_allclose(got_r[:, k:], want_r[:, k:], rtol=1e-6)
        np.testing.assert_allclose(got_h[:, 1:], want_h[:, 1:], rtol=1e-5)


def test_training_windows_never_cross_the_holdout_cut() -> None:
    data = SeriesData("s", START, sinusoid(), END)
    train_w, hold_w = split_windows(data, TINY)
    cut = END - round(END * TINY.holdout_fraction)
    last_train_target = train_w.ts_minute.max() - minute_of(START) + max(HORIZONS)
    assert last_train_target < cut
    assert hold_w.ts_minute.min() - minute_of(START) + 1 >= cut
    assert hold_w.ts_minute.max() - minute_of(START) + max(HORIZONS) < END
    with pytest.raises(ValueError, match="too few"):
        split_windows(SeriesData("short", START, sinusoid(500), 500), TINY)


# ------------------------------------------------------------------------------ network


def test_network_output_shape_and_quantiles_never_cross() -> None:
    torch.manual_seed(0)
    net = HybridForecaster(NetworkConfig(hidden=8, heads=2))
    b = 32
    out = net(
        torch.randn(b, 168, HOURLY_FEATURES) * 5,
        torch.randn(b, 24, RECENT_FEATURES) * 5,
        torch.randn(b, len(HORIZONS), FUTURE_FEATURES) * 5,
        torch.randn(b, STATIC_FEATURES) * 5,
    )
    assert out.shape == (b, len(HORIZONS), len(QUANTILES))
    assert (out.diff(dim=-1) >= 0).all()


def test_network_config_is_checked_and_round_trips() -> None:
    cfg = NetworkConfig(hidden=12, heads=3, horizons=(5, 15), quantiles=(0.1, 0.5, 0.9))
    assert NetworkConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"include 0\.5"):
        NetworkConfig(quantiles=(0.1, 0.9))
    with pytest.raises(ValueError, match="divisible"):
        NetworkConfig(hidden=10, heads=4)
    with pytest.raises(ValueError, match="ascending"):
        NetworkConfig(horizons=(60, 15))


def test_predictions_are_sorted_and_non_negative(tiny: Forecaster) -> None:
    w = cut_windows(SeriesData("noisy", START, noisy(), N), np.arange(END, N - 121), HORIZONS)
    fc = tiny.predict_windows(w)
    assert fc.shape == (len(w), len(HORIZONS), len(QUANTILES))
    assert (np.diff(fc, axis=-1) >= 0).all()
    assert (fc >= 0).all()


# ------------------------------------------------------------------------------ learning


@pytest.mark.slow
def test_tiny_model_learns_a_pure_sinusoid(trained: Forecaster) -> None:
    x = sinusoid()
    pos = np.arange(END, N - 121, 7)
    w = cut_windows(SeriesData("sine", START, x, N), pos, HORIZONS)
    fc = trained.predict_windows(w)
    median = fc[:, :, QUANTILES.index(0.5)]
    mae = np.abs(median - w.targets).mean(axis=0)
    # Persistence (the last minute) is off by up to the sinusoid's change over 2 hours.
    persistence = np.abs(x[pos][:, None] - w.targets).mean(axis=0)
    for j, h in enumerate(HORIZONS):
        assert mae[j] < 0.06 * AMPLITUDE, f"horizon {h}: MAE {mae[j]:.2f}"
    assert mae[-1] < 0.25 * persistence[-1]


@pytest.mark.slow
def test_calibration_brings_coverage_to_nominal_on_a_later_range(trained: Forecaster) -> None:
    """Noisier data than trained on: raw intervals under-cover; conformal offsets from a
    held-back range fix the coverage of a later range."""
    rng = np.random.default_rng(5)
    x = np.maximum(noisy(seed=4) * rng.lognormal(0.0, 0.35, N), 0.0)
    data = SeriesData("wider", START, x, N)
    held = cut_windows(data, np.arange(3 * 1440, 5 * 1440 - 121, 2), HORIZONS)
    later = cut_windows(data, np.arange(5 * 1440, N - 121), HORIZONS)
    forecaster = Forecaster(trained.net, calibrate(trained, [held]))
    lo, hi = QUANTILES.index(0.1), QUANTILES.index(0.9)

    def coverage(fc: np.ndarray) -> float:
        return float(((later.targets >= fc[:, :, lo]) & (later.targets <= fc[:, :, hi])).mean())

    raw = coverage(forecaster.predict_windows(later, calibrated=False))
    calibrated = coverage(forecaster.predict_windows(later))
    assert raw < 0.7
    assert abs(calibrated - 0.8) < abs(raw - 0.8)
    assert abs(calibrated - 0.8) < 0.05
    cal = forecaster.calibration
    assert cal is not None and "wider" in cal.per_series
    assert abs(cal.coverage_after["wider"] - 0.8) < 0.02


def test_calibration_reaches_nominal_coverage_on_sparse_counts() -> None:
    """With mostly zeros, shifting each quantile alone over-covers; the interval step fixes it."""
    rng = np.random.default_rng(0)
    net = HybridForecaster(NetworkConfig(hidden=8, heads=2, dropout=0.0))
    forecaster = Forecaster(net, None)
    x = rng.poisson(0.4, N).astype(float)
    w = cut_windows(SeriesData("sparse", START, x, N), np.arange(2000, 6000), HORIZONS)
    cal = calibrate(forecaster, [w])
    assert abs(cal.coverage_after["sparse"] - 0.8) < 0.03


# ------------------------------------------------------------------------------ anomaly


@pytest.mark.slow
def test_anomaly_score_flags_an_injected_spike(trained: Forecaster) -> None:
    x = sinusoid()
    spike_at = N - 300
    x[spike_at] *= 3.0
    pos = np.arange(END, N - 121, 5)
    pos = np.union1d(pos, [spike_at])
    recent, hourly = series_windows(x, START, pos)
    scores = latest_scores(trained, recent, hourly, minute_of(START) + pos, ["sine"] * len(pos))
    spike = scores[pos == spike_at][0]
    normal = scores[pos != spike_at]
    assert spike > 1.0
    assert spike > 5 * np.quantile(normal, 0.99)
    assert np.median(normal) == 0.0


def test_anomaly_score_definition() -> None:
    y = np.array([5.0, 12.0, 0.0, np.nan])
    s = anomaly_score(y, np.full(4, 4.0), np.full(4, 10.0), np.full(4, 8.0))
    assert s[0] == 0.0
    assert s[1] == pytest.approx(2.0 / 6.0)
    assert s[2] == pytest.approx(4.0 / 6.0)
    assert math.isnan(s[3])
    det = window_detection(np.array([0, 0, 0.2, 3, 2, 0]), np.array([0, 0, 0, 1, 1, 0], bool))
    assert det["auc"] == 1.0
    assert det["flag_rate_in"] == 1.0 and det["flag_rate_out"] == 0.0


# ------------------------------------------------------------------------------ package


def test_saved_forecaster_predicts_the_same(tiny: Forecaster, tmp_path: Path) -> None:
    folder = package.save(tiny, tmp_path / "fc")
    loaded = package.load(folder)
    frame = package.example_frame(3)
    pd.testing.assert_frame_equal(
        package.predict_frame(tiny, frame), package.predict_frame(loaded, frame)
    )
    out = package.predict_frame(loaded, frame)
    assert {"service_id", "ts", "h15_q90", "h120_q05", "anomaly_score"} <= set(out.columns)
    with pytest.raises(ValueError, match="no saved forecaster"):
        package.load(tmp_path)


def test_an_ensemble_averages_its_members_and_round_trips(
    tiny: Forecaster, tmp_path: Path
) -> None:
    torch.manual_seed(3)
    other = HybridForecaster(tiny.net.config)
    pair = Forecaster([tiny.net, other], tiny.calibration)
    frame = package.example_frame(2)
    w = cut_windows(SeriesData("sine", START, sinusoid(), N), np.arange(END, END + 50), HORIZONS)
    inputs = w.inputs(np.arange(len(w)), HORIZONS)
    expected = (tiny.raw(inputs) + Forecaster(other, None).raw(inputs)) / 2
    np.testing.assert_allclose(pair.raw(inputs), expected, rtol=1e-6)
    loaded = package.load(package.save(pair, tmp_path / "pair"))
    assert len(loaded.nets) == 2
    pd.testing.assert_frame_equal(
        package.predict_frame(pair, frame), package.predict_frame(loaded, frame)
    )
    with pytest.raises(ValueError, match="share horizons"):
        short = HybridForecaster(NetworkConfig(hidden=16, heads=2, horizons=(5, 15)))
        Forecaster([tiny.net, short], None)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns="hourly_events_7d"), "lacks columns"),
        (lambda f: f.assign(recent_events_120m=[[1.0] * 119] * len(f)), "120 numbers"),
        (lambda f: f.assign(recent_events_120m=[["x"] * 120] * len(f)), "list of 120"),
        (lambda f: f.assign(ts=[None] * len(f)), "ts must be set"),
    ],
)
def test_table_interface_rejects_bad_input(
    tiny: Forecaster, change: object, message: str
) -> None:
    frame = change(package.example_frame(2))  # type: ignore[operator]
    with pytest.raises(ValueError, match=message):
        package.predict_frame(tiny, frame)


def test_per_service_calibration_falls_back_to_pooled(tiny: Forecaster) -> None:
    frame = package.example_frame(1)
    known = package.predict_frame(tiny, frame.assign(service_id="sine"))
    unknown = package.predict_frame(tiny, frame.assign(service_id="never-seen"))
    assert not np.allclose(known["h60_q90"], unknown["h60_q90"])


# ------------------------------------------------------------------------------ dataset


def test_training_set_rows_become_dense_series() -> None:
    # Rows are stamped one minute after their metrics minute.
    stamps = pd.date_range(START + pd.Timedelta(minutes=1), periods=10, freq="min")
    rows = pd.DataFrame(
        {"service_id": np.repeat(["a", "b"], 10), "event_timestamp": np.tile(stamps, 2)}
    )
    frame = rows.assign(
        events_in=np.arange(20, dtype=float),
        is_holiday=False,
        in_business_event=False,
        expected_traffic_multiplier=1.0,
        criticality=2,
    )
    frame.loc[3, "events_in"] = np.nan  # a missing minute stays missing
    frame = frame.drop(index=5)  # and so does one without a row
    series = series_from_training_set(frame, START + pd.Timedelta(minutes=8))
    assert [s.name for s in series] == ["a", "b"]
    a = series[0]
    assert a.start == START
    assert a.end == 8
    assert np.isnan(a.values[3]) and np.isnan(a.values[5])
    assert a.values[4] == 4.0
    assert a.criticality == 2.0
    assert a.calendar is not None and a.calendar.shape == (10, 3)
    with pytest.raises(ValueError, match="events_in"):
        series_from_training_set(frame.drop(columns="events_in"), START)


# ------------------------------------------------------------------------------ registry


@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
def test_registered_forecaster_round_trips_and_the_gate_judges_it(
    tiny: Forecaster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyfunc through the registry on SQLite predicts the same; the gate refuses a worse
    challenger and promotes a better one, on the evaluation's own scores."""
    from models import registry
    from models.forecaster import evaluate, protocol, publish
    from models.forecaster.train import TrainReport

    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    cfg = registry.RegistryConfig(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifacts_dir=tmp_path / "artifacts",
        experiment="forecaster-test",
    )
    prepared = protocol.PreparedSeries(
        "sine", START, sinusoid(), END, protocol.hourly_origins(START, N, END, 120, 10), False
    )
    hybrid = evaluate.hybrid_forecasts(tiny, [prepared])
    ev = evaluate.evaluate(
        [prepared], {"hybrid": hybrid, **evaluate.baseline_forecasts([prepared])}
    )
    report = TrainReport(1, 1.0, 1, 0.1, "cpu", 10, 10)

    def register() -> str:
        version = publish.register(
            cfg,
            tiny,
            train_config=TINY,
            report=report,
            evaluation=ev,
            prepared=[prepared],
            hybrid=hybrid,
        )
        return version.version

    first = register()
    model = registry.load(cfg, f"models:/{publish.MODEL_NAME}@{registry.CHALLENGER}")
    frame = package.example_frame(3)
    pd.testing.assert_frame_equal(model.predict(frame), package.predict_frame(tiny, frame))
    # The optional columns reach the model (a holiday and a tier-1 service change it).
    full = package.example_frame(3, horizons=tiny.horizons)
    full["is_holiday_ahead"] = [[1.0] * len(tiny.horizons)] * 3
    full["criticality"] = 1.0
    through = model.predict(full)
    pd.testing.assert_frame_equal(through, package.predict_frame(tiny, full))
    assert not np.allclose(through["h60_q50"], package.predict_frame(tiny, frame)["h60_q50"])
    # Its requirements are written, not inferred: torch, which predicting needs, pinned.
    from importlib.metadata import version as installed

    needs = requirements_of(cfg, f"models:/{publish.MODEL_NAME}/{first}")
    assert f"torch=={installed('torch')}" in needs
    assert f"predictive-autoscaler=={installed('predictive-autoscaler')}" in needs

    def scored(hybrid_wql: float, champion_wql: float | None) -> evaluate.Evaluation:
        rows = [
            {
                "series": "s",
                "model": m,
                "horizon_min": 15,
                "mase": 1.0,
                "wql": w,
                "coverage_80": 0.8,
                "coverage_90": 0.9,
            }
            for m, w in [
                ("hybrid", hybrid_wql),
                ("seasonal_naive_day", 0.5),
                ("seasonal_naive_week", 0.6),
                ("champion", champion_wql),
            ]
            if w is not None
        ]
        return evaluate.Evaluation(rows)

    decision = publish.gate(cfg, first, scored(0.3, None), None)
    assert decision.promoted
    worse = register()
    decision = publish.gate(cfg, worse, scored(0.35, 0.3), first)
    assert not decision.promoted
    assert registry.resolve_alias(cfg, publish.MODEL_NAME, registry.CHAMPION) == first
    better = register()
    decision = publish.gate(cfg, better, scored(0.25, 0.3), first)
    assert decision.promoted
    assert registry.resolve_alias(cfg, publish.MODEL_NAME, registry.CHAMPION) == better


def test_a_service_with_too_little_history_is_skipped_not_fatal() -> None:
    cfg = TrainConfig(
        network=NetworkConfig(hidden=8, heads=2), batch_size=8, max_steps=2, eval_every=1
    )
    long = SeriesData("long", START, sinusoid(), END)
    short = SeriesData("short", START, sinusoid(400), 400)
    forecaster, _ = train([long, short], cfg)
    assert forecaster.calibration is not None
    assert set(forecaster.calibration.coverage_after) == {"long"}
    with pytest.raises(ValueError, match="long enough"):
        train([short], cfg)
