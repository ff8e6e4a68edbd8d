"""RetryPolicy: every retry and backoff decision, from the settings (defaults unchanged)."""

from __future__ import annotations

import pytest

from vclvirt.config.settings import Settings
from vclvirt.retrypolicy import RetryPolicy


def _policy(**settings: float) -> RetryPolicy:
    return RetryPolicy.from_settings(Settings(broker_url="redis://unused", **settings))


def test_the_deployed_defaults_are_unchanged() -> None:
    policy = _policy()
    assert policy == RetryPolicy()
    assert (policy.backoff, policy.backoff_max, policy.transient_deadline) == (2.0, 30.0, 900.0)
    assert (policy.max_interruptions, policy.no_worker_deadline, policy.busy_max) == (3, 900, 30)


def test_retry_delay_grows_to_its_ceiling_and_never_drops_below_a_second() -> None:
    """Full jitter in [1 s, min(max, base * 2^(n-1))]: the deployed defaults 2 s and 30 s."""
    policy = _policy()
    for failures, ceiling in ((1, 2.0), (2, 4.0), (4, 16.0), (5, 30.0), (20, 30.0)):
        delays = [policy.delay(failures) for _ in range(200)]
        assert all(1.0 <= d <= max(1.0, ceiling) for d in delays)
        assert max(delays) > ceiling * 0.6


@pytest.mark.parametrize(
    ("first", "delay", "now", "gives_up"),
    [(0.0, 10.0, 880.0, False), (0.0, 10.0, 890.0, False), (0.0, 10.0, 890.5, True)],
)
def test_a_step_gives_up_when_its_retry_would_pass_the_deadline(
    first: float, delay: float, now: float, gives_up: bool
) -> None:
    assert _policy().gives_up(first, delay, now) is gives_up


def test_a_busy_computer_is_looked_at_again_doubling_up_to_30_s() -> None:
    policy = _policy()
    assert [policy.busy_delay(n) for n in (1, 2, 3, 5, 6, 40)] == [1, 2, 4, 16, 30, 30]


def test_interruptions_and_the_no_worker_deadline_come_from_the_settings() -> None:
    policy = _policy(max_interruptions=2, no_worker_deadline=60)
    assert not policy.interrupted_too_often(1)
    assert policy.interrupted_too_often(2)
    assert policy.no_worker_fails_at(1000.0) == 1060.0


def test_the_backoff_and_its_ceiling_come_from_the_settings() -> None:
    """VCLVIRT_RETRY_BACKOFF doubles from 8 s; VCLVIRT_RETRY_BACKOFF_MAX caps it at 12 s."""
    policy = _policy(retry_backoff=8, retry_backoff_max=12)
    for failures, ceiling in ((1, 8.0), (2, 12.0), (6, 12.0)):
        delays = [policy.delay(failures) for _ in range(200)]
        assert all(1.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8


def test_the_jitter_is_drawn_from_zero_to_the_ceiling_and_floored_at_one_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    drawn: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        drawn.append((low, high))
        return low

    monkeypatch.setattr("vclvirt.retrypolicy.random.uniform", uniform)
    assert _policy().delay(3) == 1.0
    assert drawn == [(0, 8.0)]
    monkeypatch.setattr("vclvirt.retrypolicy.random.uniform", lambda low, high: 1.5)
    assert _policy().delay(3) == 1.5
