"""The `teams` and `memberships` collections: every query and update, and their indexes.

A membership is a document of its own (`team_id`, `user_id`, `created`, and the team's `team_created`
so a member's teams list in team order from an index), so adding or removing a member costs the same
in a team of 20 or of 50,000, and no document limit caps a team's members. The team document keeps
`leader_ids` (who among its members leads), `members` (how many it has, so a member page needs no
count) and a `version` that every membership change bumps (the ETag of memberships is the team's).

"At least one leader" lives in one document, the team's: promoting or demoting is one write to it,
conditional on the version the caller read, so of two concurrent demotions only one can pass, and a
leader is never made of someone removed meanwhile. What spans documents is a member's existence and
their place in `leader_ids`: a removal changes both in one transaction (on a MongoDB replica set and
the embedded server; the driver retries transient conflicts). mongomock has no transactions: there the
same writes run in turn and a refused second write takes the first one back. Adding a member needs no
transaction (see `add_member`).
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any, NotRequired, TypedDict, cast

from bson import ObjectId
from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

from service.db import Database, in_transaction, utcnow
from service.pagination import Cursors, Line, Page, PageRequest, fetch_page
from service.users.repository import UserDocument

# A team's members in list order: one field, `place` (see `member_line`).
MEMBERS_IN_ORDER = [("place", ASCENDING)]
INDEXES: dict[str, list[IndexModel]] = {
    "teams": [IndexModel([("created", ASCENDING), ("_id", ASCENDING)])],
    "memberships": [
        IndexModel([("team_id", ASCENDING), ("user_id", ASCENDING)], unique=True),
        IndexModel(MEMBERS_IN_ORDER),
        IndexModel([("user_id", ASCENDING), ("team_created", ASCENDING), ("team_id", ASCENDING)]),
        IndexModel([("key", ASCENDING)]),
    ],
}


class LastLeader(Exception):
    """The change would leave the team without a leader."""


class AlreadyMember(Exception):
    """The user is already a member of the team."""


class TeamGone(Exception):
    """The team was deleted meanwhile."""


class TeamDocument(TypedDict):
    """A stored team, as this module writes it."""

    _id: ObjectId
    title: str
    leader_ids: list[ObjectId]  # the members who lead it (never empty)
    members: NotRequired[int]  # how many memberships it has (absent only before migration 0004)
    created: datetime
    updated: datetime
    version: int


class MembershipDocument(TypedDict):
    """A stored membership: one user in one team."""

    _id: ObjectId
    team_id: ObjectId
    user_id: ObjectId
    created: datetime
    team_created: datetime  # the team's, so a member's teams list in team order from an index
    key: str  # "<team_id>:<user_id>", so one query can join a user to their membership (`members_view`)
    place: str  # "<team_id>:<created>:<_id>": the team's members in order, in one field (`member_line`)


def new_team_document(title: str, leader_ids: list[ObjectId]) -> TeamDocument:
    now = utcnow()
    return {"_id": ObjectId(), "title": title, "leader_ids": leader_ids, "created": now, "updated": now, "version": 1}


def new_membership(team: TeamDocument, user_id: ObjectId) -> MembershipDocument:
    oid, created = ObjectId(), utcnow()
    return {
        "_id": oid,
        "team_id": team["_id"],
        "user_id": user_id,
        "created": created,
        "team_created": team["created"],
        "key": membership_key(team["_id"], user_id),
        "place": member_line(team["_id"]).at(created, oid),
    }


def member_line(team_id: ObjectId) -> Line:
    """A team's members as one ordered field: a page is one index range on any planner."""
    return Line("place", f"{team_id}:")


def membership_key(team_id: ObjectId, user_id: ObjectId) -> str:
    return f"{team_id}:{user_id}"


def leads(team: TeamDocument, user_id: ObjectId) -> bool:
    return user_id in team["leader_ids"]


