"""Database operations per request, counted from the real server's `serverStatus` opcounters (the
change stream's getMores are not among the counted kinds): what each request costs the database does
not depend on the data, and these are its budgets."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from service.audit import AUDITOR

COUNTED = ("insert", "query", "update", "delete", "command")


@pytest.fixture
def operations(backend: str, app, db) -> Callable[[Callable[[], Awaitable[Any]]], Awaitable[int]]:
    """`await operations(request)`: how many database operations `request` cost."""
    if backend != "secantus":
        pytest.skip("opcounters are the real server's (--backend=secantus)")

    async def counters() -> int:
        status = await db.client.admin.command("serverStatus")
        return sum(int(status["opcounters"][name]) for name in COUNTED)

    async def mail_settled() -> None:
        """Sign-ups queue mail, which this process's sender delivers in the background: its writes are
        not the measured request's."""
        for _ in range(100):
            if not await db.outbox.count_documents({"state": {"$in": ["queued", "sending"]}}):
                return
            await asyncio.sleep(0.05)

    async def count(request: Callable[[], Awaitable[Any]]) -> int:
        await mail_settled()
        await app[AUDITOR].flush()
        before = await counters()
        await request()
        await app[AUDITOR].flush()
        return await counters() - before - 1  # the first serverStatus counts itself

    return count


async def warm(client: TestClient, headers: dict[str, str]) -> None:
    """Let the change stream deliver earlier writes (they evict), then cache the caller's principal."""
    await asyncio.sleep(0.1)
    await ok(client, "GET", "/api/v1/users/me", headers)()


def ok(client: TestClient, method: str, url: str, headers: dict[str, str], **kwargs: Any):
    async def call() -> Any:
        response = await client.request(method, url, headers=headers, **kwargs)
        assert response.status < 300, await response.text()
        return response

    return call


async def test_lists_cost_one_query_a_page(client: TestClient, bearer, signup, operations) -> None:
    admin = await bearer("root")
    for i in range(5):
        await signup(f"paged{i}")
    await warm(client, admin)
    assert await operations(ok(client, "GET", "/api/v1/users/me", admin)) == 0
    first = await ok(client, "GET", "/api/v1/users/?limit=3", admin)()
    assert await operations(ok(client, "GET", "/api/v1/users/?limit=3", admin)) == 2  # page + count
    after = first.links["next"]["url"].path_qs
    assert await operations(ok(client, "GET", after, admin)) == 1
    # A first page that reaches the end of the list is its own count.
    assert await operations(ok(client, "GET", "/api/v1/users/?limit=50", admin)) == 1
    assert await operations(ok(client, "GET", "/api/v1/teams/", admin)) == 1


async def test_a_membership_change_costs_one_read_and_its_writes(
    client: TestClient, bearer, signup, operations
) -> None:
    admin = await bearer("root")
    team = await (await client.post("/api/v1/teams/", json={"title": "Counted"}, headers=admin)).json()
    newcomer = await signup("counted")
    await warm(client, admin)
    members = f"/api/v1/teams/{team['id']}/members/"
    member = f"{members}{newcomer['id']}"
    promote = [{"op": "replace", "path": "/is_leader", "value": True}]
    demote = [{"op": "replace", "path": "/is_leader", "value": False}]
    costs = {
        "add": await operations(ok(client, "POST", members, admin, json={"user_id": newcomer["id"]})),
        "promote": await operations(ok(client, "PATCH", member, admin, json=promote)),
        "demote": await operations(ok(client, "PATCH", member, admin, json=demote)),
        "remove": await operations(ok(client, "DELETE", member, admin)),
    }
    # One read (the team with its leaders, the caller's and the member's standing, the member's
    # user), then the writes: adding is the insert and the team's counter; a leader change is one
    # write to the team (the one-leader rule lives there). A removal needs no read: its transaction
    # is the team write, the delete and the commit.
    assert costs == {"add": 3, "promote": 2, "demote": 2, "remove": 3}, costs


async def test_an_idempotency_key_costs_two_operations_and_a_replay_two(client: TestClient, bearer, operations) -> None:
    """Idempotency-Key: the claim (an insert) and the kept answer (an update) around the request; a
    replay is the refused insert and the read of the kept answer, and nothing of the request's own."""
    admin = await bearer("root")
    await warm(client, admin)
    create = ok(client, "POST", "/api/v1/teams/", admin, json={"title": "Keyless"})
    plain = await operations(create)
    keyed = {**admin, "Idempotency-Key": "counted-once"}
    first = await operations(ok(client, "POST", "/api/v1/teams/", keyed, json={"title": "Keyed"}))
    replay = await operations(ok(client, "POST", "/api/v1/teams/", keyed, json={"title": "Keyed"}))
    assert (first - plain, replay) == (2, 2), (plain, first, replay)


async def test_a_password_grant_costs_three_operations_at_most(client: TestClient, seeded, operations) -> None:
    form = {"grant_type": "password", "client_id": "documentation", "username": "root", "password": "q"}

    async def sign_in() -> None:
        response = await client.post("/auth/oauth2/token", data=form)
        assert response.status == 200, await response.text()

    await sign_in()  # warm: the client is cached from now on
    assert await operations(sign_in) <= 3
