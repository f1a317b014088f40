"""The database layer: client lifecycle, the embedded server, mongomock mode, indexes, migrations and
transactions.

Only this module creates clients; the modules that store documents (the domains' repositories, the
audit trail, the signing keys) use the driver's collections and index models, and `metrics` listens to
its command events. A later switch from Motor to PyMongo's async client stays one small change here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import random
import shutil
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeAlias

from motor.motor_asyncio import AsyncIOMotorClient, AsyncIOMotorDatabase
from pymongo import IndexModel, ReturnDocument
from pymongo.errors import ConnectionFailure, DuplicateKeyError, OperationFailure, PyMongoError

from service.config import Settings
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


def is_duplicate_key(exc: BaseException) -> bool:
    return isinstance(exc, DuplicateKeyError)


def utcnow() -> datetime:
    """Now, in UTC, at the millisecond precision MongoDB stores."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class EmbeddedServerError(RuntimeError):
    """The embedded database could not start; the message says why and what to do."""


@dataclass
class EmbeddedServer:
    """SecantusDB (`secantusd-py`) as a child process, storing its data in `data_dir`.

    A lock file in `data_dir` keeps a second service off the same data; the child gets
    PDEATHSIG so it dies with us even if we are killed without a chance to clean up.
    """

    data_dir: Path
    port: int = 0
    extra_args: Sequence[str] = ()
    process: asyncio.subprocess.Process | None = field(default=None, init=False)
    _lock: IO[str] | None = field(default=None, init=False)
    _log: IO[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        # journal=true: SecantusDB acknowledges w:1 writes before its log reaches the OS, so without it
        # a crash (kill -9) loses the last second of acknowledged writes (found by the fault tests).
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true&journal=true"

    def argv(self) -> list[str]:
        """The server's command line (the test suite starts its session server with it too)."""
        return [
            _secantusd_executable(),
            *("--host", "127.0.0.1", "--port", str(self.port), "--storage-path", str(self.data_dir / "data")),
            *("--log-level", "WARNING", *self.extra_args),
        ]

    async def start(self, timeout: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._lock is None:
            self._lock = _acquire_lock(self.data_dir / "service.lock")
        if not self.port:
            self.port = _free_port()
        if self._log is not None:  # restarting after the child died on its own
            self._log.close()
        self._log = open(self.data_dir / "secantusd.log", "ab")  # noqa: SIM115, ASYNC230 (start-up only; lives with the child)
        self.process = await asyncio.create_subprocess_exec(
            *self.argv(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            preexec_fn=_die_with_parent,
        )
        await self._wait_until_listening(self.process, timeout)
        log.info("embedded database listening on 127.0.0.1:%d (data in %s)", self.port, self.data_dir)

    async def _wait_until_listening(self, process: asyncio.subprocess.Process, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if process.returncode is not None:
                await self.stop()
                raise EmbeddedServerError(
                    f"the embedded database exited with code {process.returncode}; "
                    f"see {self.data_dir / 'secantusd.log'}"
                )
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if asyncio.get_running_loop().time() > deadline:
                    await self.stop()
                    raise EmbeddedServerError(f"the embedded database did not answer within {timeout:.0f}s") from None
                await asyncio.sleep(0.1)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    async def stop(self, timeout: float = 15.0) -> None:
        """Stop the child (SIGTERM, then SIGKILL); keeps the lock so a restart reuses the port and data."""
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    async def close(self) -> None:
        await self.stop()
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _acquire_lock(path: Path) -> IO[str]:
    handle = open(path, "a+")  # noqa: SIM115 (held for the life of the service)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise EmbeddedServerError(
            f"another service is already using the data directory {path.parent} "
            "(SERVICE_DATA_DIR); stop it or choose another directory"
        ) from None
    return handle


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _secantusd_executable() -> str:
    beside_python = Path(sys.executable).with_name("secantusd-py")
    found = str(beside_python) if beside_python.exists() else shutil.which("secantusd-py")
    if not found:
        raise EmbeddedServerError(
            "secantusd-py is not installed: pip install -r requirements-embedded.txt, or set MONGODB_URL"
        )
    return found


def _die_with_parent() -> None:
    """Runs in the child before exec: ask Linux to SIGTERM it when the parent dies."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    os.setpgrp()  # Ctrl-C goes to our process group only; we stop the child ourselves, in order


def create_client(url: str, timeout_ms: int) -> Client:
    """A Motor client for a real server; made inside the running loop."""
    if url.startswith("mongomock://"):
        from mongomock_motor import AsyncMongoMockClient

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
