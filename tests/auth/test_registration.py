"""Dynamic client registration (RFC 7591) and management (RFC 7592): the REGISTRATION policies, initial
access tokens (expiry, use count under concurrency), metadata errors, the client configuration endpoint,
registered clients using the token endpoint, and the operator's CLI command."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.crypto import hash_secret
from service.db import utcnow
from tests.helpers import REDIRECT, basic, decide, exchange_form, open_page, pkce, query, redirect_params

REGISTER = "/auth/oauth2/register"


@pytest.fixture
def policy() -> str:
    return "token"


@pytest.fixture
def settings(settings, policy: str):
    return dataclasses.replace(settings, registration=policy)


async def initial_token(client: TestClient, bearer, **body: Any) -> str:
    response = await client.post("/api/v1/auth/registration_tokens/", json=body, headers=await bearer("root"))
    assert response.status == 201, await response.text()
    assert response.headers["Cache-Control"] == "no-store"
    return str((await response.json())["token"])


async def register(client: TestClient, token: str | None, **metadata: Any):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await client.post(REGISTER, json=metadata, headers=headers)
    return response, await response.json()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def recorded(db: Any, event: str, **match: Any) -> dict[str, Any] | None:
    for _ in range(100):  # events are stored a few milliseconds after the request
        found: dict[str, Any] | None = await db.audit_events.find_one({"event": event, **match})
        if found is not None:
            return found
        await asyncio.sleep(0.01)
    return None


PUBLIC = {
    "redirect_uris": [REDIRECT],
    "token_endpoint_auth_method": "none",
    "scope": "users:read",
    "client_name": "CLI",
}


# --- policies ----------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["closed"])
async def test_closed_registration_is_403_access_denied_and_not_advertised(client: TestClient, seeded, db) -> None:
    response, body = await register(client, None, **PUBLIC)
    assert response.status == 403
    assert body["error"] == "access_denied"
    assert response.headers["Cache-Control"] == "no-store"
    assert await db.oauth2_clients.count_documents({}) == 1  # the fixtures' documentation client only
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        assert "registration_endpoint" not in await (await client.get(path)).json()


async def test_token_policy_advertises_the_endpoint_and_needs_an_initial_access_token(
    client: TestClient, seeded, bearer, db
) -> None:
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        metadata = await (await client.get(path)).json()
        assert metadata["registration_endpoint"] == f"{metadata['issuer']}/auth/oauth2/register"
    for token in (None, "not-a-token"):
        response, body = await register(client, token, **PUBLIC)
        assert response.status == 401
        assert body["error"] == "invalid_token"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert await db.oauth2_clients.count_documents({}) == 1
    iat = await initial_token(client, bearer)
    stored = await db.oauth2_registration_tokens.find_one({})
    assert stored["token_hash"] == hash_secret(iat)
    assert iat not in str(stored)
    response, body = await register(client, iat, **PUBLIC)
    assert response.status == 201, body
    root = await db.users.find_one({"username": "root"})
    client_doc = await db.oauth2_clients.find_one({"_id": body["client_id"]})
    assert client_doc["user_id"] == root["_id"]  # owned by the admin who made the initial access token
    assert client_doc["client_type"] == "public"
    assert client_doc["grant_types"] == [
        "authorization_code",
        "refresh_token",
    ]
    assert client_doc["registration_token_hash"] == hash_secret(body["registration_access_token"])
    assert await recorded(db, "registration_token.created")
    assert await recorded(db, "client.registered", client_id=body["client_id"])


async def test_only_admins_create_initial_access_tokens(client: TestClient, seeded, bearer, db) -> None:
    response = await client.post("/api/v1/auth/registration_tokens/", json={}, headers=await bearer("user"))
    assert response.status == 403
    bad = await client.post("/api/v1/auth/registration_tokens/", json={"max_uses": 0}, headers=await bearer("root"))
    assert bad.status == 422
    assert await db.oauth2_registration_tokens.count_documents({}) == 0


@pytest.mark.parametrize("policy", ["open"])
async def test_open_registration_takes_public_clients_only_and_gives_no_owner(client: TestClient, seeded, db) -> None:
    response, body = await register(client, None, **PUBLIC)
    assert response.status == 201, body
    assert "client_secret" not in body
    assert (await db.oauth2_clients.find_one({"_id": body["client_id"]}))["user_id"] is None
    for method in ("client_secret_basic", "client_secret_post"):
        refused, error = await register(client, None, **{**PUBLIC, "token_endpoint_auth_method": method})
        assert refused.status == 400
        assert error["error"] == "invalid_client_metadata"
    # Without token_endpoint_auth_method an open registration is a public client (RFC 7591's default
    # client_secret_basic is not available here).
    response, body = await register(client, None, redirect_uris=[REDIRECT])
    assert response.status == 201
    assert body["token_endpoint_auth_method"] == "none"
    assert await db.oauth2_clients.count_documents({}) == 3
    # Its registration access token replaces its metadata; it stays public without saying so again.
    path = body["registration_client_uri"][body["registration_client_uri"].index("/auth/") :]
    replaced = await client.put(
        path,
        json={"client_id": body["client_id"], "redirect_uris": [REDIRECT], "client_name": "Renamed"},
        headers=auth(body["registration_access_token"]),
    )
    assert replaced.status == 200, await replaced.text()
    assert (await replaced.json())["token_endpoint_auth_method"] == "none"
    assert (await db.oauth2_clients.find_one({"_id": body["client_id"]}))["client_name"] == "Renamed"


INTERNAL_RECEIVERS = [
    "http://rp.example.com/backchannel",  # plain http
    "http://127.0.0.1:9/backchannel",
    "https://127.0.0.1/backchannel",
    "https://127.1/backchannel",  # the resolver's short and hex forms of 127.0.0.1
    "https://0x7f.0.0.1/backchannel",
    "https://2130706433/backchannel",
    "https://10.1.2.3/backchannel",
    "https://169.254.169.254/latest/meta-data",  # a cloud metadata service
    "https://[::1]/backchannel",
    "https://[::ffff:127.0.0.1]/backchannel",
    "https://localhost/backchannel",
    "https://api.localhost/backchannel",
    "https://localhost.localdomain/backchannel",
    "https://[64:ff9b::a9fe:a9fe]/latest/meta-data",  # NAT64 for 169.254.169.254
    "https://[2002:7f00:1::1]/backchannel",  # 6to4 around 127.0.0.1
    "https://[::127.0.0.1]/backchannel",  # IPv4-compatible
    "https://[::1/backchannel",  # not a URI: refused, never a 500
]


@pytest.mark.parametrize("policy", ["open"])
@pytest.mark.parametrize("uri", INTERNAL_RECEIVERS)
async def test_open_registration_never_points_back_channel_logout_at_an_internal_host(
    client: TestClient, seeded, db, uri: str
) -> None:
    """Anyone may register under the open policy, and the server POSTs logout tokens to the URI: not to
    its own or its network's services."""
    response, body = await register(client, None, **{**PUBLIC, "backchannel_logout_uri": uri})
    assert response.status == 400, body
    assert body["error"] == "invalid_client_metadata"
    assert await db.oauth2_clients.count_documents({}) == 1


