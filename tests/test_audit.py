"""The security audit trail: events for sign-ins, tokens, account and client changes; admins read them."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from service.audit import AUDITOR
from tests.helpers import basic, past_refresh_grace, with_current_password

TOKEN = "/auth/oauth2/token"


async def settle(app: web.Application) -> None:
    """Audit writes run in the background: wait for them before reading the collection."""
    await asyncio.gather(*app[AUDITOR].pending)


async def events(client: TestClient, headers: dict[str, str], query: str = "") -> list[dict[str, Any]]:
    await settle(client.app)
    response = await client.get(f"/api/v1/audit/?limit=100{query}", headers=headers)
    assert response.status == 200, await response.text()
    return await response.json()


async def test_sign_ins_and_their_failures_are_recorded_newest_first(client: TestClient, bearer, db) -> None:
    wrong = {"grant_type": "password", "username": "user", "password": "nope-nope", "client_id": "documentation"}
    assert (await client.post(TOKEN, data=wrong, headers={"X-Request-ID": "req-audit-1"})).status == 400
    admin = await bearer("root")
    found = await events(client, admin)
    names = [event["event"] for event in found]
    assert names[:3] == ["token.issued", "signin.success", "signin.failure"]
    failure = found[2]
    assert failure["username"] == "user"
    assert failure["client_id"] == "documentation"
    assert failure["request_id"] == "req-audit-1"
    assert failure["client_address"] == "127.0.0.1"
    assert found[0]["grant_type"] == "password"
    assert [e["created"] for e in found] == sorted((e["created"] for e in found), reverse=True)
    stored = await db.audit_events.find({}).to_list(None)
    assert all("nope-nope" not in str(document) for document in stored)
    assert all(document["expires_at"] > document["created"] for document in stored)


async def test_account_changes_and_clients_are_recorded(client: TestClient, bearer, register_client) -> None:
    user = await bearer("user")
    me = await (await client.get("/api/v1/users/me", headers=user)).json()
    changed = await client.patch(
        f"/api/v1/users/{me['id']}",
        json=with_current_password({"op": "replace", "path": "/password", "value": "a whole new one"}),
        headers=user,
    )
    assert changed.status == 200
    admin = await bearer("root")
    for path, value in (("/is_admin", True), ("/is_active", False)):
        response = await client.patch(
            f"/api/v1/users/{me['id']}", json=[{"op": "replace", "path": path, "value": value}], headers=admin
        )
        assert response.status == 200
    created = await register_client("root")
    assert (await client.delete(f"/api/v1/auth/oauth2_clients/{created['client_id']}", headers=admin)).status == 204
    about_user = [e["event"] for e in await events(client, admin, f"&user_id={me['id']}")]
    for name in ("user.password_changed", "user.role_changed", "user.deactivated", "signin.success"):
        assert name in about_user
    assert "client.created" not in about_user  # root's client, not the user's
    clients = await events(client, admin, "&event=client.deleted")
    assert [e["client_id"] for e in clients] == [created["client_id"]]


async def test_revocation_and_refresh_reuse_are_recorded(client: TestClient, login, bearer, db) -> None:
    token = await login("user", "w")
    refresh = {"grant_type": "refresh_token", "refresh_token": token["refresh_token"], "client_id": "documentation"}
    assert (await client.post(TOKEN, data=refresh)).status == 200
    await past_refresh_grace(db, token["refresh_token"])
    assert (await client.post(TOKEN, data=refresh)).status == 400  # replayed: the family is revoked
    await client.post("/auth/oauth2/revoke", data={"token": token["access_token"], "client_id": "documentation"})
    names = [e["event"] for e in await events(client, await bearer("root"))]
    assert "token.refresh_reuse_detected" in names
    assert "token.revoked" in names


async def test_only_admins_read_the_trail_and_filters_are_validated(client: TestClient, bearer) -> None:
    assert (await client.get("/api/v1/audit/", headers=await bearer("user"))).status == 403
    assert (await client.get("/api/v1/audit/")).status == 401
    admin = await bearer("root")
    assert (await client.get("/api/v1/audit/?event=no.such.event", headers=admin)).status == 422
    assert (await client.get("/api/v1/audit/?limit=0", headers=admin)).status == 422


async def test_the_trail_pages_by_cursor(client: TestClient, bearer) -> None:
    admin = await bearer("root")
    for _ in range(3):
        await bearer("user")
    everything = await events(client, admin)
    walked: list[dict[str, Any]] = []
    url: str | None = "/api/v1/audit/?limit=2"
    while url:
        response = await client.get(url, headers=admin)
        walked += await response.json()
        link = response.headers.get("Link")
        url = link[1 : link.index(">")] if link else None
    assert [e["id"] for e in walked] == [e["id"] for e in everything]


async def test_a_lost_audit_write_never_fails_the_request(client: TestClient, app: web.Application, seeded) -> None:
    class Down:
        async def insert_many(self, documents: list[dict[str, Any]], ordered: bool) -> None:
            raise ConnectionError("database unavailable")

    auditor = app[AUDITOR]
    auditor.db = type("Db", (), {"audit_events": Down()})()
    form = {"grant_type": "password", "username": "user", "password": "w", "client_id": "documentation"}
    assert (await client.post(TOKEN, data=form)).status == 200
    await settle(app)
    assert auditor.dropped == 2  # signin.success and token.issued, counted, not raised


async def test_client_credentials_issue_is_recorded(client: TestClient, register_client, bearer) -> None:
    created = await register_client("user", allowed_scopes=["users:read"])
    response = await client.post(
        TOKEN, data={"grant_type": "client_credentials"}, headers=basic(created["client_id"], created["client_secret"])
    )
    assert response.status == 200
    issued = await events(client, await bearer("root"), "&event=token.issued")
    assert issued[1]["grant_type"] == "client_credentials"  # [0] is root's own sign-in just now
