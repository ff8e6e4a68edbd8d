"""Reservation validation: hostile or malformed input stops here, naming the field."""

from __future__ import annotations

import json

import pytest

from vclvirt.errors import InvalidInput
from vclvirt.models import Reservation, check_image_name, json_type, parse_reservation


def rejected(data) -> str:
    """The message of the InvalidInput that parsing `data` raises."""
    with pytest.raises(InvalidInput) as caught:
        parse_reservation(data)
    return caught.value.message


def test_valid_dict_parses(document):
    """A complete, valid reservation dict parses into a Reservation."""
    parsed = parse_reservation(document())
    assert isinstance(parsed, Reservation)
    assert parsed.computer.id == 22
    assert parsed.image.name == "centos7-CentOS7Base64bitVM-3081-v5"
    assert parsed.image.project == "vcl"


def test_valid_json_text_and_bytes_parse_the_same(document):
    """JSON text, JSON bytes and the dict give equal reservations."""
    data = document()
    text = json.dumps(data)
    assert parse_reservation(text) == parse_reservation(text.encode()) == parse_reservation(data)


def test_project_defaults_to_vcl(document):
    """An image without a project is in project `vcl`."""
    data = document()
    del data["image"]["project"]
    assert parse_reservation(data).image.project == "vcl"


def test_private_ip_is_optional(document):
    """private_ip may be absent or null."""
    data = document()
    del data["computer"]["private_ip"]
    assert parse_reservation(data).computer.private_ip is None
    assert parse_reservation(document({"private_ip": None})).computer.private_ip is None


def test_reservation_is_immutable(document):
    """A parsed reservation cannot be modified."""
    parsed = parse_reservation(document())
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        parsed.computer.hostname = "other"  # type: ignore[misc]


def test_macs_are_lower_cased(document):
    """MAC addresses are normalised to lower case."""
    computer = parse_reservation(document()).computer
    assert (computer.eth0_mac, computer.eth1_mac) == ("52:54:00:aa:00:01", "52:54:00:aa:00:02")


@pytest.mark.parametrize(
    ("hostname", "short"),
    [("vm4-22.example.org", "vm4-22"), ("vm1", "vm1"), ("a.b.c", "a")],
)
def test_short_name_is_text_before_first_dot(document, hostname, short):
    """short_name is the host name up to the first dot."""
    computer = parse_reservation(document({"hostname": hostname})).computer
    assert computer.short_name == short


@pytest.mark.parametrize(
    ("os_type", "windows"), [("windows", True), ("Windows10", True), ("linux", False)]
)
def test_is_windows(document, os_type, windows):
    """is_windows is true when the OS type contains 'windows' in any case."""
    image = parse_reservation(document(image={"os_type": os_type})).image
    assert image.is_windows is windows


@pytest.mark.parametrize("state", ["new", "reload", "reinstall", "image", "checkpoint"])
def test_known_states_are_accepted(document, state):
    """Every state the module handles is accepted."""
    assert parse_reservation(document(state=state)).state == state


@pytest.mark.parametrize("ip", ["10.0.0.22", "192.168.1.1", "fd00::1"])
def test_valid_private_ips(document, ip):
    """IPv4 and IPv6 private addresses are accepted."""
    assert parse_reservation(document({"private_ip": ip})).computer.private_ip == ip


def test_unknown_top_level_field_is_rejected(document):
    """An extra field is rejected and named."""
    assert "colour" in rejected(document(colour="red"))


def test_unknown_nested_field_is_rejected(document):
    """An extra field inside computer is rejected with its dotted path."""
    assert "computer.owner" in rejected(document({"owner": "x"}))


@pytest.mark.parametrize(
    ("section", "field"),
    [(None, "host"), (None, "state"), ("computer", "eth1_mac"), ("image", "vcpus")],
)
def test_missing_field_is_rejected(document, section, field):
    """A missing required field is rejected and named."""
    data = document()
    del (data[section] if section else data)[field]
    message = rejected(data)
    assert (f"{section}.{field}" if section else field) in message
    assert "required" in message.lower()