@pytest.mark.parametrize("policy", ["open"])
async def test_open_registration_takes_a_public_https_receiver_and_keeps_refusing_internal_ones(
    client: TestClient, seeded, db
) -> None:
    response, body = await register(client, None, **{**PUBLIC, "backchannel_logout_uri": "https://rp.example.com/bc"})
    assert response.status == 201, body
    path = body["registration_client_uri"][body["registration_client_uri"].index("/auth/") :]
    replaced = await client.put(
        path,
        json={
            "client_id": body["client_id"],
            "redirect_uris": [REDIRECT],
            "backchannel_logout_uri": "https://10.0.0.1/",
        },
        headers=auth(body["registration_access_token"]),
    )
    assert replaced.status == 400
    assert (await replaced.json())["error"] == "invalid_client_metadata"
    stored = await db.oauth2_clients.find_one({"_id": body["client_id"]})
    assert stored["backchannel_logout_uri"] == "https://rp.example.com/bc"


async def test_a_registrant_with_an_initial_access_token_may_use_a_loopback_receiver(
    client: TestClient, seeded, bearer
) -> None:
    """An admin handed out the token: development receivers on the same machine stay possible."""
    iat = await initial_token(client, bearer)
    response, body = await register(client, iat, **{**PUBLIC, "backchannel_logout_uri": "http://127.0.0.1:9/bc"})
    assert response.status == 201, body
    assert body["backchannel_logout_uri"] == "http://127.0.0.1:9/bc"


