"""Team rules: who sees and manages a team, and "a team always keeps at least one leader".

The rule is kept by the repository's conditional writes (a transaction per change where the backend
has them); this module decides who may ask for a change and turns refusals into HTTP errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bson import ObjectId

from service import patch
from service.db import Database, document_id
from service.errors import Conflict, Forbidden, NotFound, PreconditionFailed, check_version
from service.pagination import Cursors, Page, PageRequest
from service.principal import Principal
from service.schemas import load
from service.teams import repository
from service.teams.permissions import may_manage_team, may_see_team
from service.teams.repository import MembershipDocument, TeamDocument
from service.teams.schemas import EditableMembershipSchema, EditableTeamSchema
from service.users import repository as users_repository

EDITABLE_TEAM = EditableTeamSchema()
EDITABLE_MEMBERSHIP = EditableMembershipSchema()


async def _team(db: Database, caller: Principal, team_id: str) -> tuple[TeamDocument, MembershipDocument | None]:
    """The team and the caller's membership, if the caller may see it; 404 otherwise (non-members may
    not learn that it exists)."""
    oid = document_id(team_id)
    team = await repository.get_team(db, oid) if oid is not None else None
    membership = await repository.get_membership(db, oid, caller.user_id) if team is not None else None
    if team is None or not may_see_team(caller.user, membership):
        raise NotFound("No such team.")
    return team, membership


async def _managed_team(db: Database, caller: Principal, team_id: str) -> TeamDocument:
    team, membership = await _team(db, caller, team_id)
    if not may_manage_team(caller.user, membership):
        raise Forbidden("Only the team's leaders or an admin may do this.")
    return team


async def create_team(db: Database, caller: Principal, title: str) -> TeamDocument:
    """The creator becomes the team's leader."""
    team = repository.new_team_document(title)
    return await repository.insert_team(db, team, [repository.new_membership(team, caller.user_id, True)])


async def list_teams(db: Database, caller: Principal, request: PageRequest, cursors: Cursors) -> Page:
    member = None if caller.is_admin else caller.user_id
    return await repository.list_teams(db, member, request, cursors)


async def get_team(db: Database, caller: Principal, team_id: str) -> TeamDocument:
    return (await _team(db, caller, team_id))[0]


async def patch_team(
    db: Database, caller: Principal, team_id: str, operations: list[dict[str, Any]], expected_version: int | None
) -> TeamDocument:
    blind = patch.is_blind(operations, expected_version)

    async def attempt() -> TeamDocument | None:
        team = await _managed_team(db, caller, team_id)
        check_version(expected_version, team)
        result = load(EDITABLE_TEAM, patch.apply({"title": team["title"]}, operations))
        if result["title"] == team["title"] and not blind:
            return team
        return await repository.update_team(db, team["_id"], None if blind else team["version"], result)

    return await patch.optimistically(attempt, expected_version, "team")


async def delete_team(db: Database, caller: Principal, team_id: str, expected_version: int | None) -> None:
    team = await _managed_team(db, caller, team_id)
    check_version(expected_version, team)
    deleted = await repository.delete_team(db, team["_id"], expected_version)
    if not deleted and expected_version is not None and await repository.get_team(db, team["_id"]) is not None:
        raise PreconditionFailed("The team changed since you read it.")


# --- memberships ------------------------------------------------------------------------------


async def _with_users(db: Database, members: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    users = await users_repository.get_users_by_ids(db, [m["user_id"] for m in members])
    missing = {"_id": None, "username": None, "first_name": "", "middle_name": "", "last_name": ""}
    return [{**m, "user": users.get(m["user_id"], {**missing, "_id": m["user_id"]})} for m in members]


async def list_members(db: Database, caller: Principal, team_id: str, request: PageRequest, cursors: Cursors) -> Page:
    team, _ = await _team(db, caller, team_id)
    found = await repository.list_members(db, team, request, cursors)
    return Page(await _with_users(db, found.items), found.next_after, found.total)


def _refusal(exc: Exception, what: str) -> Exception:
    """The HTTP error for a change the repository refused."""
    if isinstance(exc, repository.LastLeader):
        return Conflict("A team must keep at least one leader.")
    if isinstance(exc, repository.VersionMoved):
        return PreconditionFailed(f"The team changed since you read it; the {what} was not changed.")
    if isinstance(exc, repository.AlreadyMember):
        return Conflict("The user is already a member of this team.")
    return NotFound("No such team.")


_REFUSED = (repository.LastLeader, repository.VersionMoved, repository.AlreadyMember, repository.TeamGone)


async def add_member(
    db: Database, caller: Principal, team_id: str, user_id: str, is_leader: bool, expected_version: int | None = None
) -> tuple[TeamDocument, dict[str, Any]]:
    """Add a member; returns (team, membership). 404 for an unknown user, 409 if already in."""
    team = await _managed_team(db, caller, team_id)
    check_version(expected_version, team)
    oid = document_id(user_id)
    user = await users_repository.get_user(db, oid) if oid is not None else None
    if user is None:
        raise NotFound("No such user.")
    membership = repository.new_membership(team, user["_id"], is_leader)
    try:
        updated = await repository.add_member(db, team, membership, expected_version)
    except _REFUSED as exc:
        raise _refusal(exc, "membership") from None
    return updated, {**membership, "user": user}


async def _target(
    db: Database, caller: Principal, team_id: str, user_id: str, *, allow_self: bool
) -> tuple[ObjectId, MembershipDocument]:
    """(team id, membership) of a membership the caller may change (a member may always leave). The
    caller's and the target's memberships come in one query."""
    oid, target_id = document_id(team_id), document_id(user_id)
    team = await repository.get_team(db, oid) if oid is not None else None
    if team is None:
        raise NotFound("No such team.")
    found = await repository.get_memberships(db, oid, {caller.user_id, *([target_id] if target_id else [])})
    membership = found.get(caller.user_id)
    if not may_see_team(caller.user, membership):
        raise NotFound("No such team.")
    target = found.get(target_id) if target_id is not None else None
    if target is None:
        raise NotFound("No such member in this team.")
    leaving_self = allow_self and target_id == caller.user_id
    if not (leaving_self or may_manage_team(caller.user, membership)):
        raise Forbidden("Only the team's leaders or an admin may do this.")
    return oid, target


async def patch_membership(
    db: Database,
    caller: Principal,
    team_id: str,
    user_id: str,
    operations: list[dict[str, Any]],
    expected_version: int | None,
) -> tuple[TeamDocument, dict[str, Any]]:
    team_oid, current = await _target(db, caller, team_id, user_id, allow_self=False)
    result = load(EDITABLE_MEMBERSHIP, patch.apply({"is_leader": current["is_leader"]}, operations))
    try:
        changed = await repository.set_leader(db, team_oid, current["user_id"], result["is_leader"], expected_version)
    except _REFUSED as exc:
        raise _refusal(exc, "membership") from None
    if changed is None:
        raise NotFound("No such member in this team.")
    team, membership = changed
    return team, (await _with_users(db, [membership]))[0]


async def remove_member(
    db: Database, caller: Principal, team_id: str, user_id: str, expected_version: int | None
) -> None:
    """Leaders and admins remove anyone; a member may leave. The last leader cannot go."""
    team_oid, target = await _target(db, caller, team_id, user_id, allow_self=True)
    try:
        removed = await repository.remove_member(db, team_oid, target["user_id"], expected_version)
    except _REFUSED as exc:
        raise _refusal(exc, "membership") from None
    if not removed:
        raise NotFound("No such member in this team.")
