"""The `teams` and `memberships` collections: every query and update, and their indexes.

A membership is a document of its own (`team_id`, `user_id`, `is_leader`, `created`, and the team's
`team_created` so a member's teams list in team order from an index), so adding, promoting or removing
a member costs the same in a team of 20 or of 50,000, and no document limit caps a team. The team
document keeps `leaders` and `members`, the number of its leaders and of its members (so a member
page needs no count), and a `version` that every membership change bumps (the ETag of memberships is
the team's).

"At least one leader" spans two documents. The team's leader count decides: losing a leader is a
conditional decrement (`leaders > 1`) of the team document, so of two concurrent demotions only one
can pass. On backends with transactions (a MongoDB replica set, the embedded server) a promotion,
demotion or removal is one transaction beginning with that team write, so concurrent changes of one
team conflict and retry, and the count and the memberships never disagree. mongomock has no
transactions: the same writes run in an order whose interruption can only leave the count low, which
errs on the safe side. Adding a member needs no transaction (see `add_member`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, NotRequired, TypedDict, TypeVar, cast

from bson import ObjectId
from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

from service.db import Database, in_transaction, utcnow
from service.pagination import Cursors, Page, PageRequest, fetch_page
from service.users.repository import UserDocument

T = TypeVar("T")

# A team's members in list order. Named, and hinted, because (team_id, user_id) matches the same
# filter and a planner that looks at the filter alone (SecantusDB's) would sort after using it.
MEMBERS_IN_ORDER = [("team_id", ASCENDING), ("created", ASCENDING), ("_id", ASCENDING)]
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


class VersionMoved(Exception):
    """The team changed since the caller read it (If-Match)."""


class TeamDocument(TypedDict):
    """A stored team, as this module writes it."""

    _id: ObjectId
    title: str
    leaders: int  # how many of its memberships are leaders' (never below 1)
    members: NotRequired[int]  # how many memberships it has (absent only before migration 0004)
    created: datetime
    updated: datetime
    version: int


class MembershipDocument(TypedDict):
    """A stored membership: one user in one team."""

    _id: ObjectId
    team_id: ObjectId
    user_id: ObjectId
    is_leader: bool
    created: datetime
    team_created: datetime  # the team's, so a member's teams list in team order from an index
    key: str  # "<team_id>:<user_id>", so one query can join a user to their membership (`members_view`)


def new_team_document(title: str) -> TeamDocument:
    now = utcnow()
    return {"_id": ObjectId(), "title": title, "leaders": 1, "members": 1, "created": now, "updated": now, "version": 1}


def new_membership(team: TeamDocument, user_id: ObjectId, is_leader: bool) -> MembershipDocument:
    return {
        "_id": ObjectId(),
        "team_id": team["_id"],
        "user_id": user_id,
        "is_leader": is_leader,
        "created": utcnow(),
        "team_created": team["created"],
        "key": membership_key(team["_id"], user_id),
    }


def membership_key(team_id: ObjectId, user_id: ObjectId) -> str:
    return f"{team_id}:{user_id}"


async def insert_team(db: Database, team: TeamDocument, leaders: list[MembershipDocument]) -> TeamDocument:
    """The team and its first members. Memberships first: without a transaction, a crash before the
    team exists leaves memberships of nothing, which no query shows."""
    team["members"] = len(leaders)
    if leaders:
        await db.memberships.insert_many([cast(dict[str, Any], membership) for membership in leaders])
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
        {"team_id": team["_id"]},
        request,
        cursors,
        f"members:{team['_id']}",
        hint=MEMBERS_IN_ORDER,
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


async def _touch_team(
    db: Database, session: Any, team_id: ObjectId, leaders: int, version: int | None, members: int = 0
) -> TeamDocument | None:
    """Bump the team's version and leader count: the write every membership change begins with, so
    concurrent changes of one team conflict. Refuses to drop the last leader."""
    query: dict[str, Any] = {"_id": team_id}
    if leaders < 0:
        query["leaders"] = {"$gt": -leaders}
    if version is not None:
        query["version"] = version
    touched = await db.teams.find_one_and_update(
        query,
        {"$inc": {"version": 1, "leaders": leaders, "members": members}, "$set": {"updated": utcnow()}},
        return_document=ReturnDocument.AFTER,
        session=session,
    )
    return cast(TeamDocument | None, touched)


async def _why_not(db: Database, team_id: ObjectId, version: int | None) -> Exception:
    """Why a conditional team write matched nothing: the team is gone, its version moved, or the change
    would have taken its last leader."""
    team = await db.teams.find_one({"_id": team_id})
    if team is None:
        return TeamGone()
    if version is not None and team["version"] != version:
        return VersionMoved()
    return LastLeader()


async def add_member(
    db: Database, team: TeamDocument, membership: MembershipDocument, version: int | None
) -> TeamDocument:
    """Insert the membership, then bump the team (its version, and its leader count for a leader); the
    team after. A leader is added in a transaction like every leader change. A plain member needs
    none: the leader count does not move, so many concurrent adds to one team never conflict; if the
    team write fails, the membership is taken back, so the caller's error means nothing changed."""
    if membership["is_leader"]:

        async def work(session: Any) -> TeamDocument:
            return await _insert_then_touch(db, session, team, membership, version)

        return await _run(db, work)
    try:
        return await _insert_then_touch(db, None, team, membership, version)
    except BaseException:
        with contextlib.suppress(PyMongoError):
            await db.memberships.delete_one({"_id": membership["_id"]})
        raise


