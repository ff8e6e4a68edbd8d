"""Every documented limit at its boundary and one past it, on every channel that takes it.

The channels are the Python API (`dispatch`), the CLI (`vclvirt load FILE`) and the
HTTP API (`POST /v1/loads`), all in-process: what would be enqueued is recorded instead
of sent (the real enqueue path is the integration tier's). A refusal must come before
anything is recorded.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tests.unit.conftest import VALID_RESERVATION, reservation_document
from vclvirt import cli, dispatch
from vclvirt.api import MAX_BULK, create_api
from vclvirt.api_guard import MIN_TOKEN_LENGTH, api_token
from vclvirt.config.settings import Settings
from vclvirt.errors import InvalidInput
from vclvirt.models import MAX_DOCUMENT_BYTES, MAX_ID
from vclvirt.vcl.api_routes import LONGEST_WAIT_S

TOKEN = "t" * MIN_TOKEN_LENGTH
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class _Inventory:
    def host(self, name: str) -> object:
        return object()


class _Record:
    def to_dict(self) -> dict[str, Any]:
        return {"state": "succeeded"}


@pytest.fixture
def enqueued(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """What dispatch would have enqueued (reservation, operation, params), nothing sent."""
    sent: list[Any] = []

    def send(checked: Any) -> dispatch.Handle:
        sent.append((checked.reservation, checked.operation, checked.params))
        rid = checked.reservation.reservation_id
        return dispatch.Handle(rid, f"task-{rid}")

    def begin(checked: Any) -> int:
        sent.append((checked.reservation, checked.operation, checked.params))
        return 1

    monkeypatch.setattr(dispatch, "get_inventory", _Inventory)
    monkeypatch.setattr(dispatch, "_send", send)
    monkeypatch.setattr(dispatch, "_begin", begin)
    monkeypatch.setattr("vclvirt.tasks.publish.Publisher.publish_many", lambda _p, begun: None)
    monkeypatch.setattr(dispatch, "status", lambda reservation_id: _Record())
    yield sent


@pytest.fixture
def client(enqueued: list[Any]) -> TestClient:
    return TestClient(create_api(Settings(api_token=TOKEN)))


def padded(document: dict[str, Any], size: int) -> bytes:
    """The document as compact JSON, padded with trailing spaces to exactly `size` bytes."""
    text = json.dumps(document, separators=(",", ":")).encode()
    assert len(text) <= size
    return text + b" " * (size - len(text))


# -- the channels: each answers (accepted, field named or None) ------------------------------


def via_python(data: bytes, tmp_path: Path, client: TestClient) -> tuple[bool, str | None]:
    try:
        dispatch.load(data.decode())
    except InvalidInput as error:
        return False, error.field
    return True, None


def via_cli(data: bytes, tmp_path: Path, client: TestClient) -> tuple[bool, str | None]:
    path = tmp_path / "reservation.json"
    path.write_bytes(data)
    result = CliRunner().invoke(cli.app, ["load", str(path)])
    assert result.exit_code in (0, 2), result.output
    return result.exit_code == 0, None


def via_http(data: bytes, tmp_path: Path, client: TestClient) -> tuple[bool, str | None]:
    answer = client.post("/v1/loads", content=data, headers=AUTH)
    assert answer.status_code in (202, 413, 422), answer.text
    return answer.status_code == 202, answer.json().get("error", {}).get("field")


CHANNELS = {"python": via_python, "cli": via_cli, "http": via_http}
Channel = Callable[[bytes, Path, TestClient], tuple[bool, str | None]]


@pytest.fixture(params=sorted(CHANNELS))
def submit(
    request: pytest.FixtureRequest, tmp_path: Path, client: TestClient, enqueued: list[Any]
) -> Callable[[bytes], tuple[bool, str | None]]:
    """Submit a reservation document on one channel; a refusal enqueues nothing."""
    channel: Channel = CHANNELS[request.param]

    def go(data: bytes) -> tuple[bool, str | None]:
        before = len(enqueued)
        accepted, field = channel(data, tmp_path, client)
        assert len(enqueued) == before + (1 if accepted else 0)
        return accepted, field

    return go


# -- the document size: 64 KiB ----------------------------------------------------------------


def test_document_of_exactly_64_kib_is_accepted(submit):
    """A reservation document of exactly 64 KiB (65,536 bytes) is accepted."""
    assert submit(padded(VALID_RESERVATION, MAX_DOCUMENT_BYTES)) == (True, None)


def test_document_one_byte_past_64_kib_is_refused(submit):
    """A reservation document of 65,537 bytes is refused, nothing enqueued."""
    assert submit(padded(VALID_RESERVATION, MAX_DOCUMENT_BYTES + 1))[0] is False


def test_http_body_one_byte_past_64_kib_is_413(client):
    """Over HTTP a body past 64 KiB is 413 BODY_TOO_LARGE, before it is parsed."""
    answer = client.post(
        "/v1/loads", content=padded(VALID_RESERVATION, MAX_DOCUMENT_BYTES + 1), headers=AUTH
    )
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "BODY_TOO_LARGE"


# -- field limits, accepted at the boundary and refused one past it -----------------------------

# (computer fields, image fields, top-level fields) -> accepted?, field named when refused
LIMITS: list[tuple[str, dict[str, Any], bool, str | None]] = [
    ("reservation_id 1", {"top": {"reservation_id": 1}}, True, None),
    ("reservation_id 0", {"top": {"reservation_id": 0}}, False, "reservation_id"),
    ("reservation_id 2^63-1", {"top": {"reservation_id": MAX_ID}}, True, None),
    ("reservation_id 2^63", {"top": {"reservation_id": MAX_ID + 1}}, False, "reservation_id"),
    ("request_id 2^63-1", {"top": {"request_id": MAX_ID}}, True, None),
    ("request_id 2^63", {"top": {"request_id": MAX_ID + 1}}, False, "request_id"),
    ("request_id 0", {"top": {"request_id": 0}}, False, "request_id"),
    ("computer.id 1", {"computer": {"id": 1}}, True, None),
    ("computer.id 0", {"computer": {"id": 0}}, False, "computer.id"),
    ("computer.id 2^63", {"computer": {"id": MAX_ID + 1}}, False, "computer.id"),
    ("image.id 2^63-1", {"image": {"id": MAX_ID}}, True, None),
    ("image.id 0", {"image": {"id": 0}}, False, "image.id"),
    ("revision 0", {"image": {"revision": 0}}, True, None),
    ("revision -1", {"image": {"revision": -1}}, False, "image.revision"),
    ("revision 2^63-1", {"image": {"revision": MAX_ID}}, True, None),
    ("revision 2^63", {"image": {"revision": MAX_ID + 1}}, False, "image.revision"),
    ("revision_id 1", {"image": {"revision_id": 1}}, True, None),
    ("revision_id 0", {"image": {"revision_id": 0}}, False, "image.revision_id"),
    ("revision_id 2^63", {"image": {"revision_id": MAX_ID + 1}}, False, "image.revision_id"),
    ("min_ram_mb 0", {"image": {"min_ram_mb": 0}}, True, None),
    ("min_ram_mb -1", {"image": {"min_ram_mb": -1}}, False, "image.min_ram_mb"),
    ("min_ram_mb 4 TiB", {"image": {"min_ram_mb": 4 * 1024 * 1024}}, True, None),
    (
        "min_ram_mb 4 TiB + 1",
        {"image": {"min_ram_mb": 4 * 1024 * 1024 + 1}},
        False,
        "image.min_ram_mb",
    ),
    ("vcpus 1", {"image": {"vcpus": 1}}, True, None),
    ("vcpus 0", {"image": {"vcpus": 0}}, False, "image.vcpus"),
    ("vcpus 512", {"image": {"vcpus": 512}}, True, None),
    ("vcpus 513", {"image": {"vcpus": 513}}, False, "image.vcpus"),
    ("pretty_name 255", {"image": {"pretty_name": "p" * 255}}, True, None),
    ("pretty_name 256", {"image": {"pretty_name": "p" * 256}}, False, "image.pretty_name"),
    ("pretty_name 1", {"image": {"pretty_name": "p"}}, True, None),
    ("pretty_name empty", {"image": {"pretty_name": ""}}, False, "image.pretty_name"),
    ("image name 128", {"image": {"name": "i" * 128}}, True, None),
    ("image name 129", {"image": {"name": "i" * 129}}, False, "image.name"),
    ("os_type 64", {"image": {"os_type": "w" * 64}}, True, None),
    ("os_type 65", {"image": {"os_type": "w" * 65}}, False, "image.os_type"),
    ("host 63", {"top": {"host": "h" * 63}}, True, None),
    ("host 64", {"top": {"host": "h" * 64}}, False, "host"),
    ("hostname label 63", {"computer": {"hostname": "a" * 63 + ".lab"}}, True, None),
    (
        "hostname label 64",
        {"computer": {"hostname": "a" * 64 + ".lab"}},
        False,
        "computer.hostname",
    ),
    ("hostname 253", {"computer": {"hostname": ".".join(["a" * 63] * 3 + ["b" * 61])}}, True, None),
    (
        "hostname 254",
        {"computer": {"hostname": ".".join(["a" * 63] * 3 + ["b" * 62])}},
        False,
        "computer.hostname",
    ),
    # MAC forms: six octets, colons only, nothing around them
    ("MAC upper case", {"computer": {"eth0_mac": "52:54:00:AB:CD:EF"}}, True, None),
    (
        "MAC trailing space",
        {"computer": {"eth0_mac": "52:54:00:00:00:01 "}},
        False,
        "computer.eth0_mac",
    ),
    (
        "MAC leading space",
        {"computer": {"eth0_mac": " 52:54:00:00:00:01"}},
        False,
        "computer.eth0_mac",
    ),
    (
        "MAC trailing newline",
        {"computer": {"eth0_mac": "52:54:00:00:00:01\n"}},
        False,
        "computer.eth0_mac",
    ),
    (
        "MAC trailing tab",
        {"computer": {"eth1_mac": "52:54:00:00:00:03\t"}},
        False,
        "computer.eth1_mac",
    ),
    (
        "MAC 7 octets",
        {"computer": {"eth0_mac": "52:54:00:00:00:01:02"}},
        False,
        "computer.eth0_mac",
    ),
    ("MAC 5 octets", {"computer": {"eth0_mac": "52:54:00:00:01"}}, False, "computer.eth0_mac"),
    ("MAC dashes", {"computer": {"eth0_mac": "52-54-00-00-00-01"}}, False, "computer.eth0_mac"),
    ("MAC no separators", {"computer": {"eth0_mac": "525400000001"}}, False, "computer.eth0_mac"),
    (
        "MAC three-digit octet",
        {"computer": {"eth0_mac": "52:54:00:00:00:012"}},
        False,
        "computer.eth0_mac",
    ),
    (
        "MAC locally administered unicast",
        {"computer": {"eth0_mac": "02:00:00:00:00:01"}},
        True,
        None,
    ),
    (
        "MAC multicast bit",
        {"computer": {"eth0_mac": "01:00:00:00:00:01"}},
        False,
        "computer.eth0_mac",
    ),
]


@pytest.mark.parametrize(
    ("change", "accepted", "field"),
    [pytest.param(change, ok, field, id=name) for name, change, ok, field in LIMITS],
)
def test_limit_at_and_past_its_boundary(submit, change, accepted, field):
    """Each field limit accepts its boundary value and refuses one past it, naming the field."""
    document = reservation_document(
        change.get("computer"), change.get("image"), **change.get("top", {})
    )
    ok, named = submit(json.dumps(document).encode())
    assert ok is accepted
    if not accepted and named is not None:
        assert named == field


# -- bulk loads: up to 100 reservations per HTTP request ---------------------------------------


def bulk(count: int) -> bytes:
    items = []
    for index in range(count):
        item = copy.deepcopy(VALID_RESERVATION)
        item["reservation_id"] = index + 1
        items.append(item)
    return json.dumps(items, separators=(",", ":")).encode()


def test_bulk_load_of_100_is_accepted(client, enqueued):
    """POST /v1/loads takes a list of exactly 100 reservations: 100 answers, 100 begun."""
    answer = client.post("/v1/loads", content=bulk(MAX_BULK), headers=AUTH)
    assert answer.status_code == 202, answer.text
    assert [r["reservation_id"] for r in answer.json()["results"]] == list(range(1, 101))
    assert len(enqueued) == MAX_BULK


@pytest.mark.parametrize("count", [0, MAX_BULK + 1])
def test_bulk_load_of_none_or_101_is_refused(client, enqueued, count):
    """An empty list or 101 reservations is 422, nothing enqueued."""
    answer = client.post("/v1/loads", content=bulk(count), headers=AUTH)
    assert answer.status_code == 422, answer.text
    assert f"1 to 100 reservations, not {count}" in answer.json()["error"]["message"]
    assert enqueued == []


# -- the long-poll: timeout 0 .. 60 seconds -----------------------------------------------------


@pytest.mark.parametrize("timeout", ["0", "60", "60.0"])
def test_long_poll_timeout_up_to_60_is_accepted(client, timeout):
    """wait?timeout= accepts 0 up to 60 seconds (a final record answers at once)."""
    answer = client.get(f"/v1/reservations/1/wait?timeout={timeout}", headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.json()["finished"] is True
    assert LONGEST_WAIT_S == 60


@pytest.mark.parametrize("timeout", ["60.001", "61", "-0.001", "nan"])
def test_long_poll_timeout_past_60_or_negative_is_refused(client, timeout):
    """wait?timeout= past 60 seconds, below 0 or not a number is 422 naming timeout."""
    answer = client.get(f"/v1/reservations/1/wait?timeout={timeout}", headers=AUTH)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == "timeout"


@pytest.mark.parametrize(("length", "status"), [(64, 200), (65, 422)])
def test_long_poll_after_is_at_most_64_characters(client, length, status):
    """wait?after= takes an etag of at most 64 characters; 65 is refused naming after."""
    answer = client.get(f"/v1/reservations/1/wait?timeout=0&after={'e' * length}", headers=AUTH)
    assert answer.status_code == status, answer.text
    if status == 422:
        assert answer.json()["error"]["field"] == "after"


# -- reservation ids in the URL: 1 .. 2^63-1 ---------------------------------------------------


@pytest.mark.parametrize(("rid", "status"), [(1, 200), (MAX_ID, 200), (0, 422), (MAX_ID + 1, 422)])
def test_status_url_reservation_id_range(client, rid, status):
    """GET /v1/reservations/{id} takes 1 .. 2^63-1; 0 and 2^63 are 422 naming reservation_id."""
    answer = client.get(f"/v1/reservations/{rid}", headers=AUTH)
    assert answer.status_code == status, answer.text
    if status == 422:
        assert answer.json()["error"]["field"] == "reservation_id"


@pytest.mark.parametrize(("rid", "status"), [(1, 200), (MAX_ID, 200), (0, 422), (MAX_ID + 1, 422)])
def test_long_poll_url_reservation_id_range(client, rid, status):
    """GET /v1/reservations/{id}/wait takes 1 .. 2^63-1 like the status route; 0 and 2^63 are
    422 naming reservation_id (they used to reach the status store)."""
    answer = client.get(f"/v1/reservations/{rid}/wait?timeout=0", headers=AUTH)
    assert answer.status_code == status, answer.text
    if status == 422:
        assert answer.json()["error"]["field"] == "reservation_id"


# -- the API token: at least 32 characters -----------------------------------------------------


def test_token_of_32_characters_is_accepted():
    """A 32-character token is the shortest the API takes; surrounding blanks do not count."""
    assert api_token(Settings(api_token="a" * 32)) == "a" * 32
    assert api_token(Settings(api_token=f"  {'a' * 32}\n")) == "a" * 32


@pytest.mark.parametrize("token", ["a" * 31, f"  {'a' * 31}  "])
def test_token_of_31_characters_is_refused(token):
    """A 31-character token (blanks around it not counted) stops the API from starting."""
    with pytest.raises(InvalidInput) as caught:
        create_api(Settings(api_token=token))
    assert caught.value.field == "VCLVIRT_API_TOKEN"
    assert "has 31 characters; at least 32 are required" in caught.value.message


def test_cli_api_refuses_a_31_character_token(monkeypatch):
    """`vclvirt api` with a 31-character token exits 2 naming the variable, before serving."""
    monkeypatch.setattr(cli, "get_settings", lambda: Settings(api_token="a" * 31))
    result = CliRunner().invoke(cli.app, ["api", "--port", "1"])
    assert result.exit_code == 2
    assert "VCLVIRT_API_TOKEN has 31 characters" in result.output


@pytest.mark.parametrize("token", ["", "   ", None])
def test_empty_or_blank_token_is_no_token(token):
    """An empty or blank VCLVIRT_API_TOKEN means no token (loopback development only)."""
    assert api_token(Settings(api_token=token)) is None


def test_wrong_token_of_the_right_length_is_401(client):
    """Only the configured token opens /v1, whatever its length."""
    answer = client.get("/v1/failed", headers={"Authorization": "Bearer " + "u" * 32})
    assert answer.status_code == 401


# -- snapshot names: [A-Za-z0-9][A-Za-z0-9._-]{0,63} -------------------------------------------

SNAPSHOT_NAMES = [
    ("a" * 64, True),
    ("a" * 65, False),
    ("a", True),
    ("A.b_c-9", True),
    (".hidden", False),
    ("-flag", False),
    ("_under", False),
    ("a b", False),
    ("a/b", False),
    ("a\n", False),
    ("a ", False),
    ("", False),
]


@pytest.mark.parametrize(("name", "accepted"), SNAPSHOT_NAMES)
def test_snapshot_name_in_python(enqueued, name, accepted):
    """dispatch.run takes snapshot names of the pattern, up to 64 characters."""
    try:
        dispatch.run(reservation_document(), "snapshot_create", {"name": name})
    except InvalidInput as error:
        assert not accepted
        assert error.field == "params.name"
        assert enqueued == []
    else:
        assert accepted
        assert enqueued[-1][2] == {"name": name}


@pytest.mark.parametrize(("name", "accepted"), SNAPSHOT_NAMES)
def test_snapshot_name_over_http(client, enqueued, name, accepted):
    """POST /v1/operations/snapshot_create takes the same names; others are 422 params.name."""
    body = {"reservation": reservation_document(), "params": {"name": name}}
    answer = client.post("/v1/operations/snapshot_create", json=body, headers=AUTH)
    if accepted:
        assert answer.status_code == 202, answer.text
        assert enqueued[-1][2] == {"name": name}
    else:
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["field"] == "params.name"
        assert enqueued == []


@pytest.mark.parametrize(("name", "accepted"), [(n, a) for n, a in SNAPSHOT_NAMES if n])
def test_snapshot_name_on_the_cli(monkeypatch, tmp_path, name, accepted):
    """`vclvirt snapshot create RES --name N` takes the same names; others exit 2."""
    ran: list[Any] = []
    monkeypatch.setattr(cli, "_operate", lambda *args: ran.append(args) or {"domain": "d"})
    path = tmp_path / "r.json"
    path.write_text(json.dumps(reservation_document()))
    result = CliRunner().invoke(cli.app, ["snapshot", "create", str(path), "--name", name])
    assert result.exit_code == (0 if accepted else 2), result.output
    assert len(ran) == (1 if accepted else 0)


# -- image names given alone: CLI argument and URL, up to 128 characters ------------------------


class _Images:
    def exists(self, image: str) -> bool:
        return True

    def size_mb(self, image: str) -> int:
        return 1

    def size_bytes(self, image: str) -> int:
        return 2**20


class _Host:
    images = _Images()


@pytest.fixture
def provisioners(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The hosts a Host was made for (made: the host would have been contacted)."""
    made: list[str] = []

    def host(_root: Any, name: str) -> _Host:
        made.append(name)
        return _Host()

    monkeypatch.setattr("vclvirt.composition.Root.host", host)
    return made


