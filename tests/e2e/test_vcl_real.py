"""contrib/vcl's module inside Apache VCL 2.5.1's own code (tests/e2e/vcl_real.py): VCL's
DataStructure built from VCL's schema in MariaDB by get_request_info, VCL::Module::new, and
the module's methods called as vcld's state modules call them, against a real `vclvirt api`,
real workers and libvirt. What VCL's objects do differently from the stand-in of
test_vcl_module.py (NULL columns, the private-IP warning, image.pm's names) is tested here.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, wait_for
from tests.e2e import vcl_real
from tests.e2e.vcl_helpers import ApiServer, free_port
from tests.e2e.vcl_real import Computer
from vclvirt import dispatch

OLD_PERL = ROOT / "tests" / "e2e" / "vcl_perl516"  # HTTP::Tiny as Perl 5.16 ships it


def reload_request(
    db: Any, request_id: int, computer: Computer, image: str, state: str = "reload"
) -> int:
    """A request for `image` (its own image row, revision 0) on the computer; returns the
    reservation id."""
    vcl_real.add_computer(db, computer)
    image_id = 700 + computer.id % 100
    revision_ids = vcl_real.add_image(db, image_id, image, f"Real {image}", {0: image})
    vcl_real.add_request(
        db,
        request_id,
        request_id + 1000,
        computer_id=computer.id,
        image_id=image_id,
        imagerevision_id=revision_ids[0],
        state=state,
    )
    return request_id + 1000


def test_null_eth1_mac_and_private_ip_inside_vcl(site, db, start_worker, cleanup_computers):
    """eth1 MAC and private IP NULL: every field vclvirt gets is the site's (VCL's getters
    give an empty list for NULL, which used to shift the reservation's keys), the public NIC
    gets a generated MAC (kept for the module object's life, set in VCL's data), and asking
    for the private IP writes no WARNING to vcld.log."""
    cleanup_computers.append("vcl-real-null")
    start_worker("node-a")
    computer = Computer(111, "vcl-real-null.lab.test", "52:54:00:aa:6f:01", None)
    reservation_id = reload_request(db, 4111, computer, "linux-VclRealNull-711-v0")

    run = site.call(4111, reservation_id, [["node_status"], ["power_status"]])

    assert run.result("node_status") == "RELOAD", run  # no domain yet
    assert run.result("power_status") is None
    sent = dispatch.status(reservation_id).reservation
    assert sent["host"] == "node-a"
    assert sent["computer"]["hostname"] == "vcl-real-null.lab.test"
    assert sent["computer"]["eth0_mac"] == "52:54:00:aa:6f:01"
    assert sent["computer"]["eth1_mac"].startswith("52:54:")
    assert sent["computer"]["private_ip"] is None
    assert sent["image"]["name"] == "linux-VclRealNull-711-v0"
    assert sent["image"]["id"] == 711 and sent["image"]["revision_id"] == 71100
    # the larger of image.minram (64) and OS.minram (vcl.sql: 512 for vmwarelinux)
    assert sent["image"]["os_name"] == "vmwarelinux" and sent["image"]["min_ram_mb"] == 512
    assert run.warnings() == [], run
    assert not [line for line in run.log if "private IP address of" in line]


def test_computer_without_vm_host_is_refused_before_vclvirt_is_asked(site, db):
    """vmhostid NULL: the module's own check names the cause; nothing is sent to vclvirt."""
    computer = Computer(112, "vcl-real-nohost.lab.test", "52:54:00:aa:70:01", None, vmhost=False)
    reservation_id = reload_request(db, 4112, computer, "linux-VclRealNoHost-712-v0")

    run = site.call(4112, reservation_id, [["node_status"], ["power_off"]])

    assert run.result("node_status") is None and run.result("power_off") is None, run
    assert any("is the computer assigned to a VM host?" in w for w in run.warnings()), run
    assert dispatch.status(reservation_id) is None
    assert not [line for line in run.log if "HASH(0x" in line]


