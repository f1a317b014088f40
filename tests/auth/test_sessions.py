"""Sign-in sessions at the authorization server: the cookie, single sign-on, prompt / max_age /
id_token_hint, consent for clients that are not first-party, what ends a session, and the sessions API."""

from __future__ import annotations

import dataclasses
import time
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp.test_utils import TestClient, TestServer

from service import fixtures
from service.app import SERVE_OPTIONS, create_app
from service.crypto import hash_secret
from service.db import utcnow
from service.passwords import HASHER
from tests.helpers import (
    AUTHORIZE,
    REDIRECT,
    decide,
    exchange_form,
    form_of,
    jwt_claims,
    open_page,
    pkce,
    query,
    redirect_params,
    with_current_password,
)

COOKIE = "session"  # http issuer: no __Host- prefix


def plant(client: TestClient, name: str, value: str) -> None:
    """A cookie in the test's browser, for this server's host (as the server would have set it)."""
    client.session.cookie_jar.update_cookies({name: value}, client.make_url("/"))


def session_cookie(client: TestClient) -> str:
    (found,) = [cookie.value for cookie in client.session.cookie_jar if cookie.key == COOKIE]
    return found


async def sign_in(client: TestClient, username: str = "user", password: str = "w", **extra: str):
    """A fresh sign-in on the page (no session yet in this browser): the redirect and its code."""
    _, challenge = pkce()
    response, html = await open_page(client, query(challenge, **extra))
    assert response.status == 200, html
    return await decide(client, html, username=username, password=password)


async def authorize(client: TestClient, **extra: str):
    verifier, challenge = pkce()
    response, html = await open_page(client, query(challenge, **extra))
    return verifier, response, html


async def tokens(client: TestClient, response, verifier: str) -> dict:
    code = redirect_params(response)["code"]
    answer = await client.post("/auth/oauth2/token", data=exchange_form(code, verifier))
    assert answer.status == 200, await answer.text()
    return await answer.json()


# --- the cookie and the stored record -----------------------------------------------------------


async def test_signing_in_starts_a_hashed_session_behind_a_lax_http_only_cookie(client: TestClient, seeded, db):
    response = await sign_in(client)
    assert response.status == 303
    header = next(value for value in response.headers.getall("Set-Cookie") if value.startswith(f"{COOKIE}="))
    assert "HttpOnly" in header
    assert "SameSite=Lax" in header
    assert "Path=/" in header
    assert "Secure" not in header  # the test issuer is http
    value = session_cookie(client)
    stored = await db.sessions.find_one({})
    assert stored["_id"] == hash_secret(value)
    assert value not in str(stored)
    assert stored["amr"] == ["pwd"]
    assert stored["clients"] == ["documentation"]
    assert stored["expires_at"] - stored["created"] == timedelta(seconds=2592000)
    assert stored["idle_expires_at"] - stored["created"] == timedelta(seconds=28800)


async def test_an_https_issuer_gets_a_secure_host_prefixed_cookie(aiohttp_client, settings, mongo_client, app):
    secure = create_app(dataclasses.replace(settings, public_url="https://id.example"), mongo_client=mongo_client)
    server = TestServer(secure)
    await server.start_server(**SERVE_OPTIONS)
    client = await aiohttp_client(server)
    await fixtures.load(mongo_client[settings.mongodb_db], secure[HASHER], fixtures.default_files())
    response = await sign_in(client)
    header = next(value for value in response.headers.getall("Set-Cookie") if "session=" in value)
    assert header.startswith("__Host-session=")
    assert "Secure" in header
    assert "Path=/" in header
    assert "Domain" not in header


async def test_every_sign_in_gets_a_new_session_id(client: TestClient, seeded, db):
    """Session fixation: a value planted in the browser before the sign-in is never the session."""
    planted = "A" * 43
    plant(client, COOKIE, planted)
    await sign_in(client)
    first = session_cookie(client)
    assert first != planted
    _, response, _ = await authorize(client, prompt="login")
    again = await decide(client, await response.text())
    second = session_cookie(client)
    assert again.status == 303
    assert second != first
    assert await db.sessions.count_documents({}) == 1  # the old record went with its value
    assert await db.sessions.find_one({"_id": hash_secret(first)}) is None


