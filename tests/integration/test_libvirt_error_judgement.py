"""libvirt's errors judged at the call, against node-a's real libvirtd over qemu+libssh:
a domain QEMU refuses to start (a disk it cannot open) is permanent, though libvirt calls
it an internal error; a connection whose SSH session died is transient, even in a call
that judges its internal errors permanent."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import libvirt
import pytest

from vclvirt.errors import HypervisorError, HypervisorUnavailable
from vclvirt.hypervisor import domains


def domain_xml(name: str, disk: Path) -> str:
    return (
        f"<domain type='qemu'><name>{name}</name><memory>65536</memory>"
        "<os><type>hvm</type></os><devices>"
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='{disk}'/><target dev='vda' bus='virtio'/></disk>"
        "</devices></domain>"
    )


@pytest.fixture
def conn(inventory: Any) -> Any:
    connection = libvirt.open(inventory.host("node-a").effective_libvirt_uri)
    yield connection
    with contextlib.suppress(libvirt.libvirtError):  # its session was killed
        connection.close()


def test_a_disk_qemu_cannot_open_fails_the_start_permanently(conn, tmp_path):
    """QEMU exits at start ("Image is not in qcow2 format"): libvirt reports an internal
    error, domains.start judges it permanent."""
    disk = tmp_path / "not-a-qcow2.qcow2"
    disk.write_bytes(b"not an image" * 100)
    domain = conn.defineXML(domain_xml(f"vclvirt-test-judge-{uuid.uuid4().hex[:8]}", disk))
    try:
        with pytest.raises(HypervisorError) as caught:
            domains.start(domain, "node-a")
    finally:
        domain.undefine()
    assert type(caught.value) is HypervisorError
    assert not caught.value.transient
    assert "qcow2" in caught.value.message


def test_a_connection_whose_session_died_is_transient_even_in_a_define(conn, testbed, tmp_path):
    """The SSH session under the connection is killed: define (which judges libvirt's
    internal errors permanent) fails transiently, so the step is retried."""
    sshd = (testbed / "sshd/node-a/sshd.pid").read_text().strip()
    newest = subprocess.run(["pgrep", "-n", "-P", sshd], capture_output=True, text=True)
    os.kill(int(newest.stdout), signal.SIGKILL)  # this test's session: the newest one

    with pytest.raises(HypervisorUnavailable) as caught:
        domains.define(conn, domain_xml("vclvirt-test-judge-never", tmp_path / "d"), "node-a")
    assert caught.value.transient
    assert caught.value.code == "LIBVIRT_UNAVAILABLE"
