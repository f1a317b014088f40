"""Load without loss: hundreds of concurrent clients, then an audit of the database.

Every 2xx write must be in the database, every refused write absent, and the counters must match.
Bounded: 300 virtual clients, about 2,000 requests, a 240 s ceiling. Real server only.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from service.config import Settings
from service.crypto import hash_secret
from tests.helpers import stored_members

CLIENTS = 300
DISTINCT = 250  # clients 250..299 reuse the usernames of 0..49: concurrent duplicate sign-ups


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """300 clients share one address here, and the admin's token adds 600 members; neither the per-address
    limit on sign-in nor the per-token API limit is what this measures.

    The driver's socket timeout is long (60 s, from the 20 s `MONGODB_TIMEOUT_MS`): on a slow machine one
    command can wait more than the suite's 10 s behind 300 others, and the driver then retries the write
    on another connection while the first is still running. MongoDB runs one attempt per session and
    transaction number; the embedded test server does not hold the retry back, so both apply (an `$inc`
    counted twice, a duplicate key on an insert). This audit is about concurrent clients, not that."""
    return dataclasses.replace(settings, oauth_rate_burst=100_000, api_rate_burst=100_000, mongodb_timeout_ms=20_000)


@pytest.fixture(autouse=True)
def _real_server_only(backend: str) -> None:
    if backend != "secantus":
        pytest.skip("the load audit needs the real wire-protocol server (--backend=secantus)")


async def test_concurrent_mixed_load_loses_nothing(client: TestClient, db, bearer, capsys) -> None:
    admin = await bearer("root")
    team = await (await client.post("/api/v1/teams/", json={"title": "Load"}, headers=admin)).json()
    members_url = client.make_url(f"/api/v1/teams/{team['id']}/members/")
    statuses: collections.Counter[str] = collections.Counter()
    signups: dict[int, int] = {}
    tokens: list[str] = []
    patches: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)
    adds: dict[str, list[int]] = collections.defaultdict(list)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def request(kind: str, method: str, path: Any, **kwargs: Any) -> aiohttp.ClientResponse:
            url = path if not isinstance(path, str) else client.make_url(path)
            response = await http.request(method, url, **kwargs)
            await response.read()
            statuses[f"{kind} {response.status}"] += 1
            return response

        async def virtual_client(i: int) -> None:
            name = f"load{i % DISTINCT}"
            body = {"username": name, "email": f"{name}@example.com", "password": "load password"}
            signup = await request("signup", "POST", "/api/v1/users/", json=body)
            signups[i] = signup.status
            if signup.status != 201:
                return
            user = await signup.json()
            form = {
                "grant_type": "password",
                "username": name,
                "password": "load password",
                "client_id": "documentation",
            }
            signin = await request("signin", "POST", "/auth/oauth2/token", data=form)
            if signin.status != 200:
                return
            token = (await signin.json())["access_token"]
            tokens.append(token)
            headers = {"Authorization": f"Bearer {token}"}
            me = await request("me", "GET", "/api/v1/users/me", headers=headers)
            etag = me.headers["ETag"]

            async def patch(value: str) -> None:
                ops = [{"op": "replace", "path": "/first_name", "value": value}]
                response = await request(
                    "patch", "PATCH", f"/api/v1/users/{user['id']}", json=ops, headers={**headers, "If-Match": etag}
                )
                patches[name].append((response.status, value))

            async def add() -> None:
                response = await request("member", "POST", members_url, json={"user_id": user["id"]}, headers=admin)
                adds[user["id"]].append(response.status)

            await asyncio.gather(patch(f"A{i}"), patch(f"B{i}"), add(), add())

        await asyncio.wait_for(asyncio.gather(*(virtual_client(i) for i in range(CLIENTS))), timeout=240)

    # --- audit ---
    problems: list[str] = []
    created = {f"load{i % DISTINCT}" for i, status in signups.items() if status == 201}
    for i, status in signups.items():
        if status not in (201, 409):
            problems.append(f"sign-up {i} answered {status}")
    stored_users = {u["username"]: u for u in await db.users.find({"username": {"$regex": "^load"}}).to_list(None)}
    if set(stored_users) != created or sum(status == 201 for status in signups.values()) != len(created):
        problems.append("sign-ups: the 201s and the stored users differ")
    if len(created) != DISTINCT:
        problems.append(f"expected {DISTINCT} distinct users, got {len(created)}")
    stored_tokens = {t["_id"] for t in await db.oauth2_tokens.find({}, {"_id": 1}).to_list(None)}
    problems += [f"issued token {token[:6]} missing" for token in tokens if hash_secret(token) not in stored_tokens]
    for name, results in patches.items():
        won = [value for status, value in results if status == 200]
        if sorted(status for status, _ in results) != [200, 412]:
            problems.append(f"{name}: patch statuses {results}")
        elif stored_users[name]["first_name"] != won[0] or stored_users[name]["version"] != 2:
            problems.append(f"{name}: stored {stored_users[name]['first_name']} v{stored_users[name]['version']}")
    stored_team = await db.teams.find_one({"title": "Load"})
    stored_memberships = await stored_members(db, stored_team)
    members = {str(m["user_id"]) for m in stored_memberships}
    for user_id, answers in adds.items():
        if sorted(answers) != [201, 409] or user_id not in members:
            problems.append(f"membership of {user_id}: {answers}")
    if len(stored_memberships) != 1 + sum(answers.count(201) for answers in adds.values()):
        problems.append("member count does not match the 201s")
    if stored_team["members"] != len(stored_memberships):
        problems.append("the team's member counter does not match its memberships")
    if stored_team["version"] != len(stored_memberships):
        problems.append("team version does not count its writes")
    problems += [f"{kind}: server error" for kind in statuses if kind.endswith(("500", "503"))]

    with capsys.disabled():
        print(
            f"\nload audit: {sum(statuses.values())} requests from {CLIENTS} concurrent clients; "
            f"{dict(sorted(statuses.items()))}; inconsistencies found: {len(problems)}"
        )
    assert problems == []
