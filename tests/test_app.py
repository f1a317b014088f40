"""The app factory's HTTP plumbing: problem details, request ids, headers, docs, health."""

from __future__ import annotations

import orjson
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate

from tests.helpers import PROBLEM


async def test_unknown_path_is_problem_json_404(client: TestClient) -> None:
    response = await client.get("/api/v1/no-such-thing")
    assert response.status == 404
    assert response.content_type == PROBLEM
    body = await response.json(content_type=PROBLEM)
    assert body == {"type": "about:blank", "title": "Not Found", "status": 404, "detail": "Nothing is here."}


async def test_wrong_method_is_405_with_allow(client: TestClient) -> None:
    response = await client.delete("/healthz")
    assert response.status == 405
    assert "GET" in response.headers["Allow"]
    body = await response.json(content_type=PROBLEM)
    assert body["status"] == 405
    assert body["title"] == "Method Not Allowed"


async def test_oversize_body_is_413_before_routing(client: TestClient) -> None:
    response = await client.post(
        "/api/v1/users/", data=b"x" * (70 * 1024), headers={"Content-Type": "application/json"}
    )
    assert response.status == 413
    body = await response.json(content_type=PROBLEM)
    assert body["status"] == 413


async def test_request_id_is_kept_when_given(client: TestClient) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"


async def test_request_id_is_generated_when_missing_or_hostile(client: TestClient) -> None:
    plain = await client.get("/healthz")
    hostile = await client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert len(plain.headers["X-Request-ID"]) == 32
    assert hostile.headers["X-Request-ID"] != "bad id\twith spaces"
    assert plain.headers["X-Request-ID"] != hostile.headers["X-Request-ID"]


async def test_error_responses_carry_request_id_and_security_headers(client: TestClient) -> None:
    response = await client.get("/nope", headers={"X-Request-ID": "trace-1"})
    assert response.headers["X-Request-ID"] == "trace-1"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"


async def test_health_and_readiness(client: TestClient) -> None:
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert await ready.json() == {"status": "ok", "database": "ok"}


async def test_openapi_document_validates_and_has_both_names(client: TestClient) -> None:
    first = await client.get("/api/v1/openapi.json")
    second = await client.get("/api/v1/swagger.json")
    assert first.status == second.status == 200
    document = orjson.loads(await first.read())
    assert document == orjson.loads(await second.read())
    assert document["openapi"].startswith("3.0")
    validate(document)
    flows = document["components"]["securitySchemes"]["oauth2"]["flows"]
    assert flows["password"]["tokenUrl"] == "/auth/oauth2/token"
    assert "authorizationCode" in flows


async def test_swagger_ui_is_served_with_a_strict_csp(client: TestClient) -> None:
    for path in ("/api/v1/", "/api/v1"):
        response = await client.get(path)
        assert response.status == 200
        text = await response.text()
        assert "swagger-ui-bundle.js" in text
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    script = await client.get("/api/v1/swagger-initializer.js")
    assert 'clientId: "documentation"' in await script.text()
    assert (await client.get("/api/v1/static/swagger-ui-bundle.js")).status == 200
    redirect_page = await client.get("/api/v1/static/oauth2-redirect.html")
    assert redirect_page.status == 200
    # Regression: static files were sent with the JSON API's `default-src 'none'`, which blocked
    # oauth2-redirect.js and so the authorization-code sign-in from Swagger UI.
    assert "script-src 'self'" in redirect_page.headers["Content-Security-Policy"]


async def test_every_operation_documents_scopes_and_error_responses(client: TestClient) -> None:
    document = orjson.loads(await (await client.get("/api/v1/openapi.json")).read())
    operations = {
        (method, path): operation
        for path, methods in document["paths"].items()
        if "servers" not in methods  # the OAuth2/OIDC endpoints at the site root speak RFC 6749, not problems
        for method, operation in methods.items()
    }
    assert ("get", "/audit/") in operations
    assert (
        len(operations) == 35
    )  # users 5, second factor 5, email and password mail 4, teams 9, clients 6, registration tokens 1, audit 1,
    # connected apps 2, sessions 2
    anonymous = {"/auth/email-verification", "/auth/password-reset", "/auth/password-reset/confirm"}  # a mail's token
    for (method, path), operation in operations.items():
        if path in anonymous:  # no bearer token is read: none can be refused
            assert operation["security"] == [], path
            assert "401" not in operation["responses"], path
            assert "anyone" in operation["description"], path
            continue
        assert operation["security"][0]["oauth2"] or path == "/users/", (method, path)
        assert "401" in operation["responses"], (method, path)
        if "{" in path:
            assert "404" in operation["responses"], (method, path)
        if method == "patch":
            assert {"400", "409", "412", "422"} <= set(operation["responses"]), path
            assert "application/json-patch+json" in operation["requestBody"]["content"]
    teams = operations[("patch", "/teams/{team_id}")]
    assert teams["security"] == [{"oauth2": ["teams:write"]}]
    assert "403" in teams["responses"]
    assert "team leaders or admins" in teams["description"]
    assert operations[("get", "/users/")]["description"].startswith("**Who:** admins")


async def test_trailing_slash_is_optional_and_not_documented_twice(client: TestClient) -> None:
    document = orjson.loads(await (await client.get("/api/v1/openapi.json")).read())
    assert "/users" not in document["paths"]
    assert (await client.get("/api/v1/teams")).status == (await client.get("/api/v1/teams/")).status == 401


def test_generated_request_ids_share_one_random_prefix_per_process() -> None:
    # Regression: the id generator called uuid4() (a urandom syscall) for every request.
    from service import middlewares

    first, second = next(middlewares._request_ids), next(middlewares._request_ids)
    assert first[:16] == second[:16]
    assert first != second


async def test_oauth2_and_oidc_endpoints_are_in_the_document_swagger_ui_shows(client: TestClient) -> None:
    document = orjson.loads(await (await client.get("/api/v1/openapi.json")).read())
    for path in (
        "/auth/oauth2/token",
        "/auth/oauth2/revoke",
        "/auth/oauth2/introspect",
        "/auth/oauth2/authorize",
        "/auth/oauth2/userinfo",
        "/auth/oauth2/jwks",
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ):
        assert document["paths"][path]["servers"][0]["url"] == "/", path
    token = document["paths"]["/auth/oauth2/token"]["post"]
    assert "application/x-www-form-urlencoded" in token["requestBody"]["content"]
    assert {"400", "401", "429", "503"} <= set(token["responses"])
    schemes = document["components"]["securitySchemes"]
    assert schemes["openIdConnect"]["openIdConnectUrl"] == "/.well-known/openid-configuration"
    assert {"openid", "profile", "email"} <= set(schemes["oauth2"]["flows"]["authorizationCode"]["scopes"])
