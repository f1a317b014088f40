"""What each OAuth2 client may do (grant_types at the token endpoint, admin-only password grant and
first_party), client metadata, changes by JSON Patch with If-Match, secret rotation with an overlap,
and the migration that keeps older clients' abilities."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from marshmallow import ValidationError

from service.audit import AUDITOR
from service.auth import repository
from service.auth.openapi import LOGOUT_URI_PATTERN
from service.auth.schemas import validate_backchannel_logout_uri
from service.config import Settings
from service.crypto import hash_secret
from service.db import utcnow
from tests.helpers import PROBLEM, basic, open_page, pkce, query, redirect_params

URL = "/api/v1/auth/oauth2_clients/"
TOKEN = "/auth/oauth2/token"
OVERLAP = 1  # seconds the previous secret keeps working in these tests
PASSWORD = {"grant_type": "password", "username": "user", "password": "w"}
PATCH_JSON = {"Content-Type": "application/json-patch+json"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, client_secret_overlap=OVERLAP)


async def create(client: TestClient, headers: dict[str, str], **body: Any):
    payload = {"client_type": "confidential", "allowed_scopes": ["users:read"], **body}
    return await client.post(URL, json=payload, headers=headers)


async def created(client: TestClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await create(client, headers, **body)
    assert response.status == 201, await response.text()
    return await response.json()


async def patch(client: TestClient, client_id: str, headers: dict[str, str], ops: list[dict[str, Any]], **extra: str):
    return await client.patch(f"{URL}{client_id}", json=ops, headers={**headers, **extra})


def replace(path: str, value: Any) -> dict[str, Any]:
    return {"op": "replace", "path": path, "value": value}


async def token_error(client: TestClient, form: dict[str, str], headers: dict[str, str] | None = None) -> str:
    response = await client.post(TOKEN, data=form, headers=headers or {})
    body = await response.json()
    return str(body.get("error", response.status))


async def events(client: TestClient, headers: dict[str, str], name: str) -> list[dict[str, Any]]:
    await asyncio.gather(*client.app[AUDITOR].pending)
    response = await client.get(f"/api/v1/audit/?limit=100&event={name}", headers=headers)
    assert response.status == 200, await response.text()
    return [event for event in await response.json() if event["event"] == name]


# --- grant types at the token endpoint ------------------------------------------------------------


async def test_new_clients_get_the_default_grants_and_never_the_password_grant(client: TestClient, bearer) -> None:
    headers = await bearer("user")
    confidential = await created(client, headers)
    public = await created(client, headers, client_type="public")
    assert confidential["grant_types"] == ["authorization_code", "refresh_token", "client_credentials"]
    assert public["grant_types"] == ["authorization_code", "refresh_token"]
    secret = basic(confidential["client_id"], confidential["client_secret"])
    assert await token_error(client, PASSWORD, secret) == "unauthorized_client"
    assert await token_error(client, {**PASSWORD, "client_id": public["client_id"]}) == "unauthorized_client"
    refused = await client.post(TOKEN, data=PASSWORD, headers=secret)
    assert refused.status == 400
    assert refused.headers["Cache-Control"] == "no-store"
    allowed = await client.post(TOKEN, data={"grant_type": "client_credentials"}, headers=secret)
    assert allowed.status == 200, await allowed.text()


async def test_a_client_without_a_grant_is_refused_it_and_only_after_authenticating(client: TestClient, bearer) -> None:
    made = await created(client, await bearer("user"), grant_types=["authorization_code"])
    assert made["grant_types"] == ["authorization_code"]
    right = basic(made["client_id"], made["client_secret"])
    assert await token_error(client, {"grant_type": "client_credentials"}, right) == "unauthorized_client"
    assert await token_error(client, {"grant_type": "refresh_token", "refresh_token": "x"}, right) == (
        "unauthorized_client"
    )
    wrong = basic(made["client_id"], "not-the-secret-at-all")
    assert await token_error(client, {"grant_type": "client_credentials"}, wrong) == "invalid_client"


async def test_the_authorization_endpoint_refuses_a_client_without_the_code_grant(
    client: TestClient, seeded, bearer, db
) -> None:
    """Its code could never be exchanged: unauthorized_client at once, redirected (RFC 6749 4.1.2.1)."""
    admin = await bearer("root")
    taken = await patch(client, "documentation", admin, [replace("/grant_types", ["password", "refresh_token"])])
    assert taken.status == 200, await taken.text()
    _, challenge = pkce()
    response, _ = await open_page(client, query(challenge))
    assert response.status == 302
    assert redirect_params(response) == {
        "error": "unauthorized_client",
        "error_description": "This client is not registered for the authorization_code grant.",
        "state": "xyz",
    }
    assert await db.oauth2_codes.count_documents({}) == 0


async def test_only_admins_may_give_the_password_grant_or_first_party(client: TestClient, bearer, db) -> None:
    user = await bearer("user")
    before = await db.oauth2_clients.count_documents({})
    for body in ({"grant_types": ["password"]}, {"grant_types": ["authorization_code", "password"]}):
        refused = await create(client, user, **body)
        assert refused.status == 403
        assert refused.content_type == PROBLEM
    assert (await create(client, user, first_party=True)).status == 403
    assert await db.oauth2_clients.count_documents({}) == before
    admin_made = await created(client, await bearer("root"), grant_types=["password"], first_party=True)
    assert admin_made["first_party"] is True
    secret = basic(admin_made["client_id"], admin_made["client_secret"])
    signed_in = await client.post(TOKEN, data=PASSWORD, headers=secret)
    assert signed_in.status == 200, await signed_in.text()


async def test_public_clients_cannot_ask_for_client_credentials(client: TestClient, bearer) -> None:
    response = await create(client, await bearer("user"), client_type="public", grant_types=["client_credentials"])
    assert response.status == 422
    assert "grant_types" in (await response.json())["errors"]


async def test_unknown_or_repeated_grant_types_are_422(client: TestClient, bearer) -> None:
    headers = await bearer("user")
    for grants in (["implicit"], [], ["refresh_token", "refresh_token"], "authorization_code"):
        response = await create(client, headers, grant_types=grants)
        assert response.status == 422, grants


# --- client metadata ------------------------------------------------------------------------------


async def test_client_metadata_is_stored_validated_and_shown(client: TestClient, bearer, db) -> None:
    headers = await bearer("user")
    made = await created(
        client,
        headers,
        client_name="Reports",
        redirect_uris=["https://app.example.com/cb"],
        post_logout_redirect_uris=["https://app.example.com/bye", "com.example.app:/bye"],
        backchannel_logout_uri="https://app.example.com/logout",
        dpop_bound_access_tokens=True,
    )
    shown = await (await client.get(f"{URL}{made['client_id']}", headers=headers)).json()
    for body in (made, shown):
        assert body["client_name"] == "Reports"
        assert body["post_logout_redirect_uris"] == ["https://app.example.com/bye", "com.example.app:/bye"]
        assert body["backchannel_logout_uri"] == "https://app.example.com/logout"
        assert body["dpop_bound_access_tokens"] is True
        assert body["first_party"] is False
    stored = await db.oauth2_clients.find_one({"_id": made["client_id"]})
    assert stored["client_name"] == "Reports"
    assert stored["dpop_bound_access_tokens"] is True
    plain = await created(client, headers)
    assert (plain["client_name"], plain["post_logout_redirect_uris"], plain["backchannel_logout_uri"]) == (
        None,
        [],
        None,
    )


@pytest.mark.parametrize(
    "body",
    [
        {"post_logout_redirect_uris": ["javascript:alert(1)"]},
        {"post_logout_redirect_uris": ["https://app.example.com/bye#frag"]},
        {"post_logout_redirect_uris": ["http://evil.example/bye"]},
        {"post_logout_redirect_uris": [f"https://app.example.com/{n}" for n in range(21)]},
        {"backchannel_logout_uri": "http://app.example.com/logout"},
        {"backchannel_logout_uri": "https://app.example.com/logout#x"},
        {"backchannel_logout_uri": "com.example.app:/logout"},
        {"backchannel_logout_uri": "https://user@app.example.com/logout"},
        {"dpop_bound_access_tokens": "yes"},
        {"first_party": 1},
        {"client_name": ""},
        {"client_name": "x" * 101},
    ],
)
async def test_bad_client_metadata_is_422_and_stores_nothing(client: TestClient, bearer, db, body) -> None:
    headers = await bearer("root")  # an admin: first_party is a type error here, not a permission one
    before = await db.oauth2_clients.count_documents({})
    response = await create(client, headers, **body)
    assert response.status == 422, await response.text()
    assert set((await response.json())["errors"]) == set(body)
    assert await db.oauth2_clients.count_documents({}) == before


async def test_http_backchannel_logout_on_a_loopback_host_is_accepted(client: TestClient, bearer) -> None:
    made = await created(client, await bearer("user"), backchannel_logout_uri="http://127.0.0.1:9000/logout")
    assert made["backchannel_logout_uri"] == "http://127.0.0.1:9000/logout"


# --- PATCH ----------------------------------------------------------------------------------------


async def test_patch_changes_the_editable_fields_with_if_match(client: TestClient, bearer, db) -> None:
    headers = await bearer("user")
    made = await created(client, headers, allowed_scopes=["users:read", "teams:read"])
    current = await client.get(f"{URL}{made['client_id']}", headers=headers)
    ops = [
        replace("/client_name", "Renamed"),
        replace("/redirect_uris", ["https://new.example.com/cb"]),
        replace("/post_logout_redirect_uris", ["https://new.example.com/bye"]),
        replace("/backchannel_logout_uri", "https://new.example.com/logout"),
        replace("/default_scopes", ["teams:read"]),
        replace("/allowed_scopes", ["teams:read"]),
        replace("/grant_types", ["authorization_code"]),
        replace("/dpop_bound_access_tokens", True),
    ]
    response = await patch(client, made["client_id"], headers, ops, **{"If-Match": current.headers["ETag"]})
    assert response.status == 200, await response.text()
    body = await response.json()
    assert response.headers["ETag"] != current.headers["ETag"]
    assert body["client_name"] == "Renamed"
    assert body["redirect_uris"] == ["https://new.example.com/cb"]
    assert body["post_logout_redirect_uris"] == ["https://new.example.com/bye"]
    assert body["backchannel_logout_uri"] == "https://new.example.com/logout"
    assert (body["default_scopes"], body["allowed_scopes"]) == (["teams:read"], ["teams:read"])
    assert body["grant_types"] == ["authorization_code"]
    assert body["dpop_bound_access_tokens"] is True
    stored = await db.oauth2_clients.find_one({"_id": made["client_id"]})
    assert stored["version"] == 2
    assert stored["client_name"] == "Renamed"
    assert stored["secret_hash"] == hash_secret(made["client_secret"])  # untouched
    # The grant taken away is refused at once (the principal cache forgot the client).
    secret = basic(made["client_id"], made["client_secret"])
    assert await token_error(client, {"grant_type": "client_credentials"}, secret) == "unauthorized_client"
    recorded = await events(client, await bearer("root"), "client.updated")
    stored_event = await db.audit_events.find_one({"event": "client.updated", "client_id": made["client_id"]})
    assert stored_event["fields"] == sorted(op["path"].lstrip("/") for op in ops)
    assert recorded
    assert recorded[0]["client_id"] == made["client_id"]


async def test_a_stale_if_match_is_412_and_changes_nothing(client: TestClient, bearer, db) -> None:
    headers = await bearer("user")
    made = await created(client, headers)
    first = await patch(client, made["client_id"], headers, [replace("/client_name", "One")], **{"If-Match": '"1"'})
    assert first.status == 200
    stale = await patch(client, made["client_id"], headers, [replace("/client_name", "Two")], **{"If-Match": '"1"'})
    assert stale.status == 412
    assert stale.content_type == PROBLEM
    stored = await db.oauth2_clients.find_one({"_id": made["client_id"]})
    assert (stored["client_name"], stored["version"]) == ("One", 2)


async def test_concurrent_patches_at_one_version_one_wins_the_other_is_412(client: TestClient, bearer, db) -> None:
    headers = await bearer("user")
    made = await created(client, headers)
    responses = await asyncio.gather(
        *(
            patch(client, made["client_id"], headers, [replace("/client_name", name)], **{"If-Match": '"1"'})
            for name in ("A", "B")
        )
    )
    assert sorted(r.status for r in responses) == [200, 412]
    winner = next(r for r in responses if r.status == 200)
    stored = await db.oauth2_clients.find_one({"_id": made["client_id"]})
    assert stored["client_name"] == (await winner.json())["client_name"]
    assert stored["version"] == 2


async def test_patch_granting_password_or_first_party_needs_an_admin(client: TestClient, bearer, db) -> None:
    user = await bearer("user")
    made = await created(client, user)
    for op in (
        {"op": "add", "path": "/grant_types", "value": ["authorization_code", "password"]},
        replace("/first_party", True),
    ):
        refused = await patch(client, made["client_id"], user, [op])
        assert refused.status == 403, await refused.text()
    stored = await db.oauth2_clients.find_one({"_id": made["client_id"]})
    assert "password" not in stored["grant_types"]
    assert stored["first_party"] is False
    assert stored["version"] == 1
    secret = basic(made["client_id"], made["client_secret"])
    assert await token_error(client, PASSWORD, secret) == "unauthorized_client"
    admin = await bearer("root")
    granted = await patch(client, made["client_id"], admin, [replace("/grant_types", ["password"])])
    assert granted.status == 200, await granted.text()
    assert (await client.post(TOKEN, data=PASSWORD, headers=secret)).status == 200
    # The owner may keep what an admin granted while changing other things, and may take it away.
    kept = await patch(client, made["client_id"], user, [replace("/client_name", "Mine")])
    assert kept.status == 200
    assert (await kept.json())["grant_types"] == ["password"]
    removed = await patch(client, made["client_id"], user, [replace("/grant_types", ["authorization_code"])])
    assert removed.status == 200
    assert await token_error(client, PASSWORD, secret) == "unauthorized_client"


@pytest.mark.parametrize(
    "ops",
    [
        [replace("/redirect_uris", ["javascript:alert(1)"])],
        [replace("/post_logout_redirect_uris", ["https://a.example/x#y"])],
        [replace("/backchannel_logout_uri", "http://evil.example/logout")],
        [replace("/grant_types", [])],
        [replace("/grant_types", ["implicit"])],
        [replace("/dpop_bound_access_tokens", "true")],
        [replace("/client_type", "public")],
        [replace("/secret_hash", "0" * 64)],
        [replace("/user_id", "0" * 24)],
    ],
)
async def test_bad_patches_are_refused_and_change_nothing(client: TestClient, bearer, db, ops) -> None:
    headers = await bearer("user")
    made = await created(client, headers)
    before = await db.oauth2_clients.find_one({"_id": made["client_id"]})
    response = await patch(client, made["client_id"], headers, ops)
    assert response.status == 422, await response.text()
    assert await db.oauth2_clients.find_one({"_id": made["client_id"]}) == before


@pytest.mark.parametrize(
    ("client_type", "ops"),
    [
        ("public", [replace("/grant_types", ["client_credentials"])]),
        ("confidential", [replace("/default_scopes", ["teams:write"])]),
        ("confidential", [replace("/allowed_scopes", ["teams:read"])]),  # default_scopes has users:read
    ],
)
async def test_a_patch_that_breaks_a_rule_between_fields_is_409(
    client: TestClient, bearer, db, client_type, ops
) -> None:
    headers = await bearer("user")
    made = await created(client, headers, client_type=client_type, default_scopes=["users:read"])
    response = await patch(client, made["client_id"], headers, ops)
    assert response.status == 409, await response.text()
    assert response.content_type == PROBLEM
    assert (await db.oauth2_clients.find_one({"_id": made["client_id"]}))["version"] == 1


async def test_a_failed_test_operation_is_409_and_someone_elses_client_404(client: TestClient, bearer, db) -> None:
    headers = await bearer("user")
    made = await created(client, headers)
    failed = [{"op": "test", "path": "/client_name", "value": "Other"}, replace("/client_name", "X")]
    assert (await patch(client, made["client_id"], headers, failed)).status == 409
    theirs = await patch(client, "documentation", headers, [replace("/client_name", "Mine now")])
    assert theirs.status == 404
    assert (await db.oauth2_clients.find_one({"_id": "documentation"}))["client_name"] != "Mine now"


async def test_patch_needs_the_auth_write_scope(client: TestClient, bearer) -> None:
    made = await created(client, await bearer("user"))
    read_only = await bearer("user", "auth:read")
    response = await patch(client, made["client_id"], read_only, [replace("/client_name", "X")])
    assert response.status == 403


# --- secret rotation ------------------------------------------------------------------------------


async def test_rotation_both_secrets_work_during_the_overlap_then_only_the_new(client: TestClient, bearer, db) -> None:
    headers = await bearer("user")
    made = await created(client, headers)
    old = basic(made["client_id"], made["client_secret"])
    assert (await client.post(TOKEN, data={"grant_type": "client_credentials"}, headers=old)).status == 200
    response = await client.post(f"{URL}{made['client_id']}/secret", headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert body["client_id"] == made["client_id"]
    assert body["client_secret"] != made["client_secret"]
    new = basic(made["client_id"], body["client_secret"])
    stored = await db.oauth2_clients.find_one({"_id": made["client_id"]})
    assert stored["secret_hash"] == hash_secret(body["client_secret"])
    assert stored["previous_secret_hash"] == hash_secret(made["client_secret"])
    assert made["client_secret"] not in str(stored)
    assert body["client_secret"] not in str(stored)
    for secret in (old, new):
        assert (await client.post(TOKEN, data={"grant_type": "client_credentials"}, headers=secret)).status == 200
    await asyncio.sleep(OVERLAP + 0.5)
    assert await token_error(client, {"grant_type": "client_credentials"}, old) == "invalid_client"
    assert (await client.post(TOKEN, data={"grant_type": "client_credentials"}, headers=new)).status == 200
    # Shown once: reading the client never shows it.
    shown = await (await client.get(f"{URL}{made['client_id']}", headers=headers)).text()
    assert body["client_secret"] not in shown
    assert "secret_hash" not in shown
    recorded = await events(client, await bearer("root"), "client.secret_rotated")
    assert [event["client_id"] for event in recorded] == [made["client_id"]]
    assert body["client_secret"] not in orjson.dumps(recorded).decode()


async def test_a_second_rotation_retires_the_oldest_secret(client: TestClient, bearer) -> None:
    headers = await bearer("user")
    made = await created(client, headers, token_endpoint_auth_method="client_secret_post")
    url = f"{URL}{made['client_id']}/secret"
    second = (await (await client.post(url, headers=headers)).json())["client_secret"]
    third = (await (await client.post(url, headers=headers)).json())["client_secret"]

    async def works(secret: str) -> bool:
        form = {"grant_type": "client_credentials", "client_id": made["client_id"], "client_secret": secret}
        return (await client.post(TOKEN, data=form)).status == 200

    assert [await works(s) for s in (made["client_secret"], second, third)] == [False, True, True]


async def test_rotation_rules(client: TestClient, bearer, db) -> None:
    user = await bearer("user")
    public = await created(client, user, client_type="public")
    refused = await client.post(f"{URL}{public['client_id']}/secret", headers=user)
    assert refused.status == 409
    assert refused.content_type == PROBLEM
    assert (await db.oauth2_clients.find_one({"_id": public["client_id"]}))["secret_hash"] is None
    assert (await client.post(f"{URL}documentation/secret", headers=user)).status == 404
    assert (await client.post(f"{URL}nope/secret", headers=user)).status == 404
    mine = await created(client, user)
    read_only = await bearer("user", "auth:read")
    assert (await client.post(f"{URL}{mine['client_id']}/secret", headers=read_only)).status == 403
    by_admin = await client.post(f"{URL}{mine['client_id']}/secret", headers=await bearer("root"))
    assert by_admin.status == 200
    assert (await db.oauth2_clients.find_one({"_id": mine["client_id"]}))["version"] == 2


# --- the migration --------------------------------------------------------------------------------


def _old_style(client_id: str, client_type: str, owner: Any, secret: str | None) -> dict[str, Any]:
    """A client document as it was stored before clients had grant types and metadata."""
    now = utcnow()
    return {
        "_id": client_id,
        "client_type": client_type,
        "token_endpoint_auth_method": None,
        "secret_hash": hash_secret(secret) if secret else None,
        "redirect_uris": [],
        "default_scopes": ["users:read"],
        "allowed_scopes": ["users:read"],
        "user_id": owner,
        "created": now,
        "updated": now,
        "version": 3,
    }


async def test_the_migration_keeps_what_older_clients_could_do(client: TestClient, seeded, bearer, db) -> None:
    owner = (await db.users.find_one({"username": "user"}))["_id"]
    secret = "an old confidential secret"
    await db.oauth2_clients.insert_one(_old_style("old-confidential", "confidential", owner, secret))
    await db.oauth2_clients.insert_one(_old_style("old-public", "public", owner, None))
    await repository.clients_keep_their_grants(db)
    confidential = await db.oauth2_clients.find_one({"_id": "old-confidential"})
    public = await db.oauth2_clients.find_one({"_id": "old-public"})
    assert confidential["grant_types"] == ["authorization_code", "refresh_token", "client_credentials", "password"]
    assert public["grant_types"] == ["authorization_code", "refresh_token", "password"]
    assert (confidential["version"], public["version"]) == (4, 4)
    old = basic("old-confidential", secret)
    for form in (PASSWORD, {"grant_type": "client_credentials"}):
        response = await client.post(TOKEN, data=form, headers=old)
        assert response.status == 200, await response.text()
    assert (await client.post(TOKEN, data={**PASSWORD, "client_id": "old-public"})).status == 200
    # Run again, it changes nothing; clients that already have grant types are left alone.
    await repository.clients_keep_their_grants(db)
    assert (await db.oauth2_clients.find_one({"_id": "old-public"}))["version"] == 4
    documentation = await db.oauth2_clients.find_one({"_id": "documentation"})
    assert documentation["grant_types"] == ["authorization_code", "refresh_token", "password"]
    # Old documents are shown with the new metadata's defaults.
    shown = await (await client.get(f"{URL}old-public", headers=await bearer("user"))).json()
    assert (shown["client_name"], shown["post_logout_redirect_uris"], shown["first_party"]) == (None, [], False)
    assert (await patch(client, "old-public", await bearer("user"), [replace("/client_name", "Old")])).status == 200


# --- the OpenAPI document -------------------------------------------------------------------------


async def test_openapi_documents_the_new_operations(client: TestClient) -> None:
    document = orjson.loads(await (await client.get("/api/v1/openapi.json")).read())
    patched = document["paths"]["/auth/oauth2_clients/{client_id}"]["patch"]
    rotated = document["paths"]["/auth/oauth2_clients/{client_id}/secret"]["post"]
    assert patched["security"] == [{"oauth2": ["auth:write"]}] == rotated["security"]
    assert {"400", "401", "403", "404", "409", "412", "422"} <= set(patched["responses"])
    assert {"401", "403", "404", "409"} <= set(rotated["responses"])
    assert any(p["name"] == "If-Match" for p in patched["parameters"])
    created_schema = document["components"]["schemas"]["CreateOAuth2Client"]["properties"]
    assert {"grant_types", "client_name", "post_logout_redirect_uris", "first_party"} <= set(created_schema)
    assert "password" in created_schema["grant_types"]["items"]["enum"]


@pytest.mark.parametrize(
    ("uri", "valid"),
    [
        ("https://app.example.com/logout", True),
        ("https://app.example.com:8443/a/b?x=1", True),
        ("http://127.0.0.1:9000/logout", True),
        ("http://[::1]/logout", True),
        ("http://localhost.evil.example/logout", False),
        ("http://app.example.com/logout", False),
        ("com.example.app:/logout", False),
        ("https://app.example.com/logout#x", False),
        ("https://user@app.example.com/", False),
        ("0", False),
    ],
)
def test_the_documented_logout_uri_pattern_agrees_with_the_validator(uri: str, valid: bool) -> None:
    assert (re.fullmatch(LOGOUT_URI_PATTERN, uri) is not None) is valid
    try:
        validate_backchannel_logout_uri(uri)
    except ValidationError:
        assert not valid
    else:
        assert valid
