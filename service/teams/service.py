"""Team rules: who sees and manages a team, and "a team always keeps at least one leader".

Membership edits read the team, compute the new members array, check the invariant, and write it
back only if the team is still at the version they read (retrying on a concurrent change). So two
leaders demoting each other at once cannot both succeed: the second one re-reads and gets 409.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from service import patch
from service.db import Database, document_id, utcnow
from service.errors import Conflict, Forbidden, NotFound, PreconditionFailed
from service.http import check_version
from service.middlewares import load
from service.pagination import Cursors, Page, PageRequest, page_in_memory
from service.security import Principal, visible_or_404
from service.teams import repository
from service.teams.permissions import leader_count, may_manage_team, may_see_team
from service.teams.schemas import EditableMembershipSchema, EditableTeamSchema
from service.users import repository as users_repository

EDITABLE_TEAM = EditableTeamSchema()
EDITABLE_MEMBERSHIP = EditableMembershipSchema()
_ATTEMPTS = 20


async def _team(db: Database, caller: Principal, team_id: str) -> dict[str, Any]:
    """The team if the caller may see it; 404 otherwise (non-members may not learn it exists)."""
    return await visible_or_404(lambda oid: repository.get_team(db, oid), team_id, caller, may_see_team, "team")


async def _managed_team(db: Database, caller: Principal, team_id: str) -> dict[str, Any]:
    team = await _team(db, caller, team_id)
    if not may_manage_team(caller.user, team):
        raise Forbidden("Only the team's leaders or an admin may do this.")
    return team


async def create_team(db: Database, caller: Principal, title: str) -> dict[str, Any]:
    """The creator becomes the leader in the same write that creates the team."""
    return await repository.insert_team(db, repository.new_team_document(title, caller.user_id))


async def list_teams(db: Database, caller: Principal, request: PageRequest, cursors: Cursors) -> Page:
    member = None if caller.is_admin else caller.user_id
    return await repository.list_teams(db, member, request, cursors)


async def get_team(db: Database, caller: Principal, team_id: str) -> dict[str, Any]:
    return await _team(db, caller, team_id)


async def patch_team(
    db: Database, caller: Principal, team_id: str, operations: list[dict[str, Any]], expected_version: int | None
) -> dict[str, Any]:
    blind = patch.is_blind(operations, expected_version)
    for _ in range(_ATTEMPTS):
        team = await _managed_team(db, caller, team_id)
        check_version(expected_version, team)
        result = load(EDITABLE_TEAM, patch.apply({"title": team["title"]}, operations))
        if result["title"] == team["title"] and not blind:
            return team
        updated = await repository.update_team(db, team["_id"], None if blind else team["version"], result)
        if updated is not None:
            return updated
        if expected_version is not None:
            raise PreconditionFailed("The team changed while the patch was applied.")
    raise Conflict("The team keeps changing; read it again and retry.")


async def delete_team(db: Database, caller: Principal, team_id: str, expected_version: int | None) -> None:
    team = await _managed_team(db, caller, team_id)
    check_version(expected_version, team)
    deleted = await repository.delete_team(db, team["_id"], expected_version)
    if not deleted and expected_version is not None and await repository.get_team(db, team["_id"]) is not None:
        raise PreconditionFailed("The team changed since you read it.")


# --- memberships ------------------------------------------------------------------------------


async def _with_users(db: Database, members: list[dict[str, Any]]) -> list[dict[str, Any]]:
    users = await users_repository.get_users_by_ids(db, [m["user_id"] for m in members])
    missing = {"_id": None, "username": None, "first_name": "", "middle_name": "", "last_name": ""}
    return [{**m, "user": users.get(m["user_id"], {**missing, "_id": m["user_id"]})} for m in members]


async def list_members(db: Database, caller: Principal, team_id: str, request: PageRequest, cursors: Cursors) -> Page:
    team = await _team(db, caller, team_id)
    ordered = sorted(team["members"], key=lambda m: (m["created"], m["user_id"]))
    found = page_in_memory(ordered, request, cursors, f"members:{team['_id']}", key="user_id")
    return dataclasses.replace(found, items=await _with_users(db, found.items))


async def add_member(
    db: Database, caller: Principal, team_id: str, user_id: str, is_leader: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Add a member atomically; returns (team, membership). 404 for an unknown user, 409 if already in."""
    team = await _managed_team(db, caller, team_id)
    oid = document_id(user_id)
    user = await users_repository.get_user(db, oid) if oid is not None else None
    if user is None:
        raise NotFound("No such user.")
    member = {"user_id": user["_id"], "is_leader": is_leader, "created": utcnow()}
    updated = await repository.add_member(db, team["_id"], member)
    if updated is None:
        if await repository.get_team(db, team["_id"]) is None:
            raise NotFound("No such team.")
        raise Conflict("The user is already a member of this team.")
    return updated, {**member, "user": user}


async def _change_members(
    db: Database,
    caller: Principal,
    team_id: str,
    user_id: str,
    change: Callable[[dict[str, Any], dict[str, Any]], list[dict[str, Any]]],
    *,
    allow_self: bool = False,
    expected_version: int | None = None,
) -> dict[str, Any]:
    """Read, change the members array, keep a leader, write back if unchanged; retry on a race."""
    target_id = document_id(user_id)
    for _ in range(_ATTEMPTS):
        team = await _team(db, caller, team_id)
        target = next((m for m in team["members"] if m["user_id"] == target_id), None)
        if target is None:
            raise NotFound("No such member in this team.")
        leaving_self = allow_self and target_id == caller.user_id
        if not (leaving_self or may_manage_team(caller.user, team)):
            raise Forbidden("Only the team's leaders or an admin may do this.")
        check_version(expected_version, team)
        members = change(team, target)
        if leader_count(members) == 0:
            raise Conflict("A team must keep at least one leader.")
        if members == team["members"]:
            return team
        updated = await repository.update_team(db, team["_id"], team["version"], {"members": members})
        if updated is not None:
            return updated
        if expected_version is not None:
            raise PreconditionFailed("The team changed while the change was applied.")
    raise Conflict("The team keeps changing; read it again and retry.")


async def patch_membership(
    db: Database,
    caller: Principal,
    team_id: str,
    user_id: str,
    operations: list[dict[str, Any]],
    expected_version: int | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    def change(team: dict[str, Any], target: dict[str, Any]) -> list[dict[str, Any]]:
        result = load(EDITABLE_MEMBERSHIP, patch.apply({"is_leader": target["is_leader"]}, operations))
        return [{**m, "is_leader": result["is_leader"]} if m is target else m for m in team["members"]]

    team = await _change_members(db, caller, team_id, user_id, change, expected_version=expected_version)
    member = next(m for m in team["members"] if m["user_id"] == document_id(user_id))
    return team, (await _with_users(db, [member]))[0]


async def remove_member(
    db: Database, caller: Principal, team_id: str, user_id: str, expected_version: int | None
) -> None:
    """Leaders and admins remove anyone; a member may leave. The last leader cannot go."""

    def change(team: dict[str, Any], target: dict[str, Any]) -> list[dict[str, Any]]:
        return [m for m in team["members"] if m is not target]

    await _change_members(db, caller, team_id, user_id, change, allow_self=True, expected_version=expected_version)
