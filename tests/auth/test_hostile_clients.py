"""What an outside probe found, as tests: each failed before its fix.

Races on the sign-in throttle, the current_password oracle, open redirect URIs, burnt codes, deactivated
accounts that confirm a password, and load shedding under a sign-in storm.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from service.app import create_app
from service.config import Settings
from service.passwords import HASHER
from tests.helpers import REDIRECT, decide, exchange, get_code, open_page, pkce, query, service_processes, wait_ready

TOKEN = "/auth/oauth2/token"
GUESS = {"grant_type": "password", "username": "user", "password": "wrong guess", "client_id": "documentation"}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No per-address limit in the way: these tests are about the per-username throttle."""
    return dataclasses.replace(settings, oauth_rate_burst=100_000, hash_queue_wait_ms=60_000)


def tally(statuses: list[int]) -> Counter[int]:
    return Counter(statuses)


async def test_concurrent_wrong_guesses_get_at_most_the_limit_of_checks(client: TestClient, seeded) -> None:
    async def guess() -> tuple[int, str | None]:
        response = await client.post(TOKEN, data=GUESS)
        return response.status, response.headers.get("Retry-After")

    answers = await asyncio.gather(*(guess() for _ in range(200)))
    statuses = tally([status for status, _ in answers])
    assert statuses[400] <= 10, statuses
    assert statuses[400] + statuses[429] == 200, statuses
    assert all(int(retry) > 0 for status, retry in answers if status == 429 and retry is not None)
    assert all(retry is not None for status, retry in answers if status == 429)
    right = await client.post(TOKEN, data={**GUESS, "password": "w"})
    assert right.status == 429
    assert (await right.json())["error"] == "slow_down"
    assert int(right.headers["Retry-After"]) > 800  # the 15-minute window, not a moment


async def test_guesses_split_over_two_server_processes_share_one_budget(
    backend: str, settings: Settings, seeded, tmp_path: Path
) -> None:
    if backend != "secantus":
        pytest.skip("two processes need a database both can reach (--backend=secantus)")
    with service_processes(settings, 2, tmp_path, OAUTH_RATE_BURST="100000", PRINCIPAL_CACHE="false") as bases:
        await _guess_on_both(bases)


async def _guess_on_both(bases: list[str]) -> None:
    """Wait for both servers, then 200 concurrent wrong guesses split between them."""
    async with aiohttp.ClientSession() as http:
        for base in bases:
            await wait_ready(http, base)

        async def guess(i: int) -> int:
            async with http.post(f"{bases[i % 2]}{TOKEN}", data=GUESS) as response:
                return response.status

        statuses = tally(await asyncio.gather(*(guess(i) for i in range(200))))
        assert statuses[400] <= 10, statuses
        assert statuses[400] + statuses[429] == 200, statuses
        for base in bases:
            async with http.post(f"{base}{TOKEN}", data={**GUESS, "password": "w"}) as right:
                assert right.status == 429


async def test_a_right_password_gives_its_attempt_back(client: TestClient, seeded, db) -> None:
    for _ in range(12):  # more sign-ins than the limit: successes never count
        assert (await client.post(TOKEN, data={**GUESS, "password": "w"})).status == 200
    # One attempt stays reserved, kept by this process for the username's next check (no write per
    # sign-in to give it back) ...
    assert (await db.login_attempts.find_one({"_id": "user"}))["failures"] == 1
    # ... which that check uses: the whole budget of failures is still there, and not one more.
    for _ in range(10):
        assert (await client.post(TOKEN, data=GUESS)).status == 400
    assert (await client.post(TOKEN, data=GUESS)).status == 429


async def test_current_password_is_tested_once_per_patch_and_throttled(client: TestClient, bearer, db) -> None:
    headers = await bearer("user")
    me = await (await client.get("/api/v1/users/me", headers=headers)).json()
    url = f"/api/v1/users/{me['id']}"
    wrong = {"op": "test", "path": "/current_password", "value": "not it"}
    attempts = (await db.login_attempts.find_one({"_id": "user"}))["failures"]
    twice = await client.patch(url, json=[wrong, {**wrong, "value": "w"}], headers=headers)
    assert twice.status == 422
    assert (await db.login_attempts.find_one({"_id": "user"}))["failures"] == attempts  # refused before any check
    for _ in range(10):
        assert (await client.patch(url, json=[wrong], headers=headers)).status == 403
    throttled = await client.patch(url, json=[{**wrong, "value": "w"}], headers=headers)
    assert throttled.status == 429
    assert throttled.content_type == "application/problem+json"
    assert int(throttled.headers["Retry-After"]) > 0
    # one budget per username: the password grant is throttled too
    assert (await client.post(TOKEN, data={**GUESS, "password": "w"})).status == 429


