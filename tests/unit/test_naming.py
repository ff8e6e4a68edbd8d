"""Names and paths derived from a reservation (as VCL derives them)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from vclvirt.models import IMAGE_NAME_PATTERN, Image, check_image_name
from vclvirt.naming import (
    MAX_DOMAIN_NAME,
    LoadNames,
    belongs_to_computer,
    captured_image_name,
    computer_of_domain,
    domain_name,
    domain_uuid,
    file_base_name,
    new_image_name,
    parse_file_base,
)

ROOT = Path(__file__).resolve().parents[2]

# (C, CID, P, IID, R, expected) — every example of VCL's get_domain_name, as vcld names them.
REFERENCE_VECTORS = [
    ("vm4-22", 22, "CentOS 7 Base (64 bit VM)", 3081, 5, "vm4-22_CentOS7Base64bitVM_3081-v5"),
    (
        "vclv99-197",
        197,
        "Windows 10 Enterprise LTSC 2019 with MATLAB, SPSS & Office 365",
        1846,
        12,
        "vclv99-197_Windows10EnterpriseLTSC2019w_1846-v12",
    ),
    ("vm1", 1, "!!! ###", 3081, 0, "vm1__3081-v0"),
    ("a" * 30, 9, "Foo Bar", 123456, 12345, "a" * 30 + "_123456-v12345"),
    ("c" * 42, 9, "Foo", 12, 3, "c" * 42 + "_12-v3"),
    ("e" * 45, 9, "Foo", 12, 3, "e" * 45),
    ("d" * 49, 77, "Foo", 12, 3, "77"),
]


@pytest.mark.parametrize(("computer", "cid", "pretty", "iid", "rev", "expected"), REFERENCE_VECTORS)
def test_domain_name_reference_vectors(computer, cid, pretty, iid, rev, expected):
    """Every test vector of the reference table gives the documented domain name."""
    assert domain_name(computer, cid, pretty, iid, rev) == expected


@pytest.mark.parametrize(("computer", "cid", "pretty", "iid", "rev", "expected"), REFERENCE_VECTORS)
def test_domain_name_never_exceeds_48(computer, cid, pretty, iid, rev, expected):
    """No vector yields a domain name longer than 48 characters."""
    assert len(domain_name(computer, cid, pretty, iid, rev)) <= MAX_DOMAIN_NAME == 48


def test_documented_lengths():
    """The lengths given in the table's last column hold."""
    lengths = [len(domain_name(*row[:5])) for row in REFERENCE_VECTORS]
    assert lengths == [33, 48, 12, 44, 48, 45, 2]


def test_computer_of_exactly_48_chars_is_kept():
    """A 48-character computer name is not replaced by the id; it is returned alone."""
    assert domain_name("f" * 48, 5, "Foo", 12, 3) == "f" * 48


def test_computer_of_49_chars_falls_back_to_id():
    """A computer name longer than 48 characters gives the computer id as a string."""
    assert domain_name("g" * 49, 123, "Foo", 1, 1) == "123"


def test_prefix_plus_suffix_of_47_gives_prefix_and_suffix():
    """When prefix+suffix is 47 the middle would be < 5, so it is left out (no double '_')."""
    computer = "h" * 41  # prefix 42 + suffix "12-v3" 5 = 47
    assert domain_name(computer, 1, "Foo", 12, 3) == computer + "_12-v3"


def test_middle_of_exactly_five_is_kept():
    """A max_middle of exactly 5 keeps the first five letters of the pretty name."""
    computer = "k" * 36  # prefix 37 + suffix 5 = 42, max_middle = 48 - 42 - 1 = 5
    name = domain_name(computer, 1, "Abcdefgh", 12, 3)
    assert name == computer + "_Abcde_12-v3"
    assert len(name) == 48


def test_middle_of_four_is_dropped():
    """A max_middle of 4 (< 5) drops the pretty name altogether."""
    computer = "m" * 37  # prefix 38 + suffix 5 = 43, max_middle = 4
    assert domain_name(computer, 1, "Abcdefgh", 12, 3) == computer + "_12-v3"


def test_pretty_name_keeps_only_ascii_letters_and_digits():
    """Underscores, punctuation and non-ASCII letters are removed from the middle."""
    assert domain_name("vm1", 1, "Café_Ünï-code 2.0", 7, 1) == "vm1_Cafncode20_7-v1"


