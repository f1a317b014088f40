"""RateLimit-Policy and RateLimit headers (draft-ietf-httpapi-ratelimit-headers-10) on every rate-limited
response, and the per-token limit of the API (API_RATE_LIMIT, API_RATE_BURST)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from service.config import Settings, SettingsError
from service.ratelimit import TokenBuckets
from tests.helpers import service_processes, wait_ready

TOKEN = "/auth/oauth2/token"
# One List member each: an sf-string policy name and its integer parameters.
POLICY = re.compile(r'"(?P<name>[a-z]+)";q=(?P<q>\d+);w=(?P<w>\d+)')
STATE = re.compile(r'"(?P<name>[a-z]+)";r=(?P<r>\d+);t=(?P<t>\d+)')


def state(headers, name: str) -> tuple[int, int]:
    """(r, t) of the policy `name` in a RateLimit header."""
    for member in headers["RateLimit"].split(", "):
        found = STATE.fullmatch(member)
        assert found, headers["RateLimit"]
        if found["name"] == name:
            return int(found["r"]), int(found["t"])
    raise AssertionError(f"no {name} in {headers['RateLimit']}")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Budgets small and slow to refill, so each request's spending shows."""
    return dataclasses.replace(
        settings, oauth_rate_burst=4, oauth_rate_limit=0.01, api_rate_burst=3, api_rate_limit=0.01
    )


async def test_the_token_endpoint_says_its_policy_and_what_is_left(client: TestClient) -> None:
    form = {"grant_type": "client_credentials", "client_id": "nobody", "client_secret": "x"}
    seen = []
    for _ in range(4):
        response = await client.post(TOKEN, data=form)
        assert response.status == 401  # unknown client: refused, yet it spent from the budget
        assert POLICY.fullmatch(response.headers["RateLimit-Policy"])
        assert response.headers["RateLimit-Policy"] == '"oauth";q=4;w=400'  # 4 at 0.01/s: 400 s to refill
        seen.append(state(response.headers, "oauth"))
    assert [remaining for remaining, _ in seen] == [3, 2, 1, 0]
    assert [reset for _, reset in seen] == [100, 200, 300, 400]  # seconds until the bucket is full again

    refused = await client.post(TOKEN, data=form)
    assert refused.status == 429
    assert (await refused.json())["error"] == "slow_down"
    assert refused.headers["Retry-After"] == "100"
    assert state(refused.headers, "oauth") == (0, 400)
    assert refused.headers["RateLimit-Policy"] == '"oauth";q=4;w=400'


async def test_sign_up_carries_the_per_address_headers(client: TestClient, seeded) -> None:
    body = {"username": "newcomer", "email": "newcomer@example.com", "password": "long enough pw"}
    response = await client.post("/api/v1/users/", json=body)
    assert response.status == 201, await response.text()
    assert response.headers["RateLimit-Policy"] == '"oauth";q=4;w=400'
    assert state(response.headers, "oauth")[0] == 3


async def test_an_admin_creating_a_user_spends_both_budgets_and_both_are_listed(client: TestClient, bearer) -> None:
    headers = await bearer("root")  # the sign-in spent one of the address's 4
    body = {"username": "made-by-admin", "email": "made@example.com", "password": "long enough pw"}
    response = await client.post("/api/v1/users/", json=body, headers=headers)
    assert response.status == 201, await response.text()
    assert response.headers["RateLimit-Policy"] == '"oauth";q=4;w=400, "api";q=3;w=300'
    assert state(response.headers, "oauth")[0] == 2
    assert state(response.headers, "api")[0] == 2


