"""Sign-in sessions proven with a relying party nobody here wrote: panva's `openid-client` (npm, in
Node) discovers the server, builds every authorization and end-session URL and validates every answer
(the ID token's signature, nonce, `auth_time` against `max_age`, the RFC 9207 `iss` parameter, the PKCE
exchange), while Python plays the browser: an aiohttp session with its own cookie jar that opens the
URLs and fills the sign-in form. A small aiohttp receiver is the client's back-channel logout endpoint,
and `jose` (npm) verifies the logout token it receives against the server's JWKS.

The steps follow OpenID Connect Core 1.0 §3.1.2.1 (prompt, max_age, id_token_hint), RP-Initiated
Logout 1.0 §2-3 and Back-Channel Logout 1.0 §2.4-2.6."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, unused_port

from tests.e2e.conftest import node_json, npm_install
from tests.helpers import AUTHORIZE, form_of

PACKAGES = ("openid-client@5.7.1", "jose@5.9.6")
SCOPE = "openid profile"

# argv[2]: a JSON job; prints one JSON document on stdout. "start": an authorization URL with PKCE
# (S256), nonce and state made by the library. "callback": the library's own checks and code exchange
# on the URL the browser was sent back to ({"refused": ...} when it raises OPError or RPError). "end":
# the RP-initiated logout URL. "verify_logout": jose checks a logout token against the JWKS.
SCRIPT = """
const { Issuer, custom, errors, generators } = require("openid-client");
const jose = require("jose");
const job = JSON.parse(process.argv[2]);
const out = (value) => console.log(JSON.stringify(value));

(async () => {
  if (job.command === "verify_logout") {
    const jwks = jose.createRemoteJWKSet(new URL(job.jwks_uri));
    const { payload, protectedHeader } = await jose.jwtVerify(job.token, jwks, {
      issuer: job.issuer, audience: job.client_id, typ: "logout+jwt", algorithms: ["RS256"],
      maxTokenAge: "2 minutes", requiredClaims: ["iat", "jti", "events"],
    });
    out({ payload, header: protectedHeader });
    return;
  }
  const issuer = await Issuer.discover(job.issuer);
  const client = new issuer.Client({
    client_id: job.client_id,
    token_endpoint_auth_method: "none",
    response_types: ["code"],
    redirect_uris: [job.redirect_uri],
    post_logout_redirect_uris: [job.post_logout_redirect_uri],
    id_token_signed_response_alg: "RS256",
  });
  // auth_time has whole seconds and this script starts a second or so after the sign-in.
  client[custom.clock_tolerance] = 3;
  if (job.command === "start") {
    const code_verifier = generators.codeVerifier();
    const nonce = generators.nonce();
    const state = generators.state();
    const url = client.authorizationUrl({
      scope: job.scope, code_challenge: generators.codeChallenge(code_verifier), code_challenge_method: "S256",
      nonce, state, ...(job.extra || {}),
    });
    out({ url, checks: { code_verifier, nonce, state }, issuer: issuer.metadata });
  } else if (job.command === "callback") {
    const params = client.callbackParams(job.url);
    try {
      const tokens = await client.callback(job.redirect_uri, params, job.checks);
      out({ id_token: tokens.id_token, claims: tokens.claims(), scope: tokens.scope, access_token: !!tokens.access_token });
    } catch (error) {
      if (!(error instanceof errors.OPError || error instanceof errors.RPError)) throw error;
      out({ refused: { name: error.name, error: error.error || null, message: error.message } });
    }
  } else if (job.command === "end") {
    out({ url: client.endSessionUrl(job.params) });
  }
})().catch((error) => {
  out({ failed: String(error), stack: error.stack });
  process.exitCode = 1;
});
"""


@pytest.fixture(scope="session")
def relying_party_js(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with openid-client and jose installed from npm by this test's own setup, and the script."""
    folder = npm_install(tmp_path_factory, "openid-client-rp", *PACKAGES)
    (folder / "rp.js").write_text(SCRIPT)
    return folder


class RelyingParty:
    """openid-client, one Node process per step (the checks it made travel through Python)."""

    def __init__(self, folder: Path, issuer: str, client_id: str, origin: str) -> None:
        self.folder, self.issuer, self.client_id = folder, issuer, client_id
        self.redirect_uri = f"{origin}/cb"
        self.post_logout_redirect_uri = f"{origin}/bye"

    async def run(self, command: str, **job: Any) -> dict[str, Any]:
        job = {
            "command": command,
            "issuer": self.issuer,
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "post_logout_redirect_uri": self.post_logout_redirect_uri,
            **job,
        }
        return await node_json(self.folder, "rp.js", job)

    async def start(self, **extra: Any) -> dict[str, Any]:
        return await self.run("start", scope=SCOPE, extra=extra)

    async def callback(self, url: str, checks: dict[str, Any]) -> dict[str, Any]:
        return await self.run("callback", url=url, checks=checks)


