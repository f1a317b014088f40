"""Fault injection on the real wire-protocol server: failed commands, and the server killed and restarted.

Each scenario arms SecantusDB's `failCommand` fail point, makes the request, expects 503 with
Retry-After (or a transparent retry for a single retryable failure), disarms, audits the data and
retries. Figures are printed at the end. Skipped on mongomock, which cannot fail this way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pymongo.errors import AutoReconnect

from service.app import create_app
from service.config import Settings
from service.db import MONGO
from tests.helpers import stored_members

FIGURES = {"requests": 0, "faults": 0, "inconsistencies": 0}


@pytest.fixture(scope="module", autouse=True)
def _print_figures(request: pytest.FixtureRequest) -> Iterator[None]:
    """After the module's tests, whatever their order: how much was injected (each test audits itself)."""
    yield
    if FIGURES["faults"]:
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"fault injection: {FIGURES['requests']} requests, {FIGURES['faults']} faults injected, "
                f"{FIGURES['inconsistencies']} inconsistencies found"
            )


@pytest.fixture(autouse=True)
def _real_server_only(backend: str) -> None:
    if backend != "secantus":
        pytest.skip("fault injection needs the real wire-protocol server (--backend=secantus)")


@pytest.fixture
async def fail(mongo_client) -> AsyncIterator[Any]:
    """`async with fail("insert")`: every listed command fails (connection dropped) until the block ends;
    `skip=N` lets the first N of them through."""

    class Armed:
        def __init__(self, *commands: str, times: int | None = None, skip: int | None = None) -> None:
            self.commands, self.times, self.skip = list(commands), times, skip

        async def __aenter__(self) -> None:
            FIGURES["faults"] += 1
            mode: Any = {"times": self.times} if self.times else {"skip": self.skip} if self.skip else "alwaysOn"
            await mongo_client.admin.command(
                {
                    "configureFailPoint": "failCommand",
                    "mode": mode,
                    "data": {"failCommands": self.commands, "closeConnection": True},
                }
            )

        async def __aexit__(self, *exc: object) -> None:
            await off()

    async def off() -> None:
        # A dropped connection (the fault itself, or the service's audit batch hitting it after the
        # response) pauses the pool it came from until the driver's next check: wait that out.
        for _ in range(50):
            try:
                await mongo_client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
                return
            except AutoReconnect:
                await asyncio.sleep(0.1)
        await mongo_client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})

    yield Armed
    await off()


async def audit(db) -> list[str]:
    """Invariants that must hold whatever failed: returns what is wrong (empty when consistent)."""
    problems = []
    users = {u["_id"]: u for u in await db.users.find({}).to_list(None)}
    problems += [f"user {u['username']} has no credentials" for u in users.values() if not u.get("password_hash")]
    for team in await db.teams.find({}).to_list(None):
        members = await stored_members(db, team)
        if not team["leader_ids"]:
            problems.append(f"team {team['title']} has no leader")
        member_ids = {m["user_id"] for m in members}
        problems += [
            f"team {team['title']} is led by non-member {u}" for u in team["leader_ids"] if u not in member_ids
        ]
        if team.get("members") != len(members):
            problems.append(f"team {team['title']} counts {team.get('members')} members but has {len(members)}")
        problems += [
            f"team {team['title']} has orphan member {m['user_id']}" for m in members if m["user_id"] not in users
        ]
    for token in await db.oauth2_tokens.find({}).to_list(None):
        if not token.get("family_id") or token["user_id"] not in users:
            problems.append(f"token {token['_id'][:8]} without family or user")
    FIGURES["inconsistencies"] += len(problems)
    return problems


async def call(client: TestClient, method: str, path: str, **kwargs: Any):
    FIGURES["requests"] += 1
    return await client.request(method, path, **kwargs)


async def expect_503(response) -> None:
    assert response.status == 503, await response.text()
    assert response.headers["Retry-After"] == "5"


async def test_sign_up(client: TestClient, fail, db) -> None:
    body = {"username": "faulty", "email": "faulty@example.com", "password": "long enough"}
    async with fail("insert"):
        await expect_503(await call(client, "POST", "/api/v1/users/", json=body))
    assert await db.users.count_documents({"username": "faulty"}) == 0
    async with fail("insert", times=1):  # one dropped connection: the driver retries the write itself
        assert (await call(client, "POST", "/api/v1/users/", json=body)).status == 201
    assert await db.users.count_documents({"username": "faulty"}) == 1
    assert await audit(db) == []


async def test_sign_up_whose_verification_mail_cannot_be_queued(client: TestClient, fail, db, bearer) -> None:
    """The account is stored before its mail: when the database goes away between the two, the answer is
    still the 201 the client must see (a 503 would make it send again and meet a 409), and the mail can be
    asked for again."""
    body = {"username": "unmailed", "email": "unmailed@example.com", "password": "long enough"}
    async with fail("insert", skip=1):  # the user's insert goes through; the link's token fails
        response = await call(client, "POST", "/api/v1/users/", json=body)
    assert response.status == 201, await response.text()
    assert await db.users.count_documents({"username": "unmailed"}) == 1
    assert await db.mail_tokens.count_documents({}) == 0
    headers = await bearer("unmailed", password="long enough")
    assert (await call(client, "POST", "/api/v1/users/me/email-verification", headers=headers)).status == 202
    assert await db.mail_tokens.count_documents({"purpose": "verify"}) == 1
    assert await audit(db) == []


