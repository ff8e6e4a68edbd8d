"""What an operation is, declared once: its name, parameters, steps and step bodies, what
it owns and locks, and what it removes when abandoned (vclvirt.operations holds them all).

Everything else derives from the declaration: the API's and CLI's operation lists, the
parameter validation and OpenAPI schema, the Celery task name, the record's steps. Below
the task layer and independent of Celery: vclvirt.runner runs the steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from vclvirt.errors import InvalidInput, PermanentError
from vclvirt.models import Reservation, StrictModel, describe_errors, json_type
from vclvirt.provisioning.host import Host


class NoParams(StrictModel):
    """The operation takes no parameters."""


class MissingStepResult(PermanentError):
    """A step needs what an earlier step recorded, and it is not there."""

    code = "MISSING_STEP_RESULT"
    default_hint = "Run the whole operation again"


class StepContext:
    """What a step body may use: the hosts (`host()` is the reservation's own), the
    reservation, its checked parameters, earlier steps' results, and the few things a
    step records for later steps."""

    def __init__(
        self,
        hosts: Callable[[str], Host],
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
        self._hosts = hosts
        self.reservation = reservation
        self.params = params
        self._result_of = result_of
        self.attempts = attempts  # how often a step of this operation has been started
        self.progress = progress
        self.set_plan = set_plan
        self.set_outcome = set_outcome
        self.set_computer_image = set_computer_image

    def host(self, name: str | None = None) -> Host:
        """The reservation's host, or another host of the inventory by name."""
        return self._hosts(name or self.reservation.host)

    def result(self, step: str) -> dict[str, Any]:
        """What `step` recorded; MissingStepResult if it recorded nothing."""
        found = self._result_of(step)
        if not found:
            raise MissingStepResult(f"step {step} has recorded nothing for this reservation")
        return found


StepBody = Callable[[StepContext], dict[str, Any]]


@dataclass(frozen=True)
class Step:
    name: str
    body: StepBody


@dataclass(frozen=True)
class Operation:
    """An operation on a reservation's computer.

    `owns_computer`: beginning it makes the reservation the computer's owner, and it stops
    (superseded) when a newer reservation takes the computer. `locks_computer`: it changes
    the computer, so it holds the computer's lock while it runs (one at a time).
    `accepts`: a reason the reservation cannot have this operation, or None (checked
    before anything is written). `on_abandon` runs when it fails or is superseded: it
    removes what it created.
    """

    name: str
    summary: str
    steps: tuple[Step, ...]
    params: type[StrictModel] = NoParams
    owns_computer: bool = False
    locks_computer: bool = True
    accepts: Callable[[Reservation], str | None] | None = None
    on_abandon: StepBody | None = None

    @property
    def task_name(self) -> str:
        return f"vclvirt.{self.name}"

    @property
    def step_names(self) -> tuple[str, ...]:
        return tuple(step.name for step in self.steps)

    def body(self, step: str) -> StepBody:
        return next(s.body for s in self.steps if s.name == step)

    def check(self, reservation: Reservation, params: dict[str, Any] | None) -> dict[str, Any]:
        """The parameters, checked ({} for an operation that takes none), once the
        reservation is one this operation accepts; InvalidInput names the field."""
        refusal = self.accepts(reservation) if self.accepts else None
        if refusal:
            raise InvalidInput(f"state: {refusal}", field="state")
        return self.check_params(params)

    def check_params(self, params: dict[str, Any] | None) -> dict[str, Any]:
        """The parameters against the operation's model: {} for one that takes none."""
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise InvalidInput(
                f"params: must be an object, not {json_type(params)}", field="params"
            )
        try:
            checked = self.params.model_validate(params)
        except ValidationError as error:
            field, message = describe_errors(error, prefix="params")
            raise InvalidInput(
                f"invalid parameters for {self.name}: {message}",
                field=field or "params",
                hint=f"{self.name} takes {self.params_description}",
            ) from None
        return checked.model_dump()

    @property
    def params_description(self) -> str:
        names = list(self.params.model_fields)
        return "no parameters" if not names else "{" + ", ".join(f'"{n}"' for n in names) + "}"


def single(
    name: str, summary: str, body: StepBody, *, changes_computer: bool = True, **kwargs: Any
) -> Operation:
    """An operation of one step, named like the operation."""
    return Operation(
        name=name,
        summary=summary,
        steps=(Step(name, body),),
        locks_computer=changes_computer,
        **kwargs,
    )
