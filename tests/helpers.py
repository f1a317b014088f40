"""Plain helpers shared by the tests: client authentication, guarded patches, the authorization-code flow."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pyotp
from aiohttp.test_utils import TestClient, unused_port

from service.config import Settings

# The media type of every error outside the OAuth2 endpoints (RFC 9457).
PROBLEM = "application/problem+json"


def basic(client_id: str, secret: str) -> dict[str, str]:
    """HTTP Basic client authentication (RFC 6749 2.3.1)."""
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def with_current_password(op: dict[str, Any], password: str = "w") -> list[dict[str, Any]]:
    """A JSON Patch that proves the caller's password before a guarded change (email, password)."""
    return [{"op": "test", "path": "/current_password", "value": password}, op]


@contextlib.contextmanager
def service_processes(settings: Settings, count: int, log_dir: Path, **env: str) -> Iterator[list[str]]:
    """`count` real `python -m service serve` processes on the test's database (not mongomock, which
    lives in this process); yields their base URLs and stops them after. Cheap hashing by default."""
    ports = [unused_port() for _ in range(count)]
    environment = {
        **os.environ,
        "MONGODB_URL": str(settings.mongodb_url),
        "MONGODB_DB": settings.mongodb_db,
        "ARGON2_TIME_COST": "1",
        "ARGON2_MEMORY_KIB": "64",
        "LOG_LEVEL": "WARNING",
        "MAIL_DEV": "true",  # a real database without SMTP_URL: mail to files in the log directory
        "MAIL_DIR": str(log_dir / "mail"),
        **env,
    }
    with contextlib.ExitStack() as stack:
        processes = []
        for port in ports:
            log = stack.enter_context((log_dir / f"server{port}.log").open("wb"))
            command = [sys.executable, "-m", "service", "serve", "--port", str(port)]
            processes.append(
                stack.enter_context(subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=log))
            )
        try:
            yield [f"http://127.0.0.1:{port}" for port in ports]
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=30)


async def wait_ready(http: Any, base: str, seconds: float = 30) -> None:  # http: an aiohttp ClientSession
    """Poll `base`/readyz until the server answers 200 (a server started as its own process)."""
    for _ in range(int(seconds * 10)):
        try:
            async with http.get(f"{base}/readyz") as ready:
                if ready.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{base} did not become ready")


async def stored_members(db: Any, team: dict[str, Any]) -> list[dict[str, Any]]:  # db: the test's Motor database
    """A team's membership documents, as stored."""
    return await db.memberships.find({"team_id": team["_id"]}).to_list(None)


# --- the authorization-code flow through the sign-in page --------------------------------------

REDIRECT = "http://127.0.0.1:8080/api/v1/static/oauth2-redirect.html"
AUTHORIZE = "/auth/oauth2/authorize"


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def query(challenge: str | None, **extra: str) -> dict[str, str]:
    params = {
        "response_type": "code",
        "client_id": "documentation",
        "redirect_uri": REDIRECT,
        "state": "xyz",
        "scope": "users:read",
    }
    if challenge:
        params.update(code_challenge=challenge, code_challenge_method="S256")
    params.update(extra)
    return {k: v for k, v in params.items() if v != ""}


async def open_page(client: TestClient, params: dict[str, str]):
    response = await client.get(f"{AUTHORIZE}?{urlencode(params)}", allow_redirects=False)
    return response, await response.text()


def form_of(html: str) -> dict[str, str]:
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', html))


async def decide(
    client: TestClient, html: str, action: str = "approve", username: str = "user", password: str = "w", **override: str
):
    form = {**form_of(html), "action": action, "username": username, "password": password, **override}
    return await client.post(AUTHORIZE, data=form, allow_redirects=False)


def redirect_params(response) -> dict[str, str]:
    """The parameters of a redirect back to the client, but `iss` (RFC 9207), checked to name this server."""
    location = response.headers["Location"]
    assert location.startswith(REDIRECT)
    params = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert params.pop("iss") == f"http://{urlsplit(str(response.url)).netloc}", location
    return params


async def get_code(client: TestClient, challenge: str) -> str:
    """A code from a fresh sign-in on the page (any earlier session of this test client is dropped)."""
    client.session.cookie_jar.clear()
    _, html = await open_page(client, query(challenge))
    response = await decide(client, html)
    assert response.status == 303  # after the form's POST (the browser follows with a GET)
    params = redirect_params(response)
    assert params["state"] == "xyz"
    return params["code"]


