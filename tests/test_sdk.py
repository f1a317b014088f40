"""The Python SDK (clients/python) against the real server, and against stub servers for faults.

The SDK is imported from its source tree (it is its own package, installable without the server); one
test installs it into a fresh virtualenv from PyPI's aiohttp, as a consumer would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

ROOT = Path(__file__).resolve().parent.parent
SDK = ROOT / "clients" / "python"
sys.path.insert(0, str(SDK / "src"))

from restful_api_client import (  # noqa: E402  (the SDK's source tree, added above)
    AuthorizationCodePKCE,
    Client,
    ClientCredentials,
    ClientError,
    Conflict,
    DeviceCode,
    NotFound,
    OAuthError,
    Password,
    PreconditionFailed,
    RateLimited,
    RetryPolicy,
    ServiceUnavailable,
    StaticToken,
    TransportError,
    Unauthorized,
    ValidationError,
    etag_of,
)
from restful_api_client.models import IDEMPOTENCY_KEYED, DeviceAuthorization  # noqa: E402
from restful_api_client.transport import retry_after  # noqa: E402
from yarl import URL  # noqa: E402

from service.audit.trail import AUDITOR  # noqa: E402
from tests.helpers import form_of  # noqa: E402


@pytest.fixture
def settings(settings):
    """Rate limits out of the way: 20 tasks at once are this module's point, not the limiter's."""
    return dataclasses.replace(settings, oauth_rate_burst=100_000, api_rate_burst=100_000)


@pytest.fixture
def base(client: TestClient, seeded) -> str:
    """The test server's root URL, with the development fixtures (user/w, root/q, `documentation`)."""
    return str(client.make_url("")).rstrip("/")


