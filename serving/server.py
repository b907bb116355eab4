"""The HTTP API wired to the decision engine (what ``autoscaler serve`` runs).

The app (:func:`serving.api.create_app`) only sees two callables; here they are the
engine's ``decide`` and a health report of the models it serves. Requests are handled in
worker threads, and the engine and its model cache are not thread-safe, so decisions
are made one call at a time (each call is batched over its services).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import pandas as pd

from serving.engine import CONTROLLER, FORECASTER, DecisionEngine

if TYPE_CHECKING:
    from fastapi import FastAPI

    from serving.metrics import ServingMetrics


def build_app(
    engine: DecisionEngine,
    metrics: ServingMetrics,
    *,
    token: str | None,
    max_services: int = 1000,
    max_body_bytes: int = 4 * 1024 * 1024,
) -> FastAPI:
    """The FastAPI app deciding with ``engine``.

    Args:
        engine: The decision engine (its models followed by alias).
        metrics: Where the app and the engine record their metrics.
        token: The bearer token callers must present; None lets nobody in.
        max_services: Services one request may carry.
        max_body_bytes: Largest request body accepted.

    Returns:
        The app (``POST /v1/decisions``, ``GET /healthz``, ``GET /metrics``).
    """
    from serving.api import create_app

    lock = threading.Lock()

    def decide(frame: pd.DataFrame) -> pd.DataFrame:
        with lock:
            out = engine.decide(frame)
            used = engine.used
        metrics.set_model_versions(
            {FORECASTER: used.forecaster_version, CONTROLLER: used.controller_version}
        )
        return out

    def health() -> dict[str, Any]:
        # Ask the model source directly: the engine's last decision may be long ago.
        with lock:
            found: dict[str, str | None] = {}
            problems: dict[str, str] = {}
            for name in (FORECASTER, CONTROLLER):
                if engine.models is None:
                    found[name], problems[name] = None, "no model registry configured"
                    continue
                try:
                    found[name] = engine.models.get(name, engine.config.alias)[1]
                except Exception as error:  # any failure: the fallback serves instead
                    found[name], problems[name] = None, f"{type(error).__name__}: {error}"
        # The engine always has a fallback, so it is never unavailable, only degraded.
        return {
            "status": "degraded" if problems else "ok",
            "models": found,
            "problems": problems,
            "alias": engine.config.alias,
        }

    return create_app(
        decide,
        health,
        metrics,
        token=token,
        max_services=max_services,
        max_body_bytes=max_body_bytes,
    )