def exchange_form(code: str, verifier: str | None, **extra: str) -> dict[str, str]:
    """The token request that exchanges `code` for the documentation client."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": "documentation",
        **extra,
    }
    if verifier:
        form["code_verifier"] = verifier
    return form


async def exchange(client: TestClient, code: str, verifier: str | None, **extra: str):
    return await client.post("/auth/oauth2/token", data=exchange_form(code, verifier, **extra))


# --- the second factor (TOTP) ----------------------------------------------------------------------


def totp_code(secret: str, offset: int = 0) -> str:
    """The 6-digit code of the time step `offset` steps from now (RFC 6238, 30-second steps)."""
    return str(pyotp.TOTP(secret).generate_otp(int(time.time() // 30) + offset))


async def steady_step(margin: float = 3.0) -> None:
    """Wait until at least `margin` seconds are left in the current 30-second step, so a code computed
    now is checked in the same step (at most `margin` seconds of waiting)."""
    left = 30 - time.time() % 30
    if left < margin:
        await asyncio.sleep(left + 0.05)


async def enroll_totp(client: TestClient, headers: dict[str, str], password: str = "w") -> tuple[str, list[str]]:
    """Enroll and confirm a TOTP second factor through the API; the secret and the recovery codes.
    The confirmation uses the previous step's code, so the current one is still unused."""
    await steady_step()
    started = await client.post("/api/v1/users/me/mfa/totp", json={"current_password": password}, headers=headers)
    assert started.status == 201, await started.text()
    secret = (await started.json())["secret"]
    confirmed = await client.post(
        "/api/v1/users/me/mfa/totp/confirm", json={"code": totp_code(secret, -1)}, headers=headers
    )
    assert confirmed.status == 200, await confirmed.text()
    return secret, (await confirmed.json())["recovery_codes"]


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, unverified (tests that check signatures use authlib)."""
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


# --- mail: what the app queued in the outbox -----------------------------------------------------

_LINK = re.compile(r"https?://[^\s<>\"]+")


async def mail_to(db: Any, address: str) -> list[dict[str, Any]]:  # db: the test's Motor database
    """The messages queued for `address` (any state: queued, sent or failed), newest first."""
    found = await db.outbox.find({"to": address}).to_list(None)
    return sorted(found, key=lambda message: (message["created"], message["_id"]), reverse=True)


def link_in(message: dict[str, Any]) -> str:
    """The one link of a queued message's text part."""
    links = _LINK.findall(message["text"])
    assert len(links) == 1, links
    return links[0]


def token_in(message: dict[str, Any]) -> str:
    """The `token` parameter of the link in a queued message."""
    return parse_qs(urlsplit(link_in(message)).query)["token"][0]


def hidden_field(html: str, name: str) -> str:
    """The value of a page form's hidden field `name` (`csrf_token`, `token`)."""
    found = re.search(rf'<input type="hidden" name="{re.escape(name)}" value="([^"]*)">', html)
    assert found, f"no hidden field {name}"
    return found.group(1)


def device_decision(html: str, action: str = "approve", **fields: str) -> dict[str, str]:
    """The /auth/device decision form of the consent page `html`: its CSRF token and user code, `action`
    and what the step asks for (`username` and `password`, `signin_token` and `otp`, or `step`)."""
    return {
        "csrf_token": hidden_field(html, "csrf_token"),
        "user_code": hidden_field(html, "user_code"),
        **fields,
        "action": action,
    }


async def past_refresh_grace(db: Any, refresh_token: str, seconds: int = 60) -> None:
    """Make a rotated-out refresh token's rotation `seconds` older: past REFRESH_REUSE_GRACE (default 10 s),
    where presenting it again is a replay, without sleeping."""
    from datetime import timedelta

    from service.crypto import hash_secret

    found = await db.oauth2_tokens.find_one({"refresh_hash": hash_secret(refresh_token), "rotated": True})
    assert found is not None, "the refresh token was not rotated out"
    await db.oauth2_tokens.update_one(
        {"_id": found["_id"]}, {"$set": {"revoked_at": found["revoked_at"] - timedelta(seconds=seconds)}}
    )


# --- DPoP (RFC 9449): a client's key and its proofs ------------------------------------------------


class DPoPKey:
    """A client's DPoP key (ES256 unless another joserfc key is given) and the proofs it signs.

    `proof(method, url)` is a valid proof for that request; `access_token` adds `ath`, `nonce` the server's
    nonce; `header` and `claims` override or (as None) remove members, to make malformed proofs."""

    def __init__(self, key: Any = None, alg: str = "ES256") -> None:
        from joserfc import jwk

        self.key = key if key is not None else jwk.ECKey.generate_key("P-256")
        self.alg = alg

    @property
    def jkt(self) -> str:
        return str(self.key.thumbprint())

    def public_jwk(self) -> dict[str, Any]:
        return dict(self.key.as_dict(private=False))

    def proof(
        self,
        method: str,
        url: str,
        access_token: str | None = None,
        nonce: str | None = None,
        header: dict[str, Any] | None = None,
        claims: dict[str, Any] | None = None,
    ) -> str:
        import warnings

        from joserfc import jws

        protected = {"typ": "dpop+jwt", "alg": self.alg, "jwk": self.public_jwk(), **(header or {})}
        payload: dict[str, Any] = {"jti": secrets.token_urlsafe(16), "htm": method, "htu": url, "iat": int(time.time())}
        if access_token is not None:
            payload["ath"] = (
                base64.urlsafe_b64encode(hashlib.sha256(access_token.encode()).digest()).rstrip(b"=").decode()
            )
        if nonce is not None:
            payload["nonce"] = nonce
        payload.update(claims or {})
        protected = {k: v for k, v in protected.items() if v is not None}
        payload = {k: v for k, v in payload.items() if v is not None}
        with warnings.catch_warnings():  # joserfc marks EdDSA deprecated (RFC 9864); RFC 9449 servers still take it
            warnings.simplefilter("ignore")
            return jws.serialize_compact(protected, json.dumps(payload), self.key, algorithms=[self.alg])


def plan_stages(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every stage of an explain plan (its winningPlan), the plan first, then its inputs depth first."""
    found = [plan]
    for child in [plan.get("inputStage"), *plan.get("inputStages", [])]:
        if child:
            found += plan_stages(child)
    return found
