"""The HTTP API wired to the real decision engine (serving/server.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from test_engine import Models, constant_package, tiny_forecaster

from serving.engine import CONTROLLER, FORECASTER, DecisionEngine
from serving.metrics import ServingMetrics
from serving.server import build_app


def body(n: int = 2, **state: Any) -> dict[str, Any]:
    ts = (datetime.now(UTC) - timedelta(minutes=1)).replace(second=0, microsecond=0)
    return {
        "services": [
            {
                "service_id": f"svc-{i}",
                "ts": ts.isoformat(),
                "recent_events_120m": [3000.0 * (1 + 3 * i)] * 120,
                "hourly_events_7d": [180000.0 * (1 + 3 * i)] * 168,
                "profile": {
                    "criticality": 1,
                    "sla_latency_s": 60.0,
                    "sla_target": 0.99,
                    "cost_per_job_hour": 0.2,
                    "daily_budget": 500.0,
                    "min_jobs": 1,
                    "max_jobs": 30,
                    "max_step": 4,
                    "job_capacity_eps": 25.0,
                    "job_startup_s": 90.0,
                },
                "state": {
                    "jobs_running": 2,
                    "jobs_starting": 0,
                    "queue_length": 0.0,
                    "events_in": 3000.0 * (1 + 3 * i),
                    "events_dropped": 0.0,
                    "utilization": 0.9,
                    "minute_of_day": 600,
                    "day_of_week": 2,
                    **state,
                },
            }
            for i in range(n)
        ]
    }


def client(engine: DecisionEngine) -> TestClient:
    return TestClient(
        build_app(engine, ServingMetrics(), token="t0ken"),
        headers={"Authorization": "Bearer t0ken"},
    )


def test_fallback_engine_answers_and_says_it_is_degraded() -> None:
    api = client(DecisionEngine(None))
    response = api.post("/v1/decisions", json=body())
    assert response.status_code == 200, response.text
    decisions = response.json()["decisions"]
    assert [d["service_id"] for d in decisions] == ["svc-0", "svc-1"]
    assert {d["controller"] for d in decisions} == {"predictive-rule"}
    # The rule serves the forecast at 80 % utilization of 25 events/s per job: 3,000
    # events a minute need 3 jobs; 12,000 need 10, but the shield allows at most
    # max_step (4) more than the 2 running per decision.
    assert [d["jobs_after"] for d in decisions] == [3, 6]
    assert [d["shield_reason"] for d in decisions] == ["", "step"]
    health = api.get("/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "degraded"
    assert set(health.json()["problems"]) == {FORECASTER, CONTROLLER}
    metrics = api.get("/metrics").text
    assert 'autoscaler_decisions_total{controller="predictive-rule"} 2.0' in metrics


def test_champions_answer_and_health_is_ok() -> None:
    models = Models({FORECASTER: (tiny_forecaster(), "5"), CONTROLLER: (constant_package(0), "9")})
    api = client(DecisionEngine(models))
    response = api.post("/v1/decisions", json=body(3))
    assert response.status_code == 200, response.text
    decisions = response.json()["decisions"]
    assert {
        (d["controller"], d["controller_version"], d["forecaster_version"]) for d in decisions
    } == {("ppo", "9", "5")}
    assert api.get("/healthz").json() == {
        "status": "ok",
        "models": {FORECASTER: "5", CONTROLLER: "9"},
        "problems": {},
        "alias": "champion",
    }
    assert 'version="9"' in api.get("/metrics").text


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"jobs_running": -1}, 422),
        ({"utilization": "high"}, 422),
        ({"events_in": float("nan")}, 422),
    ],
)
def test_bad_input_never_reaches_the_engine(change: dict[str, Any], status: int) -> None:
    calls = []

    class Spy(DecisionEngine):
        def decide(self, frame: Any) -> Any:
            calls.append(len(frame))
            return super().decide(frame)

    api = client(Spy(None))
    import json

    payload = json.dumps(body(**change), allow_nan=True)
    response = api.post(
        "/v1/decisions", content=payload, headers={"content-type": "application/json"}
    )
    assert response.status_code == status
    assert response.json()["error"] == "validation_error"
    assert calls == []
