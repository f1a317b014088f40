"""Bearer authentication, route permissions and the principal cache.

Permissions are declared on the route with `@requires(...)`: the auth middleware enforces them
before the body is parsed, and the same declaration documents the operation in OpenAPI.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp_apigami import docs

from service import keys, metrics
from service.auth import repository as tokens
from service.crypto import hash_secret
from service.db import document_id
from service.docs import problem
from service.errors import Forbidden, InsufficientScope, NotFound, Unauthorized

log = logging.getLogger(__name__)
H = TypeVar("H", bound=Callable[..., Any])


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
    digest = hash_secret(token.strip())
    cache = request.config_dict[keys.principal_cache]
    found = cache.get(digest)
    (metrics.CACHE_HITS if found is not None else metrics.CACHE_MISSES).inc()
    if found is None:
        epoch = cache.epoch
        found = await tokens.find_live_access_token(request.config_dict[keys.mongo].db, digest)
        if found is None:
            raise Unauthorized("The access token is invalid, expired or revoked.")
        cache.put(digest, found, epoch)
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


async def visible_or_404(
    fetch: Callable[[Any], Awaitable[dict[str, Any] | None]],
    raw_id: str,
    caller: Principal,
    may_see: Callable[[dict[str, Any], dict[str, Any]], bool],
    what: str,
) -> dict[str, Any]:
    """The object with id `raw_id` if the caller may see it. A malformed id, a missing object and one
    the caller may not see all get the same 404: they may not learn that it exists."""
    oid = document_id(raw_id)
    found = await fetch(oid) if oid is not None else None
    if found is None or not may_see(caller.user, found):
        raise NotFound(f"No such {what}.")
    return found


def principal(request: web.Request) -> Principal:
    """The authenticated caller of a route declared with `@requires`."""
    return request[keys.principal]


def optional_principal(request: web.Request) -> Principal | None:
    return request.get(keys.principal)


class PrincipalCache:
    """Principals of hot tokens, so a repeated token costs no database round trip.

    Safe by construction (each point is tested on the real server with two app instances):
    - it answers only while the change stream is provably current: a `getMore` waits on the server
      and returns as soon as a change arrives, so when one returns, every write acknowledged until
      then has been seen, and the next one is already waiting. The cache trusts that for one wait plus
      GRACE; a stream that stalls or fails (the driver's silent restarts included) is noticed within
      about a second, and every lookup goes to the database until it is back;
    - every update, replacement or deletion of a user, token or client evicts what it touches;
    - a fill whose database read overlapped an eviction is dropped (the epoch moved);
    - the process that makes a change clears the cache itself, at once (`invalidate`);
    - token expiry is checked on every hit, entries live at most MAX_AGE, and the size is bounded.
    """

    GRACE = 0.1
    MAX_AGE = 30.0

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self.epoch = 0
        self.hits = 0
        self._valid_until = 0.0
        self._entries: dict[str, tuple[dict[str, Any], float]] = {}

    def get(self, digest: str) -> dict[str, Any] | None:
        now = time.monotonic()
        if now >= self._valid_until:
            return None
        entry = self._entries.get(digest)
        if entry is None:
            return None
        token, stored_at = entry
        if now - stored_at > self.MAX_AGE or token["access_expires"] <= datetime.now(UTC):
            self._entries.pop(digest, None)
            return None
        self.hits += 1
        return token

    def put(self, digest: str, token: dict[str, Any], epoch: int) -> None:
        """Store what was read while the epoch was `epoch`, unless something was evicted since."""
        if epoch != self.epoch or time.monotonic() >= self._valid_until:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.pop(next(iter(self._entries)))
        self._entries[digest] = (token, time.monotonic())

    def invalidate(self) -> None:
        """Forget everything (a local write, or the stream lost)."""
        self.epoch += 1
        self._entries.clear()

    def evict(self, collection: str, key: Any) -> None:
        self.epoch += 1
        field = {"oauth2_tokens": "_id", "users": "user_id", "oauth2_clients": "client_id"}[collection]
        for digest, (token, _) in list(self._entries.items()):
            if (digest if field == "_id" else token.get(field)) == key:
                del self._entries[digest]
                metrics.CACHE_EVICTIONS.inc()

    def current_until(self, deadline: float) -> None:
        self._valid_until = deadline

    def extend_until(self, deadline: float) -> None:
        self._valid_until = max(self._valid_until, deadline)

    def go_dark(self) -> None:
        self._valid_until = 0.0
        self.invalidate()


async def _follow_changes(cache: PrincipalCache, db: Any) -> None:
    """Apply the change stream to the cache for as long as the app runs; go dark on any trouble."""
    resume = None
    while True:
        try:
            async with tokens.watch_principal_changes(db, resume) as stream:
                wait = tokens.CHANGE_STREAM_AWAIT_MS / 1000
                while True:
                    cursor = _server_cursor(stream)
                    change = await stream.try_next()  # a change, or None after the server-side wait
                    resume = stream.resume_token
                    if change is not None:
                        cache.evict(change["ns"]["coll"], change["documentKey"]["_id"])
                        if "clusterTime" in change:  # the write's time on the server
                            metrics.CHANGE_STREAM_LAG.observe(max(0.0, time.time() - change["clusterTime"].time))
                    if _server_cursor(stream) is not cursor:
                        # The driver hit an error and restarted the stream on its own: until it answers
                        # from a waiting getMore again, changes may come late, so stop trusting the cache.
                        cache.go_dark()
                    else:
                        # Everything acknowledged until now is applied, and the next getMore, sent at
                        # once, waits on the server and answers within `wait`.
                        cache.extend_until(time.monotonic() + wait + cache.GRACE)
        except asyncio.CancelledError:
            cache.go_dark()
            raise
        except Exception as exc:  # noqa: BLE001 - any failure: stop trusting the cache, then reconnect
            cache.go_dark()
            log.warning("principal cache disabled until the change stream resumes: %s", type(exc).__name__)
            resume = None  # after a gap, start afresh: the cache is empty anyway
            await asyncio.sleep(0.5)


def _server_cursor(stream: Any) -> Any:
    """The server cursor behind a change stream. PyMongo resumes a stream after a network error by
    opening a new cursor, silently; this is how the follower notices (pinned by the broken-stream test)."""
    return getattr(getattr(stream, "delegate", stream), "_cursor", None)


async def principal_cache_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run the cache's change-stream follower (not on mongomock, which has no change streams)."""
    settings = app[keys.settings]
    cache = app[keys.principal_cache]
    if settings.mongomock or not settings.principal_cache:
        yield
        return
    follower = asyncio.create_task(_follow_changes(cache, app[keys.mongo].db))
    yield
    follower.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await follower


def invalidate_principals(request: web.Request) -> None:
    """After a write to users, tokens or clients: this process forgets cached principals at once
    (other processes hear of it through the change stream)."""
    request.config_dict[keys.principal_cache].invalidate()
