"""What the running operation's thread carries without passing it down every call: its
cancel token, its record's fenced writer, its host fence (each a ContextVar)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

T = TypeVar("T")


@contextmanager
def bound(var: ContextVar[T | None], value: T) -> Iterator[T]:
    """`value` is what `var` holds in this thread until the block ends."""
    reset = var.set(value)
    try:
        yield value
    finally:
        var.reset(reset)
