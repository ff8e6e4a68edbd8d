"""`vclvirt inventory from-vcl` against VCL's tables in the test bed's real MariaDB."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.integration.vcl_schema import (
    MARIADB_PASSWORD_FILE,
    MARIADB_PORT,
    MARIADB_SOCKET,
    MARIADB_USER,
    password,
    vcl_database,
)
from vclvirt.config.inventory import load_inventory

DATABASE = f"vcl_inventory_{os.getpid()}"

ROWS = [
    # profiles: the stock KVM one, a KVM one with a repository, the stock VMware NFS one
    "INSERT INTO vmprofile (id, profilename, imageid, repositorypath, repositoryimagetypeid,"
    " datastorepath, datastoreimagetypeid, vmpath, virtualswitch0, virtualswitch1, vmdisk)"
    " VALUES (1, 'KVM - local storage', 1, NULL, 7, '/var/lib/libvirt/images', 7,"
    " '/var/lib/libvirt/images', 'br0', 'br1', 'dedicated'),"
    " (2, 'KVM - repository', 1, '/mnt/vcl-repository', 7, '/var/lib/vclvirt/masters', 7,"
    " '/var/lib/vclvirt/vms', 'vcl-private', 'vcl-public', 'dedicated'),"
    " (3, 'VMware ESXi - network storage', 1, NULL, 1, 'nfs-datastore', 6, 'nfs-datastore',"
    " 'Private', 'Public', 'shared')",
    # host computers (one deleted) and their VMs
    "INSERT INTO computer (id, hostname, IPaddress, type, provisioningid, deleted, datedeleted,"
    " vmhostid) VALUES"
    " (10, 'kvm01.lab.example', '10.0.0.10', 'blade', 1, 0, '0000-00-00 00:00:00', NULL),"
    " (11, 'kvm02.lab.example', '10.0.0.11', 'blade', 1, 0, '0000-00-00 00:00:00', NULL),"
    " (12, 'esx01.lab.example', '10.0.0.12', 'blade', 1, 0, '0000-00-00 00:00:00', NULL),"
    " (13, 'kvm-old.lab.example', '10.0.0.13', 'blade', 1, 1, '2024-01-01 00:00:00', NULL),"
    " (20, 'vm-a1', '10.1.0.20', 'virtualmachine', 9, 0, '0000-00-00 00:00:00', 1),"
    " (21, 'vm-b1', '10.1.0.21', 'virtualmachine', 9, 0, '0000-00-00 00:00:00', 2),"
    " (22, 'vm-e1', '10.1.0.22', 'virtualmachine', 7, 0, '0000-00-00 00:00:00', 3)",
    "INSERT INTO vmhost (id, computerid, vmprofileid) VALUES (1, 10, 1), (2, 11, 2), (3, 12, 3),"
    " (4, 13, 1)",
    # mn1 controls the KVM VMs, mn2 the VMware one (resource groups 100/101 and 200/201)
    "INSERT INTO managementnode (id, IPaddress, hostname, availablenetworks) VALUES"
    " (1, '10.0.0.1', 'mn1.lab.example', ''), (2, '10.0.0.2', 'mn2.lab.example', '')",
    "INSERT INTO resource (id, resourcetypeid, subid) VALUES (1, 12, 20), (2, 12, 21),"
    " (3, 12, 22), (4, 16, 1), (5, 16, 2)",
    "INSERT INTO resourcegroupmembers (resourceid, resourcegroupid) VALUES (1, 100), (2, 100),"
    " (3, 101), (4, 200), (5, 201)",
    "INSERT INTO resourcemap (resourcegroupid1, resourcetypeid1, resourcegroupid2,"
    " resourcetypeid2) VALUES (200, 16, 100, 12), (201, 16, 101, 12)",
]


@pytest.fixture(scope="module")
def vcl_db(testbed: Path) -> Iterator[str]:
    """VCL's tables with two KVM hosts, one VMware host and one deleted host."""
    with vcl_database(DATABASE) as connection:
        with connection.cursor() as cursor:
            for statement in ROWS:
                cursor.execute(statement)
        yield DATABASE


def from_vcl(*args: str, database: str | None = None) -> subprocess.CompletedProcess[str]:
    url = database or f"mysql://{MARIADB_USER}@127.0.0.1:{MARIADB_PORT}/{DATABASE}"
    argv = [sys.executable, "-m", "vclvirt", "inventory", "from-vcl", "--database", url]
    argv += ["--key-file", "/etc/vclvirt/id_ed25519", "--known-hosts", "/etc/vclvirt/known_hosts"]
    if database is None:
        argv += ["--password-file", str(MARIADB_PASSWORD_FILE)]
    return subprocess.run(
        [*argv, *args], capture_output=True, text=True, cwd=ROOT, timeout=60, check=False
    )


