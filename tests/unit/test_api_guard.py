"""The API's front door, driven directly over ASGI: token first, then a body capped in size
and in time, one log line per request."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace
from typing import Any

import pytest

from vclvirt.api_guard import RequestGuard, api_token, error_body, is_loopback
from vclvirt.config.settings import Settings
from vclvirt.errors import InvalidInput

TOKEN = "A" * 40


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


class App:
    """The guarded application: records what reached it and answers 200 with the body."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        if scope["type"] != "http":
            return
        message = await receive()
        self.bodies.append(message["body"])
        assert message["more_body"] is False
        after = await receive()  # what comes next is the client's own channel again
        self.bodies.append(after.get("body", b"<" + after["type"].encode() + b">"))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def call(
    guard: RequestGuard,
    *,
    path: str = "/v1/loads",
    headers: list[tuple[bytes, bytes]] | None = None,
    chunks: list[Any] | None = None,
    scope_type: str = "http",
) -> tuple[int | None, dict[str, str], Any]:
    """One request through the guard: (status, response headers, JSON body or raw)."""
    incoming = list(chunks if chunks is not None else [{"type": "http.request", "body": b"{}"}])
    incoming.append({"type": "http.disconnect"})
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        item = incoming.pop(0) if incoming else {"type": "http.disconnect"}
        if item == "stall":
            await asyncio.sleep(3600)
        return item  # type: ignore[no-any-return]

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": scope_type,
        "method": "POST",
        "path": path,
        "headers": headers
        if headers is not None
        else [(b"authorization", b"Bearer " + TOKEN.encode())],
        "client": ("10.1.2.3", 5555),
    }
    asyncio.run(guard(scope, receive, send))
    starts = [m for m in sent if m["type"] == "http.response.start"]
    if not starts:
        return None, {}, None
    head = {k.decode(): v.decode() for k, v in starts[0]["headers"]}
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    try:
        return starts[0]["status"], head, json.loads(body)
    except ValueError:
        return starts[0]["status"], head, body


def guard_of(
    app: App | None = None,
    *,
    token: str | None = TOKEN,
    timeout: float = 5.0,
    max_body: int = 100,
    log: Log | None = None,
) -> RequestGuard:
    return RequestGuard(
        app or App(), token=token, body_timeout=timeout, logger=log or Log(), max_body=max_body
    )


# -- the token --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        b"Bearer " + TOKEN.encode(),
        b"bearer " + TOKEN.encode(),
        b"BEARER " + TOKEN.encode(),
        b"Bearer   " + TOKEN.encode() + b"  ",
    ],
)
def test_the_token_opens_v1_whatever_the_scheme_case_and_spaces(header):
    """The scheme is case-insensitive and blanks around the token do not count."""
    app = App()
    status, _, body = call(guard_of(app), headers=[(b"authorization", header)])
    assert (status, body) == (200, b"ok")
    assert app.bodies[0] == b"{}"


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"authorization", b"Basic " + TOKEN.encode())],
        [(b"authorization", b"Bearer " + TOKEN.encode()[:-1])],
        [(b"authorization", b"Bearer " + TOKEN.encode() + b"x")],
        [(b"authorization", b"Bearer")],
        [(b"authorization", TOKEN.encode())],
    ],
)
def test_missing_or_wrong_token_is_401_and_nothing_reaches_the_app(headers):
    """No header, another scheme or a token off by one character: 401, the app never called."""
    app = App()
    status, head, body = call(guard_of(app), headers=headers)
    assert status == 401
    assert head["www-authenticate"] == "Bearer"
    assert head["connection"] == "close"
    assert body == error_body(
        "UNAUTHORIZED",
        "missing or wrong bearer token",
        hint="Send the header 'Authorization: Bearer <VCLVIRT_API_TOKEN>'",
    )
    assert app.scopes == []


def test_header_names_are_matched_in_any_case():
    """A client's `Authorization` header is found whatever the case of its name."""
    status, _, _ = call(guard_of(), headers=[(b"Authorization", b"Bearer " + TOKEN.encode())])
    assert status == 200


@pytest.mark.parametrize(
    ("path", "guarded"),
    [
        ("/v1", True),
        ("/v1/x", True),
        ("/v10", False),
        ("/healthz", False),
        ("/openapi.json", False),
        ("/x/v1/y", False),
    ],
)
def test_only_v1_and_below_need_the_token(path, guarded):
    """/v1 and every path under it need the token; /v10, /healthz and the rest do not."""
    status, _, _ = call(guard_of(), path=path, headers=[])
    assert status == (401 if guarded else 200)


