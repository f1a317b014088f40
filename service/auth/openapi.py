"""The OAuth2 / OpenID Connect endpoints in the OpenAPI document Swagger UI shows.

They live on the root app (not under /api/v1) and speak RFC 6749 forms and errors, not JSON bodies and
problem details, so they are described here by hand; each path item carries its own `servers` entry,
since the document's default server is /api/v1.
"""

from __future__ import annotations

from typing import Any

from service.auth.oidc import CLAIMS_SUPPORTED

ROOT = [{"url": "/", "description": "OAuth2 and OpenID Connect live at the site root"}]
_STRING = {"type": "string"}
_JSON_OBJECT = {"application/json": {"schema": {"type": "object"}}}
_HTML = {"text/html": {"schema": _STRING}}
_RETRY_AFTER = {"Retry-After": {"schema": _STRING, "description": "Seconds to wait before trying again."}}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OAuth2Error"}}},
    }
    if headers:
        response["headers"] = headers
    return response


def _form(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": required}
    return {
        "required": True,
        "content": {"application/x-www-form-urlencoded": {"schema": schema}, "multipart/form-data": {"schema": schema}},
    }


# Public clients send client_id only; confidential ones Basic or form.
_CLIENT_AUTH: list[dict[str, list[str]]] = [{}, {"clientBasic": []}]
_CLIENT = {"client_id": _STRING, "client_secret": {"type": "string", "description": "client_secret_post only"}}
_REFUSALS = {
    "400": _error("RFC 6749 error: invalid_request, invalid_grant, invalid_scope, unsupported_grant_type, ..."),
    "401": _error("invalid_client (with WWW-Authenticate when the client tried to authenticate)."),
    "429": _error("slow_down: too many failed sign-ins for the username, or requests from the address.", _RETRY_AFTER),
    "503": _error("temporarily_unavailable: password hashing saturated, or the database unavailable.", _RETRY_AFTER),
}

SCHEMAS: dict[str, Any] = {
    "OAuth2Error": {
        "type": "object",
        "properties": {"error": _STRING, "error_description": _STRING},
        "required": ["error"],
    },
    "TokenResponse": {
        "type": "object",
        "properties": {
            "token_type": {"type": "string", "enum": ["Bearer"]},
            "access_token": _STRING,
            "expires_in": {"type": "integer"},
            "refresh_token": {"type": "string", "description": "Not for client_credentials."},
            "scope": _STRING,
            "id_token": {"type": "string", "description": "With scope openid: an RS256 JWT (OpenID Connect)."},
        },
        "required": ["token_type", "access_token", "expires_in", "scope"],
    },
}

PATHS: dict[str, Any] = {
    "/auth/oauth2/token": {
        "servers": ROOT,
        "post": {
            "tags": ["oauth2"],
            "summary": "Get tokens (password, client_credentials, refresh_token, authorization_code + PKCE)",
            "operationId": "token",
            "security": _CLIENT_AUTH,
            "requestBody": _form(
                {
                    "grant_type": {
                        "type": "string",
                        "enum": ["password", "client_credentials", "refresh_token", "authorization_code"],
                    },
                    "username": _STRING,
                    "password": {"type": "string", "format": "password"},
                    "scope": {"type": "string", "description": "Space-separated; default: the client's default."},
                    "refresh_token": _STRING,
                    "code": _STRING,
                    "redirect_uri": _STRING,
                    "code_verifier": _STRING,
                    **_CLIENT,
                },
                ["grant_type"],
            ),
            "responses": {
                "200": {
                    "description": "Tokens (Cache-Control: no-store).",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TokenResponse"}}},
                },
                **_REFUSALS,
            },
        },
    },
    "/auth/oauth2/revoke": {
        "servers": ROOT,
        "post": {
            "tags": ["oauth2"],
            "summary": "Revoke an access or refresh token of your client (RFC 7009)",
            "operationId": "revokeToken",
            "security": _CLIENT_AUTH,
            "requestBody": _form({"token": _STRING, "token_type_hint": _STRING, **_CLIENT}, ["token"]),
            "responses": {"200": {"description": "Revoked, or never a live token of yours."}, **_REFUSALS},
        },
    },
    "/auth/oauth2/introspect": {
        "servers": ROOT,
        "post": {
            "tags": ["oauth2"],
            "summary": "Is this token of your client live? (RFC 7662, confidential clients)",
            "operationId": "introspectToken",
            "security": [{"clientBasic": []}, {}],
            "requestBody": _form({"token": _STRING, "token_type_hint": _STRING, **_CLIENT}, ["token"]),
            "responses": {
                "200": {"description": "`{active: false}` or the token's details.", "content": _JSON_OBJECT},
                **_REFUSALS,
            },
        },
    },
    "/auth/oauth2/authorize": {
        "servers": ROOT,
        "get": {
            "tags": ["oauth2"],
            "summary": "Sign-in and consent page of the authorization-code flow (PKCE S256 for public clients)",
            "operationId": "authorize",
            "security": [],
            "parameters": [
                {"in": "query", "name": name, "required": name in ("response_type", "client_id"), "schema": _STRING}
                for name in (
                    "response_type",
                    "client_id",
                    "redirect_uri",
                    "scope",
                    "state",
                    "code_challenge",
                    "code_challenge_method",
                    "nonce",
                    "prompt",
                )
            ],
            "responses": {
                "200": {"description": "The sign-in page.", "content": _HTML},
                "302": {"description": "Back to the client with `error` (and `state`)."},
                "400": {
                    "description": "Unknown client or redirect URI: an error page, never a redirect.",
                    "content": _HTML,
                },
            },
        },
        "post": {
            "tags": ["oauth2"],
            "summary": "The sign-in page's form (CSRF-protected): redirects with `code` and `state`",
            "operationId": "authorizeDecision",
            "security": [],
            "requestBody": {
                "required": True,
                "content": {"application/x-www-form-urlencoded": {"schema": {"type": "object"}}},
            },
            "responses": {
                "302": {"description": "Back to the client with `code` and `state`, or `error=access_denied`."},
                "400": {"description": "Wrong username or password: the page again.", "content": _HTML},
                "403": {"description": "Missing or wrong CSRF token.", "content": _HTML},
                "429": {"description": "Too many failed sign-ins: the page again.", "content": _HTML},
            },
        },
    },
    "/auth/oauth2/userinfo": {
        "servers": ROOT,
        **{
            method: {
                "tags": ["oauth2"],
                "summary": "OpenID Connect UserInfo: the claims your token's scopes allow",
                "operationId": f"userinfo{method.title()}",
                "security": [{"oauth2": ["openid"]}, {"openIdConnect": ["openid"]}],
                "responses": {
                    "200": {
                        "description": f"Claims: {', '.join(CLAIMS_SUPPORTED[:1] + CLAIMS_SUPPORTED[8:])}.",
                        "content": _JSON_OBJECT,
                    },
                    "401": {"description": "No, invalid or expired bearer token (WWW-Authenticate: Bearer)."},
                    "403": {"description": 'The token lacks openid (error="insufficient_scope").'},
                },
            }
            for method in ("get", "post")
        },
    },
    "/auth/oauth2/jwks": {
        "servers": ROOT,
        "get": {
            "tags": ["oauth2"],
            "summary": "Public keys that sign ID tokens (JWK Set)",
            "operationId": "jwks",
            "security": [],
            "responses": {"200": {"description": "JWK Set.", "content": _JSON_OBJECT}},
        },
    },
    "/.well-known/oauth-authorization-server": {
        "servers": ROOT,
        "get": {
            "tags": ["oauth2"],
            "summary": "Authorization server metadata (RFC 8414)",
            "operationId": "serverMetadata",
            "security": [],
            "responses": {"200": {"description": "Metadata.", "content": _JSON_OBJECT}},
        },
    },
    "/.well-known/openid-configuration": {
        "servers": ROOT,
        "get": {
            "tags": ["oauth2"],
            "summary": "OpenID Connect Discovery 1.0",
            "operationId": "openidConfiguration",
            "security": [],
            "responses": {"200": {"description": "Provider metadata.", "content": _JSON_OBJECT}},
        },
    },
}

SECURITY_SCHEMES: dict[str, Any] = {
    "clientBasic": {"type": "http", "scheme": "basic", "description": "Confidential clients: client_id:client_secret"},
    "openIdConnect": {"type": "openIdConnect", "openIdConnectUrl": "/.well-known/openid-configuration"},
}
