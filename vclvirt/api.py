"""HTTP API for schedulers that are not Python (VCL's own daemon is Perl).

JSON in, JSON out; the OpenAPI document is at /openapi.json. Every enqueue goes
through `vclvirt.dispatch`, and every body is read by `models.load_json_document`,
so the API, the CLI and the Python API accept and refuse exactly the same input.
Every error, whatever its source, is the envelope
`{"error": {"code", "field", "message", "hint", ...}}`.
"""

from __future__ import annotations

from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as KombuOperationalError
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from vclvirt import __version__, dispatch
from vclvirt.api_guard import RequestGuard, api_token, error_body, is_loopback
from vclvirt.config.secrets import masked_url
from vclvirt.config.settings import Settings, get_settings
from vclvirt.dispatch import Handle
from vclvirt.errors import (
    BrokerUnreachable,
    InvalidInput,
    ResourceBusy,
    UnknownHost,
    UnknownReservation,
    VclvirtError,
)
from vclvirt.models import (
    HOST_NAME_PATTERN,
    MAX_ID,
    WORD_PATTERN,
    Reservation,
    StrictModel,
    describe_errors,
    json_type,
    load_json_document,
)
from vclvirt.operations import OPERATIONS
from vclvirt.operations import operation as find_operation
from vclvirt.textcheck import field_label
from vclvirt.vcl import api_routes as vcl_api_routes
from vclvirt.workers.logging import register_secrets

__all__ = ["create_api", "is_loopback"]

log = structlog.get_logger(__name__)

_STATUS_OF: list[tuple[type[VclvirtError], int]] = [
    (InvalidInput, 422),
    (UnknownHost, 422),
    (UnknownReservation, 404),
    (ResourceBusy, 409),
    (BrokerUnreachable, 503),
]
_HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
# Raised by redis-py and kombu when Redis does not answer.
_BROKER_ERRORS = (RedisConnectionError, RedisTimeoutError, KombuOperationalError)


class Enqueued(BaseModel):
    reservation_id: int
    task_id: str
    status_url: str


class ErrorDetail(BaseModel):
    """What failed, which input field (or null), why, and what to do."""

    model_config = ConfigDict(extra="allow")

    code: str
    field: str | None
    message: str
    hint: str


class ErrorEnvelope(BaseModel):
    error: ErrorDetail


class OperationRequest(StrictModel):
    """The body of POST /v1/operations/{operation}."""

    reservation: Reservation
    params: dict[str, Any] | None = Field(
        default=None,
        description="; ".join(
            f"{op.name}: {op.params_description}"
            for op in OPERATIONS.values()
            if op.params.model_fields
        )
        + "; every other operation: none",
    )


MAX_BULK = 100  # reservations in one POST /v1/loads (the body stays under its size cap)


class EnqueuedMany(BaseModel):
    """A bulk load's answer: one item per reservation, in order, enqueued or its error."""

    results: list[dict[str, Any]]


_LOADS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/Reservation"},
                        {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Reservation"},
                            "minItems": 1,
                            "maxItems": MAX_BULK,
                        },
                    ]
                }
            }
        },
    }
}


class RetryRequest(StrictModel):
    """The (optional) body of POST /v1/reservations/{id}/retry."""

    from_step: Annotated[str, StringConstraints(pattern=WORD_PATTERN)] | None = None


class StageRequest(StrictModel):
    """The (optional) body of POST /v1/images/{image}/stage: the hosts (none: all)."""

    hosts: Annotated[
        list[Annotated[str, StringConstraints(pattern=HOST_NAME_PATTERN)]],
        Field(default_factory=list, max_length=1000),
    ]


def _vclvirt_envelope(error: VclvirtError) -> dict[str, Any]:
    return {"error": {**error.to_dict(), "field": getattr(error, "field", None)}}


async def _raw_body(request: Request) -> bytes:
    """The body as bytes: RequestGuard has read it already (authorised, capped, in time)."""
    return await request.body()


RawBody = Annotated[bytes, Depends(_raw_body)]
ReservationId = Annotated[int, Path(ge=1, le=MAX_ID)]


def _object_body(body: bytes, model: type[StrictModel], *, optional: bool = False) -> Any:
    """A body parsed strictly, then validated by `model`; errors name the field."""
    if optional and not body.strip():
        return None
    document = load_json_document(body)
    if not isinstance(document, dict):
        raise InvalidInput(f"the body must be a JSON object, not {json_type(document)}")
    try:
        return model.model_validate(document)
    except ValidationError as error:
        field, message = describe_errors(error)
        raise InvalidInput(f"invalid request: {message}", field=field) from None