@pytest.mark.parametrize(("length", "exit_code"), [(128, 0), (129, 2)])
def test_cli_image_name_up_to_128_characters(provisioners, length, exit_code):
    """`vclvirt images size` takes a 128-character image name; 129 exits 2, no host contacted."""
    result = CliRunner().invoke(cli.app, ["images", "size", "i" * length, "--host", "kvmhost1"])
    assert result.exit_code == exit_code, result.output
    assert provisioners == (["kvmhost1"] if exit_code == 0 else [])


@pytest.mark.parametrize(("length", "status"), [(128, 200), (129, 422)])
def test_http_image_name_up_to_128_characters(client, provisioners, length, status):
    """GET /v1/hosts/{host}/images/{image} takes 128 characters; 129 is 422 naming image."""
    answer = client.get(f"/v1/hosts/kvmhost1/images/{'i' * length}", headers=AUTH)
    assert answer.status_code == status, answer.text
    if status == 422:
        assert answer.json()["error"]["field"] == "image"
        assert provisioners == []


# -- GET /v1/failed?limit=1..1000 and retry's from_step (a word of at most 64 characters) ------


@pytest.mark.parametrize(("limit", "status"), [(1, 200), (1000, 200), (0, 422), (1001, 422)])
def test_failed_list_limit_is_1_to_1000(client, monkeypatch, limit, status):
    """GET /v1/failed?limit= takes 1 .. 1000; 0 and 1001 are 422 naming limit."""
    asked: list[int] = []
    monkeypatch.setattr(dispatch, "failed", lambda n: asked.append(n) or [])
    answer = client.get(f"/v1/failed?limit={limit}", headers=AUTH)
    assert answer.status_code == status, answer.text
    assert asked == ([limit] if status == 200 else [])
    if status == 422:
        assert answer.json()["error"]["field"] == "limit"


@pytest.mark.parametrize(
    ("step", "status"), [("s" * 64, 202), ("s" * 65, 422), ("copy-image", 422), ("", 422)]
)
def test_retry_from_step_is_a_word_of_at_most_64_characters(client, monkeypatch, step, status):
    """POST .../retry {"from_step"} takes a word of up to 64 characters; else 422 from_step."""
    asked: list[Any] = []

    def retry(reservation_id: int, from_step: str | None) -> dispatch.Handle:
        asked.append((reservation_id, from_step))
        return dispatch.Handle(reservation_id, "t")

    monkeypatch.setattr(dispatch, "retry", retry)
    answer = client.post("/v1/reservations/7/retry", json={"from_step": step}, headers=AUTH)
    assert answer.status_code == status, answer.text
    assert asked == ([(7, step)] if status == 202 else [])
    if status == 422:
        assert answer.json()["error"]["field"] == "from_step"