@pytest.fixture
def tls_api(api: ApiServer, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The API behind TLS (ncat with a self-signed certificate for 127.0.0.1)."""
    cert, key = tmp_path / "api.crt", tmp_path / "api.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    api_port = api.url.rsplit(":", 1)[1]
    proxy = subprocess.Popen(
        [
            shutil.which("ncat") or "ncat",
            "--ssl",
            "--ssl-cert",
            str(cert),
            "--ssl-key",
            str(key),
            "-l",
            "-k",
            "127.0.0.1",
            str(port),
            "--exec",
            f"{shutil.which('ncat')} 127.0.0.1 {api_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: (
                subprocess.run(
                    ["openssl", "s_client", "-connect", f"127.0.0.1:{port}"],
                    input="",
                    capture_output=True,
                    text=True,
                    check=False,
                ).returncode
                == 0
            ),
            30,
            "the TLS proxy to listen",
        )
        yield f"https://127.0.0.1:{port}", cert
    finally:
        proxy.terminate()
        proxy.wait(10)


def test_https_on_the_http_tiny_of_perl_5_16(site, db, tls_api, start_worker):
    """HTTP::Tiny 0.017 (no can_ssl, no verify_SSL): the module starts and talks https; the
    certificate is checked against ca_file, and one that is not trusted is refused."""
    url, cert = tls_api
    start_worker("node-a")
    computer = Computer(113, "vcl-real-tls.lab.test", "52:54:00:aa:71:01", "52:54:00:bb:71:01")
    reservation_id = reload_request(db, 4113, computer, "linux-VclRealTls-713-v0")

    site.write(api_url=url, ca_file=cert, operation_timeout=60)
    trusted = site.call(4113, reservation_id, [["node_status"]], perl5lib=[OLD_PERL])
    assert trusted.created, trusted
    assert trusted.result("node_status") == "RELOAD", trusted
    assert dispatch.status(reservation_id) is not None

    site.write(api_url=url, image_query_timeout=3)
    untrusted = site.call(4113, reservation_id, [["does_image_exist"]], perl5lib=[OLD_PERL])
    assert untrusted.created, untrusted
    assert untrusted.result("does_image_exist") is None
    assert any("cannot reach vclvirt's API" in w for w in untrusted.warnings()), untrusted

    site.write(api_url=url, verify_tls=0, operation_timeout=60)
    unchecked = site.call(4113, reservation_id, [["node_status"]], perl5lib=[OLD_PERL])
    assert unchecked.result("node_status") == "RELOAD", unchecked


@pytest.mark.slow  # boots the test guest
def test_every_entry_point_through_vcls_objects(
    site, db, testbed, guest_image, start_worker, cleanup_computers
):
    """load, node_status, the power calls, unload, the image queries and retrieve_image on
    VCL's DataStructure for a computer with NULL eth1 MAC and private IP: what vcld
    expects of each, and the load log written in VCL's computerloadlog."""
    cleanup_computers.append("vcl-real-all")
    start_worker("node-a")
    computer = Computer(114, "vcl-real-all.lab.test", "52:54:00:aa:72:01", None)
    vcl_real.add_computer(db, computer)
    revisions = vcl_real.add_image(db, 900, guest_image, "Real Guest", {0: guest_image})
    vcl_real.add_request(
        db,
        4114,
        5114,
        computer_id=114,
        image_id=900,
        imagerevision_id=revisions[0],
        state="reload",
    )

    loaded = site.call(4114, 5114, [["load"]])
    assert loaded.result("load") == 1, loaded
    names = [row["name"] for row in vcl_real.loadlog(db, 5114)]
    assert names == ["startload", "transfervm", "vmsetupconfig", "startvm"], names

    master = testbed / f"hosts/node-a/images/{guest_image}.qcow2"
    run = site.call(
        4114,
        5114,
        [
            ["node_status"],
            ["power_status"],
            ["power_off"],
            ["power_status"],
            ["power_on"],
            ["power_reset"],
            ["does_image_exist", guest_image],
            ["does_image_exist", "linux-VclRealNowhere-714-v0"],
            ["get_image_size_bytes", guest_image],
            ["get_image_size", guest_image],
            ["retrieve_image", guest_image],
            ["unload"],
            ["power_status"],
        ],
    )
    values = [(e["call"], e["value"]) for e in run.events if "call" in e]
    assert values == [
        ("node_status", "READY"),
        ("power_status", "on"),
        ("power_off", 1),
        ("power_status", "off"),
        ("power_on", 1),
        ("power_reset", 1),
        ("does_image_exist", 1),
        ("does_image_exist", 0),
        ("get_image_size_bytes", master.stat().st_blocks * 512),
        ("get_image_size", master.stat().st_blocks * 512 // 2**20),
        ("retrieve_image", 0),
        ("unload", 1),
        ("power_status", None),
    ], run
    assert vcl_real.module_warnings(run.log) == [
        f"vclvirt: {guest_image} is not on VM host node-a nor in its repository; vclvirt does"
        " not copy images from other management nodes: put it in the repository"
    ]
