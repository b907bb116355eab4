"""HTTP API (serving/api.py): the frame the engine gets, the answer, and every refusal.

The engine is a small test double that decides from the frame with a capacity rule
and records what it received, so the tests can check the input frame exactly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from features.contracts import bad_input_kind
from serving.api import (
    DECISION_FIELDS,
    OPTIONAL_FIELDS,
    REQUEST_FIELDS,
    DecisionRequest,
    NotReady,
    create_app,
    request_frame,
)
from serving.metrics import ServingMetrics

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
TS = "2026-03-02T11:59:00Z"
JSON = {"content-type": "application/json"}

INT_FIELDS = (
    "criticality",
    "min_jobs",
    "max_jobs",
    "max_step",
    "jobs_running",
    "jobs_starting",
    "minute_of_day",
    "day_of_week",
)


def service(service_id: str = "svc-a", events_in: float = 6000.0, **state: Any) -> dict[str, Any]:
    """A valid service entry; ``state`` overrides or adds state fields."""
    return {
        "service_id": service_id,
        "ts": TS,
        "recent_events_120m": [float(i % 7) for i in range(120)],
        "hourly_events_7d": [100 + i for i in range(168)],  # ints: accepted for floats
        "profile": {
            "criticality": 2,
            "sla_latency_s": 5.0,
            "sla_target": 0.99,
            "cost_per_job_hour": 0.2,
            "daily_budget": 50,
            "min_jobs": 1,
            "max_jobs": 10,
            "max_step": 3,
            "job_capacity_eps": 10.0,
            "job_startup_s": 30,
        },
        "state": {
            "jobs_running": 2,
            "jobs_starting": 0,
            "queue_length": 0.0,
            "events_in": events_in,
            "events_dropped": 0,
            "utilization": 0.5,
            "minute_of_day": 719,
            "day_of_week": 0,
            **state,
        },
    }


class Engine:
    """Test double of ``decide``: capacity rule, clipped, step-limited; records inputs.

    jobs = ceil(events_in / 60 / job_capacity_eps), clipped to [min_jobs, max_jobs]
    ("ceiling"/"floor") and to jobs_running +- max_step ("step").
    """

    def __init__(self, controller: str = "predictive", error: Exception | None = None) -> None:
        self.controller = controller
        self.error = error
        self.frames: list[pd.DataFrame] = []

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        self.frames.append(frame.copy())
        if self.error is not None:
            raise self.error
        before = frame["jobs_running"].to_numpy()
        raw = np.ceil(frame["events_in"] / 60.0 / frame["job_capacity_eps"]).to_numpy()
        bounded = np.clip(raw, frame["min_jobs"], frame["max_jobs"]).astype(np.int64)
        step = frame["max_step"].to_numpy()
        after = np.clip(bounded, before - step, before + step)
        reasons = []
        for r, b, a in zip(raw, bounded, after, strict=True):
            parts = ["step"] if a != b else []
            parts += ["ceiling"] if b < r else (["floor"] if b > r else [])
            reasons.append("+".join(parts))
        return pd.DataFrame(
            {
                "service_id": frame["service_id"],
                "ts": frame["ts"],
                "jobs_before": before,
                "jobs_after": after,
                "action": after - before,
                "proposed_jobs": raw,
                "shield_reason": reasons,
                "controller": self.controller,
                "forecaster_version": None,
                "controller_version": "7",
                "forecast_q10": np.nan,
                "forecast_q50": frame["events_in"],
                "forecast_q90": frame["events_in"] * 1.2,
            }
        )


TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_client(
    engine: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    health: Callable[[], dict[str, Any]] | None = None,
    metrics: ServingMetrics | None = None,
    **limits: Any,
) -> TestClient:
    app = create_app(
        engine if engine is not None else Engine(),
        health if health is not None else (lambda: {"status": "ok", "models": {}}),
        metrics if metrics is not None else ServingMetrics(),
        token=TOKEN,
        clock=lambda: NOW,
        **limits,
    )
    return TestClient(app, headers=AUTH)


@pytest.fixture
def engine() -> Engine:
    return Engine()


@pytest.fixture
def client(engine: Engine) -> TestClient:
    return make_client(engine, max_services=3)


def post(client: TestClient, body: Any) -> Any:
    # json.dumps writes NaN/Infinity literals, as a careless client would.
    return client.post("/v1/decisions", content=json.dumps(body), headers=JSON)


def metric_samples(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


# ------------------------------------------------------------------------ happy path


def test_valid_request_gets_one_decision_per_service_in_order(
    client: TestClient, engine: Engine
) -> None:
    body = {
        "services": [
            service("b", events_in=6000.0),  # 10 jobs wanted, +3 step limit -> 5
            service("a", events_in=600.0),  # 1 job
            service("c.1_x", events_in=0.0),  # 0 wanted, floor -> min_jobs 1
        ]
    }
    response = post(client, body)
    assert response.status_code == 200, response.text
    out = response.json()
    assert set(out) == {"decisions", "latency_ms"}
    assert out["latency_ms"] >= 0
    decisions = out["decisions"]
    assert [d["service_id"] for d in decisions] == ["b", "a", "c.1_x"]
    assert all(list(d) == list(DECISION_FIELDS) for d in decisions)
    assert [d["jobs_after"] for d in decisions] == [5, 1, 1]
    assert [d["action"] for d in decisions] == [3, -1, -1]
    assert [d["shield_reason"] for d in decisions] == ["step", "", "floor"]
    first = decisions[0]
    assert first["ts"] == "2026-03-02T11:59:00Z"
    assert first["forecast_q10"] is None  # NaN is sent as null
    assert first["forecaster_version"] is None
    assert first["forecast_q90"] == pytest.approx(7200.0)
    assert len(engine.frames) == 1


def test_engine_receives_exactly_the_documented_frame(client: TestClient, engine: Engine) -> None:
    full = service("b", jobs_target=4, steps_since_change=2, events_processed=5.5)
    full["state"]["budget_used_today"] = 1
    full["ts"] = "2026-03-02T13:58:00+02:00"  # an offset is converted to UTC
    naive = service("a")
    naive["ts"] = "2026-03-02T11:30:00"  # no offset: taken as UTC
    assert post(client, {"services": [full, naive]}).status_code == 200

    frame = engine.frames[0]
    assert list(frame.columns) == list(REQUEST_FIELDS)
    assert frame.index.equals(pd.RangeIndex(2))
    assert frame["service_id"].tolist() == ["b", "a"]
    assert frame["ts"].dtype == "datetime64[ns]"
    assert frame["ts"].tolist() == [
        pd.Timestamp("2026-03-02 11:58"),
        pd.Timestamp("2026-03-02 11:30"),
    ]
    for name, length in (("recent_events_120m", 120), ("hourly_events_7d", 168)):
        cells = frame[name].tolist()
        assert all(type(c) is list and len(c) == length for c in cells)
        assert all(type(v) is float for v in cells[0])
    assert frame["hourly_events_7d"][0][:3] == [100.0, 101.0, 102.0]
    for name in INT_FIELDS:
        assert frame[name].dtype == np.int64, name
    floats = set(REQUEST_FIELDS[4:]) - set(INT_FIELDS)
    for name in floats:
        assert frame[name].dtype == np.float64, name
    # Optional fields are always there: the value if sent, NaN if not.
    assert frame.loc[0, list(OPTIONAL_FIELDS)].tolist() == [5.5, 4.0, 2.0, 1.0]
    assert frame.loc[1, list(OPTIONAL_FIELDS)].isna().all()


def test_request_fields_are_the_documented_order() -> None:
    assert REQUEST_FIELDS == (
        "service_id",
        "ts",
        "recent_events_120m",
        "hourly_events_7d",
        "criticality",
        "sla_latency_s",
        "sla_target",
        "cost_per_job_hour",
        "daily_budget",
        "min_jobs",
        "max_jobs",
        "max_step",
        "job_capacity_eps",
        "job_startup_s",
        "jobs_running",
        "jobs_starting",
        "queue_length",
        "events_in",
        "events_dropped",
        "utilization",
        "minute_of_day",
        "day_of_week",
        "events_processed",
        "jobs_target",
        "steps_since_change",
        "budget_used_today",
    )


def test_request_frame_from_a_model_built_in_python() -> None:
    entry = service("x")
    entry["ts"] = datetime(2026, 3, 2, 13, 59, tzinfo=timezone(timedelta(hours=2)))
    # Python mode is strict too (a datetime, not a string, for ts); ints pass for floats.
    request = DecisionRequest.model_validate({"services": [entry]})
    frame = request_frame(request)
    assert list(frame.columns) == list(REQUEST_FIELDS)
    assert frame.loc[0, "events_in"] == 6000.0
    assert frame.loc[0, "max_jobs"] == 10
    assert frame.loc[0, "ts"] == pd.Timestamp("2026-03-02 11:59")
    assert frame.loc[0, "hourly_events_7d"][0] == 100.0


def test_ts_up_to_five_minutes_ahead_is_accepted(client: TestClient) -> None:
    body = service()
    body["ts"] = (NOW + timedelta(minutes=5)).isoformat()
    assert post(client, {"services": [body]}).status_code == 200


def test_json_content_type_with_charset_is_accepted(client: TestClient) -> None:
    response = client.post(
        "/v1/decisions",
        content=json.dumps({"services": [service()]}),
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 200


# ------------------------------------------------------------------------ refusals


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation of the request body that sets ``path`` (dots, ints index lists)."""

    def mutate(body: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = body
        for part in parents:
            node = node[part]
        node[last] = value

    return mutate


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = body
        for part in parents:
            node = node[int(part) if part.isdigit() else part]
        del node[last]

    return mutate


S0 = "services.0"
BAD_INPUTS = {
    "wrong type": (_set(f"{S0}.state.jobs_running", [1]), "services[0].state.jobs_running"),
    "string number": (_set(f"{S0}.profile.daily_budget", "12"), "services[0].profile.daily_budget"),
    "string int": (_set(f"{S0}.state.jobs_running", "3"), "services[0].state.jobs_running"),
    "bool as int": (_set(f"{S0}.state.jobs_running", True), "services[0].state.jobs_running"),
    "bool as float": (_set(f"{S0}.state.queue_length", False), "services[0].state.queue_length"),
    "fractional int": (_set(f"{S0}.profile.max_jobs", 2.5), "services[0].profile.max_jobs"),
    "NaN": (_set(f"{S0}.state.utilization", math.nan), "services[0].state.utilization"),
    "Infinity in a list": (
        _set(f"{S0}.recent_events_120m.5", math.inf),
        "services[0].recent_events_120m[5]",
    ),
    "-Infinity optional": (
        _set(f"{S0}.state.events_processed", -math.inf),
        "services[0].state.events_processed",
    ),
    "negative count": (_set(f"{S0}.state.events_in", -1), "services[0].state.events_in"),
    "negative in a list": (
        _set(f"{S0}.hourly_events_7d.0", -3),
        "services[0].hourly_events_7d[0]",
    ),
    "negative optional int": (
        _set(f"{S0}.state.steps_since_change", -1),
        "services[0].state.steps_since_change",
    ),
    "short sequence": (
        _set(f"{S0}.recent_events_120m", [1.0] * 119),
        "services[0].recent_events_120m",
    ),
    "long sequence": (_set(f"{S0}.hourly_events_7d", [1.0] * 169), "services[0].hourly_events_7d"),
    "min_jobs > max_jobs": (_set(f"{S0}.profile.min_jobs", 11), "services[0].profile"),
    "criticality out of range": (
        _set(f"{S0}.profile.criticality", 4),
        "services[0].profile.criticality",
    ),
    "sla_target above 1": (_set(f"{S0}.profile.sla_target", 1.01), "services[0].profile.sla"),
    "sla_target zero": (_set(f"{S0}.profile.sla_target", 0), "services[0].profile.sla_target"),
    "utilization above 1.5": (_set(f"{S0}.state.utilization", 1.6), "services[0].state.util"),
    "minute_of_day 1440": (_set(f"{S0}.state.minute_of_day", 1440), "services[0].state.minute"),
    "unknown field": (_set(f"{S0}.state.cpu", 0.5), "services[0].state.cpu"),
    "unknown top-level field": (_set("dry_run", True), "dry_run"),
    "missing field": (_drop(f"{S0}.profile.max_step"), "services[0].profile.max_step"),
    "empty list": (_set("services", []), "services"),
    "future ts": (_set(f"{S0}.ts", "2026-03-02T12:06:00Z"), "services[0].ts"),
    "future naive local time": (_set(f"{S0}.ts", "2026-03-02T13:59:00"), "services[0].ts"),
    "bad ts": (_set(f"{S0}.ts", "yesterday"), "services[0].ts"),
    "service_id pattern": (_set(f"{S0}.service_id", "-svc"), "services[0].service_id"),
    "service_id space": (_set(f"{S0}.service_id", "a b"), "services[0].service_id"),
    "service_id empty": (_set(f"{S0}.service_id", ""), "services[0].service_id"),
    "service_id too long": (_set(f"{S0}.service_id", "a" * 129), "services[0].service_id"),
    "missing services": (lambda body: body.clear(), "services: field required"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_422_naming_the_field(client: TestClient, engine: Engine, case: str) -> None:
    mutate, path = BAD_INPUTS[case]
    body = {"services": [service("a"), service("b")]}
    mutate(body)
    response = post(client, body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["error"] == "validation_error"
    assert error["detail"].startswith(path), error["detail"]
    assert error["errors"][0]["loc"] == error["detail"].split(":")[0]
    # Each refusal names its kind from the bad-input catalogue (one case per kind is in
    # test_bad_input_catalogue.py).
    assert bad_input_kind(error["kind"]).blocking
    assert error["kind"] == error["errors"][0]["kind"]
    assert engine.frames == []  # refused before the engine ran


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("NaN", "finite number"),
        ("bool as int", "booleans are not accepted"),
        ("string number", "strings and booleans are not accepted"),
        ("min_jobs > max_jobs", "min_jobs (11) must be <= max_jobs (10)"),
        ("unknown field", "unknown field"),
        ("future ts", "more than 5 minutes after the server clock"),
    ],
)
def test_refusals_say_what_is_wrong(client: TestClient, case: str, fragment: str) -> None:
    body = {"services": [service()]}
    BAD_INPUTS[case][0](body)
    assert fragment in post(client, body).json()["detail"]


def test_duplicate_service_id_is_named(client: TestClient) -> None:
    response = post(client, {"services": [service("a"), service("b"), service("a")]})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail.startswith("services:")
    assert "duplicate service_id 'a'" in detail and "services[2]" in detail


def test_too_many_services(client: TestClient) -> None:
    response = post(client, {"services": [service(f"s{i}") for i in range(4)]})
    assert response.status_code == 422
    assert "at most 3 services" in response.json()["detail"]


def test_many_errors_are_summarised_and_capped(client: TestClient) -> None:
    body = {"services": [service()]}
    body["services"][0]["recent_events_120m"] = [math.nan] * 120
    error = post(client, body).json()
    assert error["detail"].endswith("(and 119 more errors)")
    assert len(error["errors"]) == 20


@pytest.mark.parametrize(
    "headers",
    [
        {"content-type": "text/plain"},
        {"content-type": "application/x-www-form-urlencoded"},
        {},
        {"content-type": "application/json", "content-encoding": "gzip"},
    ],
)
def test_non_json_content_type_is_a_415(client: TestClient, headers: dict[str, str]) -> None:
    response = client.post(
        "/v1/decisions", content=json.dumps({"services": [service()]}).encode(), headers=headers
    )
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_media_type"


@pytest.mark.parametrize("content", [b'{"services": [', b"", b"\xff\xfe", b"{'services': []}"])
def test_malformed_json_is_a_400(client: TestClient, content: bytes) -> None:
    response = client.post("/v1/decisions", content=content, headers=JSON)
    assert response.status_code == 400
    error = response.json()
    assert error["error"] == "malformed_json"
    assert error["detail"].startswith("request body is not valid JSON")


def test_oversize_body_by_content_length_is_a_413() -> None:
    engine = Engine()
    client = make_client(engine, max_body_bytes=1000)
    assert len(json.dumps({"services": [service()]})) > 1500
    response = post(client, {"services": [service()]})
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert "limit of 1000 bytes" in response.json()["detail"]
    assert engine.frames == []


def test_oversize_chunked_body_is_a_413() -> None:
    engine = Engine()
    client = make_client(engine, max_body_bytes=1000)
    data = json.dumps({"services": [service()]}).encode()
    assert len(data) > 1500

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(data), 500):
            yield data[i : i + 500]

    # A generator has no length, so httpx streams it chunked, without Content-Length.
    response = client.post("/v1/decisions", content=chunks(), headers=JSON)
    assert response.status_code == 413
    assert engine.frames == []


def _asgi_post(app: FastAPI, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> Any:
    """Drive the app at the ASGI level; returns (status, body, chunks it pulled)."""
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        if pulled >= len(chunks):  # the client is gone: never reached when aborted early
            return {"type": "http.disconnect"}
        pulled += 1
        return {
            "type": "http.request",
            "body": chunks[pulled - 1],
            "more_body": pulled < len(chunks),
        }

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/decisions",
        "raw_path": b"/v1/decisions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {TOKEN}".encode()),
            *headers,
        ],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body), pulled


