"""DPoP (RFC 9449) with software nobody here wrote: panva's `oauth4webapi` from npm, in Node, discovers the
server, makes its own ES256 key pair, gets DPoP-bound tokens through the authorization code flow with
PKCE (this test plays the browser: it opens the authorization URL, signs in on the page and hands the
redirect back), calls the API with proofs, refreshes, and calls again, answering the server's nonce
demands (`use_dpop_nonce`) as the library's documentation says. The server demands nonces everywhere
here (DPOP_NONCES=all). Then, from Python, what must be refused: the library's own proofs replayed or
sent with another URL or method, the token without its proof or as a bearer token, a proof signed with
another key, and the bound refresh token with another key."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.crypto import hash_secret
from tests.e2e.conftest import NODE, npm_install
from tests.helpers import DPoPKey, form_of, jwt_claims

OAUTH4WEBAPI = "oauth4webapi@3.8.3"

# argv[2]: the issuer. Prints {"authorize": url} and reads the callback URL from stdin, then prints one
# JSON document with what it got (tokens, API answers, the proofs it sent to the API, nonce retries).
SCRIPT = """
import * as oauth from "oauth4webapi";
import * as readline from "node:readline";

const issuer = new URL(process.argv[2]);
const insecure = { [oauth.allowInsecureRequests]: true };
const proofs = [];
let nonceRetries = 0;

async function recordingFetch(url, options) {
  const headers = new Headers(options.headers);
  if (headers.get("dpop") && String(url).includes("/api/v1/")) proofs.push(headers.get("dpop"));
  return fetch(url, options);
}

async function withNonceRetry(attempt) {
  try {
    return await attempt();
  } catch (error) {
    if (!oauth.isDPoPNonceError(error)) throw error;
    nonceRetries += 1;
    return await attempt();  // the DPoP handle kept the nonce the server sent (DPoP-Nonce)
  }
}

async function me(accessToken, DPoP) {
  const response = await withNonceRetry(() => oauth.protectedResourceRequest(
    accessToken, "GET", new URL("/api/v1/users/me", issuer), new Headers(), null,
    { DPoP, ...insecure, [oauth.customFetch]: recordingFetch },
  ));
  return { status: response.status, body: await response.json() };
}

const lines = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once("line", resolve));

try {
  const as = await oauth.processDiscoveryResponse(
    issuer, await oauth.discoveryRequest(issuer, { algorithm: "oauth2", ...insecure }),
  );
  const client = { client_id: "documentation" };
  const redirectUri = new URL("/cb", issuer).href;
  const keyPair = await oauth.generateKeyPair("ES256");
  const DPoP = oauth.DPoP(client, keyPair);
  const verifier = oauth.generateRandomCodeVerifier();
  const state = oauth.generateRandomState();
  const authorize = new URL(as.authorization_endpoint);
  for (const [name, value] of Object.entries({
    client_id: client.client_id, redirect_uri: redirectUri, response_type: "code", scope: "users:read",
    state, code_challenge: await oauth.calculatePKCECodeChallenge(verifier), code_challenge_method: "S256",
  })) authorize.searchParams.set(name, value);
  console.log(JSON.stringify({ authorize: authorize.href }));

  const callback = new URL(await nextLine());
  const params = oauth.validateAuthResponse(as, client, callback, state);
  const tokens = await withNonceRetry(async () => oauth.processAuthorizationCodeResponse(as, client,
    await oauth.authorizationCodeGrantRequest(as, client, oauth.None(), params, redirectUri, verifier, { DPoP, ...insecure }),
  ));
  const first = await me(tokens.access_token, DPoP);
  const refreshed = await withNonceRetry(async () => oauth.processRefreshTokenResponse(as, client,
    await oauth.refreshTokenGrantRequest(as, client, oauth.None(), tokens.refresh_token, { DPoP, ...insecure }),
  ));
  const second = await me(refreshed.access_token, DPoP);
  let unsentDelete;  // a proof the library makes for DELETE /api/v1/users/me, kept instead of sent
  await oauth.protectedResourceRequest(
    refreshed.access_token, "DELETE", new URL("/api/v1/users/me", issuer), new Headers(), null,
    { DPoP, ...insecure, [oauth.customFetch]: async (url, options) => {
      unsentDelete = new Headers(options.headers).get("dpop");
      return new Response(null, { status: 204 });
    } },
  );
  console.log(JSON.stringify({
    metadata: as, tokens, refreshed, first, second, proofs, nonceRetries, unsentDelete,
    jkt: await DPoP.calculateThumbprint(),
    publicJwk: await crypto.subtle.exportKey("jwk", keyPair.publicKey),
  }));
} catch (error) {
  console.log(JSON.stringify({ failed: String(error), error: error.error || null, cause: error.cause || null }));
  process.exitCode = 1;
} finally {
  lines.close();
}
"""


@pytest.fixture(scope="session")
def oauth4webapi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with oauth4webapi installed from npm by this test's own setup, and the script."""
    folder = npm_install(tmp_path_factory, "oauth4webapi", OAUTH4WEBAPI)
    (folder / "dpop.mjs").write_text(SCRIPT)
    return folder