class Sleeps:
    """A `RetryPolicy.sleep` that records the waits and does not wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def quick(**changes: Any) -> tuple[RetryPolicy, Sleeps]:
    sleeps = Sleeps()
    return RetryPolicy(sleep=sleeps, **changes), sleeps


async def grants(app: web.Application, db, grant_type: str = "refresh_token") -> int:
    """Tokens the server issued by `grant_type`, from its audit trail (after its batched writes)."""
    await app[AUDITOR].flush()
    return await db.audit_events.count_documents({"event": "token.issued", "grant_type": grant_type})


# --- models typed from the served document -----------------------------------------------------------------


def test_committed_models_match_the_served_openapi_document(tmp_path: Path) -> None:
    """No hand-copied shapes: regenerating from `python -m service openapi` gives the committed file."""
    output = tmp_path / "models.py"
    subprocess.run(
        [sys.executable, str(SDK / "tools" / "generate.py"), "--output", str(output)], cwd=ROOT, check=True, timeout=120
    )
    committed = (SDK / "src" / "restful_api_client" / "models.py").read_text(encoding="utf-8")
    assert output.read_text(encoding="utf-8") == committed, (
        "clients/python/src/restful_api_client/models.py drifted from the served OpenAPI document: "
        "run `.venv/bin/python clients/python/tools/generate.py` and review the change"
    )


def test_the_sdk_and_its_example_are_mypy_strict_clean() -> None:
    env = {**os.environ, "MYPYPATH": str(SDK / "src")}
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--config-file", "pyproject.toml", "src", "examples/quickstart.py"],
        cwd=SDK,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- signing in, reading, paging, patching ----------------------------------------------------------------


async def test_password_sign_in_reads_the_user(base: str) -> None:
    async with Client(base, auth=Password("user", "w")) as api:
        me = await api.users.me()
        assert me["username"] == "user"
        assert etag_of(me) is not None
        assert (await api.users.get(me["id"]))["id"] == me["id"]
        with pytest.raises(NotFound) as missing:
            await api.teams.get("65f0c0ffee0000000000beef")
        assert missing.value.status == 404
        assert missing.value.title == "Not Found"


async def test_wrong_password_is_an_oauth_error(base: str) -> None:
    async with Client(base, auth=Password("user", "not the password")) as api:
        with pytest.raises(OAuthError) as refused:
            await api.users.me()
    assert refused.value.error == "invalid_grant"
    assert refused.value.status == 400


async def test_client_credentials_and_a_static_token(base: str, register_client) -> None:
    created = await register_client("user", allowed_scopes=["users:read", "teams:read"])
    async with Client(
        base, auth=ClientCredentials(created["client_id"], created["client_secret"], "users:read")
    ) as api:
        assert (await api.users.me())["username"] == "user"  # the token acts as the client's owner
        token = api.tokens.tokens
        assert token is not None
        assert token.refresh_token is None
    async with Client(base, auth=StaticToken(token.access_token)) as api:
        assert (await api.users.me())["username"] == "user"


async def test_teams_are_created_listed_across_pages_and_patched(base: str, client: TestClient) -> None:
    async with Client(base, auth=Password("user", "w")) as api:
        created = [await api.teams.create(f"Team {n}") for n in range(5)]
        assert all(etag_of(team) for team in created)
        ids = [team["id"] for team in created]
        seen = [team["id"] async for team in api.teams.list(page_size=2)]  # pages by Link: rel="next"
        assert len(seen) == len(set(seen)) >= 5  # the fixtures' teams too, none twice
        assert [team_id for team_id in seen if team_id in ids] == ids  # creation order

        patched = await api.teams.patch(created[0], [{"op": "replace", "path": "/title", "value": "Renamed"}])
        assert patched["title"] == "Renamed"
        assert etag_of(patched) not in (None, etag_of(created[0]))
        assert (await api.teams.get(created[0]["id"]))["title"] == "Renamed"

        with pytest.raises(ValidationError) as invalid:
            await api.teams.create("")
        assert invalid.value.status == 422
        assert invalid.value.errors


async def test_a_stale_patch_raises_precondition_failed_with_the_fresh_team(base: str) -> None:
    async with Client(base, auth=Password("user", "w")) as api:
        held = await api.teams.create("Original")
        elsewhere = await api.teams.patch(held, [{"op": "replace", "path": "/title", "value": "Changed elsewhere"}])
        with pytest.raises(PreconditionFailed) as stale:
            await api.teams.patch(held, [{"op": "replace", "path": "/title", "value": "Mine"}])
        assert stale.value.status == 412
        current = stale.value.current
        assert current["title"] == "Changed elsewhere"  # nothing was overwritten
        assert etag_of(current) == etag_of(elsewhere)
        retried = await api.teams.patch(current, [{"op": "replace", "path": "/title", "value": "Mine"}])
        assert retried["title"] == "Mine"


async def test_a_user_patches_their_own_profile_guarded_by_its_etag(base: str) -> None:
    async with Client(base, auth=Password("user", "w")) as api:
        me = await api.users.me()
        changed = await api.users.patch(me, [{"op": "replace", "path": "/first_name", "value": "Ada"}])
        assert changed["first_name"] == "Ada"
        with pytest.raises(PreconditionFailed) as stale:
            await api.users.patch(me, [{"op": "replace", "path": "/first_name", "value": "Grace"}])
        assert stale.value.current["first_name"] == "Ada"
        assert etag_of(stale.value.current) == etag_of(changed)


async def test_oauth2_clients_are_created_listed_used_and_deleted(base: str) -> None:
    async with Client(base, auth=Password("user", "w")) as api:
        created = await api.clients.create(
            {"client_type": "confidential", "allowed_scopes": ["users:read"], "default_scopes": ["users:read"]}
        )
        secret = created["client_secret"]
        listed = [c["client_id"] async for c in api.clients.list()]
        assert created["client_id"] in listed
        held = await api.clients.get(created["client_id"])
        assert "client_secret" not in held
        async with Client(base, auth=ClientCredentials(created["client_id"], secret)) as service:
            assert (await service.users.me())["username"] == "user"
            await api.clients.delete(held)
            with pytest.raises(NotFound):
                await api.clients.get(created["client_id"])
            assert service.tokens.tokens is not None
            service.tokens.tokens.expires_at = 0  # asks again: the deleted client may not
            with pytest.raises(OAuthError) as refused:
                await service.users.me()
            assert refused.value.error == "invalid_client"


async def test_members_are_paged(base: str) -> None:
    async with Client(base) as anonymous:  # sign-up needs no token
        users = [
            await anonymous.users.create(
                {"username": f"member{n}", "email": f"m{n}@example.com", "password": "pw-long-1"}
            )
            for n in range(11)
        ]
    async with Client(base, auth=Password("user", "w")) as api:
        team = await api.teams.create("Big team")
        for user in users:
            membership = await api.teams.add_member(team["id"], user["id"])
            assert membership["user"]["id"] == user["id"]
        members = [member async for member in api.teams.members(team["id"], page_size=4)]  # 3 pages
    assert len(members) == 12
    leader = members[0]  # the creator, first by creation time
    assert leader["is_leader"] is True
    assert {m["user"]["id"] for m in members[1:]} == {u["id"] for u in users}


# --- one refresh for 20 tasks -----------------------------------------------------------------------------


async def test_twenty_tasks_across_a_refused_token_refresh_once(base: str, app, db) -> None:
    async with Client(base, auth=Password("user", "w")) as api:
        await api.users.me()
        before = await grants(app, db)
        held = api.tokens.tokens
        assert held is not None
        first_refresh = held.refresh_token
        held.access_token = "revoked-or-garbage"  # every task's next request gets 401
        results = await asyncio.gather(*(api.users.me() for _ in range(20)))
        assert {me["username"] for me in results} == {"user"}
        assert api.tokens.refreshes == 1
        assert await grants(app, db) == before + 1
        assert api.tokens.tokens is not None
        assert api.tokens.tokens.refresh_token != first_refresh  # rotated, and the new one kept


class TestExpiry:
    @pytest.fixture
    def settings(self, settings):
        """Access tokens that really expire while the test runs."""
        return dataclasses.replace(settings, access_token_ttl=2)

    async def test_twenty_tasks_across_an_expiry_refresh_once(self, base: str, app, db) -> None:
        async with Client(base, auth=Password("user", "w"), refresh_margin=0.5) as api:
            await api.users.me()
            before = await grants(app, db)
            await asyncio.sleep(2.0)  # past the token's lifetime less the margin
            results = await asyncio.gather(*(api.users.me() for _ in range(20)))
            assert len(results) == 20
            assert api.tokens.refreshes == 1
            assert await grants(app, db) == before + 1

    async def test_an_expired_token_the_client_still_sends_is_renewed_on_401(self, base: str, db) -> None:
        async with Client(base, auth=Password("user", "w"), refresh_margin=0) as api:
            await api.users.me()
            held = api.tokens.tokens
            assert held is not None
            held.expires_at = time.time() + 3600  # the client believes it is live; the server knows better
            await asyncio.sleep(2.2)
            assert (await api.users.me())["username"] == "user"
            assert api.tokens.refreshes == 1


async def test_a_revoked_refresh_token_makes_password_sign_in_again(base: str, client: TestClient, app, db) -> None:
    async with Client(base, auth=Password("user", "w")) as api:
        await api.users.me()
        held = api.tokens.tokens
        assert held is not None
        assert held.refresh_token is not None
        form = {"token": held.refresh_token, "token_type_hint": "refresh_token", "client_id": "documentation"}
        assert (await client.post("/auth/oauth2/revoke", data=form)).status == 200
        held.access_token = "refused"
        signins = await grants(app, db, "password")
        assert (await api.users.me())["username"] == "user"  # refresh refused (invalid_grant): signed in again
        assert await grants(app, db, "password") == signins + 1
        assert api.tokens.refreshes == 1


async def test_a_refused_bare_token_is_unauthorized(base: str) -> None:
    async with Client(base, auth=StaticToken("not-a-token")) as api:
        with pytest.raises(Unauthorized) as refused:
            await api.users.me()
    assert refused.value.status == 401
    assert api.tokens.refreshes == 0


class FileStore:
    """A token store of the consumer's own: a JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.saves = 0

    async def load(self):
        from restful_api_client import TokenSet

        return TokenSet(**json.loads(self.path.read_text())) if self.path.exists() else None

    async def save(self, tokens) -> None:
        self.saves += 1
        if tokens is None:
            self.path.unlink(missing_ok=True)
        else:
            self.path.write_text(json.dumps(tokens.to_dict()))


