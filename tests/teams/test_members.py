"""Memberships: add, list, promote/demote, remove; the one-leader rule, also under concurrency."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient
from bson import ObjectId

from service.db import utcnow
from service.teams import repository as teams_repository
from service.teams.repository import (
    count_members_in_team_documents,
    key_memberships,
    leaders_into_team_documents,
    member_line,
    memberships_out_of_team_documents,
    place_memberships,
)
from service.users.repository import new_user_document
from tests.helpers import PROBLEM, stored_members


async def setup_team(client: TestClient, bearer):
    leader = await bearer("user")
    team = await (await client.post("/api/v1/teams/", json={"title": "Crew"}, headers=leader)).json()
    return leader, f"/api/v1/teams/{team['id']}"


async def user_id(client: TestClient, headers) -> str:
    return (await (await client.get("/api/v1/users/me", headers=headers)).json())["id"]


async def test_add_member_then_duplicate_and_unknown_user(client: TestClient, bearer) -> None:
    leader, url = await setup_team(client, bearer)
    root = await bearer("root")
    root_id = await user_id(client, root)
    added = await client.post(f"{url}/members/", json={"user_id": root_id, "is_leader": False}, headers=leader)
    assert added.status == 201
    body = await added.json()
    assert body["user"]["username"] == "root"
    assert body["is_leader"] is False
    assert added.headers["Location"] == f"{url}/members/{root_id}"
    again = await client.post(f"{url}/members/", json={"user_id": root_id}, headers=leader)
    assert again.status == 409
    ghost = await client.post(f"{url}/members/", json={"user_id": "0" * 24}, headers=leader)
    assert ghost.status == 404
    garbage = await client.post(f"{url}/members/", json={"user_id": "zzz"}, headers=leader)
    assert garbage.status == 404
    missing = await client.post(f"{url}/members/", json={}, headers=leader)
    assert missing.status == 422


async def test_list_members_paginated(client: TestClient, bearer, signup) -> None:
    leader, url = await setup_team(client, bearer)
    for name in ("mem1", "mem2", "mem3"):
        created = await signup(name)
        await client.post(f"{url}/members/", json={"user_id": created["id"]}, headers=leader)
    response = await client.get(f"{url}/members/?offset=1&limit=2", headers=leader)
    assert response.headers["X-Total-Count"] == "4"
    assert [m["user"]["username"] for m in await response.json()] == ["mem1", "mem2"]


async def test_promote_and_last_leader_rule(client: TestClient, bearer) -> None:
    leader, url = await setup_team(client, bearer)
    me = await user_id(client, leader)
    demote_me = [{"op": "replace", "path": "/is_leader", "value": False}]
    last = await client.patch(f"{url}/members/{me}", json=demote_me, headers=leader)
    assert last.status == 409
    assert "leader" in (await last.json(content_type=PROBLEM))["detail"]
    assert (await client.delete(f"{url}/members/{me}", headers=leader)).status == 409

    root = await bearer("root")
    root_id = await user_id(client, root)
    await client.post(f"{url}/members/", json={"user_id": root_id}, headers=leader)
    promote = await client.patch(
        f"{url}/members/{root_id}", json=[{"op": "replace", "path": "/is_leader", "value": True}], headers=leader
    )
    assert promote.status == 200
    assert (await promote.json())["is_leader"] is True
    assert (await client.patch(f"{url}/members/{me}", json=demote_me, headers=leader)).status == 200
    bad_path = await client.patch(
        f"{url}/members/{root_id}", json=[{"op": "replace", "path": "/user", "value": 1}], headers=root
    )
    assert bad_path.status == 422
    bad_value = await client.patch(
        f"{url}/members/{root_id}", json=[{"op": "replace", "path": "/is_leader", "value": "yes"}], headers=root
    )
    assert bad_value.status == 422


async def test_members_may_leave_but_not_remove_others(client: TestClient, bearer, signup, login) -> None:
    leader, url = await setup_team(client, bearer)
    for name in ("erin", "fred"):
        created = await signup(name)
        await client.post(f"{url}/members/", json={"user_id": created["id"]}, headers=leader)
    erin = {"Authorization": f"Bearer {(await login('erin', 'long enough pw'))['access_token']}"}
    erin_id = await user_id(client, erin)
    members = await (await client.get(f"{url}/members/", headers=erin)).json()
    fred_id = next(m["user"]["id"] for m in members if m["user"]["username"] == "fred")
    assert (await client.delete(f"{url}/members/{fred_id}", headers=erin)).status == 403
    assert (await client.delete(f"{url}/members/{erin_id}", headers=erin)).status == 204
    assert (await client.get(url, headers=erin)).status == 404
    assert (await client.delete(f"{url}/members/{fred_id}", headers=leader)).status == 204
    assert (await client.delete(f"{url}/members/{fred_id}", headers=leader)).status == 404


async def test_stale_if_match_on_membership_changes(client: TestClient, bearer) -> None:
    leader, url = await setup_team(client, bearer)
    root_id = await user_id(client, await bearer("root"))
    added = await client.post(f"{url}/members/", json={"user_id": root_id}, headers=leader)
    etag = added.headers["ETag"]
    assert etag == '"2"'
    promote = [{"op": "replace", "path": "/is_leader", "value": True}]
    assert (
        await client.patch(f"{url}/members/{root_id}", json=promote, headers={**leader, "If-Match": '"1"'})
    ).status == 412
    assert (await client.delete(f"{url}/members/{root_id}", headers={**leader, "If-Match": '"1"'})).status == 412
    assert (await client.delete(f"{url}/members/{root_id}", headers={**leader, "If-Match": etag})).status == 204


async def test_deactivated_member_keeps_membership_but_loses_access(
    client: TestClient, bearer, signup, login, db
) -> None:
    leader, url = await setup_team(client, bearer)
    created = await signup("gina")
    await client.post(f"{url}/members/", json={"user_id": created["id"]}, headers=leader)
    gina = {"Authorization": f"Bearer {(await login('gina', 'long enough pw'))['access_token']}"}
    await db.users.update_one({"username": "gina"}, {"$set": {"is_active": False}})
    assert (await client.get(url, headers=gina)).status == 401
    members = await (await client.get(f"{url}/members/", headers=leader)).json()
    assert "gina" in [m["user"]["username"] for m in members]


async def test_fifty_concurrent_additions_all_land(client: TestClient, bearer, db) -> None:
    leader, url = await setup_team(client, bearer)
    docs = [
        new_user_document(username=f"bulk{i}", email=f"bulk{i}@example.com", password_hash="x", names={}, roles={})
        for i in range(50)
    ]
    ids = (await db.users.insert_many(docs)).inserted_ids
    responses = await asyncio.gather(
        *(client.post(f"{url}/members/", json={"user_id": str(oid)}, headers=leader) for oid in ids)
    )
    assert sorted(r.status for r in responses) == [201] * 50
    team = await db.teams.find_one({"title": "Crew"})
    assert len(await stored_members(db, team)) == 51
    assert team["version"] == 51


async def test_two_leaders_demoting_each_other_at_once_keep_one_leader(client: TestClient, bearer, db) -> None:
    for _ in range(5):
        leader, url = await setup_team(client, bearer)
        root = await bearer("root")
        me, root_id = await user_id(client, leader), await user_id(client, root)
        await client.post(f"{url}/members/", json={"user_id": root_id, "is_leader": True}, headers=leader)
        demote = [{"op": "replace", "path": "/is_leader", "value": False}]
        first, second = await asyncio.gather(
            client.patch(f"{url}/members/{root_id}", json=demote, headers=leader),
            client.patch(f"{url}/members/{me}", json=demote, headers=root),
        )
        # One wins; the other is refused: 409 if it re-read a one-leader team, or 403 if by then its
        # caller had already been demoted. Either way the team keeps exactly one leader.
        statuses = sorted([first.status, second.status])
        assert statuses[0] == 200
        assert statuses[1] in (403, 409)
        team = await db.teams.find_one({"_id": ObjectId(url.rsplit("/", 1)[1])})
        assert len(team["leader_ids"]) == 1
        assert team["leader_ids"][0] in {m["user_id"] for m in await stored_members(db, team)}
        await db.teams.delete_one({"_id": team["_id"]})


async def test_concurrent_leader_removals_keep_one_leader(client: TestClient, bearer, db) -> None:
    leader, url = await setup_team(client, bearer)
    root = await bearer("root")
    me, root_id = await user_id(client, leader), await user_id(client, root)
    await client.post(f"{url}/members/", json={"user_id": root_id, "is_leader": True}, headers=leader)
    first, second = await asyncio.gather(
        client.delete(f"{url}/members/{me}", headers=leader),
        client.delete(f"{url}/members/{root_id}", headers=root),
    )
    assert sorted([first.status, second.status]) == [204, 409]
    team = await db.teams.find_one({"title": "Crew"})
    members = await stored_members(db, team)
    assert len(members) == 1
    assert team["leader_ids"] == [members[0]["user_id"]]


async def test_numbers_are_not_booleans(client: TestClient, bearer) -> None:
    # Regression (found by schemathesis): {"is_leader": 0} was accepted because 0 == False in Python.
    leader, url = await setup_team(client, bearer)
    root_id = await user_id(client, await bearer("root"))
    for value in (0, 1, "true"):
        response = await client.post(f"{url}/members/", json={"user_id": root_id, "is_leader": value}, headers=leader)
        assert response.status == 422, value


async def test_migration_moves_embedded_members_out_idempotently(db, app) -> None:
    now = utcnow()
    leader, member = ObjectId(), ObjectId()
    legacy = {
        "_id": ObjectId(),
        "title": "Legacy",
        "created": now,
        "updated": now,
        "version": 3,
        "members": [
            {"user_id": leader, "is_leader": True, "created": now},
            {"user_id": member, "is_leader": False, "created": now},
        ],
    }
    await db.teams.insert_one(legacy)
    await memberships_out_of_team_documents(db)
    await memberships_out_of_team_documents(db)  # a second run (or a run after a crash) changes nothing
    team = await db.teams.find_one({"_id": legacy["_id"]})
    assert "members" not in team
    assert team["leaders"] == 1
    members = sorted(await stored_members(db, team), key=lambda m: m["is_leader"])
    assert [(m["user_id"], m["is_leader"]) for m in members] == [(member, False), (leader, True)]
    assert all(m["team_created"] == legacy["created"] for m in members)


async def test_the_member_count_comes_from_the_team_and_follows_adds_and_removals(
    client: TestClient, bearer, db
) -> None:
    leader, url = await setup_team(client, bearer)
    root_id = await user_id(client, await bearer("root"))
    assert (await client.post(f"{url}/members/", json={"user_id": root_id}, headers=leader)).status == 201
    listed = await client.get(f"{url}/members/", headers=leader)
    assert listed.headers["X-Total-Count"] == "2"
    assert (await client.delete(f"{url}/members/{root_id}", headers=leader)).status == 204
    listed = await client.get(f"{url}/members/", headers=leader)
    assert listed.headers["X-Total-Count"] == "1"
    team = await db.teams.find_one({"title": "Crew"})
    assert team["members"] == len(await stored_members(db, team)) == 1
    # The header is the counter (no count query): a counter out of step would show.
    await db.teams.update_one({"_id": team["_id"]}, {"$set": {"members": 7}})
    assert (await client.get(f"{url}/members/", headers=leader)).headers["X-Total-Count"] == "7"


async def test_migration_counts_members_into_team_documents_idempotently(db, app) -> None:
    now = utcnow()
    counted, uncounted = ObjectId(), ObjectId()
    await db.teams.insert_many(
        [
            {"_id": counted, "title": "Counted", "leaders": 1, "members": 1, "created": now, "version": 1},
            {"_id": uncounted, "title": "Uncounted", "leaders": 1, "created": now, "version": 1},
        ]
    )
    await db.memberships.insert_many(
        [{"team_id": uncounted, "user_id": ObjectId(), "is_leader": i == 0, "created": now} for i in range(3)]
    )
    await count_members_in_team_documents(db)
    await count_members_in_team_documents(db)
    assert (await db.teams.find_one({"_id": uncounted}))["members"] == 3
    assert (await db.teams.find_one({"_id": counted}))["members"] == 1  # already counted: left alone


async def test_migration_keys_memberships_idempotently(db) -> None:
    team_id, user_id = ObjectId(), ObjectId()
    await db.memberships.insert_one({"team_id": team_id, "user_id": user_id, "is_leader": True})
    await key_memberships(db)
    await key_memberships(db)  # a second run (or one after a crash) changes nothing
    stored = await db.memberships.find({"team_id": team_id}).to_list(None)
    assert [m["key"] for m in stored] == [f"{team_id}:{user_id}"]


async def test_a_team_of_five_thousand_keeps_one_leader_under_concurrent_demotions(
    backend: str, client: TestClient, bearer, db
) -> None:
    if backend != "secantus":
        pytest.skip("transactions and their conflicts are the real server's (--backend=secantus)")
    leader, url = await setup_team(client, bearer)
    team = await db.teams.find_one({"title": "Crew"})
    root = await bearer("root")
    root_id = await user_id(client, root)
    await client.post(f"{url}/members/", json={"user_id": root_id, "is_leader": True}, headers=leader)
    team = await db.teams.find_one({"_id": team["_id"]})
    await db.memberships.insert_many(
        [
            {
                "team_id": team["_id"],
                "user_id": ObjectId(),
                "created": utcnow(),
                "team_created": team["created"],
            }
            for _ in range(5000)
        ]
    )
    me = await user_id(client, leader)
    demote = [{"op": "replace", "path": "/is_leader", "value": False}]
    first, second = await asyncio.gather(
        client.patch(f"{url}/members/{root_id}", json=demote, headers=leader),
        client.patch(f"{url}/members/{me}", json=demote, headers=root),
    )
    assert sorted([first.status, second.status])[0] == 200
    assert sorted([first.status, second.status])[1] in (403, 409)
    assert len((await db.teams.find_one({"_id": team["_id"]}))["leader_ids"]) == 1


async def test_migration_moves_leaders_into_team_documents_idempotently(db) -> None:
    now = utcnow()
    team_id, leader, member = ObjectId(), ObjectId(), ObjectId()
    await db.teams.insert_one({"_id": team_id, "title": "Flagged", "leaders": 1, "members": 2, "created": now})
    await db.memberships.insert_many(
        [{"team_id": team_id, "user_id": user, "is_leader": user == leader} for user in (leader, member)]
    )
    await leaders_into_team_documents(db)
    await db.teams.update_one({"_id": team_id}, {"$push": {"leader_ids": member}})  # a promotion after it
    await leaders_into_team_documents(db)  # a second run (or one after a crash) changes nothing
    team = await db.teams.find_one({"_id": team_id})
    assert team["leader_ids"] == [leader, member]
    assert "leaders" not in team
    assert not await db.memberships.count_documents({"is_leader": {"$exists": True}})


async def test_refused_removals_change_nothing(client: TestClient, bearer, signup, login, db) -> None:
    leader, url = await setup_team(client, bearer)
    root = await bearer("root")  # an admin, not a member
    olga_id = (await signup("olga"))["id"]
    olga = {"Authorization": f"Bearer {(await login('olga', 'long enough pw'))['access_token']}"}
    leader_id = await user_id(client, leader)
    before = await db.teams.find_one({"title": "Crew"})
    assert (await client.delete(f"{url}/members/{olga_id}", headers=root)).status == 404  # not a member
    assert (await client.delete(f"{url}/members/{olga_id}", headers=olga)).status == 404  # leaving a team not hers
    assert (await client.delete(f"{url}/members/{leader_id}", headers=olga)).status == 404
    assert (await client.delete(f"{url}/members/{leader_id}", headers=root)).status == 409  # the last leader
    after = await db.teams.find_one({"title": "Crew"})
    assert (
        (after["members"], after["leader_ids"])
        == (before["members"], before["leader_ids"])
        == (1, [before["leader_ids"][0]])
    )
    assert len(await stored_members(db, after)) == 1


async def test_a_leader_is_never_made_of_someone_removed_meanwhile(client: TestClient, bearer, db) -> None:
    # The window between the read that saw a member and the write that makes them leader: a removal
    # there moves the team's version, so the write is refused (and the service reads again).
    leader, url = await setup_team(client, bearer)
    root_id = await user_id(client, await bearer("root"))
    assert (await client.post(f"{url}/members/", json={"user_id": root_id}, headers=leader)).status == 201
    seen = await db.teams.find_one({"title": "Crew"})
    assert (await client.delete(f"{url}/members/{root_id}", headers=leader)).status == 204
    assert await teams_repository.set_leader(db, seen, ObjectId(root_id), True) is None
    # Adding a leader: the membership is inserted first; if the team moved before its write, the
    # membership is taken back.
    stale = await db.teams.find_one({"title": "Crew"})
    assert (
        await client.patch(url, json=[{"op": "replace", "path": "/title", "value": "Crew 2"}], headers=leader)
    ).status == 200
    membership = teams_repository.new_membership(stale, ObjectId(root_id))
    assert await teams_repository.add_member(db, stale, membership, True, None) is None
    team = await db.teams.find_one({"_id": stale["_id"]})
    assert len(await stored_members(db, team)) == 1
    assert team["leader_ids"] == stale["leader_ids"]
    assert team["members"] == 1


async def test_migration_places_memberships_idempotently(db) -> None:
    team_id, now = ObjectId(), utcnow()
    ids = [ObjectId() for _ in range(2)]
    await db.memberships.insert_many(
        [{"_id": i, "team_id": team_id, "user_id": ObjectId(), "created": now} for i in ids]
    )
    await place_memberships(db)
    await place_memberships(db)  # a second run (or one after a crash) changes nothing
    stored = await db.memberships.find({"team_id": team_id}).sort("_id").to_list(None)
    assert [m["place"] for m in stored] == [member_line(team_id).at(now, i) for i in sorted(ids)]
    assert stored[0]["place"] < stored[1]["place"]  # same instant: the id orders them
