"""Test doubles for the fast unit tier, shipped with the package (as dramatiq ships
StubBroker and structlog ships `structlog.testing`): an in-memory Redis that runs the
project's own Lua scripts, and a fake host transport.

Needs the `testing` extra (`pip install 'vclvirt[testing]'`). Production code never
imports this package; the integration and end-to-end tiers use the real services.
"""

from vclvirt.testing.store import memory_redis
from vclvirt.testing.transport import Call, FakeHeld, FakeTransport, Reply

__all__ = ["Call", "FakeHeld", "FakeTransport", "Reply", "memory_redis"]
