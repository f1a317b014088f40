"""Team rules: who sees and manages a team, and "a team always keeps at least one leader".

The rule is kept by the repository's conditional writes; this module decides who may ask for a change
and turns refusals into HTTP errors. A membership response is the membership, the member's user, and
whether they lead (kept in the team document).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from service import patch
from service.caller import Principal
from service.context import Context
from service.db import Database, document_id
from service.errors import Conflict, Forbidden, NotFound, PreconditionFailed, check_version
from service.pagination import Page, PageRequest
from service.schemas import load
from service.teams import repository
from service.teams.permissions import may_manage_team, may_see_team
from service.teams.repository import MembershipDocument, TeamDocument
from service.teams.schemas import EditableMembershipSchema, EditableTeamSchema
from service.users import repository as users_repository

EDITABLE_TEAM = EditableTeamSchema()


@dataclass(frozen=True, slots=True)
class MemberAt:
    """The membership a request names: a team and a user in it (ids as sent)."""

    team_id: str
    user_id: str


EDITABLE_MEMBERSHIP = EditableMembershipSchema()


async def _team(
    db: Database, caller: Principal, team_id: str, user_id: str | None = None
) -> tuple[TeamDocument, bool, repository.Member | None]:
    """The team, whether the caller may manage it and (when `user_id` names one who exists) that user
    with their membership, in one round trip, if the caller may see the team; 404 otherwise
    (non-members may not learn that it exists)."""
    oid, other = document_id(team_id), document_id(user_id) if user_id is not None else None
    team, found = (
        await repository.members_view(db, oid, [caller.user_id, *([other] if other else [])]) if oid else (None, {})
    )
    mine = found.get(caller.user_id)
    membership = mine["membership"] if mine else None
    if team is None or not may_see_team(caller.user, membership):
        raise NotFound("No such team.")
    manager = may_manage_team(caller.user, membership is not None and repository.leads(team, caller.user_id))
    return team, manager, found.get(other) if other else None


async def _managed_team(
    db: Database, caller: Principal, team_id: str, user_id: str | None = None
) -> tuple[TeamDocument, repository.Member | None]:
    team, manager, other = await _team(db, caller, team_id, user_id)
    if not manager:
        raise Forbidden("Only the team's leaders or an admin may do this.")
    return team, other


async def create_team(ctx: Context, caller: Principal, title: str) -> TeamDocument:
    """The creator becomes the team's leader."""
    team = repository.new_team_document(title, [caller.user_id])
    return await repository.insert_team(ctx.db, team, [repository.new_membership(team, caller.user_id)])


async def list_teams(ctx: Context, caller: Principal, request: PageRequest) -> Page:
    member = None if caller.is_admin else caller.user_id
    return await repository.list_teams(ctx.db, member, request, ctx.cursors)


async def get_team(ctx: Context, caller: Principal, team_id: str) -> TeamDocument:
    return (await _team(ctx.db, caller, team_id))[0]


async def patch_team(
    ctx: Context, caller: Principal, team_id: str, operations: list[dict[str, Any]], expected_version: int | None
) -> TeamDocument:
    db = ctx.db
    blind = patch.is_blind(operations, expected_version)

    async def attempt() -> TeamDocument | None:
        team, _ = await _managed_team(db, caller, team_id)
        check_version(expected_version, team)
        result = load(EDITABLE_TEAM, patch.apply({"title": team["title"]}, operations))
        if result["title"] == team["title"] and not blind:
            return team
        return await repository.update_team(db, team["_id"], None if blind else team["version"], result)

    return await patch.optimistically(attempt, expected_version, "team")


async def delete_team(ctx: Context, caller: Principal, team_id: str, expected_version: int | None) -> None:
    db = ctx.db
    team, _ = await _managed_team(db, caller, team_id)
    check_version(expected_version, team)
    deleted = await repository.delete_team(db, team["_id"], expected_version)
    if not deleted and expected_version is not None and await repository.get_team(db, team["_id"]) is not None:
        raise PreconditionFailed("The team changed since you read it.")


# --- memberships ------------------------------------------------------------------------------


def _membership(team: TeamDocument, membership: Mapping[str, Any], user: Mapping[str, Any]) -> dict[str, Any]:
    return {**membership, "is_leader": repository.leads(team, membership["user_id"]), "user": user}


