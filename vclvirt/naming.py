"""Names and paths derived from a reservation, following the reference module.

Pure functions: no I/O. The names are VCL's own, so vcld and vclvirt find the same domains.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from posixpath import join

from vclvirt.models import Image, Reservation

MAX_DOMAIN_NAME = 48
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]")
_NOT_WORD_OR_UNDERSCORE = re.compile(r"[\W_]", re.ASCII)
_VMWARE_OR_IMAGE = re.compile(r"vmware|image")
_UUID_NAMESPACE = uuid.UUID("6f1c8e52-3a07-4d0e-9b6e-8a4f5f1f2c11")
# A computer's short name (models.HOSTNAME_PATTERN's first label: no '_', ':' or '.').
_COMPUTER = r"(?P<computer>[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)"
_VCL_DOMAIN = re.compile(rf"{_COMPUTER}_(?:[A-Za-z0-9]*_)?\d+-v\d+")
_FILE_BASE = re.compile(rf"{_COMPUTER}_(?P<image_id>\d+)-v(?P<revision>\d+)")


def domain_name(
    computer: str,
    computer_id: int,
    pretty_name: str,
    image_id: int,
    revision: int,
    max_length: int = MAX_DOMAIN_NAME,
) -> str:
    """`C_<pretty, letters and digits>_IID-vR`, at most 48 characters (old libvirt's limit)."""
    if len(computer) > max_length:
        return str(computer_id)
    prefix = f"{computer}_"
    suffix = f"{image_id}-v{revision}"
    if len(prefix) + len(suffix) > max_length:
        return computer
    max_middle = max_length - len(prefix) - len(suffix) - 1
    if max_middle < 5:
        return prefix + suffix
    middle = _NOT_ALNUM.sub("", pretty_name)[:max_middle]
    return f"{prefix}{middle}_{suffix}"


def file_base_name(computer: str, image_id: int, revision: int) -> str:
    """`C_IID-vR`: base name of the overlay disk and the domain XML file."""
    return f"{computer}_{image_id}-v{revision}"


def short_forms(computer: str, computer_id: int | None) -> set[str]:
    """The names domain_name falls back to for this computer (none without its id): its id
    when C itself is longer than 48 characters, else C alone (`C_<image id>-v<rev>` is too
    long for a long enough image id)."""
    if computer_id is None:
        return set()
    return {str(computer_id)} if len(computer) > MAX_DOMAIN_NAME else {computer}


def belongs_to_computer(domain: str, computer: str, computer_id: int | None = None) -> bool:
    """Domains named `C_…` (current) or `C:…` (before 2016) belong to computer C; given C's
    id, so do the short forms its names fall back to (short_forms)."""
    return domain.startswith((f"{computer}_", f"{computer}:")) or domain in short_forms(
        computer, computer_id
    )


def computer_of_domain(domain: str) -> str | None:
    """C, for a domain named the way domain_name names one in full (`C_<pretty>_IID-vR`
    or `C_IID-vR`); None for any other name. The short forms and the older `C:…` are
    not told apart here: by name alone they could be anyone's domain."""
    found = _VCL_DOMAIN.fullmatch(domain)
    return found["computer"] if found else None


def parse_file_base(base: str) -> tuple[str, int, int] | None:
    """(computer, image id, revision) of a file_base_name `C_IID-vR`; None otherwise."""
    found = _FILE_BASE.fullmatch(base)
    if found is None:
        return None
    return found["computer"], int(found["image_id"]), int(found["revision"])


def new_image_name(os_name: str, pretty_name: str, image_id: int, revision: int) -> str:
    """Name of a captured image: `<os without vmware/image>-<pretty without \\W and _>-IID-vR`."""
    os_part = os_name
    while True:
        stripped = _VMWARE_OR_IMAGE.sub("", os_part)
        if stripped == os_part:
            break
        os_part = stripped
    pretty = _NOT_WORD_OR_UNDERSCORE.sub("", pretty_name)
    # The reference would start the name with '-' when nothing of the OS name is left.
    return "-".join(part for part in (os_part, pretty, f"{image_id}-v{revision}") if part)


def captured_image_name(image: Image) -> str:
    """Name of the image a capture writes. VCL names the revision being captured itself, and
    its image.pm writes its own name back to image.name after the capture, so that name is
    kept as it is when the reservation carries it: it ends in `-v<revision>` (the web front
    end's `<os>-<Pretty><id>-v<rev>`, without a dash before the id, or a later revision of
    any name). A reservation naming an earlier revision gets the reference's name instead."""
    if image.name.endswith(f"-v{image.revision}"):
        return image.name
    return new_image_name(image.os_name, image.pretty_name, image.id, image.revision)


def domain_uuid(host: str, domain: str) -> str:
    """Stable UUID, so that defining the same domain again updates it instead of failing."""
    return str(uuid.uuid5(_UUID_NAMESPACE, f"{host}/{domain}"))


@dataclass(frozen=True)
class LoadNames:
    """Every name and host path one load uses."""

    computer: str
    domain: str
    base: str
    overlay_path: str
    xml_path: str
    master_reference_xml: str

    @classmethod
    def for_reservation(
        cls, reservation: Reservation, *, datastore_path: str, vm_path: str, xml_dir: str
    ) -> LoadNames:
        computer = reservation.computer.short_name
        image = reservation.image
        base = file_base_name(computer, image.id, image.revision)
        return cls(
            computer=computer,
            domain=domain_name(
                computer, reservation.computer.id, image.pretty_name, image.id, image.revision
            ),
            base=base,
            overlay_path=join(vm_path, f"{base}.qcow2"),
            xml_path=join(xml_dir, f"{base}.xml"),
            master_reference_xml=join(datastore_path, f"{image.name}.xml"),
        )