def test_body_limit_stops_reading_early() -> None:
    app = create_app(
        Engine(), lambda: {"status": "ok"}, ServingMetrics(), token=TOKEN, max_body_bytes=2500
    )
    # Declared too large: refused without reading a byte.
    status, body, pulled = _asgi_post(app, [(b"content-length", b"10000000")], [b"x" * 1000] * 50)
    assert (status, body["error"], pulled) == (413, "payload_too_large", 0)
    # Streamed without a length: refused at the chunk that crosses the limit.
    status, body, pulled = _asgi_post(app, [], [b"x" * 1000] * 50)
    assert (status, body["error"], pulled) == (413, "payload_too_large", 3)


# ------------------------------------------------------------------------ engine errors


def test_engine_not_ready_is_a_503() -> None:
    client = make_client(Engine(error=NotReady("no champion forecaster and no fallback")))
    response = post(client, {"services": [service()]})
    assert response.status_code == 503
    assert response.json() == {
        "error": "not_ready",
        "detail": "no champion forecaster and no fallback",
    }


def test_engine_value_error_is_a_422_with_its_message() -> None:
    client = make_client(Engine(error=ValueError("svc-a: hourly history is all zeros")))
    response = post(client, {"services": [service()]})
    assert response.status_code == 422
    assert response.json() == {
        "error": "rejected_by_engine",
        "detail": "svc-a: hourly history is all zeros",
    }