async def test_a_token_store_carries_tokens_to_the_next_run(base: str, tmp_path: Path, app, db) -> None:
    store = FileStore(tmp_path / "tokens.json")
    async with Client(base, auth=Password("user", "w"), token_store=store) as api:
        await api.users.me()
    assert store.saves == 1
    signins = await grants(app, db, "password")
    assert signins == 1
    # The next run reuses the stored tokens: a StaticToken-like start, no password grant.
    async with Client(base, auth=Password("user", "wrong now"), token_store=store) as api:
        assert (await api.users.me())["username"] == "user"
    assert await grants(app, db, "password") == signins


class TestRateLimit:
    @pytest.fixture
    def settings(self, settings):
        """A per-token API budget of 3 requests, refilled at one every two seconds."""
        return dataclasses.replace(settings, api_rate_burst=3, api_rate_limit=0.5)

    async def test_the_budget_is_visible_and_a_429_is_waited_out(self, base: str) -> None:
        async with Client(base, auth=Password("user", "w")) as api:
            left = []
            for _ in range(3):
                await api.users.me()
                left.append(api.rate_limits["api"].remaining)
            assert left == [2, 1, 0]
            started = time.monotonic()
            assert (await api.users.me())["username"] == "user"  # 429, Retry-After honoured, then served
            assert time.monotonic() - started >= 1.5
            assert api.rate_limits["api"].remaining == 0