@pytest.mark.parametrize(
    ("computer", "image", "top", "field"),
    [
        ({"id": "22"}, {}, {}, "computer.id"),
        ({}, {"vcpus": "2"}, {}, "image.vcpus"),
        ({}, {"revision": 1.5}, {}, "image.revision"),
        ({}, {"min_ram_mb": True}, {}, "image.min_ram_mb"),
        ({}, {}, {"reservation_id": "200"}, "reservation_id"),
        ({"hostname": 22}, {}, {}, "computer.hostname"),
        ({}, {}, {"host": 5}, "host"),
    ],
)
def test_wrong_type_is_rejected(document, computer, image, top, field):
    """Strings for ints, floats, bools and wrong containers are rejected, naming the field."""
    assert field in rejected(document(computer, image, **top))


def test_section_of_wrong_type_is_rejected(document):
    """A computer given as a string instead of an object is rejected, naming it."""
    data = document()
    data["computer"] = "vm1"
    assert "computer" in rejected(data)


@pytest.mark.parametrize(
    "mac",
    [
        "52:54:00:aa:00",
        "52-54-00-aa-00-01",
        "52:54:00:aa:00:0g",
        "5254.00aa.0001",
        "",
        "52:54:00:aa:00:01\n",
    ],
)
def test_bad_mac_is_rejected(document, mac):
    """Malformed MAC addresses are rejected."""
    assert "computer.eth0_mac" in rejected(document({"eth0_mac": mac}))


@pytest.mark.parametrize(
    "hostname",
    [
        "vm1;rm -rf /",
        "../etc",
        "vm1_x",
        "vm1:x",
        "-vm1",
        "vm1-",
        "vm1.",
        "vm 1",
        "$(touch x)",
        "vm1\n",
        "",
        "a" * 64,
        ".".join(["a" * 60] * 5),
    ],
)
def test_hostile_or_invalid_hostname_is_rejected(document, hostname):
    """Host names that are not plain DNS names (incl. '_', ':', shell chars) are rejected."""
    assert "computer.hostname" in rejected(document({"hostname": hostname}))


@pytest.mark.parametrize(
    "name",
    [
        "a/b",
        "../master",
        "-rf",
        ".hidden",
        "img*",
        "img?",
        "img[1]",
        "img name",
        "img;ls",
        "img\n",
        "",
        "a" * 129,
    ],
)
def test_bad_image_name_is_rejected(document, name):
    """Image names with path separators, globs, spaces or a leading '-'/'.' are rejected."""
    assert "image.name" in rejected(document(image={"name": name}))


@pytest.mark.parametrize(
    ("computer", "image", "top", "field"),
    [
        ({"id": -1}, {}, {}, "computer.id"),
        ({"id": 0}, {}, {}, "computer.id"),
        ({}, {"id": -5}, {}, "image.id"),
        ({}, {"revision": -1}, {}, "image.revision"),
        ({}, {"revision_id": 0}, {}, "image.revision_id"),
        ({}, {}, {"reservation_id": -200}, "reservation_id"),
        ({}, {}, {"request_id": 0}, "request_id"),
        ({}, {"min_ram_mb": -1}, {}, "image.min_ram_mb"),
    ],
)
def test_negative_or_zero_ids_are_rejected(document, computer, image, top, field):
    """Ids must be positive (revision and RAM non-negative)."""
    assert field in rejected(document(computer, image, **top))


@pytest.mark.parametrize("vcpus", [0, -1, 513])
def test_vcpus_out_of_range_is_rejected(document, vcpus):
    """vcpus must be between 1 and 512."""
    assert "image.vcpus" in rejected(document(image={"vcpus": vcpus}))


@pytest.mark.parametrize("min_ram_mb", [-1, 4 * 1024 * 1024 + 1, 2**40])
def test_min_ram_outside_sane_bounds_is_rejected(document, min_ram_mb):
    """min_ram_mb is between 0 and 4 TiB (a typo of a few digits is not a VM)."""
    assert "image.min_ram_mb" in rejected(document(image={"min_ram_mb": min_ram_mb}))
    assert parse_reservation(document(image={"min_ram_mb": 4 * 1024 * 1024}))