def test_engine_crash_is_a_500_that_leaks_nothing(caplog: pytest.LogCaptureFixture) -> None:
    metrics = ServingMetrics()
    client = make_client(Engine(error=RuntimeError("secret at /srv/models/x.pt")), metrics=metrics)
    with caplog.at_level(logging.ERROR, logger="serving.api"):
        response = post(client, {"services": [service()]})
    assert response.status_code == 500
    assert response.json()["error"] == "internal_error"
    assert "secret" not in response.text and "Traceback" not in response.text
    assert any(r.exc_info and "secret" in str(r.exc_info[1]) for r in caplog.records)
    # A failed call is not a decision.
    assert metrics.registry.get_sample_value("autoscaler_decision_latency_seconds_count") == 0


@pytest.mark.parametrize(
    "broken",
    [
        lambda out: out.drop(columns="shield_reason"),
        lambda out: out.iloc[:1],
        lambda out: out.iloc[::-1],
        lambda out: out.assign(controller=[object(), object()]),
    ],
    ids=["missing column", "missing row", "reordered", "not JSON"],
)
def test_engine_breaking_its_contract_is_a_500(
    broken: Callable[[pd.DataFrame], pd.DataFrame],
) -> None:
    inner = Engine()
    client = make_client(lambda frame: broken(inner(frame)))
    response = post(client, {"services": [service("a"), service("b")]})
    assert response.status_code == 500
    assert response.json()["error"] == "internal_error"


