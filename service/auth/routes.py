"""OAuth2 endpoints (root app) and /api/v1/auth/oauth2_clients (API sub-app): thin handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp_apigami import docs, json_schema, querystring_schema
from authlib.oauth2.base import OAuth2Error
from authlib.oauth2.rfc6749 import errors as oauth

from service import keys
from service.auth import service
from service.auth.schemas import (
    CreatedOAuth2ClientSchema,
    CreateOAuth2ClientSchema,
    ListOAuth2ClientsSchema,
    OAuth2ClientSchema,
)
from service.docs import responds
from service.http import json_response, page
from service.security import principal, requires

oauth_routes = web.RouteTableDef()
routes = web.RouteTableDef()

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
CLIENT = OAuth2ClientSchema()
CLIENTS = OAuth2ClientSchema(many=True)
CREATED_CLIENT = CreatedOAuth2ClientSchema()


def issuer(request: web.Request) -> str:
    return request.config_dict[keys.settings].public_url or f"{request.scheme}://{request.host}"


def context(request: web.Request) -> service.Context:
    return service.Context(
        request.config_dict[keys.mongo].db, request.config_dict[keys.hasher], request.config_dict[keys.settings]
    )


async def form_parameters(request: web.Request) -> dict[str, str]:
    """The OAuth2 parameters of a form request (RFC 6749 needs form encoding)."""
    if request.content_type not in FORM_TYPES:
        raise oauth.InvalidRequestError("Send parameters as application/x-www-form-urlencoded.")
    form = await request.post()
    body: dict[str, list[str]] = {}
    for name, value in form.items():
        if not isinstance(value, str):
            raise oauth.InvalidRequestError("File uploads are not accepted here.")
        body.setdefault(name, []).append(value)
    query: dict[str, list[str]] = {}
    for name, value in request.query.items():
        query.setdefault(name, []).append(value)
    return service.merge_parameters(body, query)


OAuthHandler = Callable[[web.Request], Awaitable[web.Response]]


def oauth_endpoint(handler: OAuthHandler) -> OAuthHandler:
    """RFC 6749 5.2 error bodies (not problem+json) and no caching for every OAuth2 endpoint."""

    async def wrapper(request: web.Request) -> web.Response:
        try:
            response = await handler(request)
        except OAuth2Error as exc:
            status, body, headers = exc()
            extra = {name: value for name, value in headers if name.lower() != "content-type"}
            response = json_response(body, status=status, headers=extra)
        response.headers.update(NO_STORE)
        return response

    return wrapper


@oauth_routes.post("/auth/oauth2/token")
@oauth_endpoint
async def token(request: web.Request) -> web.Response:
    params = await form_parameters(request)
    return json_response(await service.token(context(request), params, request.headers.get("Authorization")))


@oauth_routes.post("/auth/oauth2/revoke")
@oauth_endpoint
async def revoke(request: web.Request) -> web.Response:
    params = await form_parameters(request)
    await service.revoke(request.config_dict[keys.mongo].db, params, request.headers.get("Authorization"))
    return web.Response(status=200)


@oauth_routes.post("/auth/oauth2/introspect")
@oauth_endpoint
async def introspect(request: web.Request) -> web.Response:
    params = await form_parameters(request)
    result = await service.introspect(
        request.config_dict[keys.mongo].db, params, request.headers.get("Authorization"), issuer(request)
    )
    return json_response(result)


@oauth_routes.get("/.well-known/oauth-authorization-server")
async def server_metadata(request: web.Request) -> web.Response:
    return json_response(service.metadata(issuer(request)))


# --- /api/v1/auth/oauth2_clients -------------------------------------------------------------


@routes.get("/auth/oauth2_clients/")
@docs(tags=["auth"], summary="List OAuth2 clients", operation_id="listOAuth2Clients")
@requires("auth:read", who="your own clients; admins may pass user_id")
@querystring_schema(ListOAuth2ClientsSchema)
@responds(CLIENTS, headers=("X-Total-Count",), errors=(422,))
async def list_clients(request: web.Request) -> web.Response:
    query = request[keys.query]
    clients, total = await service.list_clients(
        request.config_dict[keys.mongo].db, principal(request), query.get("user_id"), query["offset"], query["limit"]
    )
    return page(CLIENTS.dump(clients), total)


@routes.post("/auth/oauth2_clients/")
@docs(tags=["auth"], summary="Register an OAuth2 client", operation_id="createOAuth2Client")
@requires("auth:write")
@json_schema(CreateOAuth2ClientSchema)
@responds(CREATED_CLIENT, 201, description="Created", headers=("Location",), errors=(400, 409, 413, 415, 422))
async def create_client(request: web.Request) -> web.Response:
    client, secret = await service.create_client(
        request.config_dict[keys.mongo].db, principal(request).user_id, request[keys.body]
    )
    body = CREATED_CLIENT.dump({**client, **({"client_secret": secret} if secret else {})})
    headers = {"Location": f"/api/v1/auth/oauth2_clients/{client['_id']}", **NO_STORE}
    return json_response(body, status=201, headers=headers)


@routes.get("/auth/oauth2_clients/{client_id}")
@docs(tags=["auth"], summary="Get an OAuth2 client", operation_id="getOAuth2Client")
@requires("auth:read", who="the client's owner or an admin")
@responds(CLIENT, errors=(404,))
async def get_client(request: web.Request) -> web.Response:
    client = await service.get_visible_client(
        request.config_dict[keys.mongo].db, principal(request), request.match_info["client_id"]
    )
    return json_response(CLIENT.dump(client))


@routes.delete("/auth/oauth2_clients/{client_id}")
@docs(tags=["auth"], summary="Delete an OAuth2 client (its tokens stop working)", operation_id="deleteOAuth2Client")
@requires("auth:write", who="the client's owner or an admin")
@responds(None, 204, description="Deleted", errors=(404,))
async def delete_client(request: web.Request) -> web.Response:
    await service.delete_client(request.config_dict[keys.mongo].db, principal(request), request.match_info["client_id"])
    return web.Response(status=204)