class Browser:
    """A browser played by aiohttp: its own cookie jar (accepting cookies of 127.0.0.1), no redirect
    followed on its own (the one back to the relying party is handed to openid-client)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def open(self, url: str) -> tuple[str | None, str]:
        """(where the server redirects, None) or (None, the page it shows)."""
        async with self.http.get(url, allow_redirects=False) as response:
            if response.status in (302, 303):
                return response.headers["Location"], ""
            assert response.status == 200, (response.status, await response.text())
            return None, await response.text()

    async def sign_in(self, html: str, username: str, password: str) -> str:
        """Fill the sign-in page's form; where the server sends the browser (back to the client)."""
        assert 'name="password"' in html, html
        form = {**form_of(html), "action": "approve", "username": username, "password": password}
        async with self.http.post(f"{self.base}{AUTHORIZE}", data=form, allow_redirects=False) as response:
            assert response.status == 303, (response.status, await response.text())
            return response.headers["Location"]

    async def close(self) -> None:
        await self.http.close()


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


async def register_client(base: str, origin: str) -> str:
    """The relying party's client, registered by root through the API (first-party: no consent screen)."""
    async with aiohttp.ClientSession() as http:
        form = {"grant_type": "password", "username": "root", "password": "q", "client_id": "documentation"}
        async with http.post(f"{base}/auth/oauth2/token", data=form) as response:
            assert response.status == 200, await response.text()
            headers = {"Authorization": f"Bearer {(await response.json())['access_token']}"}
        body = {
            "client_type": "public",
            "client_name": "openid-client relying party",
            "first_party": True,
            "redirect_uris": [f"{origin}/cb"],
            "post_logout_redirect_uris": [f"{origin}/bye"],
            "backchannel_logout_uri": f"{origin}/backchannel",
            "allowed_scopes": SCOPE.split(),
            "default_scopes": ["openid"],
        }
        async with http.post(f"{base}/api/v1/auth/oauth2_clients/", json=body, headers=headers) as response:
            assert response.status == 201, await response.text()
            return str((await response.json())["client_id"])


async def signed_in(rp: RelyingParty, browser: Browser, username: str, password: str) -> dict[str, Any]:
    """A full sign-in through the form; what openid-client made of the answer."""
    started = await rp.start()
    location, html = await browser.open(started["url"])
    assert location is None, location  # no session yet: the sign-in page
    back = await browser.sign_in(html, username, password)
    result = await rp.callback(back, started["checks"])
    assert "refused" not in result, result
    return result


