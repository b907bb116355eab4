"""What every actuator promises: set a service's job count, idempotently, and say how it went.

An actuator receives *targets* (the number of jobs a service should run), never deltas,
so applying the same decision twice leaves the platform as applying it once, and a
retried request cannot overshoot. Each call returns one :class:`Actuation` per service,
so one failing service never hides the others' results.
"""

from __future__ import annotations

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