def _known_query_parameters_only(request: Request) -> None:
    """A query parameter the route does not take is refused, like an unknown body field."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    known = {p.alias for p in dependant.query_params} if dependant is not None else set()
    for name in request.query_params:
        if name not in known:
            raise InvalidInput(
                f"unknown query parameter {field_label(name)}"
                + (f"; this route takes: {', '.join(sorted(known))}" if known else ""),
                field=field_label(name),
            )


def _openapi_body(schema_name: str, *, required: bool = True) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": required,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}
            },
        }
    }


_ERROR_RESPONSES = {
    "401": "missing or wrong bearer token",
    "408": "the body did not arrive in time",
    "413": "the body is too large",
    "422": "invalid input: `field` names it",
    "500": "an unexpected or permanent failure behind the API: `code` says which",
    "503": "the broker (Redis), a host or libvirt does not answer: try again later",
}


def _add_openapi_extras(api: FastAPI, schema: dict[str, Any]) -> dict[str, Any]:
    """Request bodies, the error envelope and bearer security on every /v1 operation."""
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's, replaced by ours
        schemas.pop(unused, None)
    for model in (Reservation, OperationRequest, RetryRequest, StageRequest, ErrorEnvelope):
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(model_schema.pop("$defs", {}))
        schemas[model.__name__] = model_schema
    schema["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "VCLVIRT_API_TOKEN"}
    }
    envelope = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)  # FastAPI's own validation-error shape is not ours
            if path.startswith("/v1"):
                operation["security"] = [{"bearer": []}]
                for status, description in _ERROR_RESPONSES.items():
                    responses[status] = {"description": description, "content": envelope}
                if "{reservation_id}" in path:
                    responses["404"] = {"description": "unknown reservation", "content": envelope}
            for status in operation.get("x-vclvirt-errors", []):
                responses[str(status)] = {"description": "see the error code", "content": envelope}
            operation.pop("x-vclvirt-errors", None)
            for parameter in operation.get("parameters", []):
                if parameter.get("name") == "operation" and parameter.get("in") == "path":
                    parameter["schema"]["enum"] = sorted(OPERATIONS)
                    parameter["description"] = "; ".join(
                        f"{op.name}: {op.summary}" for op in OPERATIONS.values()
                    )
    return schema


def _install_error_handlers(api: FastAPI, settings: Settings) -> None:
    """Every error answers with the envelope: code, message, field, hint."""

    @api.exception_handler(VclvirtError)
    def _vclvirt_error(request: Request, error: VclvirtError) -> JSONResponse:
        # Unlisted: a transient failure behind the API (host, libvirt) is 503, worth a retry;
        # any other is 500, its code saying what failed.
        default = 503 if error.transient else 500
        status = next((code for cls, code in _STATUS_OF if isinstance(error, cls)), default)
        return JSONResponse(_vclvirt_envelope(error), status_code=status)

    def _broker_down(request: Request, error: Exception) -> JSONResponse:
        log.error(
            "broker_unreachable",
            broker=masked_url(settings.broker_url),
            error=f"{type(error).__name__}: {error}",
            path=request.url.path,
        )
        down = BrokerUnreachable(f"the broker at {masked_url(settings.broker_url)} does not answer")
        return JSONResponse(_vclvirt_envelope(down), status_code=503)

    for broker_error in _BROKER_ERRORS:
        api.add_exception_handler(broker_error, _broker_down)

    @api.exception_handler(RequestValidationError)
    def _bad_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [
            (".".join(str(p) for p in e["loc"] if p not in ("body", "path", "query")), e["msg"])
            for e in error.errors()
        ]
        field = problems[0][0] if problems else None
        message = "; ".join(f"{name or '(request)'}: {reason}" for name, reason in problems)
        body = error_body(
            "INVALID_INPUT",
            f"invalid request: {message}",
            hint="Correct the named field and submit again",
            field=field or None,
        )
        return JSONResponse(body, status_code=422)

    @api.exception_handler(StarletteHTTPException)
    def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(error.status_code, f"HTTP_{error.status_code}")
        hint = "See /openapi.json for the routes and their methods"
        return JSONResponse(
            error_body(code, f"{request.method} {request.url.path}: {error.detail}", hint=hint),
            status_code=error.status_code,
            headers=error.headers,
        )

    @api.exception_handler(Exception)
    def _unexpected(request: Request, error: Exception) -> JSONResponse:
        body = error_body(
            "INTERNAL_ERROR",
            f"unexpected {type(error).__name__} in {request.url.path}",
            hint="Report it with the API's log lines of this request",
        )
        return JSONResponse(body, status_code=500)


router = APIRouter()


def enqueued(handle: Handle) -> Enqueued:
    return Enqueued(
        reservation_id=handle.reservation_id,
        task_id=handle.task_id,
        status_url=f"/v1/reservations/{handle.reservation_id}",
    )


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness, no authentication."""
    return {"status": "ok", "version": __version__}


