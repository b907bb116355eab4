"""Synthetic event traffic for several services at once: the demo's default data source.

The expected events per minute of service ``s`` at minute ``t`` is a product of
components, plus a catch-up term after outages::

    rate[s, t] = base_eps * 60
                 * daily(t)        # two harmonics, peak at peak_hour, mean 1
                 * weekly(t)       # weekday cosine peaking mid-week, amplitude weekly_amplitude
                 * day_level(t)    # 1 on weekdays, weekend_factor on Sat/Sun and holidays,
                                   #   blended over 2 h around midnight (no cliff)
                 * trend(t)        # (1 + trend_per_day) ** days_since_start
                 * batch(t)        # optional periodic batch bursts
                 * campaign(t)     # 1 + campaign_sensitivity * (M(t) - 1)
                 * flash(t)        # 1 + (m - 1) * exp(-(t - t0) / tau) after each flash crowd
                 * outage(t)       # residual share (2 %) during an outage, else 1
                 + catch_up(t)     # part of the missed volume re-delivered after an outage

``rates`` holds this noiseless expectation. The observed counts are
``events_in ~ Poisson(rate * noise)`` with multiplicative lognormal noise of mean 1
and coefficient of variation ``noise_cv``, and
``events_high_priority ~ Binomial(events_in, share(t))`` where the high-priority
share swings +-20 % over the day (more urgent traffic around the daily peak);
``events_normal_priority`` is the rest, so the two always add up to ``events_in``.

Calendar: one row per minute with ``service_id == "*"`` (it applies to every
service). ``expected_traffic_multiplier`` is the campaign multiplier ``M(t)`` for a
service of campaign_sensitivity 1 (1.0 outside campaigns); each service applies
``1 + campaign_sensitivity * (M - 1)``. Holidays are flagged by ``is_holiday`` and
act like a weekend day through ``weekend_factor``; they do not enter the multiplier
because their effect differs per service. ``business_event`` is ``"campaign-<i>"``
inside campaign ``i`` (ramps included) and ``""`` otherwise.

Randomness: every component draws from its own generator derived from
``np.random.SeedSequence(seed, spawn_key=...)``. The calendar uses key ``(0, ...)``;
a service uses ``(1, crc32(service_id), component)``, so adding, removing or
reordering services never changes another service's traffic, and changing one
component's settings (say the flash-crowd rate) does not change the noise.
"""

from __future__ import annotations

import datetime as dt
import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from simulator.traces import Trace

_MIN_PER_DAY = 1440
_MIN_PER_WEEK = 7 * _MIN_PER_DAY
_OUTAGE_RESIDUAL = 0.02  # upstream outages rarely cut traffic to exactly 0 (health checks)
_WEEKEND_BLEND_MIN = 120  # weekend/weekday switch is spread over 2 h around midnight
_PRIORITY_SWING = 0.2  # high-priority share varies +-20 % over the day
_SECOND_HARMONIC = 0.3  # weight of the 12 h harmonic: a sharper peak, a flatter night

# Component indices inside a service's seed sequence; fixed so they never shift.
_FLASH, _OUTAGE, _NOISE, _ARRIVALS, _PRIORITY = range(5)
_HOLIDAYS, _CAMPAIGNS = range(2)


def _check_range(name: str, value: tuple[float, float], low: float) -> list[str]:
    lo, hi = value
    if not low <= lo <= hi:
        return [f"{name} must be a ({low} <= low <= high) pair, got {value}"]
    return []


