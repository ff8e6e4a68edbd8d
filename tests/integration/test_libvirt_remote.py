"""libvirt over qemu+libssh to node-a: connection caching, error classes, deleting domains."""

from __future__ import annotations

import platform
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.conftest import SSH_PORT_A, SSH_PORT_B, make_reservation
from tests.local_host import server_over
from vclvirt.errors import HostKeyRejected, HypervisorUnavailable
from vclvirt.hypervisor.connection import connect, forget
from vclvirt.models import parse_reservation
from vclvirt.node.ssh import SSHTransport


@pytest.fixture
def host(inventory: Any) -> Any:
    return inventory.host("node-a")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def known_hosts_line(testbed: Path, port: int) -> str:
    """The test bed's known_hosts line for the sshd on this port."""
    for line in (testbed / "ssh" / "known_hosts").read_text().splitlines():
        if line.startswith(f"[127.0.0.1]:{port} "):
            return line
    raise AssertionError(f"no known_hosts line for port {port}")


@pytest.fixture
def variant(host: Any) -> Iterator[Any]:
    """Make node-a variants under their own names, so the cached good connection is not reused."""
    made: list[Any] = []

    def make(**update: Any) -> Any:
        config = host.model_copy(update={"name": f"node-a-variant{len(made)}", **update})
        made.append(config)
        return config

    yield make
    for config in made:
        forget(config)


PROBE_XML = """<domain type="qemu"><name>tests-remote-probe</name><memory unit="MiB">64</memory>
<os><type>hvm</type></os></domain>"""


def test_connect_over_libssh_is_cached_per_process(host: Any) -> None:
    """connect() reaches node-a's libvirtd over qemu+libssh (a domain defined there directly
    is listed through it, with its UUID, and gone once undefined) and returns one
    connection twice."""
    assert host.effective_libvirt_uri.startswith(
        f"qemu+libssh://root@127.0.0.1:{SSH_PORT_A}/system?"
    )
    conn = connect(host)
    assert connect(host) is conn
    assert conn.isAlive()
    assert conn.getURI().startswith("qemu+libssh://")
    direct = libvirt.open("qemu:///system")
    try:
        probe = direct.defineXML(PROBE_XML)
        try:
            listed = {d.name(): d.UUIDString() for d in conn.listAllDomains(0)}
            assert listed.get("tests-remote-probe") == probe.UUIDString()
        finally:
            probe.undefine()
        assert "tests-remote-probe" not in {d.name() for d in conn.listAllDomains(0)}
    finally:
        direct.close()


def test_wrong_host_key_raises_host_key_rejected(
    variant: Any, testbed: Path, tmp_path: Path
) -> None:
    """known_hosts with another key for node-a: HostKeyRejected, permanent."""
    node_b_key = known_hosts_line(testbed, SSH_PORT_B).split(" ", 1)[1]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{SSH_PORT_A} {node_b_key}\n")
    with pytest.raises(HostKeyRejected) as caught:
        connect(variant(known_hosts=known_hosts))
    assert not caught.value.transient


def test_right_key_for_another_host_is_rejected(
    variant: Any, testbed: Path, tmp_path: Path
) -> None:
    """known_hosts that only knows node-a, connecting to node-b's port: HostKeyRejected."""
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(known_hosts_line(testbed, SSH_PORT_A) + "\n")
    with pytest.raises(HostKeyRejected) as caught:
        connect(variant(port=SSH_PORT_B, known_hosts=known_hosts))
    assert not caught.value.transient


def test_closed_port_raises_hypervisor_unavailable(variant: Any) -> None:
    """Nothing listening on the port: HypervisorUnavailable (transient), not a permanent error."""
    with pytest.raises(HypervisorUnavailable) as caught:
        connect(variant(port=free_port()))
    assert caught.value.transient
    assert "127.0.0.1" in str(caught.value)


# -- Host.delete_existing_domains against real domains ------------------------


def domain_xml(name: str, disks: list[str]) -> str:
    devices = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='{path}'/><target dev='vd{chr(ord('a') + i)}' bus='virtio'/></disk>"
        for i, path in enumerate(disks)
    )
    return (
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
        f"<os><type arch='{platform.machine()}'>hvm</type></os>"
        f"<devices>{devices}</devices></domain>"
    )


def qcow2(path: Path, backing: Path | None = None) -> Path:
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing is not None:
        argv += ["-b", str(backing), "-F", "qcow2"]
    subprocess.run([*argv, str(path), "16M"], check=True)
    return path


def local_domain_names() -> set[str]:
    conn = libvirt.open("qemu:///system")
    try:
        return {d.name() for d in conn.listAllDomains(0)}
    finally:
        conn.close()


