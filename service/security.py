"""Security primitives and route permissions.

Passwords: argon2id in a dedicated thread pool (argon2-cffi releases the GIL, so hashing runs in
parallel and never on the event loop, nor in the pool Motor uses). Tokens and client secrets are
high-entropy random strings stored as SHA-256 digests and compared in constant time.

Permissions are declared on the route with `@requires(...)`: the auth middleware enforces them
before the body is parsed, and the same declaration documents the operation in OpenAPI.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import argon2
from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp_apigami import docs

from service import keys
from service.auth import repository as tokens
from service.docs import problem
from service.errors import Forbidden, InsufficientScope, Unauthorized

T = TypeVar("T")
H = TypeVar("H", bound=Callable[..., Any])


def hash_secret(value: str) -> str:
    """Digest of a random token or client secret (they carry 256 bits, so a fast hash is enough)."""
    return hashlib.sha256(value.encode()).hexdigest()


def secret_matches(value: str, digest: str) -> bool:
    return hmac.compare_digest(hash_secret(value), digest)


def new_token(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


class PasswordHasher:
    """argon2id hashing and verification off the event loop."""

    def __init__(self, time_cost: int, memory_kib: int, threads: int | None = None) -> None:
        self._argon2 = argon2.PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=1)
        self._pool = ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1, thread_name_prefix="argon2")
        self._dummy_hash = self._argon2.hash(secrets.token_urlsafe(16))

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    async def hash(self, password: str) -> str:
        return await self._run(self._argon2.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Check a password; with no hash (unknown user) spend the same time and fail."""
        return await self._run(self._verify, password_hash, password)

    def _verify(self, password_hash: str | None, password: str) -> bool:
        try:
            return self._argon2.verify(password_hash or self._dummy_hash, password) and password_hash is not None
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        return self._argon2.check_needs_rehash(password_hash)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


async def hasher_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.settings]
    hasher = PasswordHasher(settings.argon2_time_cost, settings.argon2_memory_kib)
    app[keys.hasher] = hasher
    yield
    hasher.close()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the user a token acts for, through which client, with which scopes."""

    user: dict[str, Any]
    scopes: frozenset[str]
    client_id: str
    token_id: str

    @property
    def user_id(self) -> Any:
        return self.user["_id"]

    @property
    def is_admin(self) -> bool:
        return bool(self.user.get("is_admin"))


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
        handler.__requirement__ = requirement  # type: ignore[attr-defined]
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
    found = await tokens.find_live_access_token(request.config_dict[keys.mongo].db, hash_secret(token.strip()))
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
