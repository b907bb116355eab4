"""Episode sources the controller tests share: a daily wave with exact quantile forecasts."""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.controller.env import EpisodeSource, RuleSettings
from simulator.config import ServiceConfig

H = (1, 2, 3, 4, 5, 6, 8, 10, 15)
Q = (0.5, 0.9, 0.95, 0.99)


def daily_source(
    name: str = "wave", days: int = 2, seed: int = 0, peak: float = 6000.0
) -> EpisodeSource:
    """A daily wave of Poisson counts with exact quantile forecasts of its rate."""
    rng = np.random.default_rng(seed)
    t = np.arange(days * 1440 + 30)
    rate = peak * (0.55 + 0.45 * np.sin(2 * np.pi * t / 1440))
    arrivals = rng.poisson(rate).astype(float)
    fc = np.empty((len(t), len(H), len(Q)))
    z = {0.5: 0.0, 0.9: 1.2816, 0.95: 1.6449, 0.99: 2.3263}
    for j, h in enumerate(H):
        future = rate[np.minimum(t + h - 1, len(t) - 1)]
        for k, q in enumerate(Q):
            fc[:, j, k] = future + z[q] * np.sqrt(future)
    service = ServiceConfig(service_id=name, job_capacity_eps=25, max_jobs=40, max_step=4)
    return EpisodeSource(
        name, arrivals, fc, H, Q, service, pd.Timestamp("2026-01-05"), RuleSettings()
    )