@router.post(
    "/v1/loads",
    status_code=202,
    openapi_extra={**_LOADS_BODY, "x-vclvirt-errors": [409]},
)
def load(body: RawBody) -> Enqueued | EnqueuedMany:
    """Enqueue a load; 409 while the same reservation is queued or running. A list of
    reservations is a bulk enqueue: all are validated before any is enqueued (one
    invalid: 422 naming `[index].field`, nothing enqueued), then each is answered in
    its place, enqueued or with its error (a reservation already in flight)."""
    document = load_json_document(body)
    if not isinstance(document, list):
        return enqueued(dispatch.load(body))
    if not 1 <= len(document) <= MAX_BULK:
        raise InvalidInput(f"a bulk load takes 1 to {MAX_BULK} reservations, not {len(document)}")
    answers = dispatch.load_many(document)
    return EnqueuedMany(
        results=[
            {"error": _vclvirt_envelope(a)["error"]}
            if isinstance(a, VclvirtError)
            else enqueued(a).model_dump()
            for a in answers
        ]
    )


@router.post(
    "/v1/captures",
    status_code=202,
    openapi_extra={**_openapi_body("Reservation"), "x-vclvirt-errors": [409]},
)
def capture(body: RawBody) -> Enqueued:
    """Enqueue a capture (state image or checkpoint)."""
    return enqueued(dispatch.capture(body))


@router.post(
    "/v1/operations/{operation}",
    status_code=202,
    openapi_extra={**_openapi_body("OperationRequest"), "x-vclvirt-errors": [409]},
)
def operation(operation: str, body: RawBody) -> Enqueued:
    """Enqueue any operation by name, with its parameters (the `operation` path
    parameter lists them)."""
    op = find_operation(operation)  # unknown: 422 before the body is read
    request = _object_body(body, OperationRequest)
    params = op.check_params(request.params)  # refused here, before anything is read
    return enqueued(dispatch.run(request.reservation, op.name, params or None))


@router.get("/v1/reservations/{reservation_id}")
def status(reservation_id: ReservationId) -> dict[str, Any]:
    """The reservation's status record."""
    return dispatch.known_status(reservation_id).to_dict()


@router.get("/v1/failed")
def failed(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
    """Reservations whose last operation failed, most recent first."""
    return [r.to_dict() for r in dispatch.failed(limit)]


@router.post(
    "/v1/reservations/{reservation_id}/retry",
    status_code=202,
    openapi_extra={
        **_openapi_body("RetryRequest", required=False),
        "x-vclvirt-errors": [409],
    },
)
def retry(reservation_id: ReservationId, body: RawBody) -> Enqueued:
    """Re-run a failed reservation from the step that failed (or from_step);
    404 for an unknown reservation, 409 while it is queued or running."""
    request = _object_body(body, RetryRequest, optional=True)
    return enqueued(dispatch.retry(reservation_id, request.from_step if request else None))


@router.post(
    "/v1/images/{image}/stage",
    status_code=202,
    openapi_extra=_openapi_body("StageRequest", required=False),
)
def stage_image(image: str, body: RawBody) -> dict[str, Any]:
    """Put the image's master on hosts ahead of their loads (all hosts when none are
    named); a stage under way is joined. Each host's stage: queued, copying (bytes done
    of total), done (copied or already there), failed (with its error), or stalled."""
    request = _object_body(body, StageRequest, optional=True)
    found = dispatch.stage(image, request.hosts if request else ())
    return {"stages": {name: stage.to_dict() for name, stage in found.items()}}


@router.get("/v1/images/{image}/stage")
def image_stages(image: str) -> dict[str, Any]:
    """The image's stages, one per host that has one."""
    return {"stages": {name: s.to_dict() for name, s in dispatch.stages(image).items()}}


def create_api(settings: Settings | None = None) -> FastAPI:
    """The application. Without a token configured every request is allowed (loopback
    development only; `vclvirt api` refuses to bind elsewhere)."""
    settings = settings or get_settings()
    token = api_token(settings)  # InvalidInput for a token that is too short
    register_secrets(token)
    api = FastAPI(
        title="vclvirt",
        version=__version__,
        description="Enqueue loads, captures and operations; read their status.",
        dependencies=[Depends(_known_query_parameters_only)],
    )
    api.state.settings = settings

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = get_openapi(
                title=api.title,
                version=api.version,
                description=api.description,
                routes=api.routes,
            )
            api.openapi_schema = _add_openapi_extras(api, schema)
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]

    _install_error_handlers(api, settings)
    api.add_middleware(
        RequestGuard, token=token, body_timeout=settings.api_body_timeout, logger=log
    )

    api.include_router(router)
    # VCL's module (contrib/vcl); RequestGuard checks the token on every /v1 route.
    api.include_router(vcl_api_routes.router)
    return api
