"""The HTTP API against hostile clients, served by real `vclvirt api` processes (#10)."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import REDIS_PORT, TEST_BROKER, make_reservation, vclvirt_cli
from tests.e2e.api_process import ApiProcess, free_port, start_api
from vclvirt.config.settings import Settings

TOKEN = "sec-api-token-" + "k" * 30
# A Redis database of its own: reservations queued here are never consumed by a worker.
QUIET_BROKER = f"redis://127.0.0.1:{REDIS_PORT}/5"


@pytest.fixture
def serve(testbed: Path, tmp_path: Path) -> Iterator[Callable[..., ApiProcess]]:
    started: list[ApiProcess] = []

    def start(ready: bool = True, **kwargs: Any) -> ApiProcess:
        kwargs.setdefault("token", TOKEN)
        api = start_api(tmp_path, **kwargs)
        started.append(api)
        if ready:
            api.wait_ready()
        return api

    yield start
    for api in started:
        api.stop()


@pytest.fixture(scope="module")
def default_api(testbed: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    """One API with the deployed defaults and a token, shared by the tests that need no more."""
    api = start_api(tmp_path_factory.mktemp("api"), token=TOKEN)
    api.wait_ready()
    yield api
    api.stop()


@pytest.fixture
def quiet_broker(testbed: Path) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(QUIET_BROKER)
    client.flushdb()
    yield client
    client.flushdb()


def raw_exchange(port: int, data: bytes, *, wait: float = 30) -> tuple[int, dict[str, Any]]:
    """Send bytes as they are; the status and JSON body of the answer (server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        with contextlib.suppress(OSError):  # the server may answer and close before the end
            sock.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received or not _complete(received):
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


def _complete(received: bytes) -> bool:
    head, _, body = received.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def request_head(path: str, *, token: str | None, length: int) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def assert_envelope(body: dict[str, Any], code: str) -> dict[str, Any]:
    error = body["error"]
    assert error["code"] == code, body
    assert {"code", "field", "message", "hint"} <= error.keys(), body
    assert error["message"] and isinstance(error["hint"], str)
    return error


# ---- the token -----------------------------------------------------------------------


@pytest.mark.parametrize("blank", ["", "   ", "\t"])
def test_an_empty_or_blank_token_is_no_token(serve, blank):
    """VCLVIRT_API_TOKEN empty or blank, bound to 0.0.0.0: refused, not an open API."""
    api = serve(ready=False, token=blank, host="0.0.0.0")
    assert api.exit_code() == 2, api.log()
    assert "refusing to serve on 0.0.0.0 without a token" in api.log()


def test_a_short_token_is_refused_at_start(serve):
    """A token under 32 characters: the API does not start, and says why (not the token)."""
    short = "s" * 31
    api = serve(ready=False, token=short)
    assert api.exit_code() == 2, api.log()
    assert "VCLVIRT_API_TOKEN has 31 characters; at least 32 are required" in api.log()
    assert short not in api.log()


def test_the_token_is_checked_before_the_body_is_read(default_api):
    """A wrong token announcing 50 MB gets its 401 without sending a byte of the body."""
    api = default_api
    for token in (None, "wrong-" + "x" * 40):
        status, body = raw_exchange(
            api.port, request_head("/v1/loads", token=token, length=50_000_000), wait=20
        )
        assert status == 401
        assert_envelope(body, "UNAUTHORIZED")


def test_a_50_mb_body_costs_no_memory(default_api):
    """50 MB sent with a wrong token or with the right one: refused, the server's RSS stays."""
    api = default_api
    before = api.rss_kib()
    payload = b"[" + b"1," * 25_000_000 + b"1]"
    for token, expected in (("wrong-" + "x" * 40, 401), (TOKEN, 413)):
        status, _ = raw_exchange(
            api.port, request_head("/v1/loads", token=token, length=len(payload)) + payload
        )
        assert status == expected
    assert api.rss_kib() - before < 20 * 1024


def test_bodies_over_the_limit_are_refused_with_413(default_api):
    """Announced or streamed (chunked) beyond 64 KiB: 413 in the envelope."""
    api = default_api
    with api.client() as client:
        sent = client.post("/v1/loads", content=b" " * (64 * 1024 + 1))
        assert sent.status_code == 413
        assert_envelope(sent.json(), "BODY_TOO_LARGE")
        streamed = client.post("/v1/loads", content=iter([b" " * 40_000] * 3))
        assert streamed.status_code == 413
        assert_envelope(streamed.json(), "BODY_TOO_LARGE")


def test_a_slow_body_is_timed_out(serve):
    """A client that announces a body and stops sending gets 408 after the body timeout."""
    api = serve(VCLVIRT_API_BODY_TIMEOUT="1")
    status, body = raw_exchange(
        api.port, request_head("/v1/loads", token=TOKEN, length=100) + b'{"reserv', wait=20
    )
    assert status == 408
    assert_envelope(body, "BODY_TIMEOUT")


def test_the_default_body_timeout_applies(default_api):
    """With the deployed default (10 s) a stalled body is cut off too, not held forever."""
    assert Settings().api_body_timeout == 10.0
    api = default_api
    started = time.monotonic()
    status, _ = raw_exchange(
        api.port, request_head("/v1/loads", token=TOKEN, length=100) + b"{", wait=60
    )
    assert status == 408
    assert time.monotonic() - started >= 9  # the default, not something shorter


# ---- errors: always the envelope ---------------------------------------------------------


def test_broker_down_is_503_in_the_envelope(serve):
    """Redis not answering: 503 BROKER_UNREACHABLE (not 500 text/plain), URL masked."""
    down = f"redis://:sec-broker-pw-1234@127.0.0.1:{free_port()}/1"
    api = serve(VCLVIRT_BROKER_URL=down)
    with api.client() as client:
        for response in (
            client.post("/v1/loads", json=make_reservation(7901, "sec-api-down", "img-1-v0")),
            client.get("/v1/reservations/7901"),
        ):
            assert response.status_code == 503, response.text
            assert response.headers["content-type"] == "application/json"
            error = assert_envelope(response.json(), "BROKER_UNREACHABLE")
            assert "sec-broker-pw-1234" not in response.text and ":***@" in error["message"]


def test_every_error_is_in_the_envelope(serve, quiet_broker):
    """401, 404, 405, 409, 413, 422 (JSON syntax with its position): one envelope shape."""
    api = serve(VCLVIRT_BROKER_URL=QUIET_BROKER)
    reservation = make_reservation(7902, "sec-api-env", "img-1-v0")
    with api.client() as client, api.client(token="") as anonymous:
        assert client.post("/v1/loads", json=reservation).status_code == 202
        cases = [
            (anonymous.get("/v1/failed"), 401, "UNAUTHORIZED"),
            (client.get("/v1/nothing-here"), 404, "NOT_FOUND"),
            (client.get("/v1/reservations/424242"), 404, "UNKNOWN_RESERVATION"),
            (client.delete("/v1/loads"), 405, "METHOD_NOT_ALLOWED"),
            (client.post("/v1/loads", json=reservation), 409, "RESOURCE_BUSY"),
            (client.post("/v1/loads", content=b"x" * 70_000), 413, "BODY_TOO_LARGE"),
            (client.get("/v1/reservations/abc"), 422, "INVALID_INPUT"),
            (client.get("/v1/failed", params={"limit": 0}), 422, "INVALID_INPUT"),
        ]
        syntax = client.post("/v1/loads", content=b'{\n  "reservation_id": 1,\n  oops\n}')
    for response, status, code in cases:
        assert response.status_code == status, (response.request.url, response.text)
        assert response.headers["content-type"] == "application/json"
        assert_envelope(response.json(), code)
    error = assert_envelope(syntax.json(), "INVALID_INPUT")
    assert syntax.status_code == 422 and error["field"] is None
    assert "line 3, column 3" in error["message"]


def test_field_names_the_field_or_is_null(default_api):
    """field is the dotted path of the bad field, or null when no field is to blame."""
    api = default_api
    bad = make_reservation(7903, "sec-api-field", "img-1-v0")
    bad["computer"]["eth1_mac"] = bad["computer"]["eth0_mac"].upper()
    with api.client() as client:
        same_macs = client.post("/v1/loads", json=bad).json()["error"]
        not_object = client.post("/v1/loads", json="a reservation").json()["error"]
        bulk_item = client.post("/v1/loads", json=[1, 2]).json()["error"]
        step = client.post("/v1/reservations/1/retry", json={"from_step": "a;b"}).json()["error"]
    assert same_macs["field"] == "computer.eth1_mac"
    assert not_object["field"] is None and "not a string" in not_object["message"]
    # a list is a bulk load: its first item is named
    assert bulk_item["field"] == "[0]" and "not a number" in bulk_item["message"]
    assert step["field"] == "from_step"


# ---- the same input rules as the CLI -------------------------------------------------------


BAD_DOCUMENTS = {
    "bom": lambda text: b"\xef\xbb\xbf" + text.encode(),
    "utf16": lambda text: text.encode("utf-16"),
    "utf16le": lambda text: text.encode("utf-16-le"),
    "invalid_utf8": lambda text: text.encode().replace(b"sec-api-enc", b"sec-api-\xff\xfe"),
    "duplicate_key": lambda text: text.replace(
        '"state": "new"', '"state": "new", "state": "reload"'
    ).encode(),
    "binary": lambda text: bytes(range(256)) * 4,
}


@pytest.mark.parametrize("kind", sorted(BAD_DOCUMENTS))
def test_encodings_and_duplicates_are_refused_alike_by_api_and_cli(default_api, tmp_path, kind):
    """BOM, UTF-16, invalid UTF-8, duplicate keys, binary: the API's 422 and the CLI's exit 2
    give the same reason, and nothing is enqueued."""
    queue = redis.Redis.from_url(TEST_BROKER)
    queued = queue.llen("host.node-a")
    text = json.dumps(make_reservation(7904, "sec-api-enc", "img-1-v0"))
    document = BAD_DOCUMENTS[kind](text)
    api = default_api
    with api.client() as client:
        response = client.post("/v1/loads", content=document)
    assert response.status_code == 422, response.text
    error = assert_envelope(response.json(), "INVALID_INPUT")
    path = tmp_path / "reservation.json"
    path.write_bytes(document)
    cli = vclvirt_cli("load", str(path))
    assert cli.returncode == 2, cli.stderr
    assert error["message"] in cli.stderr and "Traceback" not in cli.stderr
    assert queue.llen("host.node-a") == queued
    assert client is not None and not queue.exists("vclvirt:reservation:7904")


# ---- operation parameters ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "params", "field"),
    [
        ("snapshot_create", {"name": "$(reboot)"}, "params.name"),
        ("snapshot_revert", {"name": "../../x"}, "params.name"),
        ("snapshot_delete", {}, "params.name"),
        ("power_on", {"x": "y" * 50_000}, "params.x"),
        ("node_status", {"name": "s1"}, "params.name"),
        ("reboot_everything", None, "operation"),
    ],
)
def test_operation_parameters_are_checked_before_anything_is_enqueued(
    default_api, operation, params, field
):
    """Bad, unknown or oversized parameters: 422 naming the field; no queue grows."""
    queue = redis.Redis.from_url(TEST_BROKER)
    queued = queue.llen("host.node-a")
    api = default_api
    body = {"reservation": make_reservation(7905, "sec-api-params", "img-1-v0"), "params": params}
    with api.client() as client:
        response = client.post(f"/v1/operations/{operation}", json=body)
    assert response.status_code == 422, response.text
    error = assert_envelope(response.json(), "INVALID_INPUT")
    assert error["field"] == field and len(response.text) < 2000
    assert queue.llen("host.node-a") == queued
    assert not queue.exists("vclvirt:reservation:7905")


