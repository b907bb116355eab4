"""An actuator that applies nothing: it logs each target and changes no platform.

Use it to run the whole decision loop in shadow mode beside a live auto-scaler (HPA,
KEDA, a person) and compare its decisions with theirs before giving it control.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from serving.actuators.base import Actuation, validate_targets


class DryRunActuator:
    """Logs every target and remembers it; never touches a platform.

    ``current()`` returns the last target each service was given here (or the starting
    count passed in), so the decision loop sees the state it would have created, as it
    would with a real platform, and step limits and cooldowns behave as they would live.

    What an :class:`Actuation` from a dry run means:

    - ``applied=False``: no platform has the target, and ``Actuation.applied`` means
      exactly that everywhere; counting ``applied`` never counts a dry run as a change.
    - ``error=None``: nothing failed. Across actuators a *failure* is ``error is not
      None``; ``applied=False`` with ``error=None`` is the dry-run case alone.
    - ``attempts=0``: no request was made.
    - ``previous``: the count this actuator last recorded (None for a service it has not
      seen and was not given a starting count for).

    Args:
        initial: Starting job count per service, e.g. read once from the live platform.
        logger: Where decisions are logged (INFO); default this module's logger.
    """

    name = "dry-run"

    def __init__(
        self,
        initial: Mapping[str, int] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self._targets: dict[str, int] = validate_targets(initial or {})
        self._logger = logger if logger is not None else logging.getLogger(__name__)

    def current(self, services: Sequence[str]) -> dict[str, int | None]:
        """The last target recorded per service.

        Args:
            services: Service ids.

        Returns:
            Each service's last target, None for one never seen.
        """
        return {service_id: self._targets.get(service_id) for service_id in services}

    def apply(self, targets: Mapping[str, int]) -> list[Actuation]:
        """Log and record each target; change nothing else.

        Args:
            targets: Job target per service id.

        Returns:
            One not-applied, not-failed :class:`Actuation` per service, in the order given.

        Raises:
            ValueError: If a target is negative or not an integer (nothing is recorded).
        """
        checked = validate_targets(targets)
        results: list[Actuation] = []
        for service_id, target in checked.items():
            previous = self._targets.get(service_id)
            self._logger.info(
                "dry-run: %s would go from %s to %d jobs (not applied)",
                service_id,
                "unknown" if previous is None else previous,
                target,
            )
            self._targets[service_id] = target
            results.append(
                Actuation(
                    service_id=service_id,
                    target=target,
                    applied=False,
                    previous=previous,
                    attempts=0,
                    error=None,
                )
            )
        return results
