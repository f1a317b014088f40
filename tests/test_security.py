"""Security review, as tests: no secrets in logs, headers on every response, JSON Patch fuzzed."""

from __future__ import annotations

import hmac
import logging
import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.crypto import hash_secret, secret_matches

PATHS = [
    "/first_name",
    "/middle_name",
    "/last_name",
    "/email",
    "/password",
    "/is_active",
    "/is_regular_user",
    "/is_admin",
    "/current_password",
    "/username",
    "/",
    "",
    "/first_name/0",
    "/~1",
    "/-",
]


async def test_no_token_secret_or_password_reaches_the_logs(client: TestClient, bearer, login, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    token = await login("user", "w")
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    created = await (
        await client.post(
            "/api/v1/auth/oauth2_clients/",
            json={"client_type": "confidential", "allowed_scopes": ["users:read"]},
            headers=headers,
        )
    ).json()
    me = await (await client.get("/api/v1/users/me", headers=headers)).json()
    await client.patch(
        f"/api/v1/users/{me['id']}",
        headers=headers,
        json=[
            {"op": "test", "path": "/current_password", "value": "w"},
            {"op": "replace", "path": "/password", "value": "Sup3r-secret-new"},
        ],
    )
    await client.post(
        "/auth/oauth2/token",
        data={
            "grant_type": "password",
            "username": "root",
            "password": "definitely-wrong-pw",
            "client_id": "documentation",
        },
    )
    await client.post("/auth/oauth2/token?password=leaky-query-pw&grant_type=password")
    await client.get("/api/v1/users/me", headers={"Authorization": "Bearer forged-token-value"})
    logged = "\n".join(record.getMessage() + str(getattr(record, "fields", "")) for record in caplog.records)
    assert logged  # the flow did log (access lines, warnings)
    for secret in (
        token["access_token"],
        token["refresh_token"],
        created["client_secret"],
        "Sup3r-secret-new",
        "definitely-wrong-pw",
        "leaky-query-pw",
        "forged-token-value",
    ):
        assert secret not in logged


@pytest.mark.parametrize("candidate", ["s3cret", "s3cres", "", "s", "x" * 500, "s3cret" + "x" * 100])
def test_secret_comparison_takes_the_same_path_whatever_the_candidate(
    candidate: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Client secrets are compared as digests of equal length through hmac.compare_digest, so how long
    the comparison takes says nothing about how much of the secret, or of its length, was right."""
    digest = hash_secret("s3cret")
    compared: list[tuple[str, str]] = []
    constant_time = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return constant_time(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the function service.crypto calls
    assert secret_matches(candidate, digest) is (candidate == "s3cret")
    ((seen, stored),) = compared
    assert stored == digest
    assert len(seen) == len(stored) == len(hash_secret("anything else"))


@pytest.mark.parametrize(
    ("method", "path", "html"),
    [
        ("GET", "/healthz", False),
        ("GET", "/api/v1/users/me", False),
        ("GET", "/nope", False),
        ("GET", "/api/v1/", True),
        ("GET", "/auth/oauth2/authorize?client_id=x", True),
        ("POST", "/auth/oauth2/token", False),
        ("GET", "/.well-known/oauth-authorization-server", False),
        ("GET", "/api/v1/openapi.json", False),
        ("GET", "/api/v1/static/swagger-ui.css", True),
    ],
)
async def test_security_headers_on_every_response(client: TestClient, method: str, path: str, html: bool) -> None:
    response = await client.request(method, path)
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Frame-Options"] == "DENY"
    csp = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp
    if html:
        assert "unsafe-eval" not in csp
        assert re.search(r"script-src 'self'|default-src 'none'", csp)


operation = st.fixed_dictionaries(
    {
        "op": st.sampled_from(["add", "replace", "test", "remove", "move", "copy", "bogus"]),
        "path": st.sampled_from(PATHS),
    },
    optional={
        "value": st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.text(max_size=60),
            st.emails(),
            st.lists(st.integers(), max_size=2),
            st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        ),
        "from": st.sampled_from(PATHS),
    },
)
patch_bodies = st.one_of(
    st.lists(operation, min_size=0, max_size=6),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.integers(),
    st.text(max_size=10),
    st.none(),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=patch_bodies)
async def test_json_patch_fuzz_never_500_and_changes_nothing_on_refusal(
    client: TestClient, bearer, db, body: Any
) -> None:
    headers = getattr(test_json_patch_fuzz_never_500_and_changes_nothing_on_refusal, "_headers", None)
    if headers is None:
        headers = await bearer("user")
        test_json_patch_fuzz_never_500_and_changes_nothing_on_refusal._headers = headers  # type: ignore[attr-defined]
    before = await db.users.find_one({"username": "user"})
    response = await client.patch(f"/api/v1/users/{before['_id']}", json=body, headers=headers)
    assert response.status < 500, await response.text()
    after = await db.users.find_one({"username": "user"})
    if response.status != 200:
        assert after == before, f"refused ({response.status}) yet changed"
    if after["version"] != before["version"]:  # keep the fixture user usable for the next example
        await db.users.replace_one({"_id": before["_id"]}, before)
