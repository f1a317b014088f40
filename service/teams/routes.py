"""/api/v1/teams and their members: thin handlers; rules live in teams.service."""

from __future__ import annotations

from aiohttp import web
from aiohttp_apigami import docs, json_schema, querystring_schema

from service import keys
from service.context import Context
from service.openapi import IF_MATCH, responds
from service.pagination import PageRequest
from service.responses import if_match_version, page, with_etag
from service.schemas import PaginationSchema
from service.security import principal, requires
from service.teams import service
from service.teams.schemas import (
    AddMemberSchema,
    CreateTeamSchema,
    MembershipPatchOperationSchema,
    MembershipSchema,
    TeamPatchOperationSchema,
    TeamSchema,
)

routes = web.RouteTableDef()
TEAM = TeamSchema()
TEAMS = TeamSchema(many=True)
MEMBERSHIP = MembershipSchema()
MEMBERSHIPS = MembershipSchema(many=True)
TEAM_PATCH = TeamPatchOperationSchema(many=True)
MEMBERSHIP_PATCH = MembershipPatchOperationSchema(many=True)
MEMBERS = "team members or admins"
LEADERS = "team leaders or admins"


def page_request(request: web.Request) -> PageRequest:
    return PageRequest.from_query(request[keys.query])


def member_at(request: web.Request) -> service.MemberAt:
    return service.MemberAt(request.match_info["team_id"], request.match_info["user_id"])


@routes.get("/teams/", allow_head=False)
@docs(tags=["teams"], summary="List teams (yours; admins: all)", operation_id="listTeams")
@requires("teams:read")
@querystring_schema(PaginationSchema)
@responds(TEAMS, headers=("X-Total-Count", "Link"), errors=(422,))
async def list_teams(request: web.Request) -> web.Response:
    found = await service.list_teams(Context.of(request), principal(request), page_request(request))
    return page(request, TEAMS.dump(found.items), found)


@routes.post("/teams/")
@docs(tags=["teams"], summary="Create a team; you become its leader", operation_id="createTeam")
@requires("teams:write")
@json_schema(CreateTeamSchema)
@responds(TEAM, 201, description="Created", headers=("Location", "ETag"), errors=(400, 413, 415, 422))
async def create_team(request: web.Request) -> web.Response:
    team = await service.create_team(Context.of(request), principal(request), request[keys.body]["title"])
    return with_etag(TEAM.dump(team), team, status=201, Location=f"/api/v1/teams/{team['_id']}")


@routes.get("/teams/{team_id}", allow_head=False)
@docs(tags=["teams"], summary="Get a team", operation_id="getTeam")
@requires("teams:read", who=MEMBERS)
@responds(TEAM, headers=("ETag",), errors=(404,))
async def get_team(request: web.Request) -> web.Response:
    team = await service.get_team(Context.of(request), principal(request), request.match_info["team_id"])
    return with_etag(TEAM.dump(team), team)


@routes.patch("/teams/{team_id}")
@docs(
    tags=["teams"],
    summary="Rename a team (RFC 6902 JSON Patch on /title)",
    operation_id="patchTeam",
    parameters=[IF_MATCH],
)
@requires("teams:write", who=LEADERS)
@json_schema(TEAM_PATCH)
@responds(TEAM, headers=("ETag",), errors=(400, 404, 409, 412, 413, 415, 422))
async def patch_team(request: web.Request) -> web.Response:
    team = await service.patch_team(
        Context.of(request),
        principal(request),
        request.match_info["team_id"],
        request[keys.body],
        if_match_version(request),
    )
    return with_etag(TEAM.dump(team), team)


@routes.delete("/teams/{team_id}")
@docs(tags=["teams"], summary="Delete a team and its memberships", operation_id="deleteTeam", parameters=[IF_MATCH])
@requires("teams:write", who=LEADERS)
@responds(None, 204, description="Deleted", errors=(400, 404, 412))
async def delete_team(request: web.Request) -> web.Response:
    await service.delete_team(
        Context.of(request), principal(request), request.match_info["team_id"], if_match_version(request)
    )
    return web.Response(status=204)


@routes.get("/teams/{team_id}/members/", allow_head=False)
@docs(tags=["teams"], summary="List a team's members", operation_id="listTeamMembers")
@requires("teams:read", who=MEMBERS)
@querystring_schema(PaginationSchema)
@responds(MEMBERSHIPS, headers=("X-Total-Count", "Link"), errors=(404, 422))
async def list_members(request: web.Request) -> web.Response:
    found = await service.list_members(
        Context.of(request), principal(request), request.match_info["team_id"], page_request(request)
    )
    return page(request, MEMBERSHIPS.dump(found.items), found)


@routes.post("/teams/{team_id}/members/")
@docs(tags=["teams"], summary="Add a member", operation_id="addTeamMember")
@requires("teams:write", who=LEADERS)
@json_schema(AddMemberSchema)
@responds(MEMBERSHIP, 201, description="Created", headers=("Location", "ETag"), errors=(400, 404, 409, 413, 415, 422))
async def add_member(request: web.Request) -> web.Response:
    body = request[keys.body]
    at = service.MemberAt(request.match_info["team_id"], body["user_id"])
    team, member = await service.add_member(Context.of(request), principal(request), at, body["is_leader"])
    location = f"/api/v1/teams/{team['_id']}/members/{member['user_id']}"
    return with_etag(MEMBERSHIP.dump(member), team, status=201, Location=location)


@routes.patch("/teams/{team_id}/members/{user_id}")
@docs(
    tags=["teams"],
    summary="Make a member leader or not (RFC 6902 JSON Patch on /is_leader)",
    description="Demoting the last leader is 409. The ETag is the team's.",
    operation_id="patchTeamMember",
    parameters=[IF_MATCH],
)
@requires("teams:write", who=LEADERS)
@json_schema(MEMBERSHIP_PATCH)
@responds(MEMBERSHIP, headers=("ETag",), errors=(400, 404, 409, 412, 413, 415, 422))
async def patch_member(request: web.Request) -> web.Response:
    team, member = await service.patch_membership(
        Context.of(request), principal(request), member_at(request), request[keys.body], if_match_version(request)
    )
    return with_etag(MEMBERSHIP.dump(member), team)


@routes.delete("/teams/{team_id}/members/{user_id}")
@docs(
    tags=["teams"],
    summary="Remove a member (or leave the team)",
    description="Removing the last leader is 409.",
    operation_id="removeTeamMember",
    parameters=[IF_MATCH],
)
@requires("teams:write", who="team leaders, admins, or the member themself")
@responds(None, 204, description="Removed", errors=(400, 404, 409, 412))
async def remove_member(request: web.Request) -> web.Response:
    await service.remove_member(Context.of(request), principal(request), member_at(request), if_match_version(request))
    return web.Response(status=204)