# ------------------------------------------------------------------------ health, metrics


@pytest.mark.parametrize(
    ("status", "code"), [("ok", 200), ("degraded", 200), ("unavailable", 503), ("odd", 503)]
)
def test_healthz_code_follows_status(status: str, code: int) -> None:
    report = {"status": status, "models": {"forecaster": {"version": "3"}}}
    response = make_client(health=lambda: report).get("/healthz")
    assert response.status_code == code
    assert response.json() == report


def test_healthz_is_503_when_the_check_raises() -> None:
    def health() -> dict[str, Any]:
        raise OSError("registry unreachable")

    response = make_client(health=health).get("/healthz")
    assert response.status_code == 503
    assert "registry unreachable" not in response.text


def test_metrics_count_decisions_interventions_and_latency() -> None:
    client = make_client(Engine("ppo"))
    assert post(client, {"services": [service("a", 6000.0), service("b", 0.0)]}).is_success
    assert post(client, {"services": [service("a", 600.0)]}).is_success
    assert post(client, {"services": []}).status_code == 422

    samples = metric_samples(client)
    assert samples[("autoscaler_decisions_total", frozenset({("controller", "ppo")}))] == 3
    assert samples[("autoscaler_shield_interventions_total", frozenset({("reason", "step")}))] == 1
    assert samples[("autoscaler_shield_interventions_total", frozenset({("reason", "floor")}))] == 1
    assert samples[("autoscaler_shielded_decisions_total", frozenset())] == 2
    assert samples[("autoscaler_decision_latency_seconds_count", frozenset())] == 2
    requests = {
        dict(labels)["status"]: v
        for (name, labels), v in samples.items()
        if name == "autoscaler_api_requests_total" and ("endpoint", "/v1/decisions") in labels
    }
    assert requests == {"200": 2, "422": 1}


