"""The error hierarchy: codes, context in messages, transient vs permanent."""

from __future__ import annotations

import pickle

import pytest

from vclvirt import errors
from vclvirt.errors import (
    CommandFailed,
    CommandTimeout,
    HypervisorUnavailable,
    InvalidInput,
    NodeUnreachable,
    PermanentError,
    ResourceBusy,
    TransientError,
    UnknownHost,
    VclvirtError,
)

ALL_ERRORS = [
    cls
    for cls in vars(errors).values()
    if isinstance(cls, type)
    and issubclass(cls, VclvirtError)
    and cls not in (VclvirtError, TransientError, PermanentError)
]


def test_str_contains_code_host_reservation_and_hint():
    """str() shows the code, message, host, reservation and hint."""
    error = CommandFailed("qemu-img exited 1", host="kvm1", reservation_id=200, hint="Fix it")
    assert str(error) == "[COMMAND_FAILED] qemu-img exited 1 (host kvm1, reservation 200). Fix it"


def test_str_without_context_has_no_parentheses():
    """Without host or reservation, no empty context is shown."""
    assert str(InvalidInput("bad", hint="")) == "[INVALID_INPUT] bad"


def test_default_hint_is_used():
    """Without an explicit hint the class's default hint appears."""
    error = UnknownHost("host 'x' is not in the inventory")
    assert error.hint == UnknownHost.default_hint
    assert UnknownHost.default_hint in str(error)


def test_explicit_empty_hint_suppresses_default():
    """An explicit empty hint means no hint, not the default."""
    assert InvalidInput("bad", hint="").hint == ""


@pytest.mark.parametrize(
    "cls", [NodeUnreachable, CommandTimeout, HypervisorUnavailable, ResourceBusy]
)
def test_transient_errors(cls):
    """Connection loss, timeouts, libvirt unavailability and busy resources are transient."""
    assert cls("x").transient
    assert isinstance(cls("x"), TransientError)


@pytest.mark.parametrize("cls", [c for c in ALL_ERRORS if not issubclass(c, TransientError)])
def test_permanent_errors(cls):
    """Every other error is permanent."""
    assert not cls("x").transient
    assert isinstance(cls("x"), PermanentError)


def test_codes_are_unique_and_stable_looking():
    """Each concrete error has its own upper-case code."""
    codes = [cls.code for cls in ALL_ERRORS]
    assert len(codes) == len(set(codes))
    assert all(code.isupper() and " " not in code for code in codes)
    assert "VCLVIRT_ERROR" not in codes


@pytest.mark.parametrize("cls", ALL_ERRORS)
def test_every_error_has_a_docstring_and_hint(cls):
    """Each error class documents itself and tells the operator what to do."""
    assert cls.__doc__ and cls.default_hint


def test_with_context_fills_missing_fields():
    """with_context sets host and reservation when they were unknown."""
    error = InvalidInput("bad").with_context(host="kvm1", reservation_id=200)
    assert (error.host, error.reservation_id) == ("kvm1", 200)
    assert "(host kvm1, reservation 200)" in str(error)


def test_with_context_does_not_overwrite():
    """with_context keeps the host and reservation the raiser already set."""
    error = CommandFailed("x", host="kvm1", reservation_id=7)
    same = error.with_context(host="kvm2", reservation_id=8)
    assert same is error
    assert (error.host, error.reservation_id) == ("kvm1", 7)


def test_with_context_accepts_none():
    """with_context with None leaves fields as they were."""
    error = CommandFailed("x", host="kvm1").with_context(host=None, reservation_id=None)
    assert (error.host, error.reservation_id) == ("kvm1", None)


def test_to_dict():
    """to_dict carries every field, including whether the error is transient."""
    assert CommandTimeout("slow", host="kvm1", reservation_id=3, hint="wait").to_dict() == {
        "code": "COMMAND_TIMEOUT",
        "message": "slow",
        "host": "kvm1",
        "reservation_id": 3,
        "hint": "wait",
        "transient": True,
    }


def test_errors_survive_pickling():
    """Errors cross process boundaries (task results) with their context intact."""
    error = CommandFailed("x", host="kvm1", reservation_id=7, hint="h")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is CommandFailed
    assert copy.to_dict() == error.to_dict()
    assert str(copy) == str(error)
