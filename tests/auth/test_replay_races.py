"""Replay detection holds when the two presentations race on two real server processes.

A code presented twice at the same moment (one request to each process) must be seen as a replay every
time: nothing a replayed code issued left working, whichever request's write came first. A refresh
token presented twice at once is a replay under strict rotation (REFRESH_REUSE_GRACE=0): its family
revoked and the event recorded; with the default grace window both presentations get a fresh pair in the
same family (two tabs refreshing at once keep the user signed in), and a reuse after the window still
revokes the family.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from service.config import Settings
from service.crypto import hash_secret
from tests.helpers import exchange_form, get_code, past_refresh_grace, pkce, service_processes, wait_ready

TOKEN = "/auth/oauth2/token"
PAIRS = 40

Servers = tuple[aiohttp.ClientSession, list[str]]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No per-address limit in the way of the sign-ins that set the races up."""
    return dataclasses.replace(settings, oauth_rate_burst=100_000)


@pytest.fixture(params=["0"], ids=["strict"])
async def servers(
    backend: str, settings: Settings, seeded: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Servers]:
    """Two `serve` processes on the test's database, ready, and a session to both; REFRESH_REUSE_GRACE is
    the parameter (strict rotation unless a test asks for the default window)."""
    if backend != "secantus":
        pytest.skip("two processes need a database both can reach (--backend=secantus)")
    grace = {"REFRESH_REUSE_GRACE": request.param} if request.param else {}
    # One issuer for both, as behind a load balancer: a token from one process is for the other's API too.
    env = {"OAUTH_RATE_BURST": "100000", "API_RATE_BURST": "100000", "PUBLIC_URL": "http://api.test", **grace}
    with service_processes(settings, 2, tmp_path, **env) as bases:
        async with aiohttp.ClientSession() as http:
            for base in bases:
                await wait_ready(http, base)
            yield http, bases


async def sign_in(servers: Servers) -> dict[str, Any]:
    """Tokens from the processes themselves (their issuer, so their API accepts what they issue)."""
    http, bases = servers
    form = {"grant_type": "password", "username": "user", "password": "w", "client_id": "documentation"}
    async with http.post(f"{bases[0]}{TOKEN}", data=form) as response:
        assert response.status == 200, await response.text()
        return dict(await response.json())


async def at_once(servers: Servers, form: dict[str, str]) -> list[tuple[int, dict[str, Any]]]:
    """The same token request sent to both processes at the same moment: (status, body) of each."""
    http, bases = servers

    async def post(base: str) -> tuple[int, dict[str, Any]]:
        async with http.post(f"{base}{TOKEN}", data=form) as response:
            return response.status, await response.json()

    return list(await asyncio.gather(*(post(base) for base in bases)))


async def still_works(servers: Servers, answers: list[tuple[int, dict[str, Any]]]) -> bool:
    """Whether any token issued in `answers` still opens /users/me on either process."""
    http, bases = servers
    for status, body in answers:
        if status != 200:
            continue
        for base in bases:
            headers = {"Authorization": f"Bearer {body['access_token']}"}
            async with http.get(f"{base}/api/v1/users/me", headers=headers) as response:
                if response.status != 401:
                    return True
    return False


async def recorded(db: Any, event: str, expected: int) -> int:
    """How many `event`s the processes stored, once `expected` are there or a second has passed
    (each process writes its events a few milliseconds after the request)."""
    for _ in range(100):
        count: int = await db.audit_events.count_documents({"event": event})
        if count >= expected:
            break
        await asyncio.sleep(0.01)
    return count


async def test_a_refresh_token_presented_twice_at_once_revokes_its_family(servers: Servers, db) -> None:
    sessions = [await sign_in(servers) for _ in range(PAIRS)]
    undetected = 0
    for session in sessions:
        form = {"grant_type": "refresh_token", "refresh_token": session["refresh_token"], "client_id": "documentation"}
        answers = await at_once(servers, form)
        assert [status for status, _ in answers].count(200) <= 1, answers
        family = (await db.oauth2_tokens.find_one({"refresh_hash": hash_secret(session["refresh_token"])}))["family_id"]
        live = await db.oauth2_tokens.count_documents({"family_id": family, "revoked": False})
        undetected += bool(live or await still_works(servers, answers))
    events = await recorded(db, "token.refresh_reuse_detected", PAIRS)
    assert (undetected, events) == (0, PAIRS), f"{undetected} of {PAIRS} pairs not seen as reuse, {events} events"


async def test_a_code_exchanged_twice_at_once_leaves_no_working_token(servers: Servers, client: TestClient, db) -> None:
    verifier, challenge = pkce()
    codes = [await get_code(client, challenge) for _ in range(PAIRS)]
    survived = 0
    for code in codes:
        answers = await at_once(servers, exchange_form(code, verifier))
        assert [status for status, _ in answers].count(200) <= 1, answers
        live = await db.oauth2_tokens.count_documents({"code_id": hash_secret(code), "revoked": False})
        survived += bool(live or await still_works(servers, answers))
    events = await recorded(db, "token.code_reuse_detected", PAIRS)
    assert (survived, events) == (0, PAIRS), f"a token survived {survived} of {PAIRS} replays, {events} events"


@pytest.mark.parametrize("servers", [""], ids=["default-grace"], indirect=True)
async def test_within_the_grace_window_concurrent_refreshes_all_succeed(servers: Servers, db) -> None:
    """The contract changed deliberately: with REFRESH_REUSE_GRACE (default 10 s) every presentation of a
    just-rotated refresh token by its client gets a working pair in the same family; after the window a
    reuse revokes the family as before."""
    http, bases = servers
    sessions = [await sign_in(servers) for _ in range(10)]
    for session in sessions:
        form = {"grant_type": "refresh_token", "refresh_token": session["refresh_token"], "client_id": "documentation"}
        answers = await at_once(servers, form)
        assert [status for status, _ in answers] == [200, 200], answers
        assert await still_works(servers, answers)
    assert await recorded(db, "token.refresh_reuse_detected", 1) == 0
    last = sessions[-1]
    await past_refresh_grace(db, last["refresh_token"])
    form = {"grant_type": "refresh_token", "refresh_token": last["refresh_token"], "client_id": "documentation"}
    async with http.post(f"{bases[0]}{TOKEN}", data=form) as late:
        assert late.status == 400
    family = (await db.oauth2_tokens.find_one({"refresh_hash": hash_secret(last["refresh_token"])}))["family_id"]
    assert await db.oauth2_tokens.count_documents({"family_id": family, "revoked": False}) == 0