def test_two_apps_do_not_mix_metrics() -> None:
    first, second = make_client(Engine("ppo")), make_client(Engine("hpa"))
    assert post(first, {"services": [service()]}).is_success
    one, two = metric_samples(first), metric_samples(second)
    assert one[("autoscaler_decisions_total", frozenset({("controller", "ppo")}))] == 1
    assert not any(name == "autoscaler_decisions_total" for name, _ in two)
    assert two[("autoscaler_decision_latency_seconds_count", frozenset())] == 0


def test_unknown_routes_answer_in_the_error_shape(client: TestClient) -> None:
    assert client.get("/nope").json() == {"error": "not_found", "detail": "Not Found"}
    response = client.get("/v1/decisions")
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"
    assert response.headers["allow"] == "POST"


def test_openapi_documents_the_request_schema() -> None:
    document = make_client(max_services=7).get("/openapi.json").json()
    operation = document["paths"]["/v1/decisions"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["services"]["maxItems"] == 7
    assert "$defs" not in json.dumps(schema)  # refs inlined: they would not resolve
    item = schema["properties"]["services"]["items"]
    assert item["properties"]["recent_events_120m"]["minItems"] == 120
    assert {"200", "413", "415", "422", "503"} <= set(operation["responses"])


def test_create_app_refuses_bad_limits() -> None:
    with pytest.raises(ValueError, match="max_services"):
        create_app(
            Engine(), lambda: {"status": "ok"}, ServingMetrics(), token=TOKEN, max_services=0
        )


def test_engine_output_types_are_made_json_safe() -> None:
    inner = Engine()

    def decide(frame: pd.DataFrame) -> pd.DataFrame:
        out = inner(frame)
        out["ts"] = out["ts"].dt.tz_localize("UTC").dt.tz_convert("Europe/Berlin")
        out["controller_version"] = [np.str_("7")] * len(out)  # numpy scalars in objects
        return out

    response = post(make_client(decide), {"services": [service()]})
    assert response.status_code == 200
    decision = response.json()["decisions"][0]
    assert decision["ts"] == "2026-03-02T11:59:00Z"  # back in UTC
    assert decision["controller_version"] == "7"


# ------------------------------------------------------------------------ authentication


def _unauthorized(response: Any) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"bearer{TOKEN}"},
        {"Authorization": "Bearer "},
    ],
    ids=["none", "wrong", "basic-scheme", "no-space", "empty"],
)
def test_decisions_and_metrics_need_the_token(engine: Engine, headers: dict[str, str]) -> None:
    app = create_app(
        engine, lambda: {"status": "ok", "models": {"x": "1"}}, ServingMetrics(), token=TOKEN
    )
    anonymous = TestClient(app)
    _unauthorized(anonymous.post("/v1/decisions", json={"services": [service()]}, headers=headers))
    _unauthorized(anonymous.get("/metrics", headers=headers))
    assert engine.frames == []  # the engine never saw the request
    # The health probe answers anyone, with its status only.
    health = anonymous.get("/healthz", headers=headers)
    assert health.status_code == 200 and health.json() == {"status": "ok"}


