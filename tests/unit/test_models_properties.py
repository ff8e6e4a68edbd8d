"""Property-based tests (hypothesis) of the reservation model: what is accepted is safe,
what is refused is refused with InvalidInput naming the field, never another exception."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import unicodedata

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.conftest import reservation_document
from vclvirt.errors import InvalidInput
from vclvirt.models import (
    HOST_NAME_PATTERN,
    IMAGE_NAME_PATTERN,
    MAX_ID,
    WORD_PATTERN,
    Reservation,
    parse_reservation,
)

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

labels = st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?\Z")
hostnames = st.lists(labels, min_size=1, max_size=4).map(".".join)
unicast_macs = st.binary(min_size=6, max_size=6).filter(lambda b: not b[0] & 1 and any(b))
ids = st.integers(1, MAX_ID)


def _mac(octets: bytes) -> str:
    return ":".join(f"{b:02x}" for b in octets)


def _good_ip(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    checked = getattr(address, "ipv4_mapped", None) or address
    return not (
        checked.is_loopback
        or checked.is_unspecified
        or checked.is_multicast
        or checked.is_link_local
        or (checked.version == 4 and (checked.is_reserved or int(checked) >> 24 == 0))
    )


pretty_names = st.text(
    st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Zl", "Zp")),
    min_size=1,
    max_size=255,
).filter(lambda s: s.strip())


@st.composite
def valid_documents(draw: st.DrawFn) -> dict:
    eth0, eth1 = draw(st.lists(unicast_macs, min_size=2, max_size=2, unique=True))
    ip = draw(st.none() | st.ip_addresses().filter(_good_ip).map(str))
    return reservation_document(
        {
            "id": draw(ids),
            "hostname": draw(hostnames),
            "eth0_mac": _mac(eth0).upper() if draw(st.booleans()) else _mac(eth0),
            "eth1_mac": _mac(eth1),
            "private_ip": ip,
        },
        {
            "id": draw(ids),
            "name": draw(st.from_regex(IMAGE_NAME_PATTERN.replace("$", r"\Z"), fullmatch=True)),
            "revision": draw(st.integers(0, MAX_ID)),
            "revision_id": draw(ids),
            "pretty_name": draw(pretty_names),
            "os_type": draw(st.from_regex(WORD_PATTERN.replace("$", r"\Z"), fullmatch=True)),
            "os_name": draw(st.from_regex(WORD_PATTERN.replace("$", r"\Z"), fullmatch=True)),
            "vcpus": draw(st.integers(1, 512)),
            "min_ram_mb": draw(st.integers(0, 4 * 1024 * 1024)),
        },
        reservation_id=draw(ids),
        request_id=draw(ids),
        host=draw(st.from_regex(HOST_NAME_PATTERN.replace("$", r"\Z"), fullmatch=True)),
        state=draw(st.sampled_from(["new", "reload", "reinstall", "image", "checkpoint"])),
    )


@FAST
@given(valid_documents())
def test_valid_reservations_parse_and_round_trip(document):
    """Every document built from valid values parses; its JSON parses back to the same."""
    parsed = parse_reservation(document)
    assert parse_reservation(parsed.model_dump_json()) == parsed
    assert parse_reservation(json.dumps(document).encode()) == parsed


@FAST
@given(valid_documents(), st.data())
def test_hostnames_are_case_insensitive(document, data):
    """Any upper/lower-case mix of a host name parses to the same computer."""
    hostname = document["computer"]["hostname"]
    mixed = "".join(
        c.upper() if data.draw(st.booleans(), label=f"upper {i}") else c
        for i, c in enumerate(hostname)
    )
    document["computer"]["hostname"] = mixed
    assert parse_reservation(document).computer.hostname == hostname


TEXT_PATHS = [
    ("host",),
    ("state",),
    ("computer", "hostname"),
    ("computer", "eth0_mac"),
    ("computer", "eth1_mac"),
    ("computer", "private_ip"),
    ("image", "name"),
    ("image", "pretty_name"),
    ("image", "os_type"),
    ("image", "os_name"),
    ("image", "project"),
]
refused_characters = st.characters(categories=("Cc", "Cf", "Cs", "Co", "Zl", "Zp"))


@FAST
@given(valid_documents(), st.sampled_from(TEXT_PATHS), refused_characters, st.data())
def test_a_refused_character_in_any_text_field_is_named(document, path, char, data):
    """A control/format character inserted anywhere in any text field: InvalidInput naming it."""
    section = document[path[0]] if len(path) == 2 else document
    value = section[path[-1]] or "10.0.0.1"
    at = data.draw(st.integers(0, len(value)), label="position")
    section[path[-1]] = value[:at] + char + value[at:]
    try:
        parse_reservation(document)
    except InvalidInput as error:
        assert error.field == ".".join(path)
    else:
        raise AssertionError(f"accepted {char!r} in {'.'.join(path)}")


@FAST
@given(st.binary(min_size=6, max_size=6))
def test_a_mac_is_accepted_exactly_when_unicast_and_not_zero(octets):
    """Multicast (incl. broadcast) and all-zero MACs are refused; every other one accepted."""
    document = reservation_document({"eth0_mac": _mac(octets), "eth1_mac": "52:54:00:00:00:99"})
    acceptable = not octets[0] & 1 and any(octets) and _mac(octets) != "52:54:00:00:00:99"
    try:
        parse_reservation(document)
    except InvalidInput as error:
        assert not acceptable and error.field in ("computer.eth0_mac", "computer.eth1_mac")
    else:
        assert acceptable


@FAST
@given(st.ip_addresses())
def test_only_addresses_a_guest_can_have_are_accepted(address):
    """private_ip: accepted exactly when it is no loopback/unspecified/multicast/... address."""
    document = reservation_document({"private_ip": str(address)})
    try:
        parsed = parse_reservation(document)
    except InvalidInput as error:
        assert error.field == "computer.private_ip"
        assert not _good_ip(address)
    else:
        assert _good_ip(ipaddress.ip_address(parsed.computer.private_ip))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@FAST
@given(json_values)
def test_any_json_document_is_a_reservation_or_an_invalid_input(value):
    """Arbitrary JSON never raises anything but InvalidInput."""
    try:
        parse_reservation(json.dumps(value))
    except InvalidInput as error:
        assert error.message.startswith("invalid reservation")


@FAST
@given(
    valid_documents(),
    st.sampled_from([*TEXT_PATHS, ("reservation_id",), ("image", "id"), ("image", "vcpus")]),
    json_values,
)
def test_any_value_in_any_field_is_accepted_or_refused_naming_it(document, path, value):
    """Whatever replaces a field: a Reservation, or InvalidInput naming that field."""
    section = document[path[0]] if len(path) == 2 else document
    section[path[-1]] = value
    try:
        parse_reservation(document)
    except InvalidInput as error:
        assert error.field is not None and error.field.startswith(".".join(path))


@FAST
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_refused_with_invalid_input(data):
    """Binary files and broken encodings: InvalidInput, never a decode error or a traceback."""
    with contextlib.suppress(InvalidInput):
        parse_reservation(data)


@FAST
@given(valid_documents())
def test_accepted_text_has_no_control_or_format_characters(document):
    """Nothing a reservation accepts can carry a line break or a format character."""
    parsed: Reservation = parse_reservation(document)
    texts = [
        parsed.host,
        parsed.computer.hostname,
        parsed.image.name,
        parsed.image.pretty_name,
        parsed.image.os_type,
        parsed.image.os_name,
    ]
    for text in texts:
        assert not any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in text)
        assert text.strip()
