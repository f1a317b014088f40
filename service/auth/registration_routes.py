"""Dynamic client registration (RFC 7591, RFC 7592) at the site root, the admin API's initial access
tokens (/api/v1/auth/registration_tokens/), and the OpenAPI description of the root endpoints."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp_apigami import docs, json_schema
from marshmallow import Schema, fields, validate

from service import keys
from service.auth import registration
from service.auth.openapi import oauth_error as _error
from service.auth.routes import NO_STORE, oauth_endpoint
from service.bodies import read_json
from service.context import Context
from service.openapi import responds
from service.responses import json_response
from service.security import principal, requires

registration_routes = web.RouteTableDef()
routes = web.RouteTableDef()


@registration_routes.post(registration.REGISTER_PATH)
@oauth_endpoint
async def register(request: web.Request) -> web.Response:
    body = await read_json(request)
    result = await registration.register(Context.of(request), body, request.headers.get("Authorization"))
    return json_response(result, status=201)


@registration_routes.get(registration.REGISTER_PATH + "/{client_id}", allow_head=False)
@oauth_endpoint
async def read_registration(request: web.Request) -> web.Response:
    result = await registration.read(
        Context.of(request), request.match_info["client_id"], request.headers.get("Authorization")
    )
    return json_response(result)


@registration_routes.put(registration.REGISTER_PATH + "/{client_id}")
@oauth_endpoint
async def update_registration(request: web.Request) -> web.Response:
    ctx = Context.of(request)
    authorization = request.headers.get("Authorization")
    await registration.registered_client(ctx, request.match_info["client_id"], authorization)  # 401 before the body
    body = await read_json(request)
    return json_response(await registration.update(ctx, request.match_info["client_id"], body, authorization))


@registration_routes.delete(registration.REGISTER_PATH + "/{client_id}")
@oauth_endpoint
async def delete_registration(request: web.Request) -> web.Response:
    await registration.delete(
        Context.of(request), request.match_info["client_id"], request.headers.get("Authorization")
    )
    return web.Response(status=204)


# --- /api/v1/auth/registration_tokens/ ---------------------------------------------------------


class CreateRegistrationTokenSchema(Schema):
    expires_in = fields.Integer(
        validate=validate.Range(min=1, max=365 * 24 * 3600),
        allow_none=True,
        load_default=None,
        metadata={"description": "Seconds until it expires (default: never)."},
    )
    max_uses = fields.Integer(
        validate=validate.Range(min=1, max=1_000_000),
        allow_none=True,
        load_default=None,
        metadata={"description": "How many registrations it allows (default: unlimited)."},
    )


class RegistrationTokenSchema(Schema):
    id = fields.String(dump_only=True)
    token = fields.String(
        dump_only=True, metadata={"description": "Shown this once (stored hashed): send as Authorization: Bearer."}
    )
    expires_at = fields.AwareDateTime(dump_only=True, allow_none=True)
    max_uses = fields.Integer(dump_only=True, allow_none=True)
    created = fields.AwareDateTime(dump_only=True)


REGISTRATION_TOKEN = RegistrationTokenSchema()


@routes.post("/auth/registration_tokens/")
@docs(
    tags=["auth"],
    summary="Create an initial access token for dynamic client registration (REGISTRATION=token)",
    description="Clients registered with it are owned by the administrator who created it.",
    operation_id="createRegistrationToken",
)
@requires("auth:write", who="administrators")
@json_schema(CreateRegistrationTokenSchema)
@responds(REGISTRATION_TOKEN, 201, description="Created", errors=(400, 413, 415, 422))  # type: ignore[untyped-decorator]
async def create_registration_token(request: web.Request) -> web.Response:
    body = request[keys.body]
    token, stored = await registration.create_initial_token_as(
        Context.of(request), principal(request), body["expires_in"], body["max_uses"]
    )
    shown = REGISTRATION_TOKEN.dump({**stored, "id": str(stored["_id"]), "token": token})
    shown.setdefault("expires_at", None)
    return json_response(shown, status=201, headers=NO_STORE)


# --- OpenAPI for the root endpoints ------------------------------------------------------------

_ROOT = [{"url": "/", "description": "OAuth2 and OpenID Connect live at the site root"}]
_STRING = {"type": "string"}
_URIS = {"type": "array", "items": _STRING}
_CHALLENGE = {"WWW-Authenticate": {"schema": _STRING, "description": 'Bearer error="invalid_token"'}}


_METADATA = {
    "type": "object",
    "properties": {
        "redirect_uris": _URIS,
        "client_name": _STRING,
        "grant_types": {"type": "array", "items": {"type": "string"}},
        "response_types": {"type": "array", "items": {"type": "string", "enum": ["code"]}},
        "token_endpoint_auth_method": {
            "type": "string",
            "enum": ["none", "client_secret_basic", "client_secret_post"],
        },
        "scope": {"type": "string", "description": "Space-separated: the allowed and default scopes."},
        "post_logout_redirect_uris": _URIS,
        "backchannel_logout_uri": _STRING,
        "dpop_bound_access_tokens": {"type": "boolean"},
    },
}
_REGISTERED = {
    "type": "object",
    "properties": {
        **_METADATA["properties"],  # type: ignore[dict-item]
        "client_id": _STRING,
        "client_secret": {**_STRING, "description": "Confidential clients, at registration only."},
        "client_secret_expires_at": {"type": "integer", "description": "0: never."},
        "client_id_issued_at": {"type": "integer"},
        "registration_access_token": {
            **_STRING,
            "description": "A new one in every registration, read and update response (stored hashed); the "
            "one sent stops working at once.",
        },
        "registration_client_uri": _STRING,
    },
}
_JSON_BODY = {"required": True, "content": {"application/json": {"schema": _METADATA}}}
_ANSWER = {"application/json": {"schema": _REGISTERED}}
_COMMON = {
    "401": _error(
        "invalid_token: a missing or wrong registration access token, or one already replaced by a read or"
        " update (of concurrent requests with one token, only the first succeeds).",
        _CHALLENGE,
    ),
    "429": _error("slow_down: too many requests from your address."),
    "503": _error("temporarily_unavailable: the database is unavailable."),
}
_CLIENT_ID = [{"in": "path", "name": "client_id", "required": True, "schema": _STRING}]
_TOKEN: list[dict[str, list[str]]] = [{"registrationAccessToken": []}]

PATHS: dict[str, Any] = {
    registration.REGISTER_PATH: {
        "servers": _ROOT,
        "post": {
            "tags": ["oauth2"],
            "summary": "Register a client (RFC 7591); REGISTRATION decides who may",
            "operationId": "registerClient",
            "security": [{"registrationAccessToken": []}, {}],
            "requestBody": _JSON_BODY,
            "responses": {
                "201": {"description": "Registered; the secrets are shown this once.", "content": _ANSWER},
                "400": _error("invalid_client_metadata or invalid_redirect_uri; invalid_request for a bad body."),
                "401": _error("invalid_token: REGISTRATION=token and no live initial access token.", _CHALLENGE),
                "403": _error("access_denied: REGISTRATION=closed."),
                "413": _error("invalid_request: the body is too large."),
                **{code: _COMMON[code] for code in ("429", "503")},
            },
        },
    },
    registration.REGISTER_PATH + "/{client_id}": {
        "servers": _ROOT,
        "parameters": _CLIENT_ID,
        "get": {
            "tags": ["oauth2"],
            "summary": "Read a registered client's metadata (RFC 7592); rotates the registration access token",
            "description": "The response carries a new registration_access_token (RFC 7592 3); the one sent "
            "stops working at once. Only one of concurrent requests with the same token succeeds.",
            "operationId": "readClientRegistration",
            "security": _TOKEN,
            "responses": {
                "200": {
                    "description": "The client's metadata and its new registration_access_token.",
                    "content": _ANSWER,
                },
                **_COMMON,
            },
        },
        "put": {
            "tags": ["oauth2"],
            "summary": "Replace a registered client's metadata (RFC 7592); the secret stays, the token rotates",
            "description": "The response carries a new registration_access_token (RFC 7592 2.2); the one sent "
            "stops working at once. A refused update changes neither the metadata nor the token.",
            "operationId": "updateClientRegistration",
            "security": _TOKEN,
            "requestBody": _JSON_BODY,
            "responses": {
                "200": {
                    "description": "The client's new metadata and its new registration_access_token.",
                    "content": _ANSWER,
                },
                "400": _error("invalid_client_metadata or invalid_redirect_uri; invalid_request for a bad body."),
                **_COMMON,
            },
        },
        "delete": {
            "tags": ["oauth2"],
            "summary": "Delete a registered client and its tokens (RFC 7592)",
            "operationId": "deleteClientRegistration",
            "security": _TOKEN,
            "responses": {"204": {"description": "Deleted."}, **_COMMON},
        },
    },
}
SECURITY_SCHEMES = {
    "registrationAccessToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "An initial access token (registration) or the client's registration access token.",
    }
}
