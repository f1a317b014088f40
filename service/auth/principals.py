"""The principal cache: the callers of hot tokens kept in process, exact because it follows the
database's change stream (see PrincipalCache), next to the token repository it caches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from service import keys, metrics
from service.auth import repository as tokens

log = logging.getLogger(__name__)


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
