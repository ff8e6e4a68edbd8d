"""Settings no other test changed (#23.4), each changed here and its effect observed where
it acts: the record's lifetime, the worker's life and loop, the pool's recycling, the
host's transport and the guest's login. tests/unit/test_every_setting_is_tested.py keeps
it so for every setting added later."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit._runs import HOST, RecoveryClock, ToyWorld, host_config, toy_reservation
from vclvirt import composition
from vclvirt.composition import Root
from vclvirt.config.inventory import Inventory
from vclvirt.config.settings import Settings
from vclvirt.errors import CommandTimeout, NodeUnreachable
from vclvirt.guest.access import guest_target
from vclvirt.identity import Identity
from vclvirt.recovery import no_worker
from vclvirt.state import keys
from vclvirt.state.records import now
from vclvirt.state.stores import Stores
from vclvirt.testing import memory_redis
from vclvirt.workers.app import create_app

DAY = 86400


def settings(**changed: object) -> Settings:
    return Settings(broker_url="redis://unused", lease_ttl=3, **changed)  # type: ignore[arg-type]


def test_status_ttl_days_is_how_long_a_record_is_kept(world: ToyWorld) -> None:
    """VCLVIRT_STATUS_TTL_DAYS: the record a begin writes expires after that many days."""
    records = Stores.on(world.redis, settings(status_ttl_days=2)).records
    op = world.operation("toy", {"only": lambda _ctx: {}})
    records.begin(toy_reservation(), op.name, list(op.step_names), owns_computer=True)
    ttl = world.redis.ttl(keys.record(toy_reservation().reservation_id))
    assert 2 * DAY - 60 <= ttl <= 2 * DAY


def test_heartbeat_interval_is_how_long_a_worker_counts_as_alive(world: ToyWorld) -> None:
    """VCLVIRT_HEARTBEAT_INTERVAL: a host whose worker beat 11 s ago has a live worker
    while three heartbeats last longer (4 s each), and none when they do not (3 s)."""
    world.begin(world.operation("toy", {"only": lambda _ctx: {}}))
    record, last_seen = world.record(), now() - 11
    assert no_worker(record, last_seen, settings(heartbeat_interval=4)) is None
    waiting = no_worker(record, last_seen, settings(heartbeat_interval=3))
    assert waiting is not None and waiting.reason == f"no live worker for host {HOST}"
    registry = Stores.on(world.redis, settings(heartbeat_interval=4)).registry
    assert registry.ttl == 12


def test_heartbeat_interval_paces_the_reconcilers_beats(world: ToyWorld) -> None:
    """A reconciler beats at its first cycle and again only once the interval has passed."""
    beats: list[float] = []
    clock = RecoveryClock(world.monkeypatch, time.time())
    reconciler = world.reconciler(settings(heartbeat_interval=20))
    world.monkeypatch.setattr(reconciler.registry, "beat", lambda *_a: beats.append(1))
    reconciler.cycle()
    clock.advance(19)
    reconciler.cycle()
    assert len(beats) == 1
    clock.advance(1)
    reconciler.cycle()
    assert len(beats) == 2


def test_reconcile_interval_paces_the_loop_and_the_abandoned_records_lock(
    world: ToyWorld,
) -> None:
    """VCLVIRT_RECONCILE_INTERVAL: the loop cycles once per interval, and the lock that lets
    one worker per cycle fail abandoned records lasts one interval."""
    cycles: list[float] = []
    stop = threading.Event()

    def cycle() -> None:
        cycles.append(time.monotonic())
        if len(cycles) == 5:
            stop.set()

    fast = world.reconciler(settings(reconcile_interval=0.05))
    world.monkeypatch.setattr(fast, "cycle", cycle)
    loop = threading.Thread(target=fast.run, args=(stop,), daemon=True)
    loop.start()
    loop.join(timeout=10)  # five cycles 0.05 s apart, not 2 s (the default) apart
    assert not loop.is_alive() and len(cycles) == 5
    assert all(b - a >= 0.05 for a, b in itertools.pairwise(cycles))

    world.reconciler(settings(reconcile_interval=40)).fail_abandoned()
    assert 39_000 <= world.redis.pttl(keys.lock("reconcile:abandoned")) <= 40_000


@pytest.mark.parametrize(("configured", "recycled_after"), [(7, 7), (0, None)])
def test_max_tasks_per_child_recycles_the_pool_process(
    configured: int, recycled_after: int | None
) -> None:
    """VCLVIRT_MAX_TASKS_PER_CHILD: Celery recycles a pool process after that many tasks;
    0 never does."""
    root = Root(settings(max_tasks_per_child=configured), Identity.client(), client=memory_redis())
    assert create_app(root).conf.worker_max_tasks_per_child == recycled_after


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (an SSH daemon hung)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server.getsockname()[1]
    server.close()


def test_ssh_connect_timeout_bounds_how_long_a_host_connection_may_take(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, silent_port: int
) -> None:
    """VCLVIRT_SSH_CONNECT_TIMEOUT: a host whose sshd never answers is unreachable after
    that many seconds (0.5 here, not the default 15)."""
    for name in ("key", "known_hosts"):
        (tmp_path / name).write_text("")
    config = host_config(tmp_path).model_copy(
        update={
            "transport": "ssh",
            "port": silent_port,
            "key_file": tmp_path / "key",
            "known_hosts": tmp_path / "known_hosts",
        }
    )
    monkeypatch.setattr(composition, "get_inventory", lambda: Inventory(hosts={HOST: config}))
    root = Root(settings(ssh_connect_timeout=0.5), Identity.worker([HOST]), client=memory_redis())
    started = time.monotonic()
    with pytest.raises(NodeUnreachable):
        root.host(HOST).access.node.run(["true"])
    assert time.monotonic() - started < 5


def test_command_timeout_bounds_a_host_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """VCLVIRT_COMMAND_TIMEOUT: a host command without a timeout of its own is stopped
    after that many seconds."""
    config = host_config(tmp_path)
    monkeypatch.setattr(composition, "get_inventory", lambda: Inventory(hosts={HOST: config}))
    root = Root(settings(command_timeout=0.3), Identity.worker([HOST]), client=memory_redis())
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match=r"did not finish in 0\.3s"):
        root.host(HOST).access.node.run(["sleep", "5"])
    assert time.monotonic() - started < 3


def test_guest_user_is_who_logs_in_to_the_guest(tmp_path: Path) -> None:
    """VCLVIRT_GUEST_USER: post_load, node_status and capture log in as that user."""
    key = tmp_path / "guest_key"
    key.write_text("")
    config = host_config(tmp_path).model_copy(update={"guest_network": "user"})
    target = guest_target(config, toy_reservation(), settings(guest_user="vcl", guest_key_file=key))
    assert (target.user, target.key_file) == ("vcl", key)
