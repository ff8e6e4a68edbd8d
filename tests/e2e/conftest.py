"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import vcl_real
from tests.e2e.vcl_helpers import ApiServer, api_server
from tests.e2e.vcl_real import VclSite

# -- Apache VCL's own code against its schema (tests/e2e/test_vcl_real.py, test_vcl_vcld.py)


@pytest.fixture(scope="module")
def vcl_database(testbed: Path) -> None:
    """VCL's own schema (vcl.sql) in the test bed's MariaDB, once per module."""
    vcl_real.create_database()


@pytest.fixture
def db(vcl_database: None) -> Iterator[Any]:
    """A connection to that database."""
    connection = vcl_real.connect()
    yield connection
    connection.close()


@pytest.fixture
def api(testbed: Path, tmp_path: Path) -> Iterator[ApiServer]:
    """vclvirt's HTTP API, as a VCL site's module reaches it."""
    with api_server(tmp_path) as server:
        yield server


@pytest.fixture
def site(api: ApiServer, tmp_path: Path, db: Any) -> VclSite:
    """A VCL site's vcld.conf and module configuration pointing at that API."""
    made = VclSite(tmp_path / "vcl", api.url, api.token)
    made.write()
    return made
