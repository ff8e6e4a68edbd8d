"""The host inventory: one TOML table per hypervisor host (`[hosts.<name>]`)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal
from urllib.parse import quote, urlencode

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from vclvirt.config.settings import get_settings
from vclvirt.errors import InvalidInput, UnknownHost
from vclvirt.models import HOST_NAME_PATTERN, HOSTNAME_PATTERN

_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._+/@-]*$")
_SWITCH = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"


def _host_path(value: str) -> str:
    """Absolute, normalised path on the host with no shell-significant characters."""
    if not _SAFE_PATH.fullmatch(value) or ".." in PurePosixPath(value).parts:
        raise ValueError(f"must be an absolute path of letters, digits and ._+-@/, got {value!r}")
    return str(PurePosixPath(value))


HostPath = Annotated[str, AfterValidator(_host_path)]


class HostConfig(BaseModel):
    """How to reach one hypervisor host and where its files live."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, StringConstraints(pattern=HOST_NAME_PATTERN)]
    address: Annotated[str, StringConstraints(pattern=HOSTNAME_PATTERN)]
    port: Annotated[int, Field(ge=1, le=65535, strict=True)] = 22
    user: Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")] = "root"
    # "local": the worker runs on the host itself (no SSH); "ssh": everything else.
    transport: Literal["ssh", "local"] = "ssh"
    key_file: Path | None = None
    known_hosts: Path | None = None
    libvirt_uri: str | None = None
    driver: str = "kvm"
    # "test" is libvirt's test driver (simulations with test:///default).
    domain_type: Literal["kvm", "qemu", "auto", "test"] = "auto"
    datastore_path: HostPath
    vm_path: HostPath | None = None
    repository_path: HostPath | None = None
    # "host": the repository is a path on the host (a shared mount); "worker": a path on
    # the machine running the worker, streamed to the host over the SSH connection.
    repository_location: Literal["host", "worker"] = "host"
    xml_dir: HostPath = "/tmp/vcl"
    # Per computer, the newest fencing token the host has seen (node/fence.py). On a disk
    # that survives a reboot, so a holder paused across the host's reboot stays fenced.
    fence_dir: HostPath = "/var/lib/vclvirt/fence"
    private_switch: Annotated[str, StringConstraints(pattern=_SWITCH)] | None = None
    public_switch: Annotated[str, StringConstraints(pattern=_SWITCH)] | None = None
    max_concurrent_loads: Annotated[int, Field(ge=1, le=64, strict=True)] = 2
    # How guests are networked and reached for post_load: "switches" gives NICs on
    # the private/public switches and reaches the guest at its private IP, port 22;
    # "user" gives one QEMU user-mode NIC whose SSH port is forwarded to the host's
    # 127.0.0.1 (test beds where the worker runs on the host).
    guest_network: Literal["switches", "user"] = "switches"
    guest_ssh_ports: tuple[int, int] = (22000, 22999)
    # Reach guests through the host (a relay started behind the host's fence, so a holder
    # that lost the computer loses its guest sessions too) or directly from the worker.
    # Default: through the host for "user" networking (the forwarded port is on the host's
    # loopback), directly for "switches" (VCL's management node reaches private IPs).
    guest_via_host: bool | None = None

    @model_validator(mode="after")
    def _default_vm_path(self) -> HostConfig:
        if self.vm_path is None:
            object.__setattr__(self, "vm_path", self.datastore_path)
        return self

    @model_validator(mode="after")
    def _ssh_needs_keys(self) -> HostConfig:
        if self.transport == "ssh" and (self.key_file is None or self.known_hosts is None):
            raise ValueError("key_file and known_hosts are required with transport ssh")
        return self

    @model_validator(mode="after")
    def _valid_port_range(self) -> HostConfig:
        low, high = self.guest_ssh_ports
        if not 1024 <= low <= high <= 65535:
            raise ValueError("guest_ssh_ports must be [low, high] within 1024-65535")
        return self

    def forwarded_ssh_port(self, computer_id: int) -> int:
        """The host port forwarded to a user-mode guest's port 22 (stable per computer)."""
        low, high = self.guest_ssh_ports
        return low + computer_id % (high - low + 1)

    @property
    def guests_through_host(self) -> bool:
        if self.guest_via_host is None:
            return self.guest_network == "user"
        return self.guest_via_host

    @property
    def vm_dir(self) -> str:
        return self.vm_path or self.datastore_path

    @property
    def queue(self) -> str:
        return f"host.{self.name}"

    @property
    def libvirt_through_fence(self) -> bool:
        """Whether a fenced run reaches libvirtd through a tunnel behind the host's fence:
        the derived URI (SSH) or the local system daemon. A configured URI (libvirt's
        test driver, another transport) is used as it is, unfenced."""
        if self.libvirt_uri:
            return self.transport == "local" and self.libvirt_uri == "qemu:///system"
        return True

    @property
    def effective_libvirt_uri(self) -> str:
        """The configured URI, or qemu+libssh with the same key and known_hosts as SSH.

        libvirt's plain qemu+ssh transport ignores known_hosts=; libssh honours it.
        """
        if self.libvirt_uri:
            return self.libvirt_uri
        if self.transport == "local":
            return "qemu:///system"
        query = urlencode(
            {
                "keyfile": str(self.key_file),
                "known_hosts": str(self.known_hosts),
                "sshauth": "privkey",
            },
            safe="/",
        )
        return f"qemu+libssh://{quote(self.user)}@{self.address}:{self.port}/system?{query}"


class Inventory(BaseModel):
    """All hosts, by name."""

    model_config = ConfigDict(frozen=True)

    hosts: dict[str, HostConfig]

    def host(self, name: str) -> HostConfig:
        try:
            return self.hosts[name]
        except KeyError:
            known = ", ".join(sorted(self.hosts)) or "none"
            raise UnknownHost(f"host {name!r} is not in the inventory (known: {known})") from None


def load_inventory(path: Path) -> Inventory:
    """Read and validate the inventory TOML; errors name the host and field."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidInput(
            f"inventory file {path} does not exist",
            hint="Set VCLVIRT_INVENTORY or pass --inventory",
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise InvalidInput(f"inventory {path} is not valid TOML: {error}") from None
    unknown = set(raw) - {"hosts"}
    if unknown:
        raise InvalidInput(f"inventory {path}: unknown top-level keys {sorted(unknown)}")
    tables = raw.get("hosts", {})
    if not isinstance(tables, dict):
        raise InvalidInput(f"inventory {path}: 'hosts' must be a table of [hosts.<name>] tables")
    hosts: dict[str, HostConfig] = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise InvalidInput(f"inventory {path}: hosts.{name} must be a table")
        try:
            hosts[name] = HostConfig.model_validate({"name": name, **table})
        except ValidationError as error:
            fields = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
            )
            raise InvalidInput(f"inventory {path}, host {name!r}: {fields}") from None
    return Inventory(hosts=hosts)


_loaded: dict[Path, Inventory] = {}


def get_inventory(path: Path | None = None) -> Inventory:
    """The inventory named by the argument or VCLVIRT_INVENTORY, read once per process."""
    path = path or get_settings().inventory
    if path is None:
        raise InvalidInput(
            "no inventory configured", hint="Set VCLVIRT_INVENTORY or pass --inventory"
        )
    if path not in _loaded:
        _loaded[path] = load_inventory(path)
    return _loaded[path]
