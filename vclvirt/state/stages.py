"""The stage records of pre-staging (staging.py): one hash per image and host, written
only here, and only under the stage's id (a Lua check and write), so a stager that paused
and comes back after its stage was replaced writes nothing."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from vclvirt.state import keys

STAGE_TTL = 7 * 86400  # a stage's record is kept a week after its last write
STALLED_AFTER = 60.0  # a copying stage without a beat for this long has lost its worker
BEAT_EVERY = 1.0  # progress is written at most this often

_BEGIN = """
local st = redis.call('HMGET', KEYS[1], 'stage', 'state', 'queued_at', 'beat_at')
if st[1] and st[2] ~= 'done' and st[2] ~= 'failed' then
  local last = math.max(tonumber(st[3] or 0), tonumber(st[4] or 0))
  if tonumber(ARGV[2]) - last <= tonumber(ARGV[3]) then return {st[1], 0} end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'stage', ARGV[1], 'state', 'queued', 'queued_at', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {ARGV[1], 1}
"""
_WRITE = """
if redis.call('HGET', KEYS[1], 'stage') ~= ARGV[1] then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


@dataclass(frozen=True)
class Stage:
    """One stage's record, as read."""

    image: str
    host: str
    stage: str
    state: str  # queued | copying | done | failed
    done_bytes: int = 0
    total_bytes: int = 0
    copied: bool | None = None
    master: str | None = None
    error: dict[str, Any] | None = None
    queued_at: float = 0.0
    beat_at: float = 0.0

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    @property
    def stalled(self) -> bool:
        """Copying or queued without a sign of life for STALLED_AFTER (its worker is gone
        or no worker serves the host): a new stage request takes its place."""
        return not self.finished and time.time() - max(self.beat_at, self.queued_at) > STALLED_AFTER

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "host": self.host,
            "stage": self.stage,
            "state": "stalled" if self.stalled else self.state,
            "done_bytes": self.done_bytes,
            "total_bytes": self.total_bytes,
            "copied": self.copied,
            "master": self.master,
            "error": self.error,
        }


class StageStore:
    """The stage records in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._begin = client.register_script(_BEGIN)
        self._write = client.register_script(_WRITE)

    def get(self, image: str, host: str) -> Stage | None:
        raw = {
            k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
            for k, v in self.redis.hgetall(keys.stage(image, host)).items()
        }
        if not raw:
            return None
        return Stage(
            image=image,
            host=host,
            stage=raw["stage"],
            state=raw.get("state", "queued"),
            done_bytes=int(raw.get("done_bytes", 0)),
            total_bytes=int(raw.get("total_bytes", 0)),
            copied=json.loads(raw["copied"]) if "copied" in raw else None,
            master=raw.get("master") or None,
            error=json.loads(raw["error"]) if raw.get("error") else None,
            queued_at=float(raw.get("queued_at", 0)),
            beat_at=float(raw.get("beat_at", 0)),
        )

    def begin(self, image: str, host: str) -> tuple[str, bool]:
        """(stage id, new): a stage under way (not stalled) is joined, not begun again
        (one Lua call: two requests at once begin one stage)."""
        stage, new = self._begin(
            keys=[keys.stage(image, host)],
            args=[uuid.uuid4().hex, time.time(), STALLED_AFTER, STAGE_TTL],
        )
        return (stage.decode() if isinstance(stage, bytes) else str(stage)), bool(int(new))

    def write(self, image: str, host: str, stage: str, **fields: Any) -> bool:
        """Write fields if the record still belongs to `stage`; False (nothing written)
        when a newer stage took its place."""
        args: list[Any] = [stage, STAGE_TTL]
        for name, value in fields.items():
            args += [name, json.dumps(value) if isinstance(value, bool | dict) else value]
        return bool(self._write(keys=[keys.stage(image, host)], args=args))
