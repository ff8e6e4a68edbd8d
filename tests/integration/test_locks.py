"""Computer locks on a real Redis: exclusive between reservations, renewable, owned by
one run (reservation, generation, holder process), taken over by a newer generation of the
same reservation; fenced locks issue ever-growing tokens."""

from __future__ import annotations

from vclvirt.locks import ResourceLock, RunOwner


def test_a_second_owner_waits_then_gives_up_naming_the_holder(state_redis) -> None:
    """While A holds the lock, B's acquire returns False after its wait and names A."""
    a = ResourceLock(state_redis, "computer:h:vm1", "reservation:1", ttl=30)
    b = ResourceLock(state_redis, "computer:h:vm1", "reservation:2", ttl=30)
    assert a.acquire(wait=0)
    assert not b.acquire(wait=0.3)
    assert b.held_by == "reservation:1"
    a.release()
    assert b.acquire(wait=0) and b.held_by is None


def _run(reservation: int, generation: int, holder: str) -> RunOwner:
    return RunOwner(reservation, generation, f"node-a@m|{holder}|1")


def test_a_newer_generation_takes_its_reservations_lock_over_and_the_old_owner_is_out(
    state_redis,
) -> None:
    """A resumed operation (next generation, another process) gets the lock at once; the
    old run can neither renew it nor release it, and another reservation cannot take it."""
    old = ResourceLock(state_redis, "computer:h:vm1", _run(1, 1, "old"), ttl=30, fenced=True)
    new = ResourceLock(state_redis, "computer:h:vm1", _run(1, 2, "new"), ttl=30, fenced=True)
    assert old.acquire(wait=0)
    assert new.acquire(wait=0)
    assert not old.renew()
    old.release()
    assert state_redis.get(new.key) == str(new.owner).encode()
    assert not ResourceLock(state_redis, "computer:h:vm1", _run(2, 9, "x"), ttl=30).acquire(0)
    assert not ResourceLock(state_redis, "computer:h:vm1", _run(1, 1, "x"), ttl=30).acquire(0)
    assert old.token is not None and new.token is not None and new.token > old.token


def test_the_same_generation_in_another_process_does_not_take_the_lock(state_redis) -> None:
    """Two processes of one generation (a message delivered twice): one lock holder."""
    first = ResourceLock(state_redis, "computer:h:vm1", _run(1, 3, "a"), ttl=30)
    twin = ResourceLock(state_redis, "computer:h:vm1", _run(1, 3, "b"), ttl=30)
    assert first.acquire(wait=0)
    assert not twin.acquire(wait=0)


def test_fencing_tokens_grow_with_every_grant_even_after_redis_lost_them(state_redis) -> None:
    """Each grant's token is larger than every earlier one, also when Redis lost the last
    token (a failover without it): the Redis clock in microseconds is the floor."""
    tokens = []
    for generation in range(1, 6):
        lock = ResourceLock(
            state_redis, "computer:h:vm2", _run(7, generation, "p"), ttl=30, fenced=True
        )
        assert lock.acquire(wait=0)
        assert lock.token is not None
        tokens.append(lock.token)
        if generation == 3:
            state_redis.delete(lock.fence_key)
    assert tokens == sorted(set(tokens))


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