@pytest.mark.parametrize("state", ["deleted", "NEW", "", "new "])
def test_bad_state_is_rejected(document, state):
    """Only the known states are accepted (case-sensitive)."""
    assert "state" in rejected(document(state=state))


@pytest.mark.parametrize("project", ["VCL", "other", ""])
def test_bad_project_is_rejected(document, project):
    """Only the projects vcl, hpc and vclhpc exist."""
    assert "image.project" in rejected(document(image={"project": project}))


@pytest.mark.parametrize("ip", ["10.0.0.300", "not-an-ip", "10.0.0.1 ", "10.0.0.1;reboot", ""])
def test_bad_private_ip_is_rejected(document, ip):
    """private_ip must be an IP address."""
    assert "computer.private_ip" in rejected(document({"private_ip": ip}))


@pytest.mark.parametrize("ip", ["fe80::1%$(touch x)", "fe80::1%a b;reboot"])
def test_private_ip_with_hostile_ipv6_scope_is_rejected(document, ip):
    """A private_ip whose IPv6 zone id holds shell characters is rejected."""
    with pytest.raises(InvalidInput, match=r"computer\.private_ip"):
        parse_reservation(document({"private_ip": ip}))


@pytest.mark.parametrize("os_field", ["os_type", "os_name"])
@pytest.mark.parametrize("value", ["win 7", "win/7", "", "w;ls"])
def test_bad_os_words_are_rejected(document, os_field, value):
    """OS type and name are single words of letters, digits and '_'."""
    assert f"image.{os_field}" in rejected(document(image={os_field: value}))


@pytest.mark.parametrize("host", ["kvm host", "-kvm", "kvm/1", "kvm;1", ""])
def test_bad_inventory_host_name_is_rejected(document, host):
    """The reservation's host must be a plain inventory host name."""
    assert "host" in rejected(document(host=host))


def test_pretty_name_may_hold_any_text_but_not_be_empty(document):
    """Pretty names are free text (never used in commands) but must not be empty."""
    pretty = "Win 10 & <Office> 'quoted' $(x)"
    image = parse_reservation(document(image={"pretty_name": pretty})).image
    assert image.pretty_name == pretty
    assert "image.pretty_name" in rejected(document(image={"pretty_name": ""}))


@pytest.mark.parametrize("text", ["{not json", "[]", '"text"', "null", ""])
def test_malformed_json_is_rejected(text):
    """Text that is not a JSON object raises InvalidInput, not a raw error."""
    assert rejected(text).startswith("invalid reservation")


def test_unserialisable_dict_is_rejected(document):
    """A dict holding non-JSON values raises InvalidInput."""
    assert rejected(document(request_id={1, 2})).startswith("invalid reservation")


def test_several_errors_are_all_named(document):
    """When several fields are wrong, each one is named in the message."""
    message = rejected(document({"id": "x"}, {"vcpus": 0}, state="bad"))
    assert all(field in message for field in ("computer.id", "image.vcpus", "state"))


# ---- #10: hostile input stops at the model ------------------------------------------------

from vclvirt.models import MAX_DOCUMENT_BYTES, MAX_ID, load_json_document  # noqa: E402
from vclvirt.naming import LoadNames  # noqa: E402

REFUSED_CHARACTERS = [
    "\x00",  # NUL
    "\x01",
    "\x1b",  # ESC
    "\n",
    "\r",
    "\t",
    "\x7f",  # DEL
    "\x85",  # C1 NEL
    "\x9b",  # C1 CSI
    "\u202e",  # right-to-left override
    "\u200b",  # zero width space
    "\u2028",  # line separator
    "\ufeff",  # zero width no-break space / BOM
]
# (section, field, a valid value) for every text field of a reservation.
TEXT_FIELDS = [
    (None, "host", "kvmhost1"),
    (None, "state", "new"),
    ("computer", "hostname", "vm4-22.example.org"),
    ("computer", "eth0_mac", "52:54:00:aa:00:01"),
    ("computer", "eth1_mac", "52:54:00:aa:00:02"),
    ("computer", "private_ip", "10.0.0.22"),
    ("image", "name", "centos7-CentOS7Base64bitVM-3081-v5"),
    ("image", "pretty_name", "CentOS 7 Base (64 bit VM)"),
    ("image", "os_type", "linux"),
    ("image", "os_name", "centos7"),
    ("image", "project", "vcl"),
]


