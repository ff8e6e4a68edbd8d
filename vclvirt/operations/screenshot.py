"""screenshot: a picture of the VM's console, for an operator who wants to see why a guest
does not answer (a kernel panic, a boot prompt) without opening VNC on the host.

The picture is the step's result, base64-encoded with its MIME type (QEMU gives PNG),
so it is read like any other result: `vclvirt op screenshot RES --output shot.png`, or
GET /v1/reservations/{id}. It is capped, so one result cannot fill the broker.
"""

from __future__ import annotations

import base64
from contextlib import suppress
from typing import Any

import libvirt

from vclvirt.errors import DomainUnusable, PermanentError
from vclvirt.hypervisor.connection import libvirt_errors
from vclvirt.operation import StepContext, single

MAX_BYTES = 4 * 2**20  # a 1920x1080 console as PNG is well under 1 MiB


class ScreenshotTooLarge(PermanentError):
    code = "SCREENSHOT_TOO_LARGE"
    default_hint = "Lower the guest's screen resolution, or use VNC on the host"


def screenshot(ctx: StepContext) -> dict[str, Any]:
    access = ctx.host().access
    host = access.host.name
    domain = access.domain(ctx.reservation)
    with libvirt_errors(host, f"reading the state of {domain.name()}"):
        active = domain.isActive()
    if not active:  # paused or crashed (kept for a look, with its memory) still has a picture
        raise DomainUnusable(
            f"domain {domain.name()} is not running: its console has no picture",
            host=host,
            hint="Power it on first (vclvirt power on)",
        )
    chunks: list[bytes] = []

    def receive(_stream: Any, data: bytes, _opaque: Any) -> int:
        chunks.append(data)
        if sum(map(len, chunks)) > MAX_BYTES:
            raise ScreenshotTooLarge(
                f"the console picture of {domain.name()} passed {MAX_BYTES} bytes", host=host
            )
        return len(data)

    with libvirt_errors(host, f"taking a screenshot of {domain.name()}"):
        stream = access.conn.newStream(0)
        try:
            mime = domain.screenshot(stream, 0, 0)
            stream.recvAll(receive, None)
            stream.finish()
        except BaseException:
            with suppress(libvirt.libvirtError):  # recvAll may have aborted it already
                stream.abort()
            raise
    picture = b"".join(chunks)
    return {
        "domain": domain.name(),
        "file": {
            "mime": str(mime),
            "size_bytes": len(picture),
            "base64": base64.b64encode(picture).decode(),
        },
    }


OPERATIONS = (
    single(
        "screenshot",
        "A picture of the VM's console (result: file.base64, file.mime)",
        screenshot,
        changes_computer=False,
    ),
)