# --- DPoP: sender-constrained tokens by setting one option ---------------------------------------------------


async def test_dpop_bound_tokens_are_used_and_refreshed_with_proofs(base: str, client: TestClient) -> None:
    async with Client(base, auth=Password("user", "w"), dpop=True) as api:
        assert (await api.users.me())["username"] == "user"
        held = api.tokens.tokens
        assert held is not None
        assert held.token_type == "DPoP"
        stolen = held.access_token
        held.access_token = "refused"  # a refresh, with a proof from the same key (the family stays bound)
        assert (await api.users.me())["username"] == "user"
        assert api.tokens.refreshes == 1
        assert api.tokens.tokens is not None
        assert api.tokens.tokens.token_type == "DPoP"
        renewed = api.tokens.tokens.access_token
    for token in (stolen, renewed):  # without the key, the token is worth nothing
        response = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
        assert response.status == 401


class TestDPoPNonces:
    @pytest.fixture
    def settings(self, settings):
        """The server demands a nonce at the token endpoint and the API."""
        return dataclasses.replace(settings, dpop_nonces="all")

    async def test_a_demanded_nonce_is_learnt_and_the_request_sent_once_more(self, base: str) -> None:
        async with Client(base, auth=Password("user", "w"), dpop=True) as api:
            assert (await api.users.me())["username"] == "user"
            assert api.dpop is not None
            assert api.dpop.nonces  # learnt from DPoP-Nonce
            assert api.tokens.tokens is not None
            assert api.tokens.tokens.token_type == "DPoP"
            assert len(await asyncio.gather(*(api.users.me() for _ in range(5)))) == 5


