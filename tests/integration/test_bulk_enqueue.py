"""Bulk enqueue through the HTTP API (a list in POST /v1/loads) and the CLI (several
files): all validated before any is enqueued, then each answered in its place."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import make_reservation, vclvirt_cli
from vclvirt import dispatch
from vclvirt.api import create_api
from vclvirt.config.settings import Settings
from vclvirt.recovery import queue_keys
from vclvirt.state import keys

TOKEN = "b" * 40
RIDS = range(9700, 9760)


@pytest.fixture
def cleanup(testbed) -> Iterator[None]:
    """What the test enqueues is taken out again, so no later worker of node-a runs it."""
    yield
    client = dispatch._client()
    for key in queue_keys("node-a"):
        for raw in client.lrange(key, 0, -1):
            if json.loads(raw)["headers"]["id"].startswith("vclvirt-97"):
                client.lrem(key, 0, raw)
    for rid in RIDS:
        client.delete(keys.record(rid))
        client.srem(keys.inflight("node-a"), rid)


def _api() -> TestClient:
    return TestClient(create_api(Settings(api_token=TOKEN)))


def _post(client: TestClient, body: Any) -> Any:
    return client.post("/v1/loads", json=body, headers={"Authorization": f"Bearer {TOKEN}"})


def test_a_list_posted_to_loads_enqueues_each_and_answers_each(cleanup) -> None:
    """Three reservations, one already in flight: 202 with three answers in order."""
    client = _api()
    assert _post(client, make_reservation(9700, "bulk-a", "linux-B-1-v0")).status_code == 202
    body = [make_reservation(rid, f"bulk-{rid}", "linux-B-1-v0") for rid in (9700, 9701, 9702)]

    answer = _post(client, body)

    assert answer.status_code == 202, answer.text
    results = answer.json()["results"]
    assert results[0]["error"]["code"] == "RESOURCE_BUSY"
    assert [r["reservation_id"] for r in results[1:]] == [9701, 9702]
    assert results[1]["status_url"] == "/v1/reservations/9701"
    assert dispatch.status(9702) is not None


def test_one_invalid_reservation_in_a_list_enqueues_none(cleanup) -> None:
    """422 naming the index and the field; none of the list is enqueued."""
    bad = make_reservation(9711, "bulk-bad", "linux-B-1-v0")
    bad["computer"]["eth0_mac"] = "zz"
    body = [make_reservation(9710, "bulk-good", "linux-B-1-v0"), bad]

    answer = _post(_api(), body)

    assert answer.status_code == 422
    assert answer.json()["error"]["field"] == "[1].computer.eth0_mac"
    assert dispatch.status(9710) is None and dispatch.status(9711) is None


def test_an_empty_or_oversized_list_is_refused(cleanup) -> None:
    client = _api()
    assert _post(client, []).status_code == 422
    too_many = [make_reservation(9720, f"b{i}", "linux-B-1-v0") for i in range(101)]
    assert _post(client, too_many).status_code in (413, 422)
    assert dispatch.status(9720) is None


def test_the_cli_loads_several_files_validating_all_first(cleanup, tmp_path: Path) -> None:
    """`vclvirt load a.json b.json`: one line per file; with one invalid file, nothing is
    enqueued and the exit code says invalid input (2)."""
    files = []
    for rid in (9730, 9731):
        path = tmp_path / f"{rid}.json"
        path.write_text(json.dumps(make_reservation(rid, f"bulk-{rid}", "linux-B-1-v0")))
        files.append(str(path))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(make_reservation(9732, "bulk-9732", "linux-B-1-v0"))[:-1])

    refused = vclvirt_cli("load", files[0], str(bad))
    assert refused.returncode == 2, refused.stderr
    assert dispatch.status(9730) is None

    done = vclvirt_cli("load", *files)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["9730", "9731"]
    again = vclvirt_cli("load", *files)
    assert again.returncode == 6  # busy: both are in flight
