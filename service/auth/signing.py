"""ID-token signing keys: RSA, kept in MongoDB so every process and instance signs and publishes the same set.

A key is published (JWKS) from the moment it is stored, but signs only from `signs_from`, a minute
later, so every instance publishes it before any token carries its `kid`. A rotated-out key stays
published until every ID token it signed has expired (they live as long as access tokens), then
`keys rotate` drops it. Private key material never leaves this module: not logged, not returned.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from pymongo import IndexModel

from service.auth.jose import JsonWebKey, RSAKey
from service.db import Database, utcnow

log = logging.getLogger(__name__)

INDEXES: dict[str, list[IndexModel]] = {"signing_keys": [IndexModel("signs_from")]}
PUBLISH_BEFORE_USE = timedelta(minutes=1)
RELOAD_SECONDS = 30.0
ALGORITHM = "RS256"


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    key: RSAKey
    signs_from: datetime

    def public_jwk(self) -> dict[str, Any]:
        return {**self.key.as_dict(is_private=False), "kid": self.kid, "use": "sig", "alg": ALGORITHM}


def _generate() -> RSAKey:
    return JsonWebKey.generate_key("RSA", 2048, is_private=True)


async def add_key(db: Database, *, immediately: bool = False) -> str:
    """Store a new key (generated off the event loop); it signs a minute later unless `immediately`."""
    key = await asyncio.get_running_loop().run_in_executor(None, _generate)
    kid = str(key.thumbprint())
    now = utcnow()
    await db.signing_keys.insert_one(
        {
            "_id": kid,
            "private_pem": key.as_pem(is_private=True).decode(),
            "created": now,
            "signs_from": now if immediately else now + PUBLISH_BEFORE_USE,
        }
    )
    log.info("signing key %s added", kid)
    return kid


async def drop_expired_keys(db: Database, keep_for: timedelta) -> list[str]:
    """Remove keys that stopped signing longer than `keep_for` ago: no token they signed is valid any more."""
    keys = await db.signing_keys.find({}, {"signs_from": 1}).sort("signs_from", -1).to_list(None)
    now = utcnow()
    doomed = [
        older["_id"]
        for newer, older in itertools.pairwise(keys)
        if newer["signs_from"] <= now and newer["signs_from"] + keep_for < now  # `older` stopped signing then
    ]
    if doomed:
        await db.signing_keys.delete_many({"_id": {"$in": doomed}})
    return doomed


class KeyRing:
    """This process's copy of the keys, reloaded every RELOAD_SECONDS (and when a key is missing).

    One reload at a time: the requests that find the copy stale all await the reload under way, and share
    its keys or its error (on a new database, several reloads at once would each create a first key). A
    reload that fails while keys are held keeps them, logs, and is tried again RETRY_SECONDS later. A key
    already held is not parsed again, and a new one is parsed off the event loop: an RSA private key
    takes about 25 ms to load."""

    RETRY_SECONDS = 5.0

    def __init__(self, db: Database) -> None:
        self._db = db
        self._keys: list[SigningKey] = []
        self._loaded = 0.0
        self._reloading: asyncio.Task[None] | None = None

    async def _load(self) -> None:
        task = self._reloading
        if task is None:
            task = self._reloading = asyncio.create_task(self._reload())
            task.add_done_callback(self._reloaded)
        await asyncio.shield(task)  # a caller that goes away does not cancel the others' reload

    def _reloaded(self, task: asyncio.Task[None]) -> None:
        self._reloading = None
        if not task.cancelled():
            task.exception()  # its callers have it; marked seen even if they all went away

    async def _reload(self) -> None:
        stored = await self._stored()
        if not stored:
            await add_key(self._db, immediately=True)  # first start: one key, usable at once
            stored = await self._stored()
        held = {key.kid: key.key for key in self._keys}
        new = [doc["_id"] for doc in stored if doc["_id"] not in held]
        if new:
            documents = await self._db.signing_keys.find({"_id": {"$in": new}}).to_list(None)
            held.update(await asyncio.to_thread(_import, documents))
        # (a key deleted between the two reads is left out)
        keys = [SigningKey(doc["_id"], held[doc["_id"]], doc["signs_from"]) for doc in stored if doc["_id"] in held]
        if not keys:
            raise RuntimeError("no signing key could be loaded")
        self._keys, self._loaded = keys, time.monotonic()

    async def _stored(self) -> list[dict[str, Any]]:
        return await self._db.signing_keys.find({}, {"signs_from": 1}).sort("signs_from", -1).to_list(None)

    async def keys(self) -> list[SigningKey]:
        if not self._keys or time.monotonic() - self._loaded > RELOAD_SECONDS:
            try:
                await self._load()
            except Exception as exc:
                if not self._keys:
                    raise
                if time.monotonic() - self._loaded > RELOAD_SECONDS:  # the first of the reload's callers
                    log.warning("signing keys: reload failed (%s); keeping those held", type(exc).__name__)
                    self._loaded = time.monotonic() - RELOAD_SECONDS + self.RETRY_SECONDS
        return self._keys

    async def signing_key(self) -> SigningKey:
        """The newest key whose time to sign has come (else, after a reload, the oldest one held)."""
        now = utcnow()
        for key in await self.keys():
            if key.signs_from <= now:
                return key
        await self._load()
        return next((key for key in self._keys if key.signs_from <= now), self._keys[-1])

    async def jwks(self) -> dict[str, Any]:
        return {"keys": [key.public_jwk() for key in await self.keys()]}


def _import(documents: list[dict[str, Any]]) -> dict[str, RSAKey]:
    return {doc["_id"]: JsonWebKey.import_key(doc["private_pem"], {"kty": "RSA"}) for doc in documents}


KEYRING: web.AppKey[KeyRing] = web.AppKey("service.keyring", KeyRing)