def _with(document, section, field, value):
    data = document()
    (data[section] if section else data)[field] = value
    return data


def _path(section, field):
    return f"{section}.{field}" if section else field


def _field_of(data) -> str | None:
    with pytest.raises(InvalidInput) as caught:
        parse_reservation(data)
    return caught.value.field


@pytest.mark.parametrize(("section", "field", "valid"), TEXT_FIELDS)
@pytest.mark.parametrize("char", REFUSED_CHARACTERS, ids=lambda c: f"U+{ord(c):04X}")
def test_control_and_format_characters_are_refused_in_every_text_field(
    document, section, field, valid, char
):
    """A control or format character anywhere in any text field is refused, naming the field."""
    for value in (char + valid, valid[:2] + char + valid[2:], valid + char):
        assert _field_of(_with(document, section, field, value)) == _path(section, field)


@pytest.mark.parametrize("pretty", ["Base\nvcld_tainted=forged", "Base\r\nx=y", "a\u202eb"])
def test_pretty_name_cannot_carry_extra_lines_or_reordering(document, pretty):
    """A newline in pretty_name would write extra key=value lines into currentimage.txt."""
    message = rejected(document(image={"pretty_name": pretty}))
    assert "image.pretty_name" in message and "U+" in message


@pytest.mark.parametrize(("section", "field", "valid"), TEXT_FIELDS)
@pytest.mark.parametrize("blank", [" ", "   ", "\u3000", "\u00a0 "])
def test_blank_strings_are_refused_in_every_text_field(document, section, field, valid, blank):
    """Text that is only white space is refused in every text field, pretty_name included."""
    assert _field_of(_with(document, section, field, blank)) == _path(section, field)


@pytest.mark.parametrize(
    "mac",
    [
        "01:00:5e:00:00:01",  # IPv4 multicast
        "33:33:00:00:00:01",  # IPv6 multicast
        "53:54:00:aa:00:01",  # group bit set
        "ff:ff:ff:ff:ff:ff",  # broadcast
        "FF:FF:FF:FF:FF:FF",
        "00:00:00:00:00:00",
    ],
)
@pytest.mark.parametrize("field", ["eth0_mac", "eth1_mac"])
def test_multicast_broadcast_and_zero_macs_are_refused(document, mac, field):
    """A NIC's MAC must be unicast and not all zero."""
    assert _field_of(document({field: mac})) == f"computer.{field}"


@pytest.mark.parametrize("eth1", ["52:54:00:AA:00:01", "52:54:00:aa:00:01"])
def test_eth0_and_eth1_must_differ_case_insensitively(document, eth1):
    """eth0 and eth1 with the same MAC (in any case) are refused, naming eth1_mac."""
    data = document({"eth0_mac": "52:54:00:aa:00:01", "eth1_mac": eth1})
    assert _field_of(data) == "computer.eth1_mac"


@pytest.mark.parametrize(
    "ip",
    [
        "127.0.0.1",
        "127.1.2.3",
        "::1",
        "0.0.0.0",
        "0.1.2.3",
        "::",
        "224.0.0.1",
        "239.255.255.250",
        "ff02::1",
        "255.255.255.255",
        "169.254.169.254",
        "fe80::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "240.0.0.1",
    ],
)
def test_private_ip_that_is_no_guest_address_is_refused(document, ip):
    """Loopback, unspecified, multicast, broadcast, link-local (and reserved) are refused."""
    assert _field_of(document({"private_ip": ip})) == "computer.private_ip"


