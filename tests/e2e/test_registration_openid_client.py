"""Dynamic client registration (RFC 7591) and management (RFC 7592) driven by software nobody here
wrote: panva's `openid-client` from npm, in Node, discovers the server, registers a client (openly, or
with an initial access token) and reads it back from its registration_client_uri, each read rotating
the registration access token; openid-client 5 has no update or delete, so those go from Python with
the token the library last received, and every earlier token is refused. authlib's RFC 7591 claims
class validates what was registered."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from authlib.oauth2.rfc7591 import ClientMetadataClaims

from tests.e2e.conftest import node_json, npm_install

OPENID_CLIENT = "openid-client@5.7.1"

# argv[2]: a JSON job. "register": discover, register, read back twice (the second read with the token
# the first returned) and try the registration's own token again (replaced: refused). "read": one
# read with the given token. Prints one JSON document on stdout.
SCRIPT = """
const { Issuer } = require("openid-client");
const job = JSON.parse(process.argv[2]);

function refusal(error) {
  return { name: error.name, error: error.error || null, status: error.response ? error.response.statusCode : null };
}

(async () => {
  const issuer = await Issuer.discover(job.issuer);
  if (job.command === "read") {
    const client = await issuer.Client.fromUri(job.uri, job.token);
    console.log(JSON.stringify({ read: client.metadata }));
    return;
  }
  const options = job.initialAccessToken ? { initialAccessToken: job.initialAccessToken } : {};
  const registered = await issuer.Client.register(job.metadata, options);
  const uri = registered.registration_client_uri;
  const read = await issuer.Client.fromUri(uri, registered.registration_access_token);
  const reread = await issuer.Client.fromUri(uri, read.registration_access_token);
  let stale;
  try {
    await issuer.Client.fromUri(uri, registered.registration_access_token);
    stale = { accepted: true };
  } catch (error) {
    stale = refusal(error);
  }
  console.log(JSON.stringify({
    issuer: issuer.metadata, registered: registered.metadata, read: read.metadata, reread: reread.metadata, stale,
  }));
})().catch((error) => {
  console.log(JSON.stringify({ failed: String(error), ...refusal(error) }));
  process.exitCode = 1;
});
"""


@pytest.fixture(scope="session")
def openid_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with openid-client installed from npm by this test's own setup, and the script."""
    folder = npm_install(tmp_path_factory, "openid-client", OPENID_CLIENT)
    (folder / "registration.js").write_text(SCRIPT)
    return folder


async def run_script(folder: Path, job: dict[str, Any]) -> dict[str, Any]:
    return await node_json(folder, "registration.js", job)


@pytest.fixture
def policy() -> str:
    return "open"


@pytest.fixture
def settings(settings, policy: str):
    return dataclasses.replace(settings, registration=policy)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def rfc7591_claims(metadata: dict[str, Any]) -> None:
    """authlib's RFC 7591 client metadata claims accept what the server answered."""
    ClientMetadataClaims(
        {k: v for k, v in metadata.items() if k in ClientMetadataClaims.REGISTERED_CLAIMS}, {}
    ).validate()


async def initial_access_token(http: aiohttp.ClientSession, base: str) -> str:
    form = {"grant_type": "password", "username": "root", "password": "q", "client_id": "documentation"}
    async with http.post(f"{base}/auth/oauth2/token", data=form) as response:
        assert response.status == 200, await response.text()
        access = (await response.json())["access_token"]
    async with http.post(
        f"{base}/api/v1/auth/registration_tokens/", json={"max_uses": 1}, headers=bearer(access)
    ) as response:
        assert response.status == 201, await response.text()
        return str((await response.json())["token"])


