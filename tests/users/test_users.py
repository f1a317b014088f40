"""/api/v1/users: sign-up, reading, listing, permissions."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.config import Settings
from tests.helpers import PROBLEM, service_processes, wait_ready


async def test_signup_creates_an_active_regular_user(client: TestClient, signup) -> None:
    response = await client.post(
        "/api/v1/users/",
        json={"username": "Jane.Doe", "email": "Jane@Example.com", "password": "long enough", "first_name": "Jane"},
    )
    assert response.status == 201
    user = await response.json()
    assert response.headers["Location"] == f"/api/v1/users/{user['id']}"
    assert response.headers["ETag"] == '"1"'
    assert set(user) == {
        "id",
        "username",
        "email",
        "email_verified",
        "first_name",
        "middle_name",
        "last_name",
        "is_active",
        "is_regular_user",
        "is_admin",
        "created",
        "updated",
        "mfa",
    }
    assert user["mfa"] == {"totp": False, "recovery_codes_left": 0}
    assert user["is_active"] is True
    assert user["is_admin"] is False
    assert user["created"].endswith("+00:00")


async def test_signup_never_returns_or_stores_the_password(client: TestClient, signup, db) -> None:
    user = await signup("secretive", password="my password 1")
    assert "password" not in str(user)
    stored = await db.users.find_one({"username": "secretive"})
    assert stored["password_hash"].startswith("$argon2id$")
    assert "my password 1" not in str(stored)


async def test_signup_then_sign_in(client: TestClient, signup, login) -> None:
    await signup("newbie", password="newbie password")
    token = await login("newbie", "newbie password")
    me = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token['access_token']}"})
    assert (await me.json())["username"] == "newbie"


async def test_username_and_email_are_unique_case_insensitively(client: TestClient, signup) -> None:
    await signup("alice")
    same_name = await client.post(
        "/api/v1/users/", json={"username": "ALICE", "email": "other@example.com", "password": "long enough"}
    )
    assert same_name.status == 409
    assert (await same_name.json(content_type=PROBLEM))["detail"] == "A user with this username already exists."
    same_email = await client.post(
        "/api/v1/users/", json={"username": "alice2", "email": "Alice@EXAMPLE.com", "password": "long enough"}
    )
    assert same_email.status == 409


async def test_signup_validation_errors_are_422_with_fields(client: TestClient) -> None:
    response = await client.post("/api/v1/users/", json={"username": "a b", "email": "nope", "password": "short"})
    assert response.status == 422
    body = await response.json(content_type=PROBLEM)
    assert set(body["errors"]) == {"username", "email", "password"}


async def test_signup_malformed_json_and_wrong_content_type(client: TestClient) -> None:
    bad_json = await client.post("/api/v1/users/", data=b"{not json", headers={"Content-Type": "application/json"})
    assert bad_json.status == 400
    form = await client.post("/api/v1/users/", data={"username": "x"})
    assert form.status == 415
    assert (await form.json(content_type=PROBLEM))["status"] == 415


async def test_deeply_nested_json_is_refused(client: TestClient) -> None:
    deep = b"[" * 100 + b"]" * 100
    response = await client.post("/api/v1/users/", data=deep, headers={"Content-Type": "application/json"})
    assert response.status == 400


async def test_signup_can_be_disabled_except_for_admins(aiohttp_client, settings, mongo_client, bearer) -> None:
    closed = await aiohttp_client(
        create_app(dataclasses.replace(settings, signup_enabled=False), mongo_client=mongo_client)
    )
    body = {"username": "late", "email": "late@example.com", "password": "long enough"}
    assert (await closed.post("/api/v1/users/", json=body)).status == 403
    admin = await bearer("root")  # the fixtures are in the same database
    assert (await closed.post("/api/v1/users/", json=body, headers=admin)).status == 201


async def test_me_requires_a_token(client: TestClient) -> None:
    response = await client.get("/api/v1/users/me")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    garbage = await client.get("/api/v1/users/me", headers={"Authorization": "Bearer nope"})
    assert garbage.status == 401
    assert 'error="invalid_token"' in garbage.headers["WWW-Authenticate"]


async def test_missing_scope_is_403_insufficient_scope(client: TestClient, bearer) -> None:
    headers = await bearer("user", scope="teams:read")
    response = await client.get("/api/v1/users/me", headers=headers)
    assert response.status == 403
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="api", error="insufficient_scope", scope="users:read"'


async def test_list_users_is_admin_only_with_total_count(client: TestClient, bearer, signup) -> None:
    for name in ("usr1", "usr2", "usr3"):
        await signup(name)
    assert (await client.get("/api/v1/users/", headers=await bearer("user"))).status == 403
    admin = await bearer("root")
    response = await client.get("/api/v1/users/?offset=1&limit=2", headers=admin)
    assert response.status == 200
    assert response.headers["X-Total-Count"] == "5"
    names = [user["username"] for user in await response.json()]
    assert names == ["user", "usr1"]  # creation order: root, user, usr1, usr2, usr3
    same = await client.get("/api/v1/users?offset=1&limit=2", headers=admin)  # no trailing slash
    assert [user["username"] for user in await same.json()] == names


async def test_list_users_pagination_validation(client: TestClient, bearer) -> None:
    admin = await bearer("root")
    for query in ("limit=0", "limit=101", "offset=-1", "limit=abc"):
        response = await client.get(f"/api/v1/users/?{query}", headers=admin)
        assert response.status == 422, query


async def test_users_see_themselves_and_admins_see_all(client: TestClient, bearer) -> None:
    user_headers = await bearer("user")
    me = await (await client.get("/api/v1/users/me", headers=user_headers)).json()
    root = await (await client.get("/api/v1/users/me", headers=await bearer("root"))).json()
    own = await client.get(f"/api/v1/users/{me['id']}", headers=user_headers)
    assert own.status == 200
    assert own.headers["ETag"] == '"1"'
    assert (await client.get(f"/api/v1/users/{root['id']}", headers=user_headers)).status == 404
    assert (await client.get(f"/api/v1/users/{me['id']}", headers=await bearer("root"))).status == 200
    assert (await client.get("/api/v1/users/not-an-id", headers=user_headers)).status == 404
    assert (await client.get("/api/v1/users/" + "0" * 24, headers=user_headers)).status == 404


async def test_a_token_issued_here_works_in_another_server_process(
    backend: str, settings: Settings, login, tmp_path: Path
) -> None:
    """Tokens live in the database, not in a process: a second `serve` process accepts this one's."""
    if backend != "secantus":
        pytest.skip("another process needs a database it can reach (--backend=secantus)")
    token = await login("user", "w")
    with service_processes(settings, 1, tmp_path) as (base,):
        async with aiohttp.ClientSession() as http:
            await wait_ready(http, base)
            headers = {"Authorization": f"Bearer {token['access_token']}"}
            async with http.get(f"{base}/api/v1/users/me", headers=headers) as response:
                assert response.status == 200
                assert (await response.json())["username"] == "user"


async def test_huge_offset_is_422_not_500(client: TestClient, bearer) -> None:
    # Regression (found by schemathesis): an offset beyond 64 bits overflowed in the driver -> 500.
    admin = await bearer("root")
    for path in ("/api/v1/users/", "/api/v1/teams/", "/api/v1/auth/oauth2_clients/"):
        response = await client.get(f"{path}?offset=1906241762145120515260416", headers=admin)
        assert response.status == 422, path
        assert "offset" in (await response.json(content_type=PROBLEM))["errors"]


async def test_head_is_not_offered_on_api_routes(client: TestClient, bearer) -> None:
    # The Allow header lists exactly the documented methods (schemathesis' Allow check).
    response = await client.options("/api/v1/users/me", headers=await bearer("user"))
    assert response.status == 405
    assert response.headers["Allow"] == "GET"
