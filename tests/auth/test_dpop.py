"""DPoP (RFC 9449) through HTTP: bound tokens from the token endpoint, proofs at the API, the refusals."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from joserfc import jwk
from yarl import URL

from service.auth.dpop import DPOP
from tests.helpers import (
    DPoPKey,
    basic,
    decide,
    exchange_form,
    get_code,
    open_page,
    pkce,
    query,
    redirect_params,
    service_processes,
    wait_ready,
)

TOKEN = "/auth/oauth2/token"
ME = "/api/v1/users/me"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A JWT built by hand (for algorithms a JOSE library will not sign with)."""
    return ".".join((b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)))


async def token_request(
    client: TestClient, form: dict[str, str], key: DPoPKey, headers: dict[str, str] | None = None
) -> Any:
    """A token request with a proof, retried once with the server's nonce (RFC 9449 8) as a client does."""
    url = str(client.make_url(TOKEN))
    response = await client.post(TOKEN, data=form, headers={"DPoP": key.proof("POST", url), **(headers or {})})
    if response.status == 400 and (await response.json())["error"] == "use_dpop_nonce":
        nonce = response.headers["DPoP-Nonce"]
        proof = key.proof("POST", url, nonce=nonce)
        response = await client.post(TOKEN, data=form, headers={"DPoP": proof, **(headers or {})})
    return response


async def bound_tokens(client: TestClient, key: DPoPKey) -> dict[str, Any]:
    """DPoP-bound tokens for `user` through the authorization code flow with PKCE (public client)."""
    verifier, challenge = pkce()
    code = await get_code(client, challenge)
    response = await token_request(client, exchange_form(code, verifier), key)
    assert response.status == 200, await response.text()
    assert response.headers["DPoP-Nonce"]  # the next nonce to use
    return dict(await response.json())


async def call_me(client: TestClient, token: str, proof: str | None, scheme: str = "DPoP") -> Any:
    headers = {"Authorization": f"{scheme} {token}"}
    if proof is not None:
        headers["DPoP"] = proof
    return await client.get(ME, headers=headers)


def challenge_error(response: Any) -> str:
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("DPoP "), challenge
    assert 'algs="ES256 RS256 EdDSA"' in challenge
    return challenge.split('error="')[1].split('"')[0]


async def test_code_flow_gives_bound_tokens_that_work_only_with_a_proof(client: TestClient, seeded, db) -> None:
    key = DPoPKey()
    tokens = await bound_tokens(client, key)
    assert tokens["token_type"] == "DPoP"
    stored = await db.oauth2_tokens.find_one({"client_id": "documentation", "jkt": {"$exists": True}})
    assert stored["jkt"] == key.jkt
    assert stored["refresh_jkt"] == key.jkt  # a public client: its refresh token is bound too
    access, url = tokens["access_token"], str(client.make_url(ME))

    proof = key.proof("GET", url, access_token=access)
    ok = await call_me(client, access, proof)
    assert ok.status == 200, await ok.text()
    assert (await ok.json())["username"] == "user"

    replayed = await call_me(client, access, proof)  # the same proof again (same jti)
    assert replayed.status == 401
    assert challenge_error(replayed) == "invalid_dpop_proof"
    assert "replayed" in (await replayed.json())["detail"]

    # A query string is not part of htu (RFC 9449 4.3): a proof for the bare URI fits
    query_ok = await client.get(
        f"{ME}?x=1", headers={"Authorization": f"DPoP {access}", "DPoP": key.proof("GET", url, access)}
    )
    assert query_ok.status == 200


async def test_the_api_refuses_what_does_not_prove_possession(client: TestClient, seeded) -> None:
    key = DPoPKey()
    access = (await bound_tokens(client, key))["access_token"]
    url = str(client.make_url(ME))
    refusals = {
        "as a bearer token": await call_me(client, access, None, scheme="Bearer"),
        "as a bearer token with a proof": await call_me(client, access, key.proof("GET", url, access), "Bearer"),
        "without a proof": await call_me(client, access, None),
        "proof for another URL": await call_me(client, access, key.proof("GET", url + "/sessions", access)),
        "proof for another method": await call_me(client, access, key.proof("POST", url, access)),
        "proof with another key": await call_me(client, access, DPoPKey().proof("GET", url, access)),
        "proof without ath": await call_me(client, access, key.proof("GET", url)),
        "proof with another token's ath": await call_me(client, access, key.proof("GET", url, "another")),
        "two proofs": await client.get(
            ME,
            headers=[
                ("Authorization", f"DPoP {access}"),
                ("DPoP", key.proof("GET", url, access)),
                ("DPoP", key.proof("GET", url, access)),
            ],
        ),
    }
    for name, response in refusals.items():
        assert response.status == 401, name
        expected = "invalid_token" if "bearer" in name else ("invalid_dpop_proof")
        assert challenge_error(response) == expected, name
    # and the token still works with a right proof: none of the refusals used it up
    assert (await call_me(client, access, key.proof("GET", url, access))).status == 200


