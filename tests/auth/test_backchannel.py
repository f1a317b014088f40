"""Back-Channel Logout 1.0 delivery: real HTTP receivers (aiohttp test servers on loopback ports) get
signed logout tokens that verify against the server's JWKS, once; a receiver that is away gets it when it
returns; one that keeps failing is given up on after MAX_ATTEMPTS. Time passes by moving the outbox's
`next_attempt_at`, never by sleeping."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, unused_port
from bson import ObjectId
from prometheus_client import REGISTRY
from pymongo.errors import ServerSelectionTimeoutError

from service.app import create_app
from service.auth import backchannel
from service.auth.backchannel import DELIVERER, EVENT, MAX_ATTEMPTS, Deliverer
from service.auth.jose import JsonWebKey, jwt
from service.auth.signing import KEYRING
from service.config import Settings
from service.context import Context
from service.db import aware, utcnow
from tests.helpers import jwt_claims

CLIENTS = "/api/v1/auth/oauth2_clients/"


class Receiver:
    """A relying party's back-channel logout endpoint: records every POST and answers `status`."""

    def __init__(self) -> None:
        self.port = unused_port()
        self.uri = f"http://127.0.0.1:{self.port}/logout"
        self.status = 200
        self.delay = 0.0
        self.hold: asyncio.Event | None = None  # set: every answer waits for it
        self.posts: list[dict[str, Any]] = []
        self.redirected: list[str] = []
        self._server: TestServer | None = None

    async def logout(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.posts.append({"content_type": request.content_type, "form": dict(form), "cookies": dict(request.cookies)})
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.hold is not None:
            await self.hold.wait()
        if self.status in (302, 307):
            raise web.HTTPTemporaryRedirect("/elsewhere") if self.status == 307 else web.HTTPFound("/elsewhere")
        return web.Response(status=self.status, headers={"Set-Cookie": "rp=1; Path=/"})

    async def elsewhere(self, request: web.Request) -> web.Response:
        self.redirected.append(request.method)
        return web.Response()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/logout", self.logout)
        app.router.add_route("*", "/elsewhere", self.elsewhere)
        self._server = TestServer(app, host="127.0.0.1", port=self.port)
        await self._server.start_server()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.close()
            self._server = None

    @property
    def tokens(self) -> list[str]:
        return [str(post["form"]["logout_token"]) for post in self.posts]

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[str]:
        for _ in range(int(timeout / 0.02)):
            if len(self.posts) >= count:
                return self.tokens
            await asyncio.sleep(0.02)
        raise AssertionError(f"{len(self.posts)} of {count} logout tokens arrived")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A receiver that is up; tests that want it away call `stop()` first."""
    found = Receiver()
    await found.start()
    yield found
    await found.stop()


@pytest.fixture
async def deliverer(client: TestClient, db) -> AsyncIterator[Deliverer]:
    """A deliverer the test drives itself (`drain`); the app's own is stopped so it takes nothing."""
    await client.app[DELIVERER].stop()
    driven = Deliverer(db, client.app[KEYRING], 60.0)
    yield driven
    await driven.close()


def context_of(client: TestClient) -> Context:
    return Context.of_app(client.app, str(client.make_url("")).rstrip("/"))


def counted(outcome: str) -> float:
    return REGISTRY.get_sample_value("backchannel_logout_total", {"outcome": outcome}) or 0.0


async def register(client: TestClient, headers: dict[str, str], uri: str | None) -> str:
    """A client of the user's, with `uri` as its back-channel logout URI (or none)."""
    body: dict[str, Any] = {"client_type": "confidential", "allowed_scopes": ["users:read"]}
    if uri is not None:
        body["backchannel_logout_uri"] = uri
    response = await client.post(CLIENTS, json=body, headers=headers)
    assert response.status == 201, await response.text()
    return str((await response.json())["client_id"])


async def user_id(db, username: str = "user") -> ObjectId:
    user = await db.users.find_one({"username": username})
    assert user is not None
    return ObjectId(user["_id"])


def session(user: ObjectId, *clients: str) -> dict[str, Any]:
    """The fields of an ended sign-in session that back-channel logout reads."""
    return {"_id": secrets.token_hex(16), "sid": secrets.token_urlsafe(16), "user_id": user, "clients": list(clients)}


async def make_due(db) -> None:
    """Time passes: every queued message's next attempt is now."""
    await db.logout_outbox.update_many(
        {"state": "queued"}, {"$set": {"next_attempt_at": utcnow() - timedelta(seconds=1)}}
    )


async def verified(client: TestClient, token: str, client_id: str) -> Any:
    """The logout token checked as a relying party checks it (§2.6): signature by a key of the JWKS,
    `iss`, `aud`, `iat`, `exp`."""
    jwks = await (await client.get("/auth/oauth2/jwks")).json()
    issuer = context_of(client).issuer
    options = {"iss": {"essential": True, "value": issuer}, "aud": {"essential": True, "value": client_id}}
    claims = jwt.decode(token, JsonWebKey.import_key_set(jwks), claims_options=options)
    claims.validate()
    assert claims.header["kid"] in {key["kid"] for key in jwks["keys"]}
    return claims


async def test_a_logout_token_is_delivered_and_verifies_against_the_jwks(
    client: TestClient, db, bearer, receiver: Receiver
) -> None:
    headers = await bearer("user")
    client_id = await register(client, headers, receiver.uri)
    ended = session(await user_id(db), client_id)
    delivered_before = counted("delivered")

    assert await backchannel.enqueue(context_of(client), [ended]) == 1  # the app's deliverer wakes at once
    [token] = await receiver.wait_for(1)

    assert receiver.posts[0]["content_type"] == "application/x-www-form-urlencoded"
    assert set(receiver.posts[0]["form"]) == {"logout_token"}
    claims = await verified(client, token, client_id)
    assert claims.header["typ"] == "logout+jwt"
    assert claims.header["alg"] == "RS256"
    assert set(claims) == {"iss", "aud", "iat", "exp", "jti", "sid", "sub", "events"}  # never a nonce
    assert claims["sub"] == str(ended["user_id"])
    assert claims["sid"] == ended["sid"]
    assert claims["events"] == {EVENT: {}}
    assert claims["exp"] - claims["iat"] == 120
    assert len(claims["jti"]) >= 16
    for _ in range(100):  # the outbox records the outcome just after the answer
        stored = await db.logout_outbox.find_one({"client_id": client_id})
        if stored["state"] == "delivered":
            break
        await asyncio.sleep(0.02)
    assert stored["state"] == "delivered"
    assert stored["attempts"] == 1
    assert stored["uri"] == receiver.uri
    assert aware(stored["expires_at"]) - aware(stored["delivered_at"]) == backchannel.KEEP_DONE
    assert counted("delivered") == delivered_before + 1


async def test_only_clients_with_a_logout_uri_get_a_message(
    client: TestClient, db, bearer, deliverer: Deliverer, receiver: Receiver
) -> None:
    headers = await bearer("user")
    listening = await register(client, headers, receiver.uri)
    silent = await register(client, headers, None)
    user = await user_id(db)
    ctx = context_of(client)
    assert await backchannel.enqueue(ctx, []) == 0
    assert await backchannel.enqueue(ctx, [session(user, silent, "documentation", "no-such-client")]) == 0
    assert await db.logout_outbox.count_documents({}) == 0

    one, two = session(user, silent, listening, listening), session(user, listening)
    assert await backchannel.enqueue(ctx, [one, two]) == 2  # once per session and client
    stored = await db.logout_outbox.find({}).to_list(None)
    assert {(message["sid"], message["client_id"]) for message in stored} == {
        (one["sid"], listening),
        (two["sid"], listening),
    }
    for message in stored:
        assert (message["iss"], message["sub"], message["uri"]) == (ctx.issuer, str(user), receiver.uri)
        assert (message["state"], message["attempts"]) == ("queued", 0)
    assert await deliverer.drain() == 2
    assert sorted(jwt_claims(token)["sid"] for token in receiver.tokens) == sorted([one["sid"], two["sid"]])


async def test_a_receiver_that_is_down_gets_the_logout_when_it_comes_back(
    client: TestClient, db, bearer, deliverer: Deliverer, receiver: Receiver
) -> None:
    client_id = await register(client, await bearer("user"), receiver.uri)
    await receiver.stop()  # the port is closed: connection refused
    deferred_before = counted("deferred")
    ended = session(await user_id(db), client_id)
    await backchannel.enqueue(context_of(client), [ended])

    assert await deliverer.drain() == 1
    stored = await db.logout_outbox.find_one({})
    assert (stored["state"], stored["attempts"]) == ("queued", 1)
    assert "Connect" in stored["last_error"]
    wait = (aware(stored["next_attempt_at"]) - utcnow()).total_seconds()
    assert 0.75 * 30 - 1 <= wait <= 1.25 * 30  # the first retry: 30 s, jittered
    assert counted("deferred") == deferred_before + 1
    assert await deliverer.drain() == 0  # not due yet

    await receiver.start()
    await make_due(db)
    assert await deliverer.drain() == 1
    [token] = receiver.tokens
    claims = await verified(client, token, client_id)
    assert claims["sid"] == ended["sid"]
    stored = await db.logout_outbox.find_one({})
    assert (stored["state"], stored["attempts"]) == ("delivered", 2)
    assert "last_error" not in stored


async def test_a_receiver_that_keeps_failing_is_retried_with_backoff_then_given_up(
    client: TestClient, db, bearer, deliverer: Deliverer, receiver: Receiver
) -> None:
    receiver.status = 500
    client_id = await register(client, await bearer("user"), receiver.uri)
    failed_before = counted("failed")
    await backchannel.enqueue(context_of(client), [session(await user_id(db), client_id)])

    for attempt in range(1, MAX_ATTEMPTS):
        assert await deliverer.drain() == 1
        stored = await db.logout_outbox.find_one({})
        assert (stored["state"], stored["attempts"], stored["last_error"]) == ("queued", attempt, "_Refused: HTTP 500")
        delay = min(30 * 2 ** (attempt - 1), backchannel.MAX_RETRY_DELAY)
        wait = (aware(stored["next_attempt_at"]) - utcnow()).total_seconds()
        assert 0.75 * delay - 1 <= wait <= 1.25 * delay, (attempt, wait)
        await make_due(db)
    assert await deliverer.drain() == 1
    stored = await db.logout_outbox.find_one({})
    assert (stored["state"], stored["attempts"]) == ("failed", MAX_ATTEMPTS)
    assert aware(stored["expires_at"]) - aware(stored["failed_at"]) == backchannel.KEEP_DONE
    assert counted("failed") == failed_before + 1
    assert len(receiver.posts) == MAX_ATTEMPTS
    assert len({jwt_claims(token)["jti"] for token in receiver.tokens}) == MAX_ATTEMPTS  # signed at each attempt
    await make_due(db)
    assert await deliverer.drain() == 0  # a failed message is never tried again


@pytest.mark.parametrize("status", [302, 307])
async def test_a_redirect_is_not_followed(
    client: TestClient, db, bearer, deliverer: Deliverer, receiver: Receiver, status: int
) -> None:
    receiver.status = status
    client_id = await register(client, await bearer("user"), receiver.uri)
    await backchannel.enqueue(context_of(client), [session(await user_id(db), client_id)])
    assert await deliverer.drain() == 1
    assert len(receiver.posts) == 1
    assert receiver.redirected == []
    stored = await db.logout_outbox.find_one({})
    assert (stored["state"], stored["last_error"]) == ("queued", f"_Refused: HTTP {status}")


async def test_two_deliverers_never_deliver_one_message_twice(
    client: TestClient, db, bearer, deliverer: Deliverer, receiver: Receiver
) -> None:
    receiver.delay = 0.01  # deliveries overlap: both deliverers claim while the other is sending
    client_id = await register(client, await bearer("user"), receiver.uri)
    user = await user_id(db)
    ended = [session(user, client_id) for _ in range(30)]
    await backchannel.enqueue(context_of(client), ended)
    other = Deliverer(db, client.app[KEYRING], 60.0)
    try:
        first, second = await asyncio.gather(deliverer.drain(), other.drain())
    finally:
        await other.close()
    assert first + second == 30
    assert first > 0
    assert second > 0
    sids = [jwt_claims(token)["sid"] for token in receiver.tokens]
    assert sorted(sids) == sorted(item["sid"] for item in ended)
    assert await db.signing_keys.count_documents({}) <= 2  # each deliverer's first drain, at most
    states = [(m["state"], m["attempts"], m.get("last_error")) for m in await db.logout_outbox.find({}).to_list(None)]
    assert states == [("delivered", 1, None)] * 30


async def test_a_claim_whose_lease_expired_is_taken_over_and_a_stale_message_given_up(
    client: TestClient, db, bearer, deliverer: Deliverer, receiver: Receiver
) -> None:
    client_id = await register(client, await bearer("user"), receiver.uri)
    user = await user_id(db)
    orphan, stale = session(user, client_id), session(user, client_id)
    await backchannel.enqueue(context_of(client), [orphan, stale])
    now = utcnow()
    # A process died while sending `orphan`: its claim ran out. `stale` waited longer than MAX_AGE.
    await db.logout_outbox.update_one(
        {"sid": orphan["sid"]},
        {"$set": {"state": "sending", "attempts": 1, "claimed_until": now - timedelta(seconds=1)}},
    )
    await db.logout_outbox.update_one(
        {"sid": stale["sid"]}, {"$set": {"created": now - backchannel.MAX_AGE - timedelta(minutes=1)}}
    )
    assert await deliverer.drain() == 2
    assert [jwt_claims(token)["sid"] for token in receiver.tokens] == [orphan["sid"]]
    taken_over = await db.logout_outbox.find_one({"sid": orphan["sid"]})
    assert (taken_over["state"], taken_over["attempts"]) == ("delivered", 2)
    assert "claimed_until" not in taken_over
    given_up = await db.logout_outbox.find_one({"sid": stale["sid"]})
    assert (given_up["state"], given_up["last_error"]) == ("failed", "too old to deliver")


async def test_stopping_the_app_deliverer_stops_its_polling(client: TestClient, db, bearer, receiver: Receiver) -> None:
    """The app's deliverer runs as a cleanup context: stopped, it takes nothing more."""
    client_id = await register(client, await bearer("user"), receiver.uri)
    running = client.app[DELIVERER]
    await running.stop()
    await backchannel.enqueue(context_of(client), [session(await user_id(db), client_id)])
    await asyncio.sleep(0.2)
    assert receiver.posts == []
    assert (await db.logout_outbox.find_one({}))["state"] == "queued"


async def test_a_deliverer_stopping_mid_delivery_puts_the_message_back_uncounted(
    client: TestClient, db, bearer, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Deliverer, "stop_grace", 0.1)
    receiver.hold = asyncio.Event()  # the client never answers while the deliverer stops
    client_id = await register(client, await bearer("user"), receiver.uri)
    running = client.app[DELIVERER]
    await backchannel.enqueue(context_of(client), [session(await user_id(db), client_id)])
    await receiver.wait_for(1)
    await running.stop()
    receiver.hold.set()
    stored = await db.logout_outbox.find_one({})
    assert (stored["state"], stored["attempts"]) == ("queued", 0)
    assert aware(stored["next_attempt_at"]) <= utcnow()  # due again at once, for any process
    assert "claimed_until" not in stored


async def test_cookies_an_endpoint_sets_are_never_sent_back(
    client: TestClient, db, bearer, deliverer: Deliverer, receiver: Receiver
) -> None:
    client_id = await register(client, await bearer("user"), receiver.uri)
    user = await user_id(db)
    await backchannel.enqueue(context_of(client), [session(user, client_id)])
    assert await deliverer.drain() == 1
    await backchannel.enqueue(context_of(client), [session(user, client_id)])
    assert await deliverer.drain() == 1
    assert [post["cookies"] for post in receiver.posts] == [{}, {}]


async def test_an_idle_deliverer_polls_at_most_every_few_seconds(
    aiohttp_client, settings: Settings, mongo_client
) -> None:
    """Retries wait 30 s at least: a mail sender told to poll twenty times a second does not make this one."""
    app = create_app(dataclasses.replace(settings, mail_poll_seconds=0.05), mongo_client=mongo_client)
    await aiohttp_client(app)
    assert app[DELIVERER].poll_seconds == backchannel.MIN_POLL_SECONDS == 5.0
    slow = create_app(dataclasses.replace(settings, mail_poll_seconds=60.0), mongo_client=mongo_client)
    await aiohttp_client(slow)
    assert slow[DELIVERER].poll_seconds == 60.0


async def test_a_failure_of_the_server_puts_its_messages_back_without_counting_an_attempt(
    client: TestClient, db, bearer, deliverer: Deliverer, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    client_id = await register(client, await bearer("user"), receiver.uri)
    user = await user_id(db)
    await backchannel.enqueue(context_of(client), [session(user, client_id) for _ in range(3)])
    keyring, loads = client.app[KEYRING], 0
    working = keyring.signing_key

    async def away(fail_after: int) -> Any:
        nonlocal loads
        loads += 1
        if loads > fail_after:
            raise ServerSelectionTimeoutError("the database is away")
        return await working()

    monkeypatch.setattr(keyring, "signing_key", lambda: away(0))  # before any lane starts
    with pytest.raises(ServerSelectionTimeoutError):
        await deliverer.drain()
    stored = await db.logout_outbox.find({}).to_list(None)
    assert [(message["state"], message["attempts"]) for message in stored] == [("queued", 0)] * 3

    loads = 0
    monkeypatch.setattr(keyring, "signing_key", lambda: away(1))  # while the lanes sign
    with pytest.raises(ExceptionGroup) as failed:
        await deliverer.drain()
    assert {type(error) for error in failed.value.exceptions} == {ServerSelectionTimeoutError}
    stored = await db.logout_outbox.find({}).to_list(None)
    assert [(message["state"], message["attempts"]) for message in stored] == [("queued", 0)] * 3
    assert receiver.posts == []

    monkeypatch.setattr(keyring, "signing_key", working)
    assert await deliverer.drain() == 3
    assert len(receiver.posts) == 3
