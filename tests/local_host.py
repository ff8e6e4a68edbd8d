"""A hypervisor host that is this machine (transport local, libvirt at qemu:///system),
with its directories in a test's own tmp dir: the fast way to run real provisioning
code on real files, real qemu-img and the real libvirtd."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from vclvirt.config.inventory import HostConfig
from vclvirt.config.settings import get_settings
from vclvirt.guest.hostkeys import GuestHostKeys
from vclvirt.hypervisor.connection import connect
from vclvirt.node.local import LocalTransport
from vclvirt.node.transport import Transport
from vclvirt.provisioning.host import Host, build_host

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


def local_server(host: HostConfig) -> Host:
    """The Host a worker would build for this host (local transport, real libvirtd)."""
    return server_over(host, LocalTransport(host.name))


def server_over(host: HostConfig, node: Transport) -> Host:
    """The Host a worker would build, reached through `node`, its libvirt connection
    opened directly (no fence), the guests' keys pinned in the test bed's Redis."""
    settings = get_settings()
    keys = GuestHostKeys.from_url(settings.broker_url)
    return build_host(host, node, settings, keys, connect=lambda: connect(host))


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
