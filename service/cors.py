"""CORS for the OAuth2/OpenID Connect endpoints a browser application calls with fetch().

A single-page app on its own origin signs users in with the authorization-code flow and PKCE: the
sign-in page is a navigation, but discovery, the JWKS, the token, revocation and UserInfo endpoints
are fetched from the page. They carry no cookies (client_id, PKCE and bearer tokens only), so any
origin may call them, without credentials. The /api/v1 API does not answer cross-origin requests.
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

BROWSER_ENDPOINTS = frozenset(
    {
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
        "/auth/oauth2/jwks",
        "/auth/oauth2/token",
        "/auth/oauth2/revoke",
        "/auth/oauth2/userinfo",
    }
)
_ALLOW = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, DPoP",
    "Access-Control-Max-Age": "600",
}

# What a page may read of an answer: why it was refused, when to retry, the DPoP nonce, its budget.
_EXPOSE = "WWW-Authenticate, Retry-After, DPoP-Nonce, RateLimit, RateLimit-Policy"


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in BROWSER_ENDPOINTS or hdrs.ORIGIN not in request.headers:
        return await handler(request)
    if request.method == hdrs.METH_OPTIONS and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers:
        return web.Response(status=204, headers=_ALLOW)
    response = await handler(request)
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Access-Control-Expose-Headers"] = _EXPOSE
    return response
