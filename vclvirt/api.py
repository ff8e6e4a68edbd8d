"""HTTP API for schedulers that are not Python (VCL's own daemon is Perl).

JSON in, JSON out; the OpenAPI document is at /openapi.json. Every enqueue goes
through `vclvirt.dispatch`, so the API, the CLI and the Python API behave alike.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from typing import Annotated, Any

import structlog
from fastapi import Body, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict

from vclvirt import __version__, dispatch
from vclvirt.config.settings import Settings, get_settings
from vclvirt.dispatch import Handle
from vclvirt.errors import (
    InvalidInput,
    ResourceBusy,
    UnknownHost,
    UnknownReservation,
    VclvirtError,
)
from vclvirt.vcl import api_routes as vcl_api_routes

log = structlog.get_logger(__name__)

_STATUS_OF = [
    (InvalidInput, 422),
    (UnknownHost, 422),
    (UnknownReservation, 404),
    (ResourceBusy, 409),
]


class Enqueued(BaseModel):
    reservation_id: int
    task_id: str
    status_url: str


class OperationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reservation: dict[str, Any]
    params: dict[str, Any] | None = None


class RetryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    from_step: str | None = None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_bearer = HTTPBearer(auto_error=False)


def authorised(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """The bearer token from the settings, compared in constant time."""
    token: str | None = request.app.state.settings.api_token
    if token is None:
        return
    given = credentials.credentials if credentials else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPException(
            401,
            detail={"code": "UNAUTHORIZED", "message": "missing or wrong bearer token"},
            headers={"WWW-Authenticate": "Bearer"},
        )


def create_api(settings: Settings | None = None) -> FastAPI:
    """The application; without a token configured every request is allowed (loopback dev)."""
    settings = settings or get_settings()
    api = FastAPI(
        title="vclvirt",
        version=__version__,
        description="Enqueue loads, captures and operations; read their status.",
    )
    api.state.settings = settings

    @api.exception_handler(VclvirtError)
    def _vclvirt_error(request: Request, error: VclvirtError) -> JSONResponse:
        status = next((code for cls, code in _STATUS_OF if isinstance(error, cls)), 400)
        return JSONResponse({"error": error.to_dict()}, status_code=status)

    @api.exception_handler(RequestValidationError)
    def _bad_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "reason": e["msg"]}
            for e in error.errors()
        ]
        first = problems[0] if problems else {"field": None, "reason": "invalid request"}
        return JSONResponse(
            {
                "error": {
                    "code": "INVALID_INPUT",
                    "field": first["field"],
                    "message": "; ".join(
                        f"{p['field'] or '(body)'}: {p['reason']}" for p in problems
                    ),
                    "hint": "Correct the named field and submit again",
                }
            },
            status_code=422,
        )

    @api.middleware("http")
    async def _log_request(request: Request, call_next: Any) -> Any:
        started = time.monotonic()
        response = await call_next(request)
        log.info(
            "http_request",
            method=request.method,
            path=request.url.path,
            status=response.status_code,
            duration_ms=round(1000 * (time.monotonic() - started), 1),
        )
        return response

    def enqueued(handle: Handle) -> Enqueued:
        return Enqueued(
            reservation_id=handle.reservation_id,
            task_id=handle.task_id,
            status_url=f"/v1/reservations/{handle.reservation_id}",
        )

    guarded = [Depends(authorised)]

    @api.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness, no authentication."""
        return {"status": "ok", "version": __version__}

    @api.post("/v1/loads", status_code=202, dependencies=guarded)
    def load(reservation: Annotated[dict[str, Any], Body()]) -> Enqueued:
        """Enqueue a load; 409 while the same reservation is still running."""
        return enqueued(dispatch.load(reservation))

    @api.post("/v1/captures", status_code=202, dependencies=guarded)
    def capture(reservation: Annotated[dict[str, Any], Body()]) -> Enqueued:
        """Enqueue a capture (state image or checkpoint)."""
        return enqueued(dispatch.capture(reservation))

    @api.post("/v1/operations/{operation}", status_code=202, dependencies=guarded)
    def operation(operation: str, request: OperationRequest) -> Enqueued:
        """power_status|on|off|reset, node_status, unload, post_maintenance_action,
        snapshot_create|list|revert|delete (params: {"name": ...})."""
        return enqueued(dispatch.run(request.reservation, operation, request.params))

    @api.get("/v1/reservations/{reservation_id}", dependencies=guarded)
    def status(reservation_id: int) -> dict[str, Any]:
        """The reservation's status record."""
        record = dispatch.status(reservation_id)
        if record is None:
            raise UnknownReservation(
                f"no status record for reservation {reservation_id}", reservation_id=reservation_id
            )
        return record.to_dict()

    @api.get("/v1/failed", dependencies=guarded)
    def failed(limit: int = 100) -> list[dict[str, Any]]:
        """Reservations whose last operation failed, most recent first."""
        return [r.to_dict() for r in dispatch.failed(limit)]

    @api.post("/v1/reservations/{reservation_id}/retry", status_code=202, dependencies=guarded)
    def retry(
        reservation_id: int, request: Annotated[RetryRequest | None, Body()] = None
    ) -> Enqueued:
        """Re-run a failed reservation from the step that failed (or from_step)."""
        return enqueued(dispatch.retry(reservation_id, request.from_step if request else None))

    api.include_router(vcl_api_routes.router, dependencies=guarded)  # VCL's module (contrib/vcl)
    return api
