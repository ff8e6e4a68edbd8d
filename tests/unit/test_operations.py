"""Operations below the task layer: the load's plan after node_status, the registry."""

from __future__ import annotations

import pytest

from vclvirt.config.settings import Settings
from vclvirt.errors import InvalidInput
from vclvirt.operations import OPERATIONS, operation
from vclvirt.operations.load import LOAD_STEPS, RELOAD_STEPS, plan_after_status
from vclvirt.recovery import retry_delay


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


def test_retry_delay_grows_to_its_ceiling_and_never_drops_below_a_second() -> None:
    """Full jitter in [1 s, min(max, base * 2^(n-1))]: the deployed defaults 2 s and 30 s."""
    settings = Settings(broker_url="redis://unused")
    for failures, ceiling in ((1, 2.0), (2, 4.0), (4, 16.0), (5, 30.0), (20, 30.0)):
        delays = [retry_delay(settings, failures) for _ in range(200)]
        assert all(1.0 <= d <= max(1.0, ceiling) for d in delays)
        assert max(delays) > ceiling * 0.6
