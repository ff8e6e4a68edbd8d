"""Operations below the task layer: the load's plan after node_status, the registry."""

from __future__ import annotations

from typing import Any

import pytest

from vclvirt.errors import InvalidInput
from vclvirt.models import Reservation
from vclvirt.operation import MissingStepResult, Operation, Step, StepContext, single
from vclvirt.operations import OPERATIONS, operation
from vclvirt.operations.load import LOAD_STEPS, RELOAD_STEPS, plan_after_status


@pytest.mark.parametrize(
    ("state", "status", "plan"),
    [
        ("new", "READY", []),
        ("new", "POST_LOAD", ["post_load"]),
        ("new", "RELOAD", list(RELOAD_STEPS)),
        ("reload", "READY", list(RELOAD_STEPS)),
        ("reload", "POST_LOAD", list(RELOAD_STEPS)),
        ("reinstall", "READY", list(RELOAD_STEPS)),
    ],
)
def test_plan_after_node_status(state: str, status: str, plan: list[str]) -> None:
    """new follows node_status like VCL's new.pm; reload and reinstall always reload."""
    assert plan_after_status(state, status) == plan


def test_operations_own_and_lock_the_computer_as_they_change_it() -> None:
    """Loads and captures own the computer; read-only operations take no lock."""
    assert sorted(n for n, op in OPERATIONS.items() if op.owns_computer) == ["capture", "load"]
    unlocked = {n for n, op in OPERATIONS.items() if not op.locks_computer}
    assert {"node_status", "power_status", "snapshot_list"} <= unlocked
    changing = {"load", "capture", "power_on", "power_off", "power_reset", "unload"}
    changing |= {"post_maintenance_action", "snapshot_create", "snapshot_revert", "snapshot_delete"}
    assert not changing & unlocked
    assert OPERATIONS["load"].step_names == LOAD_STEPS
    assert OPERATIONS["load"].task_name == "vclvirt.load"
    assert OPERATIONS["power_off"].task_name == "vclvirt.power_off"


def test_unknown_operation_names_the_field() -> None:
    with pytest.raises(InvalidInput) as caught:
        operation("reboot")
    assert caught.value.field == "operation"


def _context(reservation: Reservation, results: dict[str, dict[str, Any]]) -> StepContext:
    return StepContext(
        lambda name: name,  # type: ignore[arg-type,return-value]
        reservation,
        {},
        result_of=results.get,
        attempts=lambda _step: 0,
        progress=lambda _done, _total: None,
        set_plan=lambda _steps: None,
        set_outcome=lambda _outcome: None,
        set_computer_image=lambda _image: None,
    )


def test_a_step_context_reaches_its_own_host_or_a_named_one(reservation) -> None:
    r = reservation()
    ctx = _context(r, {})
    assert ctx.host() == r.host
    assert ctx.host("kvmhost9") == "kvmhost9"


def test_a_result_a_step_never_recorded_is_an_error_naming_the_step(reservation) -> None:
    ctx = _context(reservation(), {"pre_define": {"master": "m"}})
    assert ctx.result("pre_define") == {"master": "m"}
    with pytest.raises(MissingStepResult, match="step define has recorded nothing for this"):
        ctx.result("define")


def test_an_operation_refusing_the_reservations_state_names_the_state_field(reservation):
    toy = Operation(name="toy", summary="refuses", steps=(), accepts=lambda _r: "not for this one")
    with pytest.raises(InvalidInput, match="state: not for this one") as refused:
        toy.check(reservation(), None)
    assert refused.value.field == "state"


def test_single_makes_an_operation_of_one_step_named_like_it() -> None:
    def body(ctx: StepContext) -> dict[str, Any]:
        return {}

    op = single("probe", "looks at the computer", body, owns_computer=True)
    assert (op.name, op.summary, op.steps) == (
        "probe",
        "looks at the computer",
        (Step("probe", body),),
    )
    assert op.locks_computer is True and op.owns_computer is True  # not the default
    assert single("peek", "s", body, changes_computer=False).locks_computer is False