# --- initial access tokens: expiry and use count -------------------------------------------------


async def test_an_expired_initial_access_token_is_refused(client: TestClient, seeded, bearer, db) -> None:
    iat = await initial_token(client, bearer, expires_in=60)
    await db.oauth2_registration_tokens.update_one({}, {"$set": {"expires_at": utcnow() - timedelta(seconds=1)}})
    response, body = await register(client, iat, **PUBLIC)
    assert response.status == 401
    assert body["error"] == "invalid_token"
    assert await db.oauth2_clients.count_documents({}) == 1


async def test_concurrent_registrations_never_exceed_max_uses(client: TestClient, seeded, bearer, db) -> None:
    iat = await initial_token(client, bearer, max_uses=3)
    answers = await asyncio.gather(*(register(client, iat, **PUBLIC) for _ in range(8)))
    statuses = sorted(response.status for response, _ in answers)
    assert statuses == [201] * 3 + [401] * 5
    assert await db.oauth2_clients.count_documents({"registration_token_hash": {"$exists": True}}) == 3
    assert (await db.oauth2_registration_tokens.find_one({}))["remaining"] == 0


async def test_without_a_live_initial_access_token_the_metadata_is_not_judged(
    client: TestClient, seeded, bearer, db
) -> None:
    for token in (None, "unknown"):
        response, body = await register(client, token, **{**PUBLIC, "grant_types": ["password"]})
        assert response.status == 401
        assert body["error"] == "invalid_token"
    assert await db.oauth2_clients.count_documents({}) == 1


async def test_invalid_metadata_spends_no_use(client: TestClient, seeded, bearer, db) -> None:
    iat = await initial_token(client, bearer, max_uses=1)
    response, body = await register(client, iat, **{**PUBLIC, "grant_types": ["password"]})
    assert response.status == 400
    assert body["error"] == "invalid_client_metadata"
    response, body = await register(client, iat, **PUBLIC)
    assert response.status == 201, body