@pytest.mark.parametrize(
    ("policy", "method"),
    [("open", "none"), ("token", "client_secret_basic")],
)
async def test_openid_client_registers_and_reads_back_with_rotating_tokens(
    live_server: str, openid_client: Path, policy: str, method: str
) -> None:
    metadata = {
        "client_name": "openid-client e2e",
        "redirect_uris": [f"{live_server}/cb", "http://127.0.0.1/native-cb"],
        "post_logout_redirect_uris": [f"{live_server}/bye"],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": method,
        "scope": "openid users:read",
    }
    async with aiohttp.ClientSession() as http:
        job: dict[str, Any] = {"command": "register", "issuer": live_server, "metadata": metadata}
        if policy == "token":
            job["initialAccessToken"] = await initial_access_token(http, live_server)
        result = await run_script(openid_client, job)
        print(json.dumps(result, indent=2))  # what openid-client got, for the -rA report
        assert "failed" not in result, result

        assert result["issuer"]["issuer"] == live_server
        assert result["issuer"]["registration_endpoint"] == f"{live_server}/auth/oauth2/register"
        registered, read, reread = result["registered"], result["read"], result["reread"]
        for name, value in metadata.items():  # what was asked for round-trips through both answers
            assert registered[name] == value, name
            assert read[name] == value, name
            assert reread[name] == value, name
        client_id = registered["client_id"]
        uri = registered["registration_client_uri"]
        assert uri == f"{live_server}/auth/oauth2/register/{client_id}"
        assert read["client_id"] == reread["client_id"] == client_id
        assert read["client_id_issued_at"] == registered["client_id_issued_at"]
        if method == "none":
            assert "client_secret" not in registered
        else:
            assert registered["client_secret"]
            assert registered["client_secret_expires_at"] == 0
            assert "client_secret" not in read  # shown once
        rfc7591_claims(registered)
        rfc7591_claims(read)

        # Each read gave the library a new token, and the registration's own token is refused by now.
        tokens = [registered["registration_access_token"], read["registration_access_token"]]
        tokens.append(reread["registration_access_token"])
        assert len(set(tokens)) == 3
        assert result["stale"] == {"name": "OPError", "error": "invalid_token", "status": 401}

        # openid-client 5 has no update: PUT with the token the library last received.
        current = tokens[-1]
        replacement = {**metadata, "client_id": client_id, "client_name": "renamed by PUT", "scope": "openid"}
        async with http.put(uri, json=replacement, headers=bearer(current)) as response:
            assert response.status == 200, await response.text()
            updated = await response.json()
        assert updated["client_name"] == "renamed by PUT"
        assert updated["scope"] == "openid"
        rfc7591_claims(updated)
        assert updated["registration_access_token"] not in tokens
        tokens.append(updated["registration_access_token"])

        # The library reads the update back with the token the PUT returned.
        again = (
            await run_script(openid_client, {"command": "read", "issuer": live_server, "uri": uri, "token": tokens[-1]})
        )["read"]
        assert again["client_name"] == "renamed by PUT"
        assert again["redirect_uris"] == metadata["redirect_uris"]
        tokens.append(again["registration_access_token"])
        assert len(set(tokens)) == 5

        # Every earlier token is refused for every method, and changes nothing.
        for stale in tokens[:-1]:
            for verb, body in (("GET", None), ("PUT", {**replacement, "client_name": "thief"}), ("DELETE", None)):
                async with http.request(verb, uri, json=body, headers=bearer(stale)) as response:
                    assert response.status == 401, (verb, await response.text())
                    assert (await response.json())["error"] == "invalid_token"
                    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'

        async with http.get(uri, headers=bearer(tokens[-1])) as response:  # the newest one still works
            assert response.status == 200, await response.text()
            unchanged = await response.json()
        assert unchanged["client_name"] == "renamed by PUT"
        assert {k: unchanged[k] for k in metadata if k != "client_name" and k != "scope"} == {
            k: metadata[k] for k in metadata if k != "client_name" and k != "scope"
        }
        tokens.append(unchanged["registration_access_token"])

        # openid-client 5 has no delete either: DELETE with the newest token, after which nothing works.
        async with http.delete(uri, headers=bearer(tokens[-1])) as response:
            assert response.status == 204, await response.text()
        async with http.get(uri, headers=bearer(tokens[-1])) as response:
            assert response.status == 401