async def insert_team(db: Database, team: TeamDocument, members: list[MembershipDocument]) -> TeamDocument:
    """The team and its first members (its leaders among them). Memberships first: without a
    transaction, a crash before the team exists leaves memberships of nothing, which no query shows."""
    team["members"] = len(members)
    if members:
        await db.memberships.insert_many([cast(dict[str, Any], membership) for membership in members])
    await db.teams.insert_one(cast(dict[str, Any], team))
    return team


async def get_team(db: Database, team_id: ObjectId) -> TeamDocument | None:
    return cast(TeamDocument | None, await db.teams.find_one({"_id": team_id}))


async def get_team_by_title(db: Database, title: str) -> TeamDocument | None:
    return cast(TeamDocument | None, await db.teams.find_one({"title": title}))


class Member(TypedDict):
    """A user as `members_view` finds them: the user document and their membership, if any."""

    user: UserDocument
    membership: MembershipDocument | None


async def members_view(
    db: Database, team_id: ObjectId, user_ids: list[ObjectId]
) -> tuple[TeamDocument | None, dict[ObjectId, Member]]:
    """The team, and each of `user_ids` that exists with their membership of it, in one round trip
    (what any request about a team needs: the caller's standing, and the member it is about). Each
    join is a point lookup: by `_id`, and by the membership's `key`."""
    pipeline: list[dict[str, Any]] = [
        {"$match": {"_id": {"$in": user_ids}}},
        {"$addFields": {"_key": {"$concat": [f"{team_id}:", {"$toString": "$_id"}]}, "_team": {"$literal": team_id}}},
        {"$lookup": {"from": "memberships", "localField": "_key", "foreignField": "key", "as": "_membership"}},
        {"$lookup": {"from": "teams", "localField": "_team", "foreignField": "_id", "as": "_team"}},
    ]
    found = await db.users.aggregate(pipeline).to_list(None)
    if not found:  # none of the users exists: the team alone
        return await get_team(db, team_id), {}
    team = found[0]["_team"][0] if found[0]["_team"] else None
    members: dict[ObjectId, Member] = {}
    for row in found:
        membership = row.pop("_membership")
        del row["_key"], row["_team"]
        members[row["_id"]] = {"user": cast(UserDocument, row), "membership": membership[0] if membership else None}
    return cast(TeamDocument | None, team), members


async def list_teams(db: Database, member_id: ObjectId | None, request: PageRequest, cursors: Cursors) -> Page:
    """All teams (admins), or a member's, in team order: a page of memberships then their teams."""
    if member_id is None:
        return await fetch_page(db, "teams", {}, request, cursors, "teams")
    found = await fetch_page(
        db, "memberships", {"user_id": member_id}, request, cursors, "teams", keys=("team_created", "team_id")
    )
    ids = [membership["team_id"] for membership in found.items]
    teams = {team["_id"]: team for team in await db.teams.find({"_id": {"$in": ids}}).to_list(None)}
    return Page([teams[i] for i in ids if i in teams], found.next_after, found.total)


async def list_members(db: Database, team: TeamDocument, request: PageRequest, cursors: Cursors) -> Page:
    """A page of the team's members; the count comes from the team's own `members` counter."""
    return await fetch_page(
        db,
        "memberships",
        {},
        request,
        cursors,
        f"members:{team['_id']}",
        line=member_line(team["_id"]),
        total=team.get("members"),  # absent only before migration 0004
    )


async def update_team(
    db: Database, team_id: ObjectId, version: int | None, changes: dict[str, Any]
) -> TeamDocument | None:
    """Set `changes` (the title) only if the team is still at `version` (any version when None)."""
    query: dict[str, Any] = {"_id": team_id} if version is None else {"_id": team_id, "version": version}
    updated = await db.teams.find_one_and_update(
        query,
        {"$set": {**changes, "updated": utcnow()}, "$inc": {"version": 1}},
        return_document=ReturnDocument.AFTER,
    )
    return cast(TeamDocument | None, updated)


