"""Validated, immutable descriptions of a reservation, its computer and image.

Validation is where hostile input stops: every name that later reaches a command
line or a path is checked here against a strict pattern, every text field is free
of control and format characters, and JSON documents are read by one strict
reader (`load_json_document`) whatever channel they came through.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from vclvirt.errors import InvalidInput
from vclvirt.textcheck import check_text, field_label

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

# Ids are VCL's database keys (unsigned, never 0) and must fit a signed 64-bit integer
# wherever they are stored; revisions start at 0 (VCL's seed data has `-v0` images).
MAX_ID = 2**63 - 1
# Longest reservation document read from a file, stdin or an HTTP body; a real one is < 2 KB.
MAX_DOCUMENT_BYTES = 64 * 1024

TextCheck = BeforeValidator(check_text)
Hostname = Annotated[str, StringConstraints(pattern=HOSTNAME_PATTERN, max_length=253), TextCheck]
MacAddress = Annotated[str, StringConstraints(pattern=MAC_PATTERN), TextCheck]
ImageName = Annotated[str, StringConstraints(pattern=IMAGE_NAME_PATTERN), TextCheck]
HostName = Annotated[str, StringConstraints(pattern=HOST_NAME_PATTERN), TextCheck]
Word = Annotated[str, StringConstraints(pattern=WORD_PATTERN), TextCheck]
SnapshotName = Annotated[str, StringConstraints(pattern=SNAPSHOT_NAME_PATTERN), TextCheck]
FreeText = Annotated[str, StringConstraints(min_length=1, max_length=255), TextCheck]
PositiveId = Annotated[int, Field(ge=1, le=MAX_ID)]
Revision = Annotated[int, Field(ge=0, le=MAX_ID)]

_IMAGE_NAME: TypeAdapter[str] = TypeAdapter(ImageName, config=ConfigDict(strict=True))

ReservationState = Literal["new", "reload", "reinstall", "image", "checkpoint"]


class StrictModel(BaseModel):
    """Unknown fields refused, no type coercion, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _check_mac(value: str) -> str:
    """A unicast address a NIC can have: not multicast (incl. broadcast), not all zero."""
    octets = bytes.fromhex(value.replace(":", ""))
    if octets[0] & 1:
        kind = "the broadcast address" if octets == b"\xff" * 6 else "a multicast address"
        raise ValueError(f"must be a unicast MAC address, not {kind}")
    if not any(octets):
        raise ValueError("must not be the all-zero MAC address")
    return value.lower()


_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def _check_private_ip(value: str) -> str:
    """An address worth SSHing to with the guest key: no loopback, link-local, multicast..."""
    if "%" in value:  # an IPv6 scope would carry arbitrary text
        raise ValueError("must be an IPv4 or IPv6 address without a scope")
    address = ipaddress.ip_address(value)
    checked = getattr(address, "ipv4_mapped", None) or address  # ::ffff:127.0.0.1 is loopback
    problems = {
        "a loopback": checked.is_loopback,
        "an unspecified": checked.is_unspecified or checked in _THIS_NETWORK,
        "a multicast": checked.is_multicast,
        "a link-local": checked.is_link_local,
        "the broadcast": checked == _BROADCAST,
        "a reserved": isinstance(checked, ipaddress.IPv4Address) and checked.is_reserved,
    }
    bad = [kind for kind, found in problems.items() if found]
    if bad:
        raise ValueError(f"{value} is {bad[0]} address, not one a guest can have")
    return str(address)


class Computer(StrictModel):
    """The virtual machine slot a reservation is loaded onto."""

    id: PositiveId
    hostname: Hostname
    eth0_mac: MacAddress
    eth1_mac: MacAddress
    private_ip: Annotated[str, TextCheck] | None = None

    @field_validator("hostname")
    @classmethod
    def _lower_hostname(cls, value: str) -> str:
        # DNS names are case-insensitive: "VM1" and "vm1" are one computer, one domain.
        return value.lower()

    @field_validator("private_ip")
    @classmethod
    def _valid_ip(cls, value: str | None) -> str | None:
        return None if value is None else _check_private_ip(value)

    @field_validator("eth0_mac", "eth1_mac")
    @classmethod
    def _unicast_mac(cls, value: str) -> str:
        return _check_mac(value)

    @field_validator("eth1_mac")
    @classmethod
    def _distinct_macs(cls, value: str, info: ValidationInfo) -> str:
        if value == info.data.get("eth0_mac"):
            raise ValueError(f"must differ from eth0_mac (both are {value})")
        return value

    @property
    def short_name(self) -> str:
        """Text before the first dot: the 'C' of the reference's names."""
        return self.hostname.split(".", 1)[0]


class Image(StrictModel):
    """One revision of an image, as the scheduler knows it."""

    id: PositiveId
    name: ImageName
    revision: Revision
    revision_id: PositiveId
    # Free text, shown to people and written into the guest's currentimage.txt.
    pretty_name: FreeText
    os_type: Word
    os_name: Word
    min_ram_mb: Annotated[int, Field(ge=0, le=4 * 1024 * 1024)]
    vcpus: Annotated[int, Field(ge=1, le=512)]
    project: Annotated[Literal["vcl", "hpc", "vclhpc"], TextCheck] = "vcl"

    @property
    def is_windows(self) -> bool:
        return "windows" in self.os_type.lower()


class Reservation(StrictModel):
    """A request to put an image on a computer of one hypervisor host."""

    reservation_id: PositiveId
    request_id: PositiveId
    state: Annotated[ReservationState, TextCheck]
    host: HostName
    computer: Computer
    image: Image


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(field_label(str(p)) for p in loc)


