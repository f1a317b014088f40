"""Single sign-on across two clients in a real browser (headless Chromium): the user signs in once at
the first-party `documentation` client; a third-party client asking next gets a consent screen (its
name and the scopes in words, no password form), and after Allow a code for the same sign-in session
(the ID tokens of both clients carry one `sid`); its next request goes straight through."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
from authlib.jose import JsonWebKey, jwt
from playwright.async_api import Page, Response, expect

from tests.helpers import AUTHORIZE, pkce

TIMEOUT = 20_000
CLIENT_NAME = "Recipe Planner"


async def third_party_client(http: aiohttp.ClientSession, base: str, redirect_uri: str) -> str:
    """A public client registered by the regular user through the API: not first-party, named."""
    form = {"grant_type": "password", "username": "user", "password": "w", "client_id": "documentation"}
    async with http.post(f"{base}/auth/oauth2/token", data=form) as response:
        assert response.status == 200, await response.text()
        headers = {"Authorization": f"Bearer {(await response.json())['access_token']}"}
    body = {
        "client_type": "public",
        "client_name": CLIENT_NAME,
        "redirect_uris": [redirect_uri],
        "allowed_scopes": ["openid", "users:read"],
    }
    async with http.post(f"{base}/api/v1/auth/oauth2_clients/", json=body, headers=headers) as response:
        assert response.status == 201, await response.text()
        created = await response.json()
    assert created["first_party"] is False
    return str(created["client_id"])


def authorization_url(base: str, client_id: str, redirect_uri: str, challenge: str, state: str) -> str:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": "openid users:read",
        "state": state,
        "nonce": f"nonce-{state}",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    return f"{base}{AUTHORIZE}?{urlencode(params)}"


async def arrived(page: Page, redirect_uri: str, state: str) -> str:
    """Wait until the browser is back at the client; the code, after checking state and iss."""
    await page.wait_for_url(f"{redirect_uri}?**", timeout=TIMEOUT)
    params = {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}
    assert params["state"] == state
    assert params["iss"] == f"{urlsplit(redirect_uri).scheme}://{urlsplit(redirect_uri).netloc}"
    return params["code"]


async def id_token_claims(http: aiohttp.ClientSession, base: str, exchange: dict[str, str]) -> dict[str, Any]:
    """Exchange the code (PKCE) and verify the ID token against the JWKS."""
    async with http.post(f"{base}/auth/oauth2/token", data={"grant_type": "authorization_code", **exchange}) as r:
        assert r.status == 200, await r.text()
        tokens = await r.json()
    async with http.get(f"{base}/auth/oauth2/jwks") as r:
        keys = JsonWebKey.import_key_set(await r.json())
    claims = jwt.decode(tokens["id_token"], keys)
    claims.validate()
    assert claims["aud"] == exchange["client_id"]
    return dict(claims)


async def test_one_sign_in_serves_a_second_client_after_its_consent(page: Page, live_server: str, shot) -> None:
    redirect_uri = f"{live_server}/cb"  # registered for `documentation` by the live_server fixture
    authorize_answers: list[tuple[str, int]] = []

    def record(response: Response) -> None:
        if urlsplit(response.url).path == AUTHORIZE:
            authorize_answers.append((response.request.method, response.status))

    page.on("response", record)
    async with aiohttp.ClientSession() as http:
        client_id = await third_party_client(http, live_server, redirect_uri)

        # Sign in once, at the first-party client.
        verifier, challenge = pkce()
        await page.goto(authorization_url(live_server, "documentation", redirect_uri, challenge, "docs-1"))
        await expect(page.locator("#username")).to_be_visible(timeout=TIMEOUT)
        await shot("sign-in-at-documentation")
        await page.locator("#username").fill("user")
        await page.locator("#password").fill("w")
        await page.locator("button[value=approve]").click()
        code = await arrived(page, redirect_uri, "docs-1")
        first = await id_token_claims(
            http,
            live_server,
            {"code": code, "code_verifier": verifier, "client_id": "documentation", "redirect_uri": redirect_uri},
        )
        assert first["sid"]
        assert first["amr"] == ["pwd"]

        # The third-party client: a consent screen with its name and the scopes in words, no password.
        authorize_answers.clear()
        verifier, challenge = pkce()
        await page.goto(authorization_url(live_server, client_id, redirect_uri, challenge, "third-1"))
        await expect(page.get_by_role("heading", name="Allow access?")).to_be_visible(timeout=TIMEOUT)
        await expect(page.locator("strong")).to_have_text(CLIENT_NAME)
        await expect(page.get_by_text("users:read: Read users")).to_be_visible()
        await expect(page.get_by_text("openid: Sign you in to the application (OpenID Connect)")).to_be_visible()
        await expect(page.locator("#password")).to_have_count(0)
        await expect(page.locator("#username")).to_have_count(0)
        await shot("consent")
        await page.get_by_role("button", name="Allow").click()
        code = await arrived(page, redirect_uri, "third-1")
        await shot("back-at-the-client")
        assert authorize_answers == [("GET", 200), ("POST", 303)]  # the consent page, then Allow
        second = await id_token_claims(
            http,
            live_server,
            {"code": code, "code_verifier": verifier, "client_id": client_id, "redirect_uri": redirect_uri},
        )
        assert second["sid"] == first["sid"]  # one sign-in session for both clients
        assert second["sub"] == first["sub"]
        assert second["auth_time"] == first["auth_time"]  # nobody typed a password again
        assert second["nonce"] == "nonce-third-1"

        # The same client again: consent remembered, a code at once (one 302, no page).
        authorize_answers.clear()
        verifier, challenge = pkce()
        await page.goto(authorization_url(live_server, client_id, redirect_uri, challenge, "third-2"))
        code = await arrived(page, redirect_uri, "third-2")
        assert authorize_answers == [("GET", 302)]
        third = await id_token_claims(
            http,
            live_server,
            {"code": code, "code_verifier": verifier, "client_id": client_id, "redirect_uri": redirect_uri},
        )
        assert third["sid"] == first["sid"]

        # The sessions API lists the one session with both clients.
        form = {"grant_type": "password", "username": "user", "password": "w", "client_id": "documentation"}
        async with http.post(f"{live_server}/auth/oauth2/token", data=form) as response:
            headers = {"Authorization": f"Bearer {(await response.json())['access_token']}"}
        async with http.get(f"{live_server}/api/v1/users/me/sessions", headers=headers) as response:
            assert response.status == 200, await response.text()
            sessions = await response.json()
        assert [s["id"] for s in sessions] == [first["sid"]]
        assert sessions[0]["current"] is False  # a password-grant token comes from no session
        assert set(sessions[0]["clients"]) == {"documentation", client_id}