def test_without_a_token_every_request_is_let_in():
    """With no token configured (loopback development) /v1 is open."""
    status, _, _ = call(guard_of(token=None), headers=[])
    assert status == 200


# -- the body: size ------------------------------------------------------------------------------


def body_chunks(*parts: bytes) -> list[dict[str, Any]]:
    return [
        {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
        for i, part in enumerate(parts)
    ]


def test_body_of_exactly_the_cap_reaches_the_app_whole_and_once():
    """A body of exactly max_body bytes, in chunks, reaches the app as one message; after it
    the app reads the client's channel itself."""
    app = App()
    status, _, _ = call(guard_of(app), chunks=body_chunks(b"a" * 60, b"b" * 40))
    assert status == 200
    assert app.bodies == [b"a" * 60 + b"b" * 40, b"<http.disconnect>"]


def test_body_one_byte_past_the_cap_is_413():
    """max_body + 1 bytes, however chunked, is 413 BODY_TOO_LARGE and never reaches the app."""
    app = App()
    status, head, body = call(guard_of(app), chunks=body_chunks(b"a" * 60, b"b" * 41))
    assert status == 413
    assert head["connection"] == "close"
    assert body["error"]["code"] == "BODY_TOO_LARGE"
    assert body["error"]["message"] == "the request body is larger than 100 bytes"
    assert body["error"]["hint"] == "A reservation is a few KB; send only the documented fields"
    assert app.scopes == []


@pytest.mark.parametrize(
    ("length", "status"), [(b"100", 200), (b"101", 413), (b"-1", 413), (b"1e3", 413), (b"", 413)]
)
def test_declared_content_length_is_judged_before_reading(length, status):
    """Content-Length past the cap, or not a plain number, is 413 before a byte is read."""
    headers = [(b"authorization", b"Bearer " + TOKEN.encode()), (b"content-length", length)]
    assert call(guard_of(), headers=headers)[0] == status


# -- the body: time ------------------------------------------------------------------------------


def test_body_that_stalls_is_408_after_the_timeout():
    """A body that does not arrive within body_timeout is 408 BODY_TIMEOUT, naming the limit."""
    app = App()
    chunks = [{"type": "http.request", "body": b"{", "more_body": True}, "stall"]
    status, head, body = call(guard_of(app, timeout=0.2), chunks=chunks)
    assert status == 408
    assert head["connection"] == "close"
    assert body["error"]["code"] == "BODY_TIMEOUT"
    assert body["error"]["message"] == "the request body did not arrive within 0.2s"
    assert body["error"]["hint"] == (
        "Send the whole body at once (VCLVIRT_API_BODY_TIMEOUT sets the limit)"
    )
    assert app.scopes == []


def test_client_gone_before_the_body_gets_no_answer():
    """A client that disconnects mid-body gets no answer and the app is not called."""
    app = App()
    chunks = [
        {"type": "http.request", "body": b"{", "more_body": True},
        {"type": "http.disconnect"},
    ]
    assert call(guard_of(app), chunks=chunks)[0] is None
    assert app.scopes == []


# -- the rest ------------------------------------------------------------------------------------


def test_each_request_is_one_log_line_with_its_status():
    """One http_request line: method, path, status, client address, duration in ms."""
    log = Log()
    call(guard_of(log=log), headers=[])
    ((event, fields),) = log.lines
    assert event == "http_request"
    assert {k: fields[k] for k in ("method", "path", "status", "client")} == {
        "method": "POST",
        "path": "/v1/loads",
        "status": 401,
        "client": "10.1.2.3",
    }
    assert 0 <= fields["duration_ms"] < 60_000


def test_other_scopes_pass_straight_through():
    """Lifespan and websocket scopes go to the app untouched, unlogged."""
    app, log = App(), Log()
    call(guard_of(app, log=log), scope_type="lifespan", headers=[])
    assert [s["type"] for s in app.scopes] == ["lifespan"]
    assert log.lines == []


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("example.org", False),
        ("", False),
    ],
)
def test_loopback_addresses(host, loopback):
    """Only localhost and loopback addresses count as loopback (an API there needs no token)."""
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("token", ["a" * 31 + " x", "a" * 32 + '"', "a" * 32 + "=b", "ä" * 32])
def test_token_that_cannot_be_sent_in_a_header_is_refused(token):
    """Only RFC 6750 token characters (then '=' padding) can be the token."""
    with pytest.raises(InvalidInput) as caught:
        api_token(Settings(api_token=token))
    assert caught.value.field == "VCLVIRT_API_TOKEN"
    assert caught.value.message == (
        "VCLVIRT_API_TOKEN may hold only letters, digits and -._~+/ (then '=')"
    )
    assert caught.value.hint == "Generate one with: openssl rand -hex 32"


