"""The CLI against bad input and a missing broker: clear errors, the documented exit codes,
no secret on the screen, nothing sent to a host before its arguments are checked (#10)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import make_reservation, vclvirt_cli
from tests.e2e.api_process import free_port

BROKER_PASSWORD = "sec-cli-broker-pw-5678"


@pytest.fixture
def reservation_file(tmp_path: Path) -> Path:
    path = tmp_path / "reservation.json"
    path.write_text(json.dumps(make_reservation(7950, "sec-cli", "img-1-v0")))
    return path


# Each costs the client's retries against a missing broker (~17 s): two commands, one that
# reads a record and one that enqueues.
@pytest.mark.parametrize("args", [("status", "1"), ("load", "{file}")])
def test_broker_password_is_masked_when_the_broker_is_down(testbed, reservation_file, args):
    """Broker unreachable: exit 5, one line with the URL masked, never the password."""
    down = f"redis://:{BROKER_PASSWORD}@127.0.0.1:{free_port()}/1"
    argv = [a.format(file=reservation_file) for a in args]
    result = vclvirt_cli(*argv, VCLVIRT_BROKER_URL=down)
    assert result.returncode == 5, result.stderr
    assert "cannot reach the broker at redis://:***@127.0.0.1:" in result.stderr
    assert BROKER_PASSWORD not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (bytes(range(256)) * 8, "holds NUL bytes (the first at byte 0)"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "holds NUL bytes"),
        (bytes(range(128, 256)), "not valid UTF-8 (byte 0"),
        ('{"a": 1}'.encode("utf-16"), "UTF-16 or UTF-32 byte order mark"),
        (b"\xef\xbb\xbf{}", "byte order mark"),
        (b"", "invalid JSON at line 1, column 1"),
    ],
)
def test_binary_or_undecodable_reservation_file_is_a_clear_exit_2(
    testbed, tmp_path, content, reason
):
    """A binary file is refused with exit 2 and a reason, not a traceback."""
    path = tmp_path / "reservation.json"
    path.write_bytes(content)
    for command in ("load", "capture", "unload"):
        result = vclvirt_cli(command, str(path))
        assert result.returncode == 2, (command, result.stderr)
        assert reason in result.stderr and "Traceback" not in result.stderr


def test_unreadable_reservation_file_is_exit_2(testbed, tmp_path):
    """A directory or a missing file: exit 2 with the reason."""
    for path, reason in ((tmp_path, "Is a directory"), (tmp_path / "no.json", "No such file")):
        result = vclvirt_cli("load", str(path))
        assert result.returncode == 2 and reason in result.stderr, result.stderr


@pytest.fixture
def unreachable_inventory(tmp_path: Path) -> Path:
    """A host whose SSH port answers nobody: any host command would fail with exit 1."""
    key = tmp_path / "key"
    key.write_text("not used")
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(
        f'[hosts.sec-nowhere]\naddress = "127.0.0.1"\nport = {free_port()}\n'
        f'key_file = "{key}"\nknown_hosts = "{key}"\ndatastore_path = "/tmp"\n'
    )
    return inventory


@pytest.mark.parametrize(
    "name", ["*", "../etc/passwd", "-rf", "a b", "img\n", ".hidden", "x" * 200]
)
@pytest.mark.parametrize("command", ["exists", "size"])
def test_image_names_are_checked_before_any_host_command(unreachable_inventory, command, name):
    """`vclvirt images exists|size NAME`: a bad name is exit 2 without contacting the host."""
    result = vclvirt_cli(
        "--inventory",
        str(unreachable_inventory),
        *("images", command, "--host", "sec-nowhere", "--", name),
    )
    assert result.returncode == 2, result.stderr
    assert "invalid image name" in result.stderr
    assert "NODE_UNREACHABLE" not in result.stderr


def test_a_valid_image_name_does_reach_the_host(unreachable_inventory):
    """The check above is the name rule, not a refusal of everything: a good name is tried."""
    result = vclvirt_cli(
        "--inventory",
        str(unreachable_inventory),
        "images",
        "exists",
        "img-1-v0",
        "--host",
        "sec-nowhere",
    )
    assert result.returncode == 1 and "NODE_UNREACHABLE" in result.stderr, result.stderr


@pytest.mark.parametrize("name", ["$(reboot)", "../../x", "a;b"])
def test_snapshot_names_are_checked_before_enqueueing(testbed, reservation_file, name):
    """snapshot create --name with a hostile name: exit 2 naming params.name."""
    result = vclvirt_cli("snapshot", "create", str(reservation_file), "--name", name)
    assert result.returncode == 2, result.stderr
    assert "params.name" in result.stderr
