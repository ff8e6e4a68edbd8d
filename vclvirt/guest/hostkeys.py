"""Guests' SSH host keys, pinned in the reservation's status record at first contact.

A guest just booted from an image has a host key nobody can know in advance, so
the first contact of a reservation accepts it (trust on first use) and pins it in
field `guest_host_key` of `vclvirt:reservation:<id>`; every later contact must be
answered with the same key. The pin goes when the reservation's domain is deleted
(a new guest, a new key) and when a new load of the reservation begins.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import paramiko
import redis
import structlog

from vclvirt.errors import GuestHostKeyChanged
from vclvirt.state import keys
from vclvirt.state.client import redis_client
from vclvirt.state.fence import FencedRecord, Write
from vclvirt.state.fence import current as fenced_record
from vclvirt.state.records import GUEST_HOST_KEY

log = structlog.get_logger(__name__)

FIELD = GUEST_HOST_KEY

# Pin only into an existing status record: a hash holding nothing but a pin would look
# like a record of an operation that never ends. HSETNX makes the first pin win.
_PIN_IF_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
return redis.call('HGET', KEYS[1], ARGV[1])
"""


def key_text(key: paramiko.PKey) -> str:
    """A host key as known_hosts writes it: '<type> <base64>'."""
    return f"{key.get_name()} {key.get_base64()}"


class GuestHostKeys:
    """Reads and sets the pinned guest host key of reservations."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._pin_script = client.register_script(_PIN_IF_RECORD)

    @classmethod
    def from_url(cls, url: str) -> GuestHostKeys:
        return cls(redis_client(url))

    def pinned(self, reservation_id: int) -> str | None:
        value = self.redis.hget(keys.record(reservation_id), FIELD)
        return value.decode() if isinstance(value, bytes) else value

    def pin(self, reservation_id: int, key: str) -> str | None:
        """Pin `key` unless a key is pinned already; the pinned key (None: no record).
        Inside the reservation's running operation, only under its fencing token."""
        writes = _fenced(reservation_id)
        if writes is not None:
            writes.apply(Write(hset={}, hsetnx=(FIELD, key)))
            return self.pinned(reservation_id)
        value: Any = self._pin_script(keys=[keys.record(reservation_id)], args=[FIELD, key])
        if value == -1:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    def forget(self, reservation_id: int) -> None:
        """The guest is gone (its domain deleted): the next one pins its own key."""
        writes = _fenced(reservation_id)
        if writes is not None:
            writes.apply(Write(hset={}, hdel=(FIELD,)))
        else:
            self.redis.hdel(keys.record(reservation_id), FIELD)

    def policy(self, reservation_id: int, guest: str) -> PinnedHostKeyPolicy:
        return PinnedHostKeyPolicy(self, reservation_id, guest)


class PinnedHostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """paramiko asks this for every guest key (guests have no known_hosts): the first key
    of the reservation is pinned, any other one refused before we authenticate."""

    def __init__(self, store: GuestHostKeys, reservation_id: int, guest: str) -> None:
        self.store = store
        self.reservation_id = reservation_id
        self.guest = guest

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        offered = key_text(key)
        pinned = self.store.pin(self.reservation_id, offered)
        if pinned is None:
            log.warning(
                "guest_host_key_not_pinned",
                reason="no status record for the reservation",
                reservation_id=self.reservation_id,
                guest=self.guest,
            )
            return
        if pinned != offered:
            raise GuestHostKeyChanged(
                f"guest {self.guest} at {hostname} answered with SSH host key "
                f"{_fingerprint(offered)}, but the reservation pinned {_fingerprint(pinned)} "
                "at its first contact",
                reservation_id=self.reservation_id,
            )


def _fenced(reservation_id: int) -> FencedRecord | None:
    """The running operation's fenced record, when it is this reservation's."""
    writes = fenced_record()
    return writes if writes and writes.fence.reservation_id == reservation_id else None


def _fingerprint(text: str) -> str:
    """'<type> SHA256:<base64>', as ssh-keygen -l shows it."""
    kind, _, blob = text.partition(" ")
    try:
        digest = hashlib.sha256(base64.b64decode(blob)).digest()
    except ValueError:
        return kind
    return f"{kind} SHA256:{base64.b64encode(digest).decode().rstrip('=')}"
