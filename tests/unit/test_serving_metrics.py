"""Serving metrics (serving/metrics.py): what each record_* call counts, and isolation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from serving.metrics import ServingMetrics


def decisions(controllers: list[str | None], reasons: list[str | None]) -> pd.DataFrame:
    return pd.DataFrame({"controller": controllers, "shield_reason": reasons})


def value(m: ServingMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_decisions_are_counted_by_controller() -> None:
    m = ServingMetrics()
    m.record_decisions(decisions(["ppo", "ppo", "predictive"], ["", "", ""]), 0.002)
    m.record_decisions(decisions(["ppo", None], ["", ""]), 0.004)
    assert value(m, "autoscaler_decisions_total", controller="ppo") == 3
    assert value(m, "autoscaler_decisions_total", controller="predictive") == 1
    assert value(m, "autoscaler_decisions_total", controller="unknown") == 1


def test_shield_reasons_are_split_into_codes() -> None:
    m = ServingMetrics()
    frame = decisions(
        ["ppo"] * 6,
        ["", "step+cooldown", "step", "fallback:forecast", "fallback:proposal+step", None],
    )
    m.record_decisions(frame, 0.001)
    expected = {"step": 3, "cooldown": 1, "fallback:forecast": 1, "fallback:proposal": 1}
    for reason, n in expected.items():
        assert value(m, "autoscaler_shield_interventions_total", reason=reason) == n, reason
    # "" and a missing reason are untouched decisions: no series for them.
    assert value(m, "autoscaler_shield_interventions_total", reason="") is None
    # Decisions changed, each once, however many codes it has.
    assert value(m, "autoscaler_shielded_decisions_total") == 4


def test_latency_is_one_observation_per_call() -> None:
    m = ServingMetrics()
    m.record_decisions(decisions(["rule"] * 1000, [""] * 1000), 0.0007)
    m.record_decisions(decisions(["rule"], [""]), 1.5)
    name = "autoscaler_decision_latency_seconds"
    assert value(m, f"{name}_count") == 2
    assert value(m, f"{name}_sum") == pytest.approx(1.5007)
    assert value(m, f"{name}_bucket", le="0.0005") == 0
    assert value(m, f"{name}_bucket", le="0.001") == 1
    assert value(m, f"{name}_bucket", le="2.0") == 2


def test_empty_or_columnless_frame_records_the_call_only() -> None:
    m = ServingMetrics()
    m.record_decisions(pd.DataFrame(), 0.01)
    m.record_decisions(pd.DataFrame({"jobs_after": [1, 2]}), 0.01)
    assert value(m, "autoscaler_decision_latency_seconds_count") == 2
    assert value(m, "autoscaler_decisions_total", controller="unknown") == 2
    assert value(m, "autoscaler_shielded_decisions_total") == 0


def test_nan_reason_counts_as_untouched() -> None:
    m = ServingMetrics()
    m.record_decisions(decisions(["a", "a"], [np.nan, "floor"]), 0.01)  # type: ignore[list-item]
    assert value(m, "autoscaler_shielded_decisions_total") == 1
    assert value(m, "autoscaler_shield_interventions_total", reason="nan") is None


def test_cycle_and_actuation_errors() -> None:
    m = ServingMetrics()
    m.record_cycle(0.8)
    m.record_cycle(12.0)
    assert value(m, "autoscaler_cycle_seconds_count") == 2
    assert value(m, "autoscaler_cycle_seconds_bucket", le="1.0") == 1
    m.record_actuation_errors("kubernetes", 0)  # the series exists at 0 before any error
    assert value(m, "autoscaler_actuation_errors_total", actuator="kubernetes") == 0
    m.record_actuation_errors("kubernetes", 3)
    m.record_actuation_errors("simulator", 1)
    assert value(m, "autoscaler_actuation_errors_total", actuator="kubernetes") == 3
    assert value(m, "autoscaler_actuation_errors_total", actuator="simulator") == 1
    with pytest.raises(ValueError, match=">= 0"):
        m.record_actuation_errors("simulator", -1)


def test_api_requests_by_endpoint_and_status() -> None:
    m = ServingMetrics()
    m.record_api_request("/v1/decisions", 200)
    m.record_api_request("/v1/decisions", 200)
    m.record_api_request("/v1/decisions", 413)
    assert value(m, "autoscaler_api_requests_total", endpoint="/v1/decisions", status="200") == 2
    assert value(m, "autoscaler_api_requests_total", endpoint="/v1/decisions", status="413") == 1


def test_model_versions_replace_the_previous_label() -> None:
    m = ServingMetrics()
    m.set_model_versions({"forecaster": "3", "controller": None})
    m.set_model_versions({"forecaster": "4"})  # a promotion; controller untouched
    name = "autoscaler_model_version_info"
    assert value(m, name, model="forecaster", version="4") == 1
    assert value(m, name, model="forecaster", version="3") is None
    assert value(m, name, model="controller", version="none") == 1


def test_instances_do_not_share_series() -> None:
    first, second = ServingMetrics(), ServingMetrics()
    first.record_decisions(decisions(["ppo"], ["step"]), 0.01)
    assert value(first, "autoscaler_decisions_total", controller="ppo") == 1
    assert value(second, "autoscaler_decisions_total", controller="ppo") is None
    assert value(second, "autoscaler_decision_latency_seconds_count") == 0


def test_injected_registry_holds_the_series() -> None:
    registry = CollectorRegistry()
    m = ServingMetrics(registry)
    m.record_cycle(1.0)
    assert m.registry is registry
    assert registry.get_sample_value("autoscaler_cycle_seconds_count") == 1
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        ServingMetrics(registry)  # the same names twice in one registry


def test_exposition_is_parseable_prometheus_text() -> None:
    m = ServingMetrics()
    m.record_decisions(decisions(["ppo"], ["step+floor"]), 0.003)
    m.set_model_versions({"forecaster": "2"})
    assert m.content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(m.exposition().decode())}
    assert families["autoscaler_decisions"].type == "counter"
    assert families["autoscaler_decision_latency_seconds"].type == "histogram"
    assert {s.labels["reason"] for s in families["autoscaler_shield_interventions"].samples} >= {
        "step",
        "floor",
    }
