"""Computer locks on a real Redis: exclusive between reservations, renewable, taken over
by the same reservation (its operation resumed in another process)."""

from __future__ import annotations

from vclvirt.locks import ResourceLock


def test_a_second_owner_waits_then_gives_up_naming_the_holder(state_redis) -> None:
    """While A holds the lock, B's acquire returns False after its wait and names A."""
    a = ResourceLock(state_redis, "computer:h:vm1", "reservation:1", ttl=30)
    b = ResourceLock(state_redis, "computer:h:vm1", "reservation:2", ttl=30)
    assert a.acquire(wait=0)
    assert not b.acquire(wait=0.3)
    assert b.held_by == "reservation:1"
    a.release()
    assert b.acquire(wait=0) and b.held_by is None


def test_the_same_reservation_takes_its_own_lock_over(state_redis) -> None:
    """A resumed operation (same reservation, another process) gets its lock at once."""
    first = ResourceLock(state_redis, "computer:h:vm1", "reservation:1", ttl=30)
    again = ResourceLock(state_redis, "computer:h:vm1", "reservation:1", ttl=30)
    assert first.acquire(wait=0)
    assert again.acquire(wait=0)


def test_renew_fails_once_the_lock_is_someone_elses(state_redis) -> None:
    """A lock that expired and was taken by another reservation is not renewed, and our
    release leaves the new holder's lock alone."""
    ours = ResourceLock(state_redis, "computer:h:vm1", "reservation:1", ttl=30)
    theirs = ResourceLock(state_redis, "computer:h:vm1", "reservation:2", ttl=30)
    assert ours.acquire(wait=0)
    assert ours.renew()
    state_redis.delete(ours.key)  # expired
    assert theirs.acquire(wait=0)
    assert not ours.renew()
    ours.release()
    assert state_redis.get(ours.key) == b"reservation:2"


def test_an_unrenewed_lock_frees_itself(state_redis) -> None:
    """A holder that dies stops renewing; the lock expires after its TTL (mechanism shown
    with 0.5 s; the runner uses Settings.lease_ttl, 30 s, renewed every 10 s)."""
    dead = ResourceLock(state_redis, "computer:h:vm1", "reservation:1", ttl=0.5)
    other = ResourceLock(state_redis, "computer:h:vm1", "reservation:2", ttl=30)
    assert dead.acquire(wait=0)
    assert other.acquire(wait=10)
