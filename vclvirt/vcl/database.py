"""Reading VCL's database (MySQL or MariaDB, through PyMySQL): its VM hosts and their profiles.

Read-only: one SELECT for the hosts, and for `--management-node` the resource-group
join vcld itself uses to decide which computers a management node controls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pymysql
import pymysql.cursors

from vclvirt.errors import InvalidInput, VclDatabaseError


@dataclass(frozen=True)
class DatabaseUrl:
    """Where VCL's database is; `password` is never shown (see `display`)."""

    user: str
    password: str | None
    host: str
    port: int
    database: str
    unix_socket: str | None = None

    @property
    def display(self) -> str:
        where = self.unix_socket or f"{self.host}:{self.port}"
        return f"database {self.database} on {where} as {self.user}"


def parse_database_url(url: str) -> DatabaseUrl:
    """mysql://user[:password]@host[:port]/database[?unix_socket=/path/to/socket]"""
    try:
        parts = urlsplit(url)
        port = parts.port or 3306
    except ValueError as error:
        raise InvalidInput(f"--database: not a URL: {error}", field="database") from None
    if parts.scheme not in ("mysql", "mariadb"):
        raise InvalidInput(
            "--database: the URL must start with mysql:// (or mariadb://)", field="database"
        )
    database = parts.path.lstrip("/")
    if not parts.username or not database or "/" in database:
        raise InvalidInput(
            "--database: give user and database: mysql://user@host[:port]/vcl", field="database"
        )
    query = parse_qs(parts.query)
    unknown = set(query) - {"unix_socket"}
    if unknown:
        raise InvalidInput(
            f"--database: unknown URL parameters {sorted(unknown)} (known: unix_socket)",
            field="database",
        )
    return DatabaseUrl(
        user=unquote(parts.username),
        password=unquote(parts.password) if parts.password is not None else None,
        host=parts.hostname or "localhost",
        port=port,
        database=unquote(database),
        unix_socket=query["unix_socket"][0] if "unix_socket" in query else None,
    )


def connect(url: DatabaseUrl, *, timeout: float = 15.0) -> pymysql.Connection[Any]:
    """A read-only-by-use connection whose rows are dicts; errors say where and how to fix."""
    try:
        return pymysql.connect(
            host=url.host,
            port=url.port,
            user=url.user,
            password=url.password or "",
            database=url.database,
            unix_socket=url.unix_socket,
            connect_timeout=int(timeout),
            read_timeout=int(timeout * 4),
            charset="utf8mb4",
            cursorclass=pymysql.cursors.DictCursor,
        )
    except pymysql.MySQLError as error:
        raise VclDatabaseError(f"cannot connect to VCL's {url.display}: {error}") from None


_HOSTS = """
SELECT vmhost.id AS vmhost_id, host.id AS computer_id, host.hostname AS hostname,
       host.IPaddress AS ip_address, profile.id AS profile_id, profile.profilename AS profile,
       profile.datastorepath, profile.vmpath, profile.repositorypath,
       profile.virtualswitch0, profile.virtualswitch1, profile.virtualswitch2,
       profile.virtualswitch3, profile.vmdisk, profile.resourcepath, profile.folderpath,
       datastoretype.name AS datastore_type, repositorytype.name AS repository_type
FROM vmhost
JOIN computer AS host ON host.id = vmhost.computerid
JOIN vmprofile AS profile ON profile.id = vmhost.vmprofileid
LEFT JOIN imagetype AS datastoretype ON datastoretype.id = profile.datastoreimagetypeid
LEFT JOIN imagetype AS repositorytype ON repositorytype.id = profile.repositoryimagetypeid
WHERE host.deleted = 0
"""

# The computers a management node controls: VCL maps management-node resource groups
# to computer resource groups (resourcemap); members are resources of either type.
_CONTROLLED = """
SELECT computer_resource.subid
FROM resource AS computer_resource
JOIN resourcetype AS computer_type
     ON computer_type.id = computer_resource.resourcetypeid AND computer_type.name = 'computer'
JOIN resourcegroupmembers AS computer_member ON computer_member.resourceid = computer_resource.id
JOIN resourcemap ON resourcemap.resourcegroupid2 = computer_member.resourcegroupid
JOIN resourcegroupmembers AS node_member
     ON node_member.resourcegroupid = resourcemap.resourcegroupid1
JOIN resource AS node_resource ON node_resource.id = node_member.resourceid
JOIN resourcetype AS node_type
     ON node_type.id = node_resource.resourcetypeid AND node_type.name = 'managementnode'
WHERE node_resource.subid = %(node_id)s
"""

# A host belongs to the node when the node controls one of its VMs or the host itself.
# (Constants composed; the only input, the node id, is a bound parameter.)
_FOR_NODE = f"""
AND vmhost.id IN (
    SELECT vm.vmhostid FROM computer AS vm
    WHERE vm.deleted = 0 AND vm.vmhostid IS NOT NULL AND vm.id IN ({_CONTROLLED})
    UNION
    SELECT controlled.id FROM vmhost AS controlled WHERE controlled.computerid IN ({_CONTROLLED})
)
"""  # noqa: S608


def _management_node_id(cursor: Any, name: str) -> int:
    cursor.execute(
        "SELECT id, hostname FROM managementnode "
        "WHERE hostname = %(name)s OR SUBSTRING_INDEX(hostname, '.', 1) = %(name)s",
        {"name": name},
    )
    rows = cursor.fetchall()
    if len(rows) != 1:
        cursor.execute("SELECT hostname FROM managementnode ORDER BY hostname")
        known = ", ".join(row["hostname"] for row in cursor.fetchall()) or "none"
        found = "no" if not rows else "more than one"
        raise InvalidInput(
            f"--management-node: {found} management node named {name!r} (known: {known})",
            field="management_node",
        )
    return int(rows[0]["id"])


def read_vm_hosts(
    connection: pymysql.Connection[Any], management_node: str | None = None
) -> list[dict[str, Any]]:
    """One row per VM host (with its profile and image type names), by host name."""
    try:
        with connection.cursor() as cursor:
            if management_node is None:
                cursor.execute(_HOSTS + "ORDER BY host.hostname")
            else:
                node_id = _management_node_id(cursor, management_node)
                cursor.execute(_HOSTS + _FOR_NODE + "ORDER BY host.hostname", {"node_id": node_id})
            return list(cursor.fetchall())
    except pymysql.MySQLError as error:
        raise VclDatabaseError(
            f"cannot read VCL's VM hosts: {error}",
            hint="Is this VCL's database (tables vmhost, vmprofile, computer, imagetype)?",
        ) from None
