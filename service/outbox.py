"""Durable outboxes: what a request must send (mail, back-channel logout tokens) is written to a MongoDB
collection, never sent while the request waits, and a worker per process delivers it.

Each outbox collection holds one document per message: `state` (queued, sending, then a done state or
failed), `attempts`, `next_attempt_at`, `created`, `last_error`. `Outbox` makes every change to one as
one conditional write:

- `claim`: a queued message that is due, or a `sending` one whose lease (`claimed_until`) ran out,
  becomes `sending` for this worker and its attempt is counted. Processes sharing the database never
  hold one message at once, and a process that dies holding a claim leaves it to the next after the
  lease.
- `finish` (the done state), `defer` (queued again after a delay), `give_up` (failed) and `release`
  (due again at once, the attempt not counted: shutdown interrupted it) each match the message only
  while this claim holds. Done and failed messages stay KEEP_DONE for inspection, then the TTL index
  on `expires_at` removes them.

`Worker` runs a subclass's `drain` whenever `wake` is called (the process that queued a message wakes
its own worker: `wake`) and every `poll_seconds` otherwise (other processes' messages, retries).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from abc import ABC, abstractmethod
from contextlib import suppress
from datetime import timedelta
from typing import Any

from pymongo import ASCENDING, IndexModel, ReturnDocument

from service.db import Database, utcnow

KEEP_DONE = timedelta(days=7)  # how long a done or failed message stays for inspection


def indexes(collection: str) -> dict[str, list[IndexModel]]:
    """An outbox's indexes: the claim's (due messages in order) and the TTL of finished ones."""
    return {
        collection: [
            IndexModel([("state", ASCENDING), ("next_attempt_at", ASCENDING)]),
            IndexModel("expires_at", expireAfterSeconds=0),  # set once a message is done or has failed
        ]
    }


def backoff(first: float, attempt: int, ceiling: float) -> float:
    """Seconds before the next attempt after `attempt` failed: `first`, doubling up to `ceiling`, then
    jittered x0.75 to x1.25 so that retries do not bunch."""
    delay: float = min(first * 2 ** (attempt - 1), ceiling)
    return delay * (0.75 + secrets.randbelow(501) / 1000)


def describe(exc: BaseException) -> str:
    """What went wrong, for the log and the outbox: the error's kind and its words, short."""
    detail = str(exc).replace("\r", " ").replace("\n", " ").strip()
    return f"{type(exc).__name__}: {detail[:200]}" if detail else type(exc).__name__


def _claimed(message: dict[str, Any]) -> dict[str, Any]:
    """The filter that matches `message` only while this claim holds."""
    return {"_id": message["_id"], "state": "sending", "attempts": message["attempts"]}


class Outbox:
    """The state changes of the messages in one collection (see the module's docstring)."""

    def __init__(self, db: Database, collection: str, lease: timedelta) -> None:
        self.collection = db[collection]
        self.lease = lease

    async def claim(self) -> dict[str, Any] | None:
        now = utcnow()
        return await self.collection.find_one_and_update(
            {
                "$or": [
                    {"state": "queued", "next_attempt_at": {"$lte": now}},
                    {"state": "sending", "claimed_until": {"$lte": now}},
                ]
            },
            {"$set": {"state": "sending", "claimed_until": now + self.lease}, "$inc": {"attempts": 1}},
            sort=[("next_attempt_at", ASCENDING)],
            return_document=ReturnDocument.AFTER,
        )

    async def finish(self, message: dict[str, Any], state: str, *, keep_error: bool = False) -> bool:
        """Done (`state`, at `<state>_at`); `keep_error` keeps why an earlier attempt failed. False when
        the claim had expired meanwhile (another worker may deliver the message again)."""
        now = utcnow()
        unset = {"claimed_until": ""} if keep_error else {"claimed_until": "", "last_error": ""}
        done = await self.collection.update_one(
            _claimed(message),
            {"$set": {"state": state, f"{state}_at": now, "expires_at": now + KEEP_DONE}, "$unset": unset},
        )
        return bool(done.modified_count)

    async def defer(self, message: dict[str, Any], delay: float, reason: str) -> None:
        await self.collection.update_one(
            _claimed(message),
            {
                "$set": {
                    "state": "queued",
                    "next_attempt_at": utcnow() + timedelta(seconds=delay),
                    "last_error": reason,
                },
                "$unset": {"claimed_until": ""},
            },
        )

    async def give_up(self, message: dict[str, Any], reason: str) -> None:
        now = utcnow()
        await self.collection.update_one(
            _claimed(message),
            {
                "$set": {"state": "failed", "failed_at": now, "expires_at": now + KEEP_DONE, "last_error": reason},
                "$unset": {"claimed_until": ""},
            },
        )

    async def release(self, message: dict[str, Any]) -> None:
        """Shutdown (or a failure of ours) interrupted the attempt: the message is due again at once, and
        the attempt is not counted. Never raises: it runs on the way out of a failure."""
        with suppress(Exception):
            await self.collection.update_one(
                _claimed(message),
                {
                    "$set": {"state": "queued", "next_attempt_at": utcnow()},
                    "$inc": {"attempts": -1},
                    "$unset": {"claimed_until": ""},
                },
            )


_LIVE: set[Worker] = set()  # the workers running in this process, woken by `wake`


def wake(db: Database, kind: type[Worker]) -> None:
    """Wake this process's running workers of `kind` on `db` (after queueing a message for them)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    for worker in _LIVE:
        if isinstance(worker, kind) and worker.loop is loop and worker.db.name == db.name:
            worker.wake()


class Worker(ABC):
    """Runs `drain` until `stop`: at `start`, whenever woken, and every `poll_seconds`. A drain that
    fails (the database away) is logged, under the subclass's module, and tried again at the next poll."""

    name = "outbox"
    stop_grace = 5.0  # seconds the deliveries under way get to finish at `stop`; then they are released

    def __init__(self, db: Database, poll_seconds: float) -> None:
        self.db, self.poll_seconds = db, poll_seconds
        self.loop = asyncio.get_running_loop()
        self.stopping = False
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @abstractmethod
    async def drain(self) -> int:
        """Deliver what is due; how many messages were claimed (each outbox's own delivery)."""

    async def close(self) -> None:  # noqa: B027 - an optional hook: the mail sender holds nothing open
        """Let go of what the deliveries held open (connections), after the last one."""

    def wake(self) -> None:
        self._wakeup.set()

    def start(self) -> None:
        _LIVE.add(self)
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Finish the deliveries under way (`stop_grace` at most; then they are cancelled, and release
        their messages for another process). Stopping twice is harmless."""
        _LIVE.discard(self)
        self.stopping = True
        self._wakeup.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), self.stop_grace)
            except TimeoutError:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
        await self.close()

    async def _run(self) -> None:
        while not self.stopping:
            self._wakeup.clear()
            try:
                await self.drain()
            except Exception as exc:  # noqa: BLE001 - the database may be away: the next poll tries again
                errors = exc.exceptions if isinstance(exc, ExceptionGroup) else (exc,)
                kinds = ", ".join(sorted({type(error).__name__ for error in errors}))
                logger = logging.getLogger(type(self).__module__)
                logger.warning("%s: %s; trying again in %g s", self.name, kinds, self.poll_seconds)
            if self.stopping:
                break
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.poll_seconds)
