"""The HTTP API, served by a real `vclvirt api` process, in front of a real worker."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import ROOT, TEST_BROKER, make_reservation, repository_image, wait_for

TOKEN = "test-token-" + "x" * 24


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(tmp_path: Path, host: str, token: str | None) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "VCLVIRT_API_TOKEN"}
    if token:
        env["VCLVIRT_API_TOKEN"] = token
    log = (tmp_path / f"api-{port}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "vclvirt", "api", "--host", host, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
    )
    return process, port


@pytest.fixture
def api(testbed: Path, tmp_path: Path) -> Iterator[httpx.Client]:
    process, port = _serve(tmp_path, "127.0.0.1", TOKEN)
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    try:
        wait_for(lambda: _answers(client), 30, "the API to answer")
        yield client
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)


def _answers(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False


# The README's /v1 routes; the test checks every route of the OpenAPI document, these
# only make sure the document is the app's real one.
DOCUMENTED_ROUTES = {
    ("POST", "/v1/loads"),
    ("POST", "/v1/captures"),
    ("POST", "/v1/operations/{operation}"),
    ("GET", "/v1/reservations/{reservation_id}"),
    ("GET", "/v1/failed"),
    ("POST", "/v1/reservations/{reservation_id}/retry"),
}
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}
NOT_THE_TOKEN = {
    "no Authorization header": None,
    "a wrong token": "Bearer nope",
    "the token less its last character": f"Bearer {TOKEN[:-1]}",
    "the token with a character more": f"Bearer {TOKEN}x",
    "the Bearer scheme without a token": "Bearer",
    "the token under another scheme": f"Basic {TOKEN}",
}


def v1_routes(document: dict) -> list[tuple[str, str, str]]:
    """(method, path template, path with example parameters) of every /v1 operation."""
    routes = []
    for template, operations in document["paths"].items():
        if not template.startswith("/v1/"):
            continue
        for method, operation in operations.items():
            if method not in HTTP_METHODS:
                continue
            path = template
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    example = "1" if parameter["schema"].get("type") == "integer" else "x"
                    path = path.replace("{" + parameter["name"] + "}", example)
            routes.append((method.upper(), template, path))
    return routes


def test_every_v1_route_refuses_a_missing_or_wrong_token(api):
    """Every /v1 route in the app's OpenAPI document answers 401 (with WWW-Authenticate)
    without the token, with a wrong one, a prefix of it or a longer one, and answers
    something else with the right token; a new route is covered without editing this."""
    routes = v1_routes(api.get("/openapi.json").json())
    assert {(method, template) for method, template, _ in routes} >= DOCUMENTED_ROUTES
    base = str(api.base_url).rstrip("/")
    wrong = []
    for method, template, path in routes:
        body = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
        for what, authorization in NOT_THE_TOKEN.items():
            headers = {"Authorization": authorization} if authorization is not None else {}
            response = httpx.request(method, base + path, headers=headers, timeout=30, **body)
            if response.status_code != 401 or "WWW-Authenticate" not in response.headers:
                wrong.append(f"{method} {template} with {what}: {response.status_code}")
        accepted = api.request(method, path, **body)
        if accepted.status_code == 401:
            wrong.append(f"{method} {template} refuses the right token")
    assert wrong == []


def test_bad_input_names_the_field_and_enqueues_nothing(api):
    """A malformed reservation gives 422 naming the field; no queue grows, no record appears."""
    queue_before = redis.Redis.from_url(TEST_BROKER).llen("host.node-a")
    reservation = make_reservation(7501, "e2e-api-bad", "linux-X-650-v0")
    reservation["computer"]["eth0_mac"] = "not-a-mac"
    response = api.post("/v1/loads", json=reservation)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "INVALID_INPUT" and error["field"] == "computer.eth0_mac"
    assert "eth0_mac" in error["message"]
    unknown = api.post(
        "/v1/loads", json={**make_reservation(7502, "e2e-api-bad", "x"), "colour": "red"}
    )
    assert unknown.status_code == 422 and unknown.json()["error"]["field"] == "colour"
    not_json = api.post("/v1/loads", content=b"{nope", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 422
    assert api.get("/v1/reservations/7501").status_code == 404
    assert redis.Redis.from_url(TEST_BROKER).llen("host.node-a") == queue_before


def test_load_through_the_api_then_status_and_no_second_chain(
    api, testbed, start_worker, cleanup_computers
):
    """202 with a status URL; a second enqueue of the running reservation is 409."""
    image = "linux-E2eApi-651-v0"
    repository_image(testbed, image)
    cleanup_computers.append("e2e-api")
    start_worker("node-a")
    reservation = make_reservation(7503, "e2e-api", image, image_id=651)

    accepted = api.post("/v1/loads", json=reservation)
    again = api.post("/v1/loads", json=reservation)

    assert accepted.status_code == 202, accepted.text
    assert again.status_code == 409 and again.json()["error"]["code"] == "RESOURCE_BUSY"
    status_url = accepted.json()["status_url"]
    final = wait_for(
        lambda: (r := api.get(status_url).json())["state"] in ("succeeded", "failed") and r,
        120,
        "the load to finish",
    )
    assert final["state"] == "succeeded"
    assert [s["state"] for s in final["steps"]] == ["succeeded"] * 7


def test_failed_reservation_is_listed_and_retried_through_the_api(
    api, testbed, start_worker, cleanup_computers
):
    """GET /v1/failed lists the failure with step and code; POST .../retry completes it."""
    image = "linux-E2eApiRetry-652-v0"
    for stale in testbed.glob(f"**/{image}*"):
        subprocess.run(["rm", "-rf", str(stale)], check=True)
    cleanup_computers.append("e2e-api-retry")
    start_worker("node-a")
    assert (
        api.post(
            "/v1/loads", json=make_reservation(7504, "e2e-api-retry", image, image_id=652)
        ).status_code
        == 202
    )
    wait_for(
        lambda: api.get("/v1/reservations/7504").json()["state"] == "failed",
        120,
        "the load to fail",
    )
    listed = {r["reservation_id"]: r for r in api.get("/v1/failed").json()}
    assert listed[7504]["failed_step"] == "pre_define"
    assert listed[7504]["error"]["code"] == "IMAGE_NOT_FOUND"

    repository_image(testbed, image)
    assert api.post("/v1/reservations/7504/retry").status_code == 202
    wait_for(
        lambda: api.get("/v1/reservations/7504").json()["state"] == "succeeded",
        120,
        "the retried load to succeed",
    )
    assert api.post("/v1/reservations/7504/retry").status_code == 422  # nothing to retry


def test_api_without_token_serves_only_on_loopback(testbed, tmp_path):
    """No token configured: binding 0.0.0.0 is refused; 127.0.0.1 serves (development)."""
    refused, _ = _serve(tmp_path, "0.0.0.0", None)
    assert refused.wait(timeout=30) == 2
    served, port = _serve(tmp_path, "127.0.0.1", None)
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
        wait_for(lambda: _answers(client), 30, "the development API")
        assert client.get("/v1/failed").status_code == 200
    finally:
        served.terminate()
        served.wait(timeout=10)