@pytest.mark.parametrize(
    "uri",
    [
        "http://evil.example/cb",
        "http://localhost.evil.example/cb",
        "https://app.example/cb#fragment",
        "javascript:alert(1)",
        "myapp:/cb",
        "ftp://files.example/cb",
        "https:///no-host",
    ],
)
async def test_unsafe_redirect_uris_are_refused_at_registration(client: TestClient, bearer, db, uri: str) -> None:
    body = {"client_type": "public", "redirect_uris": [uri], "allowed_scopes": ["users:read"]}
    response = await client.post("/api/v1/auth/oauth2_clients/", json=body, headers=await bearer("user"))
    assert response.status == 422, await response.text()
    assert "redirect_uris" in (await response.json())["errors"]
    assert await db.oauth2_clients.count_documents({"redirect_uris": uri}) == 0


@pytest.mark.parametrize(
    "uri",
    [
        "https://app.example/cb",
        "http://127.0.0.1:9000/cb",
        "http://[::1]/cb",
        "http://localhost/cb",
        "com.example.app:/cb",
    ],
)
async def test_safe_redirect_uris_are_accepted(client: TestClient, register_client, uri: str) -> None:
    created = await register_client(client_type="public", redirect_uris=[uri])
    assert created["redirect_uris"] == [uri]


async def test_a_stored_unsafe_redirect_uri_is_never_redirected_to(client: TestClient, seeded, db) -> None:
    evil = "http://evil.example/cb"
    await db.oauth2_clients.update_one({"_id": "documentation"}, {"$set": {"redirect_uris": [evil]}})
    _, challenge = pkce()
    response, html = await open_page(client, query(challenge, redirect_uri=evil))
    assert response.status == 400
    assert "Location" not in response.headers
    assert "not allowed" in html


async def test_another_client_cannot_burn_a_code(client: TestClient, seeded, register_client) -> None:
    other = await register_client("user", client_type="public", redirect_uris=[REDIRECT])
    verifier, challenge = pkce()
    code = await get_code(client, challenge)
    stolen = await exchange(client, code, verifier, client_id=other["client_id"])
    assert stolen.status == 400
    wrong_uri = await exchange(client, code, verifier, redirect_uri="http://127.0.0.1/other")
    assert wrong_uri.status == 400
    wrong_verifier = await exchange(client, code, pkce()[0])
    assert wrong_verifier.status == 400
    rightful = await exchange(client, code, verifier)
    assert rightful.status == 200, await rightful.text()
    replay = await exchange(client, code, verifier)
    assert replay.status == 400
    token = (await rightful.json())["access_token"]
    me = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status == 401  # a replay by the same client revokes what the code issued


async def test_a_deactivated_account_never_confirms_its_password(
    client: TestClient, seeded, db, app: web.Application
) -> None:
    await db.users.update_one({"username": "user"}, {"$set": {"is_active": False}})
    hasher = app[HASHER]
    hashes = []
    original = hasher._verify

    def counting(password_hash, password):
        hashes.append(password)
        return original(password_hash, password)

    hasher._verify = counting  # type: ignore[method-assign]
    right = await client.post(TOKEN, data={**GUESS, "password": "w"})
    wrong = await client.post(TOKEN, data=GUESS)
    assert (right.status, await right.json()) == (wrong.status, await wrong.json())
    assert right.status == 400
    assert hashes == ["w", "wrong guess"]  # the same hashing cost either way


async def test_authenticated_responses_are_not_cacheable_and_name_no_versions(client: TestClient, bearer) -> None:
    headers = await bearer("user")
    for path in ("/api/v1/users/me", "/api/v1/teams/", "/api/v1/users/000000000000000000000000"):
        response = await client.get(path, headers=headers)
        assert response.headers["Cache-Control"] == "no-store", path
        assert response.headers["Server"] == "service"
    anonymous = await client.get("/healthz")
    assert "Cache-Control" not in anonymous.headers
    assert anonymous.headers["Server"] == "service"


