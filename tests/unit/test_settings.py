"""Settings: each bounded setting at its boundary and one past it, and the limits derived
from them (mutmut does not mutate settings.py: its functions are all decorated)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from vclvirt.config.settings import COMMAND_TIMEOUT, COPY_TIMEOUT, Settings


@pytest.mark.parametrize(
    ("name", "lowest", "below"),
    [
        ("lease_ttl", 3, 2.999),
        ("max_interruptions", 1, 0),
        ("max_tasks_per_child", 0, -1),
        ("metrics_port", 0, -1),
        ("status_ttl_days", 1, 0),
        ("api_body_timeout", 0.001, 0),
        ("heartbeat_interval", 0.001, 0),
        ("copy_timeout", 0.001, 0),
        ("node_status_timeout", 0.001, 0),
    ],
)
def test_bounded_setting_takes_its_lowest_value_and_refuses_below(monkeypatch, name, lowest, below):
    """VCLVIRT_<NAME> takes its lowest allowed value; just below it the process does not start."""
    monkeypatch.setenv(f"VCLVIRT_{name.upper()}", str(lowest))
    assert getattr(Settings(), name) == lowest
    monkeypatch.setenv(f"VCLVIRT_{name.upper()}", str(below))
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert caught.value.errors()[0]["loc"] == (name,)


@pytest.mark.parametrize(("port", "ok"), [(65535, True), (65536, False)])
def test_metrics_port_is_at_most_65535(monkeypatch, port, ok):
    """VCLVIRT_METRICS_PORT takes 65535 and refuses 65536."""
    monkeypatch.setenv("VCLVIRT_METRICS_PORT", str(port))
    if ok:
        assert Settings().metrics_port == port
    else:
        with pytest.raises(ValidationError):
            Settings()


def test_defaults_are_the_documented_ones(monkeypatch):
    """The README's defaults: copy 7200 s, command 300 s, lease 30 s, beats of 10 s."""
    for name in ("COPY_TIMEOUT", "COMMAND_TIMEOUT", "LEASE_TTL", "HEARTBEAT_INTERVAL"):
        monkeypatch.delenv(f"VCLVIRT_{name}", raising=False)
    settings = Settings()
    assert (settings.copy_timeout, settings.command_timeout) == (COPY_TIMEOUT, COMMAND_TIMEOUT)
    assert (COPY_TIMEOUT, COMMAND_TIMEOUT) == (7200.0, 300.0)
    assert (settings.lease_ttl, settings.heartbeat_interval) == (30.0, 10.0)


def test_operation_hard_limit_derives_from_copy_boot_and_shutdown():
    """An operation's hard limit: the copy, the longer boot, the shutdown and 600 s; the
    broker's visibility timeout 600 s more."""
    settings = Settings(
        copy_timeout=100.0,
        post_load_timeout_linux=50.0,
        post_load_timeout_windows=20.0,
        power_off_timeout=7.0,
    )
    assert settings.operation_time_limit == 100 + 50 + 7 + 600
    assert settings.visibility_timeout == 100 + 50 + 7 + 600 + 600
    windows_longer = settings.model_copy(update={"post_load_timeout_windows": 80.0})
    assert windows_longer.operation_time_limit == 100 + 80 + 7 + 600
