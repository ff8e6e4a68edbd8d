"""OS hooks run inside the guest: post_load and the status check node_status uses."""

from __future__ import annotations

import posixpath
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vclvirt.guest.currentimage import FILE_NAME, parse_tags, set_tags
from vclvirt.models import Reservation
from vclvirt.node.transport import Transport, write_file

READY, POST_LOAD, RELOAD = "READY", "POST_LOAD", "RELOAD"

# The regular files `~/*-v*.xml` (earlier captures' definitions), removed by a constant
# script any POSIX shell runs: busybox's find (the test guest's) has no -delete.
_REMOVE_OLD_DEFINITIONS = (
    'for f in ./*-v*.xml; do if [ -f "$f" ] && [ ! -L "$f" ]; then rm -f -- "$f" || exit 1; fi; '
    "done"
)


def read_current_image(guest: Transport) -> str:
    result = guest.run(["cat", FILE_NAME], check=False, timeout=30)
    return result.text if result.ok else ""


def guest_status(guest: Transport, reservation: Reservation) -> tuple[str, str]:
    """READY / POST_LOAD / RELOAD from the guest's tags (VCL's rules), with the reason."""
    tags = parse_tags(read_current_image(guest))
    expected = str(reservation.image.revision_id)
    if tags.get("imagerevision_id") != expected:
        found = tags.get("imagerevision_id", "none")
        return RELOAD, f"guest has image revision {found}, reservation wants {expected}"
    if "vcld_tainted" in tags:
        return RELOAD, f"guest is tainted: {tags['vcld_tainted']}"
    if "vcld_post_load" not in tags:
        return POST_LOAD, "post_load has not run in this guest"
    return READY, "guest runs the reservation's image and post_load has run"


def post_load(
    guest: Transport, reservation: Reservation, *, scripts_dir: Path | None = None
) -> dict[str, Any]:
    """Name the guest, record its image, run the site's scripts, then mark post_load done."""
    done: dict[str, Any] = {}
    hostname = reservation.computer.short_name
    if reservation.image.is_windows:
        done["hostname"] = "not set: Windows guests are renamed by their own setup"
    else:
        guest.run(["hostname", hostname], timeout=30)
        write_file(guest, "/etc/hostname", f"{hostname}\n".encode())
        done["hostname"] = hostname
    text = set_tags(
        read_current_image(guest),
        imagerevision_id=str(reservation.image.revision_id),
        vcld_post_load=None,
    )
    write_file(guest, FILE_NAME, text.encode())
    done["scripts"] = run_scripts(guest, scripts_dir) if scripts_dir else []
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    write_file(guest, FILE_NAME, set_tags(text, vcld_post_load=f"success ({stamp})").encode())
    done["vcld_post_load"] = stamp
    return done


def run_scripts(guest: Transport, scripts_dir: Path) -> list[str]:
    """Copy each executable file of the directory to the guest and run it, in name order."""
    ran = []
    for script in sorted(p for p in scripts_dir.iterdir() if p.is_file()):
        remote = posixpath.join("/tmp", f"vclvirt-post-load-{script.name}")
        write_file(guest, remote, script.read_bytes())
        guest.run(["chmod", "700", remote])
        guest.run([remote], timeout=1800)
        guest.run(["rm", "-f", remote], check=False)
        ran.append(script.name)
    return ran


def pre_capture(
    guest: Transport, reservation: Reservation, new_image: str, domain_xml: str
) -> dict[str, Any]:
    """Leave in the guest what the captured image should say about itself (VCL reads it)."""
    image, computer = reservation.image, reservation.computer
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    lines = [
        new_image,
        f"id={image.id}",
        f"prettyname={image.pretty_name}",
        f"imagerevision_id={image.revision_id}",
        f"imagerevision_datecreated={now}",
        f"computer_id={computer.id}",
        f"computer_hostname={computer.hostname}",
    ]
    write_file(guest, FILE_NAME, ("\n".join(lines) + "\n").encode())
    # The image carries its own definition; older revisions' copies go.
    guest.run(["sh", "-c", _REMOVE_OLD_DEFINITIONS], timeout=60)
    write_file(guest, f"{new_image}.xml", domain_xml.encode())
    guest.run(["sync"], timeout=60)
    return {"currentimage": new_image}
