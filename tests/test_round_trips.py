"""Database operations per request, counted from the real server's `serverStatus` opcounters (the
change stream's getMores are not among the counted kinds): what each request costs the database does
not depend on the data, and these are its budgets."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from service import keys

COUNTED = ("insert", "query", "update", "delete", "command")


@pytest.fixture
def operations(backend: str, app, db) -> Callable[[Callable[[], Awaitable[Any]]], Awaitable[int]]:
    """`await operations(request)`: how many database operations `request` cost."""
    if backend != "secantus":
        pytest.skip("opcounters are the real server's (--backend=secantus)")

    async def counters() -> int:
        status = await db.client.admin.command("serverStatus")
        return sum(int(status["opcounters"][name]) for name in COUNTED)

    async def count(request: Callable[[], Awaitable[Any]]) -> int:
        await app[keys.auditor].flush()
        before = await counters()
        await request()
        await app[keys.auditor].flush()
        return await counters() - before - 1  # the first serverStatus counts itself

    return count


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
    await ok(client, "GET", "/api/v1/users/me", admin)()  # the principal is cached from now on
    assert await operations(ok(client, "GET", "/api/v1/users/me", admin)) == 0
    first = await ok(client, "GET", "/api/v1/users/?limit=3", admin)()
    assert await operations(ok(client, "GET", "/api/v1/users/?limit=3", admin)) == 2  # page + count
    after = first.links["next"]["url"].path_qs
    assert await operations(ok(client, "GET", after, admin)) == 1
    # A first page that reaches the end of the list is its own count.
    assert await operations(ok(client, "GET", "/api/v1/users/?limit=50", admin)) == 1
    assert await operations(ok(client, "GET", "/api/v1/teams/", admin)) == 1