@pytest.mark.parametrize(
    ("section", "field"),
    [
        (None, "reservation_id"),
        (None, "request_id"),
        ("computer", "id"),
        ("image", "id"),
        ("image", "revision_id"),
        ("image", "revision"),
    ],
)
def test_integers_are_bounded_by_a_signed_64_bit_range(document, section, field):
    """Ids and revision accept up to 2^63-1 and refuse 2^63 and beyond."""
    assert parse_reservation(_with(document, section, field, MAX_ID))
    for value in (MAX_ID + 1, 2**64, 10**30):
        assert _field_of(_with(document, section, field, value)) == _path(section, field)


def test_revision_zero_is_a_revision(document):
    """VCL's first revision of an image is 0 (its seed images are named -v0)."""
    assert parse_reservation(document(image={"revision": 0})).image.revision == 0


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"reservation_id": 1, "reservation_id": 2}', "reservation_id"),
        ('{"computer": {"id": 1, "hostname": "a", "id": 2}}', "computer.id"),
        ('{"image": {"x": [{"a": 1, "a": 1}]}}', "image.x.0.a"),
    ],
)
def test_duplicate_keys_anywhere_are_refused_naming_the_path(text, field):
    """Another parser would read a different reservation: repeated keys are refused."""
    for data in (text, text.encode()):
        with pytest.raises(InvalidInput, match="duplicate key") as caught:
            parse_reservation(data)
        assert caught.value.field == field


def test_duplicate_key_in_a_full_reservation_is_refused(document):
    """A complete, otherwise valid reservation with one key twice is refused."""
    text = json.dumps(document())
    doubled = text.replace('"host": "kvmhost1"', '"host": "kvmhost1", "host": "other"')
    assert doubled != text
    with pytest.raises(InvalidInput, match="duplicate key host"):
        parse_reservation(doubled)


def test_hostnames_differing_only_in_case_are_one_computer(document):
    """Host names are lower-cased, so they name the same computer, domain and files."""
    upper = parse_reservation(document({"hostname": "VM4-22.Example.ORG"}))
    lower = parse_reservation(document({"hostname": "vm4-22.example.org"}))
    assert upper == lower
    paths = {"datastore_path": "/d", "vm_path": "/v", "xml_dir": "/x"}
    assert LoadNames.for_reservation(upper, **paths) == LoadNames.for_reservation(lower, **paths)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xef\xbb\xbf{}", "byte order mark"),
        ("\ufeff{}", "byte order mark"),
        ('{"a": 1}'.encode("utf-16"), "UTF-16"),
        ('{"a": 1}'.encode("utf-16-le"), "UTF-16"),
        ('{"a": 1}'.encode("utf-16-be"), "UTF-16"),
        ('{"a": 1}'.encode("utf-32"), "UTF-16 or UTF-32"),
        (b'{"a": "\xff\xfe"}', "not valid UTF-8 (byte 7"),
        (b"\x00\x01\x02binary\xff", "UTF-16 or UTF-32"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "holds NUL bytes (the first at byte 8)"),
        (bytes(range(128, 256)), "not valid UTF-8 (byte 0"),
        ("NaN", "NaN"),
        ('{"a": Infinity}', "Infinity"),
        ("[" * 60_000, "nested too deeply"),
    ],
)
def test_encodings_and_non_json_are_refused_clearly(data, reason):
    """BOM, UTF-16/32, invalid UTF-8 and non-standard JSON get one clear message."""
    with pytest.raises(InvalidInput) as caught:
        load_json_document(data)
    assert reason in caught.value.message


def test_json_syntax_errors_give_the_position():
    """A syntax error says where: line, column and character."""
    with pytest.raises(InvalidInput) as caught:
        load_json_document('{\n  "a": 1,\n  "b" 2\n}')
    assert "line 3, column 7" in caught.value.message
    assert caught.value.field is None


def test_oversized_documents_are_refused():
    """Documents past MAX_DOCUMENT_BYTES are refused before they are parsed."""
    big = json.dumps({"pad": "x" * MAX_DOCUMENT_BYTES})
    with pytest.raises(InvalidInput, match="at most"):
        load_json_document(big)
    with pytest.raises(InvalidInput, match="at most"):
        load_json_document(big.encode())