# --- single sign-on and the OpenID Connect parameters -----------------------------------------


async def test_a_live_session_gives_a_code_without_the_form(client: TestClient, seeded):
    await sign_in(client, scope="openid")
    verifier, response, _ = await authorize(client, scope="openid", nonce="n-2")
    assert response.status == 302  # single sign-on: straight back
    claims = jwt_claims((await tokens(client, response, verifier))["id_token"])
    assert claims["nonce"] == "n-2"
    assert claims["amr"] == ["pwd"]
    assert claims["acr"] == "1"
    assert abs(claims["auth_time"] - time.time()) < 60
    assert claims["sid"]


async def test_the_id_token_sid_names_the_session_in_the_sessions_api(client: TestClient, seeded, bearer):
    await sign_in(client, scope="openid")
    verifier, response, _ = await authorize(client, scope="openid auth:read")
    answer = await tokens(client, response, verifier)
    listed = await client.get(
        "/api/v1/users/me/sessions", headers={"Authorization": f"Bearer {answer['access_token']}"}
    )
    assert listed.status == 200
    (session,) = await listed.json()
    assert session["id"] == jwt_claims(answer["id_token"])["sid"]
    assert session["current"] is True
    assert session["clients"] == ["documentation"]
    assert set(session) == {"id", "created", "last_seen", "user_agent", "address", "current", "clients"}


async def test_prompt_none_gives_a_code_with_a_session_and_login_required_without(client: TestClient, seeded):
    _, response, _ = await authorize(client, prompt="none")
    assert redirect_params(response)["error"] == "login_required"
    await sign_in(client)
    _, response, _ = await authorize(client, prompt="none")
    assert response.status == 302
    assert "code" in redirect_params(response)


@pytest.mark.parametrize("prompt", ["login", "select_account"])
async def test_prompt_login_asks_for_the_password_again(client: TestClient, seeded, prompt):
    await sign_in(client)
    _, response, html = await authorize(client, prompt=prompt)
    assert response.status == 200
    assert 'name="password"' in html


async def test_max_age_older_than_the_sign_in_asks_again(client: TestClient, seeded, db):
    await sign_in(client)
    _, response, _ = await authorize(client, max_age="3600")
    assert response.status == 302
    await db.sessions.update_many({}, {"$inc": {"auth_time": -10}})  # signed in ten seconds ago
    _, response, html = await authorize(client, max_age="5")
    assert response.status == 200
    assert 'name="password"' in html
    _, response, _ = await authorize(client, max_age="5", prompt="none")
    assert redirect_params(response)["error"] == "login_required"


async def test_an_id_token_hint_for_another_user_is_login_required_or_a_fresh_sign_in(client: TestClient, seeded):
    await sign_in(client, username="root", password="q", scope="openid")
    verifier, response, _ = await authorize(client, scope="openid")
    roots_token = (await tokens(client, response, verifier))["id_token"]
    client.session.cookie_jar.clear()
    await sign_in(client, scope="openid")  # now "user" is signed in in this browser
    _, response, _ = await authorize(client, scope="openid", prompt="none", id_token_hint=roots_token)
    assert redirect_params(response)["error"] == "login_required"
    _, response, html = await authorize(client, scope="openid", id_token_hint=roots_token)
    assert response.status == 200
    assert 'name="password"' in html
    verifier, response, _ = await authorize(client, scope="openid")
    users_token = (await tokens(client, response, verifier))["id_token"]
    _, response, _ = await authorize(client, scope="openid", prompt="none", id_token_hint=users_token)
    assert "code" in redirect_params(response)


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"prompt": "none login"}, "invalid_request"),
        ({"prompt": "none consent"}, "invalid_request"),
        ({"max_age": "-1"}, "invalid_request"),
        ({"max_age": "soon"}, "invalid_request"),
        ({"id_token_hint": "not.a.token"}, "invalid_request"),
        ({"id_token_hint": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4IiwiaXNzIjoieCJ9."}, "invalid_request"),
    ],
)
async def test_forbidden_prompt_and_hint_values_are_invalid_request(client: TestClient, seeded, extra, error):
    await sign_in(client)
    _, response, _ = await authorize(client, **extra)
    assert response.status == 302
    assert redirect_params(response)["error"] == error


