"""Stopping a running operation from outside its thread: superseded, or its lease lost.

The runner opens a scope; the thread that keeps the lease alive cancels it; code that
waits for a long time (copies, a guest booting, a shutdown) calls `check()` in its loop.
`Cancelled` is a BaseException so that handlers of ordinary errors (which may turn an
error into an answer, as node_status does) never swallow it.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from contextvars import ContextVar

from vclvirt.errors import VclvirtError
from vclvirt.scoped import bound


class Cancelled(BaseException):
    """The operation must stop now; `reason` says why (Superseded, LeaseLost)."""

    def __init__(self, reason: VclvirtError) -> None:
        super().__init__(str(reason))
        self.reason = reason


class CancelToken:
    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: VclvirtError | None = None

    def cancel(self, reason: VclvirtError) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set() and self.reason is not None:
            raise Cancelled(self.reason)


_current: ContextVar[CancelToken | None] = ContextVar("vclvirt_cancel_token", default=None)


def scope(token: CancelToken) -> AbstractContextManager[CancelToken]:
    """Make `token` the one `check()` consults in this thread."""
    return bound(_current, token)


def check() -> None:
    """Raise Cancelled if the current operation has been cancelled; no-op outside one."""
    token = _current.get()
    if token is not None:
        token.check()