def _change(**fields: Any) -> dict[str, Any]:
    """A team update that also bumps its version (every change of a team or its members does)."""
    change: dict[str, Any] = {"$inc": {"version": 1}, "$set": {"updated": utcnow()}}
    for operator, value in fields.items():
        change.setdefault(f"${operator}", {}).update(value)
    return change


async def _write_team(db: Database, query: dict[str, Any], change: dict[str, Any], session: Any = None) -> Any:
    return await db.teams.find_one_and_update(query, change, return_document=ReturnDocument.AFTER, session=session)


async def _moved(db: Database, team_id: ObjectId) -> None:
    """A conditional team write matched nothing: TeamGone if the team is gone; else it moved (None)."""
    if await db.teams.find_one({"_id": team_id}, {"_id": 1}) is None:
        raise TeamGone()


async def add_member(
    db: Database, team: TeamDocument, membership: MembershipDocument, is_leader: bool, version: int | None
) -> TeamDocument | None:
    """Insert the membership, then count it in the team (and make it a leader); the team after, None
    when the team moved under a condition (nothing changed then). No transaction: if the team write
    fails, the membership is taken back. A plain member's team write has no condition but If-Match,
    so many concurrent adds to one team never conflict. A leader's is conditional on the version the
    caller read: a removal of the same user between the two writes would move it, so a leader is never
    someone who is not a member."""
    try:
        await db.memberships.insert_one(cast(dict[str, Any], membership))
    except DuplicateKeyError:
        raise AlreadyMember() from None
    condition = team["version"] if is_leader else version
    query: dict[str, Any] = {"_id": team["_id"]} if condition is None else {"_id": team["_id"], "version": condition}
    leader = {"addToSet": {"leader_ids": membership["user_id"]}} if is_leader else {}
    updated = None
    try:
        updated = await _write_team(db, query, _change(inc={"members": 1}, **leader))
        if updated is None:
            await _moved(db, team["_id"])
    finally:
        if updated is None:  # refused or failed: nothing changes
            with contextlib.suppress(PyMongoError):
                await db.memberships.delete_one({"_id": membership["_id"]})
    return cast(TeamDocument | None, updated)


async def set_leader(db: Database, team: TeamDocument, user_id: ObjectId, is_leader: bool) -> TeamDocument | None:
    """Make a member of the `team` the caller read leader or not: one write, conditional on that read's
    version (so the one-leader rule is checked against what is stored). The team after; None when it
    moved meanwhile (read again)."""
    if leads(team, user_id) == is_leader:
        return team
    if not is_leader and team["leader_ids"] == [user_id]:
        raise LastLeader()
    change = _change(**{"addToSet" if is_leader else "pull": {"leader_ids": user_id}})
    updated = await _write_team(db, {"_id": team["_id"], "version": team["version"]}, change)
    if updated is None:
        await _moved(db, team["_id"])
    return cast(TeamDocument | None, updated)


async def remove_member(
    db: Database, team_id: ObjectId, user_id: ObjectId, version: int | None, leader: ObjectId | None
) -> bool:
    """Remove a member without reading first: False when refused (the team is gone, or `leader` is not
    one of its leaders, or the member is its last leader, or not a member, or If-Match `version` moved:
    the caller reads which). One transaction: the team write (uncount, un-lead), then the delete."""
    query: dict[str, Any] = {
        "_id": team_id,
        "$or": [{"leader_ids": {"$ne": user_id}}, {"leader_ids.1": {"$exists": True}}],  # not the last leader
    }
    if leader is not None:
        query["leader_ids"] = leader
    if version is not None:
        query["version"] = version

    async def work(session: Any) -> bool:
        if await _write_team(db, query, _change(inc={"members": -1}, pull={"leader_ids": user_id}), session) is None:
            return False
        deleted = await db.memberships.delete_one({"key": membership_key(team_id, user_id)}, session=session)
        if deleted.deleted_count:
            return True
        if session is None:  # no transaction to abort: take the team write back
            await db.teams.update_one({"_id": team_id}, _change(inc={"members": 1}))
        raise _NotMember()  # aborts the transaction

    try:
        return cast(bool, await in_transaction(db, work))
    except _NotMember:
        return False