# --- metadata errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "error"),
    [
        ({"first_party": True}, "invalid_client_metadata"),
        ({"first_party": False}, "invalid_client_metadata"),
        ({"grant_types": ["authorization_code", "password"]}, "invalid_client_metadata"),
        ({"grant_types": ["implicit"]}, "invalid_client_metadata"),
        ({"grant_types": ["client_credentials"]}, "invalid_client_metadata"),  # a public client
        ({"response_types": ["token"]}, "invalid_client_metadata"),
        ({"scope": "users:read nonsense:scope"}, "invalid_client_metadata"),
        ({"scope": 5}, "invalid_client_metadata"),
        ({"token_endpoint_auth_method": "private_key_jwt"}, "invalid_client_metadata"),
        ({"backchannel_logout_uri": "javascript:alert(1)"}, "invalid_client_metadata"),
        ({"post_logout_redirect_uris": ["http://evil.example/"]}, "invalid_client_metadata"),
        ({"redirect_uris": ["javascript:alert(1)"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://app.example.com/cb#frag"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["http://app.example.com/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": [f"https://app.example.com/{n}" for n in range(500)]}, "invalid_redirect_uri"),
        ({"redirect_uris": "https://app.example.com/cb"}, "invalid_redirect_uri"),
    ],
)
async def test_bad_metadata_is_refused_and_changes_nothing(
    client: TestClient, seeded, bearer, db, metadata: dict[str, Any], error: str
) -> None:
    iat = await initial_token(client, bearer)
    response, body = await register(client, iat, **{**PUBLIC, **metadata})
    assert response.status == 400, body
    assert body["error"] == error
    assert body["error_description"]
    assert await db.oauth2_clients.count_documents({}) == 1


async def test_a_body_that_is_not_json_is_invalid_request(client: TestClient, seeded, bearer) -> None:
    iat = await initial_token(client, bearer)
    response = await client.post(REGISTER, data="{not json", headers={**auth(iat), "Content-Type": "application/json"})
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_request"
    listed = await client.post(REGISTER, json=["a"], headers=auth(iat))
    assert listed.status == 400
    assert (await listed.json())["error"] == "invalid_client_metadata"


# --- RFC 7592: read, update, delete --------------------------------------------------------------


async def test_read_update_delete_with_the_registration_access_token(
    client: TestClient, seeded, bearer, db, app
) -> None:
    iat = await initial_token(client, bearer)
    confidential = {**PUBLIC, "token_endpoint_auth_method": "client_secret_basic", "scope": "users:read openid"}
    response, made = await register(client, iat, **confidential)
    assert response.status == 201, made
    uri = made["registration_client_uri"]
    assert uri.endswith(f"/auth/oauth2/register/{made['client_id']}")
    path = uri[uri.index("/auth/") :]
    assert made["client_secret_expires_at"] == 0
    assert made["client_secret"]
    assert made["grant_types"] == ["authorization_code", "refresh_token", "client_credentials"]
    other_response, other = await register(client, iat, **PUBLIC)
    assert other_response.status == 201

    # Wrong, missing and another client's tokens: 401 with a Bearer challenge, for every method.
    for headers in ({}, auth("wrong"), auth(other["registration_access_token"]), {"Authorization": "Basic eDp5"}):
        for method in ("GET", "PUT", "DELETE"):
            denied = await client.request(method, path, headers=headers, json={"client_id": made["client_id"]})
            assert denied.status == 401, method
            assert (await denied.json())["error"] == "invalid_token"
            assert denied.headers["WWW-Authenticate"].startswith("Bearer")

    read = await client.get(path, headers=auth(made["registration_access_token"]))
    assert read.status == 200
    assert read.headers["Cache-Control"] == "no-store"
    shown = await read.json()
    assert shown["client_id"] == made["client_id"]
    assert shown["scope"] == "users:read openid"
    assert "client_secret" not in shown
    token = shown["registration_access_token"]  # the read rotated it
    assert token != made["registration_access_token"]

    # PUT replaces the metadata; the secret stays, the registration access token is replaced.
    new = {
        "client_id": made["client_id"],
        "client_secret": made["client_secret"],
        "redirect_uris": ["https://new.example.com/cb"],
        "token_endpoint_auth_method": "client_secret_post",
        "scope": "users:read",
        "grant_types": ["client_credentials"],
        "client_name": "Renamed",
    }
    updated = await client.put(path, json=new, headers=auth(token))
    assert updated.status == 200, await updated.text()
    body = await updated.json()
    assert body["redirect_uris"] == ["https://new.example.com/cb"]
    assert body["client_name"] == "Renamed"
    assert body["grant_types"] == ["client_credentials"]
    assert body["token_endpoint_auth_method"] == "client_secret_post"
    token = body["registration_access_token"]
    stored = await db.oauth2_clients.find_one({"_id": made["client_id"]})
    assert stored["registration_token_hash"] == hash_secret(token)
    assert stored["secret_hash"] == hash_secret(made["client_secret"])
    assert stored["allowed_scopes"] == ["users:read"]
    assert await recorded(db, "client.registration_updated", client_id=made["client_id"])

    for bad in (
        {**new, "client_id": "someone-else"},
        {**new, "client_secret": "guess"},
        {**new, "token_endpoint_auth_method": "none"},  # would make it public
        {**new, "grant_types": ["password"]},
        {**new, "first_party": True},
    ):
        refused = await client.put(path, json=bad, headers=auth(token))
        assert refused.status == 400
        assert (await refused.json())["error"] == "invalid_client_metadata"
    bad_uri = await client.put(path, json={**new, "redirect_uris": ["http://x.example/"]}, headers=auth(token))
    assert (await bad_uri.json())["error"] == "invalid_redirect_uri"
    unchanged = await db.oauth2_clients.find_one({"_id": made["client_id"]})
    assert unchanged["version"] == stored["version"]
    assert unchanged["registration_token_hash"] == stored["registration_token_hash"]  # refused: no rotation

    # client_credentials with the (kept) secret, sent in the form as now registered; then DELETE.
    form = {
        "grant_type": "client_credentials",
        "client_id": made["client_id"],
        "client_secret": made["client_secret"],
    }
    issued = await client.post("/auth/oauth2/token", data=form)
    assert issued.status == 200, await issued.text()
    access = (await issued.json())["access_token"]
    me = await client.get("/api/v1/users/me", headers=auth(access))
    assert me.status == 200
    deleted = await client.delete(path, headers=auth(token))
    assert deleted.status == 204
    assert await db.oauth2_clients.find_one({"_id": made["client_id"]}) is None
    assert (await client.get("/api/v1/users/me", headers=auth(access))).status == 401  # the cache forgot it
    assert (await client.get(path, headers=auth(token))).status == 401
    assert await recorded(db, "client.registration_deleted", client_id=made["client_id"])


# --- RFC 7592 3: a new registration access token on every read and update ------------------------


def config_path(made: dict[str, Any]) -> str:
    uri = str(made["registration_client_uri"])
    return uri[uri.index("/auth/") :]


async def stolen_token_changes_nothing(client: TestClient, db: Any, made: dict[str, Any], stolen: str) -> None:
    """A replaced token is 401 invalid_token for GET, PUT and DELETE, and the client stays as it was."""
    before = await db.oauth2_clients.find_one({"_id": made["client_id"]})
    path = config_path(made)
    attempts = {
        "GET": None,
        "PUT": {"client_id": made["client_id"], "redirect_uris": ["https://thief.example.com/cb"], "client_name": "X"},
        "DELETE": None,
    }
    for method, body in attempts.items():
        denied = await client.request(method, path, json=body, headers=auth(stolen))
        assert denied.status == 401, method
        assert (await denied.json())["error"] == "invalid_token"
        assert denied.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert await db.oauth2_clients.find_one({"_id": made["client_id"]}) == before


async def test_a_read_rotates_the_token_and_the_previous_one_is_refused(client: TestClient, seeded, bearer, db) -> None:
    response, made = await register(client, await initial_token(client, bearer), **PUBLIC)
    assert response.status == 201, made
    first = made["registration_access_token"]
    read = await client.get(config_path(made), headers=auth(first))
    assert read.status == 200, await read.text()
    shown = await read.json()
    second = shown["registration_access_token"]
    assert second != first
    assert {k: v for k, v in shown.items() if k != "registration_access_token"} == {
        k: v for k, v in made.items() if k != "registration_access_token"
    }
    stored = await db.oauth2_clients.find_one({"_id": made["client_id"]})
    assert stored["registration_token_hash"] == hash_secret(second)  # hashed, as at registration
    assert second not in str(stored)
    assert stored["version"] == 1  # a bare rotation is not a new version (ETag) of the client
    event = await recorded(db, "client.registration_token_rotated", client_id=made["client_id"], via="read")
    assert event is not None
    assert first not in str(event)
    assert second not in str(event)

    await stolen_token_changes_nothing(client, db, made, first)
    again = await client.get(config_path(made), headers=auth(second))  # the new one works (once)
    assert again.status == 200
    third = (await again.json())["registration_access_token"]
    assert len({first, second, third}) == 3
    await stolen_token_changes_nothing(client, db, made, second)


async def test_an_update_rotates_the_token_and_the_previous_one_is_refused(
    client: TestClient, seeded, bearer, db
) -> None:
    response, made = await register(client, await initial_token(client, bearer), **PUBLIC)
    assert response.status == 201, made
    first = made["registration_access_token"]
    body = {"client_id": made["client_id"], "redirect_uris": [REDIRECT], "client_name": "Renamed", "scope": "openid"}
    updated = await client.put(config_path(made), json=body, headers=auth(first))
    assert updated.status == 200, await updated.text()
    assert updated.headers["Cache-Control"] == "no-store"
    answer = await updated.json()
    assert answer["client_name"] == "Renamed"
    second = answer["registration_access_token"]
    assert second != first
    stored = await db.oauth2_clients.find_one({"_id": made["client_id"]})
    assert stored["registration_token_hash"] == hash_secret(second)
    assert stored["client_name"] == "Renamed"
    assert await recorded(db, "client.registration_token_rotated", client_id=made["client_id"], via="update")

    await stolen_token_changes_nothing(client, db, made, first)
    assert (await db.oauth2_clients.find_one({"_id": made["client_id"]}))["client_name"] == "Renamed"
    read = await client.get(config_path(made), headers=auth(second))
    assert read.status == 200
    third = (await read.json())["registration_access_token"]
    deleted = await client.delete(config_path(made), headers=auth(third))
    assert deleted.status == 204
    assert await db.oauth2_clients.find_one({"_id": made["client_id"]}) is None


@pytest.fixture
def all_read_the_client(monkeypatch: pytest.MonkeyPatch):
    """Hold every request at its client lookup until `n` have looked (the race, made certain): each has
    proven the same token before any of them writes."""
    from service.auth import repository

    def hold(n: int) -> None:
        barrier = asyncio.Barrier(n)
        original = repository.get_client

        async def get_client(db: Any, client_id: str) -> Any:
            found = await original(db, client_id)
            await asyncio.wait_for(barrier.wait(), timeout=10)
            return found

        monkeypatch.setattr(repository, "get_client", get_client)

    return hold


async def test_concurrent_reads_with_one_token_rotate_it_exactly_once(
    client: TestClient, seeded, bearer, db, all_read_the_client
) -> None:
    response, made = await register(client, await initial_token(client, bearer), **PUBLIC)
    assert response.status == 201, made
    all_read_the_client(6)
    answers = await asyncio.gather(
        *(client.get(config_path(made), headers=auth(made["registration_access_token"])) for _ in range(6))
    )
    statuses = sorted(answer.status for answer in answers)
    assert statuses == [200] + [401] * 5
    winner = next(answer for answer in answers if answer.status == 200)
    new = (await winner.json())["registration_access_token"]
    for answer in answers:
        if answer.status == 401:
            assert (await answer.json())["error"] == "invalid_token"
    stored = await db.oauth2_clients.find_one({"_id": made["client_id"]})
    assert stored["registration_token_hash"] == hash_secret(new)
    assert await recorded(db, "client.registration_token_rotated", client_id=made["client_id"])
    await asyncio.sleep(0.1)
    assert await db.audit_events.count_documents({"event": "client.registration_token_rotated"}) == 1


async def test_concurrent_updates_with_one_token_make_exactly_one_change(
    client: TestClient, seeded, bearer, db, all_read_the_client
) -> None:
    response, made = await register(client, await initial_token(client, bearer), **PUBLIC)
    assert response.status == 201, made
    all_read_the_client(4)  # twice: the route looks the client up before the body, then update() again
    names = ["A", "B", "C", "D"]
    answers = await asyncio.gather(
        *(
            client.put(
                config_path(made),
                json={"client_id": made["client_id"], "redirect_uris": [REDIRECT], "client_name": name},
                headers=auth(made["registration_access_token"]),
            )
            for name in names
        )
    )
    assert sorted(answer.status for answer in answers) == [200, 401, 401, 401]
    winner = await next(answer for answer in answers if answer.status == 200).json()
    stored = await db.oauth2_clients.find_one({"_id": made["client_id"]})
    assert stored["client_name"] == winner["client_name"]
    assert stored["version"] == 2  # one change
    assert stored["registration_token_hash"] == hash_secret(winner["registration_access_token"])


# --- registered clients at the token endpoint ----------------------------------------------------


async def test_a_registered_public_client_completes_the_code_flow_with_pkce(client: TestClient, seeded, bearer) -> None:
    response, made = await register(client, await initial_token(client, bearer), **PUBLIC)
    assert response.status == 201
    verifier, challenge = pkce()
    _, html = await open_page(client, query(challenge, client_id=made["client_id"]))
    approved = await decide(client, html)
    assert approved.status == 303, await approved.text()
    code = redirect_params(approved)["code"]
    answer = await client.post("/auth/oauth2/token", data=exchange_form(code, verifier, client_id=made["client_id"]))
    assert answer.status == 200, await answer.text()
    tokens = await answer.json()
    assert tokens["scope"] == "users:read"
    assert tokens["refresh_token"]
    me = await client.get("/api/v1/users/me", headers=auth(tokens["access_token"]))
    assert (await me.json())["username"] == "user"
    # A public client is refused client_credentials and the password grant.
    for grant in (
        {"grant_type": "client_credentials"},
        {"grant_type": "password", "username": "user", "password": "w"},
    ):
        refused = await client.post("/auth/oauth2/token", data={**grant, "client_id": made["client_id"]})
        assert refused.status in (400, 401)
        assert (await refused.json())["error"] in ("unauthorized_client", "invalid_client")


async def test_a_registered_confidential_client_gets_client_credentials_tokens(
    client: TestClient, seeded, bearer
) -> None:
    metadata = {
        "token_endpoint_auth_method": "client_secret_basic",
        "scope": "users:read",
        "grant_types": ["client_credentials"],
    }
    response, made = await register(client, await initial_token(client, bearer), **metadata)
    assert response.status == 201, made
    issued = await client.post(
        "/auth/oauth2/token",
        data={"grant_type": "client_credentials"},
        headers=basic(made["client_id"], made["client_secret"]),
    )
    assert issued.status == 200, await issued.text()
    tokens = await issued.json()
    assert tokens["scope"] == "users:read"
    assert "refresh_token" not in tokens
    me = await client.get("/api/v1/users/me", headers=auth(tokens["access_token"]))
    assert (await me.json())["username"] == "root"  # the client acts as its owner, the token's creator


# --- the operator's command ----------------------------------------------------------------------


async def test_cli_prints_a_usable_initial_access_token(
    client: TestClient, seeded, settings, backend: str, tmp_path: Path, db
) -> None:
    if backend != "secantus":
        pytest.skip("the CLI runs in another process: it needs a real server (the secantus backend)")
    env = {
        **os.environ,
        "SERVICE_DATA_DIR": str(tmp_path),
        "MONGODB_URL": settings.mongodb_url,
        "MONGODB_DB": settings.mongodb_db,
        "ARGON2_MEMORY_KIB": "64",
        "ARGON2_TIME_COST": "1",
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "service", "clients", "registration-token", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    created = await asyncio.to_thread(cli, "--max-uses", "1", "--expires-in", "600", "--owner", "user")
    assert created.returncode == 0, created.stderr
    assert len(created.stdout.splitlines()) == 1
    token = created.stdout.strip()
    refused = await asyncio.to_thread(cli, "--max-uses", "0")
    assert refused.returncode == 1
    assert "--max-uses" in refused.stderr
    response, made = await register(client, token, **PUBLIC)
    assert response.status == 201, made
    user = await db.users.find_one({"username": "user"})
    assert (await db.oauth2_clients.find_one({"_id": made["client_id"]}))["user_id"] == user["_id"]
    again, body = await register(client, token, **PUBLIC)  # its one use is spent
    assert again.status == 401
    assert body["error"] == "invalid_token"


@pytest.mark.parametrize("policy", ["open"])
async def test_registration_is_under_the_per_address_oauth2_rate_limit(
    aiohttp_client, settings, mongo_client, db
) -> None:
    limited = dataclasses.replace(settings, oauth_rate_burst=3, oauth_rate_limit=0.01)
    http: TestClient = await aiohttp_client(create_app(limited, mongo_client=mongo_client))
    statuses = [(await http.post(REGISTER, json=PUBLIC)).status for _ in range(3)]
    assert statuses == [201] * 3
    refused = await http.post(REGISTER, json=PUBLIC)
    assert refused.status == 429
    assert (await refused.json())["error"] == "slow_down"
    assert await db.oauth2_clients.count_documents({}) == 3


async def test_authlib_accepts_the_metadata_and_the_registered_client_metadata(
    client: TestClient, seeded, bearer
) -> None:
    """Shapes checked by software nobody here wrote: authlib's RFC 8414 / OpenID discovery metadata
    classes (with registration_endpoint) and its RFC 7591 client metadata claims."""
    from authlib.oauth2.rfc7591 import ClientMetadataClaims
    from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
    from authlib.oidc.discovery import OpenIDProviderMetadata

    server = await (await client.get("/.well-known/oauth-authorization-server")).json()
    AuthorizationServerMetadata(server).validate()
    discovery = await (await client.get("/.well-known/openid-configuration")).json()
    OpenIDProviderMetadata(discovery).validate()
    assert discovery["registration_endpoint"] == server["registration_endpoint"]
    metadata = {**PUBLIC, "token_endpoint_auth_method": "client_secret_post", "scope": "openid users:read"}
    response, made = await register(client, await initial_token(client, bearer), **metadata)
    assert response.status == 201
    registered = {name: value for name, value in made.items() if name in ClientMetadataClaims.REGISTERED_CLAIMS}
    ClientMetadataClaims(registered, {}).validate()
    path = made["registration_client_uri"][made["registration_client_uri"].index("/auth/") :]
    read = await (await client.get(path, headers=auth(made["registration_access_token"]))).json()
    ClientMetadataClaims({k: v for k, v in read.items() if k in ClientMetadataClaims.REGISTERED_CLAIMS}, {}).validate()
    assert {k: read[k] for k in registered} == registered
