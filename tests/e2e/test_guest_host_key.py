"""The real test guest's SSH host key is pinned at post_load and required afterwards."""

from __future__ import annotations

import socket

import paramiko
import pytest
import redis

from tests.conftest import TEST_BROKER, make_reservation
from vclvirt import composition, dispatch
from vclvirt.config.inventory import get_inventory
from vclvirt.errors import GuestHostKeyChanged
from vclvirt.guest.hostkeys import FIELD, key_text
from vclvirt.models import parse_reservation

pytestmark = pytest.mark.slow

RESERVATION_ID = 8801


def _guest_key(port: int) -> str:
    """The key the guest offers paramiko (the same negotiation the worker does)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        transport = paramiko.Transport(sock)
        try:
            transport.start_client(timeout=10)
            return key_text(transport.get_remote_server_key())
        finally:
            transport.close()


def test_guest_key_is_pinned_at_post_load_and_required_later(
    testbed, guest_image, start_worker, cleanup_computers
):
    """post_load pins the guest's real key in the record; a later node_status operation
    passes with it and fails with GUEST_HOST_KEY_CHANGED when the guest answers with
    another; unload drops the pin."""
    cleanup_computers.append("sec-pinned")
    start_worker("node-a")
    data = make_reservation(
        RESERVATION_ID, "sec-pinned", guest_image, image_id=900, os_type="linux"
    )
    final = dispatch.load(data).wait(timeout=300)
    assert final.state == "succeeded", final.error

    client = redis.Redis.from_url(TEST_BROKER)
    record = f"vclvirt:reservation:{RESERVATION_ID}"
    port = get_inventory().host("node-a").forwarded_ssh_port(data["computer"]["id"])
    pinned = client.hget(record, FIELD)
    assert pinned is not None and pinned.decode() == _guest_key(port)

    # A later operation of the reservation, through the worker: the pin is kept and passes.
    checked = dispatch.run(data, "node_status").wait(timeout=120)
    assert checked.state == "succeeded", checked.error
    assert checked.step_records["node_status"]["result"]["status"] == "READY"
    assert client.hget(record, FIELD) == pinned

    # Another real key pinned: the guest now answering is not the one first contacted.
    client.hset(record, FIELD, key_text(paramiko.ECDSAKey.generate()))
    refused = dispatch.run(data, "node_status").wait(timeout=120)
    assert refused.state == "failed"
    assert refused.error is not None and refused.error["code"] == "GUEST_HOST_KEY_CHANGED"

    # The same through the host's node status directly (no Celery).
    with pytest.raises(GuestHostKeyChanged):
        composition.current().host("node-a").status.check(parse_reservation(data))

    unloaded = dispatch.run(data, "unload").wait(timeout=120)
    assert unloaded.state == "succeeded", unloaded.error
    assert client.hget(record, FIELD) is None  # the domain is gone, and so is its pin