def test_explicit_max_length_is_honoured():
    """A smaller max_length truncates the middle accordingly."""
    assert domain_name("vm1", 1, "ABCDEFGHIJ", 7, 1, max_length=18) == "vm1_ABCDEFGHI_7-v1"


def test_file_base_name():
    """The file base name is `C_IID-vR`."""
    assert file_base_name("vclv99-37", 234, 23) == "vclv99-37_234-v23"


@pytest.mark.parametrize(("computer", "cid", "pretty", "iid", "rev", "expected"), REFERENCE_VECTORS)
def test_computer_of_every_full_domain_name(computer, cid, pretty, iid, rev, expected):
    """The computer is read back from every name domain_name gives in full."""
    if expected.startswith(f"{computer}_"):
        assert computer_of_domain(expected) == computer


@pytest.mark.parametrize(
    "domain",
    [
        "my-build-vm",
        "vm1",
        "22",
        "vm1:old-image",
        "vm1_CentOS",
        "vm1_a_b_1-v0",
        "vm1_1-v0.bak",
        "-vm_1-v0",
        "vm1_Cent-OS_1-v0",
        "vm1_1-v",
    ],
)
def test_other_names_have_no_computer(domain):
    """Anyone's names, the short forms and older `C:…` are not read as a computer's."""
    assert computer_of_domain(domain) is None


def test_parse_file_base():
    """`C_IID-vR` back to its parts; anything else is None."""
    assert parse_file_base(file_base_name("vclv99-37", 234, 23)) == ("vclv99-37", 234, 23)
    assert parse_file_base("vm1_Pretty_1-v0") is None
    assert parse_file_base("linux-Foo-12-v0") is None


@pytest.mark.parametrize(
    "domain", ["vm1_CentOS_1-v1", "vm1__3081-v0", "vm1_1-v0", "vm1:old-image-name", "vm1:"]
)
def test_belongs_to_computer_current_and_legacy(domain):
    """`C_…` (current, 2016 interim) and `C:…` (pre-2016) domains belong to computer C."""
    assert belongs_to_computer(domain, "vm1")


@pytest.mark.parametrize(
    "domain", ["vm10_CentOS_1-v1", "vm1-2_CentOS_1-v1", "vm10:x", "vm1", "xvm1_a", "VM1_a", "vm1-"]
)
def test_belongs_to_computer_rejects_other_computers(domain):
    """`vm1` does not own another computer's domains that merely start with `vm1`."""
    assert not belongs_to_computer(domain, "vm1")


@pytest.mark.parametrize(
    ("os_name", "pretty", "iid", "rev", "expected"),
    [
        ("vmwarewin7", "Windows 7 Base (64 bit VM)", 1846, 3, "win7-Windows7Base64bitVM-1846-v3"),
        ("vmwarelinux", "RHEL 5.4 Small", 2251, 1, "linux-RHEL54Small-2251-v1"),
        ("win7image", "A_B c", 1, 0, "win7-ABc-1-v0"),
        ("vmvmwarewarelinux", "X", 5, 2, "linux-X-5-v2"),
        ("imimageagewin", "X", 5, 2, "win-X-5-v2"),
        ("imvmwareagexp", "X", 5, 2, "xp-X-5-v2"),
        ("centos7", "Ünïcode—Name", 5, 2, "centos7-ncodeName-5-v2"),
    ],
)
def test_new_image_name(os_name, pretty, iid, rev, expected):
    """OS name loses every vmware/image (repeatedly); pretty name loses \\W and '_'."""
    assert new_image_name(os_name, pretty, iid, rev) == expected


def test_new_image_name_repeated_removal_can_empty_the_os_part():
    """`vmvmwareware` collapses to nothing; the name then starts with the pretty part."""
    assert new_image_name("vmvmwareware", "Foo", 1, 1) == "Foo-1-v1"


@pytest.mark.parametrize("os_name", ["vmware", "vmvmwareware"])
def test_new_image_name_is_a_valid_image_name(os_name):
    """A captured image's new name must itself pass the model's image-name validation.

    The reference would give a name starting with '-' for an OS name made only of
    vmware/image, which reads as an option; ours drops the empty part.
    """
    name = new_image_name(os_name, "Foo", 1, 1)
    assert re.match(IMAGE_NAME_PATTERN, name), f"new_image_name gave invalid image name {name!r}"


