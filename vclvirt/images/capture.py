"""Capture: flatten a domain's disk into a new master, then publish it to the repository.

Each copy is written under a temporary name and renamed only after qemu-img has
verified it, so nothing is reported as captured before it is whole (fixes D7).
"""

from __future__ import annotations

import posixpath
from typing import Any

from vclvirt.config.inventory import HostConfig
from vclvirt.hypervisor.drivers import HypervisorDriver
from vclvirt.images.master import MASTER_FORMAT, driver_timeout, write_verified_copy
from vclvirt.node.host_lock import host_lock
from vclvirt.node.transport import Transport, path_exists, write_file

REPOSITORY_COMPAT = "0.10"  # qcow2 v2 in the repository, readable by old QEMU (VCL-911)


def flatten_to_master(
    node: Transport,
    driver: HypervisorDriver,
    host: HostConfig,
    disk: str,
    image_name: str,
    reference_xml: str,
) -> dict[str, Any]:
    """`<datastore>/<image>.qcow2`: the disk with its backing chain, as one standalone file."""
    master = posixpath.join(host.datastore_path, f"{image_name}.{MASTER_FORMAT}")
    with host_lock(
        node,
        posixpath.join(host.datastore_path, f".{image_name}.lock"),
        wait=driver_timeout(driver),
    ):
        # The reference XML first: whoever finds the master finds its XML too.
        write_file(
            node, posixpath.join(host.datastore_path, f"{image_name}.xml"), reference_xml.encode()
        )
        if path_exists(node, master):  # an earlier attempt of this capture got this far
            driver.verify(master, MASTER_FORMAT)
        else:
            write_verified_copy(node, driver, disk, master, source_format="qcow2")
    return {"master": master, **sizes(driver, master)}


def publish_to_repository(
    node: Transport,
    driver: HypervisorDriver,
    host: HostConfig,
    master: str,
    image_name: str,
    reference_xml: str,
) -> str | None:
    """`<repository>/<image>/<image>.qcow2` with its reference XML; None without a repository."""
    if not host.repository_path:
        return None
    directory = posixpath.join(host.repository_path, image_name)
    target = posixpath.join(directory, f"{image_name}.{MASTER_FORMAT}")
    node.run(["mkdir", "-p", "--", directory])
    with host_lock(
        node, posixpath.join(directory, f".{image_name}.lock"), wait=driver_timeout(driver)
    ):
        write_file(node, posixpath.join(directory, f"{image_name}.xml"), reference_xml.encode())
        if path_exists(node, target):
            driver.verify(target, MASTER_FORMAT)
        else:
            write_verified_copy(
                node,
                driver,
                master,
                target,
                source_format=MASTER_FORMAT,
                compat=REPOSITORY_COMPAT,
            )
    return target


def sizes(driver: HypervisorDriver, path: str) -> dict[str, int]:
    """On-disk and virtual size of an image, in bytes."""
    info = driver.image_info(path)
    return {
        "size_bytes": int(str(info.get("actual-size", 0))),
        "virtual_size_bytes": int(str(info.get("virtual-size", 0))),
    }
