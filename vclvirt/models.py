"""Validated, immutable descriptions of a reservation, its computer and image.

Validation is where hostile input stops: every name that later reaches a command
line or a path is checked here against a strict pattern.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from vclvirt.errors import InvalidInput

# DNS host name; no '_' or ':' because those separate the computer from the rest
# of a domain name (a computer "vm1_x" would otherwise own "vm1"'s domains).
HOSTNAME_PATTERN = (
    r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
MAC_PATTERN = r"^[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}$"
# Image names become file names: no path separators, no glob characters, no leading '-' or '.'.
IMAGE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"
# Inventory host names become queue names and directory names.
HOST_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
WORD_PATTERN = r"^[A-Za-z0-9_]{1,64}$"
SNAPSHOT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

Hostname = Annotated[str, StringConstraints(pattern=HOSTNAME_PATTERN, max_length=253)]
MacAddress = Annotated[str, StringConstraints(pattern=MAC_PATTERN)]
ImageName = Annotated[str, StringConstraints(pattern=IMAGE_NAME_PATTERN)]
HostName = Annotated[str, StringConstraints(pattern=HOST_NAME_PATTERN)]
Word = Annotated[str, StringConstraints(pattern=WORD_PATTERN)]
PositiveId = Annotated[int, Field(gt=0)]

ReservationState = Literal["new", "reload", "reinstall", "image", "checkpoint"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Computer(_Strict):
    """The virtual machine slot a reservation is loaded onto."""

    id: PositiveId
    hostname: Hostname
    eth0_mac: MacAddress
    eth1_mac: MacAddress
    private_ip: str | None = None

    @field_validator("private_ip")
    @classmethod
    def _valid_ip(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if "%" in value:  # an IPv6 scope would carry arbitrary text
            raise ValueError("must be an IPv4 or IPv6 address without a scope")
        return str(ipaddress.ip_address(value))

    @field_validator("eth0_mac", "eth1_mac")
    @classmethod
    def _lower_mac(cls, value: str) -> str:
        return value.lower()

    @property
    def short_name(self) -> str:
        """Text before the first dot: the 'C' of the reference's names."""
        return self.hostname.split(".", 1)[0]


class Image(_Strict):
    """One revision of an image, as the scheduler knows it."""

    id: PositiveId
    name: ImageName
    revision: Annotated[int, Field(ge=0)]
    revision_id: PositiveId
    pretty_name: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    os_type: Word
    os_name: Word
    min_ram_mb: Annotated[int, Field(ge=0, le=4 * 1024 * 1024)]
    vcpus: Annotated[int, Field(ge=1, le=512)]
    project: Literal["vcl", "hpc", "vclhpc"] = "vcl"

    @property
    def is_windows(self) -> bool:
        return "windows" in self.os_type.lower()


class Reservation(_Strict):
    """A request to put an image on a computer of one hypervisor host."""

    reservation_id: PositiveId
    request_id: PositiveId
    state: ReservationState
    host: HostName
    computer: Computer
    image: Image


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "(document)"
        parts.append(f"{field}: {item['msg']}")
    return "; ".join(parts)


def parse_reservation(data: str | bytes | dict[str, Any]) -> Reservation:
    """Validate a reservation from JSON text or a decoded dict; errors name the field."""
    try:
        if isinstance(data, str | bytes):
            return Reservation.model_validate_json(data)
        # Round-trip through JSON so dicts obey exactly the JSON rules (strict ints, etc.).
        return Reservation.model_validate_json(json.dumps(data))
    except ValidationError as error:
        first = error.errors()[0]["loc"] if error.errors() else ()
        raise InvalidInput(
            f"invalid reservation: {_describe(error)}",
            field=".".join(str(p) for p in first) or None,
        ) from None
    except (TypeError, ValueError) as error:
        raise InvalidInput(f"invalid reservation: {error}") from None
