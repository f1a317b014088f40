"""Bearer tokens (RFC 6750): the API sub-app's middleware that resolves a token into the caller and
enforces each route's `@requires` declaration, before anything else looks at the request."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from service.auth.principals import live_token
from service.cache import PRINCIPAL_CACHE
from service.caller import CALLER, Principal
from service.crypto import hash_secret
from service.db import MONGO
from service.errors import BadRequest, Forbidden, InsufficientScope, Unauthorized
from service.security import Requirement


async def authenticate(request: web.Request, form_token: str | None = None) -> Principal | None:
    """Resolve the bearer token, if any, into a Principal; 401 for a bad one. `form_token`: one sent in a
    form body (RFC 6750 2.2, where an endpoint accepts it); sending it both ways is refused (RFC 6750 2)."""
    header = request.headers.get("Authorization")
    if header is None and form_token is None:
        return None
    if header is not None and form_token is not None:
        raise BadRequest("Send the access token one way only (RFC 6750 2).")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("The Authorization header must be 'Bearer <token>'.")
    else:
        token = form_token or ""
    digest = hash_secret(token.strip())
    state = request.config_dict  # two keys, not a whole Context: this runs on every API request
    found = await live_token(state[PRINCIPAL_CACHE], state[MONGO].db, digest)
    if found is None:
        raise Unauthorized("The access token is invalid, expired or revoked.")
    return Principal(
        user=found["user"], scopes=frozenset(found["scopes"]), client_id=found["client_id"], token_id=found["_id"]
    )


@web.middleware
async def bearer_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Enforce the route's `@requires` before anything else looks at the request."""
    requirement: Requirement | None = getattr(request.match_info.handler, "__requirement__", None)
    if requirement is None:
        return await handler(request)
    principal = await authenticate(request)
    if principal is None:
        if not requirement.optional:
            raise Unauthorized("A bearer token is required.", error=None)
    else:
        missing = tuple(scope for scope in requirement.scopes if scope not in principal.scopes)
        if missing:
            raise InsufficientScope(requirement.scopes)
        if requirement.admin and not principal.is_admin:
            raise Forbidden("Only administrators may do this.")
        request[CALLER] = principal
    return await handler(request)
