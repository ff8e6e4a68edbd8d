"""Apache VCL 2.5.1's own management-node code (vcld, VCL::DataStructure, VCL::Module, the
state modules) against VCL's schema (mysql/vcl.sql) in the test bed's MariaDB, for the tests
of the provisioning module contrib/vcl/VCL/Module/Provisioning/vclvirt.pm.

VCL's code is third-party and is not copied into this repository: it is read from
VCLVIRT_VCL_SOURCE, by default `../shared/vendor/apache-vcl-2.5.1` beside the repository
(its README says what it is and which Debian packages it needs: scripts/bootstrap installs
them). One VCL database, `vcl_e2e`, is made from vcl.sql per test session; each test adds
the rows of its own computers, images and requests.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

from tests.conftest import ROOT
from tests.integration.vcl_schema import MARIADB_PORT, MARIADB_USER, password, root_connection

VCL_SOURCE = Path(
    os.environ.get("VCLVIRT_VCL_SOURCE", ROOT.parent / "shared" / "vendor" / "apache-vcl-2.5.1")
)
VCL_LIB = VCL_SOURCE / "managementnode" / "lib"
VCLD = VCL_SOURCE / "managementnode" / "bin" / "vcld"
MODULE_DIR = ROOT / "contrib" / "vcl"
CALLS = ROOT / "tests" / "e2e" / "vcl_calls.pl"
TEST_OS_DIR = ROOT / "tests" / "e2e" / "vcl_os"
DATABASE = "vcl_e2e"
MANAGEMENT_NODE = "localhost"  # VCL resolves it for its own private IP

# vcl.sql's seed ids: user admin, state names, OS 'vmwarelinux' (Generic Linux (VMware),
# VCL::Module::OS::Linux), image type qcow2.
ADMIN = 1
STATE = {
    "available": 2,
    "reserved": 3,
    "inuse": 8,
    "failed": 5,
    "maintenance": 10,
    "complete": 12,
    "new": 13,
    "pending": 14,
    "image": 16,
    "tomaintenance": 18,
    "reload": 19,
    "vmhostinuse": 20,
    "reinstall": 27,
}
OS_LINUX = 36
TEST_OS = 200  # the test guest's OS: VCL's base OS module plus tests/e2e/vcl_os (it says why)
QCOW2 = 7
PROVISIONING_ID = 20  # the rows contrib/vcl/README.md tells a site to insert
VMHOST_COMPUTER_ID = 100
VMHOST_ID = 10


def _statements(text: str) -> list[str]:
    return [s.strip() for s in text.split(";\n") if s.strip()]


SITE_ROWS = _statements(f"""
INSERT INTO module (id, name, prettyname, description, perlpackage)
VALUES (100, 'provisioning_vclvirt', 'vclvirt Provisioning Module',
        'KVM virtual machines through the vclvirt API', 'VCL::Module::Provisioning::vclvirt');
INSERT INTO provisioning (id, name, prettyname, moduleid)
VALUES ({PROVISIONING_ID}, 'vclvirt', 'vclvirt (KVM)', 100);
INSERT INTO provisioningOSinstalltype (provisioningid, OSinstalltypeid)
SELECT {PROVISIONING_ID}, allowed.OSinstalltypeid
FROM provisioningOSinstalltype AS allowed
JOIN provisioning AS libvirt ON libvirt.id = allowed.provisioningid AND libvirt.name = 'libvirt';
INSERT INTO managementnode (id, IPaddress, hostname, ownerid, stateid, checkininterval,
                            installpath, `keys`, sshport, publicIPconfiguration,
                            availablenetworks)
VALUES (1, '127.0.0.1', '{MANAGEMENT_NODE}', {ADMIN}, {STATE["available"]}, 1,
        '/install', NULL, 22, 'dynamicDHCP', '');
INSERT INTO resource (id, resourcetypeid, subid) VALUES (1001, 16, 1);
INSERT INTO vmprofile (id, profilename, imageid, repositorypath, repositoryimagetypeid,
                       datastorepath, datastoreimagetypeid, vmpath,
                       virtualswitch0, virtualswitch1, vmdisk)
VALUES (10, 'vclvirt test bed', 1, '/srv/repository', {QCOW2},
        '/var/lib/libvirt/images', {QCOW2}, '/var/lib/libvirt/images',
        'default', 'default', 'dedicated');