@pytest.fixture
def settings(settings):
    return dataclasses.replace(settings, dpop_nonces="all")  # nonces at the token endpoint and the API


async def sign_in_on_the_page(http: aiohttp.ClientSession, authorize: str) -> str:
    """What a browser does: open the authorization URL, sign in as `user` and approve; the redirect."""
    async with http.get(authorize) as page:
        assert page.status == 200, await page.text()
        html = await page.text()
    form = {**form_of(html), "action": "approve", "username": "user", "password": "w"}
    async with http.post(authorize.split("?")[0], data=form, allow_redirects=False) as answer:
        assert answer.status in (302, 303), await answer.text()
        return answer.headers["Location"]


async def run_client(folder: Path, issuer: str) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        NODE,
        str(folder / "dpop.mjs"),
        issuer,
        cwd=folder,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
    started = json.loads(line)
    if "authorize" not in started:
        await process.wait()
        pytest.fail(f"the client failed before the authorization request: {started}")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:  # (an IP host)
        callback = await sign_in_on_the_page(http, started["authorize"])
    stdout, stderr = await asyncio.wait_for(process.communicate(f"{callback}\n".encode()), timeout=60)
    assert process.returncode == 0, (stdout.decode(), stderr.decode())
    result: dict[str, Any] = json.loads(stdout)
    return result


def access_of(result: dict[str, Any]) -> str:
    return str(result["refreshed"]["access_token"])


def dpop_header_jwk(proof: str) -> dict[str, Any]:
    segment = proof.split(".")[0]
    return dict(json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))["jwk"])


async def test_oauth4webapi_gets_and_uses_dpop_bound_tokens(
    live_server: str, oauth4webapi: Path, settings, mongo_client
) -> None:
    result = await run_client(oauth4webapi, live_server)
    print(json.dumps({k: v for k, v in result.items() if k != "metadata"}, indent=2))  # for the -rA report
    assert "failed" not in result, result
    assert result["metadata"]["dpop_signing_alg_values_supported"] == ["ES256", "RS256", "EdDSA"]
    assert result["tokens"]["token_type"].lower() == "dpop"
    assert result["refreshed"]["token_type"].lower() == "dpop"
    for call in ("first", "second"):
        assert result[call]["status"] == 200, result[call]
        assert result[call]["body"]["username"] == "user"
    # The token endpoint asked for a nonce once; the library kept it (per origin) and the API took it.
    assert result["nonceRetries"] >= 1
    proofs = result["proofs"]
    assert all(dpop_header_jwk(proof)["kty"] == "EC" for proof in proofs)
    assert all(jwt_claims(proof)["nonce"] for proof in proofs)
    assert "d" not in result["publicJwk"]
    # The library's own RFC 7638 thumbprint of its key is what the server bound the tokens to.
    stored = await mongo_client[settings.mongodb_db].oauth2_tokens.find_one({"_id": hash_secret(access_of(result))})
    assert stored["jkt"] == stored["refresh_jkt"] == result["jkt"]

    access, me = result["refreshed"]["access_token"], f"{live_server}/api/v1/users/me"
    last_proof = proofs[-1]  # the library's proof that just succeeded with `access`
    async with aiohttp.ClientSession() as http:

        async def refused(method: str, url: str, headers: dict[str, str]) -> str:
            async with http.request(method, url, headers=headers) as response:
                assert response.status == 401, (method, url, await response.text())
                challenge = response.headers["WWW-Authenticate"]
                assert challenge.startswith("DPoP "), challenge
                return challenge

        dpop = {"Authorization": f"DPoP {access}"}
        replay = await refused("GET", me, {**dpop, "DPoP": last_proof})
        assert 'error="invalid_dpop_proof"' in replay
        assert "replayed" in replay
        assert "htu" in await refused("GET", f"{me}/sessions", {**dpop, "DPoP": last_proof})
        assert "htm" in await refused("GET", me, {**dpop, "DPoP": result["unsentDelete"]})
        assert 'error="invalid_dpop_proof"' in await refused("GET", me, dpop)  # no proof
        assert 'error="invalid_token"' in await refused("GET", me, {"Authorization": f"Bearer {access}"})
        other = DPoPKey().proof("GET", me, access_token=access)
        assert "key the access token is bound to" in await refused("GET", me, {**dpop, "DPoP": other})

        # The public client's refresh token is bound to the library's key: another key is refused.
        token_url = f"{live_server}/auth/oauth2/token"
        form = {"grant_type": "refresh_token", "refresh_token": result["refreshed"]["refresh_token"]}
        form["client_id"] = "documentation"
        async with http.post(token_url, data=form, headers={"DPoP": DPoPKey().proof("POST", token_url)}) as first:
            nonce = first.headers["DPoP-Nonce"]
        proof = DPoPKey().proof("POST", token_url, nonce=nonce)
        async with http.post(token_url, data=form, headers={"DPoP": proof}) as response:
            assert response.status == 400
            assert (await response.json())["error"] == "invalid_dpop_proof"