async def test_openid_client_signs_in_renews_silently_and_logs_out(live_server: str, relying_party_js: Path) -> None:
    port = unused_port()
    origin = f"http://127.0.0.1:{port}"
    logout_tokens: list[str] = []

    async def backchannel(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-www-form-urlencoded"
        logout_tokens.append(str((await request.post())["logout_token"]))
        return web.Response(status=200, headers={"Cache-Control": "no-store"})

    receiver = web.Application()
    receiver.router.add_post("/backchannel", backchannel)
    server = TestServer(receiver, host="127.0.0.1", port=port)
    await server.start_server()
    browser, elsewhere = Browser(live_server), Browser(live_server)
    try:
        client_id = await register_client(live_server, origin)
        rp = RelyingParty(relying_party_js, live_server, client_id, origin)

        # (a) Sign-in: code + PKCE (S256) + nonce + state; openid-client accepts the ID token.
        started = await rp.start()
        assert started["issuer"]["authorization_response_iss_parameter_supported"] is True
        assert started["issuer"]["end_session_endpoint"] == f"{live_server}/auth/oauth2/logout"
        sent = query_of(started["url"])
        assert sent["code_challenge_method"] == "S256"
        assert sent["nonce"]
        assert sent["state"]
        location, html = await browser.open(started["url"])
        assert location is None
        back = await browser.sign_in(html, "user", "w")
        assert back.startswith(rp.redirect_uri)
        assert query_of(back)["iss"] == live_server  # RFC 9207, which openid-client compares too
        first = await rp.callback(back, {**started["checks"], "max_age": 3600})
        assert "refused" not in first, first
        claims = first["claims"]
        print(json.dumps(first["claims"], indent=2))  # what openid-client validated, for the -rA report
        assert claims["iss"] == live_server
        assert claims["aud"] == client_id
        assert claims["nonce"] == started["checks"]["nonce"]
        assert claims["sid"]
        assert "" not in claims.values()  # the user's empty middle name is left out (Core 5.3.2)
        assert claims["amr"] == ["pwd"]
        assert abs(claims["auth_time"] - time.time()) < 30
        assert first["access_token"] is True
        assert set(first["scope"].split()) == set(SCOPE.split())
        sid, sub = claims["sid"], claims["sub"]

        # (b) prompt=none with the session: a code at once (no form), accepted by openid-client.
        silent = await rp.start(prompt="none")
        location, html = await browser.open(silent["url"])
        assert location is not None, html
        assert location.startswith(rp.redirect_uri)
        renewed = await rp.callback(location, silent["checks"])
        assert "refused" not in renewed, renewed
        assert renewed["claims"]["sid"] == sid
        assert renewed["claims"]["sub"] == sub
        assert renewed["claims"]["auth_time"] == claims["auth_time"]  # no new sign-in happened

        # (c) max_age=1, two seconds later: the sign-in page, not a code; after it, a fresh auth_time
        # that openid-client checks against max_age; the browser's session keeps its sid.
        await asyncio.sleep(2)
        aged = await rp.start(max_age=1)
        location, html = await browser.open(aged["url"])
        assert location is None, location
        back = await browser.sign_in(html, "user", "w")
        again = await rp.callback(back, {**aged["checks"], "max_age": 1})
        assert "refused" not in again, again
        assert again["claims"]["auth_time"] >= claims["auth_time"] + 2
        assert again["claims"]["sid"] == sid
        id_token = again["id_token"]

        # (d) An id_token_hint naming another user (root, signed in in another browser), prompt=none:
        # login_required, which openid-client raises as an OPError.
        root = await signed_in(rp, elsewhere, "root", "q")
        assert root["claims"]["sub"] != sub
        hinted = await rp.start(prompt="none", id_token_hint=root["id_token"])
        location, html = await browser.open(hinted["url"])
        assert location is not None, html
        assert location.startswith(rp.redirect_uri)
        refused = await rp.callback(location, hinted["checks"])
        assert refused["refused"]["name"] == "OPError", refused
        assert refused["refused"]["error"] == "login_required"
        # The session is still there: the same request with the user's own hint goes through.
        own = await rp.start(prompt="none", id_token_hint=id_token)
        location, _ = await browser.open(own["url"])
        assert location is not None
        assert (await rp.callback(location, own["checks"]))["claims"]["sid"] == sid

        # (e) RP-initiated logout with the URL openid-client builds: back to the registered URI with the
        # state, and the session is over (prompt=none: login_required).
        end = await rp.run(
            "end",
            params={
                "id_token_hint": id_token,
                "post_logout_redirect_uri": rp.post_logout_redirect_uri,
                "state": "bye-1",
            },
        )
        assert end["url"].startswith(f"{live_server}/auth/oauth2/logout?")
        location, html = await browser.open(end["url"])
        assert location is not None, html
        assert location.split("?")[0] == rp.post_logout_redirect_uri
        assert query_of(location) == {"state": "bye-1"}
        after = await rp.start(prompt="none")
        location, html = await browser.open(after["url"])
        assert location is not None, html
        refused = await rp.callback(location, after["checks"])
        assert refused["refused"]["error"] == "login_required", refused
        # root's session in the other browser is untouched.
        theirs = await rp.start(prompt="none")
        location, _ = await elsewhere.open(theirs["url"])
        assert location is not None
        assert (await rp.callback(location, theirs["checks"]))["claims"]["sub"] == root["claims"]["sub"]

        # (f) The back-channel logout token reaches the receiver (the live server's deliverer) and jose
        # verifies it against the JWKS: typ logout+jwt, this client, the ID token's sid and sub.
        for _ in range(200):
            if logout_tokens:
                break
            await asyncio.sleep(0.1)
        assert len(logout_tokens) == 1, logout_tokens  # root's session did not end: one message
        verified = await rp.run("verify_logout", token=logout_tokens[0], jwks_uri=started["issuer"]["jwks_uri"])
        assert "failed" not in verified, verified
        print(json.dumps(verified, indent=2))
        payload = verified["payload"]
        assert verified["header"]["typ"] == "logout+jwt"
        assert verified["header"]["alg"] == "RS256"
        assert payload["sid"] == sid
        assert payload["sub"] == sub
        assert payload["aud"] == client_id
        assert payload["iss"] == live_server
        assert payload["events"] == {"http://schemas.openid.net/event/backchannel-logout": {}}
        assert "nonce" not in payload
    finally:
        await browser.close()
        await elsewhere.close()
        await server.close()
