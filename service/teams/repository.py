"""The `teams` collection: every query and update, and its indexes.

Memberships are embedded (`members: [{user_id, is_leader, created}]`), so a team and its members
are created and deleted in one atomic write. Every change bumps `version`; membership edits that
must keep "at least one leader" replace the array only if the version is unchanged, so concurrent
edits serialise instead of racing (mongomock lacks arrayFilters and SecantusDB the positional `$`).
"""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, IndexModel, ReturnDocument

from service.db import Database, utcnow
from service.pagination import Cursors, Page, PageRequest, fetch_page

INDEXES: dict[str, list[IndexModel]] = {
    "teams": [
        IndexModel([("members.user_id", ASCENDING), ("created", ASCENDING), ("_id", ASCENDING)]),
        IndexModel([("created", ASCENDING), ("_id", ASCENDING)]),
    ],
}


def new_team_document(title: str, leader_id: ObjectId) -> dict[str, Any]:
    now = utcnow()
    return {
        "_id": ObjectId(),
        "title": title,
        "members": [{"user_id": leader_id, "is_leader": True, "created": now}],
        "created": now,
        "updated": now,
        "version": 1,
    }


async def insert_team(db: Database, document: dict[str, Any]) -> dict[str, Any]:
    await db.teams.insert_one(document)
    return document


async def get_team(db: Database, team_id: ObjectId) -> dict[str, Any] | None:
    return await db.teams.find_one({"_id": team_id})


async def get_team_by_title(db: Database, title: str) -> dict[str, Any] | None:
    return await db.teams.find_one({"title": title})


async def list_teams(db: Database, member_id: ObjectId | None, request: PageRequest, cursors: Cursors) -> Page:
    query = {} if member_id is None else {"members.user_id": member_id}
    return await fetch_page(db, "teams", query, request, cursors, "teams", {"members": 0})


async def update_team(
    db: Database, team_id: ObjectId, version: int | None, changes: dict[str, Any]
) -> dict[str, Any] | None:
    """Set `changes` (title, or the whole members array) only if the team is still at `version`
    (any version when None: a blind write)."""
    query: dict[str, Any] = {"_id": team_id} if version is None else {"_id": team_id, "version": version}
    return await db.teams.find_one_and_update(
        query,
        {"$set": {**changes, "updated": utcnow()}, "$inc": {"version": 1}},
        return_document=ReturnDocument.AFTER,
    )


async def add_member(db: Database, team_id: ObjectId, member: dict[str, Any]) -> dict[str, Any] | None:
    """Atomically append a member unless already there; None when the team is gone or has them."""
    return await db.teams.find_one_and_update(
        {"_id": team_id, "members.user_id": {"$ne": member["user_id"]}},
        {"$push": {"members": member}, "$set": {"updated": utcnow()}, "$inc": {"version": 1}},
        return_document=ReturnDocument.AFTER,
    )


async def delete_team(db: Database, team_id: ObjectId, version: int | None) -> bool:
    """Delete the team and, being embedded, its memberships in the same write."""
    query: dict[str, Any] = {"_id": team_id}
    if version is not None:
        query["version"] = version
    result = await db.teams.delete_one(query)
    return result.deleted_count == 1
