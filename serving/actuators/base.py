"""What every actuator promises: set a service's job count, idempotently, and say how it went.

An actuator receives *targets* (the number of jobs a service should run), never deltas,
so applying the same decision twice leaves the platform as applying it once, and a
retried request cannot overshoot. Each call returns one :class:`Actuation` per service,
so one failing service never hides the others' results.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


class ActuatorError(RuntimeError):
    """An actuator cannot act at all (bad configuration, unknown service)."""


@dataclass(frozen=True)
class Actuation:
    """The outcome of setting one service's target.

    Attributes:
        service_id: The service.
        target: The job count asked for.
        applied: Whether the platform now has ``target`` (True also when it already had it).
        previous: The count before, when the actuator could read it.
        attempts: Requests made (1 without retries; 0 when nothing had to change).
        error: Why it was not applied, when it was not.
    """

    service_id: str
    target: int
    applied: bool
    previous: int | None = None
    attempts: int = 1
    error: str | None = None


class Actuator(Protocol):
    """Applies job targets to a platform (simulated cluster, Kubernetes, or nothing)."""

    name: str

    def current(self, services: Sequence[str]) -> dict[str, int | None]:
        """The job target each service has now (None when it cannot be read)."""
        ...

    def apply(self, targets: Mapping[str, int]) -> list[Actuation]:
        """Set each service's job target; one result per service, in the order given."""
        ...


def validate_targets(targets: Mapping[str, object]) -> dict[str, int]:
    """Check every target before any is applied, so a bad batch changes nothing.

    Integral numbers of any type are accepted (controllers return NumPy integers);
    booleans and floats are not, even ``3.0``: a fractional job count means a caller
    skipped its rounding rule, and guessing one here would hide that.

    Args:
        targets: Job target per service id.

    Returns:
        The same targets as plain ``int``, in the order given.

    Raises:
        ValueError: If a service id is empty or a target is negative or not an integer;
            the message names every offending service.
    """
    problems: list[str] = []
    checked: dict[str, int] = {}
    for service_id, target in targets.items():
        if not isinstance(service_id, str) or not service_id:
            problems.append(f"service id {service_id!r} is not a non-empty string")
        elif isinstance(target, bool) or not isinstance(target, numbers.Integral):
            problems.append(f"{service_id}: target {target!r} is not an integer")
        elif target < 0:
            problems.append(f"{service_id}: target {target} is negative")
        else:
            checked[service_id] = int(target)
    if problems:
        raise ValueError("invalid job targets, nothing applied: " + "; ".join(problems))
    return checked
