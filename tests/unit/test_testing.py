"""The unit tier's doubles themselves (vclvirt.testing): the in-memory store runs every
kind of Lua script the project has, and the fake host answers, fails, hangs and fences
as a test scripts it."""

from __future__ import annotations

import threading
import time

import pytest

from vclvirt.cancellation import Cancelled
from vclvirt.errors import CommandFailed, CommandTimeout, Fenced, NodeUnreachable
from vclvirt.locks import ResourceLock, RunOwner
from vclvirt.node import fence
from vclvirt.node.fence import HostFence
from vclvirt.node.host_lock import host_lock
from vclvirt.state.client import deadline_client
from vclvirt.state.slots import HostSlot
from vclvirt.testing import FakeTransport, memory_redis


def test_each_memory_redis_is_empty_and_its_own():
    first, second = memory_redis(), memory_redis()
    first.set("k", "v")
    assert second.get("k") is None
    assert deadline_client(first, 1.0).get("k") == b"v"  # the same store, another client


def test_memory_redis_runs_the_fenced_lock_script_with_redis_time():
    """TIME, string.format and string.match in Lua: every grant's token is larger than the
    last, and a newer generation of the same reservation takes the lock over."""
    client = memory_redis()
    old = ResourceLock(client, "computer:h:c", RunOwner(7, 1, "n|b|1"), ttl=5, fenced=True)
    new = ResourceLock(client, "computer:h:c", RunOwner(7, 2, "n|b|2"), ttl=5, fenced=True)
    other = ResourceLock(client, "computer:h:c", RunOwner(8, 1, "n|b|3"), ttl=5, fenced=True)
    assert old.acquire(wait=0) and new.acquire(wait=0)
    assert old.token is not None and new.token is not None and new.token > old.token
    assert not other.acquire(wait=0) and other.held_by == str(new.owner)
    assert not old.renew() and new.renew()  # PEXPIRE, only by the holder
    assert 0 < client.pttl("vclvirt:lock:computer:h:c") <= 5000
    twin = ResourceLock(client, "computer:h:c", RunOwner(7, 2, "n|b|9"), ttl=5, fenced=True)
    assert not twin.acquire(wait=0)  # the same generation in another process: refused
    old.release()  # a former owner's release is a no-op
    assert client.get("vclvirt:lock:computer:h:c") == str(new.owner).encode()


def test_memory_redis_runs_the_host_slot_script():
    client = memory_redis()
    first = HostSlot(client, "h", "a", limit=1, ttl=5)
    assert first.acquire() and not HostSlot(client, "h", "b", limit=1, ttl=5).acquire()
    first.release()
    assert HostSlot(client, "h", "b", limit=1, ttl=5).acquire()


def test_the_fake_host_records_argv_and_answers_the_newest_matching_rule():
    node = FakeTransport("h1")
    node.on("qemu-img", "info", stdout=b"old")
    node.on("qemu-img", "info", "*.qcow2", stdout=b'{"format": "qcow2"}')
    node.on("qemu-img", "info", "x.raw", exit_status=1, stderr=b"no such file")

    assert node.run(["qemu-img", "info", "a.qcow2"]).text == '{"format": "qcow2"}'
    assert node.run(["qemu-img", "info", "b.img"]).text == "old"
    with pytest.raises(CommandFailed, match="no such file") as failed:
        node.run(["qemu-img", "info", "x.raw"])
    assert failed.value.host == "h1"
    assert node.run(["qemu-img", "info", "x.raw"], check=False).exit_status == 1
    assert node.run(["ls"]).ok  # no rule: exit 0, no output
    assert node.argvs("qemu-img") == [
        ("qemu-img", "info", "a.qcow2"),
        ("qemu-img", "info", "b.img"),
        ("qemu-img", "info", "x.raw"),
        ("qemu-img", "info", "x.raw"),
    ]


def test_the_fake_host_fails_a_set_number_of_times_then_answers():
    node = FakeTransport()
    node.on("virsh", error=NodeUnreachable("gone"), times=2)
    for _ in range(2):
        with pytest.raises(NodeUnreachable):
            node.run(["virsh", "list"])
    assert node.run(["virsh", "list"]).ok


def test_the_fake_host_streams_output_and_keeps_none_when_told():
    node = FakeTransport()
    node.on("cat", stdout=b"chunk")
    seen: list[bytes] = []
    result = node.run(["cat", "f"], on_output=seen.append, keep_output=False, stdin=b"in")
    assert (seen, result.stdout, node.calls[-1].stdin) == ([b"chunk"], b"", b"in")


def test_a_hung_command_times_out_or_ends_when_released():
    node = FakeTransport()
    node.on("sleep", hang=True)
    started = time.monotonic()
    with pytest.raises(CommandTimeout):
        node.run(["sleep", "1000"], timeout=0.1)
    assert time.monotonic() - started < 2
    threading.Timer(0.1, node.release.set).start()
    with pytest.raises(CommandTimeout):
        node.run(["sleep", "1000"], timeout=30)  # released early: still not a success
    assert time.monotonic() - started < 5


def test_the_fake_host_keeps_the_newest_fencing_token_and_refuses_older_ones():
    """As node/fence.py's script: a newer token is recorded, an older one refused before
    the command runs (Cancelled(Fenced)); commands without a fence are not checked."""
    node = FakeTransport("h1")
    newer, older = (HostFence("h1", "/fence/vm1", token, 7) for token in (20, 10))
    with fence.holding(newer):
        node.run(["true"])
    assert node.tokens == {"/fence/vm1": 20} and node.calls[-1].token == 20
    with fence.holding(older), pytest.raises(Cancelled) as refused:
        node.run(["rm", "disk"])
    assert isinstance(refused.value.reason, Fenced)
    assert "older than 20" in refused.value.reason.message
    assert node.run(["rm", "disk"]).ok  # no fence held: not checked
    with fence.holding(HostFence("other-host", "/fence/vm1", 1, 7)):
        assert node.run(["ls"]).ok  # a fence of another host does not apply here
    unfenced = FakeTransport("h1", fenced=False)
    with fence.holding(older):
        assert unfenced.run(["rm", "disk"]).ok


def test_a_host_lock_on_the_fake_host_is_taken_or_refused_behind_the_fence():
    """host_lock (node/host_lock.py) over the fake host: taken when flock says so, and a
    refused token ends the held command at once, which the lock reports as fenced."""
    node = FakeTransport("h1")
    node.on("flock", stdout=b"locked\n")
    with host_lock(node, "/images/.lock"):
        assert node.argvs("flock")[0][:4] == ("flock", "-x", "-w", "7200")
    node.tokens["/fence/vm1"] = 20
    with (
        fence.holding(HostFence("h1", "/fence/vm1", 10, 7)),
        pytest.raises(Cancelled),
        host_lock(node, "/images/.lock"),
    ):
        raise AssertionError("the lock was taken behind a refused token")