class TestRotationUnderIt:
    @pytest.fixture
    def settings(self, settings):
        """Strict rotation: a rotated-out refresh token presented again revokes its family."""
        return dataclasses.replace(settings, refresh_reuse_grace=0)

    async def test_a_refresh_token_rotated_by_another_process_costs_a_sign_in_not_an_error(
        self, base: str, tmp_path: Path, app, db
    ) -> None:
        store = FileStore(tmp_path / "tokens.json")
        async with Client(base, auth=Password("user", "w"), token_store=store) as first_run:
            await first_run.users.me()
        signins = await grants(app, db, "password")
        # Two processes start from the same stored tokens; each refreshes on its own.
        async with (
            Client(base, auth=Password("user", "w"), token_store=store) as one,
            Client(base, auth=Password("user", "w"), token_store=store) as other,
        ):
            await one.users.me()
            await other.users.me()
            for api in (one, other):
                assert api.tokens.tokens is not None
                api.tokens.tokens.expires_at = 0
            assert (await one.users.me())["username"] == "user"  # rotates the stored refresh token
            assert (await other.users.me())["username"] == "user"  # presents the old one: family revoked, signs in
            assert (await one.users.me())["username"] == "user"  # its token died with the family: signs in too
        await app[AUDITOR].flush()
        assert await db.audit_events.count_documents({"event": "token.refresh_reuse_detected"}) == 1
        assert await grants(app, db, "password") == signins + 2


# --- authorization code + PKCE on a loopback redirect -------------------------------------------------------


async def test_authorization_code_with_pkce_through_a_loopback_redirect(base: str, db) -> None:
    """Registered without a port: the SDK listens on whatever port the OS gives (RFC 8252 7.3)."""
    registered = "http://127.0.0.1/callback"
    await db.oauth2_clients.update_one({"_id": "documentation"}, {"$push": {"redirect_uris": registered}})
    opened: list[str] = []

    async def person_at_the_browser(url: str) -> None:
        """What the user does in the browser: sign in on the page; the browser follows the redirect."""
        opened.append(url)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            async with browser.get(url) as page:
                form = {**form_of(await page.text()), "username": "user", "password": "w", "action": "approve"}
            async with browser.post(f"{base}/auth/oauth2/authorize", data=form, allow_redirects=False) as answer:
                assert answer.status == 303, await answer.text()
                location = answer.headers["Location"]
            assert urlsplit(location)[:3] == ("http", f"127.0.0.1:{urlsplit(location).port}", "/callback")
            async with browser.get(location) as landing:
                assert landing.status == 200
                assert "Signed in" in await landing.text()

    strategy = AuthorizationCodePKCE("documentation", "users:read", open_browser=person_at_the_browser)
    async with Client(base, auth=strategy) as api:
        assert (await api.users.me())["username"] == "user"
    assert "code_challenge_method=S256" in opened[0]


# --- the device authorization grant (RFC 8628) -------------------------------------------------------------


async def test_device_flow_polls_until_the_person_approves(base: str, client: TestClient, register_client, db) -> None:
    from service.auth.device import COLLECTION
    from service.crypto import hash_secret
    from service.db import utcnow
    from tests.helpers import device_decision, hidden_field

    tv = await register_client(
        "user",
        client_type="public",
        grant_types=["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"],
        allowed_scopes=["users:read"],
    )
    shown: list[DeviceAuthorization] = []
    waits: list[float] = []

    async def approve(user_code: str) -> None:
        """The person, on another device: the code on /auth/device, then sign-in and consent."""
        page = await client.get("/auth/device")
        form = {"csrf_token": hidden_field(await page.text(), "csrf_token"), "user_code": user_code}
        consent = await client.post("/auth/device", data=form)
        html = await consent.text()
        decision = device_decision(html, username="user", password="w")
        assert (await client.post("/auth/device", data=decision)).status == 200

    async def sleep(seconds: float) -> None:
        """Instead of waiting `interval`: the server's clock moved on; the person approves at the 2nd poll."""
        waits.append(seconds)
        await db[COLLECTION].update_one(
            {"_id": hash_secret(shown[0]["device_code"])}, {"$set": {"next_poll": utcnow()}}
        )
        if len(waits) == 2:
            await approve(shown[0]["user_code"])

    strategy = DeviceCode(tv["client_id"], "users:read", on_code=shown.append, sleep=sleep)
    async with Client(base, auth=strategy) as api:
        assert (await api.users.me())["username"] == "user"
    assert shown[0]["verification_uri"].endswith("/auth/device")
    assert waits == [5.0, 5.0]  # the first poll was pending, the second got the tokens


