"""A hypervisor host that is this machine (transport local, libvirt at qemu:///system),
with its directories in a test's own tmp dir: the fast way to run real provisioning
code on real files, real qemu-img and the real libvirtd."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from vclvirt.config.inventory import HostConfig
from vclvirt.hypervisor.connection import connect
from vclvirt.hypervisor.drivers import load_driver
from vclvirt.node.local import LocalTransport
from vclvirt.provisioner import Provisioner

_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._+/@-]*$")  # what the inventory accepts


def local_host(root: Path, name: str = "tests-local", **update: Any) -> HostConfig:
    """The host's datastore, vm_path, repository and XML directory under root (created)."""
    assert _SAFE_PATH.fullmatch(str(root)), f"{root} is not a path the inventory accepts"
    dirs = {key: root / key for key in ("datastore", "vms", "repository", "xml")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    fields: dict[str, Any] = {
        "name": name,
        "address": "127.0.0.1",
        "transport": "local",
        "domain_type": "qemu",
        "datastore_path": str(dirs["datastore"]),
        "vm_path": str(dirs["vms"]),
        "repository_path": str(dirs["repository"]),
        "xml_dir": str(dirs["xml"]),
    }
    return HostConfig.model_validate({**fields, **update})


def local_provisioner(host: HostConfig) -> Provisioner:
    """The Provisioner a worker would build for this host (see workers/context.py)."""
    node = LocalTransport(host.name)
    return Provisioner(host, node, load_driver(host, node), lambda: connect(host))


def qemu_img(*args: str) -> str:
    """Run the real qemu-img (through PATH) and return its stdout."""
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=True).stdout


def repository_image(host: HostConfig, name: str, size: str = "64M", data: str = "8M") -> Path:
    """`<repository>/<name>/<name>.qcow2` holding `data` bytes of the pattern 0x5a."""
    assert host.repository_path
    directory = Path(host.repository_path) / name
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(path), size)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {data}", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def holds_pattern(path: str | Path, data: str, pattern: str = "0x5a") -> bool:
    """True when the image reads back `data` bytes of the pattern (what qemu-io says)."""
    read = subprocess.run(
        ["qemu-io", "-r", "-f", "qcow2", "-c", f"read -P {pattern} 0 {data}", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return read.returncode == 0 and "verification failed" not in read.stdout