INSERT INTO computer (id, stateid, ownerid, platformid, currentimageid, nextimageid,
                      imagerevisionid, RAM, procnumber, procspeed, network, hostname,
                      IPaddress, type, provisioningid, deleted, datedeleted)
VALUES ({VMHOST_COMPUTER_ID}, {STATE["vmhostinuse"]}, {ADMIN}, 1, 1, 1, 1, 65536, 8, 2000,
        1000, 'node-a.vcl.test', '127.0.0.1', 'blade', 10, 0, '2020-01-01 00:00:00');
INSERT INTO vmhost (id, computerid, vmprofileid) VALUES ({VMHOST_ID}, {VMHOST_COMPUTER_ID}, 10);
""")
TEST_ROWS = _statements(f"""
INSERT INTO module (id, name, prettyname, description, perlpackage)
VALUES (101, 'os_vclvirt_test_guest', 'vclvirt test guest OS (test only)', '',
        'VCL::Module::OS::VclvirtTestGuest');
INSERT INTO OS (id, name, prettyname, type, installtype, minram, moduleid)
VALUES ({TEST_OS}, 'vclvirttestguest', 'vclvirt test guest', 'linux', 'vmware', 64, 101);
CREATE TABLE test_loadlog (id int unsigned PRIMARY KEY, reservationid int unsigned,
                           loadstateid smallint unsigned, additionalinfo text);
CREATE TRIGGER test_loadlog AFTER INSERT ON computerloadlog FOR EACH ROW
INSERT INTO test_loadlog VALUES (NEW.id, NEW.reservationid, NEW.loadstateid, NEW.additionalinfo);
CREATE TABLE test_statelog (id int unsigned AUTO_INCREMENT PRIMARY KEY, requestid int unsigned,
                            computerid smallint unsigned, stateid smallint unsigned,
                            laststateid smallint unsigned);
