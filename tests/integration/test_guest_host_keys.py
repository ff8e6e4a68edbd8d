"""Guest host-key pinning against a real OpenSSH sshd standing in for a guest, whose host
key is then replaced: the first contact pins, every later one must match."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import GUEST_CACHE, TEST_BROKER, make_reservation, wait_for
from vclvirt.config.inventory import HostConfig
from vclvirt.config.settings import Settings
from vclvirt.errors import GuestHostKeyChanged
from vclvirt.guest.access import GuestUnreachable, connect_guest, guest_target
from vclvirt.guest.hostkeys import GuestHostKeys
from vclvirt.models import parse_reservation
from vclvirt.state import keys

RESERVATION_ID = 910_001


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeGuest:
    """A real sshd on loopback that lets the guest key in as root, as a test guest does."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "sshd.log"

    def new_host_key(self) -> str:
        key = self.directory / "host_ed25519"
        key.unlink(missing_ok=True)
        Path(f"{key}.pub").unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        kind, blob, *_ = Path(f"{key}.pub").read_text().split()
        return f"{kind} {blob}"

    def start(self) -> None:
        config = self.directory / "sshd_config"
        config.write_text(
            f"ListenAddress 127.0.0.1\nPort {self.port}\n"
            f"HostKey {self.directory / 'host_ed25519'}\n"
            f"PidFile {self.directory / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {GUEST_CACHE / 'guest_key.pub'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nLogLevel VERBOSE\n"
        )
        os.makedirs("/run/sshd", exist_ok=True)
        self.process = subprocess.Popen(
            ["/usr/sbin/sshd", "-D", "-f", str(config), "-E", str(self.log)],
            start_new_session=True,
        )
        wait_for(self._answers, 30, f"sshd on 127.0.0.1:{self.port}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                return sock.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        self.process = None

    def logins(self) -> int:
        return self.log.read_text(errors="replace").count("Accepted publickey")


@pytest.fixture
def fake_guest(tmp_path: Path) -> Iterator[FakeGuest]:
    guest = FakeGuest(tmp_path)
    guest.new_host_key()
    guest.start()
    yield guest
    guest.stop()


@pytest.fixture
def record(testbed: Path) -> Iterator[redis.Redis]:
    """The reservation's status record exists (as dispatch creates it); removed after."""
    client = redis.Redis.from_url(TEST_BROKER)
    key = f"vclvirt:reservation:{RESERVATION_ID}"
    client.delete(key, keys.guest_host_key(RESERVATION_ID))
    client.hset(key, mapping={"state": "running", "operation": "node_status"})
    yield client
    client.delete(key, keys.guest_host_key(RESERVATION_ID))


def _target(guest: FakeGuest, store: GuestHostKeys | None):
    host = HostConfig(
        name="sec-guest-host",
        address="127.0.0.1",
        transport="local",
        datastore_path="/tmp",
        guest_network="user",
        guest_ssh_ports=(guest.port, guest.port),
    )
    reservation = parse_reservation(
        make_reservation(RESERVATION_ID, "sec-pin", "linux-X-1-v0", host="sec-guest-host")
    )
    return guest_target(host, reservation, Settings(), store)


def _contact(target, timeout: float = 20) -> str:
    guest = connect_guest(target, timeout=timeout)
    try:
        return guest.run(["echo", "hello"]).text.strip()
    finally:
        guest.close()


def test_first_contact_pins_the_key_and_later_contacts_need_it(fake_guest, record):
    """The guest's key is pinned at first contact, beside the record (not in it) and
    expiring with it; the same key passes."""
    store = GuestHostKeys(record)
    record.expire(f"vclvirt:reservation:{RESERVATION_ID}", 600)
    key = (fake_guest.directory / "host_ed25519.pub").read_text().split()
    assert _contact(_target(fake_guest, store)) == "hello"
    assert record.get(keys.guest_host_key(RESERVATION_ID)).decode() == " ".join(key[:2])
    assert 590 < record.ttl(keys.guest_host_key(RESERVATION_ID)) <= 600
    assert b"guest_host_key" not in record.hkeys(f"vclvirt:reservation:{RESERVATION_ID}")
    assert _contact(_target(fake_guest, store)) == "hello"
    assert fake_guest.logins() == 2


def test_a_changed_host_key_is_refused_at_once_before_logging_in(fake_guest, record):
    """After the guest's key changes: GuestHostKeyChanged (permanent, own code) at once, not
    GuestUnreachable after retrying until the timeout; and no login on the impostor."""
    store = GuestHostKeys(record)
    pinned_key = _contact(_target(fake_guest, store)) and store.pinned(RESERVATION_ID)
    fake_guest.stop()
    new_key = fake_guest.new_host_key()
    fake_guest.start()
    logins_before = fake_guest.logins()

    with pytest.raises(GuestHostKeyChanged) as caught:
        _contact(_target(fake_guest, store), timeout=60)

    error = caught.value
    assert error.code == "GUEST_HOST_KEY_CHANGED" and not error.transient
    assert error.reservation_id == RESERVATION_ID
    assert "SHA256:" in error.message and "pinned" in error.message
    assert fake_guest.logins() == logins_before  # refused before authenticating
    assert store.pinned(RESERVATION_ID) == pinned_key != new_key


def test_forgetting_the_pin_lets_the_next_guest_pin_its_own_key(fake_guest, record):
    """When the domain is deleted the pin goes; the next contact pins the new key."""
    store = GuestHostKeys(record)
    _contact(_target(fake_guest, store))
    fake_guest.stop()
    new_key = fake_guest.new_host_key()
    fake_guest.start()
    store.forget(RESERVATION_ID)
    assert _contact(_target(fake_guest, store)) == "hello"
    assert store.pinned(RESERVATION_ID) == new_key


def test_without_a_store_any_key_is_accepted(fake_guest, record):
    """Callers that pass no store (diagnostics) keep trust-on-every-use, and pin nothing."""
    assert _contact(_target(fake_guest, None)) == "hello"
    assert GuestHostKeys(record).pinned(RESERVATION_ID) is None


def test_no_pin_without_a_status_record(fake_guest, testbed):
    """Without the reservation's record nothing is written (a lone pin is no record)."""
    client = redis.Redis.from_url(TEST_BROKER)
    client.delete(f"vclvirt:reservation:{RESERVATION_ID}")
    assert _contact(_target(fake_guest, GuestHostKeys(client))) == "hello"
    assert not client.exists(f"vclvirt:reservation:{RESERVATION_ID}")
    assert not client.exists(keys.guest_host_key(RESERVATION_ID))


def test_the_first_pin_wins(record):
    """Two first contacts at once: SET NX keeps the first key, the second sees it."""
    store = GuestHostKeys(record)
    assert store.pin(RESERVATION_ID, "ssh-ed25519 AAAA-first") == "ssh-ed25519 AAAA-first"
    assert store.pin(RESERVATION_ID, "ssh-ed25519 AAAA-second") == "ssh-ed25519 AAAA-first"


def test_unreachable_guest_is_still_unreachable(record):
    """A guest that does not answer is GuestUnreachable, not a key problem."""
    port = _free_port()
    guest = FakeGuest.__new__(FakeGuest)
    guest.port = port
    with pytest.raises(GuestUnreachable):
        _contact(_target(guest, GuestHostKeys(record)), timeout=3)