async def test_bearer_tokens_keep_working_and_are_not_dpop_tokens(client: TestClient, bearer, login) -> None:
    headers = await bearer("user")
    plain = await client.get(ME, headers=headers)
    assert plain.status == 200
    assert "DPoP-Nonce" not in plain.headers
    token = headers["Authorization"].split()[1]
    as_dpop = await call_me(client, token, DPoPKey().proof("GET", str(client.make_url(ME)), token))
    assert as_dpop.status == 401
    assert challenge_error(as_dpop) == "invalid_token"
    no_token = await client.get(ME)
    assert no_token.headers["WWW-Authenticate"].startswith("Bearer")


async def test_refresh_of_a_public_client_needs_the_same_key(client: TestClient, seeded) -> None:
    key = DPoPKey()
    tokens = await bound_tokens(client, key)
    form = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": "documentation"}

    no_proof = await client.post(TOKEN, data=form)
    assert no_proof.status == 400
    assert (await no_proof.json())["error"] == "invalid_dpop_proof"
    other_key = await token_request(client, form, DPoPKey())
    assert other_key.status == 400
    assert (await other_key.json())["error"] == "invalid_dpop_proof"

    refreshed = await token_request(client, form, key)  # the refusals did not burn the refresh token
    assert refreshed.status == 200, await refreshed.text()
    body = await refreshed.json()
    assert body["token_type"] == "DPoP"
    url = str(client.make_url(ME))
    used = await call_me(client, body["access_token"], key.proof("GET", url, body["access_token"]))
    assert used.status == 200