CREATE TRIGGER test_requeststate AFTER UPDATE ON request FOR EACH ROW
INSERT INTO test_statelog (requestid, stateid, laststateid)
SELECT NEW.id, NEW.stateid, NEW.laststateid FROM DUAL
WHERE NEW.stateid <> OLD.stateid OR NEW.laststateid <> OLD.laststateid;
CREATE TRIGGER test_computerstate AFTER UPDATE ON computer FOR EACH ROW
INSERT INTO test_statelog (computerid, stateid)
SELECT NEW.id, NEW.stateid FROM DUAL WHERE NEW.stateid <> OLD.stateid;
""")


def connect() -> pymysql.Connection[Any]:
    return pymysql.connect(
        host="127.0.0.1",
        port=MARIADB_PORT,
        user=MARIADB_USER,
        password=password(),
        database=DATABASE,
        autocommit=True,
        cursorclass=pymysql.cursors.DictCursor,
    )


def create_database() -> None:
    """`vcl_e2e` from VCL's own vcl.sql, plus the rows a site adds for vclvirt (README)."""
    schema = VCL_SOURCE / "mysql" / "vcl.sql"
    if not schema.is_file():
        raise AssertionError(
            f"Apache VCL 2.5.1 is not at {VCL_SOURCE} (no mysql/vcl.sql): set VCLVIRT_VCL_SOURCE"
        )
    admin = root_connection()
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{DATABASE}`")
        cursor.execute(f"CREATE DATABASE `{DATABASE}`")
    admin.close()
    with schema.open("rb") as sql:
        subprocess.run(
            [
                "mariadb",
                "--no-defaults",
                "-h127.0.0.1",
                f"-P{MARIADB_PORT}",
                f"-u{MARIADB_USER}",
                f"-p{password()}",
                DATABASE,
            ],
            stdin=sql,
            check=True,
            capture_output=True,
        )
    with connect() as db, db.cursor() as cursor:
        for statement in SITE_ROWS + TEST_ROWS:
            cursor.execute(statement)


@dataclass
class Computer:
    id: int
    hostname: str
    eth0_mac: str | None
    eth1_mac: str | None
    private_ip: str | None = None
    vmhost: bool = True


def _upsert(db: pymysql.Connection[Any], table: str, row: dict[str, Any]) -> None:
    """Insert the row, or update the one with its key (other rows may refer to it)."""
    columns = ", ".join(f"`{c}`" for c in row)
    updates = ", ".join(f"`{c}` = VALUES(`{c}`)" for c in row)
    with db.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO `{table}` ({columns}) VALUES ({', '.join(['%s'] * len(row))})"
            f" ON DUPLICATE KEY UPDATE {updates}",
            tuple(row.values()),
        )


def add_computer(db: pymysql.Connection[Any], computer: Computer, state: str = "available") -> None:
    """A virtual machine on the VM host node-a, provisioned by vclvirt, with no image."""
    with db.cursor() as cursor:
        cursor.execute("DELETE FROM test_statelog WHERE computerid = %s", (computer.id,))
    _upsert(
        db,
        "computer",
        {
            "id": computer.id,
            "stateid": STATE[state],
            "vmhostid": VMHOST_ID if computer.vmhost else None,
            "currentimageid": 1,
            "nextimageid": 1,
            "imagerevisionid": 1,
            "RAM": 2048,
            "procnumber": 2,
            "procspeed": 2000,
            "network": 1000,
            "hostname": computer.hostname,
            "IPaddress": "",
            "privateIPaddress": computer.private_ip,
            "eth0macaddress": computer.eth0_mac,
            "eth1macaddress": computer.eth1_mac,
            "type": "virtualmachine",
            "provisioningid": PROVISIONING_ID,
            "deleted": 0,
            "datedeleted": "2020-01-01 00:00:00",
            "predictivemoduleid": 8,
        },
    )


def add_image(
    db: pymysql.Connection[Any],
    image_id: int,
    name: str,
    pretty: str,
    revisions: dict[int, str],
    os_id: int = OS_LINUX,
) -> dict[int, int]:
    """An image with its revisions {revision: imagerevision.imagename}; returns their ids."""
    _upsert(
        db,
        "image",
        {
            "id": image_id,
            "name": name,
            "prettyname": pretty,
            "imagetypeid": QCOW2,
            "platformid": 1,
            "OSid": os_id,
            "minram": 64,
            "minprocnumber": 1,
            "reloadtime": 5,
            "deleted": 0,
            "project": "vcl",
            "size": 100,
            "architecture": "x86_64",
        },
    )
    ids = {revision: image_id * 100 + revision for revision in revisions}
    for revision, imagename in revisions.items():
        _upsert(
            db,
            "imagerevision",
            {
                "id": ids[revision],
                "imageid": image_id,
                "revision": revision,
                "userid": ADMIN,
                "datecreated": "2026-01-01 00:00:00",
                "deleted": 0,
                "production": 1,
                "imagename": imagename,
            },
        )
    return ids


def add_request(
    db: pymysql.Connection[Any],
    request_id: int,
    reservation_id: int,
    *,
    computer_id: int,
    image_id: int,
    imagerevision_id: int,
    state: str,
    laststate: str | None = None,
    forimaging: bool = False,
) -> None:
    """A request with one reservation, starting now, for management node 1."""
    with db.cursor() as cursor:
        for table in ("computerloadlog", "test_loadlog"):
            cursor.execute(f"DELETE FROM {table} WHERE reservationid = %s", (reservation_id,))
        cursor.execute("DELETE FROM test_statelog WHERE requestid = %s", (request_id,))
        cursor.execute("DELETE FROM reservation WHERE id = %s", (reservation_id,))
        cursor.execute("DELETE FROM request WHERE id = %s", (request_id,))
        cursor.execute(
            "INSERT INTO request (id, stateid, userid, laststateid, forimaging, test, preload,"
            " start, end, daterequested, checkuser)"
            " VALUES (%s, %s, 1, %s, %s, 0, 0, NOW() - INTERVAL 1 MINUTE,"
            " NOW() + INTERVAL 2 HOUR, NOW() - INTERVAL 1 MINUTE, 1)",
            (request_id, STATE[state], STATE[laststate or state], int(forimaging)),
        )
        cursor.execute(
            "INSERT INTO reservation (id, requestid, computerid, imageid, imagerevisionid,"
            " managementnodeid, lastcheck) VALUES (%s, %s, %s, %s, %s, 1, NULL)",
            (reservation_id, request_id, computer_id, image_id, imagerevision_id),
        )


def loadlog(db: pymysql.Connection[Any], reservation_id: int) -> list[dict[str, Any]]:
    """The reservation's computerloadlog rows (what VCL's dashboard shows) in order, as vcld
    wrote them: a trigger keeps a copy in test_loadlog, since vcld deletes them when it ends
    the request."""
    with db.cursor() as cursor:
        cursor.execute(
            "SELECT l.id, s.loadstatename AS name, l.additionalinfo AS info"
            " FROM test_loadlog l JOIN computerloadstate s ON s.id = l.loadstateid"
            " WHERE l.reservationid = %s ORDER BY l.id",
            (reservation_id,),
        )
        return list(cursor.fetchall())


def states(db: pymysql.Connection[Any], request_id: int, computer_id: int) -> dict[str, Any]:
    """The request's state/laststate and the computer's state, VM host and current image."""
    with db.cursor() as cursor:
        cursor.execute(
            "SELECT s.name AS state, l.name AS laststate FROM request r"
            " JOIN state s ON s.id = r.stateid JOIN state l ON l.id = r.laststateid"
            " WHERE r.id = %s",
            (request_id,),
        )
        request = cursor.fetchone() or {"state": None, "laststate": None}
        cursor.execute(
            "SELECT s.name AS computer, c.vmhostid, i.name AS current_image FROM computer c"
            " JOIN state s ON s.id = c.stateid JOIN image i ON i.id = c.currentimageid"
            " WHERE c.id = %s",
            (computer_id,),
        )
        return {**request, **(cursor.fetchone() or {})}


@dataclass
class VclSite:
    """One management node's files: vcld.conf (database, log), vclvirt.conf (the API)."""

    directory: Path
    api_url: str
    api_token: str
    runs: int = field(default=0)

    @property
    def vcld_conf(self) -> Path:
        return self.directory / "vcld.conf"

    @property
    def log(self) -> Path:
        return self.directory / "vcld.log"

    def write(self, **vclvirt: Any) -> None:
        """vcld.conf as VCL's installer leaves it, pointing at vcl_e2e; vclvirt.conf 0600."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.vcld_conf.write_text(
            f"FQDN={MANAGEMENT_NODE}\nprocessname=vcld\nlog={self.log}\n"
            f"pidfile={self.directory / 'vcld.pid'}\ndatabase={DATABASE}\n"
            f"server=127.0.0.1:{MARIADB_PORT}\nLockerWrtUser={MARIADB_USER}\n"
            f"wrtPass={password()}\nxmlrpc_username=vclsystem@Local\nxmlrpc_pass=x\n"
            "xmlrpc_url=\nenable_mysql_ssl=no\nRETURNPATH=\njabber=no\n"
            "WINDOWS_ROOT_PASSWORD=x\n"
        )
        settings = {"api_url": self.api_url, "api_token": self.api_token, **vclvirt}
        config = self.directory / "vclvirt.conf"
        config.write_text("".join(f"{k} = {v}\n" for k, v in settings.items() if v is not None))
        config.chmod(0o600)

    def env(self, perl5lib: list[Path] | None = None) -> dict[str, str]:
        lib = [*(perl5lib or []), MODULE_DIR, VCL_LIB, VCL_SOURCE / "shims", TEST_OS_DIR]
        return {
            **os.environ,
            "PERL5LIB": ":".join(str(p) for p in lib),
            "VCLVIRT_VCL_CONFIG": str(self.directory / "vclvirt.conf"),
        }

    def log_lines(self, since: int = 0) -> list[str]:
        return (
            self.log.read_text(errors="replace").splitlines()[since:] if self.log.exists() else []
        )

    def call(
        self,
        request_id: int,
        reservation_id: int,
        calls: list[list[Any]],
        *,
        perl5lib: list[Path] | None = None,
        timeout: float = 900,
    ) -> CallRun:
        """The module's methods called in scalar context, as vcld's state modules call them,
        on the VCL::DataStructure vcld builds for the reservation (get_request_info)."""
        self.runs += 1
        case = self.directory / f"calls-{self.runs}.json"
        out = self.directory / f"calls-{self.runs}.out"
        case.write_text(
            json.dumps(
                {
                    "request_id": request_id,
                    "reservation_id": reservation_id,
                    "calls": calls,
                    "out": str(out),
                }
            )
        )
        since = len(self.log_lines())
        done = subprocess.run(
            ["perl", str(CALLS), f"-config={self.vcld_conf}", str(case)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(perl5lib),
            check=False,
        )
        events = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        return CallRun(events, self.log_lines(since), done.stdout + done.stderr, done.returncode)


def warning_blocks(log: list[str]) -> list[list[str]]:
    """vcld.log's WARNING blocks (VCL's notify): after a "---- WARNING ----" line, the
    message (`|pid|...|file:sub|line| time|pid|...|line|message`), then the caller trace
    (`( 0) file, sub (line: n)`), each line with the same `|pid|...|` prefix."""
    blocks = []
    for i, line in enumerate(log):
        if line.endswith("---- WARNING ---- ") and i + 1 < len(log):
            prefix = line[: line.index(" ---- WARNING")]
            block = [log[i + 1].split("|", 14)[-1]]
            for rest in log[i + 2 :]:
                if not rest.startswith(prefix):
                    break
                block.append(rest[len(prefix) :].strip())
            blocks.append(block)
    return blocks


def warnings(log: list[str]) -> list[str]:
    """The messages of vcld.log's WARNING blocks."""
    return [block[0] for block in warning_blocks(log)]


def module_warnings(log: list[str]) -> list[str]:
    """The warnings the module wrote, or that VCL wrote for a call the module made."""
    return [block[0] for block in warning_blocks(log) if any("vclvirt" in x for x in block)]


@dataclass
class CallRun:
    events: list[dict[str, Any]]
    log: list[str]  # vcld.log lines this run wrote
    output: str
    returncode: int

    def result(self, call: str) -> Any:
        (found,) = [e for e in self.events if e.get("call") == call]
        return found["value"]

    @property
    def created(self) -> bool:
        return any(e.get("new") == 1 for e in self.events)

    def warnings(self) -> list[str]:
        return warnings(self.log)

    def __str__(self) -> str:
        return self.output + "\n".join(self.log)


def state_changes(
    db: pymysql.Connection[Any], *, request_id: int = 0, computer_id: int = 0
) -> list[str]:
    """Every state vcld set on the request ("state/laststate") or the computer, in order (a
    trigger records them: vcld deletes a request soon after it completes it)."""
    with db.cursor() as cursor:
        cursor.execute(
            "SELECT s.name AS state, l.name AS laststate FROM test_statelog t"
            " JOIN state s ON s.id = t.stateid LEFT JOIN state l ON l.id = t.laststateid"
            " WHERE t.requestid = %s OR t.computerid = %s ORDER BY t.id",
            (request_id, computer_id),
        )
        return [
            f"{row['state']}/{row['laststate']}" if row["laststate"] else row["state"]
            for row in cursor.fetchall()
        ]


@dataclass
class Watched:
    """What VCL's database showed while vcld worked on one request."""

    final: dict[str, Any]  # states() once vcld was done
    loadlog: list[dict[str, Any]]  # the reservation's computerloadlog rows, as written
    request_states: list[str]  # "state/laststate" as vcld set them
    computer_states: list[str]

    def names(self) -> list[str]:
        return [row["name"] for row in self.loadlog]


def watch(
    db: pymysql.Connection[Any],
    request_id: int,
    reservation_id: int,
    computer_id: int,
    until: Callable[[dict[str, Any]], bool],
    timeout: float,
) -> Watched:
    """Wait until `until(states)` holds; what vcld wrote on the way."""
    earlier = len(state_changes(db, computer_id=computer_id))
    deadline = time.monotonic() + timeout
    while not until(now := states(db, request_id, computer_id)):
        if time.monotonic() > deadline:
            raise AssertionError(f"vcld did not get there in {timeout} s: {now}")
        time.sleep(0.5)
    return Watched(
        now,
        loadlog(db, reservation_id),
        state_changes(db, request_id=request_id),
        state_changes(db, computer_id=computer_id)[earlier:],
    )


def _session(leader: int) -> list[int]:
    """The processes of the session `leader` started: vcld forks each reservation's state
    process into a process group of its own (setpgrp), in vcld's session."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if fields[0] != "Z" and int(fields[3]) == leader:  # state, session id (proc(5))
            members.append(int(stat.parent.name))
    return members


@contextmanager
def running_vcld(site: VclSite, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """`bin/vcld -nodaemon` in a session of its own; it and the state processes it forked
    are stopped (TERM, then KILL) afterwards."""
    with (site.directory / "vcld.out").open("ab") as out:
        process = subprocess.Popen(
            ["perl", str(VCLD), f"-config={site.vcld_conf}", "-nodaemon"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**site.env(), **env},
            cwd=site.directory,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in _session(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 15
            while _session(process.pid) and time.monotonic() < deadline:
                process.poll()
                time.sleep(0.2)
        process.wait(15)