_PLAIN_MESSAGES = {"extra_forbidden": "unknown field, not accepted"}


def describe_errors(error: ValidationError, prefix: str = "") -> tuple[str | None, str]:
    """(the first field's dotted path, one line naming every field and its problem);
    `prefix` is put before every path (e.g. "params")."""
    paths, parts = [], []
    for item in error.errors():
        path = ".".join(p for p in (prefix, _location(item["loc"])) if p)
        message = _PLAIN_MESSAGES.get(item["type"]) or str(item["msg"]).removeprefix(
            "Value error, "
        )
        paths.append(path)
        parts.append(f"{path or '(document)'}: {message}")
    return (paths[0] or None) if paths else None, "; ".join(parts)


class _Duplicates(dict[str, Any]):
    """An object that had a key more than once; found and named after parsing."""

    duplicate: str


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            marked = _Duplicates(pairs)
            marked.duplicate = key
            return marked
        result[key] = value
    return result


def _find_duplicate(document: Any) -> tuple[str, ...] | None:
    """Path of the first object that repeated a key (iterative: documents may nest deeply)."""
    pending: list[tuple[Any, tuple[str, ...]]] = [(document, ())]
    while pending:
        value, path = pending.pop()
        if isinstance(value, _Duplicates):
            return (*path, value.duplicate)
        if isinstance(value, dict):
            pending.extend((child, (*path, key)) for key, child in reversed(value.items()))
        elif isinstance(value, list):
            items = list(enumerate(value))
            pending.extend((child, (*path, str(i))) for i, child in reversed(items))
    return None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _decode_text(data: bytes) -> str:
    """UTF-8 without a byte order mark: what JSON (RFC 8259) requires between systems."""
    if data.startswith(b"\xef\xbb\xbf"):
        raise InvalidInput(
            "the document starts with a UTF-8 byte order mark",
            hint="Save the file as UTF-8 without BOM",
        )
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise InvalidInput(
            "the document starts with a UTF-16 or UTF-32 byte order mark, not UTF-8 text",
            hint="Convert it to UTF-8",
        )
    if b"\x00" in data:  # never in JSON text; in every UTF-16/32 encoding of it
        raise InvalidInput(
            f"the document holds NUL bytes (the first at byte {data.index(0)}): it is binary, "
            "UTF-16 or UTF-32, not UTF-8 JSON text",
            hint="Send JSON text encoded as UTF-8",
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidInput(
            f"the document is not valid UTF-8 (byte {error.start}: {error.reason})",
            hint="Send JSON text encoded as UTF-8",
        ) from None


def load_json_document(data: str | bytes) -> Any:
    """Strict JSON: UTF-8 without BOM, no duplicate keys, no NaN/Infinity, bounded size.

    The API, the CLI and the Python API read documents with this one function, so a
    document is accepted or refused the same way on every channel.
    """
    size = len(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
    if size > MAX_DOCUMENT_BYTES:
        raise InvalidInput(
            f"the document has {size} bytes; at most {MAX_DOCUMENT_BYTES} are accepted"
        )
    text = _decode_text(data) if isinstance(data, bytes) else data
    if text.startswith("\ufeff"):
        raise InvalidInput("the document starts with a byte order mark (U+FEFF)")
    try:
        value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise InvalidInput(
            f"invalid JSON at line {error.lineno}, column {error.colno} "
            f"(character {error.pos}): {error.msg}",
            hint="Fix the JSON syntax at that position",
        ) from None
    except ValueError as error:  # NaN/Infinity, or an integer of thousands of digits
        raise InvalidInput(f"invalid JSON: {error}") from None
    except RecursionError:
        raise InvalidInput("invalid JSON: nested too deeply") from None
    duplicate = _find_duplicate(value)
    if duplicate:
        path = ".".join(field_label(p) for p in duplicate)
        raise InvalidInput(
            f"duplicate key {path}: a JSON object must name each key once",
            field=path,
            hint="Remove the repeated key; other parsers would read a different value",
        )
    return value


def check_image_name(name: str) -> str:
    """An image name given on its own (CLI argument): the rule of Image.name."""
    try:
        return _IMAGE_NAME.validate_python(name)
    except ValidationError as error:
        _, message = describe_errors(error, prefix="IMAGE")
        raise InvalidInput(
            f"invalid image name: {message}",
            field="IMAGE",
            hint="Image names are letters, digits and ._+- (no leading . or -), "
            "at most 128 characters",
        ) from None


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def parse_reservation(data: str | bytes | dict[str, Any]) -> Reservation:
    """Validate a reservation from JSON text or a decoded dict; errors name the field."""
    try:
        # Dicts go through JSON and back, so they obey exactly the JSON rules (no sets...).
        text = data if isinstance(data, str | bytes) else json.dumps(data, allow_nan=False)
        document = load_json_document(text)
    except (TypeError, ValueError) as error:
        raise InvalidInput(f"invalid reservation: {error}") from None
    except InvalidInput as error:
        error.message = f"invalid reservation: {error.message}"
        raise
    if not isinstance(document, dict):
        raise InvalidInput(
            f"invalid reservation: the document must be a JSON object, not {json_type(document)}"
        )
    try:
        return Reservation.model_validate(document)
    except ValidationError as error:
        field, message = describe_errors(error)
        raise InvalidInput(f"invalid reservation: {message}", field=field) from None
