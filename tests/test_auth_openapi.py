"""Schemathesis against the served /openapi.json (valid and invalid inputs, bounded examples):
no request causes a 5xx, and responses match the documented statuses, types and schemas.

The routes behind a bearer token (`/auth/me`, `/auth/verify`, `/auth/logout`) get a real one,
a fresh login per case (logout revokes the session it is given), so they are exercised past
the 401; a module teardown check fails the run if none of them ever answered 2xx.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from atendeai_ctl.auth.settings import RateLimits
from tests.auth_helpers import FAST, PASSWORD, AuthDb, live_server

AUTHENTICATED = {"/auth/me": 200, "/auth/verify": 200, "/auth/logout": 204}
# Generated logins fail by the dozen from one IP; the failure limiters (tested on their own in
# test_auth_http_limits) would otherwise lock out the login that fetches each token.
LOOSE = FAST.with_(rate=RateLimits(login_failures_per_account=0, login_failures_per_ip=0))

answered: Counter[tuple[str, int]] = Counter()


@pytest.fixture
def api_schema(
    auth_db: AuthDb, redis_url: str, keys_dir: Path, clinic_user: Any
) -> Iterator[schemathesis.BaseSchema]:
    with live_server(auth_db, redis_url, keys_dir, LOOSE) as live:
        loaded = schemathesis.openapi.from_url(live.url + "/openapi.json")
        loaded.config.generation.update(
            modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
        )

        @loaded.auth(refresh_interval=None).apply_to(path=list(AUTHENTICATED))
        class Bearer:
            """A new session per case, through the real login."""

            def get(self, case: schemathesis.Case, context: Any) -> str:
                response = httpx.post(
                    live.url + "/auth/login",
                    json={"clinic": "alpha", "email": "ana@alpha.test", "password": PASSWORD},
                    timeout=30,
                )
                assert response.status_code == 200, response.text
                return str(response.json()["access_token"])

            def set(self, case: schemathesis.Case, data: str, context: Any) -> None:
                case.headers["Authorization"] = f"Bearer {data}"

        yield loaded


@pytest.fixture(scope="module", autouse=True)
def authenticated_routes_were_exercised() -> Iterator[None]:
    answered.clear()
    yield
    ran = {path for path, _ in answered if path in AUTHENTICATED}
    never = [p for p in sorted(ran) if answered[(p, AUTHENTICATED[p])] == 0]
    assert not never, f"never past the token check: {never} ({dict(answered)})"


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=30, deadline=None)
def test_api_conforms_and_never_fails_with_5xx(case: schemathesis.Case) -> None:
    response = case.call()
    answered[(case.path, response.status_code)] += 1
    assert response.status_code < 500, f"{case.method} {case.path} -> {response.status_code}"
    case.validate_response(
        response,
        checks=[status_code_conformance, content_type_conformance, response_schema_conformance],
    )
