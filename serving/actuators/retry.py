"""Retry a platform call on transient errors only, with bounded attempts and back-off.

An actuator's requests fail in two ways: *transient* failures (the API server is
overloaded, restarting or briefly unreachable) that a later identical request may get
past, and *permanent* ones (not found, forbidden, invalid) that it never will. Only the
first kind is retried; the second propagates at once, so a misconfiguration shows up in
the first cycle instead of after a string of pointless requests.

Retrying a write is safe here because actuators send targets, never deltas: a request
that timed out after the server applied it does no harm when sent again.

There is no random jitter: one auto-scaler process talks to the API server, so there is
no herd to spread out, and a fixed schedule keeps tests and incident timelines exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

TransientTest = Callable[[BaseException], bool] | tuple[type[BaseException], ...]
"""Which errors are transient: a predicate, or the exception classes that are."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    Attributes:
        max_attempts: Calls made at most, the first included (1 means no retry).
        delays_s: Seconds to wait before the 2nd, 3rd, ... call; the last entry repeats
            when there are more attempts than entries.
        max_delay_s: Longest single wait, also for a server's ``Retry-After`` hint, so a
            hint of minutes cannot stall a once-a-minute decision cycle.
    """

    max_attempts: int = 4
    delays_s: Sequence[float] = (0.25, 1.0, 2.0)
    max_delay_s: float = 5.0

    def __post_init__(self) -> None:
        """Reject a policy that could not retry sensibly, with what to change."""
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if not self.delays_s:
            raise ValueError("delays_s must list at least one delay (use (0.0,) for none)")
        if any(delay < 0 for delay in self.delays_s):
            raise ValueError(f"delays_s must be >= 0, got {tuple(self.delays_s)}")
        if self.max_delay_s < 0:
            raise ValueError(f"max_delay_s must be >= 0, got {self.max_delay_s}")

    def delay_before(self, attempt: int) -> float:
        """The scheduled wait before a given attempt.

        Args:
            attempt: The attempt about to be made, counted from 1 (so >= 2 for a retry).

        Returns:
            Seconds to wait, capped at ``max_delay_s``.
        """
        index = min(max(attempt - 2, 0), len(self.delays_s) - 1)
        return min(self.delays_s[index], self.max_delay_s)


@dataclass(frozen=True)
class Attempted(Generic[T]):
    """A call's result and how many calls it took.

    Attributes:
        value: What the call returned.
        attempts: Calls made, the successful one included (>= 1).
    """

    value: T
    attempts: int


class RetriesExhausted(Exception):
    """Every allowed attempt failed with a transient error (or time ran out).

    Attributes:
        attempts: Calls made.
        last_error: The error of the last call (also the ``__cause__``).
    """

    def __init__(self, attempts: int, last_error: BaseException) -> None:
        super().__init__(f"gave up after {attempts} attempt(s): {last_error}")
        self.attempts = attempts
        self.last_error = last_error


def _as_predicate(transient: TransientTest) -> Callable[[BaseException], bool]:
    """Turn an exception tuple into a predicate; leave a predicate as it is."""
    if isinstance(transient, tuple):
        classes = transient
        return lambda error: isinstance(error, classes)
    return transient


def call_with_retry(
    call: Callable[[], T],
    *,
    transient: TransientTest,
    policy: RetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
    retry_after: Callable[[BaseException], float | None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    deadline: float | None = None,
) -> Attempted[T]:
    """Call ``call`` until it succeeds, retrying transient errors only.

    Args:
        call: The request to make; it takes no arguments (bind them with a closure).
        transient: Which errors are worth retrying: a predicate or exception classes.
        policy: Attempts and delays.
        sleep: Waits between attempts (injected so tests do not wait).
        retry_after: Reads a server's wait hint (seconds) from an error, if it has one;
            the wait is then the longer of the hint and the schedule, capped by the policy.
        clock: Monotonic seconds, compared with ``deadline``.
        deadline: A ``clock()`` value after which no new attempt starts: when the next
            wait would end past it, the helper gives up instead of sleeping.

    Returns:
        The call's value and the number of calls made.

    Raises:
        RetriesExhausted: When every attempt failed transiently, or the deadline came
            first; chained from the last error.
        Exception: Any non-transient error of ``call``, unchanged and at once.
    """
    is_transient = _as_predicate(transient)
    attempt = 1
    while True:
        try:
            return Attempted(value=call(), attempts=attempt)
        except Exception as error:
            if not is_transient(error):
                raise
            if attempt >= policy.max_attempts:
                raise RetriesExhausted(attempt, error) from error
            delay = policy.delay_before(attempt + 1)
            hint = retry_after(error) if retry_after is not None else None
            if hint is not None:
                delay = min(max(delay, hint), policy.max_delay_s)
            if deadline is not None and clock() + delay > deadline:
                raise RetriesExhausted(attempt, error) from error
            sleep(delay)
            attempt += 1