def _image(name: str, revision: int) -> Image:
    return Image(
        id=881,
        name=name,
        revision=revision,
        revision_id=88100 + revision,
        pretty_name="CentOS 7 Base",
        os_type="linux",
        os_name="vmwarelinux",
        min_ram_mb=512,
        vcpus=1,
        project="vcl",
    )


@pytest.mark.parametrize(
    "name",
    [
        "linux-CentOS7Base881-v2",  # VCL's web front end: no dash before the id
        "linux-CentOS7Base-881-v2",  # a revision of a name libvirt gave
        "centos7-lab-v2",  # any name VCL's web derived a revision from
        "esxi4.1-ESXi41Host881-v2",  # OS names may hold dots
    ],
)
def test_a_capture_keeps_the_name_vcl_gave_the_revision(name):
    """VCL's image.pm writes its own name back after capture(): never rename; and the
    name is one vclvirt accepts everywhere (models, CLI, API)."""
    assert captured_image_name(_image(name, 2)) == name
    assert check_image_name(name) == name


def test_a_capture_of_a_reservation_naming_an_earlier_revision_gets_the_reference_name():
    """The name of the image loaded (revision 1) is not the captured revision's (2)."""
    assert captured_image_name(_image("linux-CentOS7Base881-v1", 2)) == ("linux-CentOS7Base-881-v2")
    assert captured_image_name(_image("linux-CentOS7Base881-v21", 2)) == (
        "linux-CentOS7Base-881-v2"
    )


def test_domain_uuid_is_the_same_in_every_process_and_release():
    """Workers in other processes (other hash seeds) give a domain the same UUID, and so
    does every release: a new UUID for an existing domain's name makes defineXML fail."""
    code = "from vclvirt.naming import domain_uuid; print(domain_uuid('h1', 'vm1_X_1-v1'))"
    in_other_processes = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2", "random")
    }
    assert in_other_processes == {domain_uuid("h1", "vm1_X_1-v1")}
    assert in_other_processes == {"f19c2d65-00cc-5dce-999c-f566b0417d90"}


def test_domain_uuid_is_a_uuid():
    """domain_uuid returns a canonical RFC 4122 UUID string."""
    value = domain_uuid("h1", "vm1_X_1-v1")
    assert str(uuid.UUID(value)) == value


@pytest.mark.parametrize(
    ("other_host", "other_domain"),
    [("h2", "vm1_X_1-v1"), ("h1", "vm1_X_1-v2"), ("h1/vm1_X", "1-v1")],
)
def test_domain_uuid_differs(other_host, other_domain):
    """A different host or domain gives a different UUID."""
    assert domain_uuid("h1", "vm1_X_1-v1") != domain_uuid(other_host, other_domain)


def test_load_names_paths(reservation):
    """Overlay in vm_path, XML in xml_dir, reference XML in the datastore (VCL's paths)."""
    names = LoadNames.for_reservation(
        reservation(),
        datastore_path="/var/lib/libvirt/images",
        vm_path="/srv/vms",
        xml_dir="/tmp/vcl",
    )
    assert names == LoadNames(
        computer="vm4-22",
        domain="vm4-22_CentOS7Base64bitVM_3081-v5",
        base="vm4-22_3081-v5",
        overlay_path="/srv/vms/vm4-22_3081-v5.qcow2",
        xml_path="/tmp/vcl/vm4-22_3081-v5.xml",
        master_reference_xml="/var/lib/libvirt/images/centos7-CentOS7Base64bitVM-3081-v5.xml",
    )


def test_load_names_vm_path_same_as_datastore(reservation):
    """When vm_path is the datastore, the overlay sits beside the masters."""
    names = LoadNames.for_reservation(
        reservation(),
        datastore_path="/var/lib/libvirt/images",
        vm_path="/var/lib/libvirt/images",
        xml_dir="/tmp/vcl",
    )
    assert names.overlay_path == "/var/lib/libvirt/images/vm4-22_3081-v5.qcow2"
    assert names.master_reference_xml.startswith("/var/lib/libvirt/images/")


def test_load_names_use_short_name_and_computer_id(reservation):
    """The computer part is the short host name; a 49+ char short name uses the id."""
    long_label = "d" * 49
    names = LoadNames.for_reservation(
        reservation(computer={"hostname": f"{long_label}.example.org", "id": 77}),
        datastore_path="/ds",
        vm_path="/vp",
        xml_dir="/x",
    )
    assert names.computer == long_label
    assert names.domain == "77"
    assert names.base == f"{long_label}_3081-v5"