async def list_members(ctx: Context, caller: Principal, team_id: str, request: PageRequest) -> Page:
    db = ctx.db
    team, _, _ = await _team(db, caller, team_id)
    found = await repository.list_members(db, team, request, ctx.cursors)
    users = await users_repository.get_users_by_ids(db, [m["user_id"] for m in found.items])
    missing = {"username": None, "first_name": "", "middle_name": "", "last_name": ""}
    items = [_membership(team, m, users.get(m["user_id"], {**missing, "_id": m["user_id"]})) for m in found.items]
    return Page(items, found.next_after, found.total)


def _refusal(exc: Exception) -> Exception:
    """The HTTP error for a change the repository refused."""
    if isinstance(exc, repository.LastLeader):
        return Conflict("A team must keep at least one leader.")
    if isinstance(exc, repository.AlreadyMember):
        return Conflict("The user is already a member of this team.")
    return NotFound("No such team.")


_REFUSED = (repository.LastLeader, repository.AlreadyMember, repository.TeamGone)


async def add_member(
    ctx: Context, caller: Principal, member: MemberAt, is_leader: bool, expected_version: int | None = None
) -> tuple[TeamDocument, dict[str, Any]]:
    """Add a member; returns (team, membership). 404 for an unknown user, 409 if already in."""
    db = ctx.db

    async def attempt() -> tuple[TeamDocument, dict[str, Any]] | None:
        team, newcomer = await _managed_team(db, caller, member.team_id, member.user_id)
        check_version(expected_version, team)
        if newcomer is None:
            raise NotFound("No such user.")
        if newcomer["membership"] is not None:
            raise Conflict("The user is already a member of this team.")
        membership = repository.new_membership(team, newcomer["user"]["_id"])
        try:
            updated = await repository.add_member(db, team, membership, is_leader, expected_version)
        except _REFUSED as exc:
            raise _refusal(exc) from None
        return None if updated is None else (updated, _membership(updated, membership, newcomer["user"]))

    return await patch.optimistically(attempt, expected_version, "team")


async def _target(
    db: Database, caller: Principal, member: MemberAt, *, allow_self: bool
) -> tuple[TeamDocument, repository.Member]:
    """The team and the member (user and membership) the caller may change (a member may always leave)."""
    team, manager, target = await _team(db, caller, member.team_id, member.user_id)
    if target is None or target["membership"] is None:
        raise NotFound("No such member in this team.")
    if not (manager or (allow_self and target["user"]["_id"] == caller.user_id)):
        raise Forbidden("Only the team's leaders or an admin may do this.")
    return team, target


async def patch_membership(
    ctx: Context, caller: Principal, member: MemberAt, operations: list[dict[str, Any]], expected_version: int | None
) -> tuple[TeamDocument, dict[str, Any]]:
    db = ctx.db

    async def attempt() -> tuple[TeamDocument, dict[str, Any]] | None:
        team, target = await _target(db, caller, member, allow_self=False)
        check_version(expected_version, team)
        membership = cast(MembershipDocument, target["membership"])
        current = repository.leads(team, membership["user_id"])
        result = load(EDITABLE_MEMBERSHIP, patch.apply({"is_leader": current}, operations))
        try:
            updated = await repository.set_leader(db, team, membership["user_id"], result["is_leader"])
        except _REFUSED as exc:
            raise _refusal(exc) from None
        return None if updated is None else (updated, _membership(updated, membership, target["user"]))

    return await patch.optimistically(attempt, expected_version, "team")


async def remove_member(ctx: Context, caller: Principal, member: MemberAt, expected_version: int | None) -> None:
    """Leaders and admins remove anyone; a member may leave. The last leader cannot go.

    The removal is tried first, with the caller's standing as its condition (three operations); only
    a refusal reads the team to say why, or tries again when nothing explains it (it changed)."""
    db = ctx.db
    team_oid, user_oid = document_id(member.team_id), document_id(member.user_id)
    for _ in range(patch.ATTEMPTS):
        if team_oid is not None and user_oid is not None:
            leader = None if caller.is_admin or user_oid == caller.user_id else caller.user_id
            if await repository.remove_member(db, team_oid, user_oid, expected_version, leader):
                return
        team, target = await _target(db, caller, member, allow_self=True)
        check_version(expected_version, team)
        if team["leader_ids"] == [target["user"]["_id"]]:
            raise Conflict("A team must keep at least one leader.")
    raise Conflict("The team keeps changing; read it again and retry.")
