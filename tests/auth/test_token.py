"""POST /auth/oauth2/token: grants, client authentication, scopes, errors."""

from __future__ import annotations

import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient

from service.crypto import hash_secret
from tests.helpers import basic

TOKEN = "/auth/oauth2/token"


async def test_password_grant_issues_bearer_and_refresh_token(client: TestClient, seeded) -> None:
    response = await client.post(
        TOKEN,
        data={"grant_type": "password", "username": "root", "password": "q", "client_id": "documentation"},
    )
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["refresh_token"]
    assert set(body["scope"].split()) == {
        "auth:read",
        "auth:write",
        "users:read",
        "users:write",
        "teams:read",
        "teams:write",
    }


async def test_tokens_are_stored_only_as_hashes(client: TestClient, login, db) -> None:
    body = await login("root", "q")
    stored = await db.oauth2_tokens.find_one({"_id": hash_secret(body["access_token"])})
    assert stored is not None
    assert stored["refresh_hash"] == hash_secret(body["refresh_token"])
    raw = str(await db.oauth2_tokens.find({}).to_list(None))
    assert body["access_token"] not in raw
    assert body["refresh_token"] not in raw


async def test_multipart_form_is_accepted(client: TestClient, seeded) -> None:
    form = FormData()
    for key, value in {
        "grant_type": "password",
        "username": "user",
        "password": "w",
        "client_id": "documentation",
    }.items():
        form.add_field(key, value)
    form._is_multipart = True  # force multipart/form-data
    response = await client.post(TOKEN, data=form)
    assert response.status == 200


async def test_grant_type_and_client_id_may_come_in_the_query(client: TestClient, seeded) -> None:
    response = await client.post(
        f"{TOKEN}?grant_type=password&client_id=documentation", data={"username": "user", "password": "w"}
    )
    assert response.status == 200


@pytest.mark.parametrize("name", ["password", "client_secret", "refresh_token", "code"])
async def test_secrets_in_the_query_are_refused(client: TestClient, seeded, name: str) -> None:
    response = await client.post(
        f"{TOKEN}?{name}=x",
        data={"grant_type": "password", "username": "user", "password": "w", "client_id": "documentation"},
    )
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_request"


async def test_json_body_is_invalid_request(client: TestClient, seeded) -> None:
    response = await client.post(TOKEN, json={"grant_type": "password"})
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_request"


async def test_repeated_parameter_is_invalid_request(client: TestClient, seeded) -> None:
    response = await client.post(
        TOKEN,
        data=[
            ("grant_type", "password"),
            ("username", "user"),
            ("username", "root"),
            ("password", "w"),
            ("client_id", "documentation"),
        ],
    )
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_request"


async def test_wrong_password_and_unknown_user_look_the_same(client: TestClient, seeded) -> None:
    bodies = []
    for username, password in (("user", "nope"), ("ghost", "nope")):
        response = await client.post(
            TOKEN,
            data={"grant_type": "password", "username": username, "password": password, "client_id": "documentation"},
        )
        assert response.status == 400
        bodies.append(await response.json())
    assert bodies[0] == bodies[1] == {"error": "invalid_grant", "error_description": "Invalid username or password."}


async def test_unknown_grant_type(client: TestClient, seeded) -> None:
    response = await client.post(TOKEN, data={"grant_type": "magic", "client_id": "documentation"})
    assert response.status == 400
    assert (await response.json())["error"] == "unsupported_grant_type"


async def test_missing_parameters(client: TestClient, seeded) -> None:
    response = await client.post(TOKEN, data={"grant_type": "password", "client_id": "documentation"})
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_request"


async def test_unknown_client_is_401_invalid_client(client: TestClient, seeded) -> None:
    response = await client.post(
        TOKEN, data={"grant_type": "password", "username": "user", "password": "w", "client_id": "nobody"}
    )
    assert response.status == 401
    assert (await response.json())["error"] == "invalid_client"
    assert response.headers["WWW-Authenticate"].startswith("Basic")


async def test_scope_rules(client: TestClient, seeded) -> None:
    base = {"grant_type": "password", "username": "user", "password": "w", "client_id": "documentation"}
    narrowed = await client.post(TOKEN, data={**base, "scope": "  users:read   teams:read users:read "})
    assert narrowed.status == 200
    assert (await narrowed.json())["scope"] == "teams:read users:read"
    unknown = await client.post(TOKEN, data={**base, "scope": "users:read admin:everything"})
    assert unknown.status == 400
    assert (await unknown.json())["error"] == "invalid_scope"


async def test_scope_outside_the_clients_allowed_scopes(client: TestClient, register_client) -> None:
    created = await register_client("user", allowed_scopes=["users:read", "teams:read"], default_scopes=["users:read"])
    response = await client.post(
        TOKEN,
        data={"grant_type": "client_credentials", "scope": "users:write"},
        headers=basic(created["client_id"], created["client_secret"]),
    )
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_scope"


async def test_client_credentials_for_confidential_clients(client: TestClient, register_client) -> None:
    created = await register_client("user", allowed_scopes=["users:read", "teams:read"], default_scopes=["users:read"])
    by_basic = await client.post(
        TOKEN, data={"grant_type": "client_credentials"}, headers=basic(created["client_id"], created["client_secret"])
    )
    assert by_basic.status == 200
    body = await by_basic.json()
    assert "refresh_token" not in body
    assert body["scope"] == "users:read"  # the client's default scopes
    me = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert (await me.json())["username"] == "user"  # acts as the client's owner
    by_post = await client.post(
        TOKEN,
        data={
            "grant_type": "client_credentials",
            "client_id": created["client_id"],
            "client_secret": created["client_secret"],
        },
    )
    assert by_post.status == 200


async def test_client_credentials_wrong_secret_and_public_client(client: TestClient, register_client) -> None:
    created = await register_client("user", allowed_scopes=["users:read", "teams:read"], default_scopes=["users:read"])
    wrong = await client.post(
        TOKEN, data={"grant_type": "client_credentials"}, headers=basic(created["client_id"], "wrong")
    )
    assert wrong.status == 401
    assert (await wrong.json())["error"] == "invalid_client"
    public = await client.post(TOKEN, data={"grant_type": "client_credentials", "client_id": "documentation"})
    assert public.status == 400
    assert (await public.json())["error"] == "unauthorized_client"


async def test_deactivated_user_cannot_get_tokens(client: TestClient, seeded, db) -> None:
    await db.users.update_one({"username": "user"}, {"$set": {"is_active": False}})
    response = await client.post(
        TOKEN, data={"grant_type": "password", "username": "user", "password": "w", "client_id": "documentation"}
    )
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_grant"


async def test_expired_tokens_disappear_by_ttl_index(client: TestClient, db) -> None:
    info = await db.oauth2_tokens.index_information()
    ttl = [spec for spec in info.values() if spec.get("expireAfterSeconds") == 0]
    assert ttl
    assert dict(ttl[0]["key"]) == {"expires_at": 1}
