"""Load `bench/scenarios.yaml` into typed scenarios and their arrival series."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from simulator.config import ServiceConfig
from simulator.synthetic import SyntheticConfig, default_services, generate, to_traces
from simulator.traces import Trace, list_traces, load_trace, rescale_to_peak

_SERVICE_FIELDS = {f.name for f in fields(ServiceConfig)}


class ScenarioError(ValueError):
    """The scenarios file is malformed."""


@dataclass(frozen=True)
class Scenario:
    """One benchmark scenario.

    Attributes:
        name: The trace file's stem or the synthetic scenario's name.
        service: The cluster the controllers run.
        seed: Seeds resampling and the simulator.
        history_fraction: Share of the series used as history.
        peak_eps: Rescale target of the series' ``rescale_quantile`` rate.
        rescale_quantile: Quantile of per-minute counts mapped to ``peak_eps``.
        trace_path: CSV to load (trace scenarios).
        synthetic_profile: Generator profile (synthetic scenarios).
        synthetic_days: Days to generate (synthetic scenarios).
    """

    name: str
    service: ServiceConfig
    seed: int
    history_fraction: float
    peak_eps: float
    rescale_quantile: float
    trace_path: Path | None = None
    synthetic_profile: str | None = None
    synthetic_days: int = 0


def _merge(base: dict[str, Any], over: dict[str, Any] | None) -> dict[str, Any]:
    out = dict(base)
    for key, value in (over or {}).items():
        out[key] = (
            _merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def _service(name: str, spec: dict[str, Any]) -> ServiceConfig:
    if not isinstance(spec, dict):
        raise ScenarioError(f"scenario {name!r}: 'service' must be a mapping of its fields")
    unknown = set(spec) - _SERVICE_FIELDS
    if unknown:
        raise ScenarioError(f"scenario {name!r}: unknown service fields {sorted(unknown)}")
    try:
        return ServiceConfig(**{**spec, "service_id": name})
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"scenario {name!r}: {exc}") from exc


def _build(name: str, merged: dict[str, Any], **source: Any) -> Scenario:
    rescale = merged.get("rescale") or {}
    try:
        return Scenario(
            name=name,
            service=_service(name, merged.get("service") or {}),
            seed=int(merged.get("seed", 0)),
            history_fraction=float(merged.get("history_fraction", 0.7)),
            peak_eps=float(rescale["peak_eps"]),
            rescale_quantile=float(rescale.get("quantile", 0.99)),
            **source,
        )
    except KeyError as exc:
        raise ScenarioError(f"scenario {name!r}: missing {exc}") from exc


def load_scenarios(path: Path, traces_dir: Path | None) -> list[Scenario]:
    """Scenarios for every CSV in ``traces_dir`` (if given) plus the synthetic ones.

    Args:
        path: The scenarios YAML file.
        traces_dir: Directory of ``timestamp,value`` CSVs; None for synthetic only.

    Returns:
        Trace scenarios sorted by name, then the synthetic scenarios in file order.
    """
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"cannot read scenarios file {path}: {exc}") from exc
    # An empty `defaults:` loads as None: reject it here, not as a TypeError later.
    if not isinstance(doc, dict) or not isinstance(doc.get("defaults"), dict):
        raise ScenarioError(f"{path}: expected a mapping with a 'defaults' section (a mapping)")
    defaults = doc["defaults"]
    per_trace = doc.get("traces") or {}
    out: list[Scenario] = []
    if traces_dir is not None:
        for csv in list_traces(traces_dir):
            merged = _merge(defaults, per_trace.get(csv.stem))
            out.append(_build(csv.stem, merged, trace_path=csv))
    for entry in doc.get("synthetic") or []:
        if not isinstance(entry, dict):
            raise ScenarioError(f"{path}: 'synthetic' must be a list of mappings, got {entry!r}")
        name = entry.get("name")
        if not name:
            raise ScenarioError(f"{path}: every synthetic scenario needs a name")
        merged = _merge(
            defaults,
            {
                k: v
                for k, v in entry.items()
                if k in ("service", "rescale", "seed", "history_fraction")
            },
        )
        out.append(
            _build(
                name,
                merged,
                synthetic_profile=str(entry.get("service_profile", "checkout")),
                synthetic_days=int(entry.get("days", 35)),
            )
        )
    return out


def scenario_trace(scenario: Scenario) -> Trace:
    """The scenario's one-minute arrival series, rescaled."""
    if scenario.trace_path is not None:
        trace = load_trace(scenario.trace_path, mode="poisson", seed=scenario.seed)
    else:
        profiles = {s.service_id: s for s in default_services()}
        if scenario.synthetic_profile not in profiles:
            raise ScenarioError(
                f"scenario {scenario.name!r}: unknown service_profile "
                f"{scenario.synthetic_profile!r}; choose one of {sorted(profiles)}"
            )
        config = SyntheticConfig(
            days=scenario.synthetic_days,
            seed=scenario.seed,
            services=(profiles[scenario.synthetic_profile],),
        )
        trace = replace(to_traces(generate(config))[0], name=scenario.name)
    return rescale_to_peak(trace, scenario.peak_eps, scenario.rescale_quantile)
