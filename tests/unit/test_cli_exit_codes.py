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
    }
    assert (cli.EXIT_FAILED, cli.EXIT_INVALID, cli.EXIT_TIMEOUT) == (1, 2, 3)
    assert (cli.EXIT_UNKNOWN, cli.EXIT_BROKER, cli.EXIT_BUSY) == (4, 5, 6)
