"""The record's state machine: every move, allowed or refused, and the scripts that
write the record naming no state and no move outside the table."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from vclvirt.state import writer
from vclvirt.state.machine import (
    ENDED,
    IN_FLIGHT,
    MOVES,
    NEW,
    State,
    _lua_string,
    allowed,
    lua_prelude,
    may_write,
)

Q, R, W, T = State.QUEUED, State.RUNNING, State.WAITING, State.RETRYING
OK, FAILED, SUPERSEDED = State.SUCCEEDED, State.FAILED, State.SUPERSEDED

# Written out by hand: a change of the table must change this list too.
EXPECTED = {
    *(("begin", source, Q) for source in (NEW, OK, FAILED, SUPERSEDED)),
    ("restart", FAILED, Q),
    *(("redispatch", source, Q) for source in (Q, R, W, T)),
    ("claim", Q, R),
    ("claim", R, R),
    ("step", R, R),
    ("park", R, W),
    ("park", R, T),
    *(("finish", R, target) for target in (OK, FAILED, SUPERSEDED)),
    ("abandon", Q, FAILED),
}
SOURCES = [NEW, *State]
EVERY = list(itertools.product([*MOVES, "unknown-move"], SOURCES, list(State)))


@pytest.mark.parametrize(("move", "source", "target"), EVERY)
def test_every_move_is_allowed_or_refused_as_the_table_says(move, source, target) -> None:
    assert allowed(move, source, target) is ((move, source, target) in EXPECTED)


def test_a_missing_record_is_the_new_state() -> None:
    assert allowed("begin", None, Q)
    assert not allowed("claim", None, R)


def test_ended_and_in_flight_split_the_states() -> None:
    assert {OK, FAILED, SUPERSEDED} == ENDED
    assert set(State) == ENDED | IN_FLIGHT and not ENDED & IN_FLIGHT
    assert all(State(s).ended for s in ENDED) and not any(State(s).ended for s in IN_FLIGHT)
    assert State.is_ended("failed") and not State.is_ended("unknown")
    assert not State.is_ended(None)
    assert [s for s in State if State.ended_badly(s)] == [FAILED, SUPERSEDED]


def test_nothing_leaves_an_ended_state_but_a_new_operation() -> None:
    """An ended record is only begun again (or restarted, if failed): a late writer never
    turns it back into a running one."""
    for move, source, _ in EXPECTED:
        if source in ENDED:
            assert move in ("begin", "restart")


@pytest.mark.parametrize("name", sorted(writer.SCRIPTS))
def test_the_writing_scripts_name_no_state_and_only_moves_of_the_table(name) -> None:
    """States come from the prelude (`S.QUEUED`), moves are checked by `may(...)`."""
    # the field `waiting` (why nothing runs) shares its name with a state
    body = writer.SCRIPTS[name].replace("'HDEL', KEYS[1], 'waiting'", "")
    quoted = set(re.findall(r"'([a-z_]+)'", body))
    assert not quoted & {s.value for s in State}, quoted
    for move in re.findall(r"may\('([a-z]+)'", body):
        assert move in MOVES
    for state in re.findall(r"\bS\.([A-Z]+)", body):
        assert state in State.__members__


def test_the_prelude_renders_every_state_and_move() -> None:
    prelude = lua_prelude()
    for state in State:
        assert f"{state.name} = '{state.value}'" in prelude
    for move in MOVES:
        assert re.search(rf"^  {move} = \{{", prelude, re.M)


def test_only_the_writer_writes_a_hash() -> None:
    """Status records are written by state/writer.py alone (the lease claim, the fence,
    the guest key pin all go through it or elsewhere); the only other hashes are the
    stage records of pre-staging, written by state/stages.py alone."""
    package = Path(writer.__file__).parents[1]
    writes = re.compile(r"\.(hset|hdel|hsetnx|hincrby)\(|'(HSET|HDEL|HSETNX|HINCRBY)'")
    writing = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if writes.search(path.read_text())
    )
    assert writing == ["state/stages.py", "state/writer.py"]


@pytest.mark.parametrize("state", [*State, None, NEW, "unknown"])
def test_a_write_that_keeps_the_state_is_allowed_only_in_flight(state: str | None) -> None:
    """A step's entry or an outcome is written into a record whose operation runs, never
    into an ended one or one that does not exist."""
    assert may_write(state) is (state in IN_FLIGHT)
    assert may_write(state) is (state in ("queued", "running", "waiting", "retrying"))


@pytest.mark.parametrize("name", ["in_flight", "RUNNING", "a1", ""])
def test_a_name_goes_into_lua_quoted(name: str) -> None:
    assert _lua_string(name) == f"'{name}'"


@pytest.mark.parametrize("text", ["_", "a'b", "a b", "x\\"])
def test_anything_but_a_name_never_goes_into_lua(text: str) -> None:
    """The prelude is built from the state table's names only; anything else (a quote
    would end the Lua string) stops the import instead."""
    with pytest.raises(AssertionError):
        _lua_string(text)