async def test_token_issue_and_refresh(client: TestClient, fail, db, login) -> None:
    form = {"grant_type": "password", "username": "user", "password": "w", "client_id": "documentation"}
    async with fail("insert"):
        response = await call(client, "POST", "/auth/oauth2/token", data=form)
        await expect_503(response)
        assert (await response.json())["error"] == "temporarily_unavailable"
    assert await db.oauth2_tokens.count_documents({}) == 0
    token = await login("user", "w")
    refresh = {"grant_type": "refresh_token", "refresh_token": token["refresh_token"], "client_id": "documentation"}
    async with fail("findAndModify"):
        await expect_503(await call(client, "POST", "/auth/oauth2/token", data=refresh))
    assert (await call(client, "POST", "/auth/oauth2/token", data=refresh)).status == 200  # not burnt by the fault
    assert await audit(db) == []


async def test_patch_is_all_or_nothing(client: TestClient, fail, db, bearer) -> None:
    headers = await bearer("user")
    me = (await (await client.get("/api/v1/users/me", headers=headers)).json())["id"]
    ops = [
        {"op": "replace", "path": "/first_name", "value": "A"},
        {"op": "replace", "path": "/last_name", "value": "B"},
    ]
    async with fail("findAndModify"):
        await expect_503(await call(client, "PATCH", f"/api/v1/users/{me}", json=ops, headers=headers))
    stored = await db.users.find_one({"username": "user"})
    assert (stored["first_name"], stored["last_name"], stored["version"]) == ("Regular", "User", 1)
    assert (await call(client, "PATCH", f"/api/v1/users/{me}", json=ops, headers=headers)).status == 200
    assert await audit(db) == []


async def test_password_change_revokes_even_if_the_cleanup_write_fails(client: TestClient, fail, db, bearer) -> None:
    headers = await bearer("user")
    me = (await (await client.get("/api/v1/users/me", headers=headers)).json())["id"]
    ops = [
        {"op": "test", "path": "/current_password", "value": "w"},
        {"op": "replace", "path": "/password", "value": "brand new password"},
    ]
    # The current-password check reserves and gives back a sign-in attempt (two updates); the third
    # update is the token bookkeeping write. The user's own change is a findAndModify and goes through.
    async with fail("update", skip=2):
        response = await call(client, "PATCH", f"/api/v1/users/{me}", json=ops, headers=headers)
    assert response.status == 200
    assert (await client.get("/api/v1/users/me", headers=headers)).status == 401
    assert await audit(db) == []


async def test_team_create_and_delete(client: TestClient, fail, db, bearer) -> None:
    headers = await bearer("user")
    async with fail("insert"):
        await expect_503(await call(client, "POST", "/api/v1/teams/", json={"title": "Fragile"}, headers=headers))
    assert await db.teams.count_documents({"title": "Fragile"}) == 0
    team = await (await call(client, "POST", "/api/v1/teams/", json={"title": "Fragile"}, headers=headers)).json()
    async with fail("delete"):
        await expect_503(await call(client, "DELETE", f"/api/v1/teams/{team['id']}", headers=headers))
    assert len(await stored_members(db, await db.teams.find_one({"title": "Fragile"}))) == 1
    assert (await call(client, "DELETE", f"/api/v1/teams/{team['id']}", headers=headers)).status == 204
    assert await audit(db) == []


async def test_membership_changes(client: TestClient, fail, db, bearer) -> None:
    leader = await bearer("user")
    root_id = (await (await client.get("/api/v1/users/me", headers=await bearer("root"))).json())["id"]
    team = await (await call(client, "POST", "/api/v1/teams/", json={"title": "Crew"}, headers=leader)).json()
    url = f"/api/v1/teams/{team['id']}/members/"
    async with fail("findAndModify"):
        await expect_503(await call(client, "POST", url, json={"user_id": root_id}, headers=leader))
    assert len(await stored_members(db, await db.teams.find_one({"title": "Crew"}))) == 1
    assert (await call(client, "POST", url, json={"user_id": root_id, "is_leader": True}, headers=leader)).status == 201
    demote = [{"op": "replace", "path": "/is_leader", "value": False}]
    async with fail("findAndModify"):
        await expect_503(await call(client, "PATCH", f"{url}{root_id}", json=demote, headers=leader))
        await expect_503(await call(client, "DELETE", f"{url}{root_id}", headers=leader))
    assert len((await db.teams.find_one({"title": "Crew"}))["leader_ids"]) == 2
    assert (await call(client, "DELETE", f"{url}{root_id}", headers=leader)).status == 204
    assert await audit(db) == []


async def test_killed_and_restarted_database(tmp_path: Path) -> None:
    settings = Settings(
        mongodb_url=None,
        data_dir=tmp_path,
        mongodb_db="k",
        mongodb_timeout_ms=500,
        argon2_time_cost=1,
        argon2_memory_kib=64,
    )
    app = create_app(settings)
    async with TestClient(TestServer(app)) as client:
        body = {"username": "survivor", "email": "s@example.com", "password": "long enough"}
        assert (await call(client, "POST", "/api/v1/users/", json=body)).status == 201
        embedded = app[MONGO].embedded
        assert embedded is not None
        assert embedded.process is not None
        embedded.process.kill()  # no clean shutdown
        await embedded.process.wait()
        FIGURES["faults"] += 1
        response = await call(client, "POST", "/api/v1/users/", json={**body, "username": "lost", "email": "l@e.com"})
        await expect_503(response)
        await embedded.start()
        for _ in range(50):
            if (await client.get("/readyz")).status == 200:
                break
            await asyncio.sleep(0.2)
        token = await call(
            client,
            "POST",
            "/auth/oauth2/token",
            data={
                "grant_type": "password",
                "username": "survivor",
                "password": "long enough",
                "client_id": "documentation",
            },
        )
        assert token.status == 200  # written before the crash, still there: sign-in works
        assert await app[MONGO].db.users.count_documents({"username": "survivor"}) == 1
        assert await app[MONGO].db.users.count_documents({"username": "lost"}) == 0
        assert await audit(app[MONGO].db) == []