def test_hostile_field_names_are_quoted_back_escaped(document):
    """An unknown key with control or look-alike characters is named escaped, and short."""
    message = rejected(document({"\u0441omputer\x1b[2J" + "x" * 200: 1}))
    assert "\x1b" not in message and "\u0441" not in message
    assert "\\u0441omputer" in message and len(message) < 300


def refused_document(data) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        load_json_document(data)
    return caught.value


@pytest.mark.parametrize(
    ("data", "message", "hint"),
    [
        (
            b'\xef\xbb\xbf{"a": 1}',
            "the document starts with a UTF-8 byte order mark",
            "Save the file as UTF-8 without BOM",
        ),
        # UTF-16 text of CJK letters holds no NUL byte: only its BOM tells what it is
        (
            b"\xff\xfe\x4e\x4e",
            "the document starts with a UTF-16 or UTF-32 byte order mark, not UTF-8 text",
            "Convert it to UTF-8",
        ),
        (
            b"\xfe\xff\x4e\x4e",
            "the document starts with a UTF-16 or UTF-32 byte order mark, not UTF-8 text",
            "Convert it to UTF-8",
        ),
        (
            b"{}\x00",
            "the document holds NUL bytes (the first at byte 2): it is binary, "
            "UTF-16 or UTF-32, not UTF-8 JSON text",
            "Send JSON text encoded as UTF-8",
        ),
        (
            b'{"a": "\xc3"}',
            "the document is not valid UTF-8 (byte 7: invalid continuation byte)",
            "Send JSON text encoded as UTF-8",
        ),
    ],
)
def test_undecodable_documents_get_their_exact_message_and_hint(data, message, hint):
    """Each encoding refusal says exactly what the bytes are and what to send instead."""
    error = refused_document(data)
    assert (error.message, error.hint) == (message, hint)


def test_a_value_error_reads_without_pydantic_prefix(document):
    """A field's own check reads as its message, without pydantic's 'Value error, '."""
    assert rejected(document({"eth0_mac": "01:00:5e:00:00:01"})) == (
        "invalid reservation: computer.eth0_mac: must be a unicast MAC address, "
        "not a multicast address"
    )


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ({}, "an object"),
        ([], "an array"),
        ("", "a string"),
        (True, "a boolean"),
        (None, "null"),
        (1, "a number"),
        (1.5, "a number"),
    ],
)
def test_json_type_names_each_decoded_type(value, name):
    """Messages name a decoded JSON value's type the way JSON does."""
    assert json_type(value) == name


@pytest.mark.parametrize("name", ["i" * 128, "a", "centos7-Base_64bit.VM+x-3081-v5"])
def test_image_name_on_its_own_up_to_128_characters_is_returned(name):
    """check_image_name (a CLI argument) takes the image-name rule's names, up to 128."""
    assert check_image_name(name) == name


@pytest.mark.parametrize("name", ["i" * 129, "-x", ".x", "a/b", "a b", "img\n", "*", ""])
def test_image_name_on_its_own_is_refused_naming_image(name):
    """A bad image name given alone is refused naming IMAGE, with the rule as the hint."""
    with pytest.raises(InvalidInput) as caught:
        check_image_name(name)
    assert caught.value.field == "IMAGE"
    assert caught.value.message.startswith("invalid image name: IMAGE: ")
    assert caught.value.hint == (
        "Image names are letters, digits and ._+- (no leading . or -), at most 128 characters"
    )


@pytest.mark.parametrize(
    ("ip", "kind"),
    [
        ("127.0.0.1", "a loopback"),
        ("::ffff:127.0.0.1", "a loopback"),
        ("0.0.0.0", "an unspecified"),
        ("0.1.2.3", "an unspecified"),
        ("::", "an unspecified"),
        ("224.0.0.1", "a multicast"),
        ("ff02::1", "a multicast"),
        ("169.254.1.1", "a link-local"),
        ("fe80::1", "a link-local"),
        ("255.255.255.255", "the broadcast"),
        ("240.0.0.1", "a reserved"),
    ],
)
def test_private_ip_refusal_says_which_kind_of_address(document, ip, kind):
    """The refusal names the kind of address a guest cannot have."""
    assert rejected(document({"private_ip": ip})) == (
        f"invalid reservation: computer.private_ip: {ip} is {kind} address, "
        "not one a guest can have"
    )


