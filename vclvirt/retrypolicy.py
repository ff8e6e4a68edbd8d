"""When an operation that did not get through is tried again, and when it gives up.

Every such decision is here, read from the settings once: a transient error's backoff
and deadline, a busy computer's or full host's wait, how often a lost worker may
interrupt a step, and how long a reservation waits for a worker of its host before it
fails NO_WORKER.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from vclvirt.config.settings import Settings

BUSY_RETRY_MAX = 30.0  # a busy computer is looked at again at least this often
# A host at its limit frees a slot when any of its operations ends: looked at again soon
# (recovery dispatches what is due every reconcile_interval).
HOST_BUSY_RETRY = 1.0


@dataclass(frozen=True)
class RetryPolicy:
    backoff: float = 2.0
    backoff_max: float = 30.0
    transient_deadline: float = 900.0
    max_interruptions: int = 3
    no_worker_deadline: float = 900.0
    busy_max: float = BUSY_RETRY_MAX
    host_busy_delay: float = HOST_BUSY_RETRY

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            backoff=settings.retry_backoff,
            backoff_max=settings.retry_backoff_max,
            transient_deadline=settings.transient_deadline,
            max_interruptions=settings.max_interruptions,
            no_worker_deadline=settings.no_worker_deadline,
        )

    def delay(self, failures: int) -> float:
        """Exponential backoff with full jitter (at least one second) after `failures`
        transient errors of a step."""
        ceiling = min(self.backoff_max, self.backoff * (2 ** max(0, failures - 1)))
        return max(1.0, random.uniform(0, ceiling))  # noqa: S311 - jitter, not security

    def gives_up(self, first_error_at: float, delay: float, now: float) -> bool:
        """Whether retrying after `delay` would run past the deadline of the step's errors
        (the first at `first_error_at`): then the step fails with its error."""
        return now + delay - first_error_at > self.transient_deadline

    def busy_delay(self, waits: int) -> float:
        """How long the `waits`-th wait for a computer another reservation holds lasts."""
        return min(self.busy_max, 2.0 ** (waits - 1))

    def interrupted_too_often(self, interruptions: int) -> bool:
        """A step whose worker was lost this often fails instead of being resumed again."""
        return interruptions >= self.max_interruptions

    def no_worker_fails_at(self, since: float) -> float:
        """When a reservation without a live worker for its host since `since` fails."""
        return since + self.no_worker_deadline
