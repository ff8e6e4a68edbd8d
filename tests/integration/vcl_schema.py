"""VCL's tables that `vclvirt inventory from-vcl` reads, created in the test bed's MariaDB.

Column lists as in Apache VCL 2.5's mysql/vcl.sql (vmhost, vmprofile, computer,
imagetype, and the resource-group tables that map management nodes to computers),
with its seed rows for imagetype and resourcetype.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pymysql

from tests.conftest import REDIS_PORT, TESTBED

MARIADB_PORT = int(os.environ.get("VCLVIRT_TESTBED_MARIADB_PORT", int(REDIS_PORT) + 100))
MARIADB_SOCKET = TESTBED / "mariadb" / "mysqld.sock"
MARIADB_USER = "vclvirt"  # scripts/testbed: may create and use databases named vcl_*
MARIADB_PASSWORD_FILE = TESTBED / "mariadb" / "password"

TABLES = [
    """CREATE TABLE imagetype (
      id smallint(5) unsigned NOT NULL auto_increment,
      name varchar(16) NOT NULL,
      PRIMARY KEY (id), UNIQUE KEY name (name)
    ) ENGINE=InnoDB DEFAULT CHARSET=latin1""",
    """CREATE TABLE vmprofile (
      id smallint(5) unsigned NOT NULL auto_increment,
      profilename varchar(56) NOT NULL,
      imageid smallint(5) unsigned NOT NULL,
      resourcepath varchar(256) default NULL,
      folderpath varchar(256) default NULL,
      repositorypath varchar(128) default NULL,
      repositoryimagetypeid smallint(5) unsigned NOT NULL default '1',
      datastorepath varchar(128) NOT NULL,
      datastoreimagetypeid smallint(5) unsigned NOT NULL default '1',
      vmpath varchar(128) default NULL,
      virtualswitch0 varchar(80) NOT NULL default 'VMnet0',
      virtualswitch1 varchar(80) NOT NULL default 'VMnet2',
      virtualswitch2 varchar(80) default NULL,
      virtualswitch3 varchar(80) default NULL,
      vmdisk enum('dedicated','shared') NOT NULL default 'dedicated',
      username varchar(80) default NULL,
      password varchar(256) default NULL,
      secretid smallint(5) unsigned default NULL,
      eth0generated tinyint(1) unsigned NOT NULL default '0',
      eth1generated tinyint(1) unsigned NOT NULL default '0',
      rsapub text default NULL,
      rsakey varchar(256) default NULL,
      encryptedpasswd text default NULL,
      PRIMARY KEY (id), UNIQUE KEY profilename (profilename)
    ) ENGINE=InnoDB DEFAULT CHARSET=latin1""",
    """CREATE TABLE vmhost (
      id smallint(5) unsigned NOT NULL auto_increment,
      computerid smallint(5) unsigned NOT NULL,
      vmprofileid smallint(5) unsigned NOT NULL,
      PRIMARY KEY (id), UNIQUE KEY computerid_vmprofileid (computerid, vmprofileid)
    ) ENGINE=InnoDB DEFAULT CHARSET=latin1""",
    """CREATE TABLE computer (
      id smallint(5) unsigned NOT NULL auto_increment,
      stateid tinyint(5) unsigned NOT NULL default '10',
      ownerid mediumint(8) unsigned default '1',
      platformid tinyint(3) unsigned NOT NULL default '1',
      scheduleid tinyint(3) unsigned default NULL,
      vmhostid smallint(5) unsigned default NULL,
      currentimageid smallint(5) unsigned NOT NULL default '1',
      nextimageid smallint(5) unsigned NOT NULL default '1',
      imagerevisionid mediumint(8) unsigned NOT NULL default '1',
      RAM mediumint(8) unsigned NOT NULL default '0',
      procnumber tinyint(5) unsigned NOT NULL default '1',
      procspeed smallint(5) unsigned NOT NULL default '0',
      network smallint(5) unsigned NOT NULL default '100',
      hostname varchar(36) NOT NULL default '',
      IPaddress varchar(15) NOT NULL default '',
      privateIPaddress varchar(15) default NULL,
      eth0macaddress varchar(17) default NULL,
      eth1macaddress varchar(17) default NULL,
      type enum('blade','lab','virtualmachine') NOT NULL default 'blade',
      provisioningid smallint(5) unsigned NOT NULL,
      drivetype varchar(4) NOT NULL default 'hda',
      deleted tinyint(1) unsigned NOT NULL default '0',
      datedeleted datetime NOT NULL default '0000-00-00 00:00:00',
      notes text,
      lastcheck datetime default NULL,
      location varchar(255) default NULL,
      dsa mediumtext, dsapub mediumtext, rsa mediumtext, rsapub mediumtext,
      host blob, hostpub mediumtext,
      vmtypeid tinyint(3) unsigned default NULL,
      predictivemoduleid smallint(5) unsigned NOT NULL default '9',
      PRIMARY KEY (id), UNIQUE KEY hostname (hostname, datedeleted), KEY vmhostid (vmhostid)
    ) ENGINE=InnoDB DEFAULT CHARSET=latin1""",
    """CREATE TABLE managementnode (
      id smallint(5) unsigned NOT NULL auto_increment,
      IPaddress varchar(15) NOT NULL default '',
      hostname varchar(50) NOT NULL default '',
      ownerid mediumint(8) unsigned NOT NULL default '1',
      stateid tinyint(3) unsigned NOT NULL default '0',
      checkininterval tinyint(3) unsigned NOT NULL default '12',
      installpath varchar(100) NOT NULL default '/install',
      sshport smallint(5) unsigned NOT NULL default '22',
      availablenetworks text NOT NULL,
      PRIMARY KEY (id), UNIQUE KEY hostname (hostname)
    ) ENGINE=InnoDB DEFAULT CHARSET=latin1""",
    """CREATE TABLE resourcetype (
      id tinyint(5) unsigned NOT NULL auto_increment,
      name varchar(50) NOT NULL default '',
      PRIMARY KEY (id), UNIQUE KEY name (name)
    ) ENGINE=InnoDB DEFAULT CHARSET=latin1""",
    """CREATE TABLE resource (
      id mediumint(8) unsigned NOT NULL auto_increment,
      resourcetypeid tinyint(5) unsigned NOT NULL default '0',
      subid mediumint(8) unsigned NOT NULL default '0',
      PRIMARY KEY (id), UNIQUE KEY resourcetypeid (resourcetypeid, subid)
    ) ENGINE=InnoDB DEFAULT CHARSET=latin1""",
    """CREATE TABLE resourcegroupmembers (
      resourceid mediumint(8) unsigned NOT NULL default '0',
      resourcegroupid smallint(5) unsigned NOT NULL default '0',
      PRIMARY KEY (resourceid, resourcegroupid)
    ) ENGINE=InnoDB DEFAULT CHARSET=latin1""",
    """CREATE TABLE resourcemap (
      resourcegroupid1 smallint(5) unsigned NOT NULL default '0',
      resourcetypeid1 tinyint(3) unsigned NOT NULL default '13',
      resourcegroupid2 smallint(5) unsigned NOT NULL default '0',
      resourcetypeid2 tinyint(3) unsigned NOT NULL default '12',
      PRIMARY KEY (resourcegroupid1, resourcegroupid2)
    ) ENGINE=InnoDB DEFAULT CHARSET=latin1""",
]

SEED = [
    "INSERT INTO imagetype (id, name) VALUES (1, 'none'), (2, 'partimage'), "
    "(3, 'partimage-ng'), (4, 'lab'), (5, 'kickstart'), (6, 'vmdk'), (7, 'qcow2'), (8, 'vdi')",
    "INSERT INTO resourcetype (id, name) VALUES (18, 'addomain'), (12, 'computer'), "
    "(13, 'image'), (16, 'managementnode'), (15, 'schedule'), (17, 'serverprofile')",
]


def root_connection(database: str | None = None) -> pymysql.Connection[Any]:
    """root through the test bed's socket (unix_socket authentication)."""
    return pymysql.connect(
        unix_socket=str(MARIADB_SOCKET), user="root", database=database, autocommit=True
    )


@contextmanager
def vcl_database(name: str) -> Iterator[pymysql.Connection[Any]]:
    """A fresh database `name` (vcl_*) holding VCL's tables; dropped afterwards."""
    admin = root_connection()
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        cursor.execute(f"CREATE DATABASE `{name}`")
    connection = root_connection(name)
    try:
        with connection.cursor() as cursor:
            for statement in TABLES + SEED:
                cursor.execute(statement)
        yield connection
    finally:
        connection.close()
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def password() -> str:
    return Path(MARIADB_PASSWORD_FILE).read_text().strip()
