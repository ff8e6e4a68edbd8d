"""schemathesis against the API's own OpenAPI document, with a token (#10).

Valid and invalid requests generated from /openapi.json go to a real `vclvirt api`:
no 5xx, every status and body as documented (the error envelope included), the
token really required, schema-violating input refused. The API uses a Redis
database of its own, so whatever it enqueues is never run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import REDIS_PORT
from tests.e2e.api_process import start_api

TOKEN = "schemathesis-token-" + "s" * 24
FUZZ_BROKER = f"redis://127.0.0.1:{REDIS_PORT}/8"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    ignored_auth,
]


@pytest.fixture(scope="module")
def api_schema(testbed: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    broker = redis.Redis.from_url(FUZZ_BROKER)
    broker.flushdb()
    api = start_api(tmp_path_factory.mktemp("fuzz"), token=TOKEN, VCLVIRT_BROKER_URL=FUZZ_BROKER)
    try:
        api.wait_ready()
        yield schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    finally:
        api.stop()
        broker.flushdb()
    assert "Traceback" not in api.log(), api.log()


def _on_a_known_host(case: schemathesis.Case) -> schemathesis.Case:
    """Valid reservations name a host of the inventory, so some get as far as the queue;
    long-polls wait a second at most, so the run stays short."""
    if isinstance(case.query, dict) and isinstance(case.query.get("timeout"), int | float):
        case.query["timeout"] = min(case.query["timeout"], 1)
    body = case.body if isinstance(case.body, dict) else {}
    reservation = body.get("reservation", body)
    if isinstance(reservation, dict) and "host" in reservation:
        reservation["host"] = "node-a"
    return case


def _operations(schema: object) -> list[object]:
    return [result.ok() for result in schema.get_all_operations()]  # type: ignore[attr-defined]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_conforms_to_its_openapi_document(api_schema, mode):
    """Every generated request, valid or not, is answered as the document says (status,
    content type, body schema incl. the error envelope), never with a 5xx; the token is
    really checked; schema-violating input is refused."""
    operations = _operations(api_schema)
    assert len(operations) >= 7
    answered: Counter[int] = Counter()
    for operation in operations:
        definition = operation.definition.raw  # type: ignore[attr-defined]
        if mode is GenerationMode.NEGATIVE and not (
            definition.get("parameters") or definition.get("requestBody")
        ):
            continue  # nothing to make invalid

        strategy = operation.as_strategy(generation_mode=mode)  # type: ignore[attr-defined]
        if mode is GenerationMode.POSITIVE:
            strategy = strategy.map(_on_a_known_host)

        @given(case=strategy)
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
        def answered_as_documented(case: schemathesis.Case) -> None:
            response = case.call_and_validate(
                headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS
            )
            answered[response.status_code] += 1

        answered_as_documented()
    print(f"{mode.value}: answers by status {dict(sorted(answered.items()))}")
    # The run reached the API's logic, not only its door: the token let valid requests in
    # and they were answered (records read, 404 for unknown ones); invalid ones got 422.
    if mode is GenerationMode.POSITIVE:
        assert answered[401] == 0 and answered[200] > 0 and answered[404] > 0, answered
    else:
        assert answered[422] > 0, answered
