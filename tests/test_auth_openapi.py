"""Schemathesis against the served /openapi.json (valid and invalid inputs, bounded examples):
no request causes a 5xx, and responses match the documented statuses, types and schemas."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.auth_helpers import AuthDb, live_server


@pytest.fixture
def api_schema(
    auth_db: AuthDb, redis_url: str, keys_dir: Path, clinic_user: Any
) -> Iterator[schemathesis.BaseSchema]:
    with live_server(auth_db, redis_url, keys_dir) as live:
        loaded = schemathesis.openapi.from_url(live.url + "/openapi.json")
        loaded.config.generation.update(
            modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
        )
        yield loaded


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_and_never_fails_with_5xx(case: schemathesis.Case) -> None:
    response = case.call()
    assert response.status_code < 500, f"{case.method} {case.path} -> {response.status_code}"
    case.validate_response(
        response,
        checks=[status_code_conformance, content_type_conformance, response_schema_conformance],
    )
