"""A single-page app signs a user in with a stock OpenID Connect library from npm (oidc-client-ts),
in headless Chromium, on an origin of its own: discovery, code + PKCE through our sign-in page, the
token exchange and UserInfo, all from the browser (which needs CORS on those endpoints)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, unused_port
from playwright.async_api import Page, expect

from tests.e2e.conftest import npm_install

OIDC_CLIENT_TS = "oidc-client-ts@3.5.0"
TIMEOUT = 20_000

INDEX = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>Relying party</title>
<script src="/oidc-client-ts.min.js"></script></head><body><p id="status">starting</p><script>
const manager = new oidc.UserManager(SETTINGS);
manager.signinRedirect().catch(e => { document.getElementById("status").textContent = "error: " + e; });
</script></body></html>"""

CALLBACK = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>Signed in</title>
<script src="/oidc-client-ts.min.js"></script></head><body><pre id="result">waiting</pre><script>
new oidc.UserManager(SETTINGS).signinRedirectCallback()
  .then(user => { document.getElementById("result").textContent = JSON.stringify(
      {profile: user.profile, scope: user.scope, has_id_token: !!user.id_token}); })
  .catch(e => { document.getElementById("result").textContent = "error: " + e; });
</script></body></html>"""


@pytest.fixture(scope="session")
def oidc_client_ts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The library's browser bundle, installed from npm by this test's own setup."""
    folder = npm_install(tmp_path_factory, "npm", OIDC_CLIENT_TS)
    return folder / "node_modules" / "oidc-client-ts" / "dist" / "browser" / "oidc-client-ts.min.js"


async def test_a_single_page_app_signs_in_with_oidc_client_ts(
    page: Page, live_server: str, oidc_client_ts: Path, mongo_client, settings, shot
) -> None:
    port = unused_port()
    origin = f"http://127.0.0.1:{port}"
    config = json.dumps(
        {
            "authority": live_server,
            "client_id": "documentation",
            "redirect_uri": f"{origin}/cb.html",
            "response_type": "code",
            "scope": "openid profile email",
            "loadUserInfo": True,
        }
    )

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=INDEX.replace("SETTINGS", config), content_type="text/html")

    async def callback(request: web.Request) -> web.Response:
        return web.Response(text=CALLBACK.replace("SETTINGS", config), content_type="text/html")

    async def library(request: web.Request) -> web.FileResponse:
        return web.FileResponse(oidc_client_ts)

    relying_party = web.Application()
    relying_party.router.add_get("/", index)
    relying_party.router.add_get("/cb.html", callback)
    relying_party.router.add_get("/oidc-client-ts.min.js", library)
    server = TestServer(relying_party, host="127.0.0.1", port=port)
    await server.start_server()
    await mongo_client[settings.mongodb_db].oauth2_clients.update_one(
        {"_id": "documentation"}, {"$push": {"redirect_uris": f"{origin}/cb.html"}}
    )
    try:
        await page.goto(f"{origin}/")
        await expect(page.locator("#username")).to_be_visible(timeout=TIMEOUT)  # our sign-in page
        await shot("sign-in-page")
        await page.locator("#username").fill("user")
        await page.locator("#password").fill("w")
        await page.locator("button[value=approve]").click()
        result = page.locator("#result")
        await expect(result).not_to_have_text("waiting", timeout=TIMEOUT)
        await shot("signed-in")
        signed_in = json.loads(await result.text_content() or "{}")
        assert signed_in["has_id_token"] is True
        assert signed_in["profile"]["preferred_username"] == "user"
        assert signed_in["profile"]["iss"] == live_server
        assert signed_in["profile"]["sub"]
        assert "email" in signed_in["profile"]  # from the email scope, through UserInfo or the ID token
    finally:
        await server.close()
