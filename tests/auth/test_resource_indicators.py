"""Tokens bound to an audience (RFC 8707 resource indicators) and the API's protected resource metadata
(RFC 9728), named in every 401 the API answers."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient

from service.crypto import hash_secret
from tests.helpers import basic, decide, exchange_form, open_page, pkce, query, redirect_params

TOKEN = "/auth/oauth2/token"


def origin(client: TestClient) -> str:
    url = urlsplit(str(client.make_url("/")))
    return f"{url.scheme}://{url.netloc}"


def api(client: TestClient) -> str:
    return f"{origin(client)}/api/v1"


async def password_grant(client: TestClient, *resources: str):
    form = [("grant_type", "password"), ("username", "user"), ("password", "w"), ("client_id", "documentation")]
    form += [("resource", resource) for resource in resources]
    return await client.post(TOKEN, data=form)


async def test_a_token_is_for_the_api_by_default_and_introspection_says_so(client: TestClient, seeded, register_client):
    made = await register_client("root", grant_types=["client_credentials"])
    auth = basic(made["client_id"], made["client_secret"])
    issued = await client.post(TOKEN, data={"grant_type": "client_credentials"}, headers=auth)
    token = (await issued.json())["access_token"]
    answer = await (await client.post("/auth/oauth2/introspect", data={"token": token}, headers=auth)).json()
    assert answer["active"] is True
    assert answer["aud"] == [api(client)]


async def test_asking_for_the_api_by_name_gives_the_same(client: TestClient, seeded, db) -> None:
    answer = await password_grant(client, api(client), api(client))  # repeated: allowed (RFC 8707 2)
    assert answer.status == 200, await answer.text()
    token = (await answer.json())["access_token"]
    assert (await db.oauth2_tokens.find_one({"_id": hash_secret(token)}))["aud"] == [api(client)]


@pytest.mark.parametrize(
    "resources",
    [
        ["https://elsewhere.example/api"],
        ["api/v1"],  # not absolute
        ["{api}#fragment"],
        ["{api}", "https://elsewhere.example/api"],  # one good, one unknown
        [""],
        ["{api} {api}"],  # one value with a space is not two
    ],
)
async def test_unknown_or_malformed_resources_are_invalid_target(client: TestClient, seeded, db, resources) -> None:
    answer = await password_grant(client, *(value.format(api=api(client)) for value in resources))
    assert answer.status == 400
    assert (await answer.json())["error"] == "invalid_target"
    assert await db.oauth2_tokens.count_documents({}) == 0  # nothing issued


async def test_the_authorization_code_carries_its_resource(client: TestClient, seeded, db) -> None:
    verifier, challenge = pkce()
    _, html = await open_page(client, query(challenge, resource=api(client)))
    code = redirect_params(await decide(client, html))["code"]
    answer = await client.post(TOKEN, data=exchange_form(code, verifier, resource=api(client)))
    assert answer.status == 200, await answer.text()
    token = (await answer.json())["access_token"]
    assert (await db.oauth2_tokens.find_one({"_id": hash_secret(token)}))["aud"] == [api(client)]


async def test_an_unknown_resource_at_the_authorization_endpoint_redirects_with_invalid_target(
    client: TestClient, seeded
) -> None:
    _, challenge = pkce()
    response, _ = await open_page(client, query(challenge, resource="https://elsewhere.example/"))
    assert response.status == 302
    assert redirect_params(response) == {
        "error": "invalid_target",
        "error_description": "Unknown resource; this server protects " + api(client) + ".",
        "state": "xyz",
    }


async def test_a_refresh_keeps_the_audience_and_cannot_widen_it(client: TestClient, seeded, db) -> None:
    first = await (await password_grant(client)).json()
    form = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"], "client_id": "documentation"}
    wider = await client.post(TOKEN, data={**form, "resource": "https://elsewhere.example/api"})
    assert (await wider.json())["error"] == "invalid_target"
    answer = await client.post(TOKEN, data=form)  # the refused request did not burn the token
    assert answer.status == 200
    token = (await answer.json())["access_token"]
    assert (await db.oauth2_tokens.find_one({"_id": hash_secret(token)}))["aud"] == [api(client)]


async def test_the_device_request_checks_its_resource(client: TestClient, seeded, register_client) -> None:
    tv = await register_client(
        "root", client_type="public", grant_types=["urn:ietf:params:oauth:grant-type:device_code"]
    )
    answer = await client.post(
        "/auth/oauth2/device_authorization", data={"client_id": tv["client_id"], "resource": "urn:other"}
    )
    assert answer.status == 400
    assert (await answer.json())["error"] == "invalid_target"


async def test_the_api_refuses_a_token_for_another_audience(client: TestClient, seeded, db) -> None:
    token = (await (await password_grant(client)).json())["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    # (changed before its first use: a used token is in the principal cache)
    changed = {"$set": {"aud": ["https://other.example/api"]}, "$addToSet": {"scopes": "openid"}}
    await db.oauth2_tokens.update_one({"_id": hash_secret(token)}, changed)
    refused = await client.get("/api/v1/users/me", headers=headers)
    assert refused.status == 401
    challenge = refused.headers["WWW-Authenticate"]
    assert 'error="invalid_token"' in challenge
    assert f'resource_metadata="{origin(client)}/.well-known/oauth-protected-resource/api/v1"' in challenge
    # the authorization server's own UserInfo is not the API: the token still works there
    assert (await client.get("/auth/oauth2/userinfo", headers=headers)).status == 200


async def test_a_token_from_before_audiences_still_opens_the_api(client: TestClient, seeded, db) -> None:
    token = (await (await password_grant(client)).json())["access_token"]
    await db.oauth2_tokens.update_one({"_id": hash_secret(token)}, {"$unset": {"aud": ""}})
    assert (await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})).status == 200


async def test_every_401_from_the_api_names_the_resource_metadata(client: TestClient, seeded) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic eA=="}):
        refused = await client.get("/api/v1/users/me", headers=headers)
        assert refused.status == 401
        assert "resource_metadata=" in refused.headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    "path", ["/.well-known/oauth-protected-resource/api/v1", "/.well-known/oauth-protected-resource"]
)
async def test_the_protected_resource_metadata(client: TestClient, seeded, path) -> None:
    answer = await client.get(path)
    assert answer.status == 200
    document = await answer.json()
    assert document["resource"] == api(client)
    assert document["authorization_servers"] == [origin(client)]
    assert "users:read" in document["scopes_supported"]
    assert "openid" not in document["scopes_supported"]
    assert document["bearer_methods_supported"] == ["header"]
    assert "ES256" in document["dpop_signing_alg_values_supported"]
    issuer = await (await client.get("/.well-known/oauth-authorization-server")).json()
    assert issuer["issuer"] in document["authorization_servers"]


async def test_without_public_url_the_api_is_named_by_its_path(client: TestClient, seeded, db) -> None:
    """The server does not know its own names then: a token from http://localhost:8080 works through
    http://127.0.0.1:8080 (the issuer is whatever host a request used)."""
    token = (await (await password_grant(client)).json())["access_token"]
    other_name = {"$set": {"aud": ["http://localhost:8080/api/v1"]}}
    await db.oauth2_tokens.update_one({"_id": hash_secret(token)}, other_name)
    assert (await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})).status == 200


async def test_with_public_url_the_audience_must_be_exactly_the_api(aiohttp_client, settings, mongo_client) -> None:
    import dataclasses

    from service import fixtures
    from service.app import create_app
    from service.passwords import HASHER

    app = create_app(dataclasses.replace(settings, public_url="https://api.example"), mongo_client=mongo_client)
    client = await aiohttp_client(app)
    db = mongo_client[settings.mongodb_db]
    await fixtures.load(db, app[HASHER], fixtures.default_files())
    token = (await (await password_grant(client)).json())["access_token"]
    stored = await db.oauth2_tokens.find_one({"_id": hash_secret(token)})
    assert stored["aud"] == ["https://api.example/api/v1"]
    assert (await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})).status == 200
    other = (await (await password_grant(client)).json())["access_token"]  # changed before its first use
    elsewhere = {"$set": {"aud": ["https://elsewhere.example/api/v1"]}}
    await db.oauth2_tokens.update_one({"_id": hash_secret(other)}, elsewhere)
    refused = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {other}"})
    assert refused.status == 401
    assert (
        'resource_metadata="https://api.example/.well-known/oauth-protected-resource/api/v1"'
        in (refused.headers["WWW-Authenticate"])
    )