class _NotMember(Exception):
    """The user to remove is not a member: the transaction is aborted."""


async def delete_team(db: Database, team_id: ObjectId, version: int | None) -> bool:
    """Delete the team, then its memberships (a crash between leaves memberships no query shows)."""
    query: dict[str, Any] = {"_id": team_id}
    if version is not None:
        query["version"] = version
    result = await db.teams.delete_one(query)
    if result.deleted_count:
        await db.memberships.delete_many({"team_id": team_id})
    return result.deleted_count == 1


# --- migrations (listed, in order, in service/domains.py) ---


async def memberships_out_of_team_documents(db: Database) -> None:
    """Teams stored their members in an array; each becomes a `memberships` document and the team keeps
    a leader count. Idempotent: an interrupted run upserts what it already wrote and goes on."""
    async for team in db.teams.find({"members": {"$exists": True}}):
        for member in team["members"]:
            await db.memberships.update_one(
                {"team_id": team["_id"], "user_id": member["user_id"]},
                {
                    "$setOnInsert": {
                        "is_leader": member["is_leader"],
                        "created": member["created"],
                        "team_created": team["created"],
                    }
                },
                upsert=True,
            )
        leaders = sum(1 for member in team["members"] if member["is_leader"])
        await db.teams.update_one({"_id": team["_id"]}, {"$set": {"leaders": leaders}, "$unset": {"members": ""}})


async def count_members_in_team_documents(db: Database) -> None:
    """Teams get their `members` counter (member pages read it instead of counting). Idempotent: a team
    that has one is left alone; membership changes keep it from then on."""
    async for team in db.teams.find({"members": {"$exists": False}}, {"_id": 1}):
        count = await db.memberships.count_documents({"team_id": team["_id"]})
        await db.teams.update_one({"_id": team["_id"], "members": {"$exists": False}}, {"$set": {"members": count}})


async def key_memberships(db: Database) -> None:
    """Memberships get their `key` (`members_view` joins users to memberships by it). Idempotent: only
    memberships without one are touched."""
    async for membership in db.memberships.find({"key": {"$exists": False}}, {"team_id": 1, "user_id": 1}):
        key = membership_key(membership["team_id"], membership["user_id"])
        await db.memberships.update_one({"_id": membership["_id"]}, {"$set": {"key": key}})


async def leaders_into_team_documents(db: Database) -> None:
    """Leaders move from a flag on each membership (and a count on the team) to the team's `leader_ids`,
    so the one-leader rule lives in one document. Idempotent: a team that has `leader_ids` is left
    alone, and the flags are dropped last."""
    async for team in db.teams.find({"leader_ids": {"$exists": False}}, {"_id": 1}):
        leaders = db.memberships.find({"team_id": team["_id"], "is_leader": True}, {"user_id": 1})
        leader_ids = [membership["user_id"] async for membership in leaders]
        await db.teams.update_one(
            {"_id": team["_id"], "leader_ids": {"$exists": False}},
            {"$set": {"leader_ids": leader_ids}, "$unset": {"leaders": ""}},
        )
    await db.memberships.update_many({"is_leader": {"$exists": True}}, {"$unset": {"is_leader": ""}})


async def place_memberships(db: Database) -> None:
    """Memberships get their `place` (member pages are ranges of it). Idempotent: only memberships
    without one are touched."""
    async for membership in db.memberships.find({"place": {"$exists": False}}, {"team_id": 1, "created": 1}):
        place = member_line(membership["team_id"]).at(membership["created"], membership["_id"])
        await db.memberships.update_one({"_id": membership["_id"]}, {"$set": {"place": place}})
