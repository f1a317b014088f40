"""/api/v1/teams: create, list, read, rename, delete; who may do what."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from tests.helpers import PROBLEM


async def new_team(client: TestClient, headers, title: str = "Team A"):
    response = await client.post("/api/v1/teams/", json={"title": title}, headers=headers)
    assert response.status == 201, await response.text()
    return await response.json()


async def my_id(client: TestClient, headers) -> str:
    return (await (await client.get("/api/v1/users/me", headers=headers)).json())["id"]


async def test_creator_becomes_the_leader_atomically(client: TestClient, bearer, db) -> None:
    headers = await bearer("user")
    response = await client.post("/api/v1/teams", json={"title": "Builders"}, headers=headers)
    assert response.status == 201
    team = await response.json()
    assert set(team) == {"id", "title", "created", "updated"}
    assert response.headers["Location"] == f"/api/v1/teams/{team['id']}"
    assert response.headers["ETag"] == '"1"'
    members = await (await client.get(f"/api/v1/teams/{team['id']}/members/", headers=headers)).json()
    assert [(m["user"]["username"], m["is_leader"]) for m in members] == [("user", True)]
    assert set(members[0]["user"]) == {"id", "username", "first_name", "middle_name", "last_name"}


async def test_title_validation(client: TestClient, bearer) -> None:
    headers = await bearer("user")
    for body in ({"title": ""}, {"title": "x" * 51}, {}, {"title": 5}):
        response = await client.post("/api/v1/teams/", json=body, headers=headers)
        assert response.status == 422, body
        assert "title" in (await response.json(content_type=PROBLEM))["errors"]


async def test_members_see_their_teams_and_admins_see_all(client: TestClient, bearer, signup, login) -> None:
    await signup("carol")
    carol = {"Authorization": f"Bearer {(await login('carol', 'long enough pw'))['access_token']}"}
    mine = await new_team(client, carol, "Carol's")
    listed = await client.get("/api/v1/teams/", headers=carol)
    assert listed.headers["X-Total-Count"] == "1"
    assert [t["id"] for t in await listed.json()] == [mine["id"]]
    admin = await client.get("/api/v1/teams/?limit=100", headers=await bearer("root"))
    assert admin.headers["X-Total-Count"] == "3"  # two fixture teams + Carol's
    user = await client.get("/api/v1/teams/", headers=await bearer("user"))
    assert {t["title"] for t in await user.json()} == {"Platform", "Documentation"}


async def test_non_members_get_404_and_members_403_on_writes(client: TestClient, bearer, signup, login) -> None:
    await signup("dave")
    dave = {"Authorization": f"Bearer {(await login('dave', 'long enough pw'))['access_token']}"}
    root = await bearer("root")
    team = await new_team(client, root, "Root's")
    url = f"/api/v1/teams/{team['id']}"
    assert (await client.get(url, headers=dave)).status == 404
    assert (await client.get(f"{url}/members/", headers=dave)).status == 404
    dave_id = await my_id(client, dave)
    added = await client.post(f"{url}/members/", json={"user_id": dave_id}, headers=root)
    assert added.status == 201
    assert (await client.get(url, headers=dave)).status == 200
    rename = [{"op": "replace", "path": "/title", "value": "Dave's now"}]
    assert (await client.patch(url, json=rename, headers=dave)).status == 403
    assert (await client.delete(url, headers=dave)).status == 403
    assert (await client.get("/api/v1/teams/nope", headers=dave)).status == 404


async def test_rename_with_json_patch_and_if_match(client: TestClient, bearer) -> None:
    headers = await bearer("user")
    team = await new_team(client, headers)
    url = f"/api/v1/teams/{team['id']}"
    ops = [{"op": "replace", "path": "/title", "value": "Renamed"}]
    response = await client.patch(url, json=ops, headers={**headers, "If-Match": '"1"'})
    assert response.status == 200
    assert (await response.json())["title"] == "Renamed"
    assert response.headers["ETag"] == '"2"'
    stale = await client.patch(
        url, json=[{"op": "replace", "path": "/title", "value": "Lost"}], headers={**headers, "If-Match": '"1"'}
    )
    assert stale.status == 412
    assert (await (await client.get(url, headers=headers)).json())["title"] == "Renamed"
    bad = await client.patch(url, json=[{"op": "replace", "path": "/members", "value": []}], headers=headers)
    assert bad.status == 422
    empty = await client.patch(url, json=[{"op": "replace", "path": "/title", "value": ""}], headers=headers)
    assert empty.status == 422
    failed_test = await client.patch(url, json=[{"op": "test", "path": "/title", "value": "Other"}], headers=headers)
    assert failed_test.status == 409


async def test_delete_removes_team_and_memberships(client: TestClient, bearer, db) -> None:
    headers = await bearer("user")
    team = await new_team(client, headers)
    url = f"/api/v1/teams/{team['id']}"
    assert (await client.delete(url, headers={**headers, "If-Match": '"7"'})).status == 412
    assert (await client.delete(url, headers=headers)).status == 204
    assert (await client.get(url, headers=headers)).status == 404
    assert await db.teams.count_documents({"title": "Team A"}) == 0
    assert (await client.delete(url, headers=headers)).status == 404


async def test_admin_manages_any_team(client: TestClient, bearer) -> None:
    team = await new_team(client, await bearer("user"))
    admin = await bearer("root")
    url = f"/api/v1/teams/{team['id']}"
    assert (
        await client.patch(url, json=[{"op": "replace", "path": "/title", "value": "By admin"}], headers=admin)
    ).status == 200
    assert (await client.delete(url, headers=admin)).status == 204


async def test_scopes(client: TestClient, bearer) -> None:
    read_only = await bearer("user", scope="teams:read")
    response = await client.post("/api/v1/teams/", json={"title": "X"}, headers=read_only)
    assert response.status == 403
    assert 'scope="teams:write"' in response.headers["WWW-Authenticate"]
    assert (await client.get("/api/v1/teams/")).status == 401


async def test_concurrent_renames_without_if_match_all_succeed(client: TestClient, bearer, db) -> None:
    # Regression (found by the benchmark): many concurrent PATCHes of one team exhausted the optimistic
    # retries and answered 409. A patch with no `test` and no If-Match does not depend on the stored
    # state, so it is written unguarded: every request lands, the last one wins.
    import asyncio

    headers = await bearer("user")
    team = await new_team(client, headers, "Contended")
    url = f"/api/v1/teams/{team['id']}"
    responses = await asyncio.gather(
        *(
            client.patch(url, json=[{"op": "replace", "path": "/title", "value": f"T{i}"}], headers=headers)
            for i in range(100)
        )
    )
    assert [r.status for r in responses] == [200] * 100
    stored = await db.teams.find_one({"title": {"$regex": "^T"}})
    assert stored["version"] == 101
    guarded = await client.patch(
        url, json=[{"op": "replace", "path": "/title", "value": "X"}], headers={**headers, "If-Match": '"1"'}
    )
    assert guarded.status == 412
