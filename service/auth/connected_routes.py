"""The connected apps API: the clients the caller authorized (GET /users/me/authorizations) and
withdrawing one (DELETE /users/me/authorizations/{client_id}), which revokes its tokens for the caller.

Registered on the API app by the auth domain; the users domain's `/users/{user_id}` routes take only a
24-hex id, so `/users/me/...` reaches these (tested)."""

from __future__ import annotations

from aiohttp import web
from aiohttp_apigami import docs

from service.auth import consent
from service.auth.schemas import ConnectedAppSchema
from service.context import Context
from service.openapi import responds
from service.responses import json_response
from service.security import principal, requires

routes = web.RouteTableDef()

CONNECTED_APPS = ConnectedAppSchema(many=True)


@routes.get("/users/me/authorizations", allow_head=False)
@docs(
    tags=["auth"],
    summary="List the applications you authorized (connected apps)",
    description="Every client given a code for you (first-party ones included), with every scope you granted it, "
    "in client_id order; a client deleted since is not listed.",
    operation_id="listMyAuthorizations",
)
@requires("auth:read", who="yourself")
@responds(CONNECTED_APPS)
async def list_my_authorizations(request: web.Request) -> web.Response:
    apps = await consent.connected_apps(Context.of(request), principal(request))
    return json_response(CONNECTED_APPS.dump(apps))


@routes.delete("/users/me/authorizations/{client_id}")
@docs(
    tags=["auth"],
    summary="Revoke an application's access: forget your consent and revoke its tokens for you",
    description="Its access and refresh tokens for you stop working at once and its unexchanged codes are "
    "dropped; its next authorization request asks for consent again. 404 when it holds neither a consent "
    "nor a live token for you.",
    operation_id="revokeMyAuthorization",
)
@requires("auth:write", who="yourself")
@responds(None, 204, description="Revoked", errors=(404,))
async def revoke_my_authorization(request: web.Request) -> web.Response:
    await consent.revoke(Context.of(request), principal(request), request.match_info["client_id"])
    return web.Response(status=204)
