"""VCL's VM hosts as vclvirt inventory tables (pure: rows in, TOML text out).

A host's paths and switches come from its VM profile; what VCL does not hold (the
workers' SSH key, known_hosts, user, port, domain type) from the caller. A profile
asking for something vclvirt does not do is refused with the reason, never guessed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vclvirt.config.inventory import HostConfig
from vclvirt.errors import VclProfileUnsupported
from vclvirt.models import HOST_NAME_PATTERN

MASTER_TYPE = "qcow2"  # vclvirt keeps masters and writes captures as qcow2
# Where an inventory field comes from in VCL, for error messages.
_COLUMN_OF = {
    "address": "computer.hostname",
    "datastore_path": "vmprofile.datastorepath",
    "vm_path": "vmprofile.vmpath",
    "repository_path": "vmprofile.repositorypath",
    "private_switch": "vmprofile.virtualswitch0",
    "public_switch": "vmprofile.virtualswitch1",
}


@dataclass(frozen=True)
class HostDefaults:
    """What VCL's database does not say about reaching a host."""

    key_file: Path
    known_hosts: Path
    user: str = "root"
    port: int = 22
    domain_type: str = "kvm"
    max_concurrent_loads: int = 2


@dataclass(frozen=True)
class HostEntry:
    """One `[hosts.<name>]` table, with a comment saying where it came from."""

    name: str
    table: dict[str, Any]
    comment: str


def _text(row: dict[str, Any], column: str) -> str:
    value = row.get(column)
    return str(value).strip() if value is not None else ""


def _unsupported(row: dict[str, Any]) -> list[str]:
    """Why the host's profile cannot be served as it stands (empty: it can)."""
    reasons = []
    if _text(row, "vmdisk") == "shared":
        reasons.append(
            "vmdisk is 'shared' (VM disks on network storage): vclvirt keeps each VM's "
            "disk on the host's own vm path"
        )
    for column in ("resourcepath", "folderpath"):
        if _text(row, column):
            reasons.append(f"{column} is set ({_text(row, column)!r}): a VMware vCenter setting")
    if _text(row, "datastore_type") != MASTER_TYPE:
        reasons.append(
            f"datastore image type is {_text(row, 'datastore_type') or 'unknown'!r}: "
            f"vclvirt keeps masters as {MASTER_TYPE}"
        )
    if _text(row, "repositorypath") and _text(row, "repository_type") != MASTER_TYPE:
        reasons.append(
            f"repository image type is {_text(row, 'repository_type') or 'unknown'!r}: "
            f"vclvirt writes captured images to the repository as {MASTER_TYPE}"
        )
    for column in ("virtualswitch2", "virtualswitch3"):
        if _text(row, column):
            reasons.append(
                f"{column} is set ({_text(row, column)!r}): vclvirt gives VMs two NICs "
                "(virtualswitch0 private, virtualswitch1 public)"
            )
    return reasons


def host_entry(row: dict[str, Any], defaults: HostDefaults) -> HostEntry:
    """The inventory table of one VM host row; VclProfileUnsupported names every reason."""
    hostname = _text(row, "hostname")
    name = hostname.split(".", 1)[0]
    where = f"VM host {hostname or '?'} (vmhost id {row.get('vmhost_id')})"
    profile = f"profile {_text(row, 'profile')!r}"
    reasons = _unsupported(row)
    if not re.fullmatch(HOST_NAME_PATTERN, name):
        reasons.append(f"its short host name {name!r} is not a valid inventory host name")
    table: dict[str, Any] = {
        "address": hostname,
        "port": defaults.port,
        "user": defaults.user,
        "key_file": str(defaults.key_file),
        "known_hosts": str(defaults.known_hosts),
        "domain_type": defaults.domain_type,
        "datastore_path": _text(row, "datastorepath"),
        "max_concurrent_loads": defaults.max_concurrent_loads,
    }
    optional = {
        "vm_path": _text(row, "vmpath"),
        "repository_path": _text(row, "repositorypath"),
        "private_switch": _text(row, "virtualswitch0"),
        "public_switch": _text(row, "virtualswitch1"),
    }
    table.update({key: value for key, value in optional.items() if value})
    try:
        HostConfig.model_validate({"name": name, **table})
    except ValidationError as error:
        reasons.extend(
            f"{_COLUMN_OF.get(str(e['loc'][0]), str(e['loc'][0]))} {e['input']!r}: {e['msg']}"
            for e in error.errors()
            if e["loc"] and e["loc"][0] != "name"  # reported above
        )
    if reasons:
        raise VclProfileUnsupported(f"{where}, {profile}: " + "; ".join(reasons), host=name)
    comment = f"{where}, computer id {row.get('computer_id')}, {profile}"
    return HostEntry(name=name, table=table, comment=comment)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    # A JSON string of printable text is a valid TOML basic string.
    return json.dumps(str(value), ensure_ascii=True)


def _comment(text: str) -> str:
    return "# " + "".join(c if c.isprintable() else " " for c in text)


def render_inventory(entries: Iterable[HostEntry], header: list[str]) -> str:
    """The inventory TOML: a comment header, then one `[hosts.<name>]` table per host."""
    lines = [_comment(line) for line in header]
    for entry in entries:
        lines += ["", f"[hosts.{entry.name}]", _comment(entry.comment)]
        lines += [f"{key} = {_toml_value(value)}" for key, value in entry.table.items()]
    return "\n".join(lines) + "\n"
