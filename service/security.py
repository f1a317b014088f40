"""Route permissions, declared: `@requires(...)` says what a route needs (scopes, an admin) and documents
it in OpenAPI; the auth domain's bearer middleware (service/auth/bearer.py) enforces it before the body
is parsed, and handlers read the caller with `principal(request)`. Knows no domain."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from aiohttp_apigami import docs

from service.caller import CALLER, Principal
from service.openapi import problem

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


def principal(request: web.Request) -> Principal:
    """The authenticated caller of a route declared with `@requires`."""
    return request[CALLER]


def optional_principal(request: web.Request) -> Principal | None:
    return request.get(CALLER)
