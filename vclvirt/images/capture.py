"""Capture: flatten a domain's disk into a new master, then publish it to the repository.

Each copy is written under a temporary name and renamed only after qemu-img has
verified it, so nothing is reported as captured before it is whole (VCL renamed first). The
new master is in the datastore's format (qcow2) whatever the disk was (qcow2, raw,
vmdk: the format libvirt opens it with), as the reference converts to its datastore
type. The repository copy is made where the repository is: on the host, or on the
worker's machine (repository_location = "worker"), then fetched over SSH.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import tempfile
from typing import Any

from vclvirt.config.inventory import HostConfig
from vclvirt.errors import CommandFailed
from vclvirt.hypervisor.drivers import HypervisorDriver
from vclvirt.hypervisor.drivers.kvm import KvmDriver
from vclvirt.images.master import (
    MASTER_FORMAT,
    driver_timeout,
    repository_node,
    write_verified_copy,
)
from vclvirt.images.space import disk_full_judged
from vclvirt.node.host_lock import host_lock
from vclvirt.node.transport import Transport, path_exists, write_file

REPOSITORY_COMPAT = "0.10"  # qcow2 v2 in the repository, readable by old QEMU (VCL-911)
# A file on stdout and its BLAKE2b (b2sum's) on stderr, summed as it is read.
_SEND_SUMMED = 'exec < "$1" || exit 66; { tee /dev/fd/3 | b2sum >&2; } 3>&1'


def flatten_to_master(
    node: Transport,
    driver: HypervisorDriver,
    host: HostConfig,
    disk: str,
    image_name: str,
    reference_xml: str,
    *,
    disk_format: str = MASTER_FORMAT,
) -> dict[str, Any]:
    """`<datastore>/<image>.qcow2`: the disk (of `disk_format`, as the domain opens it) with
    its backing chain, as one standalone file."""
    master = posixpath.join(host.datastore_path, f"{image_name}.{MASTER_FORMAT}")
    with (
        disk_full_judged(node, master),
        host_lock(
            node,
            posixpath.join(host.datastore_path, f".{image_name}.lock"),
            wait=driver_timeout(driver),
        ),
    ):
        # The reference XML first: whoever finds the master finds its XML too.
        write_file(
            node, posixpath.join(host.datastore_path, f"{image_name}.xml"), reference_xml.encode()
        )
        if path_exists(node, master):  # an earlier attempt of this capture got this far
            driver.verify(master, MASTER_FORMAT)
        else:
            write_verified_copy(node, driver, disk, master, source_format=disk_format)
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
    where = repository_node(node, host)
    with disk_full_judged(where, target):
        where.run(["mkdir", "-p", "--", directory])
        with host_lock(
            where, posixpath.join(directory, f".{image_name}.lock"), wait=driver_timeout(driver)
        ):
            xml = reference_xml.encode()
            write_file(where, posixpath.join(directory, f"{image_name}.xml"), xml)
            if where is not node:
                _fetch_into_repository(node, where, host, master, target, driver_timeout(driver))
            elif path_exists(node, target):
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


def _fetch_into_repository(
    node: Transport,
    here: Transport,
    host: HostConfig,
    master: str,
    target: str,
    timeout: float,
) -> None:
    """The host's master, fetched over its SSH connection (never held in memory) into a
    scratch file beside the target, its BLAKE2b compared with the host's sum of what it
    sent, then converted to a verified repository copy."""
    local_driver = KvmDriver(host, here, copy_timeout=timeout)
    if path_exists(here, target):  # an earlier attempt of this capture got this far
        local_driver.verify(target, MASTER_FORMAT)
        return
    directory = posixpath.dirname(target)
    with tempfile.TemporaryDirectory(prefix=".vclvirt-fetch-", dir=directory) as scratch:
        fetched = os.path.join(scratch, "master.qcow2")
        digest = hashlib.blake2b()
        with open(fetched, "wb") as sink:

            def write(chunk: bytes) -> None:
                sink.write(chunk)
                digest.update(chunk)

            sent = node.run(
                ["sh", "-c", _SEND_SUMMED, "sh", master],
                timeout=timeout,
                on_output=write,
                keep_output=False,
            )
        host_sum = sent.stderr.decode(errors="replace").split(" ", 1)[0]
        if host_sum != digest.hexdigest():
            raise CommandFailed(
                f"{master} arrived damaged from {host.name}: BLAKE2b {digest.hexdigest()} "
                f"here, {host_sum or '(none)'} on the host; nothing was published",
                host=host.name,
                hint="Retry; if it recurs, check the network path and both machines' memory",
            )
        write_verified_copy(
            here,
            local_driver,
            fetched,
            target,
            source_format=MASTER_FORMAT,
            compat=REPOSITORY_COMPAT,
        )


def sizes(driver: HypervisorDriver, path: str) -> dict[str, int]:
    """On-disk and virtual size of an image, in bytes."""
    info = driver.image_info(path)
    return {
        "size_bytes": int(str(info.get("actual-size", 0))),
        "virtual_size_bytes": int(str(info.get("virtual-size", 0))),
    }
