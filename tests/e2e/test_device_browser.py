"""A device sign-in (RFC 8628) with a client library nobody here wrote: authlib's OAuth2 client asks for
the codes and polls the token endpoint, while headless Chromium opens the verification link, signs in
and approves on /auth/device."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError
from playwright.async_api import Page, expect

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"
TIMEOUT = 20_000


async def device_client(base: str) -> str:
    """A public client registered (by the fixture user) for the device grant: its client_id."""
    async with aiohttp.ClientSession() as http:
        form = {"grant_type": "password", "username": "user", "password": "w", "client_id": "documentation"}
        async with http.post(f"{base}/auth/oauth2/token", data=form) as response:
            headers = {"Authorization": f"Bearer {(await response.json())['access_token']}"}
        body = {"client_type": "public", "client_name": "Kitchen Radio", "grant_types": [GRANT_TYPE]}
        body["allowed_scopes"] = ["users:read"]
        async with http.post(f"{base}/api/v1/auth/oauth2_clients/", json=body, headers=headers) as response:
            assert response.status == 201, await response.text()
            return str((await response.json())["client_id"])


async def poll_until_decided(oauth: AsyncOAuth2Client, token_url: str, started: dict[str, Any]) -> dict[str, Any]:
    """What a device does: wait the interval, poll, slow down when told to."""
    interval = started["interval"]
    while True:
        await asyncio.sleep(interval)
        try:
            return dict(await oauth.fetch_token(token_url, grant_type=GRANT_TYPE, device_code=started["device_code"]))
        except OAuthError as exc:
            if exc.error == "slow_down":
                interval += 5
            elif exc.error != "authorization_pending":
                raise


async def test_authlib_polls_while_chromium_approves(page: Page, live_server: str, shot) -> None:
    client_id = await device_client(live_server)
    token_url = f"{live_server}/auth/oauth2/token"
    async with AsyncOAuth2Client(client_id, token_endpoint_auth_method="none") as oauth:
        response = await oauth.request(
            "POST",
            f"{live_server}/auth/oauth2/device_authorization",
            data={"client_id": client_id, "scope": "users:read"},
            withhold_token=True,
        )
        started = response.json()
        polling = asyncio.create_task(poll_until_decided(oauth, token_url, started))

        await page.goto(started["verification_uri_complete"])
        await expect(page.locator("#user_code")).to_have_value(started["user_code"], timeout=TIMEOUT)
        await shot("code-prefilled")
        await page.locator("button[value=approve]").click()
        await expect(page.locator("#username")).to_be_visible(timeout=TIMEOUT)
        await expect(page.get_by_text("Kitchen Radio")).to_be_visible()
        await shot("consent")
        await page.locator("#username").fill("user")
        await page.locator("#password").fill("w")
        await page.locator("button[value=approve]").click()
        await expect(page.locator("#done")).to_contain_text("return to your device", timeout=TIMEOUT)
        await shot("done")

        token = await asyncio.wait_for(polling, timeout=60)
        assert token["scope"] == "users:read"
        me = await oauth.get(f"{live_server}/api/v1/users/me")
        assert me.status_code == 200
        assert me.json()["username"] == "user"