async def test_sign_in_storm_is_shed_at_once_with_503(aiohttp_client, settings: Settings, mongo_client, seeded) -> None:
    """Hashing that cannot start within the bound is refused before any work, not queued."""
    slow = dataclasses.replace(settings, argon2_memory_kib=16 * 1024, argon2_time_cost=2, hash_queue_wait_ms=1)
    storm: TestClient = await aiohttp_client(create_app(slow, mongo_client=mongo_client))
    responses = await asyncio.gather(*(storm.post(TOKEN, data={**GUESS, "username": f"nobody{i}"}) for i in range(40)))
    statuses = tally([response.status for response in responses])
    assert statuses[503] > 0, statuses
    assert statuses[400] + statuses[503] == 40, statuses
    for response in responses:
        if response.status == 503:
            assert (await response.json())["error"] == "temporarily_unavailable"
            assert response.headers["Retry-After"] == "1"
    db = mongo_client[settings.mongodb_db]
    assert await db.login_attempts.count_documents({}) == statuses[400]  # shed requests wrote nothing


async def test_sign_up_under_hashing_overload_is_503_problem(aiohttp_client, settings: Settings, mongo_client) -> None:
    busy = create_app(dataclasses.replace(settings, hash_queue_wait_ms=1), mongo_client=mongo_client)
    client: TestClient = await aiohttp_client(busy)
    hasher = busy[HASHER]
    hasher.in_flight = hasher.threads + 100  # a queue already far longer than the bound
    body = {"username": "latecomer", "email": "late@example.com", "password": "long enough pw"}
    response = await client.post("/api/v1/users/", json=body)
    assert response.status == 503
    assert response.content_type == "application/problem+json"
    assert response.headers["Retry-After"] == "1"
    assert await mongo_client[settings.mongodb_db].users.count_documents({"username": "latecomer"}) == 0


async def test_one_address_is_rate_limited_on_the_oauth2_endpoints(
    aiohttp_client, settings: Settings, mongo_client, seeded
) -> None:
    limited = dataclasses.replace(settings, oauth_rate_burst=5, oauth_rate_limit=0.5)
    client: TestClient = await aiohttp_client(create_app(limited, mongo_client=mongo_client))
    statuses = [(await client.post(TOKEN, data={**GUESS, "password": "w"})).status for _ in range(5)]
    assert statuses == [200] * 5
    refused = await client.post(TOKEN, data={**GUESS, "password": "w"})
    assert refused.status == 429
    assert (await refused.json())["error"] == "slow_down"
    assert int(refused.headers["Retry-After"]) >= 1
    assert (await client.get("/api/v1/")).status == 200  # the rest of the API is not limited here


async def test_forwarded_addresses_count_only_behind_a_trusted_proxy(
    aiohttp_client, settings: Settings, mongo_client, seeded
) -> None:
    from ipaddress import ip_network

    for trusted, expect_separate in (((ip_network("127.0.0.0/8"),), True), ((), False)):
        limited = dataclasses.replace(settings, oauth_rate_burst=2, oauth_rate_limit=0.01, trusted_proxies=trusted)
        server = TestServer(create_app(limited, mongo_client=mongo_client))
        client: TestClient = await aiohttp_client(server)
        statuses = []
        for address in ("203.0.113.1", "203.0.113.2", "203.0.113.3"):
            for _ in range(2):
                response = await client.post(
                    TOKEN, data={**GUESS, "password": "w"}, headers={"X-Forwarded-For": f"198.51.100.9, {address}"}
                )
                statuses.append(response.status)
        if expect_separate:
            assert statuses == [200] * 6, statuses
        else:
            assert statuses == [200, 200] + [429] * 4, statuses


async def test_sign_in_page_sheds_and_throttles_with_a_page(client: TestClient, seeded) -> None:
    _, challenge = pkce()
    for _ in range(10):
        _, html = await open_page(client, query(challenge))
        assert (await decide(client, html, password="wrong")).status == 400
    _, html = await open_page(client, query(challenge))
    throttled = await decide(client, html, password="w")
    assert throttled.status == 429
    assert "Too many failed sign-in attempts" in await throttled.text()
