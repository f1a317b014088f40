"""Refresh rotation with a grace window (REFRESH_REUSE_GRACE): a refresh token just rotated out, presented
again by its client, gets a fresh pair in the same family; after the window, or once the family was
revoked, it is a replay as before."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from aiohttp.test_utils import TestClient

from service.config import Settings
from service.crypto import hash_secret
from tests.helpers import past_refresh_grace

TOKEN = "/auth/oauth2/token"


async def refresh(client: TestClient, refresh_token: str):
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": "documentation"}
    return await client.post(TOKEN, data=form)


async def works(client: TestClient, access_token: str) -> bool:
    response = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {access_token}"})
    return response.status == 200


async def family_of(db, refresh_token: str) -> str:
    return (await db.oauth2_tokens.find_one({"refresh_hash": hash_secret(refresh_token)}))["family_id"]


async def test_a_lost_response_is_forgiven_within_the_window(client: TestClient, login, db) -> None:
    first = await login("user", "w")
    lost = await (await refresh(client, first["refresh_token"])).json()  # the answer that never arrived
    again = await refresh(client, first["refresh_token"])
    assert again.status == 200
    retried = await again.json()
    assert retried["refresh_token"] not in (first["refresh_token"], lost["refresh_token"])
    assert await family_of(db, retried["refresh_token"]) == await family_of(db, first["refresh_token"])
    assert await works(client, retried["access_token"])
    assert await works(client, lost["access_token"])  # the other tab's pair keeps working too
    assert (await refresh(client, retried["refresh_token"])).status == 200


async def test_ten_concurrent_refreshes_with_one_token_all_succeed(client: TestClient, login, db) -> None:
    first = await login("user", "w")
    answers = await asyncio.gather(*(refresh(client, first["refresh_token"]) for _ in range(10)))
    assert [answer.status for answer in answers] == [200] * 10
    bodies = [await answer.json() for answer in answers]
    assert len({body["refresh_token"] for body in bodies}) == 10
    assert all([await works(client, body["access_token"]) for body in bodies])
    family = await family_of(db, first["refresh_token"])
    assert await db.oauth2_tokens.count_documents({"family_id": family, "revoked": False}) == 10


async def test_after_the_window_reuse_revokes_the_family_and_what_the_window_gave(client: TestClient, login, db):
    first = await login("user", "w")
    second = await (await refresh(client, first["refresh_token"])).json()
    third = await (await refresh(client, first["refresh_token"])).json()  # within the window
    await past_refresh_grace(db, first["refresh_token"])
    late = await refresh(client, first["refresh_token"])
    assert late.status == 400
    assert (await late.json())["error"] == "invalid_grant"
    for pair in (second, third):
        assert not await works(client, pair["access_token"])
        assert (await refresh(client, pair["refresh_token"])).status == 400


async def test_a_revoked_family_cannot_come_back_through_the_window(client: TestClient, login) -> None:
    first = await login("user", "w")
    second = await (await refresh(client, first["refresh_token"])).json()
    revoked = await client.post(
        "/auth/oauth2/revoke", data={"token": second["refresh_token"], "client_id": "documentation"}
    )
    assert revoked.status == 200
    again = await refresh(client, first["refresh_token"])
    assert again.status == 400
    assert (await again.json())["error"] == "invalid_grant"


async def test_a_password_change_ends_the_window_too(client: TestClient, login, bearer) -> None:
    first = await login("user", "w")
    await refresh(client, first["refresh_token"])
    headers = await bearer("user")
    me = await (await client.get("/api/v1/users/me", headers=headers)).json()
    changed = await client.patch(
        f"/api/v1/users/{me['id']}",
        json=[
            {"op": "test", "path": "/current_password", "value": "w"},
            {"op": "replace", "path": "/password", "value": "a whole new one"},
        ],
        headers=headers,
    )
    assert changed.status == 200
    assert (await refresh(client, first["refresh_token"])).status == 400


async def test_another_client_cannot_use_the_window(client: TestClient, login, bearer) -> None:
    first = await login("user", "w")
    await refresh(client, first["refresh_token"])
    created = await client.post(
        "/api/v1/auth/oauth2_clients/",
        json={
            "client_type": "public",
            "redirect_uris": ["https://app.example/cb"],
            "default_scopes": ["users:read"],
            "allowed_scopes": ["users:read"],
        },
        headers=await bearer("user"),
    )
    other = (await created.json())["client_id"]
    form = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"], "client_id": other}
    answer = await client.post(TOKEN, data=form)
    assert answer.status == 400
    assert (await answer.json())["error"] == "invalid_grant"


class TestStrictRotation:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return dataclasses.replace(settings, refresh_reuse_grace=0)

    async def test_without_a_window_the_first_reuse_revokes_the_family(self, client: TestClient, login) -> None:
        first = await login("user", "w")
        second = await (await refresh(client, first["refresh_token"])).json()
        assert (await refresh(client, first["refresh_token"])).status == 400
        assert not await works(client, second["access_token"])
