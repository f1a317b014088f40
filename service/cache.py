"""The principal cache: what identifies a caller (a token's principal, a client, a user by name) kept in
process, exact because it follows the database's change stream. Generic: the domains say what they keep
(auth: tokens and clients, users: names) and which collections the stream watches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import orjson
from aiohttp import web

from service import metrics
from service.config import SETTINGS
from service.db import MONGO

T = TypeVar("T")
# Opens a change stream of the writes that can alter a cached value: (database, resume token) -> stream.
Watch = Callable[[Any, Any], Any]
CHANGE_STREAM_AWAIT_MS = 500  # how long each getMore waits on the server for a change

log = logging.getLogger(__name__)


# What `PrincipalCache.get` answers when it has nothing usable (None is a value it may hold).
MISS: Any = object()
# A dependency on every document of a collection: `("users", ANY)` goes with any change to a user.
ANY = "*"

Dependency = tuple[str, Any]  # (collection, _id) of a document a cached value was read from


class PrincipalCache:
    """What identifies a caller, kept in process so a hot request costs no database round trip: the
    principals of access tokens, OAuth2 clients, and users by username (the password grant's reads).

    Safe by construction (each point is tested on the real server with two app instances):
    - it answers only while the change stream is provably current: a `getMore` waits on the server
      and returns as soon as a change arrives, so when one returns, every write acknowledged until
      then has been seen, and the next one is already waiting. The cache trusts that for one wait plus
      GRACE; a stream that stalls or fails (the driver's silent restarts included) is noticed within
      about a second, and every lookup goes to the database until it is back;
    - each value names the documents it was read from, and any change to one evicts it (an unknown
      username depends on every user: a user created or renamed may take it; a token also names its
      family and code, which revocations select by);
    - a fill whose database read overlapped an eviction is dropped (the epoch moved);
    - the process that makes a change evicts what it changed itself, at once (`evict`, `invalidate`);
    - expiry (a token's) is checked on every hit, entries live at most MAX_AGE, and the size is bounded.
    """

    GRACE = 0.1
    MAX_AGE = 30.0

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.epoch = 0
        self.hits = 0
        self.size = 0  # bytes of what is kept, as _size estimates them
        self._valid_until = 0.0
        self._entries: dict[str, tuple[Any, float, datetime | None, frozenset[Dependency], int]] = {}

    def get(self, key: str) -> Any:
        now = time.monotonic()
        if now >= self._valid_until:
            return MISS
        entry = self._entries.get(key)
        if entry is None:
            return MISS
        value, stored_at, expires, _, _ = entry
        if now - stored_at > self.MAX_AGE or (expires is not None and expires <= datetime.now(UTC)):
            self._drop(key)
            return MISS
        self.hits += 1
        return value

    def put(
        self, key: str, value: Any, epoch: int, depends_on: Iterable[Dependency], expires: datetime | None = None
    ) -> None:
        """Store what was read while the epoch was `epoch`, unless something was evicted since."""
        if epoch != self.epoch or time.monotonic() >= self._valid_until:
            return
        size = _size(key, value)
        if size > self.max_bytes:
            return
        self._drop(key)
        while self._entries and (len(self._entries) >= self.max_entries or self.size + size > self.max_bytes):
            self._drop(next(iter(self._entries)))  # the oldest first
        self._entries[key] = (value, time.monotonic(), expires, frozenset(depends_on), size)
        self.size += size

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.size -= entry[4]

    async def fetch(
        self,
        key: str,
        load: Callable[[], Awaitable[T]],
        depends_on: Callable[[T], Iterable[Dependency] | None],
        expires: Callable[[T], datetime | None] = lambda _: None,
    ) -> T:
        """The cached value of `key`, else `load()`'s, kept unless `depends_on` says None."""
        found = self.get(key)
        (metrics.CACHE_HITS if found is not MISS else metrics.CACHE_MISSES).inc()
        if found is not MISS:
            return cast(T, found)
        epoch = self.epoch
        value = await load()
        dependencies = depends_on(value)
        if dependencies is not None:
            self.put(key, value, epoch, dependencies, expires(value))
        return value

    def invalidate(self) -> None:
        """Forget everything (a local write, or the stream lost)."""
        self.epoch += 1
        self._entries.clear()
        self.size = 0

    def evict(self, collection: str, key: Any) -> None:
        self.epoch += 1
        for cached, (_, _, _, depends_on, _) in list(self._entries.items()):
            if (collection, key) in depends_on or (collection, ANY) in depends_on:
                self._drop(cached)
                metrics.CACHE_EVICTIONS.inc()

    def current_until(self, deadline: float) -> None:
        self._valid_until = deadline

    def extend_until(self, deadline: float) -> None:
        self._valid_until = max(self._valid_until, deadline)

    def go_dark(self) -> None:
        self._valid_until = 0.0
        self.invalidate()


def _size(key: str, value: Any) -> int:
    """About what an entry holds, in bytes: its key and its value as JSON. Measured once per fill (a
    miss, which costs a database round trip anyway), so the cache is bounded by bytes, not only by count."""
    return len(key) + len(orjson.dumps(value, default=str)) + 200  # + the tuple, dict slot and dependencies


async def _follow_changes(cache: PrincipalCache, db: Any, watch: Watch) -> None:
    """Apply the change stream to the cache for as long as the app runs; go dark on any trouble."""
    resume = None
    while True:
        try:
            async with watch(db, resume) as stream:
                wait = CHANGE_STREAM_AWAIT_MS / 1000
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


def follower_ctx(watch: Watch) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context that runs the cache's change-stream follower on `watch` (not on mongomock, which
    has no change streams, nor with PRINCIPAL_CACHE=false: then the cache never answers)."""

    async def follow(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        if settings.mongomock or not settings.principal_cache:
            yield
            return
        follower = asyncio.create_task(_follow_changes(app[PRINCIPAL_CACHE], app[MONGO].db, watch))
        yield
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower

    return follow


PRINCIPAL_CACHE: web.AppKey[PrincipalCache] = web.AppKey("service.principal_cache", PrincipalCache)