def read_back(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "inventory.toml"
    path.write_text(text)
    return load_inventory(path)


def test_two_kvm_hosts_of_a_management_node(vcl_db, tmp_path):
    """mn1's two VM hosts, with their profiles' paths and switches; vclvirt's parser reads it."""
    done = from_vcl("--management-node", "mn1.lab.example")
    assert done.returncode == 0, done.stderr
    inventory = read_back(tmp_path, done.stdout)
    assert sorted(inventory.hosts) == ["kvm01", "kvm02"]
    kvm01, kvm02 = inventory.host("kvm01"), inventory.host("kvm02")
    assert (kvm01.address, kvm01.port, kvm01.user) == ("kvm01.lab.example", 22, "root")
    assert str(kvm01.key_file) == "/etc/vclvirt/id_ed25519"
    assert str(kvm01.known_hosts) == "/etc/vclvirt/known_hosts"
    assert kvm01.datastore_path == kvm01.vm_path == "/var/lib/libvirt/images"
    assert kvm01.repository_path is None
    assert (kvm01.private_switch, kvm01.public_switch) == ("br0", "br1")
    assert kvm02.datastore_path == "/var/lib/vclvirt/masters"
    assert kvm02.vm_path == "/var/lib/vclvirt/vms"
    assert kvm02.repository_path == "/mnt/vcl-repository"
    assert (kvm02.private_switch, kvm02.public_switch) == ("vcl-private", "vcl-public")
    assert kvm01.domain_type == "kvm" and kvm01.transport == "ssh"
    assert "KVM - repository" in done.stdout  # each table says where it came from
    assert password() not in done.stdout + done.stderr


def test_options_reach_every_host(vcl_db, tmp_path):
    """SSH user and port, domain type and concurrency come from the options."""
    done = from_vcl(
        "--management-node",
        "mn1",  # the short name is enough
        "--ssh-user",
        "vclvirt",
        "--ssh-port",
        "2222",
        "--domain-type",
        "auto",
        "--max-concurrent-loads",
        "4",
    )
    assert done.returncode == 0, done.stderr
    for host in read_back(tmp_path, done.stdout).hosts.values():
        assert (host.user, host.port, host.domain_type, host.max_concurrent_loads) == (
            "vclvirt",
            2222,
            "auto",
            4,
        )


def test_unsupported_host_is_a_clear_error_and_prints_nothing(vcl_db):
    """All hosts: the VMware host on shared NFS disks fails the run with every reason."""
    done = from_vcl()
    assert done.returncode == 2
    assert done.stdout == ""
    assert "esx01.lab.example" in done.stderr
    assert "vmdisk is 'shared'" in done.stderr
    assert "datastore image type is 'vmdk'" in done.stderr
    assert "vmprofile.datastorepath 'nfs-datastore'" in done.stderr
    assert "--skip-unsupported" in done.stderr
    assert "kvm01" not in done.stderr  # the good hosts are not blamed


def test_skip_unsupported_leaves_it_out_and_says_so(vcl_db, tmp_path):
    """--skip-unsupported prints the KVM hosts and names the one left out; deleted hosts
    never appear."""
    done = from_vcl("--skip-unsupported")
    assert done.returncode == 0, done.stderr
    assert sorted(read_back(tmp_path, done.stdout).hosts) == ["kvm01", "kvm02"]
    assert "# left out: VM host esx01.lab.example" in done.stdout
    assert "skipped: VM host esx01.lab.example" in done.stderr
    assert "kvm-old" not in done.stdout + done.stderr


def test_management_node_with_only_unsupported_hosts(vcl_db):
    """mn2 serves only the VMware host: an error, nothing printed."""
    done = from_vcl("--management-node", "mn2")
    assert done.returncode == 2 and done.stdout == ""
    assert "esx01" in done.stderr


def test_unknown_management_node_lists_the_known_ones(vcl_db):
    done = from_vcl("--management-node", "mn9")
    assert done.returncode == 2
    assert "no management node named 'mn9'" in done.stderr
    assert "mn1.lab.example, mn2.lab.example" in done.stderr


def test_socket_url(vcl_db, tmp_path):
    """The local socket form of the URL (root logs in by unix_socket authentication)."""
    done = from_vcl(
        "--management-node",
        "mn1",
        database=f"mysql://root@localhost/{DATABASE}?unix_socket={MARIADB_SOCKET}",
    )
    assert done.returncode == 0, done.stderr
    assert sorted(read_back(tmp_path, done.stdout).hosts) == ["kvm01", "kvm02"]


def test_wrong_password_and_unreachable_database(vcl_db, tmp_path):
    """Refused or unreachable: exit 1 naming the database, never echoing the password."""
    secret = "not-the-password-4711"
    refused = from_vcl(
        database=f"mysql://{MARIADB_USER}:{secret}@127.0.0.1:{MARIADB_PORT}/{DATABASE}"
    )
    assert refused.returncode == 1
    assert f"cannot connect to VCL's database {DATABASE} on 127.0.0.1:{MARIADB_PORT}" in (
        refused.stderr
    )
    assert secret not in refused.stdout + refused.stderr
    with __import__("socket").socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    gone = from_vcl(database=f"mysql://u:p@127.0.0.1:{closed}/vcl")
    assert gone.returncode == 1 and "cannot connect" in gone.stderr
