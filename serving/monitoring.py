"""Feedback monitoring: how the deployed forecaster and controller did over the last window.

Every inference cycle logs its decisions as ``scaling_decisions`` rows: the job target
for minute ``ts`` and the 1-minute-ahead forecast quantiles of ``events_in`` for that
minute. What actually arrived lands in ``event_metrics`` and ``system_metrics`` a minute
later. :func:`evaluate` joins them over the recent window ``[now - window, now)`` and
checks, per service:

Forecast error
    wQL over the minutes that have both a complete forecast (q10, q50, q90 finite) and
    an actual, exactly as DESIGN.md section 11 defines it
    (:func:`models.forecaster.metrics.wql`); finding when above ``max_wql``. Reported
    beside it: coverage of the 80 % interval, MdAPE (median of ``|y - q50| / y`` over
    minutes with ``y > 0``) and bias (``sum(q50 - y) / sum(y)``).
Coverage
    Share of actuals inside ``[q10, q90]``; finding when below ``min_coverage_80``.
SLA
    An *estimate* from the per-minute metrics (the exact per-event latency exists only in
    the simulator), see :func:`sla_compliance`; finding when below the service's
    ``sla_target`` minus ``sla_tolerance``.
Drift
    Population stability index of input features, the recent window against a reference
    window, see :func:`population_stability_index` and :data:`DRIFT_FEATURES`; finding
    when above ``max_drift_psi``.
Cost
    Billed job-minutes (``jobs_running + jobs_starting``) times ``cost_per_job_hour / 60``
    over the window; reported, never judged.

Evidence
    A check judges a service only with at least ``min_minutes`` minutes of evidence (and
    drift also ``min_reference_minutes`` of reference); with less it produces no finding
    and a note says why. Decisions without a forecast (the shield's fallback) count as
    decisions but not as forecast evidence.

Retraining targets (:attr:`MonitorReport.retrain`)
    ``forecaster``: forecast error, coverage, and drift of a feature the forecaster reads
    (``events_in``). ``controller``: SLA breaches and drift of the controller's features
    (utilization, processing time), but only for services whose forecast has no finding
    (a bad forecast explains them, and retraining the forecaster comes first) and, for
    SLA, that the controller decided for in the window. A finding without a target is
    still reported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pandas as pd

from models.forecaster.metrics import wql

FindingKind = Literal["forecast_error", "coverage", "drift", "sla"]
Target = Literal["forecaster", "controller"]

FORECASTER: Target = "forecaster"
CONTROLLER: Target = "controller"
ALL_SERVICES = "*"
"""``service_id`` of the pooled row (the contracts' spelling of "every service")."""

PSI_FLOOR = 1e-4
"""Share given to an empty bin so the PSI stays finite (the usual convention)."""
PSI_ATOM_SHARE = 0.05
"""A quantile edge holding at least this share of the reference is a bin of its own."""


@dataclass(frozen=True)
class DriftFeature:
    """One input feature watched for drift.

    Attributes:
        name: Column name.
        table: Table holding it.
        log: Compare ``log1p(value)`` (counts and durations: heavy right tails).
        seasonal: Compare the change against the same minute ``seasonal_lag_days``
            earlier instead of the level (traffic: daily and weekly cycles cancel).
        target: The model that reads it and is retrained when it drifts.
    """

    name: str
    table: Literal["event_metrics", "system_metrics"]
    log: bool
    seasonal: bool
    target: Target


DRIFT_FEATURES: dict[str, DriftFeature] = {
    # Traffic: the forecaster's input. Its level swings with the time of day and week, so a
    # level PSI of one hour against a week fires nearly every hour; the week-over-week
    # change rarely does (measured on 21 simulated days of the demo's services).
    "events_in": DriftFeature(
        "events_in", "event_metrics", log=True, seasonal=True, target=FORECASTER
    ),
    # The controller's operating point: drifts when it no longer holds its target.
    "utilization": DriftFeature(
        "utilization", "system_metrics", log=False, seasonal=False, target=CONTROLLER
    ),
    # Work per event: a slower release changes the capacity a job has.
    "proc_duration_mean_ms": DriftFeature(
        "proc_duration_mean_ms", "event_metrics", log=True, seasonal=False, target=CONTROLLER
    ),
}
"""Features :func:`evaluate` can watch, by name (``MonitorThresholds.drift_features``)."""


@dataclass(frozen=True)
class MonitorThresholds:
    """What counts as evidence and when a check fails.

    Attributes:
        window_minutes: Recent window judged, minutes before ``now`` (default 60).
        min_minutes: Minutes of evidence a check needs in the window before it may
            produce a finding: forecast/actual pairs, minutes with queue metrics,
            valid drift values (default 30).
        max_wql: Forecast error finding when the window's wQL is above this (default
            0.3: over twice the wQL, about 0.13, of a calibrated forecast of traffic with
            25 % noise, the noisiest demo service; forecasts 4x too low score 0.75).
        min_coverage_80: Coverage finding when the share of actuals inside [q10, q90] is
            below this (default 0.6; nominal 0.8, one-hour binomial s.d. 0.05).
        sla_tolerance: SLA finding when the estimated compliance is below the service's
            ``sla_target`` minus this (default 0.0).
        max_drift_psi: Drift finding when a feature's PSI is above this (default 0.5;
            0.25, the usual "significant shift" level for large samples, fired in about a
            third of the hours of simulated demo traffic without any change: one hour is
            60 samples, and last week's campaigns and flash crowds echo in the weekly
            change; at 0.5 that is 0-23 % by service, mostly those echoes and flash
            crowds, while a one-hour 1.5x level shift still passes in 86-99 % of the hours
            and a 4x one in all but a few).
        drift_bins: Quantile bins of the reference for the PSI (default 5: with 60
            recent minutes, 12 expected per bin; 10 bins multiplied the false alarms).
        drift_features: Watched features, names in :data:`DRIFT_FEATURES` (default
            events_in, utilization, proc_duration_mean_ms).
        reference_days: Length of the reference window, which ends where the recent
            window starts (default 7.0).
        seasonal_lag_days: Lag of the seasonal change of seasonal features (default 7: a
            week, so weekends compare with weekends); 0 compares the level itself.
        min_reference_minutes: Valid reference values a drift check needs (default 1440).
        cooldown_minutes: After a retraining run of a deployment started or was
            scheduled, no other is triggered for this long (default 360).
    """

    window_minutes: int = 60
    min_minutes: int = 30
    max_wql: float = 0.3
    min_coverage_80: float = 0.6
    sla_tolerance: float = 0.0
    max_drift_psi: float = 0.5
    drift_bins: int = 5
    drift_features: tuple[str, ...] = ("events_in", "utilization", "proc_duration_mean_ms")
    reference_days: float = 7.0
    seasonal_lag_days: int = 7
    min_reference_minutes: int = 1440
    cooldown_minutes: int = 360

    def __post_init__(self) -> None:
        problems = []
        if self.window_minutes < 1:
            problems.append(f"window_minutes must be >= 1, got {self.window_minutes}")
        if not 1 <= self.min_minutes <= self.window_minutes:
            problems.append(
                f"min_minutes must be in 1..window_minutes ({self.window_minutes}), "
                f"got {self.min_minutes}"
            )
        if not self.max_wql > 0:
            problems.append(f"max_wql must be > 0, got {self.max_wql}")
        if not 0 <= self.min_coverage_80 <= 1:
            problems.append(f"min_coverage_80 must be in [0, 1], got {self.min_coverage_80}")
        if not 0 <= self.sla_tolerance <= 1:
            problems.append(f"sla_tolerance must be in [0, 1], got {self.sla_tolerance}")
        if not self.max_drift_psi > 0:
            problems.append(f"max_drift_psi must be > 0, got {self.max_drift_psi}")
        if self.drift_bins < 2:
            problems.append(f"drift_bins must be >= 2, got {self.drift_bins}")
        unknown = [f for f in self.drift_features if f not in DRIFT_FEATURES]
        if unknown:
            problems.append(
                f"unknown drift_features {unknown}; choose from {sorted(DRIFT_FEATURES)}"
            )
        if not self.reference_days > 0:
            problems.append(f"reference_days must be > 0, got {self.reference_days}")
        if self.seasonal_lag_days < 0:
            problems.append(f"seasonal_lag_days must be >= 0, got {self.seasonal_lag_days}")
        if self.min_reference_minutes < 1:
            problems.append(f"min_reference_minutes must be >= 1, got {self.min_reference_minutes}")
        if self.cooldown_minutes < 0:
            problems.append(f"cooldown_minutes must be >= 0, got {self.cooldown_minutes}")
        if problems:
            raise ValueError("invalid MonitorThresholds: " + "; ".join(problems))

    @property
    def window(self) -> pd.Timedelta:
        """The recent window's length."""
        return pd.Timedelta(minutes=self.window_minutes)

    @property
    def reference(self) -> pd.Timedelta:
        """The reference window's length."""
        return pd.Timedelta(days=self.reference_days)

    def lookback(self, table: str) -> pd.Timedelta:
        """How far before ``now`` :func:`evaluate` reads rows of ``table``: the window, and
        for a table with watched features also the reference and any seasonal lag."""
        spans = [self.window]
        for name in self.drift_features:
            spec = DRIFT_FEATURES[name]
            if spec.table == table:
                lag = pd.Timedelta(days=self.seasonal_lag_days if spec.seasonal else 0)
                spans.append(self.window + self.reference + lag)
        return max(spans)


@dataclass(frozen=True)
class Finding:
    """One check a service failed.

    Attributes:
        kind: ``forecast_error``, ``coverage``, ``drift`` or ``sla``.
        service: The service.
        value: What was measured (wQL, coverage, PSI, SLA compliance).
        threshold: The limit it passed.
        message: One line for people.
        feature: The drifting feature (drift findings only).
        target: The model retrained because of it, or None (explained by another
            finding, or nothing of ours decided).
    """

    kind: FindingKind
    service: str
    value: float
    threshold: float
    message: str
    feature: str = ""
    target: Target | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON and flow results."""
        return {
            "kind": self.kind,
            "service": self.service,
            "value": self.value,
            "threshold": self.threshold,
            "message": self.message,
            "feature": self.feature,
            "target": self.target,
        }


@dataclass(frozen=True)
class ServiceHealth:
    """One service's numbers over the window (``service_id`` ``"*"``: all pooled).

    Attributes:
        service_id: The service, or ``"*"``.
        decisions: Decisions logged for minutes of the window.
        fallback_decisions: Those without a complete forecast (shield fallback).
        forecast_minutes: Minutes with a complete forecast and an actual.
        wql: wQL over those minutes (NaN without any, or when all actuals are 0).
        coverage_80: Share of actuals inside [q10, q90].
        mdape: Median of ``|y - q50| / y`` over minutes with ``y > 0``.
        bias: ``sum(q50 - y) / sum(y)``: negative when the forecast is low.
        events_in: Events that arrived in the window.
        sla_minutes: Minutes with traffic and queue metrics (the SLA estimate's evidence).
        sla_compliance: Estimated share of events within the SLA latency.
        sla_target: The profile's target (pooled: NaN).
        cost: Billed job-minutes times price over the window.
        cost_per_1k_events: ``cost`` per 1,000 events processed.
        budget_pace: ``cost`` over the daily budget's share of the window (1 = on pace).
    """

    service_id: str
    decisions: int = 0
    fallback_decisions: int = 0
    forecast_minutes: int = 0
    wql: float = math.nan
    coverage_80: float = math.nan
    mdape: float = math.nan
    bias: float = math.nan
    events_in: float = 0.0
    sla_minutes: int = 0
    sla_compliance: float = math.nan
    sla_target: float = math.nan
    cost: float = math.nan
    cost_per_1k_events: float = math.nan
    budget_pace: float = math.nan


@dataclass(frozen=True)
class DriftScore:
    """The PSI of one feature of one service.

    Attributes:
        service_id: The service.
        feature: Feature name.
        psi: Population stability index (NaN when not judged).
        recent_minutes: Valid values in the recent window.
        reference_minutes: Valid values in the reference window.
        recent_median: Median of the compared values in the window (log1p / change
            undone: a level, or a ratio for seasonal features).
        reference_median: The same over the reference.
    """

    service_id: str
    feature: str
    psi: float
    recent_minutes: int
    reference_minutes: int
    recent_median: float = math.nan
    reference_median: float = math.nan


@dataclass(frozen=True)
class MonitorReport:
    """What :func:`evaluate` found.

    Attributes:
        now: End (exclusive) of the window, naive UTC minute.
        window_start: First minute of the window.
        thresholds: The thresholds used.
        services: Per-service numbers, sorted by service.
        overall: All services pooled (forecast and SLA over all their minutes).
        drift: PSI per service and watched feature.
        findings: Checks that failed.
        retrain: Retraining target -> reasons (one line per finding); empty when none.
        notes: Checks that could not judge, and why.
    """

    now: pd.Timestamp
    window_start: pd.Timestamp
    thresholds: MonitorThresholds
    services: tuple[ServiceHealth, ...]
    overall: ServiceHealth
    drift: tuple[DriftScore, ...]
    findings: tuple[Finding, ...]
    retrain: dict[str, list[str]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def metrics(self) -> dict[str, float]:
        """Flat numbers for logging: ``<service>.<name>`` (pooled: ``all.<name>``),
        ``<service>.psi_<feature>``, ``findings`` and ``retrain_<target>`` (0/1).
        Values that could not be computed (NaN) are left out."""
        out: dict[str, float] = {"findings": float(len(self.findings))}
        for target in (FORECASTER, CONTROLLER):
            out[f"retrain_{target}"] = float(target in self.retrain)
        names = (
            "decisions",
            "fallback_decisions",
            "forecast_minutes",
            "wql",
            "coverage_80",
            "mdape",
            "bias",
            "events_in",
            "sla_compliance",
            "cost",
            "cost_per_1k_events",
            "budget_pace",
        )
        for health in (self.overall, *self.services):
            key = "all" if health.service_id == ALL_SERVICES else health.service_id
            for name in names:
                value = float(getattr(health, name))
                if math.isfinite(value):
                    out[f"{key}.{name}"] = value
        for score in self.drift:
            if math.isfinite(score.psi):
                out[f"{score.service_id}.psi_{score.feature}"] = score.psi
        return out

    def markdown(self) -> str:
        """Tables of the per-service numbers, the drift and the findings, for an artifact."""
        t = self.thresholds
        lines = [
            "# Feedback monitoring",
            "",
            f"Window {self.window_start:%Y-%m-%d %H:%M} to {self.now:%Y-%m-%d %H:%M} UTC "
            f"({t.window_minutes} min), reference the {t.reference_days:g} days before it.",
            "",
        ]
        if self.retrain:
            for target, reasons in self.retrain.items():
                lines.append(f"- **retrain {target}**: {len(reasons)} reason(s)")
        else:
            lines.append("- **no retraining needed**")
        lines += ["", "## Findings", ""]
        if self.findings:
            lines += [
                "| kind | service | feature | value | threshold | retrain | why |",
                "|---|---|---|---|---|---|---|",
            ]
            for f in self.findings:
                lines.append(
                    f"| {f.kind} | {f.service} | {f.feature or '-'} | {_fmt(f.value)} | "
                    f"{_fmt(f.threshold)} | {f.target or '-'} | {f.message} |"
                )
        else:
            lines.append("None.")
        lines += [
            "",
            "## Services",
            "",
            "| service | decisions (fallback) | forecast min | wQL | coverage 80 | MdAPE | "
            "bias | events in | SLA est. | SLA target | cost | cost / 1k events | "
            "budget pace |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for h in (*self.services, self.overall):
            name = "all" if h.service_id == ALL_SERVICES else h.service_id
            lines.append(
                f"| {name} | {h.decisions} ({h.fallback_decisions}) | {h.forecast_minutes} | "
                f"{_fmt(h.wql)} | {_fmt(h.coverage_80)} | {_fmt(h.mdape)} | {_fmt(h.bias)} | "
                f"{h.events_in:,.0f} | {_fmt(h.sla_compliance, 4)} | {_fmt(h.sla_target, 4)} | "
                f"{_fmt(h.cost)} | {_fmt(h.cost_per_1k_events, 4)} | {_fmt(h.budget_pace)} |"
            )
        if self.drift:
            features = list(dict.fromkeys(d.feature for d in self.drift))
            by_key = {(d.service_id, d.feature): d for d in self.drift}
            lines += [
                "",
                f"## Drift (PSI, finding above {t.max_drift_psi:g})",
                "",
                "| service | " + " | ".join(features) + " |",
                "|---|" + "---|" * len(features),
            ]
            for sid in dict.fromkeys(d.service_id for d in self.drift):
                cells = [
                    _fmt(by_key[(sid, f)].psi) if (sid, f) in by_key else "-" for f in features
                ]
                lines.append(f"| {sid} | " + " | ".join(cells) + " |")
        if self.notes:
            lines += ["", "## Not judged (too little evidence)", ""]
            lines += [f"- {note}" for note in self.notes]
        lines += [
            "",
            "## Definitions",
            "",
            f"- wQL and coverage as DESIGN.md section 11, over minutes with a forecast and an "
            f"actual; findings at wQL > {t.max_wql:g}, coverage < {t.min_coverage_80:g}, "
            f"each with at least {t.min_minutes} minutes of evidence.",
            "- SLA compliance is estimated from each minute's queue-wait p50/p95 "
            "(interpolated), dropped events count as misses.",
            f"- PSI over {t.drift_bins} quantile bins of the reference; events_in as its "
            f"log change against {t.seasonal_lag_days} days earlier.",
        ]
        return "\n".join(lines) + "\n"


def _fmt(value: float, digits: int = 3) -> str:
    return "-" if not math.isfinite(value) else f"{value:.{digits}f}"


# -- building blocks ---------------------------------------------------------------------


def population_stability_index(reference: np.ndarray, recent: np.ndarray, bins: int = 5) -> float:
    """PSI of ``recent`` against ``reference``: ``sum_b (r_b - e_b) * ln(r_b / e_b)``.

    Binning: the edges are the reference's quantiles at ``1/bins .. (bins-1)/bins``
    (duplicates merged), giving open outer bins, so values beyond the reference's range
    fall in the first or last bin. An edge that holds at least ``PSI_ATOM_SHARE`` of the
    reference (ties: a constant feature, a queue that is mostly empty) is a bin of its own
    and the values either side of it are separate bins, so a constant reference still
    tells a change. Shares of empty bins are floored at ``PSI_FLOOR``. Non-finite values
    are dropped.

    Args:
        reference: Values of the reference window.
        recent: Values of the recent window.
        bins: Quantile bins (>= 2).

    Returns:
        The PSI (>= 0); NaN when either side has no finite value.
    """
    ref = np.asarray(reference, dtype=np.float64)
    rec = np.asarray(recent, dtype=np.float64)
    ref = ref[np.isfinite(ref)]
    rec = rec[np.isfinite(rec)]
    if ref.size == 0 or rec.size == 0:
        return math.nan
    levels = np.arange(1, bins) / bins
    edges = np.unique(np.quantile(ref, levels))
    atoms = np.array([np.mean(ref == e) >= PSI_ATOM_SHARE for e in edges])
    ref_bins = _bin_index(ref, edges, atoms)
    rec_bins = _bin_index(rec, edges, atoms)
    n_bins = 2 * edges.size + 1
    expected = np.bincount(ref_bins, minlength=n_bins) / ref.size
    actual = np.bincount(rec_bins, minlength=n_bins) / rec.size
    used = (expected > 0) | (actual > 0)
    e = np.maximum(expected[used], PSI_FLOOR)
    a = np.maximum(actual[used], PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def _bin_index(values: np.ndarray, edges: np.ndarray, atoms: np.ndarray) -> np.ndarray:
    """Bins ``2i`` are the intervals around edge ``i``; ``2i + 1`` is edge ``i`` itself when
    it is an atom. A value equal to a non-atom edge goes to the interval above it."""
    right = np.searchsorted(edges, values, side="right")
    left = np.searchsorted(edges, values, side="left")
    index = 2 * right
    on_edge = right > left
    on_atom = on_edge & atoms[np.clip(left, 0, max(edges.size - 1, 0))]
    index[on_atom] = 2 * left[on_atom] + 1
    return index


def sla_compliance(
    events_in: np.ndarray,
    events_dropped: np.ndarray,
    wait_p50_s: np.ndarray,
    wait_p95_s: np.ndarray,
    proc_mean_ms: np.ndarray,
    sla_latency_s: float,
) -> tuple[float, float, int]:
    """Estimated SLA compliance from per-minute metrics.

    The share of a minute's queued events that meet the SLA is read off the queue-wait
    percentiles against the budget ``sla_latency_s - proc_mean_ms / 1000`` (processing
    time unknown: 0): 1 when p95 is within it (exact when the queue was empty, at most
    5 % high otherwise), linear from 0.5 at p50 to 0.95 at p95 when only p50 is, and 0
    when p50 is not (a FIFO backlog delays most of a minute's events alike). Dropped
    events are misses. Compliance = sum of met events / sum of ``events_in`` over the
    minutes with ``events_in`` and ``wait_p95_s`` known. This approximates DESIGN.md
    section 5's per-event definition, which only the simulator can compute exactly.

    Args:
        events_in: Events that arrived per minute.
        events_dropped: Of those, dropped (null: 0).
        wait_p50_s: Median queue wait per minute (null: unknown, treated as above budget
            when p95 is).
        wait_p95_s: 95th percentile queue wait per minute (null: minute not used).
        proc_mean_ms: Mean processing time per minute (null: 0).
        sla_latency_s: The SLA latency.

    Returns:
        ``(met events, events, minutes used)``; divide the first two for the compliance.
    """
    y = np.asarray(events_in, dtype=np.float64)
    p95 = np.asarray(wait_p95_s, dtype=np.float64)
    p50 = np.asarray(wait_p50_s, dtype=np.float64)
    dropped = np.nan_to_num(np.asarray(events_dropped, dtype=np.float64), nan=0.0)
    proc = np.nan_to_num(np.asarray(proc_mean_ms, dtype=np.float64), nan=0.0) / 1000.0
    used = np.isfinite(y) & np.isfinite(p95)
    budget = sla_latency_s - proc
    share = np.zeros_like(y)
    within_p95 = used & (p95 <= budget)
    share[within_p95] = 1.0
    between = used & ~within_p95 & np.isfinite(p50) & (p50 <= budget)
    span = np.where(between, p95 - p50, 1.0)
    frac = np.where(span > 0, (budget - p50) / np.where(span > 0, span, 1.0), 1.0)
    share[between] = 0.5 + 0.45 * np.clip(frac[between], 0.0, 1.0)
    queued = np.clip(y - dropped, 0.0, None)
    met = float(np.sum((queued * share)[used]))
    total = float(np.sum(y[used]))
    return met, total, int(used.sum())


# -- evaluation --------------------------------------------------------------------------


def _minute(now: pd.Timestamp | Any) -> pd.Timestamp:
    ts = pd.Timestamp(now)
    if ts.tz is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.floor("min")


def _values(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A column as float64 (nullable ints included); NaN when the column is missing."""
    if column not in frame.columns:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _between(frame: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    if frame.empty or "ts" not in frame.columns:
        return frame.iloc[0:0]
    ts = _timestamps(frame)
    return frame[(ts >= start) & (ts < end)]


def _timestamps(frame: pd.DataFrame) -> pd.Series:
    ts = frame["ts"]
    # Parsing a column that is already datetime64 is slow (pandas walks it to cache).
    return ts if pd.api.types.is_datetime64_any_dtype(ts.dtype) else pd.to_datetime(ts)


def _by_service(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    if frame.empty or not {"service_id", "ts"} <= set(frame.columns):
        return {}
    rows = frame.drop_duplicates(["service_id", "ts"], keep="last")
    return {str(sid): g.sort_values("ts") for sid, g in rows.groupby("service_id", sort=True)}


def _profile(profiles: pd.DataFrame, service: str, now: pd.Timestamp) -> pd.Series | None:
    """The profile in force at ``now``: the latest row with ts <= now."""
    if profiles.empty or "service_id" not in profiles.columns:
        return None
    rows = profiles[profiles["service_id"].astype(str) == service]
    if "ts" in rows.columns:
        rows = rows[_timestamps(rows) <= now].sort_values("ts")
    return None if rows.empty else rows.iloc[-1]


def _number(row: pd.Series | None, column: str) -> float:
    if row is None or column not in row.index or pd.isna(row[column]):
        return math.nan
    return float(row[column])


@dataclass
class _Pairs:
    y: np.ndarray
    q10: np.ndarray
    q50: np.ndarray
    q90: np.ndarray

    @classmethod
    def empty(cls) -> _Pairs:
        nothing = np.zeros(0)
        return cls(nothing, nothing, nothing, nothing)

    def __add__(self, other: _Pairs) -> _Pairs:
        return _Pairs(
            *(np.concatenate([a, b]) for a, b in zip(self.arrays(), other.arrays(), strict=True))
        )

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.y, self.q10, self.q50, self.q90

    def scores(self) -> dict[str, float]:
        y, q10, q50, q90 = self.arrays()
        if y.size == 0:
            return {"wql": math.nan, "coverage_80": math.nan, "mdape": math.nan, "bias": math.nan}
        total = float(np.sum(y))
        positive = y > 0
        return {
            "wql": wql(y, q10, q50, q90),
            "coverage_80": float(np.mean((y >= q10) & (y <= q90))),
            "mdape": float(np.median(np.abs(y - q50)[positive] / y[positive]))
            if positive.any()
            else math.nan,
            "bias": float(np.sum(q50 - y) / total) if total > 0 else math.nan,
        }


def _pairs(decisions: pd.DataFrame, events: pd.DataFrame) -> tuple[_Pairs, int, int]:
    """Forecast/actual pairs of one service; also its decision and fallback counts."""
    if decisions.empty:
        return _Pairs.empty(), 0, 0
    q = np.column_stack([_values(decisions, f"forecast_q{p}") for p in (10, 50, 90)])
    complete = np.isfinite(q).all(axis=1)
    actual = (
        events.set_index("ts")["events_in"]
        if not events.empty and "events_in" in events.columns
        else pd.Series(dtype=np.float64)
    )
    y = pd.to_numeric(actual.reindex(_timestamps(decisions)), errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan
    )
    ok = complete & np.isfinite(y)
    pairs = _Pairs(y[ok], q[ok, 0], q[ok, 1], q[ok, 2])
    return pairs, len(decisions), int((~complete).sum())


def _drift_values(frame: pd.DataFrame, feature: DriftFeature, lag: pd.Timedelta) -> pd.Series:
    """The compared values of one service's feature, indexed by ts."""
    if frame.empty or feature.name not in frame.columns:
        return pd.Series(dtype=np.float64)
    index = pd.DatetimeIndex(frame["ts"])
    raw = _values(frame, feature.name)
    values = np.log1p(np.clip(raw, 0.0, None)) if feature.log else raw
    if feature.seasonal and lag > pd.Timedelta(0):
        by_ts = pd.Series(values, index=index)
        values = values - by_ts.reindex(index - lag).to_numpy(dtype=np.float64)
    return pd.Series(values, index=index)


def _undo(value: float, feature: DriftFeature, lag_days: int) -> float:
    """A median of compared values back in the feature's units (a ratio when seasonal)."""
    if not math.isfinite(value):
        return math.nan
    if feature.seasonal and lag_days > 0:
        return math.exp(value) if feature.log else value
    return math.expm1(value) if feature.log else value


def evaluate(
    decisions: pd.DataFrame,
    event_metrics: pd.DataFrame,
    system_metrics: pd.DataFrame,
    profiles: pd.DataFrame,
    now: pd.Timestamp,
    thresholds: MonitorThresholds | None = None,
) -> MonitorReport:
    """Judge the forecasts, SLA, cost and input drift of the window before ``now``.

    Args:
        decisions: ``scaling_decisions`` rows (at least the window's).
        event_metrics: ``event_metrics`` rows of ``thresholds.lookback("event_metrics")``
            before ``now`` (the window, the drift reference and its seasonal lag).
        system_metrics: ``system_metrics`` rows of ``thresholds.lookback("system_metrics")``
            before ``now``.
        profiles: ``service_profiles`` rows; the latest with ts <= now is in force.
        now: End of the window (exclusive); floored to the minute, naive UTC.
        thresholds: Evidence and limits (default :class:`MonitorThresholds`).

    Returns:
        The report; no finding for checks with too little evidence (see its notes).
    """
    t = thresholds or MonitorThresholds()
    end = _minute(now)
    start = end - t.window
    ref_start = start - t.reference
    lag = pd.Timedelta(days=t.seasonal_lag_days)

    decided = _by_service(_between(decisions, start, end))
    events_all = _by_service(event_metrics)
    system_all = _by_service(system_metrics)
    services = sorted(
        set(decided)
        | set(_by_service(_between(event_metrics, start, end)))
        | set(_by_service(_between(system_metrics, start, end)))
    )

    healths: list[ServiceHealth] = []
    drift: list[DriftScore] = []
    findings: list[Finding] = []
    notes: list[str] = []
    pooled = _Pairs.empty()
    pooled_met = pooled_total = pooled_cost = pooled_processed = 0.0
    pooled_minutes = pooled_decisions = pooled_fallback = 0
    any_cost = False
    for sid in services:
        events = events_all.get(sid, pd.DataFrame())
        system = system_all.get(sid, pd.DataFrame())
        recent_events = _between(events, start, end)
        recent_system = _between(system, start, end)
        profile = _profile(profiles, sid, end)

        pairs, n_decisions, n_fallback = _pairs(decided.get(sid, pd.DataFrame()), recent_events)
        scores = pairs.scores()
        pooled += pairs
        pooled_decisions += n_decisions
        pooled_fallback += n_fallback
        n_pairs = pairs.y.size
        if n_pairs >= t.min_minutes:
            findings += _forecast_findings(sid, scores, n_pairs, t)
        elif n_decisions:
            notes.append(
                f"{sid}: forecast not judged: {n_pairs} minute(s) with a forecast and an "
                f"actual, fewer than {t.min_minutes} ({n_fallback} fallback decision(s) "
                "without a forecast)"
            )

        arrived = _values(recent_events, "events_in")
        events_in = float(np.nansum(arrived)) if arrived.size else 0.0
        sla_latency = _number(profile, "sla_latency_s")
        sla_target = _number(profile, "sla_target")
        compliance = math.nan
        sla_minutes = 0
        if math.isfinite(sla_latency):
            met, total, sla_minutes = sla_compliance(
                arrived,
                _values(recent_events, "events_dropped"),
                _values(recent_events, "queue_wait_p50_s"),
                _values(recent_events, "queue_wait_p95_s"),
                _values(recent_events, "proc_duration_mean_ms"),
                sla_latency,
            )
            compliance = met / total if total > 0 else math.nan
            pooled_met += met
            pooled_total += total
            pooled_minutes += sla_minutes
            limit = sla_target - t.sla_tolerance
            if sla_minutes >= t.min_minutes and math.isfinite(compliance):
                if math.isfinite(limit) and compliance < limit:
                    findings.append(
                        Finding(
                            "sla",
                            sid,
                            compliance,
                            limit,
                            f"estimated SLA compliance {compliance:.4f} < target "
                            f"{sla_target:.4f} (latency {sla_latency:g} s, {sla_minutes} min)",
                        )
                    )
            elif not recent_events.empty:
                notes.append(
                    f"{sid}: SLA not judged: {sla_minutes} minute(s) with traffic and queue "
                    f"wait, fewer than {t.min_minutes}"
                )
        elif not recent_events.empty:
            notes.append(f"{sid}: SLA and cost not judged: no service profile in force")

        price = _number(profile, "cost_per_job_hour")
        cost = cost_per_1k = pace = math.nan
        if math.isfinite(price) and not recent_system.empty:
            running = _values(recent_system, "jobs_running")
            starting = np.nan_to_num(_values(recent_system, "jobs_starting"), nan=0.0)
            billed = np.where(np.isfinite(running), running + starting, 0.0)
            cost = float(np.sum(billed)) * price / 60.0
            processed = float(np.nansum(_values(recent_events, "events_processed")))
            cost_per_1k = cost / processed * 1000.0 if processed > 0 else math.nan
            budget = _number(profile, "daily_budget")
            share = t.window_minutes / 1440.0
            pace = cost / (budget * share) if budget > 0 else math.nan
            pooled_cost += cost
            pooled_processed += processed
            any_cost = True

        for name in t.drift_features:
            spec = DRIFT_FEATURES[name]
            frame = events if spec.table == "event_metrics" else system
            score = _drift_score(sid, spec, frame, start, end, ref_start, lag, t)
            drift.append(score)
            if score.recent_minutes < t.min_minutes or (
                score.reference_minutes < t.min_reference_minutes
            ):
                if score.recent_minutes or score.reference_minutes:
                    notes.append(
                        f"{sid}: drift of {name} not judged: {score.recent_minutes} recent "
                        f"value(s) (need {t.min_minutes}), {score.reference_minutes} "
                        f"reference value(s) (need {t.min_reference_minutes})"
                    )
            elif score.psi > t.max_drift_psi:
                findings.append(_drift_finding(score, spec, t))

        healths.append(
            ServiceHealth(
                service_id=sid,
                decisions=n_decisions,
                fallback_decisions=n_fallback,
                forecast_minutes=n_pairs,
                wql=scores["wql"],
                coverage_80=scores["coverage_80"],
                mdape=scores["mdape"],
                bias=scores["bias"],
                events_in=events_in,
                sla_minutes=sla_minutes,
                sla_compliance=compliance,
                sla_target=sla_target,
                cost=cost,
                cost_per_1k_events=cost_per_1k,
                budget_pace=pace,
            )
        )

    pooled_scores = pooled.scores()
    overall = ServiceHealth(
        service_id=ALL_SERVICES,
        decisions=pooled_decisions,
        fallback_decisions=pooled_fallback,
        forecast_minutes=pooled.y.size,
        wql=pooled_scores["wql"],
        coverage_80=pooled_scores["coverage_80"],
        mdape=pooled_scores["mdape"],
        bias=pooled_scores["bias"],
        events_in=float(sum(h.events_in for h in healths)),
        sla_minutes=pooled_minutes,
        sla_compliance=pooled_met / pooled_total if pooled_total > 0 else math.nan,
        cost=pooled_cost if any_cost else math.nan,
        cost_per_1k_events=pooled_cost / pooled_processed * 1000.0
        if any_cost and pooled_processed > 0
        else math.nan,
    )
    if not services:
        notes.append(f"no decisions or metrics between {start} and {end}: nothing to judge")
    targeted = _assign_targets(findings, set(decided))
    retrain: dict[str, list[str]] = {}
    for f in targeted:
        if f.target is not None:
            retrain.setdefault(f.target, []).append(f"{f.service}: {f.message}")
    return MonitorReport(
        now=end,
        window_start=start,
        thresholds=t,
        services=tuple(healths),
        overall=overall,
        drift=tuple(drift),
        findings=tuple(targeted),
        retrain=retrain,
        notes=tuple(notes),
    )


def _forecast_findings(
    sid: str, scores: dict[str, float], n: int, t: MonitorThresholds
) -> list[Finding]:
    out = []
    error, cover, bias = scores["wql"], scores["coverage_80"], scores["bias"]
    if math.isfinite(error) and error > t.max_wql:
        out.append(
            Finding(
                "forecast_error",
                sid,
                error,
                t.max_wql,
                f"forecast wQL {error:.3f} > {t.max_wql:g} over {n} min "
                f"(bias {bias:+.0%}, MdAPE {scores['mdape']:.0%})",
            )
        )
    if math.isfinite(cover) and cover < t.min_coverage_80:
        out.append(
            Finding(
                "coverage",
                sid,
                cover,
                t.min_coverage_80,
                f"80% interval covered {cover:.0%} of {n} min < {t.min_coverage_80:.0%}",
            )
        )
    return out


def _drift_score(
    sid: str,
    spec: DriftFeature,
    frame: pd.DataFrame,
    start: pd.Timestamp,
    end: pd.Timestamp,
    ref_start: pd.Timestamp,
    lag: pd.Timedelta,
    t: MonitorThresholds,
) -> DriftScore:
    values = _drift_values(frame, spec, lag)
    if values.empty:
        return DriftScore(sid, spec.name, math.nan, 0, 0)
    index = values.index
    recent = values[(index >= start) & (index < end)].to_numpy(dtype=np.float64)
    reference = values[(index >= ref_start) & (index < start)].to_numpy(dtype=np.float64)
    recent = recent[np.isfinite(recent)]
    reference = reference[np.isfinite(reference)]
    judged = recent.size >= t.min_minutes and reference.size >= t.min_reference_minutes
    psi = population_stability_index(reference, recent, t.drift_bins) if judged else math.nan
    return DriftScore(
        sid,
        spec.name,
        psi,
        int(recent.size),
        int(reference.size),
        _undo(float(np.median(recent)), spec, t.seasonal_lag_days) if recent.size else math.nan,
        _undo(float(np.median(reference)), spec, t.seasonal_lag_days)
        if reference.size
        else math.nan,
    )


def _drift_finding(score: DriftScore, spec: DriftFeature, t: MonitorThresholds) -> Finding:
    if spec.seasonal and t.seasonal_lag_days > 0:
        what = (
            f"median change against {t.seasonal_lag_days} d earlier x{score.recent_median:.2f}"
            f" (reference x{score.reference_median:.2f})"
        )
    else:
        what = f"median {score.recent_median:.3g} (reference {score.reference_median:.3g})"
    return Finding(
        "drift",
        score.service_id,
        score.psi,
        t.max_drift_psi,
        f"{spec.name} drifted: PSI {score.psi:.2f} > {t.max_drift_psi:g}; {what}",
        feature=spec.name,
    )


def _assign_targets(findings: Sequence[Finding], decided: set[str]) -> list[Finding]:
    """Which model each finding retrains (module docstring, "Retraining targets")."""
    forecast_bad = {
        f.service
        for f in findings
        if f.kind in ("forecast_error", "coverage")
        or (f.kind == "drift" and DRIFT_FEATURES[f.feature].target == FORECASTER)
    }
    out = []
    for f in findings:
        target: Target | None
        if f.kind in ("forecast_error", "coverage"):
            target = FORECASTER
        elif f.kind == "drift":
            target = DRIFT_FEATURES[f.feature].target
            if target == CONTROLLER and f.service in forecast_bad:
                target = None
        else:
            target = CONTROLLER if f.service in decided and f.service not in forecast_bad else None
        out.append(replace(f, target=target))
    return out