@pytest.fixture
def scene(host: Any, cleanup_computers: list[str]) -> Iterator[dict[str, Any]]:
    """The computer's domain (overlay + master disk, a snapshot, an XML file) and two neighbours."""
    computer = f"itdel{uuid.uuid4().hex[:6]}"
    others = [f"{computer}x", f"{computer}-2"]
    cleanup_computers.extend([computer, *others])
    vms, datastore, xml_dir = Path(host.vm_dir), Path(host.datastore_path), Path(host.xml_dir)
    for directory in (vms, datastore, xml_dir):
        directory.mkdir(parents=True, exist_ok=True)
    master = qcow2(datastore / f"linux-{computer}-1-v0.qcow2")
    second_master = qcow2(datastore / f"linux-{computer}-2-v0.qcow2")
    files: dict[str, Path] = {}
    try:
        yield build_scene(host, computer, others, master, second_master, files)
    finally:
        for path in (master, second_master, *files.values()):
            path.unlink(missing_ok=True)


def build_scene(
    host: Any,
    computer: str,
    others: list[str],
    master: Path,
    second_master: Path,
    files: dict[str, Path],
) -> dict[str, Any]:
    """Define the three domains through node-a's remote connection; files are recorded as made."""
    vms, xml_dir = Path(host.vm_dir), Path(host.xml_dir)
    conn = connect(host)
    for name in (computer, *others):
        files[f"{name}.overlay"] = qcow2(vms / f"{name}_1-v0.qcow2", backing=master)
        files[f"{name}.xml"] = xml_dir / f"{name}_1-v0.xml"
        files[f"{name}.xml"].write_text("<domain/>\n")
        disks = [str(files[f"{name}.overlay"])]
        if name == computer:
            disks.append(str(second_master))
        conn.defineXML(domain_xml(f"{name}_Foo_1-v0", disks))
    domain = conn.lookupByName(f"{computer}_Foo_1-v0")
    # Internal qcow2 snapshot of the shut-off domain: written into both disk files.
    domain.snapshotCreateXML("<domainsnapshot><name>s1</name></domainsnapshot>", 0)
    assert [s.getName() for s in domain.listAllSnapshots(0)] == ["s1"]
    return {
        "computer": computer,
        "others": others,
        "master": master,
        "second_master": second_master,
        "files": files,
    }


def test_delete_existing_domains_removes_only_the_computers_own_things(
    host: Any, scene: dict[str, Any]
) -> None:
    """The computer's domain, snapshot, overlay and XML go; masters and neighbours stay."""
    computer, others, files = scene["computer"], scene["others"], scene["files"]
    node = SSHTransport(host, connect_timeout=10)
    try:
        server = server_over(host, node)
        reservation = parse_reservation(
            make_reservation(990001, computer, f"linux-{computer}-1-v0", image_id=1)
        )
        outcome = server.cleanup.delete_existing_domains(reservation)
    finally:
        node.close()
    assert outcome["deleted_domains"] == [f"{computer}_Foo_1-v0"]
    assert outcome["removed_files"] == [str(files[f"{computer}.overlay"])]
    names = local_domain_names()
    assert f"{computer}_Foo_1-v0" not in names
    assert {f"{other}_Foo_1-v0" for other in others} <= names
    assert not files[f"{computer}.overlay"].exists()
    assert not files[f"{computer}.xml"].exists()
    assert scene["master"].exists() and scene["second_master"].exists()
    check = subprocess.run(["qemu-img", "check", str(scene["second_master"])], check=False)
    assert check.returncode == 0
    snapshots = subprocess.run(
        ["qemu-img", "snapshot", "-l", str(scene["second_master"])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "s1" not in snapshots  # the snapshot was deleted, not only its metadata
    for other in others:
        assert files[f"{other}.overlay"].exists()
        assert files[f"{other}.xml"].exists()


def test_delete_existing_domains_twice_is_harmless(host: Any, scene: dict[str, Any]) -> None:
    """A second delete finds nothing of the computer and changes nothing else."""
    computer, others = scene["computer"], scene["others"]
    node = SSHTransport(host, connect_timeout=10)
    try:
        server = server_over(host, node)
        reservation = parse_reservation(
            make_reservation(990002, computer, f"linux-{computer}-1-v0", image_id=1)
        )
        server.cleanup.delete_existing_domains(reservation)
        again = server.cleanup.delete_existing_domains(reservation)
    finally:
        node.close()
    assert again == {"deleted_domains": [], "removed_files": []}
    assert {f"{other}_Foo_1-v0" for other in others} <= local_domain_names()