async def _insert_then_touch(
    db: Database, session: Any, team: TeamDocument, membership: MembershipDocument, version: int | None
) -> TeamDocument:
    try:
        await db.memberships.insert_one(cast(dict[str, Any], membership), session=session)
    except DuplicateKeyError:
        raise AlreadyMember() from None
    updated = await _touch_team(db, session, team["_id"], int(membership["is_leader"]), version, members=1)
    if updated is None:
        raise await _why_not(db, team["_id"], version)
    return updated


async def set_leader(
    db: Database, membership: MembershipDocument, is_leader: bool, version: int | None
) -> tuple[TeamDocument, MembershipDocument] | None:
    """Promote or demote the member whose `membership` the caller read; (team, membership) after, None
    when it is gone. A retry (a conflict, or a change in between) reads the membership afresh."""
    known: MembershipDocument | None = membership
    team_id = membership["team_id"]

    async def work(session: Any) -> tuple[TeamDocument, MembershipDocument] | None:
        nonlocal known
        current = known or await _membership(db, session, membership)
        known = None
        if current is None:
            return None
        delta = int(is_leader) - int(current["is_leader"])
        team = await _touch_team(db, session, team_id, delta, version)
        if team is None:
            raise await _why_not(db, team_id, version)
        changed = await db.memberships.find_one_and_update(
            {"_id": current["_id"], "is_leader": current["is_leader"]},
            {"$set": {"is_leader": is_leader}},
            return_document=ReturnDocument.AFTER,
            session=session,
        )
        if changed is None:  # changed since it was read: undo, read again
            await _touch_team(db, session, team_id, -delta, None)
            raise _Raced()
        return team, cast(MembershipDocument, changed)

    return await _run(db, work)


async def remove_member(db: Database, membership: MembershipDocument, version: int | None) -> bool:
    """Delete the membership the caller read (a leader only while another remains); False when it is
    gone. A retry reads it afresh."""
    known: MembershipDocument | None = membership
    team_id = membership["team_id"]

    async def work(session: Any) -> bool:
        nonlocal known
        current = known or await _membership(db, session, membership)
        known = None
        if current is None:
            return False
        team = await _touch_team(db, session, team_id, -int(current["is_leader"]), version, members=-1)
        if team is None:
            raise await _why_not(db, team_id, version)
        deleted = await db.memberships.delete_one(
            {"_id": current["_id"], "is_leader": current["is_leader"]}, session=session
        )
        if not deleted.deleted_count:  # changed since it was read: undo, read again
            await _touch_team(db, session, team_id, int(current["is_leader"]), None, members=1)
            raise _Raced()
        return True

    return await _run(db, work)


async def _membership(db: Database, session: Any, membership: MembershipDocument) -> MembershipDocument | None:
    """The membership as it is now (a retry's fresh read)."""
    query = {"team_id": membership["team_id"], "user_id": membership["user_id"]}
    return cast(MembershipDocument | None, await db.memberships.find_one(query, session=session))


async def delete_team(db: Database, team_id: ObjectId, version: int | None) -> bool:
    """Delete the team, then its memberships (a crash between leaves memberships no query shows)."""
    query: dict[str, Any] = {"_id": team_id}
    if version is not None:
        query["version"] = version
    result = await db.teams.delete_one(query)
    if result.deleted_count:
        await db.memberships.delete_many({"team_id": team_id})
    return result.deleted_count == 1


class _Raced(Exception):
    """A concurrent change won (without transactions); the caller retries."""


async def _run(db: Database, work: Callable[[Any], Awaitable[T]]) -> T:
    """`work` in a transaction where the backend has them (the driver retries transient conflicts),
    else as plain writes retried a few times on a lost race."""
    for _ in range(20):
        try:
            result: T = await in_transaction(db, work)
            return result
        except _Raced:
            continue
    raise _Raced()


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