@dataclass(frozen=True)
class SyntheticServiceSpec:
    """Traffic profile of one synthetic service.

    Args:
        service_id: Name of the service (also seeds its randomness).
        base_eps: Mean events per second before trend, calendar and anomalies.
        daily_amplitude: Depth of the daily cycle, 0 (flat) to 1.
        weekly_amplitude: Amplitude of a weekly cosine peaking mid-week, 0 to 1.
        weekend_factor: Traffic level on Saturdays, Sundays and holidays
            relative to a weekday.
        trend_per_day: Fractional growth per day (compounded; 0.01 = +1 %/day).
        noise_cv: Coefficient of variation of the per-minute lognormal noise.
        peak_hour: Hour of the day (0-24) at which the daily cycle peaks.
        flash_crowds_per_week: Expected flash crowds per week (Poisson).
        flash_crowd_multiplier: Range of the jump factor at the onset of a flash crowd.
        flash_crowd_decay_min: Range of the exponential decay time constant, minutes.
        outages_per_week: Expected upstream outages per week (Poisson).
        outage_minutes: Range of the outage length, minutes.
        outage_catchup_fraction: Share of the volume missed during an outage that is
            re-delivered right after it (a producer flushing its buffer).
        campaign_sensitivity: How strongly campaigns move this service: its
            multiplier is ``1 + sensitivity * (M - 1)``.
        high_priority_share: Mean share of high-priority events, 0 to 1.
        batch_period_min: Period of batch bursts in minutes; 0 = no batches.
        batch_minutes: Length of each batch burst, minutes.
        batch_multiplier: Traffic factor during a batch burst.
    """

    service_id: str = "service"
    base_eps: float = 100.0
    daily_amplitude: float = 0.5
    weekly_amplitude: float = 0.05
    weekend_factor: float = 0.7
    trend_per_day: float = 0.0
    noise_cv: float = 0.1
    peak_hour: float = 14.0
    flash_crowds_per_week: float = 0.5
    flash_crowd_multiplier: tuple[float, float] = (2.0, 4.0)
    flash_crowd_decay_min: tuple[float, float] = (30.0, 90.0)
    outages_per_week: float = 0.2
    outage_minutes: tuple[int, int] = (5, 30)
    outage_catchup_fraction: float = 0.5
    campaign_sensitivity: float = 1.0
    high_priority_share: float = 0.1
    batch_period_min: int = 0
    batch_minutes: int = 5
    batch_multiplier: float = 1.0

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.service_id or self.service_id == "*":
            problems.append("service_id must be a non-empty name other than '*'")
        if not self.base_eps > 0:
            problems.append("base_eps must be > 0")
        for name in ("daily_amplitude", "weekly_amplitude", "high_priority_share"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} must be in [0, 1]")
        if not self.weekend_factor > 0:
            problems.append("weekend_factor must be > 0")
        if not self.trend_per_day > -1:
            problems.append("trend_per_day must be > -1")
        if not self.noise_cv >= 0:
            problems.append("noise_cv must be >= 0")
        if not 0 <= self.peak_hour <= 24:
            problems.append("peak_hour must be in [0, 24]")
        if self.flash_crowds_per_week < 0 or self.outages_per_week < 0:
            problems.append("flash_crowds_per_week and outages_per_week must be >= 0")
        problems += _check_range("flash_crowd_multiplier", self.flash_crowd_multiplier, 1.0)
        problems += _check_range("flash_crowd_decay_min", self.flash_crowd_decay_min, 1.0)
        problems += _check_range("outage_minutes", self.outage_minutes, 1)
        if not 0 <= self.outage_catchup_fraction <= 1:
            problems.append("outage_catchup_fraction must be in [0, 1]")
        if self.campaign_sensitivity < 0:
            problems.append("campaign_sensitivity must be >= 0")
        if self.batch_period_min < 0 or (
            self.batch_period_min and not 1 <= self.batch_minutes <= self.batch_period_min
        ):
            problems.append("need batch_period_min >= 0 and 1 <= batch_minutes <= period")
        if not self.batch_multiplier > 0:
            problems.append("batch_multiplier must be > 0")
        if problems:
            raise ValueError(
                f"invalid SyntheticServiceSpec {self.service_id!r}: " + "; ".join(problems)
            )