@pytest.mark.parametrize("token", ["a" * 32 + "==", "Az09-._~+/" * 4])
def test_token_of_header_characters_is_taken(token):
    """Letters, digits, -._~+/ and trailing '=' make a token."""
    assert api_token(Settings(api_token=token)) == token


def test_short_token_message_and_hint():
    """A short token is refused saying how long it is and how to make one."""
    with pytest.raises(InvalidInput) as caught:
        api_token(Settings(api_token="abc"))
    assert caught.value.message == "VCLVIRT_API_TOKEN has 3 characters; at least 32 are required"
    assert caught.value.hint == "Generate one with: openssl rand -hex 32"


def test_prompt_body_under_a_sub_second_timeout_is_let_through():
    """A body that arrives at once is read even when body_timeout is below one second."""
    app = App()
    status, _, _ = call(guard_of(app, timeout=0.5), chunks=body_chunks(b"{}"))
    assert status == 200
    assert app.bodies[0] == b"{}"


def test_body_trickling_past_the_deadline_is_408(monkeypatch):
    """Chunks that each arrive but together take longer than body_timeout are 408 too."""
    app = App()
    wait_for = asyncio.wait_for

    async def slow_wait_for(awaitable: Any, timeout: float) -> Any:
        result = await wait_for(awaitable, timeout)
        time.sleep(0.15)  # each chunk took its time: the deadline passes between chunks
        return result

    monkeypatch.setattr("vclvirt.api_guard.asyncio.wait_for", slow_wait_for)
    chunks = [{"type": "http.request", "body": b"{", "more_body": True}] * 3
    status, _, body = call(guard_of(app, timeout=0.2), chunks=chunks)
    assert status == 408
    assert body["error"]["code"] == "BODY_TIMEOUT"
    assert app.scopes == []


def test_request_message_without_a_body_key_is_an_empty_body():
    """An http.request message may leave out `body` (ASGI): the app gets an empty body."""
    app = App()
    status, _, _ = call(guard_of(app), chunks=[{"type": "http.request"}])
    assert status == 200
    assert app.bodies[0] == b""


def test_lifespan_messages_pass_both_ways():
    """A lifespan scope gets the server's own receive and send: startup goes through."""
    received: list[Any] = []

    async def lifespan_app(scope: Any, receive: Any, send: Any) -> None:
        received.append(await receive())
        await send({"type": "lifespan.startup.complete"})

    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    guard = RequestGuard(lifespan_app, token=TOKEN, body_timeout=1, logger=Log())
    asyncio.run(guard({"type": "lifespan"}, receive, send))
    assert received == [{"type": "lifespan.startup"}]
    assert sent == [{"type": "lifespan.startup.complete"}]


def test_log_line_without_a_client_address(monkeypatch):
    """A request with no client address (a Unix socket) is logged with client null."""
    log = Log()
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/healthz", "headers": [], "client": None}
    asyncio.run(guard_of(log=log)(scope, receive, send))
    assert log.lines[0][1]["client"] is None
    assert log.lines[0][1]["status"] == 200


def test_log_line_gives_the_duration_in_milliseconds_to_a_tenth(monkeypatch):
    """duration_ms is the request's time in milliseconds, rounded to one decimal."""
    clock = [500.0]
    # the guard's own clock only (asyncio keeps the real one)
    monkeypatch.setattr("vclvirt.api_guard.time", SimpleNamespace(monotonic=lambda: clock[0]))

    class TimedApp(App):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            clock[0] += 0.01234
            await super().__call__(scope, receive, send)

    log = Log()
    call(guard_of(TimedApp(), log=log))
    assert log.lines[0][1]["duration_ms"] == 12.3
