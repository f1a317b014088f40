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
    """This process's copy of the keys, reloaded every RELOAD_SECONDS (and when a key is missing)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._keys: list[SigningKey] = []
        self._loaded = 0.0

    async def _load(self) -> None:
        stored = await self._db.signing_keys.find({}).sort("signs_from", -1).to_list(None)
        if not stored:
            await add_key(self._db, immediately=True)  # first start: one key, usable at once
            stored = await self._db.signing_keys.find({}).sort("signs_from", -1).to_list(None)
        self._keys = [
            SigningKey(doc["_id"], JsonWebKey.import_key(doc["private_pem"], {"kty": "RSA"}), doc["signs_from"])
            for doc in stored
        ]
        self._loaded = time.monotonic()

    async def keys(self) -> list[SigningKey]:
        if not self._keys or time.monotonic() - self._loaded > RELOAD_SECONDS:
            await self._load()
        return self._keys

    async def signing_key(self) -> SigningKey:
        """The newest key whose time to sign has come."""
        now = utcnow()
        for key in await self.keys():
            if key.signs_from <= now:
                return key
        await self._load()
        return self._keys[-1]

    async def jwks(self) -> dict[str, Any]:
        return {"keys": [key.public_jwk() for key in await self.keys()]}


KEYRING: web.AppKey[KeyRing] = web.AppKey("service.keyring", KeyRing)
