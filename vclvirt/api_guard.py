"""The HTTP API's front door: the bearer token, checked before a byte of the body is read;
bodies capped in size and in time; one log line per request.

A plain ASGI middleware in front of every route, so a route added later (another
router included in the app) is guarded the same way without doing anything.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.responses import JSONResponse

from vclvirt.config.settings import Settings
from vclvirt.errors import InvalidInput
from vclvirt.models import MAX_DOCUMENT_BYTES

MIN_TOKEN_LENGTH = 32
# RFC 6750's b64token: what fits in "Authorization: Bearer <token>" unquoted.
_TOKEN_CHARACTERS = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
GUARDED_PREFIX = "/v1"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def api_token(settings: Settings) -> str | None:
    """The bearer token the API requires: an empty or blank value is no token; a short
    one, or one that cannot be sent in a header, is refused."""
    token = (settings.api_token or "").strip()
    if not token:
        return None
    hint = "Generate one with: openssl rand -hex 32"
    if len(token) < MIN_TOKEN_LENGTH:
        raise InvalidInput(
            f"VCLVIRT_API_TOKEN has {len(token)} characters; "
            f"at least {MIN_TOKEN_LENGTH} are required",
            field="VCLVIRT_API_TOKEN",
            hint=hint,
        )
    if not _TOKEN_CHARACTERS.fullmatch(token):
        raise InvalidInput(
            "VCLVIRT_API_TOKEN may hold only letters, digits and -._~+/ (then '=')",
            field="VCLVIRT_API_TOKEN",
            hint=hint,
        )
    return token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def error_body(code: str, message: str, *, hint: str, field: str | None = None) -> dict[str, Any]:
    """The one error envelope of the API."""
    return {"error": {"code": code, "field": field, "message": message, "hint": hint}}


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value)
    return None


class RequestGuard:
    """Token first, then the body: whole, at most MAX_DOCUMENT_BYTES, within the timeout."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        body_timeout: float,
        logger: Any,
        max_body: int = MAX_DOCUMENT_BYTES,
    ) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode() if token else None
        self.body_timeout = body_timeout
        self.max_body = max_body
        self.log = logger

    def _authorised(self, scope: Scope) -> bool:
        if self._expected is None:
            return True
        given = _header(scope, b"authorization") or b""
        scheme, _, credentials = given.partition(b" ")
        # The scheme is case-insensitive (RFC 7235); compare_digest for the token itself.
        given = b"Bearer " + credentials.strip() if scheme.lower() == b"bearer" else b""
        return hmac.compare_digest(given, self._expected)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status: list[int] = []

        async def logged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        try:
            await self._guarded(scope, receive, logged_send)
        finally:
            client = scope.get("client")
            self.log.info(
                "http_request",
                method=scope.get("method"),
                path=scope.get("path"),
                status=status[0] if status else None,
                client=client[0] if client else None,
                duration_ms=round(1000 * (time.monotonic() - started), 1),
            )

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if (path == GUARDED_PREFIX or path.startswith(GUARDED_PREFIX + "/")) and not (
            self._authorised(scope)
        ):
            await self._refuse(
                scope,
                receive,
                send,
                401,
                "UNAUTHORIZED",
                "missing or wrong bearer token",
                "Send the header 'Authorization: Bearer <VCLVIRT_API_TOKEN>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
            return
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await self._too_large(scope, receive, send)
            return
        body, problem = await self._read_body(receive)
        if problem == "large":
            await self._too_large(scope, receive, send)
            return
        if problem == "slow":
            await self._refuse(
                scope,
                receive,
                send,
                408,
                "BODY_TIMEOUT",
                f"the request body did not arrive within {self.body_timeout:g}s",
                "Send the whole body at once (VCLVIRT_API_BODY_TIMEOUT sets the limit)",
            )
            return
        if problem == "gone":
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read_body(self, receive: Receive) -> tuple[bytes, str | None]:
        """The whole body, or why not: 'large', 'slow' or 'gone' (client disconnected)."""
        deadline = time.monotonic() + self.body_timeout
        chunks: list[bytes] = []
        size = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return b"", "slow"
            try:
                message = await asyncio.wait_for(receive(), remaining)
            except TimeoutError:
                return b"", "slow"
            if message["type"] == "http.disconnect":
                return b"", "gone"
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return b"", "large"
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._refuse(
            scope,
            receive,
            send,
            413,
            "BODY_TOO_LARGE",
            f"the request body is larger than {self.max_body} bytes",
            "A reservation is a few KB; send only the documented fields",
        )

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        code: str,
        message: str,
        hint: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        # The body is left unread: the server closes the connection after this answer.
        response = JSONResponse(
            error_body(code, message, hint=hint),
            status_code=status,
            headers={**(headers or {}), "Connection": "close"},
        )
        await response(scope, receive, send)
