"""Operation parameters, validated at enqueue: one strict model per operation."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vclvirt.errors import InvalidInput
from vclvirt.models import SNAPSHOT_NAME_PATTERN
from vclvirt.operations import OPERATIONS, operation

OPERATION_NAMES = frozenset(OPERATIONS)
SNAPSHOT_OPERATIONS = ("snapshot_create", "snapshot_revert", "snapshot_delete")
PLAIN_OPERATIONS = sorted(OPERATION_NAMES - set(SNAPSHOT_OPERATIONS))
FAST = settings(max_examples=200, deadline=None)


def validate_params(name, params):
    return operation(name).check_params(params)


def refused(name, params) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        validate_params(name, params)
    return caught.value


def test_only_snapshot_operations_take_parameters():
    """Every operation declares its parameter model; only the snapshot ones take any."""
    taking = sorted(n for n, op in OPERATIONS.items() if op.params.model_fields)
    assert taking == sorted(SNAPSHOT_OPERATIONS)


@pytest.mark.parametrize("operation", PLAIN_OPERATIONS)
def test_operations_without_parameters_accept_none_or_empty(operation):
    """None and {} are both 'no parameters'; the result is {}."""
    assert validate_params(operation, None) == {} == validate_params(operation, {})


@pytest.mark.parametrize("operation", SNAPSHOT_OPERATIONS)
def test_snapshot_operations_take_a_valid_name(operation):
    """A snapshot name matching the pattern is returned as the only parameter."""
    assert validate_params(operation, {"name": "before-upgrade.1"}) == {"name": "before-upgrade.1"}


@pytest.mark.parametrize(
    "name",
    ["$(reboot)", "../../x", "a/b", "-rf", ".hidden", "a b", "x\n", "x\u202e", "", "a" * 65, 5],
)
@pytest.mark.parametrize("operation", SNAPSHOT_OPERATIONS)
def test_hostile_snapshot_names_are_refused_naming_params_name(operation, name):
    """Shell, traversal, control characters, empty, too long or not a string: params.name."""
    assert refused(operation, {"name": name}).field == "params.name"


@pytest.mark.parametrize("operation", SNAPSHOT_OPERATIONS)
def test_snapshot_operations_need_a_name(operation):
    """A missing name is refused, naming params.name."""
    assert refused(operation, None).field == "params.name"
    assert refused(operation, {}).field == "params.name"


@pytest.mark.parametrize("operation", sorted(OPERATION_NAMES))
def test_unknown_parameters_are_refused_naming_the_key(operation):
    """An extra parameter, however big, is refused and named (never enqueued)."""
    params = {"name": "s1"} if operation in SNAPSHOT_OPERATIONS else {}
    error = refused(operation, {**params, "payload": "x" * 100_000})
    assert error.field == "params.payload"
    assert len(error.message) < 500  # the 100 KB value is not echoed


def test_unknown_operation_is_refused_naming_operation():
    """An operation that does not exist is refused with the list of known ones."""
    error = refused("format_disk", None)
    assert error.field == "operation" and "snapshot_create" in error.message


@pytest.mark.parametrize("params", [["name"], "name", 5, True])
def test_params_must_be_an_object(params):
    """Params that are not an object are refused, naming params."""
    assert refused("snapshot_create", params).field == "params"


def test_huge_unknown_key_is_named_short_and_escaped():
    """A key of 100 KB (or with control characters) is quoted back short and escaped."""
    error = refused("power_on", {"\x1b[2J" + "k" * 100_000: 1})
    assert "\x1b" not in error.message and len(error.message) < 500


@FAST
@given(
    st.sampled_from(SNAPSHOT_OPERATIONS),
    st.from_regex(SNAPSHOT_NAME_PATTERN.replace("$", r"\Z"), fullmatch=True),
)
def test_every_name_matching_the_rule_is_accepted(operation, name):
    """Names of the snapshot rule are accepted unchanged."""
    assert validate_params(operation, {"name": name}) == {"name": name}


@FAST
@given(st.sampled_from(SNAPSHOT_OPERATIONS), st.text(max_size=80))
def test_a_name_is_accepted_exactly_when_it_matches_the_rule(operation, name):
    """Any text: accepted iff it fully matches the snapshot-name rule, else params.name."""
    matches = re.fullmatch(SNAPSHOT_NAME_PATTERN.replace("$", r"\Z"), name) is not None
    try:
        assert validate_params(operation, {"name": name}) == {"name": name}
        assert matches
    except InvalidInput as error:
        assert not matches and error.field == "params.name"


@FAST
@given(
    st.sampled_from(sorted(OPERATION_NAMES)),
    st.dictionaries(st.text(max_size=20).filter(lambda k: k != "name"), st.integers(), min_size=1),
)
def test_no_operation_accepts_any_key_but_name(operation, extra):
    """Whatever other keys are given, the parameters are refused, naming a params field."""
    params = {**extra, "name": "s1"} if operation in SNAPSHOT_OPERATIONS else extra
    error = refused(operation, params)
    assert error.field is not None and error.field.startswith("params.")


@FAST
@given(st.text(max_size=40).filter(lambda name: name not in OPERATION_NAMES))
def test_only_known_operations_are_accepted(operation):
    """Any other operation name is refused, naming operation."""
    assert refused(operation, None).field == "operation"


def test_unknown_operation_message_names_it_and_lists_the_known_ones():
    """An unknown operation is named, quoted, with the known ones listed comma-separated."""
    error = refused("reboot now", None)
    assert error.field == "operation"
    assert error.message == (
        "unknown operation 'reboot now'; known: " + ", ".join(sorted(OPERATION_NAMES))
    )


@pytest.mark.parametrize("operation", [None, 5, ["load"], {"load": 1}])
def test_operation_that_is_not_text_is_unknown(operation):
    """An operation given as null, a number, an array or an object is refused as unknown."""
    error = refused(operation, None)
    assert error.field == "operation"
    assert error.message.startswith("unknown operation ")


@pytest.mark.parametrize(
    ("params", "kind"),
    [([], "an array"), ("name", "a string"), (3, "a number"), (True, "a boolean")],
)
def test_params_that_are_not_an_object_are_refused_naming_their_type(params, kind):
    """params must be a JSON object; the message names what was given instead."""
    error = refused("snapshot_create", params)
    assert error.field == "params"
    assert error.message == f"params: must be an object, not {kind}"


def test_bad_parameters_get_the_hint_of_what_operations_take():
    """A refused parameter names params.<field> and hints what the operation takes."""
    error = refused("power_on", {"name": "x"})
    assert error.field == "params.name"
    assert (
        error.message == "invalid parameters for power_on: params.name: unknown field, not accepted"
    )
    assert error.hint == "power_on takes no parameters"
    assert refused("snapshot_create", {}).hint == 'snapshot_create takes {"name"}'