# --- faults: 503/429 with Retry-After, dropped connections --------------------------------------------------


@pytest.fixture
async def stub() -> AsyncIterator[tuple[str, list[web.Request], list[web.Response | None]]]:
    """A tiny API double: answers the queued responses in order (None: drop the connection), then a team."""
    seen: list[web.Request] = []
    queue: list[web.Response | None] = []

    async def answer(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        await request.read()
        if queue:
            response = queue.pop(0)
            if response is None:
                assert request.transport is not None
                request.transport.close()  # mid-exchange: the client sees the server disconnect
                return web.Response()
            return response
        body = {"id": "t1", "title": "Stub", "created": "2026-01-01T00:00:00Z", "updated": "2026-01-01T00:00:00Z"}
        return web.json_response(body, status=201 if request.method == "POST" else 200, headers={"ETag": '"1"'})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/"), seen, queue
    await server.close()


def problem(status: int, **headers: str) -> web.Response:
    body = {"type": "about:blank", "title": "Service Unavailable", "status": status, "detail": "try later"}
    return web.json_response(body, status=status, headers=headers, content_type="application/problem+json")


async def test_503_with_retry_after_is_retried_and_a_post_keeps_its_idempotency_key(stub) -> None:
    url, seen, queue = stub
    queue.extend([problem(503, **{"Retry-After": "2"}), problem(429, **{"Retry-After": "1"})])
    policy, sleeps = quick()
    async with Client(url, auth=StaticToken("t"), retry=policy) as api:
        team = await api.teams.create("Stub")
    assert team["title"] == "Stub"
    assert len(seen) == 3
    keys = {request.headers["Idempotency-Key"] for request in seen}
    assert len(keys) == 1
    assert re.fullmatch(r"[0-9a-f-]{36}", keys.pop())
    assert 2.0 <= sleeps.waits[0] <= 2.0 * 1.1  # the server's waits, jittered
    assert 1.0 <= sleeps.waits[1] <= 1.1


async def test_a_keyed_post_still_running_elsewhere_is_retried_but_a_plain_conflict_is_not(stub) -> None:
    url, seen, queue = stub
    queue.append(problem(409, **{"Retry-After": "1"}))  # the first request with this key still runs
    policy, sleeps = quick()
    async with Client(url, auth=StaticToken("t"), retry=policy) as api:
        assert (await api.teams.create("Stub"))["id"] == "t1"
        assert len(seen) == 2
        assert seen[0].headers["Idempotency-Key"] == seen[1].headers["Idempotency-Key"]
        queue.append(problem(409))  # a real conflict (duplicate, last leader): no Retry-After, no retry
        with pytest.raises(Conflict):
            await api.teams.create("Stub")
        assert len(seen) == 3
    assert len(sleeps.waits) == 1


async def test_retries_are_bounded_and_a_long_retry_after_surfaces(stub) -> None:
    url, seen, queue = stub
    queue.extend([problem(429, **{"Retry-After": "1"}) for _ in range(3)])
    policy, sleeps = quick(attempts=3)
    async with Client(url, auth=StaticToken("t"), retry=policy) as api:
        with pytest.raises(RateLimited) as limited:
            await api.teams.get("t1")
        assert limited.value.retry_after == 1.0
        assert len(seen) == 3
        assert len(sleeps.waits) == 2

        queue.append(problem(503, **{"Retry-After": "3600"}))  # more than max_wait: do not sit on it
        with pytest.raises(ServiceUnavailable) as unavailable:
            await api.teams.get("t1")
        assert unavailable.value.retry_after == 3600.0
        assert len(seen) == 4
        assert len(sleeps.waits) == 2


async def test_a_dropped_connection_is_retried_for_get_and_keyed_post_only(stub) -> None:
    url, seen, queue = stub
    policy, sleeps = quick()
    async with Client(url, auth=StaticToken("t"), retry=policy) as api:
        queue.extend([None, None, None])  # aiohttp may itself resend once on a reused connection
        assert (await api.teams.get("t1"))["id"] == "t1"
        assert len(seen) == 4
        assert sleeps.waits  # the SDK's own retries, after backoff
        seen.clear()

        assert "createTeam" in IDEMPOTENCY_KEYED  # the document declares the header on it
        queue.append(None)
        assert (await api.teams.create("once"))["title"] == "Stub"  # resent: the key makes it safe
        assert len(seen) == 2
        assert seen[0].headers["Idempotency-Key"] == seen[1].headers["Idempotency-Key"]
        seen.clear()

        queue.append(None)
        with pytest.raises(TransportError):  # a POST without the header: the server may have acted
            await api.request("POST", api.base_url.join(URL("api/v1/elsewhere/")), json={})
        assert len(seen) == 1


async def test_a_next_link_to_another_origin_is_not_followed_with_the_token(stub) -> None:
    url, seen, queue = stub
    page = [{"id": "t1", "title": "One"}]
    queue.append(web.json_response(page, headers={"Link": '<http://elsewhere.example/api/v1/teams/>; rel="next"'}))
    got: list[str] = []

    async def follow(api: Client) -> None:
        async for team in api.teams.list():
            got.append(team["id"])

    async with Client(url, auth=StaticToken("t")) as api:
        with pytest.raises(ClientError, match="another origin"):
            await follow(api)
    assert got == ["t1"]
    assert len(seen) == 1


async def test_a_server_that_is_not_there_is_a_transport_error() -> None:
    from aiohttp.test_utils import unused_port

    policy, sleeps = quick(attempts=2)
    async with Client(f"http://127.0.0.1:{unused_port()}", auth=StaticToken("t"), retry=policy) as api:
        with pytest.raises(TransportError):
            await api.users.me()
    assert len(sleeps.waits) == 1


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after({"Retry-After": "7"}) == 7.0
    assert retry_after({}) is None
    assert retry_after({"Retry-After": "soon"}) is None
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))
    value = retry_after({"Retry-After": later})
    assert value is not None
    assert 55 <= value <= 61


