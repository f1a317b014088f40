"""Sign-in sessions at the authorization server: what lets a signed-in user skip the password form
(single sign-on), and what logout ends (OpenID Connect Core 1.0 §3.1.2.3, RP-Initiated and Back-Channel
Logout 1.0).

The browser holds a random value in an `HttpOnly`, `SameSite=Lax` cookie (`__Host-` and `Secure` when the
issuer is https); MongoDB holds only its digest, so a copy of the database signs no one in and a cookie is
useless without its record. A session is valid while its idle and absolute expiries lie ahead, its user
is active and its user's token generation is the one it was made under: a password change or reset and a
deactivation end every session at once, without a write here (the `TOKENS_REVOKED` hook deletes them
too, and tells the clients). Every sign-in makes a new value (no fixation); the public `sid` (in ID
tokens and logout tokens) stays while the same user signs in again in the same browser.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, TypedDict, cast

from aiohttp import web
from bson import ObjectId
from pymongo import IndexModel

from service.auth import backchannel
from service.auth.repository import is_current
from service.context import Context
from service.crypto import hash_secret, new_token
from service.db import utcnow
from service.users import repository as users_repository
from service.users.repository import UserDocument

INDEXES: dict[str, list[IndexModel]] = {
    # idle_expires_at never lies past expires_at, so one TTL index removes both kinds of expired session
    "sessions": [IndexModel("idle_expires_at", expireAfterSeconds=0), IndexModel([("user_id", 1), ("sid", 1)])]
}
COOKIE_VALUE = re.compile(r"[A-Za-z0-9_-]{43}")  # what new_token() makes; anything else is not looked up
TOUCH_EVERY = timedelta(minutes=1)  # last_seen and the idle expiry move at most this often (one write)


class SessionDocument(TypedDict):
    _id: str  # the digest of the cookie's value
    sid: str  # the public id: ID tokens' and logout tokens' `sid`, the sessions API's `id`
    user_id: ObjectId
    generation: int  # the user's token_generation at sign-in
    auth_time: int  # Unix time of the last sign-in with a password
    amr: list[str]  # how (RFC 8176)
    clients: list[str]  # the clients it signed in to (back-channel logout tells them)
    created: datetime
    last_seen: datetime
    idle_expires_at: datetime
    expires_at: datetime
    user_agent: str
    address: str


def cookie_name(ctx: Context) -> str:
    """`__Host-` binds the cookie to this host, https and path `/` (RFC 6265bis); plain http cannot have it."""
    return "__Host-session" if _secure(ctx) else "session"


def _secure(ctx: Context) -> bool:
    return ctx.issuer.startswith("https://")


def _cookie_value(request: web.Request, ctx: Context) -> str | None:
    value = request.cookies.get(cookie_name(ctx), "")
    return value if COOKIE_VALUE.fullmatch(value) else None


async def signed_in(ctx: Context, request: web.Request) -> tuple[SessionDocument, UserDocument] | None:
    """The browser's live session and its user, or None (no cookie, a forged or expired one, a user who
    changed their password or was deactivated since). Marks the session used (at most once a minute)."""
    value = _cookie_value(request, ctx)
    if value is None:
        return None
    now = utcnow()
    found = await ctx.db.sessions.find_one({"_id": hash_secret(value), "idle_expires_at": {"$gt": now}})
    if found is None:
        return None
    session = cast(SessionDocument, found)
    user = await users_repository.get_user(ctx.db, session["user_id"])
    if user is None or not is_current(session, user):
        return None
    if now - session["last_seen"] >= TOUCH_EVERY:
        idle = min(now + timedelta(seconds=ctx.settings.session_idle_ttl), session["expires_at"])
        await ctx.db.sessions.update_one({"_id": session["_id"]}, {"$set": {"last_seen": now, "idle_expires_at": idle}})
    return session, user


async def start(
    ctx: Context, request: web.Request, user: UserDocument, amr: tuple[str, ...]
) -> tuple[str, SessionDocument]:
    """A session for a sign-in that just happened: a new cookie value every time (no fixation). The
    browser's previous session ends; if it was this user's, its `sid` and clients carry over (their
    relying parties keep a valid `sid`), else its clients are told it ended."""
    previous = await _replaced(ctx, request)
    now = utcnow()
    same_user = previous is not None and previous["user_id"] == user["_id"]
    expires = now + timedelta(seconds=ctx.settings.session_max_ttl)
    value = new_token()
    session: SessionDocument = {
        "_id": hash_secret(value),
        "sid": previous["sid"] if previous and same_user else secrets.token_urlsafe(16),
        "user_id": user["_id"],
        "generation": user.get("token_generation", 0),
        "auth_time": int(now.timestamp()),
        "amr": list(amr),
        "clients": list(previous["clients"]) if previous and same_user else [],
        "created": previous["created"] if previous and same_user else now,
        "last_seen": now,
        "idle_expires_at": min(now + timedelta(seconds=ctx.settings.session_idle_ttl), expires),
        "expires_at": expires,
        "user_agent": request.headers.get("User-Agent", "")[:256],
        "address": request.remote or "",
    }
    await ctx.db.sessions.insert_one(cast(dict[str, Any], session))
    if previous is not None and not same_user:
        await backchannel.enqueue(ctx, [previous])
    return value, session


async def _replaced(ctx: Context, request: web.Request) -> SessionDocument | None:
    value = _cookie_value(request, ctx)
    if value is None:
        return None
    found = await ctx.db.sessions.find_one_and_delete({"_id": hash_secret(value)})
    return cast(SessionDocument | None, found)


def set_cookie(ctx: Context, response: web.StreamResponse, value: str) -> None:
    """The session cookie: sent on top-level navigations from relying parties (Lax), never to scripts."""
    response.set_cookie(
        cookie_name(ctx),
        value,
        max_age=ctx.settings.session_max_ttl,
        path="/",
        secure=_secure(ctx),
        httponly=True,
        samesite="Lax",
    )


def clear_cookie(ctx: Context, response: web.StreamResponse) -> None:
    response.del_cookie(cookie_name(ctx), path="/", secure=_secure(ctx), httponly=True, samesite="Lax")


async def signed_in_to(ctx: Context, session: SessionDocument, client_id: str) -> None:
    """Record that the session signed in to this client (the clients back-channel logout tells)."""
    if client_id not in session["clients"]:
        await ctx.db.sessions.update_one({"_id": session["_id"]}, {"$addToSet": {"clients": client_id}})


async def end(ctx: Context, session: Mapping[str, Any]) -> bool:
    """End one session (logout); its clients are told by back-channel logout. False if already ended."""
    ended = await ctx.db.sessions.find_one_and_delete({"_id": session["_id"]})
    if ended is None:
        return False
    await backchannel.enqueue(ctx, [ended])
    return True


async def end_for_user(ctx: Context, user_id: Any, sid: str | None = None) -> int:
    """End the user's sessions (one `sid`, or all: a password change, a reset, a deactivation)."""
    query: dict[str, Any] = {"user_id": user_id, **({"sid": sid} if sid is not None else {})}
    found = await ctx.db.sessions.find(query).to_list(None)
    ended = [doc for doc in found if (await ctx.db.sessions.delete_one({"_id": doc["_id"]})).deleted_count]
    if ended:
        await backchannel.enqueue(ctx, ended)
    return len(ended)


async def list_for_user(ctx: Context, user_id: Any) -> list[SessionDocument]:
    """The user's live sessions, newest first."""
    now = utcnow()
    found = ctx.db.sessions.find({"user_id": user_id, "idle_expires_at": {"$gt": now}}).sort("created", -1)
    return cast(list[SessionDocument], await found.to_list(None))


async def current(ctx: Context, request: web.Request, token_id: str) -> str | None:
    """The `sid` of the session a call comes from: the one its token was issued under (authorization
    code grant), else the browser's own (the cookie reaches same-site calls)."""
    token = await ctx.db.oauth2_tokens.find_one({"_id": token_id}, {"sid": 1})
    if token and token.get("sid"):
        return str(token["sid"])
    value = _cookie_value(request, ctx)
    found = await ctx.db.sessions.find_one({"_id": hash_secret(value)}, {"sid": 1}) if value else None
    return str(found["sid"]) if found else None
