"""The sign-in page's second step: after a right password, a code (TOTP or recovery code) for accounts with
a second factor.

The first step's result is carried to the second by a pending sign-in: a random value in the page's form,
stored only as its digest, short-lived (PENDING_TTL), bound to the authorization request it was made for
and to the user's token generation (a password change in between voids it), and used up by the sign-in it
completes. The password never travels again; a wrong code leaves the pending sign-in for another try, and
spends the user's sign-in budget (users.mfa).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol, TypedDict, cast

import orjson
from bson import ObjectId
from pymongo import IndexModel

from service.auth.repository import is_current
from service.context import Context
from service.crypto import hash_secret, new_token
from service.db import Database, utcnow
from service.users import mfa
from service.users import repository as users_repository
from service.users.repository import UserDocument

PENDING_TTL = 300  # seconds to type the code in
PASSWORD = ("pwd",)  # RFC 8176 authentication method references
PASSWORD_AND_OTP = ("pwd", "otp")
INDEXES: dict[str, list[IndexModel]] = {"oauth2_pending_signins": [IndexModel("expires_at", expireAfterSeconds=0)]}


class PendingSignIn(TypedDict):
    _id: str  # the digest of the value in the form
    user_id: ObjectId
    generation: int  # the user's token_generation at the password step
    request: str  # the digest of the authorization request it belongs to
    expires_at: datetime


class SignInRequest(Protocol):
    """What a pending sign-in is bound to: an authorization request, or a device authorization (its form
    fields name it; `client` is the client that asks)."""

    @property
    def client(self) -> Mapping[str, Any]: ...

    def as_form(self) -> dict[str, str]: ...


class StartAgain(Exception):
    """The pending sign-in is unknown, expired, used, for another request, or its user changed: the page
    asks for the password again (the message says so)."""


def required(user: Mapping[str, Any]) -> bool:
    """This user's sign-ins need a second step."""
    return mfa.is_active(user)


def _request_digest(request: SignInRequest) -> str:
    return hash_secret(orjson.dumps(request.as_form(), option=orjson.OPT_SORT_KEYS).decode())


async def _insert(db: Database, document: PendingSignIn) -> None:
    await db.oauth2_pending_signins.insert_one(cast(dict[str, Any], document))


async def _find(db: Database, digest: str) -> PendingSignIn | None:
    found = await db.oauth2_pending_signins.find_one({"_id": digest, "expires_at": {"$gt": utcnow()}})
    return cast(PendingSignIn | None, found)


async def _use(db: Database, digest: str) -> bool:
    """Use the pending sign-in up; True for the one caller that does."""
    result = await db.oauth2_pending_signins.delete_one({"_id": digest, "expires_at": {"$gt": utcnow()}})
    return result.deleted_count == 1


async def start(ctx: Context, request: SignInRequest, user: UserDocument) -> str:
    """After a right password: the opaque value the code form carries to `finish`."""
    value = new_token()
    await _insert(
        ctx.db,
        {
            "_id": hash_secret(value),
            "user_id": user["_id"],
            "generation": user.get("token_generation", 0),
            "request": _request_digest(request),
            "expires_at": utcnow() + timedelta(seconds=PENDING_TTL),
        },
    )
    return value


async def finish(ctx: Context, request: SignInRequest, value: str, code: str) -> UserDocument | None:
    """The user the pending sign-in `value` is for, once `code` is right (and used up); None for a wrong
    code (the form may try again). StartAgain when the pending sign-in cannot be used; 429 from the
    user's sign-in budget."""
    digest = hash_secret(value)
    pending = await _find(ctx.db, digest)
    if pending is None or not hmac.compare_digest(pending["request"], _request_digest(request)):
        raise StartAgain("The sign-in has expired; enter your username and password again.")
    user = await users_repository.get_user(ctx.db, pending["user_id"])
    if user is None or not is_current(pending, user) or not required(user):
        raise StartAgain("The account changed meanwhile; enter your username and password again.")
    if not await mfa.check_second_factor(ctx, user, code, request.client["_id"]):
        return None
    if not await _use(ctx.db, digest):  # another tab finished this sign-in first
        raise StartAgain("The sign-in has expired; enter your username and password again.")
    return user
