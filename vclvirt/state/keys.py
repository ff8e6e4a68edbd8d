"""Every Redis key vclvirt writes, in one place (the broker's own keys are kombu's)."""

from __future__ import annotations

PREFIX = "vclvirt"
INDEX = f"{PREFIX}:reservations"  # zset: reservation id -> queued_at
INFLIGHT_HOSTS = f"{PREFIX}:inflight-hosts"  # set of hosts with work in flight


def record(reservation_id: int) -> str:
    """The reservation's status record (a hash)."""
    return f"{PREFIX}:reservation:{reservation_id}"


def lease(reservation_id: int) -> str:
    """Who runs the reservation's operation now (a string with a TTL)."""
    return f"{PREFIX}:lease:{reservation_id}"


def guest_host_key(reservation_id: int) -> str:
    """The SSH host key pinned for the reservation's guest (a string; expires with the
    record)."""
    return f"{PREFIX}:guest-host-key:{reservation_id}"


def inflight(host: str) -> str:
    """Reservations with an operation in flight on the host (a set)."""
    return f"{PREFIX}:inflight:{host}"


def due(host: str) -> str:
    """Reservations waiting to be dispatched again at a time (a zset: id -> epoch)."""
    return f"{PREFIX}:due:{host}"


def computer_owner(host: str, computer: str) -> str:
    """The reservation that owns the computer (its latest load or capture)."""
    return f"{PREFIX}:computer:{host}:{computer}"


def computer_image(host: str, computer: str) -> str:
    """What the computer holds now (JSON)."""
    return f"{PREFIX}:computer-image:{host}:{computer}"


def host_workers(host: str) -> str:
    """Workers serving the host (a zset: node name -> last heartbeat epoch)."""
    return f"{PREFIX}:workers:{host}"


def lock(resource: str) -> str:
    return f"{PREFIX}:lock:{resource}"


def fence(resource: str) -> str:
    """The last fencing token a lock on the resource issued (never reset)."""
    return f"{PREFIX}:fence:{resource}"


def host_slots(host: str) -> str:
    """Operations running on the host now, across all its workers (a zset: run -> expiry)."""
    return f"{PREFIX}:slots:{host}"


def stage(image: str, host: str) -> str:
    """The stage of a master on a host (staging.py; a hash)."""
    return f"{PREFIX}:stage:{image}:{host}"
