"""/api/v1/auth/oauth2_clients: register, list, read, delete."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from service.crypto import hash_secret
from tests.helpers import PROBLEM, basic

URL = "/api/v1/auth/oauth2_clients/"


async def create(client: TestClient, headers, **body):
    payload = {"client_type": "confidential", "allowed_scopes": ["users:read"], **body}
    return await client.post(URL, json=payload, headers=headers)


async def test_confidential_client_secret_is_shown_once_and_stored_hashed(client: TestClient, bearer, db) -> None:
    headers = await bearer("user")
    response = await create(
        client, headers, redirect_uris=["https://app.example.com/cb"], default_scopes=["users:read"]
    )
    assert response.status == 201
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert response.headers["Location"] == f"/api/v1/auth/oauth2_clients/{body['client_id']}"
    assert set(body) == {
        "client_id",
        "client_type",
        "token_endpoint_auth_method",
        "redirect_uris",
        "default_scopes",
        "allowed_scopes",
        "user_id",
        "created",
        "updated",
        "client_secret",
        "client_name",
        "grant_types",
        "post_logout_redirect_uris",
        "backchannel_logout_uri",
        "first_party",
        "dpop_bound_access_tokens",
    }
    stored = await db.oauth2_clients.find_one({"_id": body["client_id"]})
    assert stored["secret_hash"] == hash_secret(body["client_secret"])
    assert body["client_secret"] not in str(stored)
    again = await client.get(f"{URL}{body['client_id']}", headers=headers)
    assert "client_secret" not in await again.json()


async def test_public_client_has_no_secret(client: TestClient, bearer) -> None:
    body = await (await create(client, await bearer("user"), client_type="public")).json()
    assert "client_secret" not in body
    assert body["default_scopes"] == []


async def test_create_validation(client: TestClient, bearer) -> None:
    headers = await bearer("user")
    cases: list[dict[str, Any]] = [
        {"client_type": "weird"},
        {"allowed_scopes": ["nope:read"]},
        {"allowed_scopes": []},
        {"default_scopes": ["users:write"]},
        {"redirect_uris": ["not a url"]},
        {"redirect_uris": ["https://x.example.com/cb#frag"]},
    ]
    for extra in cases:
        response = await create(client, headers, **extra)
        assert response.status == 422, extra
        assert "errors" in await response.json(content_type=PROBLEM)


async def test_list_own_clients_and_admin_may_pass_user_id(client: TestClient, bearer) -> None:
    user = await bearer("user")
    for _ in range(3):
        await create(client, user)
    listed = await client.get(f"{URL}?limit=2", headers=user)
    assert listed.headers["X-Total-Count"] == "3"
    assert len(await listed.json()) == 2
    me = await (await client.get("/api/v1/users/me", headers=user)).json()
    admin = await bearer("root")
    own_admin = await client.get(URL, headers=admin)
    assert [c["client_id"] for c in await own_admin.json()] == ["documentation"]
    by_admin = await client.get(f"{URL}?user_id={me['id']}", headers=admin)
    assert by_admin.headers["X-Total-Count"] == "3"
    by_user = await client.get(f"{URL}?user_id=000000000000000000000000", headers=user)
    assert by_user.status == 403


async def test_others_cannot_see_or_delete(client: TestClient, bearer) -> None:
    user = await bearer("user")
    assert (await client.get(f"{URL}documentation", headers=user)).status == 404
    assert (await client.delete(f"{URL}documentation", headers=user)).status == 404
    assert (await client.get(f"{URL}documentation", headers=await bearer("root"))).status == 200
    assert (await client.get(f"{URL}missing", headers=user)).status == 404


async def test_scopes_are_enforced(client: TestClient, bearer) -> None:
    read_only = await bearer("user", scope="auth:read")
    response = await create(client, read_only)
    assert response.status == 403
    assert 'scope="auth:write"' in response.headers["WWW-Authenticate"]
    assert (await client.get(URL)).status == 401


async def test_clients_carry_an_etag_and_delete_honours_if_match(
    client: TestClient, bearer, register_client, db
) -> None:
    headers = await bearer("user")
    created = await client.post(
        "/api/v1/auth/oauth2_clients/",
        json={"client_type": "public", "allowed_scopes": ["users:read"]},
        headers=headers,
    )
    body = await created.json()
    url = f"/api/v1/auth/oauth2_clients/{body['client_id']}"
    assert created.headers["ETag"] == '"1"'
    fetched = await client.get(url, headers=headers)
    assert fetched.headers["ETag"] == '"1"'
    stale = await client.delete(url, headers={**headers, "If-Match": '"2"'})
    assert stale.status == 412
    malformed = await client.delete(url, headers={**headers, "If-Match": "kiq"})
    assert malformed.status == 400
    assert await db.oauth2_clients.count_documents({"_id": body["client_id"]}) == 1
    assert (await client.delete(url, headers={**headers, "If-Match": '"1"'})).status == 204
    assert await db.oauth2_clients.count_documents({"_id": body["client_id"]}) == 0


async def test_a_registered_token_endpoint_auth_method_is_stored_and_enforced(
    client: TestClient, register_client
) -> None:
    post_only = await register_client("user", token_endpoint_auth_method="client_secret_post")
    assert post_only["token_endpoint_auth_method"] == "client_secret_post"
    form = {
        "grant_type": "client_credentials",
        "client_id": post_only["client_id"],
        "client_secret": post_only["client_secret"],
    }
    assert (await client.post("/auth/oauth2/token", data=form)).status == 200
    basic_auth = basic(post_only["client_id"], post_only["client_secret"])
    refused = await client.post("/auth/oauth2/token", data={"grant_type": "client_credentials"}, headers=basic_auth)
    assert refused.status == 401
    assert (await refused.json())["error"] == "invalid_client"
    unspecified = await register_client("user")
    assert unspecified["token_endpoint_auth_method"] is None  # Basic or form, as before
    public = await register_client("user", client_type="public", redirect_uris=["https://app.example/cb"])
    assert public["token_endpoint_auth_method"] == "none"


async def test_an_auth_method_that_does_not_fit_the_client_type_is_422(client: TestClient, bearer) -> None:
    body = {"client_type": "public", "allowed_scopes": ["openid"], "token_endpoint_auth_method": "client_secret_basic"}
    response = await client.post("/api/v1/auth/oauth2_clients/", json=body, headers=await bearer("user"))
    assert response.status == 422
    assert "token_endpoint_auth_method" in (await response.json())["errors"]


async def test_a_client_created_under_a_used_id_inherits_nothing_and_a_delete_finishes_a_broken_one(
    client: TestClient, db, seeded
) -> None:
    """A delete that stopped after the client went (a crash) leaves its tokens, codes and consents; the
    next client created under that id (fixtures choose ids) must not inherit them, and deleting an id
    that is gone clears what was left."""
    from bson import ObjectId

    from service.auth import repository
    from service.auth.clients import new_client_document

    def leftovers(client_id: str) -> list[tuple[str, dict[str, Any]]]:
        return [
            ("oauth2_tokens", {"_id": f"token-of-{client_id}", "client_id": client_id}),
            ("oauth2_codes", {"_id": f"code-of-{client_id}", "client_id": client_id}),
            ("oauth2_consents", {"user_id": ObjectId(), "client_id": client_id, "scopes": ["users:read"]}),
        ]

    async def left(client_id: str) -> int:
        return sum(
            [
                await db[name].count_documents({"client_id": client_id})
                for name in ("oauth2_tokens", "oauth2_codes", "oauth2_consents")
            ]
        )

    for name, document in leftovers("reused"):
        await db[name].insert_one(document)
    data = {
        "client_type": "public",
        "redirect_uris": ["https://app.example/cb"],
        "default_scopes": [],
        "allowed_scopes": [],
    }
    await repository.insert_client(db, new_client_document("reused", data, None, ObjectId()))
    assert await left("reused") == 0

    for name, document in leftovers("gone"):
        await db[name].insert_one(document)
    assert await repository.delete_client(db, "gone") is False  # no such client (any more)
    assert await left("gone") == 0

    for name, document in leftovers("reused"):  # a client at another version stays, with all it has
        await db[name].insert_one(document)
    assert await repository.delete_client(db, "reused", version=99) is False
    assert await left("reused") == 3
