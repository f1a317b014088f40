"""The OAuth2 / OpenID Connect endpoints in the OpenAPI document Swagger UI shows.

They live on the root app (not under /api/v1) and speak RFC 6749 forms and errors, not JSON bodies and
problem details, so they are described here by hand; each path item carries its own `servers` entry,
since the document's default server is /api/v1 (schemathesis and other tools honour it).

What is declared is what the server accepts and answers, status by status: the form bodies in both
encodings (unknown parameters are ignored, a defined one is a single string), the PKCE and prompt
grammars, the per-address limit's 429 on every /auth/oauth2/ path, and the JSON 503 when the database
is away. A schema cannot say which client ids, codes or tokens exist: those are 400 or 401 (RFC 6749).
"""

from __future__ import annotations

from typing import Any

from service.auth.oidc import CLAIMS_SUPPORTED
from service.scopes import SCOPES

ROOT = [{"url": "/", "description": "OAuth2 and OpenID Connect live at the site root"}]
_STRING = {"type": "string"}
_JSON_OBJECT = {"application/json": {"schema": {"type": "object"}}}
_HTML = {"text/html": {"schema": _STRING}}
_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
_RETRY_AFTER = {"Retry-After": {"schema": _STRING, "description": "Seconds to wait before trying again."}}
_LOCATION = {"Location": {"schema": _STRING, "description": "The client's redirect URI with the answer."}}
_CHALLENGE = {"WWW-Authenticate": {"schema": _STRING, "description": "RFC 6750 challenge (Bearer ...)."}}
# RFC 7636 4.1: code verifiers and challenges alike.
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
PKCE_PATTERN = r"^[A-Za-z0-9._~-]{43,128}$"
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PORT = r"(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?"
_PCHARS = r"([A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2})"
# Redirect URIs a client may register (RFC 9700 2.1, RFC 8252 7): https on a DNS name, http on a loopback
# host, or a private-use scheme with a period; ASCII only, no userinfo, no backslash, no fragment.
REDIRECT_URI_PATTERN = (
    rf"^(https://{_LABEL}(\.{_LABEL})*{_PORT}|http://(127\.0\.0\.1|\[::1\]|localhost){_PORT}"
    rf"(?=[/?]|$)|[A-Za-z][A-Za-z0-9+-]*\.[A-Za-z0-9+.-]*:(?=/(?!/)))"
    rf"(/{_PCHARS}*)*(\?({_PCHARS}|[/?])*)?$"
)
# Back-channel logout URIs (OpenID Connect Back-Channel Logout 2.2): the web half of the above, no private-use scheme.
LOGOUT_URI_PATTERN = (
    rf"^(https://{_LABEL}(\.{_LABEL})*{_PORT}|http://(127\.0\.0\.1|\[::1\]|localhost){_PORT}(?=[/?]|$))"
    rf"(/{_PCHARS}*)*(\?({_PCHARS}|[/?])*)?$"
)
_RESOURCE = {
    "type": "string",
    "format": "uri",
    "description": "RFC 8707: the resource the token is for, an absolute URI without a fragment; this server "
    "protects one, `<issuer>/api/v1` (the default); anything else is invalid_target. May be sent more than once.",
}
_PROMPT = r"^\s*((none|login|consent|select_account)(\s+|$))*$"


def oauth_error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """An OpenAPI response object for an RFC 6749 5.2 error."""
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OAuth2Error"}}},
    }
    if headers:
        response["headers"] = headers
    return response


_error = oauth_error


