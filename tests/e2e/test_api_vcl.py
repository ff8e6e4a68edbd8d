"""The routes VCL's provisioning module uses (vclvirt.vcl.api_routes), on a real API process
in front of real workers: the long-poll on a status record and the image queries."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import make_reservation, repository_image, uncached_image
from tests.e2e.vcl_helpers import ApiServer, api_server

FINAL = {"succeeded", "failed", "superseded"}


@pytest.fixture
def api(testbed: Path, tmp_path: Path) -> Iterator[ApiServer]:
    with api_server(tmp_path) as server:
        yield server


def wait(api: ApiServer, reservation_id: int, after: str | None, timeout: float) -> Any:
    query = f"timeout={timeout}" + (f"&after={after}" if after else "")
    with api.client() as client:
        response = client.get(f"/v1/reservations/{reservation_id}/wait?{query}")
    assert response.status_code == 200, response.text
    assert response.headers["ETag"] == f'"{response.json()["etag"]}"'
    return response.json()


def test_vcl_routes_need_the_token(api):
    """Every route of the module answers 401 without the bearer token; OpenAPI lists them."""
    with api.client(authorised=False) as anonymous:
        for path in (
            "/v1/reservations/1/wait?timeout=0",
            "/v1/hosts/node-a/images",
            "/v1/hosts/node-a/images/linux-X-1-v0",
        ):
            assert anonymous.get(path).status_code == 401, path
    with api.client() as client:
        paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/v1/reservations/{reservation_id}/wait",
        "/v1/hosts/{host}/images",
        "/v1/hosts/{host}/images/{image}",
    } <= paths.keys()


def test_image_queries_on_a_host(api, testbed):
    """exists, size in bytes and MB (allocated, as VCL counts), list; a missing image is
    'exists: false' with no size."""
    image = "linux-VclApiImage-671-v0"
    source = uncached_image(testbed, image, "64M", "8M", "node-a")
    with api.client() as client:
        info = client.get(f"/v1/hosts/node-a/images/{image}").json()
        listing = client.get("/v1/hosts/node-a/images").json()
        missing = client.get("/v1/hosts/node-a/images/linux-VclApiNowhere-672-v0").json()
    assert info["exists"] is True and info["host"] == "node-a" and info["image"] == image
    assert info["size_bytes"] == source.stat().st_blocks * 512
    assert info["size_mb"] == info["size_bytes"] // 2**20
    assert 8 <= info["size_mb"] < 64
    assert image in listing["repository"] and listing["host"] == "node-a"
    assert missing == {
        "host": "node-a",
        "image": "linux-VclApiNowhere-672-v0",
        "exists": False,
        "size_bytes": None,
        "size_mb": None,
    }


@pytest.mark.parametrize("bad", ["-rf", ".hidden", "a*b", "x;reboot", "a b", "é"])
def test_image_name_is_checked_before_anything_else(api, bad):
    """A bad image name is a 422 naming the field, even for a host that does not exist:
    nothing reaches a host."""
    with api.client() as client:
        response = client.get(f"/v1/hosts/no-such-host/images/{quote(bad)}")
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_INPUT" and error["field"] == "image"


def test_unknown_host_and_reservation(api):
    with api.client() as client:
        host = client.get("/v1/hosts/no-such-host/images/linux-X-1-v0")
        reservation = client.get("/v1/reservations/987654/wait?timeout=0")
        too_long = client.get("/v1/reservations/987654/wait?timeout=61")
    assert host.status_code == 422 and host.json()["error"]["code"] == "UNKNOWN_HOST"
    assert reservation.status_code == 404
    assert reservation.json()["error"]["code"] == "UNKNOWN_RESERVATION"
    assert too_long.status_code == 422 and "timeout" in too_long.json()["error"]["field"]


def test_wait_follows_a_load_to_its_end(api, testbed, start_worker, cleanup_computers):
    """Each answer is a newer record than the caller's; the last one is final and equals
    GET /v1/reservations/{id}; asking again with its etag answers at once."""
    image = "linux-VclApiWait-673-v0"
    repository_image(testbed, image)
    cleanup_computers.append("vcl-api-wait")
    start_worker("node-a")
    reservation = make_reservation(7601, "vcl-api-wait", image, image_id=673)
    with api.client() as client:
        assert client.post("/v1/loads", json=reservation).status_code == 202
    answers, etag = [], None
    while not answers or not answers[-1]["finished"]:
        answer = wait(api, 7601, etag, 30)
        assert answer["changed"], "a 30 s wait during a running load saw no change"
        answers.append(answer)
        etag = answer["etag"]
    assert len({a["etag"] for a in answers}) == len(answers)
    final = answers[-1]["record"]
    assert final["state"] == "succeeded"
    with api.client() as client:
        assert client.get("/v1/reservations/7601").json() == final
    started = time.monotonic()
    again = wait(api, 7601, etag, 30)
    assert (again["changed"], again["finished"], again["etag"]) == (False, True, etag)
    assert time.monotonic() - started < 30  # final: no need to wait for a change


def test_wait_holds_until_the_record_changes(api, testbed, start_worker):
    """No worker for node-b: the queued record does not change and the wait lasts its
    timeout; a waiter answers with the change as soon as a worker takes the load."""
    reservation = make_reservation(7602, "vcl-api-held", "linux-VclApiHeld-674-v0", host="node-b")
    with api.client() as client:
        assert client.post("/v1/loads", json=reservation).status_code == 202
    first = wait(api, 7602, None, 30)
    assert first["changed"] and first["record"]["state"] not in FINAL

    started = time.monotonic()
    held = wait(api, 7602, first["etag"], 2)
    assert (held["changed"], held["finished"]) == (False, False)
    assert time.monotonic() - started >= 2
    assert held["etag"] == first["etag"]

    woken: dict[str, Any] = {}
    waiter = threading.Thread(target=lambda: woken.update(wait(api, 7602, first["etag"], 60)))
    waiter.start()
    start_worker("node-b")  # takes the load; the image does not exist, so it fails soon
    waiter.join(timeout=90)
    assert woken["changed"] is True, woken
    assert woken["etag"] != first["etag"]

    etag = woken["etag"]
    while not (answer := wait(api, 7602, etag, 30))["finished"]:
        etag = answer["etag"]
    assert answer["record"]["error"]["code"] == "IMAGE_NOT_FOUND"
