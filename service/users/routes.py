"""/api/v1/users: thin handlers; rules live in users.service."""

from __future__ import annotations

from aiohttp import web
from aiohttp_apigami import docs, json_schema, querystring_schema

from service import keys
from service.context import Context
from service.openapi import IF_MATCH, responds
from service.pagination import PageRequest
from service.ratelimit import per_address_limit
from service.responses import if_match_version, page, with_etag
from service.schemas import PaginationSchema
from service.security import optional_principal, principal, requires
from service.users import service
from service.users.schemas import SignupSchema, UserPatchOperationSchema, UserSchema

routes = web.RouteTableDef()
USER = UserSchema()
USERS = UserSchema(many=True)
PATCH_OPERATIONS = UserPatchOperationSchema(many=True)


@routes.get("/users/", allow_head=False)
@docs(tags=["users"], summary="List users", operation_id="listUsers")
@requires("users:read", admin=True)
@querystring_schema(PaginationSchema)
@responds(USERS, headers=("X-Total-Count", "Link"), errors=(422,))
async def list_users(request: web.Request) -> web.Response:
    found = await service.list_users(Context.of(request), PageRequest.from_query(request[keys.query]))
    return page(request, USERS.dump(found.items), found)


@routes.post("/users/")
@per_address_limit
@docs(
    tags=["users"],
    summary="Sign up (or, as an admin, create a user)",
    description="Open to anyone unless SIGNUP_ENABLED=false, when only admins may create users.",
    operation_id="createUser",
)
@requires(optional=True, who="anyone")
@json_schema(SignupSchema)
@responds(USER, 201, description="Created", headers=("Location", "ETag"), errors=(400, 409, 413, 415, 422, 429))
async def create_user(request: web.Request) -> web.Response:
    user = await service.signup(Context.of(request), request[keys.body], optional_principal(request))
    return with_etag(USER.dump(user), user, status=201, Location=f"/api/v1/users/{user['_id']}")


@routes.get("/users/me", allow_head=False)
@docs(tags=["users"], summary="The signed-in user", operation_id="getCurrentUser")
@requires("users:read")
@responds(USER, headers=("ETag",))
async def get_me(request: web.Request) -> web.Response:
    user = principal(request).user
    return with_etag(USER.dump(user), user)


@routes.get("/users/{user_id:[0-9a-fA-F]{24}}", allow_head=False)
@docs(tags=["users"], summary="Get a user", operation_id="getUser")
@requires("users:read", who="the user themself or an admin")
@responds(USER, headers=("ETag",), errors=(404,))
async def get_user(request: web.Request) -> web.Response:
    user = await service.get_visible_user(Context.of(request), principal(request), request.match_info["user_id"])
    return with_etag(USER.dump(user), user)


@routes.patch("/users/{user_id:[0-9a-fA-F]{24}}")
@docs(
    tags=["users"],
    summary="Change a user (RFC 6902 JSON Patch)",
    description=(
        "Paths: /first_name, /middle_name, /last_name, /email, /password; admins also /is_active, "
        "/is_regular_user, /is_admin. Changing /email or /password needs a preceding "
        '`{"op": "test", "path": "/current_password", "value": "..."}` with your own password. '
        "A password change (or deactivation) revokes all of the user's tokens: the response then carries "
        "`X-Tokens-Revoked: true` and the caller must sign in again."
    ),
    operation_id="patchUser",
    parameters=[IF_MATCH],
)
@requires("users:write", who="the user themself or an admin")
@json_schema(PATCH_OPERATIONS)
@responds(USER, headers=("ETag", "X-Tokens-Revoked"), errors=(400, 404, 409, 412, 413, 415, 422))
async def patch_user(request: web.Request) -> web.Response:
    user, revoked = await service.patch_user(
        Context.of(request),
        principal(request),
        request.match_info["user_id"],
        request[keys.body],
        if_match_version(request),
    )
    response = with_etag(USER.dump(user), user)
    if revoked:
        response.headers["X-Tokens-Revoked"] = "true"
    return response
