"""The database layer: client lifecycle (the embedded server, in `embedded.py`, or a URL, or mongomock),
index creation, the migration runner and bounded transactions.

Only this module creates clients; the modules that store documents (the domains' repositories, the
audit trail, the signing keys) use the driver's collections and index models, and `metrics` listens to
its command events. A later switch from Motor to PyMongo's async client stays one small change here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeAlias

from aiohttp import web
from motor.motor_asyncio import AsyncIOMotorClient, AsyncIOMotorDatabase
from pymongo import IndexModel, ReturnDocument
from pymongo.errors import ConnectionFailure, DuplicateKeyError, OperationFailure, PyMongoError

from service.config import Settings, SettingsError
from service.embedded import EmbeddedServer
from service.metrics import COMMAND_TIMER

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # Motor's stubs are generic in the document type; the classes are not, at runtime
    Database: TypeAlias = AsyncIOMotorDatabase[dict[str, Any]]
    Client: TypeAlias = AsyncIOMotorClient[dict[str, Any]]
else:
    Database = AsyncIOMotorDatabase
    Client = AsyncIOMotorClient
Migration = tuple[str, Callable[[Database], Awaitable[None]]]

# Codes a healthy server never returns: it is shutting down, stepping down or a fail point says so.
# 112 (WriteConflict) reaches the app only once a transaction has retried for TRANSACTION_DEADLINE:
# too busy to finish now, so "retry later" too.
# How long a starting process waits for its database to answer before giving up.
STARTUP_WAIT = 60.0

_UNAVAILABLE_CODES = frozenset({6, 7, 89, 91, 112, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})


def is_unavailable_error(exc: BaseException) -> bool:
    """True when the error means 'the database cannot serve us right now' (503, retry later)."""
    if isinstance(exc, ConnectionFailure):
        return True
    if isinstance(exc, PyMongoError) and exc.has_error_label("RetryableWriteError"):
        return True
    return isinstance(exc, OperationFailure) and exc.code in _UNAVAILABLE_CODES


def utcnow() -> datetime:
    """Now, in UTC, at the millisecond precision MongoDB stores."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def aware(moment: datetime) -> datetime:
    """A stored time as UTC (some drivers read them back naive)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def create_client(url: str, timeout_ms: int) -> Client:
    """A Motor client for a real server; made inside the running loop."""
    if url.startswith("mongomock://"):
        try:
            from mongomock_motor import AsyncMongoMockClient
        except ImportError:
            raise SettingsError(
                "MONGODB_URL=mongomock:// needs the in-memory test double: pip install -r requirements-mock.txt"
            ) from None

        return AsyncMongoMockClient(tz_aware=True)
    return AsyncIOMotorClient(
        url,
        tz_aware=True,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        socketTimeoutMS=max(timeout_ms * 3, 10_000),
        retryWrites=True,
        appname="service",
        event_listeners=[COMMAND_TIMER],
    )


@dataclass
class Mongo:
    """What the app holds of the database; filled in by `mongo_ctx` while the app runs."""

    settings: Settings
    client: Client | None = None
    owns_client: bool = True
    embedded: EmbeddedServer | None = None
    _db: Database | None = field(default=None, init=False, repr=False)

    @property
    def db(self) -> Database:
        # Cached: building a Motor/PyMongo Database object costs tens of microseconds per request.
        if self._db is None:
            if self.client is None:
                raise RuntimeError("the database is not connected (the app has not started)")
            self._db = self.client[self.settings.mongodb_db]
        return self._db

    async def connect(self, wait: float = STARTUP_WAIT) -> None:
        if self.client is not None:
            return
        url = self.settings.mongodb_url
        if url is None:
            self.embedded = EmbeddedServer(self.settings.data_dir)
            await self.embedded.start()
            url = self.embedded.url
        self.client = create_client(url, self.settings.mongodb_timeout_ms)
        try:
            await self._wait_until_reachable(wait)
        except BaseException:
            await self.close()
            raise

    async def _wait_until_reachable(self, wait: float) -> None:
        """A process may start before its database (compose without health conditions, Kubernetes):
        keep asking for `wait` seconds, as a supervisor would restart us anyway, instead of exiting."""
        deadline = time.monotonic() + wait
        while True:
            try:
                await self.ping()
                return
            except ConnectionFailure as exc:
                if time.monotonic() >= deadline:
                    raise
                log.warning("database not reachable yet (%s); retrying", type(exc).__name__)
                await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    async def close(self) -> None:
        if self.client is not None and self.owns_client:
            self.client.close()
        self.client = None
        self._db = None
        if self.embedded is not None:
            await self.embedded.close()
            self.embedded = None

    async def ping(self) -> None:
        await self.db.command("ping")


async def ensure_indexes(db: Database, indexes: Mapping[str, Sequence[IndexModel]]) -> None:
    """Create the declared indexes; idempotent, so every process runs it at start-up."""
    for collection, models in indexes.items():
        if models:
            await db[collection].create_indexes(list(models))


@dataclass
class Storage:
    """What the domains keep in the database: the indexes and migrations each domain's setup() declares,
    applied by `upgrade` at every start-up and by `db upgrade`."""

    indexes: dict[str, list[IndexModel]] = field(default_factory=dict)
    migrations: list[Migration] = field(default_factory=list)

    def declare(
        self, indexes: Mapping[str, Sequence[IndexModel]] | None = None, migrations: Sequence[Migration] = ()
    ) -> None:
        for collection, models in (indexes or {}).items():
            self.indexes.setdefault(collection, []).extend(models)
        self.migrations.extend(migrations)

    async def upgrade(self, db: Database) -> list[str]:
        """Indexes, then the migrations in the order of their names (`0001_...`): never rename one."""
        await ensure_indexes(db, self.indexes)
        return await run_migrations(db, sorted(self.migrations, key=lambda migration: migration[0]))


async def run_migrations(db: Database, migrations: Sequence[Migration]) -> list[str]:
    """Apply, in order, the migrations not yet recorded; return the names applied now.

    Each migration is claimed by inserting its record first (unique `_id`), so two processes
    starting together never run the same one twice; a claim left `running` by a crash is retried.
    """
    applied: list[str] = []
    for name, migrate in migrations:
        record = await db.migrations.find_one({"_id": name})
        if record is not None and record.get("state") == "done":
            continue
        if record is None:
            try:
                await db.migrations.insert_one({"_id": name, "state": "running", "started": utcnow()})
            except DuplicateKeyError:
                continue  # another process claimed it
        await migrate(db)
        await db.migrations.update_one({"_id": name}, {"$set": {"state": "done", "finished": utcnow()}})
        applied.append(name)
        log.info("migration %s applied", name)
    return applied


def _is_mongomock(client: Any) -> bool:
    """mongomock-motor presents itself as a Motor client; its class hierarchy tells the truth."""
    return any(cls.__module__.startswith("mongomock") for cls in type(client).__mro__)


TRANSACTION_DEADLINE = 10.0  # seconds a transaction may keep retrying write conflicts
_OUTAGE_RETRIES = 2  # a lost connection is retried this often, then the request gets its 503


async def in_transaction(db: Database, work: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run `work(session)` in a multi-document transaction; on mongomock (no sessions) with no session.

    Retried as the driver documents (TransientTransactionError: the whole transaction;
    UnknownTransactionCommitResult: the commit), but bounded, unlike `with_transaction`'s two minutes:
    write conflicts with concurrent transactions retry with jitter for up to TRANSACTION_DEADLINE, a
    lost database only _OUTAGE_RETRIES times, so an outage is a quick 503, not a hung request."""
    if _is_mongomock(db.client):  # no sessions, so no transactions
        return await work(None)
    session = await db.client.start_session()
    deadline, outages, attempt = time.monotonic() + TRANSACTION_DEADLINE, 0, 0
    async with session:
        while True:
            attempt += 1
            session.start_transaction()
            try:
                result = await work(session)
                await _commit(session)
                return result
            except PyMongoError as exc:
                await _abort(session)
                if not exc.has_error_label("TransientTransactionError"):
                    raise
                outages += isinstance(exc, ConnectionFailure)
                if outages > _OUTAGE_RETRIES or time.monotonic() > deadline:
                    raise
                # Exponential backoff with full jitter: many transactions on one document take turns
                # instead of aborting each other in lockstep.
                await asyncio.sleep(random.uniform(0, min(0.2, 0.002 * 2**attempt)))  # noqa: S311  # nosec B311 - jitter, not a secret
            except BaseException:
                await _abort(session)
                raise


async def _commit(session: Any) -> None:
    for attempt in range(3):
        try:
            await session.commit_transaction()
            return
        except PyMongoError as exc:
            if not exc.has_error_label("UnknownTransactionCommitResult") or attempt == 2:
                raise


async def _abort(session: Any) -> None:
    if session.in_transaction:
        with contextlib.suppress(PyMongoError):
            await session.abort_transaction()


async def shared_secret(db: Database, name: str) -> bytes:
    """A random key every process and instance shares (e.g. to sign list cursors): made once, on the
    first start, by whichever process gets there first; the others read the same one."""
    stored = await db.service_secrets.find_one_and_update(
        {"_id": name},
        {"$setOnInsert": {"key": os.urandom(32), "created": utcnow()}},
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    return bytes(stored["key"])


def document_id(value: Any) -> Any:
    """Parse an id from a URL into an ObjectId, or None when it cannot be one."""
    from bson import ObjectId
    from bson.errors import InvalidId

    try:
        return ObjectId(value)
    except (InvalidId, TypeError):
        return None


MONGO: web.AppKey[Mongo] = web.AppKey("service.mongo", Mongo)
STORAGE: web.AppKey[Storage] = web.AppKey("service.storage", Storage)