@pytest.mark.parametrize("ip", ["2001:db8::1%eth0", "2001:db8::1%25", "10.0.0.1%x"])
def test_private_ip_with_any_scope_is_refused(document, ip):
    """A scoped address (even a global IPv6 one Python would accept) is refused as such."""
    assert rejected(document({"private_ip": ip})) == (
        "invalid reservation: computer.private_ip: must be an IPv4 or IPv6 address without a scope"
    )


def test_several_problems_are_joined_by_semicolons(document):
    """Every field's problem is listed, `; ` between them, the first field named."""
    with pytest.raises(InvalidInput) as caught:
        parse_reservation(document({"id": 0}, {"vcpus": 0}))
    assert caught.value.field == "computer.id"
    assert caught.value.message == (
        "invalid reservation: computer.id: Input should be greater than or equal to 1; "
        "image.vcpus: Input should be greater than or equal to 1"
    )


def test_a_document_level_problem_is_named_document():
    """A problem of the whole document (no field) is shown as (document) and names no field."""
    from pydantic import ValidationError

    from vclvirt.models import Reservation as Model
    from vclvirt.models import describe_errors

    with pytest.raises(ValidationError) as caught:
        Model.model_validate([])
    field, message = describe_errors(caught.value)
    assert field is None
    assert message.startswith("(document): Input should be")
    assert describe_errors(caught.value, prefix="params")[0] == "params"


@pytest.mark.parametrize(
    ("mac", "kind"),
    [
        ("ff:ff:ff:ff:ff:ff", "the broadcast address"),
        ("FF:FF:FF:FF:FF:FF", "the broadcast address"),
        ("ff:ff:ff:ff:ff:fe", "a multicast address"),
        ("33:33:00:00:00:01", "a multicast address"),
    ],
)
def test_mac_refusal_says_broadcast_or_multicast(document, mac, kind):
    """A group address is refused as the broadcast address or as a multicast address."""
    assert rejected(document({"eth1_mac": mac})) == (
        f"invalid reservation: computer.eth1_mac: must be a unicast MAC address, not {kind}"
    )


def test_all_zero_mac_refusal_says_so(document):
    """00:00:00:00:00:00 is refused as the all-zero address."""
    assert rejected(document({"eth0_mac": "00:00:00:00:00:00"})) == (
        "invalid reservation: computer.eth0_mac: must not be the all-zero MAC address"
    )


@pytest.mark.parametrize(
    ("data", "message", "hint"),
    [
        ("\ufeff{}", "the document starts with a byte order mark (U+FEFF)", None),
        (
            '{"a": }',
            "invalid JSON at line 1, column 7 (character 6): Expecting value",
            "Fix the JSON syntax at that position",
        ),
        ("[" * 60_000, "invalid JSON: nested too deeply", None),
        (
            '{"a": {"b": 1, "b": 2}}',
            "duplicate key a.b: a JSON object must name each key once",
            "Remove the repeated key; other parsers would read a different value",
        ),
    ],
)
def test_document_refusals_have_their_exact_message_and_hint(data, message, hint):
    """BOM text, syntax errors, deep nesting and repeated keys: what is wrong and what to do."""
    error = refused_document(data)
    assert error.message == message
    assert error.hint == (hint or InvalidInput.default_hint)


def test_python_dict_holding_nan_is_refused_before_json(document):
    """A dict holding NaN is refused as not JSON compliant, not turned into a NaN token."""
    assert rejected(document({}, {"min_ram_mb": float("nan")})) == (
        "invalid reservation: Out of range float values are not JSON compliant"
    )


@pytest.mark.parametrize(
    ("text", "kind"), [("[]", "an array"), ("3", "a number"), ("null", "null"), ('"x"', "a string")]
)
def test_document_that_is_not_an_object_says_what_it_is(text, kind):
    """A reservation document must be an object; the refusal names what it was instead."""
    assert rejected(text) == f"invalid reservation: the document must be a JSON object, not {kind}"
