"""The CLI's exit codes are the README's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vclvirt import cli
from vclvirt.errors import (
    BrokerUnreachable,
    CommandFailed,
    ImageNotFound,
    InvalidInput,
    ResourceBusy,
    UnknownHost,
    UnknownReservation,
)

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidInput("x"), 2),
        (UnknownHost("x"), 2),
        (UnknownReservation("x"), 4),
        (BrokerUnreachable("x"), 5),
        (ResourceBusy("x"), 6),
        (ImageNotFound("x"), 1),
        (CommandFailed("x"), 1),
    ],
)
def test_each_error_has_its_exit_code(error, code):
    """Invalid input 2, unknown reservation 4, broker 5, busy 6, anything else 1."""
    assert cli.exit_code_of(error) == code


def test_readme_lists_the_exit_codes_the_cli_uses():
    """The README's exit code list names exactly the codes and meanings of vclvirt.cli."""
    line = re.search(r"Exit codes: (.*?)\.\n", README.read_text(), re.S)
    assert line, "README has no 'Exit codes:' sentence"
    listed = dict(re.findall(r"(\d) ([a-z ]+?)(?:,|$)", " ".join(line[1].split())))
    assert listed == {
        "0": "success",
        "1": "the operation failed",
        "2": "invalid input",
        "3": "timed out waiting",
        "4": "unknown reservation",
        "5": "broker unreachable",
        "6": "busy",
        "7": "orphans listed",
    }
    assert (cli.EXIT_FAILED, cli.EXIT_INVALID, cli.EXIT_TIMEOUT) == (1, 2, 3)
    assert (cli.EXIT_UNKNOWN, cli.EXIT_BROKER, cli.EXIT_BUSY, cli.EXIT_ORPHANS) == (4, 5, 6, 7)


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("VCLVIRT_BROKER_URL", "amqp://vclvirt:s3cret-pw@broker:5672//", "VCLVIRT_BROKER_URL"),
        ("VCLVIRT_RESULT_BACKEND", "http://s3cret-pw@backend/", "VCLVIRT_RESULT_BACKEND"),
        ("VCLVIRT_LEASE_TTL", "half a minute", "VCLVIRT_LEASE_TTL"),
    ],
)
def test_invalid_configuration_is_one_line_and_exit_2(variable, value, named):
    """A setting the process cannot use (a broker URL of another scheme, a number that is
    not one) is a one-line configuration error with exit code 2, before anything is
    contacted: no traceback, and not the value (it may hold a password)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, variable: value}
    done = subprocess.run(
        [sys.executable, "-m", "vclvirt", "status", "1"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: invalid configuration: {named}: ")
    assert "Traceback" not in done.stderr and "s3cret" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_redis_schemes_are_accepted():
    from vclvirt.config.settings import Settings

    for url in ("redis://h:6379/0", "rediss://u:p@h/1", "unix:///run/redis.sock?db=2"):
        assert Settings(broker_url=url, result_backend=url).broker_url == url
