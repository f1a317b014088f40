"""Refresh rotation and reuse detection, revocation (RFC 7009), introspection (RFC 7662), metadata (RFC 8414),
brute-force throttling, and tokens losing their power."""

from __future__ import annotations

from datetime import timedelta

from aiohttp.test_utils import TestClient
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata

from service.crypto import hash_secret
from service.db import utcnow
from tests.helpers import basic, past_refresh_grace

TOKEN = "/auth/oauth2/token"
DOCS = {"client_id": "documentation"}


async def refresh(client: TestClient, refresh_token: str, **extra: str):
    return await client.post(
        TOKEN, data={"grant_type": "refresh_token", "refresh_token": refresh_token, **DOCS, **extra}
    )


async def me(client: TestClient, access_token: str) -> int:
    response = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {access_token}"})
    return response.status


async def test_refresh_rotates_and_the_old_token_stops_working(client: TestClient, login) -> None:
    first = await login("user", "w")
    response = await refresh(client, first["refresh_token"])
    assert response.status == 200
    second = await response.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert await me(client, second["access_token"]) == 200
    assert await me(client, first["access_token"]) == 401  # rotated out with its refresh token


async def test_replaying_a_rotated_refresh_token_revokes_the_family(client: TestClient, login, db) -> None:
    """After REFRESH_REUSE_GRACE (within it, see test_refresh_grace.py)."""
    first = await login("user", "w")
    second = await (await refresh(client, first["refresh_token"])).json()
    await past_refresh_grace(db, first["refresh_token"])
    replay = await refresh(client, first["refresh_token"])
    assert replay.status == 400
    assert (await replay.json())["error"] == "invalid_grant"
    assert await me(client, second["access_token"]) == 401
    assert (await refresh(client, second["refresh_token"])).status == 400


async def test_refresh_can_narrow_but_not_widen_scope(client: TestClient, login) -> None:
    first = await login("user", "w", scope="users:read teams:read")
    narrowed = await refresh(client, first["refresh_token"], scope="users:read")
    assert (await narrowed.json())["scope"] == "users:read"
    second = await login("user", "w", scope="users:read")
    widened = await refresh(client, second["refresh_token"], scope="users:read users:write")
    assert (await widened.json())["error"] == "invalid_scope"


async def test_refresh_token_of_another_client_is_invalid_grant(
    client: TestClient, login, register_client, bearer
) -> None:
    token = await login("user", "w")
    created = await register_client("user", client_type="public")
    response = await client.post(
        TOKEN,
        data={
            "grant_type": "refresh_token",
            "refresh_token": token["refresh_token"],
            "client_id": created["client_id"],
        },
    )
    assert (await response.json())["error"] == "invalid_grant"


async def test_expired_access_token_is_401(client: TestClient, login, db) -> None:
    token = await login("user", "w")
    await db.oauth2_tokens.update_one(
        {"_id": hash_secret(token["access_token"])}, {"$set": {"access_expires": utcnow() - timedelta(seconds=1)}}
    )
    response = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token['access_token']}"})
    assert response.status == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


async def test_revoking_an_access_token(client: TestClient, login) -> None:
    token = await login("user", "w")
    response = await client.post("/auth/oauth2/revoke", data={"token": token["access_token"], **DOCS})
    assert response.status == 200
    assert await me(client, token["access_token"]) == 401


async def test_revoking_a_refresh_token_takes_the_family(client: TestClient, login) -> None:
    token = await login("user", "w")
    response = await client.post(
        "/auth/oauth2/revoke", data={"token": token["refresh_token"], "token_type_hint": "refresh_token", **DOCS}
    )
    assert response.status == 200
    assert await me(client, token["access_token"]) == 401
    assert (await refresh(client, token["refresh_token"])).status == 400


async def test_revoke_unknown_token_is_200_and_other_clients_tokens_are_untouched(
    client: TestClient, login, register_client
) -> None:
    assert (await client.post("/auth/oauth2/revoke", data={"token": "nonsense", **DOCS})).status == 200
    token = await login("user", "w")
    other = await register_client("root", client_type="public")
    response = await client.post(
        "/auth/oauth2/revoke", data={"token": token["access_token"], "client_id": other["client_id"]}
    )
    assert response.status == 200
    assert await me(client, token["access_token"]) == 200


