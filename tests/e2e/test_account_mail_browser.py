"""A person's account flows in Chromium, with the mail read from the outbox: sign up, open the
verification link, press its button; forget the password from the sign-in page, open the reset link,
choose a new password and sign in with it."""

from __future__ import annotations

import asyncio
import secrets
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
from playwright.async_api import Page, expect

from tests.helpers import link_in, mail_to, pkce

TIMEOUT = 20_000


async def newest_mail(db, address: str, subject: str) -> dict:
    """The newest message with `subject` queued for `address` (waiting a little for it)."""
    for _ in range(50):
        found = [message for message in await mail_to(db, address) if message["subject"] == subject]
        if found:
            return found[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no mail {subject!r} to {address}")


def authorize_url(base: str, challenge: str) -> str:
    params = {
        "response_type": "code",
        "client_id": "documentation",
        "redirect_uri": f"{base}/cb",
        "scope": "openid email",
        "state": secrets.token_urlsafe(8),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    return f"{base}/auth/oauth2/authorize?{urlencode(params)}"


async def test_sign_up_then_verify_the_address_from_the_mail(
    page: Page, live_server: str, mongo_client, settings, shot
) -> None:
    db = mongo_client[settings.mongodb_db]
    async with httpx.AsyncClient(base_url=live_server) as http:
        body = {"username": "browser.jane", "email": "browser.jane@example.com", "password": "long enough pw"}
        assert (await http.post("/api/v1/users/", json=body)).status_code == 201
        form = {"grant_type": "password", "client_id": "documentation", "username": "browser.jane"}
        token = (await http.post("/auth/oauth2/token", data={**form, "password": "long enough pw"})).json()
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        assert (await http.get("/api/v1/users/me", headers=headers)).json()["email_verified"] is False

        message = await newest_mail(db, "browser.jane@example.com", "Verify your email address")
        await page.goto(link_in(message))
        await expect(page.locator("#verify")).to_be_visible(timeout=TIMEOUT)
        await shot("verify-page")
        assert (await http.get("/api/v1/users/me", headers=headers)).json()["email_verified"] is False  # GET: nothing
        await page.locator("#verify").click()
        await expect(page.locator("#message")).to_contain_text("verified", timeout=TIMEOUT)
        await shot("verified")
        assert (await http.get("/api/v1/users/me", headers=headers)).json()["email_verified"] is True


async def test_forgot_password_from_the_sign_in_page_then_sign_in_with_the_new_one(
    page: Page, live_server: str, mongo_client, settings, shot
) -> None:
    db = mongo_client[settings.mongodb_db]
    async with httpx.AsyncClient(base_url=live_server) as http:
        body = {"username": "browser.john", "email": "browser.john@example.com", "password": "the old password"}
        assert (await http.post("/api/v1/users/", json=body)).status_code == 201

    await page.goto(authorize_url(live_server, pkce()[1]))
    await expect(page.locator("#username")).to_be_visible(timeout=TIMEOUT)
    await shot("sign-in-page")
    await page.locator("#forgot").click()
    await expect(page.locator("#email")).to_be_visible(timeout=TIMEOUT)
    await page.locator("#email").fill("browser.john@example.com")
    await shot("forgot-page")
    await page.locator("#send").click()
    await expect(page.locator("#message")).to_contain_text("If an account has this address", timeout=TIMEOUT)
    await shot("check-your-mail")

    message = await newest_mail(db, "browser.john@example.com", "Choose a new password")
    await page.goto(link_in(message))
    await expect(page.locator("#password")).to_be_visible(timeout=TIMEOUT)
    await page.locator("#password").fill("the new password")
    await page.locator("#password_again").fill("the new password")
    await shot("reset-page")
    await page.locator("#change").click()
    await expect(page.locator("#message")).to_contain_text("Your password is changed", timeout=TIMEOUT)
    await shot("password-changed")

    verifier, challenge = pkce()
    await page.goto(authorize_url(live_server, challenge))
    await expect(page.locator("#username")).to_be_visible(timeout=TIMEOUT)
    await page.locator("#username").fill("browser.john")
    await page.locator("#password").fill("the old password")
    await page.locator("button[value=approve]").click()
    await expect(page.locator("[role=alert]")).to_contain_text("Invalid username or password", timeout=TIMEOUT)
    await shot("old-password-refused")
    await page.locator("#username").fill("browser.john")
    await page.locator("#password").fill("the new password")
    async with page.expect_request(lambda request: request.url.startswith(f"{live_server}/cb?")) as redirected:
        await page.locator("button[value=approve]").click()
    await shot("signed-in")
    code = parse_qs(urlsplit((await redirected.value).url).query)["code"][0]
    exchange = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": f"{live_server}/cb",
        "client_id": "documentation",
        "code_verifier": verifier,
    }
    async with httpx.AsyncClient(base_url=live_server) as http:
        tokens = (await http.post("/auth/oauth2/token", data=exchange)).json()
        info = await http.get("/auth/oauth2/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert info.json()["email"] == "browser.john@example.com"
    assert info.json()["email_verified"] is True  # the reset link proved the address
