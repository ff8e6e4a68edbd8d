"""provisioning.images: image queries answered from the datastore, else the repository."""

from __future__ import annotations

import subprocess

import pytest

from tests.unit._provisioning import make_host
from vclvirt.errors import ImageNotFound
from vclvirt.provisioning.images import ImageQueries


def test_master_first_then_repository_then_not_found(tmp_path):
    """A master answers for itself; an image only in the repository is found there; an
    image in neither is ImageNotFound; list_images shows both places."""
    host = make_host(tmp_path)
    master = host.master("linux-Master-1-v0")
    repo = host.root / "repository" / "linux-Repo-2-v0"
    repo.mkdir()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(repo / "linux-Repo-2-v0.qcow2"), "8M"],
        check=True,
    )
    queries = ImageQueries(host.context)
    assert queries.exists("linux-Master-1-v0") and queries.exists("linux-Repo-2-v0")
    assert not queries.exists("linux-None-3-v0")
    assert queries.size_bytes("linux-Master-1-v0") == master.stat().st_blocks * 512
    assert queries.size_mb("linux-Master-1-v0") == 0
    with pytest.raises(ImageNotFound, match="linux-None-3-v0"):
        queries.size_bytes("linux-None-3-v0")
    assert queries.listing() == {
        "datastore": ["linux-Master-1-v0"],
        "repository": ["linux-Repo-2-v0"],
    }