async def test_malformed_proofs_are_refused_at_the_token_endpoint(client: TestClient, login) -> None:
    key = DPoPKey()
    url = str(client.make_url(TOKEN))
    now = int(time.time())
    claims = {"jti": "j1", "htm": "POST", "htu": url, "iat": now}
    private = key.key.as_dict(private=True)
    proofs = {
        "bad typ": key.proof("POST", url, header={"typ": "JWT"}),
        "no typ": key.proof("POST", url, header={"typ": None}),
        "alg none": unsigned({"typ": "dpop+jwt", "alg": "none", "jwk": key.public_jwk()}, claims),
        "alg HS256": unsigned({"typ": "dpop+jwt", "alg": "HS256", "jwk": key.public_jwk()}, claims, b"x" * 32),
        "private key in the header": key.proof("POST", url, header={"jwk": private}),
        "no jwk": key.proof("POST", url, header={"jwk": None}),
        "alg ES384": DPoPKey(jwk.ECKey.generate_key("P-384"), "ES384").proof("POST", url),
        "jwk of another curve": unsigned(
            {"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk.ECKey.generate_key("P-384").as_dict(private=False)},
            claims,
            b"x" * 64,
        ),
        "short RSA key": unsigned(
            {"typ": "dpop+jwt", "alg": "RS256", "jwk": {"kty": "RSA", "n": b64(b"\xc1" * 128), "e": "AQAB"}},
            claims,
            b"x" * 128,
        ),
        "huge header": key.proof("POST", url, header={"kid": "x" * 4000}),
        "iat 61 s ago": key.proof("POST", url, claims={"iat": now - 61}),
        "iat 61 s ahead": key.proof("POST", url, claims={"iat": now + 61}),
        "no jti": key.proof("POST", url, claims={"jti": None}),
        "wrong htm": key.proof("GET", url),
        "wrong htu": key.proof("POST", url.replace("/token", "/revoke")),
        "bad signature": key.proof("POST", url)[:-4] + "AAAA",
        "not a JWS": "not.a.jws.at.all",
        "garbage header": "e30K!.e30.AA",
        "deeply nested header": b64(b"[" * 3000) + ".e30.AA",
        "signature with characters outside base64url": key.proof("POST", url) + "!!",
    }
    form = {"grant_type": "password", "username": "user", "password": "w", "client_id": "documentation"}
    for name, proof in proofs.items():
        response = await client.post(TOKEN, data=form, headers={"DPoP": proof})
        assert response.status == 400, name
        body = await response.json()
        assert body["error"] == "invalid_dpop_proof", (name, body)
    # the same proof twice at the token endpoint: the second is a replay (nonces aside)
    nonce = (await client.post(TOKEN, data=form, headers={"DPoP": key.proof("POST", url)})).headers["DPoP-Nonce"]
    proof = key.proof("POST", url, nonce=nonce)
    first = await client.post(TOKEN, data=form, headers={"DPoP": proof})
    assert first.status == 200
    second = await client.post(TOKEN, data=form, headers={"DPoP": proof})
    assert second.status == 400
    assert (await second.json())["error"] == "invalid_dpop_proof"


async def test_the_nonce_flow_at_the_token_endpoint_and_the_api(client: TestClient, app, seeded) -> None:
    key = DPoPKey()
    url = str(client.make_url(TOKEN))
    form = {"grant_type": "password", "username": "user", "password": "w", "client_id": "documentation"}
    first = await client.post(TOKEN, data=form, headers={"DPoP": key.proof("POST", url)})
    assert first.status == 400
    assert (await first.json())["error"] == "use_dpop_nonce"
    nonce = first.headers["DPoP-Nonce"]
    stale = await client.post(TOKEN, data=form, headers={"DPoP": key.proof("POST", url, nonce="stale")})
    assert (await stale.json())["error"] == "use_dpop_nonce"
    second = await client.post(TOKEN, data=form, headers={"DPoP": key.proof("POST", url, nonce=nonce)})
    assert second.status == 200, await second.text()
    access = (await second.json())["access_token"]

    app[DPOP].policy = "all"  # DPOP_NONCES=all: the API demands one too
    me = str(client.make_url(ME))
    asked = await call_me(client, access, key.proof("GET", me, access))
    assert asked.status == 401
    assert challenge_error(asked) == "use_dpop_nonce"
    api_nonce = asked.headers["DPoP-Nonce"]
    answered = await call_me(client, access, key.proof("GET", me, access, nonce=api_nonce))
    assert answered.status == 200, await answered.text()
    following = answered.headers["DPoP-Nonce"]  # the nonce to use next (RFC 9449 9)
    again = await call_me(client, access, key.proof("GET", me, access, nonce=following))
    assert again.status == 200


async def test_a_client_registered_for_dpop_must_send_a_proof_and_introspection_shows_the_key(
    client: TestClient, register_client
) -> None:
    made = await register_client("user", dpop_bound_access_tokens=True)
    auth = basic(made["client_id"], made["client_secret"])
    form = {"grant_type": "client_credentials"}
    refused = await client.post(TOKEN, data=form, headers=auth)
    assert refused.status == 400
    assert (await refused.json())["error"] == "invalid_dpop_proof"

    key = DPoPKey()
    issued = await token_request(client, form, key, headers=auth)
    assert issued.status == 200, await issued.text()
    body = await issued.json()
    assert body["token_type"] == "DPoP"
    seen = await client.post("/auth/oauth2/introspect", data={"token": body["access_token"]}, headers=auth)
    introspected = await seen.json()
    assert introspected["active"] is True
    assert introspected["token_type"] == "DPoP"
    assert introspected["cnf"] == {"jkt": key.jkt}


async def test_metadata_names_the_proof_algorithms(client: TestClient) -> None:
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        metadata = await (await client.get(path)).json()
        assert metadata["dpop_signing_alg_values_supported"] == ["ES256", "RS256", "EdDSA"]


async def test_eddsa_and_rs256_proofs_are_accepted(client: TestClient, seeded) -> None:
    form = {"grant_type": "password", "username": "user", "password": "w", "client_id": "documentation"}
    for key in (DPoPKey(jwk.OKPKey.generate_key("Ed25519"), "EdDSA"), DPoPKey(jwk.RSAKey.generate_key(2048), "RS256")):
        issued = await token_request(client, form, key)
        assert issued.status == 200, (key.alg, await issued.text())
        access = (await issued.json())["access_token"]
        used = await call_me(client, access, key.proof("GET", str(client.make_url(ME)), access))
        assert used.status == 200, key.alg


async def test_one_proof_sent_many_times_at_once_is_taken_once(client: TestClient, seeded) -> None:
    """The replay cache's group commit: copies of one proof and fresh proofs arriving together go out in
    shared inserts, and exactly the first copy is taken."""
    key = DPoPKey()
    access = (await bound_tokens(client, key))["access_token"]
    url = str(client.make_url(ME))
    proof = key.proof("GET", url, access)
    fresh = [key.proof("GET", url, access) for _ in range(5)]
    answers = await asyncio.gather(*(call_me(client, access, p) for p in [proof] * 6 + fresh))
    statuses = [answer.status for answer in answers]
    assert statuses[:6].count(200) == 1, statuses
    assert statuses[:6].count(401) == 5, statuses
    assert statuses[6:] == [200] * 5, statuses


async def test_replays_and_nonces_are_shared_by_every_process(backend: str, settings, seeded, tmp_path: Path) -> None:
    """Two real `serve` processes on one database, one public URL (so a proof fits either) and nonces at the
    API too: a nonce one gave is good at the other, a proof one took is a replay at the other, and of one
    proof sent to both at once exactly one passes."""
    if backend != "secantus":
        pytest.skip("two processes need a database both can reach (--backend=secantus)")
    key, public = DPoPKey(), "http://dpop.test"
    form = {"grant_type": "password", "username": "user", "password": "w", "client_id": "documentation"}
    env = {"DPOP_NONCES": "all", "PUBLIC_URL": public, "API_RATE_BURST": "100000"}
    with service_processes(settings, 2, tmp_path, **env) as (one, two):
        async with aiohttp.ClientSession() as http:
            for base in (one, two):
                await wait_ready(http, base)
            async with http.post(f"{one}{TOKEN}", data=form, headers={"DPoP": key.proof("POST", public + TOKEN)}) as r:
                assert (await r.json())["error"] == "use_dpop_nonce"
                nonce = r.headers["DPoP-Nonce"]  # given by one, taken by two
            proof = key.proof("POST", public + TOKEN, nonce=nonce)
            async with http.post(f"{two}{TOKEN}", data=form, headers={"DPoP": proof}) as r:
                assert r.status == 200, await r.text()
                access = (await r.json())["access_token"]

            async def me(base: str, proof: str) -> int:
                async with http.get(f"{base}{ME}", headers={"Authorization": f"DPoP {access}", "DPoP": proof}) as r:
                    return r.status

            for _ in range(10):
                proof = key.proof("GET", public + ME, access, nonce=nonce)
                assert await me(one, proof) == 200
                assert await me(two, proof) == 401  # taken by the other process
                proof = key.proof("GET", public + ME, access, nonce=nonce)
                assert sorted(await asyncio.gather(me(one, proof), me(two, proof))) == [200, 401]


async def test_htu_is_the_uri_as_sent_percent_encoding_included(client: TestClient, seeded) -> None:
    """A path with a percent-encoded character: the proof names it as the client sent it."""
    key = DPoPKey()
    access = (await bound_tokens(client, key))["access_token"]
    path = "/api/v1/users/me/sessions/x%20y"
    url = URL(str(client.make_url("/")).rstrip("/") + path, encoded=True)
    proof = key.proof("DELETE", str(url), access)
    response = await client.session.delete(url, headers={"Authorization": f"DPoP {access}", "DPoP": proof})
    assert response.status != 401, await response.text()  # past authentication: the proof fits
    other = key.proof("DELETE", str(url).replace("%20", "-"), access)
    refused = await client.session.delete(url, headers={"Authorization": f"DPoP {access}", "DPoP": other})
    assert refused.status == 401


async def test_userinfo_takes_a_bound_token_with_its_proof_only(client: TestClient, seeded) -> None:
    key = DPoPKey()
    form = {"grant_type": "password", "username": "user", "password": "w", "client_id": "documentation"}
    issued = await token_request(client, {**form, "scope": "openid profile"}, key)
    access = (await issued.json())["access_token"]
    path = "/auth/oauth2/userinfo"
    url = str(client.make_url(path))
    answered = await client.get(
        path, headers={"Authorization": f"DPoP {access}", "DPoP": key.proof("GET", url, access)}
    )
    assert answered.status == 200, await answered.text()
    assert (await answered.json())["preferred_username"] == "user"
    as_bearer = await client.get(path, headers={"Authorization": f"Bearer {access}"})
    assert as_bearer.status == 401
    assert challenge_error(as_bearer) == "invalid_token"
    in_a_form = await client.post(path, data={"access_token": access})
    assert in_a_form.status == 401


async def test_a_code_asked_for_with_dpop_jkt_is_exchanged_only_with_that_key(client: TestClient, seeded) -> None:
    """RFC 9449 10: `dpop_jkt` on the authorization request binds the code to the key; it survives the
    sign-in form's round trip, and an exchange without that key is refused without using the code up."""
    key = DPoPKey()
    verifier, challenge = pkce()
    malformed, html = await open_page(client, query(challenge, dpop_jkt="not a thumbprint"))
    assert malformed.status in (302, 303)
    assert redirect_params(malformed)["error"] == "invalid_request"
    client.session.cookie_jar.clear()
    _, html = await open_page(client, query(challenge, dpop_jkt=key.jkt))
    code = redirect_params(await decide(client, html))["code"]
    form = exchange_form(code, verifier)
    for refused in (await client.post(TOKEN, data=form), await token_request(client, form, DPoPKey())):
        assert refused.status == 400
        assert (await refused.json())["error"] == "invalid_dpop_proof"
    issued = await token_request(client, form, key)
    assert issued.status == 200, await issued.text()
    assert (await issued.json())["token_type"] == "DPoP"
