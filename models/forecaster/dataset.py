"""Training series from the feature store.

The training flow reads, through Feast's offline store, every ``service_minute`` row of
the training range (``events_in`` and the calendar columns; each row stamped when it
became available, so the rows are point-in-time values) and joins each service's
criticality point in time at the end of the range. This module turns that table into one
:class:`~models.forecaster.train.SeriesData` per service, on a dense minute grid with NaN
where a minute is missing; windows are then cut by the same code that builds the
``service_sequences`` view, so a window at minute t uses only rows stamped by t.

Feature rows are stamped one minute after the metrics minute they describe (they become
available then), so the value joined at ``event_timestamp = t`` is the count of minute
``t - 1 min``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.engineering import AVAILABLE_AFTER
from models.forecaster.train import SeriesData

EVENT_COLUMN = "events_in"
CALENDAR_FEATURES = ("is_holiday", "in_business_event", "expected_traffic_multiplier")
MINUTE_VIEW = "service_minute"
MINUTE_FEATURES: tuple[str, ...] = (EVENT_COLUMN, *CALENDAR_FEATURES)
"""What the training set reads from the minute view."""
PROFILE_REFS: tuple[str, ...] = ("service_profile:criticality",)
"""What the training set joins from the profile view, point in time, at the range's end."""


def series_from_training_set(frame: pd.DataFrame, eval_start: pd.Timestamp) -> list[SeriesData]:
    """One series per service; positions before ``eval_start`` may be learned from.

    Args:
        frame: Training set with service_id, event_timestamp, events_in and optionally
            the calendar features and criticality.
        eval_start: First metrics minute of the evaluation range (not trained on).

    Returns:
        Series sorted by service id; services without any observed minute are skipped.

    Raises:
        ValueError: If a needed column is missing.
    """
    missing = {"service_id", "event_timestamp", EVENT_COLUMN} - set(frame.columns)
    if missing:
        raise ValueError(f"training set lacks columns {sorted(missing)}")
    out = []
    for sid, rows in frame.groupby("service_id", sort=True):
        minute = pd.to_datetime(rows["event_timestamp"]) - AVAILABLE_AFTER
        values = pd.to_numeric(rows[EVENT_COLUMN], errors="coerce").to_numpy(dtype=np.float64)
        if np.isnan(values).all():
            continue
        start = minute.min()
        pos = ((minute - start) // pd.Timedelta(minutes=1)).to_numpy(dtype=np.int64)
        n = int(pos.max()) + 1
        dense = np.full(n, np.nan)
        dense[pos] = values
        calendar = None
        if all(c in rows for c in CALENDAR_FEATURES):
            calendar = np.full((n, 3), np.nan)
            for j, c in enumerate(CALENDAR_FEATURES):
                calendar[pos, j] = pd.to_numeric(rows[c], errors="coerce").to_numpy(float)
        crit = None
        if "criticality" in rows:
            known = pd.to_numeric(rows["criticality"], errors="coerce").dropna()
            crit = float(known.iloc[-1]) if len(known) else None
        end = int((pd.Timestamp(eval_start) - start) // pd.Timedelta(minutes=1))
        out.append(
            SeriesData(
                name=str(sid),
                start=pd.Timestamp(start),
                values=dense,
                end=max(0, min(end, n)),
                calendar=calendar,
                criticality=crit,
            )
        )
    return out
