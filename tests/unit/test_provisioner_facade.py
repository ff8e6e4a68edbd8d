"""The Provisioner facade keeps every name and signature the task layer calls, and each
operation reaches the module of its concern over one shared HostContext."""

from __future__ import annotations

import inspect

import pytest

from tests.unit._provisioning import make_host, reservation
from vclvirt.images.files import CommandFiles
from vclvirt.provisioner import Provisioner

# name -> parameters after self, as the task layer calls them
ENTRY_POINTS = {
    "node_status": ["reservation"],
    "delete_existing_domains": ["reservation"],
    "pre_define": ["reservation", "progress", "reuse_overlay"],
    "generate_xml": ["reservation"],
    "define": ["reservation", "xml"],
    "power_on": ["reservation"],
    "post_load": ["reservation"],
    "power_status": ["reservation"],
    "power_off": ["reservation"],
    "power_reset": ["reservation"],
    "unload": ["reservation"],
    "remove_overlay": ["reservation"],
    "capture_prepare": ["reservation"],
    "capture_shutdown": ["reservation", "domain_name"],
    "capture_flatten": ["reservation", "prepared"],
    "capture_publish": ["reservation", "prepared", "master"],
    "capture_finish": ["reservation", "prepared"],
    "snapshot_create": ["reservation", "name"],
    "snapshot_list": ["reservation"],
    "snapshot_revert": ["reservation", "name"],
    "snapshot_delete": ["reservation", "name"],
    "does_image_exist": ["image_name"],
    "get_image_size": ["image_name"],
    "get_image_size_bytes": ["image_name"],
    "list_images": [],
}


@pytest.mark.parametrize(("name", "parameters"), ENTRY_POINTS.items())
def test_entry_point_keeps_its_signature(name, parameters):
    """Each operation the task layer calls is there with the parameters it passes."""
    signature = inspect.signature(getattr(Provisioner, name))
    assert list(signature.parameters)[1:] == parameters


def test_pre_define_reuses_no_overlay_unless_asked():
    """reuse_overlay is keyword-only and off by default; progress stays optional."""
    parameters = inspect.signature(Provisioner.pre_define).parameters
    assert parameters["reuse_overlay"].kind is inspect.Parameter.KEYWORD_ONLY
    assert parameters["reuse_overlay"].default is False
    assert parameters["progress"].default is None


def test_operations_share_one_context(tmp_path):
    """A load through the facade: the steps run on the same host objects; a test-driver host
    reaches its files by commands."""
    host = make_host(tmp_path)
    ctx = host.context
    provisioner = Provisioner(
        ctx.host,
        ctx.node,
        ctx.driver,
        ctx.connect,
        management_node="unit",
        settings=ctx.settings,
        guest_host_keys=ctx.guest_host_keys,
    )
    host.master("linux-Unit-11-v0")
    r = reservation()
    assert provisioner.node_status(r)["status"] == "RELOAD"
    assert provisioner.delete_existing_domains(r) == {"deleted_domains": [], "removed_files": []}
    assert provisioner.pre_define(r)["overlay_created"] is True
    provisioner.define(r, provisioner.generate_xml(r)["xml"])
    assert provisioner.power_on(r)["power"] == "on"
    assert provisioner.power_status(r)["power"] == "on"
    assert isinstance(provisioner.context.files, CommandFiles)
    assert provisioner.node is ctx.node and provisioner.conn is host.conn
    assert provisioner.unload(r)["deleted_domains"] == [provisioner.names(r).domain]
    assert list(host.vms.iterdir()) == [] and list(host.xml.iterdir()) == []
