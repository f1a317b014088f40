"""A person with a second factor signs in through the authorization-code page in Chromium: the password,
then the 6-digit code from their authenticator (pyotp here), and the ID token says `amr` has `otp`."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pyotp
from playwright.async_api import Page, expect

from tests.helpers import jwt_claims, pkce, steady_step, totp_code

TIMEOUT = 20_000


async def enroll_through_the_api(http: httpx.AsyncClient) -> str:
    """Signed in as `user` (a password grant: no second factor yet), enroll and confirm; the secret."""
    form = {
        "grant_type": "password",
        "client_id": "documentation",
        "username": "user",
        "password": "w",
        "scope": "users:read users:write",
    }
    token = (await http.post("/auth/oauth2/token", data=form)).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    await steady_step()
    started = await http.post("/api/v1/users/me/mfa/totp", json={"current_password": "w"}, headers=headers)
    assert started.status_code == 201, started.text
    enrollment = started.json()
    assert enrollment["qr_svg"].startswith("<svg")
    secret = enrollment["secret"]
    previous = totp_code(secret, -1)  # (so the current step's code is still unused for the sign-in)
    confirmed = await http.post("/api/v1/users/me/mfa/totp/confirm", json={"code": previous}, headers=headers)
    assert confirmed.status_code == 200, confirmed.text
    me = (await http.get("/api/v1/users/me", headers=headers)).json()
    assert me["mfa"] == {"totp": True, "recovery_codes_left": 10}
    return str(secret)


async def test_sign_in_with_password_and_code_gives_amr_otp(page: Page, live_server: str, shot) -> None:
    async with httpx.AsyncClient(base_url=live_server, timeout=10) as http:
        secret = await enroll_through_the_api(http)
        verifier, challenge = pkce()
        redirect_uri = f"{live_server}/cb"
        params = {
            "response_type": "code",
            "client_id": "documentation",
            "redirect_uri": redirect_uri,
            "scope": "openid profile users:read",
            "state": "browser-state",
            "nonce": "browser-nonce",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        await page.goto(f"{live_server}/auth/oauth2/authorize?{urlencode(params)}")
        await expect(page.locator("#username")).to_be_visible(timeout=TIMEOUT)
        await shot("sign-in-page")
        await page.locator("#username").fill("user")
        await page.locator("#password").fill("w")
        await page.locator("button[value=approve]").click()
        await expect(page.locator("#otp")).to_be_visible(timeout=TIMEOUT)  # the second step
        await expect(page.locator("#password")).to_have_count(0)
        await shot("code-page")
        await steady_step()
        await page.locator("#otp").fill(pyotp.TOTP(secret).now())
        async with page.expect_response(lambda response: response.url.startswith(redirect_uri), timeout=TIMEOUT):
            await page.locator("button[value=approve]").click()
        await shot("redirected")
        answer = {key: values[0] for key, values in parse_qs(urlsplit(page.url).query).items()}
        assert answer["state"] == "browser-state"
        exchanged = await http.post(
            "/auth/oauth2/token",
            data={
                "grant_type": "authorization_code",
                "code": answer["code"],
                "redirect_uri": redirect_uri,
                "client_id": "documentation",
                "code_verifier": verifier,
            },
        )
        assert exchanged.status_code == 200, exchanged.text
        claims = jwt_claims(exchanged.json()["id_token"])
        assert claims["amr"] == ["pwd", "otp"]
        assert claims["acr"] == "2"
        assert claims["nonce"] == "browser-nonce"
        assert claims["preferred_username"] == "user"
