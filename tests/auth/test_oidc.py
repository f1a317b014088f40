"""OpenID Connect: discovery, JWKS, ID tokens, UserInfo and key rotation, proven with authlib's own client."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken, IDToken
from authlib.oidc.discovery import OpenIDProviderMetadata

from service.auth import signing
from service.auth.jose import JsonWebKey, jwt
from service.auth.signing import KEYRING
from service.db import utcnow
from tests.helpers import REDIRECT, decide, open_page, pkce, query, redirect_params

ROOT = Path(__file__).resolve().parents[2]


def verify(id_token: str, jwks: dict[str, Any], **params: Any) -> Any:
    """Check an ID token the way a relying party does, with authlib: signature, iss, aud, exp, nonce, at_hash."""
    options = {"iss": {"essential": True, "value": params.pop("issuer")}}
    claims = jwt.decode(
        id_token,
        JsonWebKey.import_key_set(jwks),
        claims_cls=params.pop("claims_cls", CodeIDToken),
        claims_options=options,
        claims_params=params,
    )
    claims.validate()
    return claims


async def test_discovery_is_valid_for_authlib_and_keys_are_public_only(client: TestClient, seeded) -> None:
    document = await (await client.get("/.well-known/openid-configuration")).json()
    OpenIDProviderMetadata(document).validate()
    issuer = str(client.make_url("")).rstrip("/")
    assert document["issuer"] == issuer
    assert {"openid", "profile", "email"} <= set(document["scopes_supported"])
    assert document["response_types_supported"] == ["code"]
    assert document["subject_types_supported"] == ["public"]
    assert "RS256" in document["id_token_signing_alg_values_supported"]
    assert document["code_challenge_methods_supported"] == ["S256"]
    jwks = await (await client.get(urlsplit(document["jwks_uri"]).path)).json()
    assert jwks["keys"]
    for key in jwks["keys"]:
        assert {"kid", "use", "alg", "n", "e"} <= set(key)
        assert key["use"] == "sig"
        assert key["alg"] == "RS256"
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key), "private key material published"
    assert (await client.get(urlsplit(document["userinfo_endpoint"]).path)).status == 401


async def test_authlib_client_signs_in_with_code_pkce_and_nonce(live_server: str) -> None:
    async with httpx.AsyncClient() as http:
        metadata = (await http.get(f"{live_server}/.well-known/openid-configuration")).json()
        jwks = (await http.get(metadata["jwks_uri"])).json()
    verifier = os.urandom(32).hex()
    nonce = os.urandom(8).hex()
    async with AsyncOAuth2Client(
        client_id="documentation",
        redirect_uri=f"{live_server}/cb",
        scope="openid profile email",
        code_challenge_method="S256",
        token_endpoint_auth_method="none",
    ) as oauth:
        url, state = oauth.create_authorization_url(
            metadata["authorization_endpoint"], code_verifier=verifier, nonce=nonce
        )
        page = await oauth.request("GET", url, withhold_token=True)  # our sign-in page, with its CSRF cookie
        assert page.status_code == 200
        form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page.text))
        assert form["nonce"] == nonce
        signed_in = await oauth.request(
            "POST",
            metadata["authorization_endpoint"],
            data={**form, "action": "approve", "username": "user", "password": "w"},
            withhold_token=True,
        )
        assert signed_in.status_code == 303
        location = signed_in.headers["Location"]
        assert parse_qs(urlsplit(location).query)["state"] == [state]
        token = await oauth.fetch_token(
            metadata["token_endpoint"], authorization_response=location, code_verifier=verifier
        )
        claims = verify(
            token["id_token"],
            jwks,
            issuer=metadata["issuer"],
            client_id="documentation",
            nonce=nonce,
            access_token=token["access_token"],
        )
        assert claims["preferred_username"] == "user"
        assert claims["email"] == "user@example.com" or "@" in claims["email"]
        assert abs(claims["auth_time"] - claims["iat"]) < 120
        header_kid = jwt.decode(token["id_token"], JsonWebKey.import_key_set(jwks)).header["kid"]
        assert header_kid in {key["kid"] for key in jwks["keys"]}
        info = (await oauth.get(metadata["userinfo_endpoint"])).json()
        assert info["sub"] == claims["sub"]
        assert info["preferred_username"] == "user"
        posted = await oauth.post(metadata["userinfo_endpoint"])
        assert posted.json()["sub"] == claims["sub"]

        refreshed = await oauth.refresh_token(metadata["token_endpoint"])
        again = verify(
            refreshed["id_token"],
            jwks,
            issuer=metadata["issuer"],
            client_id="documentation",
            access_token=refreshed["access_token"],
            claims_cls=IDToken,
        )
        assert again["sub"] == claims["sub"]
        assert "nonce" not in again
        assert again["auth_time"] == claims["auth_time"]  # the user did not sign in again


async def test_scopes_decide_the_claims_and_userinfo_needs_openid(client: TestClient, login) -> None:
    token = await login("user", "w", "openid")
    assert "id_token" in token  # the password grant with openid returns one too
    info = await (
        await client.get("/auth/oauth2/userinfo", headers={"Authorization": f"Bearer {token['access_token']}"})
    ).json()
    assert set(info) == {"sub"}
    plain = await login("user", "w", "users:read")
    assert "id_token" not in plain
    refused = await client.get("/auth/oauth2/userinfo", headers={"Authorization": f"Bearer {plain['access_token']}"})
    assert refused.status == 403
    assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]
    bad = await client.get("/auth/oauth2/userinfo", headers={"Authorization": "Bearer nope"})
    assert bad.status == 401
    assert bad.headers["WWW-Authenticate"].startswith("Bearer")


async def test_empty_names_are_left_out_of_the_claims(client: TestClient, login) -> None:
    """OpenID Connect Core 5.3.2: a claim with no value is omitted, never an empty string (the fixture
    user has no middle name), in UserInfo and the ID token alike."""
    token = await login("user", "w", "openid profile")
    info = await (
        await client.get("/auth/oauth2/userinfo", headers={"Authorization": f"Bearer {token['access_token']}"})
    ).json()
    assert info["given_name"] == "Regular"
    assert info["family_name"] == "User"
    assert info["name"] == "Regular User"
    assert "middle_name" not in info
    assert "" not in info.values()
    id_claims = jwt.decode(
        token["id_token"], JsonWebKey.import_key_set(await (await client.get("/auth/oauth2/jwks")).json())
    )
    assert "middle_name" not in id_claims
    assert id_claims["given_name"] == "Regular"


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"prompt": "none"}, "login_required"),
        ({"prompt": "sometimes"}, "invalid_request"),
        ({"request": "eyJhbGciOiJub25lIn0.e30."}, "request_not_supported"),
        ({"request_uri": "https://app.example/request.jwt"}, "request_uri_not_supported"),
    ],
)
async def test_prompt_none_and_request_objects_are_refused(client: TestClient, seeded, extra, error) -> None:
    _, challenge = pkce()
    response, _ = await open_page(client, query(challenge, scope="openid", **extra))
    assert response.status == 302
    params = redirect_params(response)
    assert params["error"] == error
    assert params["state"] == "xyz"


async def test_rotation_keeps_old_tokens_verifiable_and_signs_new_ones_with_the_new_key(
    client: TestClient, app: web.Application, login, db
) -> None:
    issuer = str(client.make_url("")).rstrip("/")
    old = await login("user", "w", "openid")
    old_kid = jwt.decode(
        old["id_token"], JsonWebKey.import_key_set(await (await client.get("/auth/oauth2/jwks")).json())
    ).header["kid"]
    new_kid = await signing.add_key(db)
    jwks = await (await client.get("/auth/oauth2/jwks")).json()
    app[KEYRING]._loaded = 0  # the reload that happens every RELOAD_SECONDS
    jwks = await (await client.get("/auth/oauth2/jwks")).json()
    assert {old_kid, new_kid} <= {key["kid"] for key in jwks["keys"]}  # published before it signs
    still_old = await login("user", "w", "openid")
    assert jwt.decode(still_old["id_token"], JsonWebKey.import_key_set(jwks)).header["kid"] == old_kid
    await db.signing_keys.update_one({"_id": new_kid}, {"$set": {"signs_from": utcnow()}})  # the minute passed
    app[KEYRING]._loaded = 0
    fresh = await login("user", "w", "openid")
    jwks = await (await client.get("/auth/oauth2/jwks")).json()
    assert jwt.decode(fresh["id_token"], JsonWebKey.import_key_set(jwks)).header["kid"] == new_kid
    verify(
        old["id_token"],
        jwks,
        issuer=issuer,
        client_id="documentation",
        access_token=old["access_token"],
        claims_cls=IDToken,
    )
    assert await signing.drop_expired_keys(db, timedelta(hours=1)) == []  # old tokens may still be live
    assert await signing.drop_expired_keys(db, timedelta(seconds=-1)) == [old_kid]
    assert [key["_id"] for key in await db.signing_keys.find({}).to_list(None)] == [new_kid]


async def test_keys_rotate_command(backend: str, settings, seeded, db) -> None:
    if backend != "secantus":
        pytest.skip("the command runs in its own process: it needs the real server (--backend=secantus)")
    env = {**os.environ, "MONGODB_URL": str(settings.mongodb_url), "MONGODB_DB": settings.mongodb_db}
    before = await db.signing_keys.count_documents({})
    done = subprocess.run(
        [sys.executable, "-m", "service", "keys", "rotate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "added signing key" in done.stdout
    assert "PRIVATE" not in done.stdout + done.stderr
    assert await db.signing_keys.count_documents({}) == before + 1


def test_s256_helper_agrees_with_ours() -> None:
    verifier, challenge = pkce()
    assert create_s256_code_challenge(verifier) == challenge
    assert REDIRECT.startswith("http://127.0.0.1")
    assert decide is not None


async def test_browser_apps_may_call_the_oidc_endpoints_cross_origin_but_not_the_api(
    client: TestClient, bearer
) -> None:
    origin = {"Origin": "https://spa.example"}
    preflight = await client.options(
        "/auth/oauth2/token",
        headers={**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"},
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Access-Control-Allow-Credentials" not in preflight.headers  # no cookies, ever
    discovery = await client.get("/.well-known/openid-configuration", headers=origin)
    assert discovery.headers["Access-Control-Allow-Origin"] == "*"
    refused = await client.get("/auth/oauth2/userinfo", headers=origin)
    assert refused.status == 401
    assert refused.headers["Access-Control-Allow-Origin"] == "*"  # the app can read why
    # ... and a token answer's rate-limit state, so it can pace itself before a 429
    token = await client.post("/auth/oauth2/token", data={"grant_type": "password"}, headers=origin)
    assert "RateLimit" in token.headers
    exposed = {name.strip() for name in token.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"WWW-Authenticate", "Retry-After", "DPoP-Nonce", "RateLimit", "RateLimit-Policy"} <= exposed
    api = await client.get("/api/v1/users/me", headers={**origin, **await bearer("user")})
    assert "Access-Control-Allow-Origin" not in api.headers
