"""Saving, loading and the table interface of a trained forecaster.

A saved forecaster is a folder: ``network.pt`` (the weights of each ensemble member) and
``forecaster.json`` (network shape, member count, horizons, quantiles, conformal offsets per
service and pooled, and the format version). Loading needs nothing else, so the MLflow
pyfunc wraps this folder.

Table interface (what serving and the pyfunc call), one row per service:

* input columns ``service_id`` (str), ``ts`` (last observed minute), the sequence features
  ``recent_events_120m`` (120 numbers) and ``hourly_events_7d`` (168 numbers), as the
  ``forecaster_v1`` feature service serves them; optional ``criticality`` (1..3) and the
  known future as ``is_holiday_ahead``, ``business_event_ahead``,
  ``multiplier_ahead`` (one value per horizon);
* output columns ``service_id``, ``ts``, ``h{h}_q{pp}`` per horizon ``h`` and quantile
  level ``pp`` percent (e.g. ``h15_q90``), and ``anomaly_score`` of the newest minute
  against the forecast made 15 minutes before it (:mod:`models.forecaster.anomaly`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from features.engineering import HOURLY_HOURS, RECENT_MINUTES
from models.forecaster.anomaly import DEFAULT_LEAD, latest_scores
from models.forecaster.model import HybridForecaster, NetworkConfig
from models.forecaster.train import Calibration, Forecaster, resolve_device
from models.forecaster.windows import build_inputs

FORMAT_VERSION = 1
WEIGHTS = "network.pt"
METADATA = "forecaster.json"
CALENDAR_COLUMNS = ("is_holiday_ahead", "business_event_ahead", "multiplier_ahead")


def column_name(horizon: int, quantile: float) -> str:
    """Output column of a horizon and quantile level, e.g. ``h15_q90``."""
    return f"h{horizon}_q{round(quantile * 100):02d}"


def save(forecaster: Forecaster, folder: Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the forecaster to ``folder`` (created). Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cal = forecaster.calibration
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "network": forecaster.net.config.to_dict(),
        "members": len(forecaster.nets),
        "calibration": None
        if cal is None
        else {
            "pooled": cal.pooled.tolist(),
            "per_series": {k: v.tolist() for k, v in cal.per_series.items()},
            "coverage_before": cal.coverage_before,
            "coverage_after": cal.coverage_after,
        },
        "extra": extra or {},
    }
    members = [
        {k: v.detach().cpu() for k, v in net.state_dict().items()} for net in forecaster.nets
    ]
    torch.save({"members": members}, folder / WEIGHTS)
    (folder / METADATA).write_text(json.dumps(meta, indent=1, sort_keys=True))
    return folder


def load(folder: Path, device: str = "cpu") -> Forecaster:
    """Read a forecaster written by :func:`save`.

    Raises:
        ValueError: If the folder is not a saved forecaster or its format is newer.
    """
    folder = Path(folder)
    if not (folder / METADATA).is_file() or not (folder / WEIGHTS).is_file():
        raise ValueError(f"{folder} holds no saved forecaster ({METADATA} and {WEIGHTS})")
    meta = json.loads((folder / METADATA).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{folder}: forecaster format {meta.get('format_version')} is not "
            f"{FORMAT_VERSION}; retrain or upgrade the package"
        )
    config = NetworkConfig.from_dict(meta["network"])
    # weights_only: the file holds tensors only, so nothing else may be unpickled.
    saved = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
    nets = []
    for state in saved["members"]:
        net = HybridForecaster(config)
        net.load_state_dict(state)
        nets.append(net)
    if len(nets) != meta.get("members"):
        raise ValueError(f"{folder}: {len(nets)} member networks saved, metadata says otherwise")
    c = meta["calibration"]
    cal = None
    if c is not None:
        cal = Calibration(
            pooled=np.asarray(c["pooled"]),
            per_series={k: np.asarray(v) for k, v in c["per_series"].items()},
            coverage_before=c["coverage_before"],
            coverage_after=c["coverage_after"],
        )
    return Forecaster(nets, cal, resolve_device(device))


def _matrix(frame: pd.DataFrame, column: str, width: int) -> np.ndarray:
    rows = frame[column].to_list()
    try:
        mat = np.array([np.asarray(r, dtype=np.float64) for r in rows], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{column}: every row must be a list of {width} numbers") from exc
    if mat.shape != (len(frame), width):
        raise ValueError(f"{column}: every row must hold {width} numbers, got shape {mat.shape}")
    return mat


@dataclass(frozen=True)
class _Prepared:
    names: list[str]
    ts: np.ndarray
    ts_minute: np.ndarray
    recent: np.ndarray
    hourly: np.ndarray
    inputs: Any


def _prepare(forecaster: Forecaster, frame: pd.DataFrame) -> _Prepared:
    missing = [
        c for c in ("service_id", "ts", "recent_events_120m", "hourly_events_7d") if c not in frame
    ]
    if missing:
        raise ValueError(f"forecaster input lacks columns {missing}")
    recent = _matrix(frame, "recent_events_120m", RECENT_MINUTES)
    hourly = _matrix(frame, "hourly_events_7d", HOURLY_HOURS)
    ts = pd.to_datetime(frame["ts"])
    if ts.isna().any():
        raise ValueError("ts must be set on every row")
    if getattr(ts.dt, "tz", None) is not None:
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    ts_minute = ts.to_numpy().astype("datetime64[m]").astype(np.int64)
    horizons = forecaster.horizons
    calendar = None
    if all(c in frame for c in CALENDAR_COLUMNS):
        calendar = np.stack([_matrix(frame, c, len(horizons)) for c in CALENDAR_COLUMNS], axis=-1)
    crit = frame["criticality"].to_numpy(dtype=np.float64) if "criticality" in frame else None
    inputs = build_inputs(recent, hourly, ts_minute, horizons, calendar=calendar, criticality=crit)
    names = [str(s) for s in frame["service_id"]]
    return _Prepared(names, ts.to_numpy(), ts_minute, recent, hourly, inputs)


def predict_array(forecaster: Forecaster, frame: pd.DataFrame) -> np.ndarray:
    """The forecasts of every row as an array (n, horizons, quantiles), no anomaly score.

    Same input table and checks as :func:`predict_frame`; serving uses it to skip building
    and re-reading a column per horizon and level.
    """
    prepared = _prepare(forecaster, frame)
    return np.asarray(forecaster.predict(prepared.inputs, prepared.names))


def predict_frame(
    forecaster: Forecaster, frame: pd.DataFrame, *, with_anomaly: bool = True
) -> pd.DataFrame:
    """Forecast every row of ``frame`` (table interface in the module docstring).

    ``with_anomaly=False`` leaves ``anomaly_score`` NaN: scoring forecasts a second
    origin (15 minutes back), which doubles the cost for callers that do not read it.

    Raises:
        ValueError: On missing columns, wrong lengths, infinities or negative counts.
    """
    prepared = _prepare(forecaster, frame)
    horizons = forecaster.horizons
    fc = forecaster.predict(prepared.inputs, prepared.names)
    out: dict[str, Any] = {"service_id": prepared.names, "ts": prepared.ts}
    for j, h in enumerate(horizons):
        for k, q in enumerate(forecaster.quantiles):
            out[column_name(h, q)] = fc[:, j, k]
    if with_anomaly and DEFAULT_LEAD in horizons and len(frame):
        out["anomaly_score"] = latest_scores(
            forecaster, prepared.recent, prepared.hourly, prepared.ts_minute, prepared.names
        )
    else:
        out["anomaly_score"] = np.full(len(frame), np.nan)
    return pd.DataFrame(out)


def input_from_online(online: pd.DataFrame) -> pd.DataFrame:
    """The table interface's input from an online read of ``forecaster_v1`` with timestamps.

    ``ts`` is the sequence row's event timestamp minus
    :data:`features.engineering.AVAILABLE_AFTER` (rows are stamped when they became
    available, one minute after the minute they end with).

    Args:
        online: ``OnlineReader.read(..., with_timestamps=True)`` of ``forecaster_v1``.

    Returns:
        service_id, ts, the two sequences, and criticality and the calendar of the
        current minute when present. Services without sequences are dropped.

    Raises:
        ValueError: If the sequence columns or their timestamps are missing.
    """
    from features.engineering import AVAILABLE_AFTER

    stamp = "recent_events_120m__ts"
    needed = ["service_id", "recent_events_120m", "hourly_events_7d", stamp]
    missing = [c for c in needed if c not in online]
    if missing:
        raise ValueError(f"online features lack {missing}; read forecaster_v1 with timestamps")
    have = online[online["recent_events_120m"].notna() & online[stamp].notna()]
    seconds = pd.to_numeric(have[stamp]).to_numpy(dtype=np.int64)
    out = pd.DataFrame(
        {
            "service_id": have["service_id"].astype(str).to_numpy(),
            "ts": pd.to_datetime(seconds, unit="s") - AVAILABLE_AFTER,
            "recent_events_120m": have["recent_events_120m"].to_numpy(),
            "hourly_events_7d": have["hourly_events_7d"].to_numpy(),
        }
    )
    if "criticality" in have:
        out["criticality"] = pd.to_numeric(have["criticality"]).to_numpy(dtype=np.float64)
    return out


OPTIONAL_COLUMNS: tuple[str, ...] = ("criticality", *CALENDAR_COLUMNS)
"""Input columns a caller may leave out."""


def example_frame(
    n: int = 2, seed: int = 0, horizons: tuple[int, ...] | None = None
) -> pd.DataFrame:
    """A small valid input table (the pyfunc's input example).

    With ``horizons``, it also carries the optional columns: criticality and an ordinary
    day's calendar for each horizon.
    """
    rng = np.random.default_rng(seed)
    ts = pd.Timestamp("2026-01-05 12:30")
    recent = [rng.poisson(30, RECENT_MINUTES).astype(float).tolist() for _ in range(n)]
    hourly = [(rng.poisson(30, HOURLY_HOURS) * 60.0).tolist() for _ in range(n)]
    for h in hourly:
        h[-1] = h[-1] * 31 / 60  # the partial hour at minute 30
    frame = pd.DataFrame(
        {
            "service_id": [f"svc-{i}" for i in range(n)],
            "ts": [ts] * n,
            "recent_events_120m": recent,
            "hourly_events_7d": hourly,
        }
    )
    if horizons is not None:
        frame["criticality"] = [float(1 + i % 3) for i in range(n)]
        ordinary = {"is_holiday_ahead": 0.0, "business_event_ahead": 0.0, "multiplier_ahead": 1.0}
        for column in CALENDAR_COLUMNS:
            frame[column] = [[ordinary[column]] * len(horizons) for _ in range(n)]
    return frame


class Predictor:
    """The table interface around a loaded forecaster (what the MLflow pyfunc serves)."""

    def __init__(self, forecaster: Forecaster) -> None:
        self.forecaster = forecaster

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """:func:`predict_frame` of this forecaster."""
        return predict_frame(self.forecaster, frame)


def load_predictor(folder: str) -> Predictor:
    """Load the forecaster saved in ``folder`` behind the table interface."""
    return Predictor(load(Path(folder)))