async def test_every_authorization_response_names_the_issuer(client: TestClient, seeded):
    """RFC 9207: success and error redirects alike (redirect_params checks `iss` against the server)."""
    _, response, _ = await authorize(client, prompt="none")
    location = response.headers["Location"]
    assert parse_qs(urlsplit(location).query)["iss"] == [f"http://{urlsplit(str(response.url)).netloc}"]
    metadata = await (await client.get("/.well-known/openid-configuration")).json()
    assert metadata["authorization_response_iss_parameter_supported"] is True
    assert metadata["end_session_endpoint"].endswith("/auth/oauth2/logout")
    assert metadata["backchannel_logout_supported"] is metadata["backchannel_logout_session_supported"] is True


# --- consent for clients that are not first-party ----------------------------------------------


async def third_party_client(client: TestClient, bearer) -> str:
    created = await client.post(
        "/api/v1/auth/oauth2_clients/",
        json={
            "client_type": "public",
            "client_name": "Photo Printer",
            "redirect_uris": [REDIRECT],
            "default_scopes": ["users:read"],
            "allowed_scopes": ["users:read", "teams:read", "openid"],
        },
        headers=await bearer("root"),
    )
    assert created.status == 201, await created.text()
    return (await created.json())["client_id"]


async def test_a_signed_in_user_is_asked_once_per_scope_by_a_third_party_client(client: TestClient, seeded, bearer):
    other = await third_party_client(client, bearer)
    await sign_in(client)  # at the first-party client: no consent screen
    _, response, _ = await authorize(client, client_id=other, prompt="none")
    assert redirect_params(response)["error"] == "consent_required"
    _, response, html = await authorize(client, client_id=other)
    assert response.status == 200
    assert "Photo Printer" in html
    assert "users:read" in html
    assert 'name="password"' not in html
    allowed = await client.post(AUTHORIZE, data={**form_of(html), "action": "approve"}, allow_redirects=False)
    assert allowed.status == 303
    assert "code" in redirect_params(allowed)
    _, response, _ = await authorize(client, client_id=other, prompt="none")  # remembered
    assert response.status == 302
    assert "code" in redirect_params(response)
    _, response, html = await authorize(client, client_id=other, scope="users:read teams:read")
    assert response.status == 200
    assert "teams:read" in html
    _, response, html = await authorize(client, client_id=other, prompt="consent")
    assert response.status == 200
    assert "Photo Printer" in html


async def test_denying_consent_redirects_with_access_denied(client: TestClient, seeded, bearer):
    other = await third_party_client(client, bearer)
    await sign_in(client)
    _, response, html = await authorize(client, client_id=other)
    denied = await client.post(AUTHORIZE, data={**form_of(html), "action": "deny"}, allow_redirects=False)
    assert denied.status == 303
    assert redirect_params(denied) == {"error": "access_denied", "state": "xyz"}
    _, response, _ = await authorize(client, client_id=other, prompt="none")
    assert redirect_params(response)["error"] == "consent_required"


async def test_the_consent_form_without_a_session_asks_to_sign_in(client: TestClient, seeded, bearer):
    other = await third_party_client(client, bearer)
    await sign_in(client)
    _, _, html = await authorize(client, client_id=other)
    client.session.cookie_jar.clear()
    plant(client, "oauth_csrf", form_of(html)["csrf_token"])
    refused = await client.post(AUTHORIZE, data={**form_of(html), "action": "approve"}, allow_redirects=False)
    assert refused.status == 400
    assert 'name="password"' in await refused.text()


