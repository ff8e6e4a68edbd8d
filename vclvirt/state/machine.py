"""The record's state machine: its states and the moves allowed between them.

A record is begun queued, claimed (running), parked (waiting for a busy computer or
retrying after a transient error), dispatched again (queued), and ends succeeded,
failed or superseded; an ended record is begun again by the next operation, and a
failed one can be restarted. Every script that writes a record (state/writer.py) checks
its move against `MOVES` through the Lua rendered here, so the table is the only place
that says which moves exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    """Where a reservation's operation is."""

    QUEUED = "queued"  # a message for its generation is on the host's queue
    RUNNING = "running"  # a worker holds its lease
    WAITING = "waiting"  # the computer is busy (or shown so when no worker serves the host)
    RETRYING = "retrying"  # a step failed transiently; dispatched again after a backoff
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SUPERSEDED = "superseded"  # a newer reservation took the computer

    @property
    def ended(self) -> bool:
        return self in ENDED

    @staticmethod
    def is_ended(state: str | None) -> bool:
        """Whether `state` (as read from a record, possibly unknown) ends the operation."""
        return state in ENDED

    @staticmethod
    def ended_badly(state: str | None) -> bool:
        """Failed or superseded: the operation did not do what was asked."""
        return state in (State.FAILED, State.SUPERSEDED)


ENDED = frozenset({State.SUCCEEDED, State.FAILED, State.SUPERSEDED})
IN_FLIGHT = frozenset(State) - ENDED
NEW = ""  # "from" of a record that does not exist (never begun, or expired)


@dataclass(frozen=True)
class Rule:
    """A move leaves one of `sources` for one of `targets`."""

    sources: frozenset[str]
    targets: frozenset[str]


# Every move a record makes, by name (the name is what the writing script asks for).
MOVES: dict[str, Rule] = {
    # an enqueue: a new record, or over one whose operation has ended
    "begin": Rule(frozenset({NEW, *ENDED}), frozenset({State.QUEUED})),
    # vclvirt retry: a failed operation again from one of its steps
    "restart": Rule(frozenset({State.FAILED}), frozenset({State.QUEUED})),
    # recovery: a new generation of an in-flight operation nobody (alive) runs
    "redispatch": Rule(IN_FLIGHT, frozenset({State.QUEUED})),
    # a worker takes the lease of a dispatched generation (again, after its own claim)
    "claim": Rule(frozenset({State.QUEUED, State.RUNNING}), frozenset({State.RUNNING})),
    # the holder's writes: a step starts (running stays running), the run parks, or ends
    "step": Rule(frozenset({State.RUNNING}), frozenset({State.RUNNING})),
    "park": Rule(frozenset({State.RUNNING}), frozenset({State.WAITING, State.RETRYING})),
    "finish": Rule(frozenset({State.RUNNING}), ENDED),
    # recovery as nobody: an abandoned operation (dispatched again first) fails
    "abandon": Rule(frozenset({State.QUEUED}), frozenset({State.FAILED})),
}


def allowed(move: str, source: str | None, target: str) -> bool:
    """Whether `move` may take a record in `source` (None or "": no record) to `target`."""
    rule = MOVES.get(move)
    return rule is not None and (source or NEW) in rule.sources and target in rule.targets


def may_write(source: str | None) -> bool:
    """Whether a write that keeps the state (a step's entry, an outcome) is allowed."""
    return source in IN_FLIGHT


def _lua_set(names: frozenset[str]) -> str:
    return "{" + ", ".join(f"[{_lua_string(n)}] = true" for n in sorted(names)) + "}"


def _lua_string(text: str) -> str:
    assert text.replace("_", "").isalnum() or text == "", text  # names, never input
    return f"'{text}'"


def lua_prelude() -> str:
    """The table in Lua, for the writing scripts: `S.<NAME>` is a state's string,
    `may(move, from, to)` the check, `in_flight(state)` whether it has not ended."""
    states = ", ".join(f"{s.name} = {_lua_string(s.value)}" for s in State)
    moves = ",\n  ".join(
        f"{name} = {{{_lua_set(rule.sources)}, {_lua_set(rule.targets)}}}"
        for name, rule in MOVES.items()
    )
    return f"""local S = {{{states}}}
local MOVES = {{
  {moves}
}}
local IN_FLIGHT = {_lua_set(frozenset(IN_FLIGHT))}
local function may(move, from, to)
  local rule = MOVES[move]
  return rule ~= nil and rule[1][from or ''] == true and rule[2][to] == true
end
local function in_flight(state)
  return IN_FLIGHT[state or ''] == true
end
"""
