"""OpenID Connect Back-Channel Logout 1.0: when a sign-in session ends, every client it signed in to
that registered a `backchannel_logout_uri` is told so by a signed logout token POSTed to that URI.

Like mail (service/mail.py), a logout never waits on a client: `enqueue` writes one durable message
per (session, client) to the `logout_outbox` collection, and a deliverer per process sends them.

- Claims (service/outbox.py): one conditional write, so processes sharing the database never send one
  message at the same time, and a process that dies holding a claim leaves the message to the next one
  after LEASE.
- The logout token (§2.4) is signed at each attempt with the ID-token key ring (RS256, the key's
  `kid`, `typ: logout+jwt` as §2.4 recommends): `iss`, `aud` (the client), `iat`, `exp` (iat +
  TOKEN_LIFETIME), a fresh `jti`, `sid`, `sub`, `events` with the back-channel logout event; never a
  `nonce` (§2.4 forbids it). It is POSTed as `application/x-www-form-urlencoded` `logout_token=...`
  (§2.5), with REQUEST_TIMEOUT, following no redirect.
- A 2xx answer is delivered (§2.8 says 200; some frameworks answer 204). A refused connection, a
  timeout or any other status is retried with jittered exponential backoff: FIRST_RETRY_SECONDS, then
  doubling (x0.75 to x1.25), at most MAX_ATTEMPTS attempts, so a client that stays away is given up on
  about an hour (63 minutes before jitter) after the logout; a message older than MAX_AGE (its
  deliverers were down) is given up on at its next claim. Delivered and failed messages stay KEEP_DONE
  for inspection, then a TTL index removes them. Outcomes are counted (`backchannel_logout_total`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import timedelta
from typing import Any

import aiohttp
from aiohttp import web

from service import outbox
from service.auth.jose import jwt
from service.auth.signing import ALGORITHM, KEYRING, KeyRing
from service.config import SETTINGS
from service.context import Context
from service.db import MONGO, Database, aware, utcnow
from service.metrics import BACKCHANNEL_LOGOUTS

log = logging.getLogger(__name__)

EVENT = "http://schemas.openid.net/event/backchannel-logout"
INDEXES = outbox.indexes("logout_outbox")
MAX_ATTEMPTS = 8
FIRST_RETRY_SECONDS = 30.0  # 30, 60, 120, ... 1920 s between the 8 attempts: about an hour in all
MAX_RETRY_DELAY = 1920.0
MAX_AGE = timedelta(hours=2)  # a logout this late is given up on, whatever its attempts
KEEP_DONE = outbox.KEEP_DONE  # how long a delivered or failed message stays for inspection
TOKEN_LIFETIME = 120  # seconds: the logout token's `exp` after its `iat`
REQUEST_TIMEOUT = 10.0  # seconds for one POST, connection included
LEASE = timedelta(seconds=REQUEST_TIMEOUT + 50)  # a claim outlives its attempt
CONCURRENCY = 8  # messages one deliverer sends at the same time: one slow client does not hold the rest
MIN_POLL_SECONDS = 5.0  # an idle deliverer asks the database at most this often


async def enqueue(ctx: Context, sessions: Iterable[Mapping[str, Any]]) -> int:
    """Queue a logout token for every client of every ended session that registered a
    `backchannel_logout_uri`; how many were queued. This process's deliverer wakes at once."""
    wanted = {
        (str(session["sid"]), str(session["user_id"]), client_id): None
        for session in sessions
        for client_id in session.get("clients", [])
    }
    if not wanted:
        return 0
    uris = await _logout_uris(ctx.db, {client_id for _, _, client_id in wanted})
    now = utcnow()
    messages = [
        {
            "iss": ctx.issuer,
            "sub": sub,
            "sid": sid,
            "client_id": client_id,
            "uri": uris[client_id],
            "state": "queued",
            "attempts": 0,
            "next_attempt_at": now,
            "created": now,
        }
        for sid, sub, client_id in wanted
        if client_id in uris
    ]
    if messages:
        await ctx.db.logout_outbox.insert_many(messages)
        outbox.wake(ctx.db, Deliverer)
    return len(messages)


async def _logout_uris(db: Database, client_ids: set[str]) -> dict[str, str]:
    """client_id -> backchannel_logout_uri for those of `client_ids` that registered one (the
    oauth2_clients collection is keyed by client_id: no index to add)."""
    found = db.oauth2_clients.find(
        {"_id": {"$in": sorted(client_ids)}, "backchannel_logout_uri": {"$nin": [None, ""]}},
        {"backchannel_logout_uri": 1},
    )
    return {client["_id"]: client["backchannel_logout_uri"] async for client in found}


async def logout_token(keyring: KeyRing, message: Mapping[str, Any]) -> str:
    """The Back-Channel Logout 1.0 §2.4 logout token for `message`, signed off the event loop."""
    key = await keyring.signing_key()
    now = int(time.time())
    payload = {
        "iss": message["iss"],
        "aud": message["client_id"],
        "iat": now,
        "exp": now + TOKEN_LIFETIME,
        "jti": secrets.token_urlsafe(16),
        "sid": message["sid"],
        "sub": message["sub"],
        "events": {EVENT: {}},
    }
    header = {"alg": ALGORITHM, "kid": key.kid, "typ": "logout+jwt"}
    signed = await asyncio.get_running_loop().run_in_executor(None, jwt.encode, header, payload, key.key)
    return bytes(signed).decode()


