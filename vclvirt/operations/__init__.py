"""What each operation is: its steps, what each step does, and the bookkeeping around it.

Below the task layer and independent of Celery: `vclvirt.runner` runs an operation's
steps, a Celery task only hands a message to the runner.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vclvirt.errors import PermanentError

if TYPE_CHECKING:
    from vclvirt.models import Reservation
    from vclvirt.provisioner import Provisioner


class MissingStepResult(PermanentError):
    """A step needs what an earlier step recorded, and it is not there."""

    code = "MISSING_STEP_RESULT"
    default_hint = "Run the whole operation again"


class StepContext:
    """What a step body may use besides the provisioner: the reservation, its parameters,
    earlier steps' results, and the few things a step records for later steps."""

    def __init__(
        self,
        provisioner: Provisioner,
        reservation: Reservation,
        params: dict[str, Any],
        *,
        result_of: Callable[[str], dict[str, Any] | None],
        attempts: Callable[[str], int],
        progress: Callable[[int, int], None],
        set_plan: Callable[[list[str]], None],
        set_outcome: Callable[[dict[str, Any]], None],
        set_computer_image: Callable[[dict[str, Any] | None], None],
    ) -> None:
        self.provisioner = provisioner
        self.reservation = reservation
        self.params = params
        self._result_of = result_of
        self.attempts = attempts  # how often a step of this operation has been started
        self.progress = progress
        self.set_plan = set_plan
        self.set_outcome = set_outcome
        self.set_computer_image = set_computer_image

    def result(self, step: str) -> dict[str, Any]:
        """What `step` recorded; MissingStepResult if it recorded nothing."""
        found = self._result_of(step)
        if not found:
            raise MissingStepResult(f"step {step} has recorded nothing for this reservation")
        return found


StepBody = Callable[[StepContext], dict[str, Any]]


@dataclass(frozen=True)
class Operation:
    """An operation on a reservation's computer.

    `owns_computer`: beginning it makes the reservation the computer's owner, and it stops
    (superseded) when a newer reservation takes the computer. `locks_computer`: it changes
    the computer, so it holds the computer's lock while it runs (one at a time).
    `on_abandon` runs when it fails or is superseded: it removes what it created.
    """

    name: str
    steps: tuple[str, ...]
    bodies: Mapping[str, StepBody]
    owns_computer: bool = False
    locks_computer: bool = True
    on_abandon: Callable[[StepContext], dict[str, Any]] | None = field(default=None)

    @property
    def task_name(self) -> str:
        return (
            f"vclvirt.{self.name}"
            if self.name in ("load", "capture")
            else f"vclvirt.op.{self.name}"
        )