# --- cookies that are not a session -----------------------------------------------------------


@pytest.mark.parametrize("value", ["forged", "A" * 43, "A" * 5000, "é"])
async def test_a_forged_cookie_is_no_session(client: TestClient, seeded, value):
    plant(client, COOKIE, value)
    _, response, html = await authorize(client)
    assert response.status == 200
    assert 'name="password"' in html


async def test_an_expired_session_is_no_session(client: TestClient, seeded, db):
    await sign_in(client)
    await db.sessions.update_many({}, {"$set": {"idle_expires_at": utcnow() - timedelta(seconds=1)}})
    _, response, _ = await authorize(client, prompt="none")
    assert redirect_params(response)["error"] == "login_required"


@pytest.mark.parametrize("change", ["password", "deactivation"])
async def test_a_password_change_or_a_deactivation_ends_every_session(client: TestClient, seeded, bearer, db, change):
    await sign_in(client)
    me = await (await client.get("/api/v1/users/me", headers=await bearer("user"))).json()
    if change == "password":
        operations = with_current_password({"op": "replace", "path": "/password", "value": "a whole new one"})
        headers = await bearer("user")
    else:
        operations = [{"op": "replace", "path": "/is_active", "value": False}]
        headers = await bearer("root")
    changed = await client.patch(f"/api/v1/users/{me['id']}", json=operations, headers=headers)
    assert changed.status == 200, await changed.text()
    assert await db.sessions.count_documents({}) == 0  # ended, not merely ignored
    _, response, _ = await authorize(client, prompt="none")
    assert redirect_params(response)["error"] == "login_required"


async def test_a_session_record_without_a_live_user_generation_is_refused(client: TestClient, seeded, db):
    await sign_in(client)
    await db.users.update_one({"username": "user"}, {"$inc": {"token_generation": 1}})  # without the hook
    _, response, _ = await authorize(client, prompt="none")
    assert redirect_params(response)["error"] == "login_required"


# --- the sessions API -------------------------------------------------------------------------


async def test_a_user_lists_and_ends_their_own_sessions_only(client: TestClient, seeded, bearer, db):
    await sign_in(client)
    headers = await bearer("user")
    (listed,) = await (await client.get("/api/v1/users/me/sessions", headers=headers)).json()
    roots = await client.delete(f"/api/v1/users/me/sessions/{listed['id']}", headers=await bearer("root"))
    assert roots.status == 404
    assert (await client.delete("/api/v1/users/me/sessions/nope", headers=headers)).status == 404
    ended = await client.delete(f"/api/v1/users/me/sessions/{listed['id']}", headers=headers)
    assert ended.status == 204
    assert await (await client.get("/api/v1/users/me/sessions", headers=headers)).json() == []
    _, response, _ = await authorize(client, prompt="none")
    assert redirect_params(response)["error"] == "login_required"


async def test_the_sessions_api_needs_its_scopes(client: TestClient, seeded, bearer):
    assert (await client.get("/api/v1/users/me/sessions")).status == 401
    narrow = await bearer("user", scope="users:read")
    assert (await client.get("/api/v1/users/me/sessions", headers=narrow)).status == 403
    reader = await bearer("user", scope="auth:read")
    assert (await client.delete("/api/v1/users/me/sessions/x", headers=reader)).status == 403


# --- UserInfo ----------------------------------------------------------------------------------


async def test_userinfo_takes_the_token_in_a_form_body(client: TestClient, seeded, login):
    token = (await login("user", "w", "openid email"))["access_token"]
    answer = await client.post("/auth/oauth2/userinfo", data={"access_token": token})
    assert answer.status == 200
    claims = await answer.json()
    assert claims["email_verified"] is False
    assert "email" in claims
    both = await client.post(
        "/auth/oauth2/userinfo", data={"access_token": token}, headers={"Authorization": f"Bearer {token}"}
    )
    assert both.status == 400
    wrong = await client.post("/auth/oauth2/userinfo", data={"access_token": "nope"})
    assert wrong.status == 401