# --- the deliverer -------------------------------------------------------------------------------


class _Refused(Exception):
    """The client answered, but not with a 2xx."""


class Deliverer(outbox.Worker):
    """Delivers the logout outbox of one database until `stop`; `drain` delivers what is due now."""

    name = "back-channel logout"

    def __init__(self, db: Database, keyring: KeyRing, poll_seconds: float) -> None:
        super().__init__(db, poll_seconds)
        self.keyring = keyring
        self.outbox = outbox.Outbox(db, "logout_outbox", LEASE)
        self._http: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    def http(self) -> aiohttp.ClientSession:
        """The one HTTP client session of this deliverer (its connection pool), opened on first use."""
        if self._http is None:
            # No cookie jar: what one client's endpoint sets is never sent back, to it or to another.
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT), cookie_jar=aiohttp.DummyCookieJar()
            )
        return self._http

    async def drain(self) -> int:
        """Deliver every message that is due (CONCURRENCY at a time); how many were claimed. An idle
        poll costs one query: the other lanes start only once a message was found."""
        first = None if self.stopping else await self.outbox.claim()
        if first is None:
            return 0
        # The key ring loads once before the lanes sign (on a new database the first load makes a key).
        try:
            await self.keyring.signing_key()
        except BaseException:
            await asyncio.shield(self.outbox.release(first))
            raise
        # A lane that fails (the database went away) has put its message back; the others are not
        # cancelled (one cancelled while its claim is on the wire would leave a message to its lease).
        lanes = (self._lane(message) for message in (first, *[None] * (CONCURRENCY - 1)))
        results = await asyncio.gather(*lanes, return_exceptions=True)
        errors = [result for result in results if isinstance(result, BaseException)]
        if errors:
            raise BaseExceptionGroup("back-channel logout deliveries failed", errors)
        return sum(result for result in results if isinstance(result, int))

    async def _lane(self, message: dict[str, Any] | None) -> int:
        claimed = 0
        if message is not None:
            claimed += 1
            await self._deliver(message)
        while not self.stopping and (message := await self.outbox.claim()) is not None:
            claimed += 1
            await self._deliver(message)
        return claimed

    async def _deliver(self, message: dict[str, Any]) -> None:
        attempt = int(message["attempts"])
        if attempt > MAX_ATTEMPTS:  # only claims that expired (crashes) get here
            await self._give_up(message, "no attempt left (earlier claims expired)")
            return
        if utcnow() - aware(message["created"]) > MAX_AGE:
            await self._give_up(message, "too old to deliver")
            return
        try:
            token = await logout_token(self.keyring, message)
            await self._post(message["uri"], token)
        except (_Refused, aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:  # the client's doing
            reason = outbox.describe(exc)
            if attempt >= MAX_ATTEMPTS:
                await self._give_up(message, reason)
            else:
                await self._defer(message, reason)
            return
        except BaseException:  # shutdown, or ours (the database went away while signing): not an attempt
            await asyncio.shield(self.outbox.release(message))
            raise
        done = await self.outbox.finish(message, "delivered")
        BACKCHANNEL_LOGOUTS.labels(outcome="delivered").inc()
        if not done:
            log.warning("logout %s was delivered after its claim expired (it may be delivered again)", message["_id"])

    async def _post(self, uri: str, token: str) -> None:
        """§2.5: a form POST; no redirect is followed (a 3xx is a failure like any non-2xx)."""
        async with self.http().post(
            uri, data={"logout_token": token}, allow_redirects=False, headers={"Cache-Control": "no-store"}
        ) as response:
            if not 200 <= response.status < 300:
                raise _Refused(f"HTTP {response.status}")

    async def _defer(self, message: dict[str, Any], reason: str) -> None:
        attempt = int(message["attempts"])
        delay = outbox.backoff(FIRST_RETRY_SECONDS, attempt, MAX_RETRY_DELAY)
        await self.outbox.defer(message, delay, reason)
        BACKCHANNEL_LOGOUTS.labels(outcome="deferred").inc()
        log.info(
            "logout %s to client %s: attempt %d failed (%s); next in %.0f s",
            message["_id"],
            message["client_id"],
            attempt,
            reason,
            delay,
        )

    async def _give_up(self, message: dict[str, Any], reason: str) -> None:
        await self.outbox.give_up(message, reason)
        BACKCHANNEL_LOGOUTS.labels(outcome="failed").inc()
        log.warning(
            "logout %s to client %s given up after %d attempts: %s",
            message["_id"],
            message["client_id"],
            message["attempts"],
            reason,
        )


DELIVERER: web.AppKey[Deliverer] = web.AppKey("service.auth.backchannel.deliverer", Deliverer)


async def deliverer_ctx(app: web.Application) -> AsyncIterator[None]:
    """The auth domain's cleanup context (after the key ring's): this process's deliverer runs while the
    app does, polling for other processes' messages and for retries as often as the mail sender does
    (MAIL_POLL_SECONDS), but not more than every MIN_POLL_SECONDS: the first retry waits 30 s anyway."""
    poll_seconds = max(app[SETTINGS].mail_poll_seconds, MIN_POLL_SECONDS)
    deliverer = Deliverer(app[MONGO].db, app[KEYRING], poll_seconds)
    app[DELIVERER] = deliverer
    deliverer.start()
    yield
    await deliverer.stop()
