"""HTTP routes for VCL's provisioning module (contrib/vcl): a long-poll on a status
record, and image queries on a host.

Included by `vclvirt.api` under its bearer-token dependency. The long-poll lets
vcld wait for a load without asking every 100 ms: one request returns as soon as
the record differs from the version the caller has seen, when it is final, or
after `timeout` seconds with `changed: false`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from starlette.concurrency import run_in_threadpool

from vclvirt import composition, dispatch
from vclvirt.errors import ImageNotFound, InvalidInput
from vclvirt.models import IMAGE_NAME_PATTERN, MAX_ID
from vclvirt.provisioning.images import ImageQueries
from vclvirt.state.machine import State

router = APIRouter(prefix="/v1", tags=["vcl"])

LONGEST_WAIT_S = 60.0
# How often a waiting request re-reads the record: one small Redis read per waiter, which
# never writes (dispatch.status).
RECHECK_INTERVAL_S = 0.2


def record_etag(record: dict[str, Any]) -> str:
    """A short fingerprint of the whole record: equal fingerprints, equal records."""
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def _record(reservation_id: int) -> dict[str, Any]:
    return dispatch.known_status(reservation_id).to_dict()


@router.get("/reservations/{reservation_id}/wait")
async def wait_for_change(
    reservation_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    response: Response,
    after: Annotated[
        str | None,
        Query(max_length=64, description="etag of the record the caller has already seen"),
    ] = None,
    timeout: Annotated[
        float, Query(ge=0, le=LONGEST_WAIT_S, description="seconds to wait for a change")
    ] = 30.0,
) -> dict[str, Any]:
    """The status record once it differs from `after` or is final, else after `timeout`:
    `{"changed", "finished", "etag", "record"}`."""
    deadline = time.monotonic() + timeout
    while True:
        record = await run_in_threadpool(_record, reservation_id)
        etag = record_etag(record)
        # Only an ended state ends it; any other (or one added later): still in progress.
        finished = State.is_ended(record.get("state"))
        changed = etag != after
        if changed or finished or time.monotonic() >= deadline:
            response.headers["ETag"] = f'"{etag}"'
            return {"changed": changed, "finished": finished, "etag": etag, "record": record}
        await asyncio.sleep(min(RECHECK_INTERVAL_S, max(0.0, deadline - time.monotonic())))


def _checked_image(image: str) -> str:
    if not re.fullmatch(IMAGE_NAME_PATTERN, image):
        raise InvalidInput(
            f"image: {image!r} is not an image name (pattern {IMAGE_NAME_PATTERN})",
            field="image",
        )
    return image


def _images(host: str) -> ImageQueries:
    return (
        composition.current().host(host).images
    )  # unknown host: UnknownHost, before any connection


@router.get("/hosts/{host}/images/{image}")
def image_info(host: str, image: str) -> dict[str, Any]:
    """Whether the image is a master on the host or in its repository, and its allocated
    size (bytes, and MB as VCL's get_image_size counts them); sizes are null when absent."""
    name = _checked_image(image)
    images = _images(host)
    answer: dict[str, Any] = {"host": host, "image": name, "exists": False}
    answer.update(size_bytes=None, size_mb=None)
    if images.exists(name):
        try:
            size = images.size_bytes(name)
            answer.update(exists=True, size_bytes=size, size_mb=size // 2**20)
        except ImageNotFound:  # removed between the two questions
            answer.update(exists=False, size_bytes=None, size_mb=None)
    return answer


@router.get("/hosts/{host}/images")
def image_list(host: str) -> dict[str, Any]:
    """Masters in the host's datastore and image directories in its repository."""
    found = _images(host).listing()
    return {"host": host, **found}