def default_services() -> tuple[SyntheticServiceSpec, ...]:
    """The demo's three services, each with a different traffic shape."""
    return (
        # Business-critical shop traffic: deep evening-peaked daily cycle, growth,
        # reacts most to campaigns, many high-priority (payment) events.
        SyntheticServiceSpec(
            service_id="checkout",
            base_eps=120.0,
            daily_amplitude=0.8,
            weekly_amplitude=0.05,
            weekend_factor=0.8,
            trend_per_day=0.003,
            noise_cv=0.08,
            peak_hour=20.0,
            flash_crowds_per_week=0.3,
            outages_per_week=0.25,
            campaign_sensitivity=1.5,
            high_priority_share=0.3,
        ),
        # Bursty fan-out: frequent, large flash crowds, noisy, morning peak.
        SyntheticServiceSpec(
            service_id="notifications",
            base_eps=200.0,
            daily_amplitude=0.5,
            weekly_amplitude=0.1,
            weekend_factor=0.9,
            noise_cv=0.2,
            peak_hour=9.0,
            flash_crowds_per_week=3.0,
            flash_crowd_multiplier=(2.0, 6.0),
            flash_crowd_decay_min=(20.0, 60.0),
            outages_per_week=0.5,
            campaign_sensitivity=0.8,
            high_priority_share=0.1,
        ),
        # Batchy back-office load: nightly peak, hourly batch bursts, weak weekly cycle.
        SyntheticServiceSpec(
            service_id="analytics",
            base_eps=80.0,
            daily_amplitude=0.3,
            weekly_amplitude=0.02,
            weekend_factor=0.95,
            trend_per_day=0.001,
            noise_cv=0.25,
            peak_hour=2.0,
            flash_crowds_per_week=0.2,
            outages_per_week=0.1,
            campaign_sensitivity=0.2,
            high_priority_share=0.02,
            batch_period_min=60,
            batch_minutes=5,
            batch_multiplier=2.5,
        ),
    )


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate.

    Args:
        start: First minute (naive, minute-aligned); default a Monday.
        days: Length in whole days.
        services: Service profiles (unique ids).
        seed: Root seed of all randomness.
        holidays: Dates of holidays. ``None`` derives ``days // 14`` weekdays
            (at least one when ``days >= 7``) inside the range from the seed.
        campaigns_per_month: Campaigns per 30 days; the count is
            ``round(campaigns_per_month * days / 30)``, placed without overlap.
        campaign_hours: Range of a campaign's duration, hours (ramps included).
        campaign_multiplier: Range of a campaign's peak multiplier ``M``.
        campaign_ramp_hours: Ramp-up time to the full multiplier, hours; the
            ramp-down takes at most 30 minutes. Both are capped at a third of the
            campaign.
    """

    start: pd.Timestamp = field(default_factory=lambda: pd.Timestamp("2026-01-05 00:00"))
    days: int = 30
    services: tuple[SyntheticServiceSpec, ...] = field(default_factory=default_services)
    seed: int = 0
    holidays: tuple[dt.date, ...] | None = None
    campaigns_per_month: float = 2.0
    campaign_hours: tuple[float, float] = (6.0, 48.0)
    campaign_multiplier: tuple[float, float] = (1.3, 2.0)
    campaign_ramp_hours: float = 2.0

    def __post_init__(self) -> None:
        problems: list[str] = []
        start = pd.Timestamp(self.start)
        if start.tz is not None or start != start.floor("min"):
            problems.append("start must be a naive timestamp on a whole minute")
        if self.days < 1:
            problems.append("days must be >= 1")
        if not self.services:
            problems.append("services must not be empty")
        ids = [s.service_id for s in self.services]
        if len(set(ids)) != len(ids):
            problems.append(f"service ids must be unique, got {ids}")
        if self.campaigns_per_month < 0:
            problems.append("campaigns_per_month must be >= 0")
        problems += _check_range("campaign_hours", self.campaign_hours, 0.5)
        problems += _check_range("campaign_multiplier", self.campaign_multiplier, 1.0)
        if self.campaign_ramp_hours < 0:
            problems.append("campaign_ramp_hours must be >= 0")
        if problems:
            raise ValueError("invalid SyntheticConfig: " + "; ".join(problems))
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "services", tuple(self.services))
        if self.holidays is not None:
            dates = tuple(pd.Timestamp(d).date() for d in self.holidays)
            object.__setattr__(self, "holidays", dates)

    @property
    def n_minutes(self) -> int:
        return self.days * _MIN_PER_DAY


@dataclass(frozen=True, eq=False)
class SyntheticData:
    """Output of :func:`generate`.

    Args:
        config: The configuration it came from.
        events: One row per service per minute: ``service_id, ts, events_in,
            events_high_priority, events_normal_priority`` (int64 counts).
        calendar: One global row per minute: ``ts, service_id ("*"), is_holiday,
            business_event, expected_traffic_multiplier``.
        rates: Noiseless expected events per minute, shape ``(S, T)`` in the order
            of ``config.services``.
        anomalies: Ground truth ``service_id, start, end, kind`` with ``kind`` in
            ``{"flash_crowd", "outage"}`` and ``end`` exclusive.
    """

    config: SyntheticConfig
    events: pd.DataFrame
    calendar: pd.DataFrame
    rates: np.ndarray
    anomalies: pd.DataFrame

    @property
    def service_ids(self) -> tuple[str, ...]:
        return tuple(s.service_id for s in self.config.services)

    @property
    def timestamps(self) -> pd.DatetimeIndex:
        return pd.date_range(self.config.start, periods=self.config.n_minutes, freq="min")


@dataclass(frozen=True)
class _Calendar:
    day_index: np.ndarray  # (T,) calendar day of each minute, 0 = day of start
    holiday_days: np.ndarray  # (D,) bool per calendar day
    off_days: np.ndarray  # (D,) bool: Saturday, Sunday or holiday
    campaign: np.ndarray  # (T,) multiplier M(t)
    event_name: np.ndarray  # (T,) object

    @property
    def is_holiday(self) -> np.ndarray:
        return self.holiday_days[self.day_index]

    @property
    def off_minute(self) -> np.ndarray:
        return self.off_days[self.day_index]


def _service_seed(seed: int, service_id: str) -> np.random.SeedSequence:
    # crc32, not hash(): Python's str hash is salted per process.
    return np.random.SeedSequence(seed, spawn_key=(1, zlib.crc32(service_id.encode())))


def _build_calendar(config: SyntheticConfig) -> _Calendar:
    days, n = config.days, config.n_minutes
    children = np.random.SeedSequence(config.seed, spawn_key=(0,)).spawn(2)
    holiday_rng = np.random.default_rng(children[_HOLIDAYS])
    campaign_rng = np.random.default_rng(children[_CAMPAIGNS])
    # Calendar days touched by the range (one more than `days` when start is not
    # midnight), so holidays and weekends follow the wall clock.
    offset_min = config.start.hour * 60 + config.start.minute
    day_index = (offset_min + np.arange(n)) // _MIN_PER_DAY
    day_dates = pd.date_range(config.start.normalize(), periods=int(day_index[-1]) + 1, freq="D")
    if config.holidays is None:
        weekdays = np.flatnonzero(day_dates.dayofweek < 5)
        count = max(days // 14, 1 if days >= 7 else 0)
        chosen = holiday_rng.choice(weekdays, size=min(count, weekdays.size), replace=False)
        holiday_days = np.zeros(day_dates.size, dtype=bool)
        holiday_days[chosen] = True
    else:
        wanted = set(config.holidays)
        holiday_days = np.array([d.date() in wanted for d in day_dates])
    off_days = (day_dates.dayofweek >= 5) | holiday_days

    campaign = np.ones(n)
    event_name = np.full(n, "", dtype=object)
    n_campaigns = min(round(config.campaigns_per_month * days / 30), n)
    if n_campaigns:
        # One campaign per equal segment: campaigns never overlap.
        segment = n // n_campaigns
        for i in range(n_campaigns):
            hours = campaign_rng.uniform(*config.campaign_hours)
            length = max(1, min(round(hours * 60), segment))
            first = i * segment + int(campaign_rng.integers(0, segment - length + 1))
            peak = campaign_rng.uniform(*config.campaign_multiplier)
            up = max(1, min(round(config.campaign_ramp_hours * 60), length // 3))
            down = max(1, min(30, length // 3))
            pos = np.arange(length)
            # Ramps reach the peak at their ends, so every campaign minute is > 1.
            shape = np.minimum(
                np.minimum((pos + 1) / up, 1.0),
                np.minimum((length - pos) / down, 1.0),
            )
            campaign[first : first + length] = 1.0 + (peak - 1.0) * shape
            event_name[first : first + length] = f"campaign-{i + 1}"
    return _Calendar(
        day_index=day_index,
        holiday_days=holiday_days,
        off_days=np.asarray(off_days),
        campaign=campaign,
        event_name=event_name,
    )


def _day_level(spec: SyntheticServiceSpec, off_minute: np.ndarray) -> np.ndarray:
    """Per-minute level: 1 on working days, weekend_factor on off days, blended over 2 h."""
    level = np.where(off_minute, spec.weekend_factor, 1.0)
    if spec.weekend_factor == 1.0 or not off_minute.any():
        return level
    half = _WEEKEND_BLEND_MIN // 2
    padded = np.pad(level, half, mode="edge")
    kernel = np.full(_WEEKEND_BLEND_MIN, 1.0 / _WEEKEND_BLEND_MIN)
    return np.convolve(padded, kernel, mode="valid")[: level.size]


def _service_rate(
    spec: SyntheticServiceSpec,
    config: SyntheticConfig,
    calendar: _Calendar,
    minute_of_day: np.ndarray,
    t_days: np.ndarray,
    off_minute: np.ndarray,
    children: list[np.random.SeedSequence],
) -> tuple[np.ndarray, list[tuple[int, int, str]]]:
    """Noiseless expected events per minute of one service, and its anomalies."""
    n = t_days.size
    theta = 2 * np.pi * (minute_of_day / 60.0 - spec.peak_hour) / 24.0
    # Both harmonics peak at theta = 0; dividing by 1 + weight puts the peak at 1 and
    # keeps the daily mean at exactly 1, so base_eps is the mean rate.
    shape = (np.cos(theta) + _SECOND_HARMONIC * np.cos(2 * theta)) / (1 + _SECOND_HARMONIC)
    daily = 1.0 + spec.daily_amplitude * shape
    # Week phase in days since Monday 00:00: the cosine peaks on Wednesday at noon.
    offset_min = config.start.hour * 60 + config.start.minute
    week_days = config.start.dayofweek + (offset_min + np.arange(n)) / _MIN_PER_DAY
    weekly = 1.0 + spec.weekly_amplitude * np.cos(2 * np.pi * (week_days - 2.5) / 7.0)
    trend = (1.0 + spec.trend_per_day) ** t_days
    campaign = 1.0 + spec.campaign_sensitivity * (calendar.campaign - 1.0)
    level = _day_level(spec, off_minute)
    rate = spec.base_eps * 60.0 * daily * weekly * level * trend * campaign
    if spec.batch_period_min:
        # Bursts on the wall clock (e.g. at every full hour), not relative to start.
        in_batch = (offset_min + np.arange(n)) % spec.batch_period_min < spec.batch_minutes
        rate = np.where(in_batch, rate * spec.batch_multiplier, rate)

    anomalies: list[tuple[int, int, str]] = []
    weeks = n / _MIN_PER_WEEK

    flash_rng = np.random.default_rng(children[_FLASH])
    for _ in range(flash_rng.poisson(spec.flash_crowds_per_week * weeks)):
        onset = int(flash_rng.integers(0, n))
        jump = flash_rng.uniform(*spec.flash_crowd_multiplier)
        tau = flash_rng.uniform(*spec.flash_crowd_decay_min)
        stop = min(n, onset + int(np.ceil(6 * tau)))
        excess = (jump - 1.0) * np.exp(-np.arange(stop - onset) / tau)
        rate[onset:stop] *= 1.0 + excess
        # Ground-truth end: when the excess has decayed below 5 % of base traffic.
        visible = np.log(max(jump - 1.0, 0.05) / 0.05) * tau
        anomalies.append((onset, min(n, onset + max(1, int(np.ceil(visible)))), "flash_crowd"))

    outage_rng = np.random.default_rng(children[_OUTAGE])
    lo, hi = spec.outage_minutes
    for _ in range(outage_rng.poisson(spec.outages_per_week * weeks)):
        length = int(outage_rng.integers(lo, hi + 1))
        onset = int(outage_rng.integers(0, max(1, n - length)))
        stop = min(n, onset + length)
        missed = rate[onset:stop].sum() * (1.0 - _OUTAGE_RESIDUAL)
        rate[onset:stop] *= _OUTAGE_RESIDUAL
        # The backlog comes back front-loaded (linearly falling) over half the
        # outage's length, at least 5 minutes.
        catch_len = min(n - stop, max(5, length // 2))
        if catch_len > 0:
            weights = np.arange(catch_len, 0, -1, dtype=np.float64)
            rate[stop : stop + catch_len] += (
                spec.outage_catchup_fraction * missed * weights / weights.sum()
            )
        anomalies.append((onset, stop, "outage"))
    return rate, anomalies


def generate(config: SyntheticConfig) -> SyntheticData:
    """Generate traffic, calendar and ground truth for every configured service.

    Args:
        config: What to generate; the same config always gives the same data.

    Returns:
        Events, calendar, noiseless rates and anomalies (see :class:`SyntheticData`).
    """
    n = config.n_minutes
    calendar = _build_calendar(config)
    ts = pd.date_range(config.start, periods=n, freq="min")
    minute = np.arange(n)
    minute_of_day = (minute + config.start.hour * 60 + config.start.minute) % _MIN_PER_DAY
    t_days = minute / _MIN_PER_DAY
    off_minute = calendar.off_minute

    n_services = len(config.services)
    rates = np.empty((n_services, n))
    event_in = np.empty((n_services, n), dtype=np.int64)
    high = np.empty((n_services, n), dtype=np.int64)
    anomaly_rows: list[dict[str, object]] = []
    for s, spec in enumerate(config.services):
        # Spawned once: a second spawn() on the same sequence gives new children.
        children = _service_seed(config.seed, spec.service_id).spawn(5)
        rate, anomalies = _service_rate(
            spec, config, calendar, minute_of_day, t_days, off_minute, children
        )
        rates[s] = rate
        # Lognormal with E = 1 and CV = noise_cv.
        sigma = np.sqrt(np.log1p(spec.noise_cv**2))
        noise_rng = np.random.default_rng(children[_NOISE])
        noise = np.exp(sigma * noise_rng.standard_normal(n) - sigma**2 / 2)
        event_in[s] = np.random.default_rng(children[_ARRIVALS]).poisson(rate * noise)
        theta = 2 * np.pi * (minute_of_day / 60.0 - spec.peak_hour) / 24.0
        share = np.clip(spec.high_priority_share * (1 + _PRIORITY_SWING * np.cos(theta)), 0, 1)
        high[s] = np.random.default_rng(children[_PRIORITY]).binomial(event_in[s], share)
        for onset, stop, kind in anomalies:
            anomaly_rows.append(
                {
                    "service_id": spec.service_id,
                    "start": ts[onset],
                    "end": config.start + pd.Timedelta(minutes=stop),
                    "kind": kind,
                }
            )

    service_ids = [s.service_id for s in config.services]
    events = pd.DataFrame(
        {
            "service_id": np.repeat(np.array(service_ids, dtype=object), n),
            "ts": np.tile(ts.to_numpy(), n_services),
            "events_in": event_in.ravel(),
            "events_high_priority": high.ravel(),
            "events_normal_priority": (event_in - high).ravel(),
        }
    )
    calendar_frame = pd.DataFrame(
        {
            "ts": ts,
            "service_id": "*",
            "is_holiday": calendar.is_holiday,
            "business_event": calendar.event_name,
            "expected_traffic_multiplier": calendar.campaign,
        }
    )
    anomalies_frame = pd.DataFrame(anomaly_rows, columns=["service_id", "start", "end", "kind"])
    anomalies_frame = anomalies_frame.astype(
        {"start": "datetime64[ns]", "end": "datetime64[ns]", "kind": object}
    )
    anomalies_frame = anomalies_frame.sort_values(["service_id", "start"], ignore_index=True)
    return SyntheticData(
        config=config,
        events=events,
        calendar=calendar_frame,
        rates=rates,
        anomalies=anomalies_frame,
    )


def to_traces(data: SyntheticData) -> list[Trace]:
    """One :class:`Trace` per service from ``events_in``, in service order.

    Args:
        data: Output of :func:`generate`.

    Returns:
        Traces named by service id, one-minute source interval.
    """
    n = data.config.n_minutes
    counts = data.events["events_in"].to_numpy(dtype=np.float64).reshape(-1, n)
    return [
        Trace(name=sid, start=data.config.start, counts=counts[i], source_interval_min=1.0)
        for i, sid in enumerate(data.service_ids)
    ]