def test_the_right_token_gets_in_and_sees_the_full_health(engine: Engine) -> None:
    app = create_app(
        engine, lambda: {"status": "ok", "models": {"x": "1"}}, ServingMetrics(), token=TOKEN
    )
    authorized = TestClient(app, headers=AUTH)
    assert authorized.post("/v1/decisions", json={"services": [service()]}).status_code == 200
    assert authorized.get("/metrics").status_code == 200
    assert authorized.get("/healthz").json() == {"status": "ok", "models": {"x": "1"}}


def test_without_a_configured_token_nobody_gets_in(engine: Engine) -> None:
    app = create_app(engine, lambda: {"status": "ok"}, ServingMetrics(), token=None)
    response = TestClient(app, headers=AUTH).post("/v1/decisions", json={"services": [service()]})
    _unauthorized(response)
    assert "AUTOSCALER_API_TOKEN" in response.json()["detail"]
    assert engine.frames == []


def test_the_token_is_checked_before_the_body_is_read() -> None:
    app = create_app(
        Engine(), lambda: {"status": "ok"}, ServingMetrics(), token="other", max_body_bytes=2500
    )
    # An unauthorized caller with a huge body is refused without a byte read.
    status, body, pulled = _asgi_post(app, [], [b"x" * 1000] * 50)
    assert (status, body["error"], pulled) == (401, "unauthorized", 0)
