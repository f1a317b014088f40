"""PATCH /api/v1/users/{id}: RFC 6902 with whitelisted paths, password guard, admin-only roles, If-Match."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient

from tests.helpers import PROBLEM, with_current_password

PATCH_JSON = {"Content-Type": "application/json-patch+json"}


async def user_id(client: TestClient, headers: dict[str, str]) -> str:
    return (await (await client.get("/api/v1/users/me", headers=headers)).json())["id"]


async def patch(client: TestClient, target: str, ops, headers, **extra):
    return await client.patch(f"/api/v1/users/{target}", json=ops, headers={**headers, **extra})


async def test_patch_names_and_etag_moves(client: TestClient, bearer) -> None:
    headers = await bearer("user")
    me = await user_id(client, headers)
    response = await client.patch(
        f"/api/v1/users/{me}",
        data=b'[{"op": "replace", "path": "/first_name", "value": "Ada"}, {"op": "add", "path": "/middle_name", "value": "B"}]',
        headers={**headers, **PATCH_JSON},
    )
    assert response.status == 200
    body = await response.json()
    assert (body["first_name"], body["middle_name"]) == ("Ada", "B")
    assert response.headers["ETag"] == '"2"'
    assert body["updated"] >= body["created"]


async def test_stale_if_match_is_412_and_changes_nothing(client: TestClient, bearer) -> None:
    headers = await bearer("user")
    me = await user_id(client, headers)
    ok = await patch(
        client, me, [{"op": "replace", "path": "/last_name", "value": "One"}], headers, **{"If-Match": '"1"'}
    )
    assert ok.status == 200
    stale = await patch(
        client, me, [{"op": "replace", "path": "/last_name", "value": "Two"}], headers, **{"If-Match": '"1"'}
    )
    assert stale.status == 412
    assert (await stale.json(content_type=PROBLEM))["status"] == 412
    current = await (await client.get(f"/api/v1/users/{me}", headers=headers)).json()
    assert current["last_name"] == "One"
    star = await patch(
        client, me, [{"op": "replace", "path": "/last_name", "value": "Three"}], headers, **{"If-Match": "*"}
    )
    assert star.status == 200


async def test_concurrent_patches_are_never_lost(client: TestClient, bearer, db) -> None:
    headers = await bearer("user")
    me = await user_id(client, headers)
    fields = ["/first_name", "/middle_name", "/last_name"]
    responses = await asyncio.gather(
        *(
            patch(client, me, [{"op": "replace", "path": path, "value": f"v{i}"}], headers)
            for i, path in enumerate(fields)
        )
    )
    assert [r.status for r in responses] == [200, 200, 200]
    stored = await db.users.find_one({"username": "user"})
    assert (stored["first_name"], stored["middle_name"], stored["last_name"]) == ("v0", "v1", "v2")
    assert stored["version"] == 4


async def test_unknown_path_or_bad_operation_is_422_and_changes_nothing(client: TestClient, bearer, db) -> None:
    headers = await bearer("user")
    me = await user_id(client, headers)
    for ops in (
        [{"op": "replace", "path": "/username", "value": "hacker"}],
        [{"op": "replace", "path": "/first_name", "value": "ok"}, {"op": "move", "from": "/a", "path": "/first_name"}],
        [{"op": "replace", "path": "/first_name"}],
        [{"op": "replace", "path": "/first_name", "value": 12}],
        [{"op": "replace", "path": "/first_name", "value": "x" * 51}],
        [{"op": "remove", "path": "/first_name"}],
    ):
        response = await patch(client, me, ops, headers)
        assert response.status == 422, ops
    stored = await db.users.find_one({"username": "user"})
    assert stored["first_name"] == "Regular"
    assert stored["version"] == 1


async def test_malformed_patch_document_is_400(client: TestClient, bearer) -> None:
    headers = await bearer("user")
    me = await user_id(client, headers)
    for body in ({"op": "replace"}, [], ["replace"], "text"):
        assert (await patch(client, me, body, headers)).status == 400, body


async def test_failed_test_operation_is_409_and_atomic(client: TestClient, bearer, db) -> None:
    headers = await bearer("user")
    me = await user_id(client, headers)
    ops = [
        {"op": "replace", "path": "/first_name", "value": "Changed"},
        {"op": "test", "path": "/last_name", "value": "Not the last name"},
    ]
    assert (await patch(client, me, ops, headers)).status == 409
    assert (await db.users.find_one({"username": "user"}))["first_name"] == "Regular"
    passing = [
        {"op": "test", "path": "/last_name", "value": "User"},
        {"op": "replace", "path": "/first_name", "value": "Ok"},
    ]
    assert (await patch(client, me, passing, headers)).status == 200


async def test_email_change_needs_current_password_first(client: TestClient, bearer, db) -> None:
    headers = await bearer("user")
    me = await user_id(client, headers)
    change = {"op": "replace", "path": "/email", "value": "new@example.com"}
    assert (await patch(client, me, [change], headers)).status == 403
    wrong = [{"op": "test", "path": "/current_password", "value": "nope"}, change]
    assert (await patch(client, me, wrong, headers)).status == 403
    after = [change, {"op": "test", "path": "/current_password", "value": "w"}]
    assert (await patch(client, me, after, headers)).status == 403
    right = [{"op": "test", "path": "/current_password", "value": "w"}, change]
    response = await patch(client, me, right, headers)
    assert response.status == 200
    assert (await response.json())["email"] == "new@example.com"
    assert (await db.users.find_one({"username": "user"}))["email_key"] == "new@example.com"


async def test_email_taken_is_409(client: TestClient, bearer) -> None:
    headers = await bearer("user")
    me = await user_id(client, headers)
    ops = with_current_password({"op": "replace", "path": "/email", "value": "ROOT@example.com"})
    assert (await patch(client, me, ops, headers)).status == 409


async def test_password_change_revokes_tokens_and_says_so(client: TestClient, bearer, login) -> None:
    headers = await bearer("user")
    other_session = await bearer("user")
    me = await user_id(client, headers)
    ops = with_current_password({"op": "replace", "path": "/password", "value": "a much better password"})
    response = await patch(client, me, ops, headers)
    assert response.status == 200
    assert response.headers["X-Tokens-Revoked"] == "true"
    assert (await client.get("/api/v1/users/me", headers=headers)).status == 401
    assert (await client.get("/api/v1/users/me", headers=other_session)).status == 401
    assert (await login("user", "a much better password"))["access_token"]


async def test_short_new_password_is_422(client: TestClient, bearer) -> None:
    headers = await bearer("user")
    me = await user_id(client, headers)
    ops = with_current_password({"op": "replace", "path": "/password", "value": "short"})
    assert (await patch(client, me, ops, headers)).status == 422


async def test_roles_only_admins_may_change(client: TestClient, bearer, login) -> None:
    headers = await bearer("user")
    me = await user_id(client, headers)
    promote = [{"op": "replace", "path": "/is_admin", "value": True}]
    assert (await patch(client, me, promote, headers)).status == 403
    admin = await bearer("root")
    deactivate = await patch(client, me, [{"op": "replace", "path": "/is_active", "value": False}], admin)
    assert deactivate.status == 200
    assert (await client.get("/api/v1/users/me", headers=headers)).status == 401
    response = await client.post(
        "/auth/oauth2/token",
        data={"grant_type": "password", "username": "user", "password": "w", "client_id": "documentation"},
    )
    assert (await response.json())["error"] == "invalid_grant"


async def test_others_cannot_patch_and_admin_uses_own_password(client: TestClient, bearer, signup) -> None:
    victim = await signup("victim")
    user_headers = await bearer("user")
    rename = [{"op": "replace", "path": "/first_name", "value": "Pwned"}]
    assert (await patch(client, victim["id"], rename, user_headers)).status == 404
    admin = await bearer("root")
    assert (await patch(client, victim["id"], rename, admin)).status == 200
    reset = [
        {"op": "test", "path": "/current_password", "value": "q"},
        {"op": "replace", "path": "/password", "value": "reset by admin"},
    ]
    assert (await patch(client, victim["id"], reset, admin)).status == 200


async def test_patch_needs_users_write_scope(client: TestClient, bearer) -> None:
    headers = await bearer("user", scope="users:read")
    me = await user_id(client, headers)
    response = await patch(client, me, [{"op": "replace", "path": "/first_name", "value": "X"}], headers)
    assert response.status == 403
    assert 'scope="users:write"' in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize("header", ["", "kiq", "{}", '"1', "1", '"1",,"2"'])
async def test_malformed_if_match_is_400_and_changes_nothing(client: TestClient, bearer, db, header: str) -> None:
    headers = await bearer("user")
    me = await user_id(client, headers)
    response = await patch(
        client, me, [{"op": "replace", "path": "/first_name", "value": "E"}], headers, **{"If-Match": header}
    )
    assert response.status == 400
    assert response.content_type == "application/problem+json"
    assert (await db.users.find_one({"username": "user"}))["first_name"] != "E"


@pytest.mark.parametrize(("header", "status"), [("*", 200), ('W/"1"', 412), ('"abc"', 412), ('"9", "1"', 412)])
async def test_well_formed_if_match_values(client: TestClient, bearer, header: str, status: int) -> None:
    headers = await bearer("user")
    me = await user_id(client, headers)
    response = await patch(
        client, me, [{"op": "replace", "path": "/first_name", "value": "E"}], headers, **{"If-Match": header}
    )
    assert response.status == status


async def test_members_an_operation_does_not_define_are_ignored(client: TestClient, bearer) -> None:
    headers = await bearer("user")
    me = await user_id(client, headers)
    operation = {"op": "replace", "path": "/first_name", "value": "Ada", "comment": "RFC 6902 section 4", "from": "/x"}
    response = await patch(client, me, [operation], headers)
    assert response.status == 200, await response.text()
    assert (await response.json())["first_name"] == "Ada"


async def test_current_password_can_only_be_tested(client: TestClient, bearer) -> None:
    headers = await bearer("user")
    me = await user_id(client, headers)
    response = await patch(client, me, [{"op": "replace", "path": "/current_password", "value": "w"}], headers)
    assert response.status == 422