async def test_revoke_needs_token_parameter(client: TestClient, seeded) -> None:
    response = await client.post("/auth/oauth2/revoke", data=DOCS)
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_request"


async def test_introspection_of_own_tokens(client: TestClient, register_client, bearer) -> None:
    created = await register_client("user", default_scopes=["users:read"])
    auth = basic(created["client_id"], created["client_secret"])
    issued = await (await client.post(TOKEN, data={"grant_type": "client_credentials"}, headers=auth)).json()
    live = await (
        await client.post("/auth/oauth2/introspect", data={"token": issued["access_token"]}, headers=auth)
    ).json()
    assert live["active"] is True
    assert live["client_id"] == created["client_id"]
    assert live["username"] == "user"
    assert live["scope"] == "users:read"
    dead = await client.post("/auth/oauth2/introspect", data={"token": "made-up"}, headers=auth)
    assert await dead.json() == {"active": False}


async def test_introspection_refuses_public_clients_and_foreign_tokens(
    client: TestClient, register_client, bearer, login
) -> None:
    public = await client.post("/auth/oauth2/introspect", data={"token": "x", **DOCS})
    assert public.status == 401
    assert (await public.json())["error"] == "invalid_client"
    created = await register_client("user", default_scopes=["users:read"])
    foreign = await login("root", "q")  # issued to the documentation client
    response = await client.post(
        "/auth/oauth2/introspect",
        data={"token": foreign["access_token"]},
        headers=basic(created["client_id"], created["client_secret"]),
    )
    assert await response.json() == {"active": False}


async def test_server_metadata_is_valid_rfc8414(client: TestClient) -> None:
    response = await client.get("/.well-known/oauth-authorization-server")
    assert response.status == 200
    metadata = await response.json()
    host = f"http://{client.host}:{client.port}"
    assert metadata["issuer"] == host
    assert metadata["token_endpoint"] == f"{host}/auth/oauth2/token"
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    AuthorizationServerMetadata(metadata).validate()


async def test_throttling_after_ten_failures_even_with_the_right_password(client: TestClient, seeded) -> None:
    form = {"grant_type": "password", "username": "User", **DOCS}
    for _ in range(10):
        response = await client.post(TOKEN, data={**form, "password": "wrong"})
        assert response.status == 400
    blocked = await client.post(TOKEN, data={**form, "password": "w"})
    assert blocked.status == 429
    assert 0 < int(blocked.headers["Retry-After"]) <= 15 * 60
    assert (await blocked.json())["error"] == "slow_down"
    other = await client.post(TOKEN, data={**form, "username": "root", "password": "q"})
    assert other.status == 200  # the throttle is per username


async def test_throttle_window_passes(client: TestClient, seeded, db) -> None:
    form = {"grant_type": "password", "username": "user", **DOCS}
    for _ in range(10):
        await client.post(TOKEN, data={**form, "password": "wrong"})
    await db.login_attempts.update_one({"_id": "user"}, {"$set": {"window_start": utcnow() - timedelta(minutes=16)}})
    assert (await client.post(TOKEN, data={**form, "password": "w"})).status == 200


async def test_deactivation_and_client_deletion_cut_access_at_once(
    client: TestClient, login, register_client, bearer, db
) -> None:
    token = await login("user", "w")
    assert await me(client, token["access_token"]) == 200
    admin = await bearer("root")
    user_id = (
        await (
            await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token['access_token']}"})
        ).json()
    )["id"]
    off = await client.patch(
        f"/api/v1/users/{user_id}", json=[{"op": "replace", "path": "/is_active", "value": False}], headers=admin
    )
    assert off.status == 200
    assert await me(client, token["access_token"]) == 401
    await db.users.update_one({"username": "user"}, {"$set": {"is_active": True}})

    created = await register_client("user", default_scopes=["users:read"])
    auth = basic(created["client_id"], created["client_secret"])
    issued = await (await client.post(TOKEN, data={"grant_type": "client_credentials"}, headers=auth)).json()
    assert await me(client, issued["access_token"]) == 200
    deleted = await client.delete(f"/api/v1/auth/oauth2_clients/{created['client_id']}", headers=await bearer("user"))
    assert deleted.status == 204
    assert await me(client, issued["access_token"]) == 401
