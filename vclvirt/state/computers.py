"""Per computer: which reservation owns it (its latest load or capture), and what it holds.

Ownership is written when a load or capture begins (`RecordStore.begin`), so the newer
of two reservations for one computer wins and the older one stops at its next check.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from vclvirt.state import keys

NO_IMAGE = {"image": "noimage"}


class ComputerOwners:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def owner_of(self, host: str, computer: str) -> int | None:
        value = self.redis.get(keys.computer_owner(host, computer))
        return int(value) if value is not None else None


class ComputerImages:
    """What each computer holds now: set after post_load, 'noimage' after unload (by the
    running operation, through its fenced record: state/fence.py)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def get(self, host: str, computer: str) -> dict[str, Any] | None:
        raw = self.redis.get(keys.computer_image(host, computer))
        return dict(json.loads(raw)) if raw else None