# ---- busy and unknown reservations ----------------------------------------------------------


def test_load_of_a_queued_reservation_is_busy_in_api_and_cli(serve, quiet_broker, tmp_path):
    """A reservation still queued: API 409 RESOURCE_BUSY, CLI exit 6 (its own code)."""
    api = serve(VCLVIRT_BROKER_URL=QUIET_BROKER)
    reservation = make_reservation(7906, "sec-api-busy", "img-1-v0")
    path = tmp_path / "reservation.json"
    path.write_text(json.dumps(reservation))
    with api.client() as client:
        assert client.post("/v1/loads", json=reservation).status_code == 202
        again = client.post("/v1/loads", json=reservation)
    assert again.status_code == 409
    assert_envelope(again.json(), "RESOURCE_BUSY")
    cli = vclvirt_cli("load", str(path), VCLVIRT_BROKER_URL=QUIET_BROKER)
    assert cli.returncode == 6, cli.stderr
    assert "RESOURCE_BUSY" in cli.stderr


def test_retry_of_a_queued_reservation_is_busy_in_api_and_cli(serve, quiet_broker):
    """Retry while queued or running: API 409, CLI exit 6 (dispatch raises ResourceBusy)."""
    api = serve(VCLVIRT_BROKER_URL=QUIET_BROKER)
    with api.client() as client:
        loaded = client.post("/v1/loads", json=make_reservation(7907, "sec-api-rb", "img-1-v0"))
        assert loaded.status_code == 202
        retried = client.post("/v1/reservations/7907/retry")
    assert retried.status_code == 409, retried.text
    assert_envelope(retried.json(), "RESOURCE_BUSY")
    cli = vclvirt_cli("retry", "7907", VCLVIRT_BROKER_URL=QUIET_BROKER)
    assert cli.returncode == 6, cli.stderr


def test_unknown_reservation_is_404_and_exit_4(serve, quiet_broker):
    """Retry or status of a reservation never enqueued: API 404, CLI exit 4."""
    api = serve(VCLVIRT_BROKER_URL=QUIET_BROKER)
    with api.client() as client:
        for response in (
            client.post("/v1/reservations/7908/retry"),
            client.get("/v1/reservations/7908"),
        ):
            assert response.status_code == 404, response.text
            assert_envelope(response.json(), "UNKNOWN_RESERVATION")
    for args in (("retry", "7908"), ("status", "7908")):
        cli = vclvirt_cli(*args, VCLVIRT_BROKER_URL=QUIET_BROKER)
        assert cli.returncode == 4, (args, cli.stderr)
