"""provisioning.snapshots on libvirt's test driver."""

from __future__ import annotations

import pytest

from tests.unit._provisioning import make_host, reservation
from vclvirt.errors import SnapshotMissing
from vclvirt.provisioning.snapshots import Snapshots

DOMAIN = "unit-vm1_Unitimage_11-v0"


def test_create_list_revert_delete(tmp_path):
    """A snapshot is listed with the reservation in its description, reverted to, deleted."""
    host = make_host(tmp_path)
    host.conn.defineXML(host.domain_xml(DOMAIN, []))
    snapshots, r = Snapshots(host.context), reservation()
    assert snapshots.create(r, "before") == {"domain": DOMAIN, "snapshot": "before"}
    listed = snapshots.list(r)["snapshots"]
    assert [s["name"] for s in listed] == ["before"]
    assert "reservation 1031" in listed[0]["description"]
    assert snapshots.revert(r, "before")["snapshot"] == "before"
    assert snapshots.delete(r, "before")["deleted"] is True
    assert snapshots.list(r)["snapshots"] == []
    with pytest.raises(SnapshotMissing):
        snapshots.revert(r, "before")
