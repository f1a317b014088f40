"""Bearer authentication and route permissions.

Permissions are declared on the route with `@requires(...)`: the auth middleware enforces them
before the body is parsed, and the same declaration documents the operation in OpenAPI.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp_apigami import docs

from service import keys
from service.auth.principals import live_token
from service.crypto import hash_secret
from service.docs import problem
from service.errors import Forbidden, InsufficientScope, Unauthorized
from service.principal import Principal

log = logging.getLogger(__name__)
H = TypeVar("H", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Requirement:
    scopes: tuple[str, ...]
    admin: bool = False
    optional: bool = False


UNAUTHORIZED = problem(
    "No, invalid or expired bearer token.",
    headers={"WWW-Authenticate": {"schema": {"type": "string"}, "description": "RFC 6750 challenge"}},
)


def requires(
    *scopes: str, admin: bool = False, optional: bool = False, who: str = "any active user"
) -> Callable[[H], H]:
    """Declare what a route needs: a bearer token with `scopes`, and an admin if `admin`.

    `optional` lets anonymous callers through (sign-up) while still identifying a caller who sends a
    token. `who` documents the object-level rule the service applies (owner, leader, ...).
    """
    requirement = Requirement(tuple(scopes), admin=admin, optional=optional)
    responses: dict[int, Any] = {401: UNAUTHORIZED}
    if scopes or admin or who != "any active user":
        responses[403] = problem(
            "Authenticated but not allowed (role, ownership or missing scope).",
            headers={"WWW-Authenticate": {"schema": {"type": "string"}, "description": "insufficient_scope"}},
        )
    security = [{"oauth2": list(scopes)}]
    if optional:
        security.append({})
    note = f"**Who:** {'admins' if admin else who}. **Scopes:** {', '.join(scopes) or 'none'}."

    def decorate(handler: H) -> H:
        handler.__requirement__ = requirement  # type: ignore[attr-defined]  # read back by docs and the alias routes
        spec = getattr(handler, "__apispec__", {})
        description = f"{spec.get('description', '')}\n\n{note}".strip()
        return docs(security=security, responses=responses, description=description)(handler)

    return decorate


async def authenticate(request: web.Request) -> Principal | None:
    """Resolve the bearer token, if any, into a Principal; 401 for a bad one."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("The Authorization header must be 'Bearer <token>'.")
    digest = hash_secret(token.strip())
    found = await live_token(request.config_dict[keys.principal_cache], request.config_dict[keys.mongo].db, digest)
    if found is None:
        raise Unauthorized("The access token is invalid, expired or revoked.")
    return Principal(
        user=found["user"], scopes=frozenset(found["scopes"]), client_id=found["client_id"], token_id=found["_id"]
    )


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
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
        request[keys.principal] = principal
    return await handler(request)


def principal(request: web.Request) -> Principal:
    """The authenticated caller of a route declared with `@requires`."""
    return request[keys.principal]


def optional_principal(request: web.Request) -> Principal | None:
    return request.get(keys.principal)
