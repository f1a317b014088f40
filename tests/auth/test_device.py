"""The device authorization grant (RFC 8628) through HTTP: the endpoint, the /auth/device page, the
polling rules, user-code guessing, and a client library nobody here wrote (authlib) doing the flow."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient

from service.auth.device import COLLECTION, GRANT_TYPE
from service.crypto import hash_secret
from service.db import utcnow
from tests.helpers import device_decision, enroll_totp, hidden_field, steady_step, totp_code

DEVICE_AUTHORIZATION = "/auth/oauth2/device_authorization"
TOKEN = "/auth/oauth2/token"


@pytest.fixture
def device_client(register_client):
    async def create() -> dict[str, Any]:
        return await register_client(
            "user",
            client_type="public",
            client_name="Living Room TV",
            grant_types=[GRANT_TYPE, "refresh_token"],
            allowed_scopes=["users:read", "openid", "profile"],
        )

    return create


async def start(client: TestClient, client_id: str, scope: str = "users:read openid") -> dict[str, Any]:
    response = await client.post(DEVICE_AUTHORIZATION, data={"client_id": client_id, "scope": scope})
    assert response.status == 200, await response.text()
    assert response.headers["Cache-Control"] == "no-store"
    return await response.json()


async def poll(client: TestClient, client_id: str, device_code: str):
    form = {"grant_type": GRANT_TYPE, "device_code": device_code, "client_id": client_id}
    response = await client.post(TOKEN, data=form)
    return response.status, await response.json()


async def enter_code(client: TestClient, user_code: str):
    """Open the page and submit the code: the response (the consent page when the code is right)."""
    page = await client.get("/auth/device")
    csrf = hidden_field(await page.text(), "csrf_token")
    return await client.post("/auth/device", data={"csrf_token": csrf, "user_code": user_code})


async def decide(client: TestClient, user_code: str, action: str = "approve", password: str = "w"):
    consent = await enter_code(client, user_code)
    assert consent.status == 200, await consent.text()
    html = await consent.text()
    return await client.post("/auth/device", data=device_decision(html, action, username="user", password=password))


async def allow_poll_now(db, device_code: str) -> None:
    await db[COLLECTION].update_one({"_id": hash_secret(device_code)}, {"$set": {"next_poll": utcnow()}})


async def test_whole_flow_gives_tokens_that_work_once(client: TestClient, device_client, db) -> None:
    tv = await device_client()
    started = await start(client, tv["client_id"])
    assert re.fullmatch(r"[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}", started["user_code"])
    assert started["verification_uri"] == str(client.make_url("/auth/device"))
    assert started["verification_uri_complete"] == f"{started['verification_uri']}?user_code={started['user_code']}"
    assert started["expires_in"] == 600
    assert started["interval"] == 5

    prefilled = await client.get(urlsplit(started["verification_uri_complete"])._replace(scheme="", netloc="").geturl())
    html = await prefilled.text()
    assert prefilled.headers["Cache-Control"] == "no-store"
    assert "default-src 'none'" in prefilled.headers["Content-Security-Policy"]
    assert f'value="{started["user_code"]}"' in html

    consent = await enter_code(client, started["user_code"].lower().replace("-", " "))  # any case, any separator
    text = await consent.text()
    assert "Living Room TV" in text
    assert "users:read" in text
    done = await decide(client, started["user_code"])
    assert done.status == 200
    assert "return to your device" in await done.text()

    status, tokens = await poll(client, tv["client_id"], started["device_code"])
    assert status == 200, tokens
    assert tokens["scope"] == "openid users:read"
    assert tokens["refresh_token"]
    assert tokens["id_token"]
    me = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.status == 200
    assert (await me.json())["username"] == "user"

    await allow_poll_now(db, started["device_code"])
    status, again = await poll(client, tv["client_id"], started["device_code"])
    assert (status, again["error"]) == (400, "invalid_grant")


async def test_pending_then_slow_down_raises_the_interval(client: TestClient, device_client, db) -> None:
    tv = await device_client()
    started = await start(client, tv["client_id"])
    status, body = await poll(client, tv["client_id"], started["device_code"])
    assert (status, body["error"]) == (400, "authorization_pending")
    status, body = await poll(client, tv["client_id"], started["device_code"])
    assert (status, body["error"]) == (400, "slow_down")
    stored = await db[COLLECTION].find_one({"_id": hash_secret(started["device_code"])})
    assert stored["interval"] == 10
    await allow_poll_now(db, started["device_code"])
    status, body = await poll(client, tv["client_id"], started["device_code"])
    assert (status, body["error"]) == (400, "authorization_pending")


async def test_concurrent_polls_get_one_answer_past_the_interval(client: TestClient, device_client) -> None:
    tv = await device_client()
    started = await start(client, tv["client_id"])
    answers = await asyncio.gather(*(poll(client, tv["client_id"], started["device_code"]) for _ in range(5)))
    errors = sorted(body["error"] for _, body in answers)
    assert errors == ["authorization_pending", *["slow_down"] * 4]


async def test_expired_device_code(client: TestClient, device_client, db) -> None:
    tv = await device_client()
    started = await start(client, tv["client_id"])
    past = utcnow() - timedelta(seconds=1)
    await db[COLLECTION].update_one({"_id": hash_secret(started["device_code"])}, {"$set": {"expires_at": past}})
    status, body = await poll(client, tv["client_id"], started["device_code"])
    assert (status, body["error"]) == (400, "expired_token")
    assert (await enter_code(client, started["user_code"])).status == 400  # the page no longer takes its code


async def test_denied_request(client: TestClient, device_client) -> None:
    tv = await device_client()
    started = await start(client, tv["client_id"])
    denied = await decide(client, started["user_code"], action="deny")
    assert "Nothing was shared" in await denied.text()
    status, body = await poll(client, tv["client_id"], started["device_code"])
    assert (status, body["error"]) == (400, "access_denied")


async def test_wrong_password_leaves_the_request_pending(client: TestClient, device_client) -> None:
    tv = await device_client()
    started = await start(client, tv["client_id"])
    refused = await decide(client, started["user_code"], password="wrong")
    assert refused.status == 400
    status, body = await poll(client, tv["client_id"], started["device_code"])
    assert (status, body["error"]) == (400, "authorization_pending")


async def test_ten_wrong_user_codes_then_429(client: TestClient, device_client) -> None:
    tv = await device_client()
    started = await start(client, tv["client_id"])
    for _ in range(10):
        assert (await enter_code(client, "BCDF-GHJK")).status == 400
    blocked = await enter_code(client, started["user_code"])  # even the right code, until the window ends
    assert blocked.status == 429


async def test_right_codes_do_not_count_against_the_address(client: TestClient, device_client) -> None:
    tv = await device_client()
    started = await start(client, tv["client_id"])
    for _ in range(12):
        assert (await enter_code(client, started["user_code"])).status == 200


async def test_a_client_not_registered_for_the_grant_is_refused(client: TestClient, seeded, register_client) -> None:
    response = await client.post(DEVICE_AUTHORIZATION, data={"client_id": "documentation"})
    assert response.status == 400
    assert (await response.json())["error"] == "unauthorized_client"
    form = {"grant_type": GRANT_TYPE, "device_code": "x" * 43, "client_id": "documentation"}
    response = await client.post(TOKEN, data=form)
    assert (await response.json())["error"] == "unauthorized_client"


async def test_codes_are_stored_as_hashes(client: TestClient, device_client, db) -> None:
    tv = await device_client()
    started = await start(client, tv["client_id"])
    stored = await db[COLLECTION].find_one({})
    letters = started["user_code"].replace("-", "")
    assert stored["_id"] == hash_secret(started["device_code"])
    assert stored["user_code_hash"] == hash_secret(letters)
    assert letters not in str(stored)
    assert started["device_code"] not in str(stored)


async def test_metadata_advertises_the_endpoint_and_grant(client: TestClient) -> None:
    metadata = await (await client.get("/.well-known/oauth-authorization-server")).json()
    assert metadata["device_authorization_endpoint"].endswith("/auth/oauth2/device_authorization")
    assert GRANT_TYPE in metadata["grant_types_supported"]


async def test_authlib_client_runs_the_device_flow(live_server: str) -> None:
    """authlib's OAuth2 client (over httpx) asks for the codes and polls with the standard grant; the
    test approves on the page meanwhile, with its own cookie-keeping HTTP client."""
    import aiohttp
    from authlib.integrations.httpx_client import AsyncOAuth2Client
    from authlib.integrations.httpx_client import OAuthError as AuthlibError

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        form = {"grant_type": "password", "username": "user", "password": "w", "client_id": "documentation"}
        async with browser.post(f"{live_server}{TOKEN}", data=form) as response:
            headers = {"Authorization": f"Bearer {(await response.json())['access_token']}"}
        body = {
            "client_type": "public",
            "client_name": "CLI",
            "grant_types": [GRANT_TYPE, "refresh_token"],
            "allowed_scopes": ["users:read"],
        }
        async with browser.post(f"{live_server}/api/v1/auth/oauth2_clients/", json=body, headers=headers) as response:
            assert response.status == 201, await response.text()
            client_id = (await response.json())["client_id"]

        async with AsyncOAuth2Client(client_id, token_endpoint_auth_method="none", scope="users:read") as oauth:
            started = (
                await oauth.request(
                    "POST",
                    f"{live_server}{DEVICE_AUTHORIZATION}",
                    data={"client_id": client_id, "scope": "users:read"},
                    withhold_token=True,  # no token yet: this request is what starts the sign-in
                )
            ).json()
            with pytest.raises(AuthlibError) as pending:
                await oauth.fetch_token(
                    f"{live_server}{TOKEN}", grant_type=GRANT_TYPE, device_code=started["device_code"]
                )
            assert pending.value.error == "authorization_pending"

            async with browser.get(started["verification_uri_complete"]) as page:
                html = await page.text()
            code_form = {"csrf_token": hidden_field(html, "csrf_token"), "user_code": hidden_or_typed(html)}
            async with browser.post(started["verification_uri"], data=code_form) as consent:
                html = await consent.text()
            decision = device_decision(html, username="user", password="w")
            async with browser.post(started["verification_uri"], data=decision) as done:
                assert "return to your device" in await done.text()

            await asyncio.sleep(started["interval"])  # a well-behaved client waits the interval between polls
            token = await oauth.fetch_token(
                f"{live_server}{TOKEN}", grant_type=GRANT_TYPE, device_code=started["device_code"]
            )
            assert token["token_type"] == "Bearer"
            me = await oauth.get(f"{live_server}/api/v1/users/me")  # authlib sends its new token
            assert me.status_code == 200
            assert me.json()["username"] == "user"


def hidden_or_typed(html: str) -> str:
    """The user code the page was opened with (the prefilled text field)."""
    found = re.search(r'id="user_code" name="user_code" value="([^"]*)"', html)
    assert found, "no prefilled user code"
    return found.group(1)


async def test_openapi_documents_the_device_endpoints(client: TestClient) -> None:
    from openapi_spec_validator import validate

    document = await (await client.get("/api/v1/openapi.json")).json()
    validate(document)
    assert "post" in document["paths"]["/auth/oauth2/device_authorization"]
    assert {"get", "post"} <= set(document["paths"]["/auth/device"])
    token_form = document["paths"]["/auth/oauth2/token"]["post"]["requestBody"]["content"]
    grant_types = token_form["application/x-www-form-urlencoded"]["schema"]["properties"]["grant_type"]["enum"]
    assert GRANT_TYPE in grant_types


async def test_second_factor_accounts_give_their_code_on_the_page(
    client: TestClient, device_client, bearer, db
) -> None:
    tv = await device_client()
    started = await start(client, tv["client_id"])
    secret, _ = await enroll_totp(client, await bearer("user"))
    code_page = await decide(client, started["user_code"])
    assert code_page.status == 200
    html = await code_page.text()
    assert 'id="otp"' in html
    assert 'type="password"' not in html  # the code step carries a pending sign-in, not the password
    form = device_decision(html, signin_token=hidden_field(html, "signin_token"))
    wrong = await client.post("/auth/device", data={**form, "otp": "000000" if totp_code(secret) != "000000" else "1"})
    assert wrong.status == 400
    status, body = await poll(client, tv["client_id"], started["device_code"])
    assert (status, body["error"]) == (400, "authorization_pending")
    await steady_step()
    done = await client.post("/auth/device", data={**form, "otp": totp_code(secret)})
    assert "return to your device" in await done.text()
    await allow_poll_now(db, started["device_code"])
    status, tokens = await poll(client, tv["client_id"], started["device_code"])
    assert status == 200, tokens


async def test_another_clients_device_code_and_unallowed_scopes_are_refused(client: TestClient, device_client) -> None:
    tv, other = await device_client(), await device_client()
    started = await start(client, tv["client_id"])
    status, body = await poll(client, other["client_id"], started["device_code"])
    assert (status, body["error"]) == (400, "invalid_grant")
    response = await client.post(DEVICE_AUTHORIZATION, data={"client_id": tv["client_id"], "scope": "users:write"})
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_scope"
    status, body = await poll(client, tv["client_id"], started["device_code"])  # untouched by the other client
    assert (status, body["error"]) == (400, "authorization_pending")


# --- the page and the browser's sign-in session ------------------------------------------------


async def test_a_password_sign_in_on_the_page_starts_a_session(client: TestClient, device_client, db) -> None:
    tv = await device_client()
    started = await start(client, tv["client_id"])
    done = await decide(client, started["user_code"])
    assert done.status == 200
    assert any(cookie.startswith("session=") for cookie in done.headers.getall("Set-Cookie"))
    stored = await db.sessions.find_one({})
    assert stored["clients"] == [tv["client_id"]]  # back-channel logout knows the device's client
    second = await start(client, tv["client_id"])
    consent = await enter_code(client, second["user_code"])
    html = await consent.text()
    assert 'id="signed-in"' in html
    assert 'name="password"' not in html  # the session signs the user in


async def test_a_signed_in_browser_approves_without_the_password(client: TestClient, device_client, db) -> None:
    tv = await device_client()
    first = await start(client, tv["client_id"])
    await decide(client, first["user_code"])  # signs in: a session in this browser
    started = await start(client, tv["client_id"])
    html = await (await enter_code(client, started["user_code"])).text()
    assert "You are signed in as <strong>user</strong>" in html
    form = device_decision(html, step="session")
    done = await client.post("/auth/device", data=form)
    assert done.status == 200
    assert "return to your device" in await done.text()
    status, tokens = await poll(client, tv["client_id"], started["device_code"])
    assert status == 200, tokens
    me = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert (await me.json())["username"] == "user"


async def test_the_session_step_without_a_session_asks_to_sign_in(client: TestClient, device_client, db) -> None:
    tv = await device_client()
    started = await start(client, tv["client_id"])
    html = await (await enter_code(client, started["user_code"])).text()
    form = device_decision(html, step="session")
    refused = await client.post("/auth/device", data=form)
    assert refused.status == 400
    assert 'name="password"' in await refused.text()
    assert (await db[COLLECTION].find_one({"_id": hash_secret(started["device_code"])}))["status"] == "pending"