# --- the example, and installing the package on its own ------------------------------------------------------


async def run_example(python: str, base: str, sdk_on_path: bool, cwd: Path = ROOT) -> str:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(API_URL=base, API_USERNAME="user", API_PASSWORD="w")
    if sdk_on_path:
        env["PYTHONPATH"] = str(SDK / "src")
    process = await asyncio.create_subprocess_exec(
        python,
        str(SDK / "examples" / "quickstart.py"),
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_the_quickstart_example_runs_against_the_live_server(base: str) -> None:
    output = await run_example(sys.executable, base, sdk_on_path=True)
    assert "signed in as user" in output
    assert "members: 1" in output
    assert "renamed to" in output


async def test_pip_install_in_a_fresh_virtualenv_then_the_example(base: str, tmp_path: Path, backend: str) -> None:
    """`pip install ./clients/python` with nothing else: aiohttp comes from the index. Once per suite run
    (the mongomock pass): the package does not depend on the database behind the server."""
    if backend != "mongomock":
        pytest.skip("installation is checked on the mongomock pass")
    source = tmp_path / "python"
    shutil.copytree(SDK, source, ignore=shutil.ignore_patterns(".mypy_cache", "build", "*.egg-info", "__pycache__"))
    venv = tmp_path / "venv"
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "venv", str(venv))
    assert await process.wait() == 0
    python = str(venv / "bin" / "python")
    process = await asyncio.create_subprocess_exec(
        python,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "-q",
        str(source),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 600)
    assert process.returncode == 0, (out + err).decode()
    output = await run_example(python, base, sdk_on_path=False, cwd=tmp_path)  # the installed copy only
    assert "signed in as user" in output