def _form(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """A form body, url-encoded or multipart. Unknown parameters are ignored (RFC 6749 3.1), so the schema
    admits them; a defined parameter is one string (sent twice it is invalid_request), and a required one
    is not empty (the server reads an empty value as missing)."""
    properties = {
        name: {**schema, "minLength": max(1, schema.get("minLength", 1))} if name in required else schema
        for name, schema in properties.items()
    }
    schema = {"type": "object", "properties": properties, **({"required": required} if required else {})}
    return {
        "required": True,
        "content": {"application/x-www-form-urlencoded": {"schema": schema}, "multipart/form-data": {"schema": schema}},
    }


# Every path under /auth/oauth2/ is under the per-address rate limit (JSON, RFC 6749 shape).
_ADDRESS_LIMIT = _error("slow_down: too many requests from your address.", _RETRY_AFTER)
_UNAVAILABLE = {
    "description": "The database is unavailable (problem details).",
    "content": _PROBLEM,
    "headers": _RETRY_AFTER,
}

# Public clients send client_id only; confidential ones Basic or form.
_CLIENT_AUTH: list[dict[str, list[str]]] = [{}, {"clientBasic": []}]
_CLIENT = {
    "client_id": _STRING,
    "client_secret": {"type": "string", "description": "client_secret_post only"},
}
_TOKEN_HINT = {
    "type": "string",
    "description": "access_token or refresh_token; a hint only (an unknown value is ignored, RFC 7009 2.1).",
}
_REFUSALS = {
    "400": _error(
        "RFC 6749 error: invalid_request (also a body that cannot be read), invalid_grant, invalid_scope, "
        "unsupported_grant_type, ..."
    ),
    "401": _error(
        "invalid_client (with WWW-Authenticate when the client tried to authenticate).",
        {"WWW-Authenticate": {"schema": _STRING, "description": "Basic realm=... after HTTP Basic."}},
    ),
    "413": _error("invalid_request: the body is too large."),
    "429": _error("slow_down: too many failed sign-ins for the username, or requests from the address.", _RETRY_AFTER),
    "503": _error("temporarily_unavailable: password hashing saturated, or the database unavailable.", _RETRY_AFTER),
}

_AUTHORIZATION_REQUEST = {
    "response_type": {"type": "string", "enum": ["code"]},
    "client_id": {"type": "string", "minLength": 1},
    "redirect_uri": {"type": "string", "description": "Required when the client registered several."},
    "scope": {"type": "string", "description": "Space-separated; default: the client's default."},
    "state": _STRING,
    "code_challenge": {"type": "string", "pattern": PKCE_PATTERN, "description": "Required for public clients."},
    "code_challenge_method": {"type": "string", "enum": ["S256"]},
    "nonce": {"type": "string", "maxLength": 512},
    "prompt": {
        "type": "string",
        "pattern": _PROMPT,
        "description": "Space-separated. `none`: a code from the sign-in session without any page, else "
        "login_required or consent_required (it cannot be combined with other values); `login`, "
        "`select_account`: the password again; `consent`: the consent screen again.",
    },
    "max_age": {
        "type": "string",
        "pattern": r"^[0-9]{1,9}$",
        "description": "Seconds: a session whose last password sign-in is older asks for the password again.",
    },
    "id_token_hint": {
        "type": "string",
        "pattern": r"^[A-Za-z0-9_.=-]{0,4096}$",
        "description": "An ID token this server issued (expired ones too): a session of another user is not "
        "used (prompt=none: login_required).",
    },
    "response_mode": {"type": "string", "enum": ["query"]},
    "resource": _RESOURCE,
}
_LOGOUT_REQUEST = {
    "id_token_hint": {"type": "string", "pattern": r"^[A-Za-z0-9_.=-]{0,4096}$", "description": "An ID token."},
    "client_id": {"type": "string", "maxLength": 100},
    "post_logout_redirect_uri": {"type": "string", "pattern": f"(^$)|{LOGOUT_URI_PATTERN}", "maxLength": 2048},
    "state": {"type": "string", "maxLength": 1024},
    "logout_hint": {"type": "string", "maxLength": 256, "description": "Accepted and ignored."},
}
_LOGOUT_FORM = {
    "action": {"type": "string", "enum": ["logout", "stay"], "description": "The confirmation page's answer."},
    "csrf_token": {"type": "string", "description": "The confirmation page's (with its `logout_csrf` cookie)."},
}
_PAGE_ERRORS = {
    "400": {
        "description": "Unknown client or redirect URI, or a form that cannot be read: an error page, never a "
        "redirect.",
        "content": _HTML,
    },
    "429": {
        "description": "Too many requests from your address (JSON, slow_down); after a POST also too many "
        "failed sign-ins (the page again).",
        "content": {**_HTML, "application/json": {"schema": {"$ref": "#/components/schemas/OAuth2Error"}}},
        "headers": _RETRY_AFTER,
    },
    "503": {
        "description": "The database is unavailable (problem details), or password hashing saturated after a "
        "POST (the page again).",
        "content": {**_HTML, **_PROBLEM},
        "headers": _RETRY_AFTER,
    },
}
_REDIRECT = {
    "description": "Back to the client's redirect URI with `code` and `state`, or with `error` (and `state`, `iss`).",
    "headers": _LOCATION,
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
    "DeviceAuthorization": {
        "type": "object",
        "properties": {
            "device_code": _STRING,
            "user_code": {"type": "string", "pattern": "^[B-DF-HJ-NP-TV-XZ]{4}-[B-DF-HJ-NP-TV-XZ]{4}$"},
            "verification_uri": _STRING,
            "verification_uri_complete": _STRING,
            "expires_in": {"type": "integer"},
            "interval": {"type": "integer"},
        },
        "required": ["device_code", "user_code", "verification_uri", "verification_uri_complete", "expires_in"],
    },
}

PATHS: dict[str, Any] = {
    "/auth/oauth2/token": {
        "servers": ROOT,
        "post": {
            "tags": ["oauth2"],
            "summary": "Get tokens (password, client_credentials, refresh_token, authorization_code + PKCE, "
            "device_code)",
            "description": "`grant_type`, `client_id` and `scope` may also come in the query string; a secret "
            "there is invalid_request. A client may use only the grants it is registered for (unauthorized_client). "
            f"The device grant (`{DEVICE_GRANT}`, RFC 8628) polls with `device_code`: 400 authorization_pending "
            "until the user decides, slow_down (the interval grows by 5 s) when polled faster than the interval, "
            "expired_token, access_denied, and invalid_grant once the code gave tokens.",
            "operationId": "token",
            "security": _CLIENT_AUTH,
            "requestBody": _form(
                {
                    "grant_type": {
                        "type": "string",
                        "enum": ["password", "client_credentials", "refresh_token", "authorization_code", DEVICE_GRANT],
                    },
                    "device_code": {"type": "string", "description": f"With {DEVICE_GRANT}."},
                    "username": _STRING,
                    "password": {"type": "string", "format": "password"},
                    "scope": {"type": "string", "description": "Space-separated; default: the client's default."},
                    "refresh_token": _STRING,
                    "code": _STRING,
                    "redirect_uri": _STRING,
                    "code_verifier": {"type": "string", "pattern": PKCE_PATTERN},
                    "resource": _RESOURCE,
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
    "/auth/oauth2/device_authorization": {
        "servers": ROOT,
        "post": {
            "tags": ["oauth2"],
            "summary": "Start a device sign-in (RFC 8628): a device code to poll with, a user code to show",
            "description": "For clients registered for the device grant (else unauthorized_client). The user opens "
            "`verification_uri` (/auth/device), enters the user code (XXXX-XXXX), signs in and decides; the client "
            "polls the token endpoint every `interval` seconds.",
            "operationId": "deviceAuthorization",
            "security": _CLIENT_AUTH,
            "requestBody": _form(
                {"scope": {"type": "string", "description": "Space-separated."}, "resource": _RESOURCE, **_CLIENT}, []
            ),
            "responses": {
                "200": {
                    "description": "The codes (Cache-Control: no-store).",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DeviceAuthorization"}}},
                },
                **_REFUSALS,
            },
        },
    },
    "/auth/device": {
        "servers": ROOT,
        "get": {
            "tags": ["oauth2"],
            "summary": "The device sign-in page: the user code field (prefilled from `user_code`)",
            "operationId": "devicePage",
            "security": [],
            "parameters": [{"in": "query", "name": "user_code", "required": False, "schema": _STRING}],
            "responses": {"200": {"description": "The page.", "content": _HTML}},
        },
        "post": {
            "tags": ["oauth2"],
            "summary": "The device page's form (CSRF-protected): the code, then sign-in and consent",
            "description": "With `user_code` alone: the consent and sign-in form. With `username`, `password` and "
            "`action`: approve (or deny) the device's request, then the page that says to return to the device. "
            "Accounts with a second factor then send `signin_token` (the pending sign-in) and `otp` instead.",
            "operationId": "deviceDecision",
            "security": [],
            "parameters": [
                {
                    "in": "cookie",
                    "name": "device_csrf",
                    "required": False,
                    "schema": _STRING,
                    "description": "Set by the page; must equal the form's csrf_token (else 403).",
                }
            ],
            "requestBody": _form(
                {
                    "csrf_token": _STRING,
                    "user_code": {"type": "string", "description": "Any case; dashes and spaces ignored."},
                    "username": _STRING,
                    "password": {"type": "string", "format": "password"},
                    "action": {"type": "string", "enum": ["approve", "deny"]},
                    "signin_token": {"type": "string", "description": "The second step: the pending sign-in."},
                    "otp": {"type": "string", "description": "With signin_token: a TOTP code or a recovery code."},
                },
                ["csrf_token"],
            ),
            "responses": {
                "200": {
                    "description": "The next step, or the page that says to return to the device.",
                    "content": _HTML,
                },
                "400": {
                    "description": "A wrong, expired or used user code, a wrong password or second-factor code, "
                    "or an expired pending sign-in (the page again).",
                    "content": _HTML,
                },
                "403": {
                    "description": "Missing or wrong CSRF token and cookie.",
                    "content": _HTML,
                },
                "409": {
                    "description": "The account's TOTP secret cannot be read (its DATA_ENCRYPTION_KEY is gone): "
                    "the code form again, which still takes a recovery code.",
                    "content": _HTML,
                },
                "429": {
                    "description": "10 wrong user codes from your address in 15 minutes, or too many failed sign-ins.",
                    "content": _HTML,
                },
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
            "requestBody": _form({"token": _STRING, "token_type_hint": _TOKEN_HINT, **_CLIENT}, ["token"]),
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
            "requestBody": _form({"token": _STRING, "token_type_hint": _TOKEN_HINT, **_CLIENT}, ["token"]),
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
            "description": "With a live sign-in session (the `session` cookie, `__Host-session` over https) and "
            "consent, straight back to the client with a code (single sign-on); else the sign-in page, or the "
            "consent screen for a client that is not first-party. Each parameter once: a repeated client_id or "
            "redirect_uri is the error page, any other repeated parameter an invalid_request redirect.",
            "operationId": "authorize",
            "security": [],
            "parameters": [
                {"in": "query", "name": name, "required": name in ("response_type", "client_id"), "schema": schema}
                for name, schema in _AUTHORIZATION_REQUEST.items()
            ],
            "responses": {
                "200": {"description": "The sign-in page, or the consent screen.", "content": _HTML},
                "302": _REDIRECT,
                **_PAGE_ERRORS,
            },
        },
        "post": {
            "tags": ["oauth2"],
            "summary": "The sign-in page's form (CSRF-protected): redirects with `code` and `state`",
            "operationId": "authorizeDecision",
            "security": [],
            "parameters": [
                {
                    "in": "cookie",
                    "name": "oauth_csrf",
                    "required": False,
                    "schema": _STRING,
                    "description": "Set by the sign-in page; must equal the form's csrf_token (else 403).",
                }
            ],
            "requestBody": _form(
                {
                    **_AUTHORIZATION_REQUEST,
                    "csrf_token": _STRING,
                    "username": _STRING,
                    "password": {"type": "string", "format": "password"},
                    "action": {"type": "string", "enum": ["approve", "deny"]},
                    "signin_token": {
                        "type": "string",
                        "description": "The second step of a sign-in with a second factor: the pending sign-in "
                        "the code form carries (instead of username and password).",
                    },
                    "otp": {"type": "string", "description": "With signin_token: a TOTP code or a recovery code."},
                    "step": {"type": "string", "enum": ["consent"], "description": "The consent screen's form."},
                },
                ["csrf_token"],
            ),
            "responses": {
                "303": {**_REDIRECT, "description": f"{_REDIRECT['description']} Sets the session cookie."},
                **_PAGE_ERRORS,
                "400": {
                    "description": "Wrong username or password, or a wrong or used code (the page again); an "
                    "expired or foreign signin_token (the password form again); unknown client or redirect URI, "
                    "or a form that cannot be read (an error page).",
                    "content": _HTML,
                },
                "403": {"description": "Missing or wrong CSRF token (cookie and field).", "content": _HTML},
                "409": {
                    "description": "The account's TOTP secret cannot be read (its DATA_ENCRYPTION_KEY is gone): "
                    "the code form again, which still takes a recovery code.",
                    "content": _HTML,
                },
                "408": {"description": "The form arrived too slowly.", "content": _HTML},
                "413": {"description": "The form is too large.", "content": _HTML},
                "415": {
                    "description": "Not a form (url-encoded or multipart), or an unknown Content-Encoding.",
                    "content": _HTML,
                },
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
                **(
                    {
                        "requestBody": {
                            "required": False,
                            "content": {
                                "application/x-www-form-urlencoded": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "access_token": {
                                                "type": "string",
                                                "description": "RFC 6750 2.2: instead of the Authorization header, "
                                                "never with it.",
                                            }
                                        },
                                    }
                                }
                            },
                        }
                    }
                    if method == "post"
                    else {}
                ),
                "responses": {
                    "200": {
                        "description": f"Claims: {', '.join(CLAIMS_SUPPORTED[:1] + CLAIMS_SUPPORTED[10:])}.",
                        "content": _JSON_OBJECT,
                    },
                    "400": {"description": "The token sent both in the header and the body.", "content": _PROBLEM},
                    "401": {
                        "description": "No, invalid or expired bearer token.",
                        "content": _PROBLEM,
                        "headers": _CHALLENGE,
                    },
                    "403": {
                        "description": 'The token lacks openid (error="insufficient_scope").',
                        "content": _PROBLEM,
                        "headers": _CHALLENGE,
                    },
                    "429": _ADDRESS_LIMIT,
                    "503": _UNAVAILABLE,
                },
            }
            for method in ("get", "post")
        },
    },
    "/auth/oauth2/logout": {
        "servers": ROOT,
        **{
            method: {
                "tags": ["oauth2"],
                "summary": "RP-Initiated Logout 1.0 (the end_session_endpoint)",
                "description": "A valid `id_token_hint` for the signed-in user ends the session at once; anything "
                "else shows a confirmation page (a cross-site link signs no one out). Back to "
                "`post_logout_redirect_uri` (registered for the client, exact match) with `state`, or a page.",
                "operationId": f"endSession{method.title()}",
                "security": [],
                **(
                    {"parameters": [{"in": "query", "name": n, "schema": v} for n, v in _LOGOUT_REQUEST.items()]}
                    if method == "get"
                    else {"requestBody": {**_form({**_LOGOUT_REQUEST, **_LOGOUT_FORM}, []), "required": False}}
                ),
                "responses": {
                    "200": {"description": "The confirmation page, or the signed-out page.", "content": _HTML},
                    ("302" if method == "get" else "303"): {
                        "description": "Signed out: back to post_logout_redirect_uri with state.",
                        "headers": _LOCATION,
                    },
                    "400": {
                        "description": "An id_token_hint this server did not issue, an unknown client or a "
                        "post_logout_redirect_uri not registered for it: an error page, never a redirect.",
                        "content": _HTML,
                    },
                    "403": {"description": "A confirmation without its CSRF cookie and field.", "content": _HTML},
                    "413": {"description": "The form is too large.", "content": _HTML},
                    "415": {"description": "Not a form.", "content": _HTML},
                    "429": _ADDRESS_LIMIT,
                    "503": _UNAVAILABLE,
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
            "responses": {
                "200": {"description": "JWK Set.", "content": _JSON_OBJECT},
                "429": _ADDRESS_LIMIT,
                "503": _UNAVAILABLE,
            },
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
    **{
        path: {
            "servers": ROOT,
            "get": {
                "tags": ["oauth2"],
                "summary": "Protected resource metadata of the API (RFC 9728)",
                "operationId": operation_id,
                "security": [],
                "responses": {"200": {"description": "Metadata.", "content": _JSON_OBJECT}},
            },
        }
        for path, operation_id in (
            ("/.well-known/oauth-protected-resource/api/v1", "protectedResourceMetadata"),
            ("/.well-known/oauth-protected-resource", "protectedResourceMetadataRoot"),
        )
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


def security_schemes() -> dict[str, Any]:
    """The OAuth2 scheme every `@requires` route names (its flows are what Swagger UI's Authorize signs in
    with; the scopes are the registry's, complete once every domain's setup() ran), and the client ones."""
    flows = {
        "password": {"tokenUrl": "/auth/oauth2/token", "refreshUrl": "/auth/oauth2/token", "scopes": dict(SCOPES)},
        "authorizationCode": {
            "authorizationUrl": "/auth/oauth2/authorize",
            "tokenUrl": "/auth/oauth2/token",
            "refreshUrl": "/auth/oauth2/token",
            "scopes": dict(SCOPES),
        },
    }
    return {"oauth2": {"type": "oauth2", "flows": flows}, **CLIENT_SECURITY_SCHEMES}


CLIENT_SECURITY_SCHEMES: dict[str, Any] = {
    "clientBasic": {"type": "http", "scheme": "basic", "description": "Confidential clients: client_id:client_secret"},
    "openIdConnect": {"type": "openIdConnect", "openIdConnectUrl": "/.well-known/openid-configuration"},
}
