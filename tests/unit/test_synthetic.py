"""Synthetic multi-service traffic: determinism, calendar effects and anomalies."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from simulator.synthetic import (
    SyntheticConfig,
    SyntheticServiceSpec,
    generate,
    to_traces,
)

QUIET = {
    "flash_crowds_per_week": 0.0,
    "outages_per_week": 0.0,
}


def _quiet(service_id: str = "svc", **overrides: object) -> SyntheticServiceSpec:
    """A service without anomalies, so calendar effects can be seen alone."""
    return SyntheticServiceSpec(service_id=service_id, **{**QUIET, **overrides})  # type: ignore[arg-type]


def test_same_seed_same_output_and_other_seed_differs() -> None:
    config = SyntheticConfig(days=7, seed=11)
    first, again = generate(config), generate(config)
    pd.testing.assert_frame_equal(first.events, again.events)
    pd.testing.assert_frame_equal(first.calendar, again.calendar)
    pd.testing.assert_frame_equal(first.anomalies, again.anomalies)
    np.testing.assert_array_equal(first.rates, again.rates)
    other = generate(dataclasses.replace(config, seed=12))
    assert not np.array_equal(first.events["events_in"], other.events["events_in"])


def test_adding_a_service_leaves_the_others_unchanged() -> None:
    base = SyntheticConfig(days=7, seed=3)
    extra = SyntheticServiceSpec(service_id="search", base_eps=50.0, flash_crowds_per_week=5.0)
    bigger = dataclasses.replace(base, services=(*base.services, extra))
    small, large = generate(base), generate(bigger)
    n = base.n_minutes * len(base.services)
    pd.testing.assert_frame_equal(small.events, large.events.iloc[:n])
    np.testing.assert_array_equal(small.rates, large.rates[:3])
    pd.testing.assert_frame_equal(small.calendar, large.calendar)
    kept = large.anomalies[large.anomalies["service_id"] != "search"].reset_index(drop=True)
    pd.testing.assert_frame_equal(small.anomalies, kept)


def test_shapes_columns_and_priority_split() -> None:
    config = SyntheticConfig(days=2)
    data = generate(config)
    n_services, n = len(config.services), config.n_minutes
    assert data.rates.shape == (n_services, n)
    assert list(data.events.columns) == [
        "service_id",
        "ts",
        "events_in",
        "events_high_priority",
        "events_normal_priority",
    ]
    assert len(data.events) == n_services * n
    assert not data.events.duplicated(["service_id", "ts"]).any()
    events = data.events
    assert (events["events_high_priority"] + events["events_normal_priority"]).equals(
        events["events_in"]
    )
    assert (events["events_high_priority"] >= 0).all()
    assert (events["events_normal_priority"] >= 0).all()
    assert list(data.calendar.columns) == [
        "ts",
        "service_id",
        "is_holiday",
        "business_event",
        "expected_traffic_multiplier",
    ]
    assert len(data.calendar) == n
    assert (data.calendar["service_id"] == "*").all()
    assert set(data.anomalies.columns) == {"service_id", "start", "end", "kind"}


def test_mean_rate_matches_base_eps_without_trend_or_calendar() -> None:
    spec = _quiet(base_eps=40.0, weekend_factor=1.0, weekly_amplitude=0.0, noise_cv=0.1)
    config = SyntheticConfig(days=7, services=(spec,), campaigns_per_month=0, holidays=())
    data = generate(config)
    assert data.rates.mean() == pytest.approx(40.0 * 60, rel=1e-6)
    assert data.events["events_in"].mean() == pytest.approx(40.0 * 60, rel=0.01)


@pytest.mark.parametrize("peak_hour", [3.0, 14.0, 20.0])
def test_daily_peak_is_near_peak_hour(peak_hour: float) -> None:
    spec = _quiet(peak_hour=peak_hour, daily_amplitude=0.6, noise_cv=0.2)
    config = SyntheticConfig(days=14, services=(spec,), campaigns_per_month=0, holidays=())
    events = generate(config).events
    hourly = events.groupby(events["ts"].dt.hour)["events_in"].mean().to_numpy()
    # Hourly bins hold minutes h:00..h:59, so a peak at h:00 can land in bin h-1.
    gap = abs(int(np.argmax(hourly)) - peak_hour)
    assert min(gap, 24 - gap) <= 1


def test_weekends_and_holidays_are_lower_than_weekdays() -> None:
    spec = _quiet(weekend_factor=0.5, noise_cv=0.1)
    holiday = pd.Timestamp("2026-01-07").date()  # a Wednesday
    config = SyntheticConfig(days=14, services=(spec,), campaigns_per_month=0, holidays=(holiday,))
    data = generate(config)
    events = data.events.set_index("ts")["events_in"]
    ts = pd.DatetimeIndex(events.index)
    weekend = ts.dayofweek >= 5
    is_holiday = ts.normalize() == pd.Timestamp(holiday)
    weekday_mean = events[~weekend & ~is_holiday].mean()
    assert events[weekend].mean() < 0.6 * weekday_mean
    assert events[is_holiday].mean() < 0.6 * weekday_mean
    calendar = data.calendar.set_index("ts")
    assert calendar["is_holiday"][is_holiday].all()
    assert not calendar["is_holiday"][~is_holiday].any()


def test_default_holidays_are_weekdays_inside_the_range() -> None:
    data = generate(SyntheticConfig(days=30))
    holidays = data.calendar.loc[data.calendar["is_holiday"], "ts"].dt.normalize().unique()
    assert len(holidays) == 2
    assert all(pd.Timestamp(d).dayofweek < 5 for d in holidays)


def test_campaigns_are_flagged_and_raise_traffic() -> None:
    spec = _quiet(campaign_sensitivity=1.0, noise_cv=0.05)
    config = SyntheticConfig(
        days=30,
        services=(spec,),
        campaigns_per_month=3,
        campaign_multiplier=(1.5, 2.0),
        holidays=(),
    )
    data = generate(config)
    calendar = data.calendar
    in_campaign = calendar["business_event"] != ""
    assert set(calendar.loc[in_campaign, "business_event"]) == {
        "campaign-1",
        "campaign-2",
        "campaign-3",
    }
    assert (calendar.loc[in_campaign, "expected_traffic_multiplier"] > 1).all()
    assert (calendar.loc[~in_campaign, "expected_traffic_multiplier"] == 1).all()
    assert calendar["expected_traffic_multiplier"].max() >= 1.5

    # Same seed without campaigns: only the campaign component changes.
    plain = generate(dataclasses.replace(config, campaigns_per_month=0))
    mask = in_campaign.to_numpy()
    multiplier = calendar["expected_traffic_multiplier"].to_numpy()
    np.testing.assert_allclose(data.rates[0][mask] / plain.rates[0][mask], multiplier[mask])
    boosted = data.events["events_in"].to_numpy()[mask].sum()
    assert boosted > 1.2 * plain.events["events_in"].to_numpy()[mask].sum()


def test_campaign_sensitivity_scales_the_effect() -> None:
    config = SyntheticConfig(
        days=30,
        services=(
            _quiet("weak", campaign_sensitivity=0.0),
            _quiet("strong", campaign_sensitivity=2.0),
        ),
        campaigns_per_month=2,
    )
    data = generate(config)
    plain = generate(dataclasses.replace(config, campaigns_per_month=0))
    multiplier = data.calendar["expected_traffic_multiplier"].to_numpy()
    np.testing.assert_allclose(data.rates[0], plain.rates[0])
    np.testing.assert_allclose(data.rates[1] / plain.rates[1], 1 + 2 * (multiplier - 1))


def test_outages_drop_traffic_to_near_zero_then_catch_up() -> None:
    spec = _quiet(outages_per_week=4.0, outage_minutes=(10, 20), noise_cv=0.05)
    config = SyntheticConfig(days=14, services=(spec,), campaigns_per_month=0, seed=5)
    data = generate(config)
    outages = data.anomalies[data.anomalies["kind"] == "outage"]
    assert len(outages) >= 3
    events = data.events.set_index("ts")["events_in"]
    hour, minute = pd.Timedelta(minutes=60), pd.Timedelta(minutes=1)
    checked = 0
    starts, ends = pd.DatetimeIndex(outages["start"]), pd.DatetimeIndex(outages["end"])
    for start, end in zip(starts, ends, strict=True):
        others = outages[outages["start"] != start]
        isolated = not ((others["start"] < end + hour) & (others["end"] > start - hour)).any()
        if not isolated or start - hour < config.start:
            continue
        before = events[start - 30 * minute : start - minute]
        during = events[start : end - minute]
        after = events[end : end + 4 * minute]
        if len(after) < 5:
            continue
        assert during.mean() < 0.05 * before.mean()
        # Part of the missed volume comes back right after the outage.
        assert after.mean() > 1.2 * before.mean()
        checked += 1
    assert checked >= 1


def test_flash_crowds_raise_traffic_suddenly() -> None:
    spec = _quiet(flash_crowds_per_week=4.0, flash_crowd_multiplier=(3.0, 4.0), noise_cv=0.05)
    config = SyntheticConfig(days=14, services=(spec,), campaigns_per_month=0, seed=2)
    data = generate(config)
    crowds = data.anomalies[data.anomalies["kind"] == "flash_crowd"]
    assert len(crowds) >= 3
    assert (crowds["end"] > crowds["start"] + pd.Timedelta(minutes=20)).all()
    no_crowds = generate(dataclasses.replace(config, services=(_quiet(noise_cv=0.05),)))
    ratio = data.rates[0] / no_crowds.rates[0]
    minutes = ((crowds["start"] - config.start) / pd.Timedelta(minutes=1)).astype(int)
    assert (ratio[minutes] >= 3.0 - 1e-9).all()
    events = data.events["events_in"].to_numpy()
    baseline = no_crowds.events["events_in"].to_numpy()
    for m in minutes:
        assert events[m : m + 10].sum() > 2 * baseline[m : m + 10].sum()


def test_to_traces_gives_one_trace_per_service() -> None:
    data = generate(SyntheticConfig(days=1))
    traces = to_traces(data)
    assert [t.name for t in traces] == list(data.service_ids)
    for i, trace in enumerate(traces):
        assert trace.start == data.config.start
        assert len(trace) == data.config.n_minutes
        rows = data.events["service_id"] == trace.name
        np.testing.assert_array_equal(trace.counts, data.events.loc[rows, "events_in"])
        assert trace.counts.sum() == pytest.approx(data.rates[i].sum(), rel=0.05)


def test_invalid_configs_are_rejected() -> None:
    with pytest.raises(ValueError, match="unique"):
        SyntheticConfig(services=(_quiet("a"), _quiet("a")))
    with pytest.raises(ValueError, match="daily_amplitude"):
        SyntheticServiceSpec(daily_amplitude=1.5)
    with pytest.raises(ValueError, match="days"):
        SyntheticConfig(days=0)
