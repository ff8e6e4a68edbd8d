"""VCL's VM host rows as inventory tables (vclvirt.vcl.inventory) and the database URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vclvirt.config.inventory import load_inventory
from vclvirt.errors import InvalidInput, VclProfileUnsupported
from vclvirt.vcl.database import parse_database_url
from vclvirt.vcl.inventory import HostDefaults, host_entry, render_inventory

DEFAULTS = HostDefaults(key_file=Path("/etc/vclvirt/id_ed25519"), known_hosts=Path("/etc/kh"))


def kvm_row(**changes: Any) -> dict[str, Any]:
    """The stock 'KVM - local storage' profile on host kvm01 (mysql/vcl.sql seed values)."""
    row = {
        "vmhost_id": 3,
        "computer_id": 12,
        "hostname": "kvm01.lab.example",
        "ip_address": "10.0.0.11",
        "profile_id": 5,
        "profile": "KVM - local storage",
        "datastorepath": "/var/lib/libvirt/images",
        "vmpath": "/var/lib/libvirt/images",
        "repositorypath": None,
        "virtualswitch0": "br0",
        "virtualswitch1": "br1",
        "virtualswitch2": None,
        "virtualswitch3": None,
        "vmdisk": "dedicated",
        "resourcepath": None,
        "folderpath": None,
        "datastore_type": "qcow2",
        "repository_type": "qcow2",
    }
    row.update(changes)
    return row


def test_stock_kvm_profile_becomes_a_host_table():
    """Paths and switches come from the profile, key/known_hosts/user/port from the defaults."""
    entry = host_entry(kvm_row(), DEFAULTS)
    assert entry.name == "kvm01"
    assert entry.table == {
        "address": "kvm01.lab.example",
        "port": 22,
        "user": "root",
        "key_file": "/etc/vclvirt/id_ed25519",
        "known_hosts": "/etc/kh",
        "domain_type": "kvm",
        "datastore_path": "/var/lib/libvirt/images",
        "max_concurrent_loads": 2,
        "vm_path": "/var/lib/libvirt/images",
        "private_switch": "br0",
        "public_switch": "br1",
    }
    assert "vmhost id 3" in entry.comment and "KVM - local storage" in entry.comment


def test_repository_and_empty_optional_columns():
    """A repository path is kept; an empty vmpath or switch is left out (vclvirt's defaults)."""
    entry = host_entry(
        kvm_row(repositorypath="/mnt/repository", vmpath="", virtualswitch1=""), DEFAULTS
    )
    assert entry.table["repository_path"] == "/mnt/repository"
    assert "vm_path" not in entry.table and "public_switch" not in entry.table


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"vmdisk": "shared"}, "vmdisk is 'shared'"),
        ({"resourcepath": "/Datacenter/Cluster/Pool"}, "resourcepath is set"),
        ({"folderpath": "/vms"}, "folderpath is set"),
        ({"datastore_type": "vmdk"}, "datastore image type is 'vmdk'"),
        ({"repositorypath": "/mnt/repo", "repository_type": "vmdk"}, "repository image type"),
        ({"virtualswitch2": "VMnet3"}, "virtualswitch2 is set"),
        ({"virtualswitch3": "VMnet4"}, "virtualswitch3 is set"),
        ({"datastorepath": "datastore1"}, "vmprofile.datastorepath 'datastore1'"),  # VMware
        ({"vmpath": "/var/lib/../etc"}, "vmprofile.vmpath"),
        ({"virtualswitch0": "br0; rm -rf /"}, "vmprofile.virtualswitch0"),
        ({"hostname": "kvm_01.lab"}, "computer.hostname 'kvm_01.lab'"),
        ({"hostname": "-kvm01.lab"}, "not a valid inventory host name"),
    ],
)
def test_unsupported_profiles_are_refused_with_the_reason(changes, reason):
    """Shared disks, VMware settings, other image types, extra NICs and unsafe values fail."""
    with pytest.raises(VclProfileUnsupported) as raised:
        host_entry(kvm_row(**changes), DEFAULTS)
    assert reason in raised.value.message
    assert "vmhost id 3" in raised.value.message
    assert raised.value.code == "VCL_PROFILE_UNSUPPORTED"


def test_every_reason_is_named_at_once():
    """A VMware profile lists all of its problems, not only the first."""
    with pytest.raises(VclProfileUnsupported) as raised:
        host_entry(kvm_row(vmdisk="shared", datastore_type="vmdk", virtualswitch2="x"), DEFAULTS)
    assert raised.value.message.count(";") >= 2


def test_rendered_inventory_is_read_back_by_vclvirt(tmp_path):
    """The TOML loads with vclvirt's own inventory parser, comments and all."""
    entries = [
        host_entry(kvm_row(), DEFAULTS),
        host_entry(
            kvm_row(
                vmhost_id=4,
                hostname="kvm02.lab.example",
                profile='odd "name"\nwith a newline',
                repositorypath="/mnt/repository",
            ),
            DEFAULTS,
        ),
    ]
    path = tmp_path / "inventory.toml"
    path.write_text(render_inventory(entries, ["generated\nfor a test"]))
    inventory = load_inventory(path)
    assert sorted(inventory.hosts) == ["kvm01", "kvm02"]
    assert inventory.host("kvm02").repository_path == "/mnt/repository"
    assert inventory.host("kvm01").private_switch == "br0"


def test_database_url_forms():
    """TCP and socket URLs; the password is never part of what is shown."""
    tcp = parse_database_url("mysql://vcl:s%40cret@db.example:3307/vcl")
    assert (tcp.user, tcp.password, tcp.host, tcp.port, tcp.database) == (
        "vcl",
        "s@cret",
        "db.example",
        3307,
        "vcl",
    )
    assert "s@cret" not in tcp.display and "db.example:3307" in tcp.display
    sock = parse_database_url("mysql://root@localhost/vcl?unix_socket=/run/mysqld/mysqld.sock")
    assert sock.unix_socket == "/run/mysqld/mysqld.sock" and sock.password is None
    assert parse_database_url("mariadb://u@h/vcl").port == 3306


@pytest.mark.parametrize(
    "url",
    [
        "postgres://u@h/vcl",
        "mysql://h/vcl",
        "mysql://u@h/",
        "mysql://u@h/vcl/extra",
        "mysql://u@h/vcl?ssl=1",
        "mysql://u@h:notaport/vcl",
    ],
)
def test_bad_database_urls_name_the_option(url):
    """Wrong scheme, no user or database, unknown parameters: an error about --database."""
    with pytest.raises(InvalidInput) as raised:
        parse_database_url(url)
    assert "--database" in raised.value.message