async def test_the_api_limits_each_token_and_says_so(client: TestClient, bearer) -> None:
    headers = await bearer("root")
    remaining = []
    for _ in range(3):
        response = await client.get("/api/v1/users/me", headers=headers)
        assert response.status == 200
        assert response.headers["RateLimit-Policy"] == '"api";q=3;w=300'
        remaining.append(state(response.headers, "api")[0])
    assert remaining == [2, 1, 0]

    refused = await client.get("/api/v1/users/me", headers=headers)
    assert refused.status == 429
    assert refused.content_type == "application/problem+json"
    assert (await refused.json())["status"] == 429
    assert refused.headers["Retry-After"] == "100"
    assert state(refused.headers, "api") == (0, 300)

    # Another token (even the same user's) has its own budget; a refused token's requests did nothing.
    other = await bearer("root")
    assert (await client.get("/api/v1/users/me", headers=other)).status == 200


async def test_errors_of_limited_requests_carry_the_headers_and_anonymous_reads_do_not(
    client: TestClient, bearer
) -> None:
    headers = await bearer("root")
    missing = await client.get("/api/v1/teams/000000000000000000000000", headers=headers)
    assert missing.status == 404
    assert state(missing.headers, "api") == (2, 100)
    document = await client.get("/api/v1/openapi.json")  # anonymous, not a limited route
    assert "RateLimit" not in document.headers
    assert "RateLimit-Policy" not in document.headers
    health = await client.get("/healthz")
    assert "RateLimit" not in health.headers


def test_a_bucket_reports_whole_tokens_left_and_seconds_to_full() -> None:
    buckets = TokenBuckets(2.0, 5, name="api")
    assert buckets.policy == '"api";q=5;w=3'  # 5 tokens at 2/s: 2.5 s, rounded up
    first = buckets.spend("k")
    assert (first.wait, first.remaining, first.reset) == (0.0, 4, 1)
    for _ in range(4):
        buckets.spend("k")
    empty = buckets.spend("k")
    assert empty.wait > 0
    assert (empty.remaining, empty.reset) == (0, 3)


def test_the_settings_are_read_and_checked() -> None:
    loaded = Settings.from_env({"API_RATE_LIMIT": "2.5", "API_RATE_BURST": "7"})
    assert (loaded.api_rate_limit, loaded.api_rate_burst) == (2.5, 7)
    assert (Settings().api_rate_limit, Settings().api_rate_burst) == (50.0, 200)
    with pytest.raises(SettingsError, match="API_RATE_BURST"):
        Settings.from_env({"API_RATE_BURST": "0"})


async def test_two_processes_each_hold_their_own_budget_and_say_so(
    backend: str, settings: Settings, seeded, tmp_path: Path
) -> None:
    """Per process, as documented: a token spent on one replica still has the other's budget, and each
    replica's headers say what is left there (the reverse proxy holds the line for the deployment)."""
    if backend != "secantus":
        pytest.skip("two processes need a database both can reach (--backend=secantus)")
    env = {"API_RATE_BURST": "3", "API_RATE_LIMIT": "0.01", "PUBLIC_URL": "http://api.test"}
    with service_processes(settings, 2, tmp_path, **env) as (first, second):
        async with aiohttp.ClientSession() as http:
            for base in (first, second):
                await wait_ready(http, base)
            form = {"grant_type": "password", "username": "root", "password": "q", "client_id": "documentation"}
            async with http.post(f"{first}{TOKEN}", data=form) as signed_in:
                assert signed_in.status == 200
                assert POLICY.fullmatch(signed_in.headers["RateLimit-Policy"])
                headers = {"Authorization": f"Bearer {(await signed_in.json())['access_token']}"}

            async def me(base: str) -> tuple[int, tuple[int, int]]:
                async with http.get(f"{base}/api/v1/users/me", headers=headers) as response:
                    assert response.headers["RateLimit-Policy"] == '"api";q=3;w=300'
                    return response.status, state(response.headers, "api")

            assert [await me(first) for _ in range(3)] == [(200, (2, 100)), (200, (1, 200)), (200, (0, 300))]
            assert await me(first) == (429, (0, 300))
            assert await me(second) == (200, (2, 100))
