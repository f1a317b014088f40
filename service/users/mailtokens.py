"""The `mail_tokens` collection (the secrets behind verification and reset links), the per-hour mail
counters, and the user-document writes those links make: every query of the mail flows.

A token is 32 random bytes (`crypto.new_token`); only its SHA-256 digest is stored, as the document's
`_id`, so a lookup is one indexed read and a use is one conditional delete (`consume`): two requests
with one token cannot both win. Expired documents go with the TTL index; until then the `expires_at`
condition in `consume` refuses them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Literal, TypedDict, cast

from bson import ObjectId
from pymongo import ASCENDING, IndexModel

from service.crypto import hash_secret, new_token
from service.db import Database, utcnow
from service.errors import TooManyRequests
from service.users import repository

Purpose = Literal["verify", "reset"]
TOKEN_BYTES = 32
HOUR = 3600

INDEXES: dict[str, list[IndexModel]] = {
    "mail_tokens": [
        IndexModel("expires_at", expireAfterSeconds=0),
        IndexModel([("user_id", ASCENDING), ("purpose", ASCENDING)]),
    ]
}


class MailToken(TypedDict):
    """A stored link secret: its digest, what it may do, for whom, and the state it was issued against."""

    _id: str  # SHA-256 of the token
    purpose: Purpose
    user_id: ObjectId
    email_key: str  # the address the mail went to, lower-cased: the link is void once it changes
    generation: int  # the user's token_generation when issued: any password change voids a reset link
    created: datetime
    expires_at: datetime


def new_document(purpose: Purpose, user: Mapping[str, Any], ttl: int) -> tuple[str, MailToken]:
    """A fresh token for `user`'s current address and the document that stores its digest."""
    token, now = new_token(TOKEN_BYTES), utcnow()
    document: MailToken = {
        "_id": hash_secret(token),
        "purpose": purpose,
        "user_id": user["_id"],
        "email_key": user["email"].lower(),
        "generation": int(user.get("token_generation", 0)),
        "created": now,
        "expires_at": now + timedelta(seconds=ttl),
    }
    return token, document


async def insert(db: Database, document: MailToken) -> None:
    await db.mail_tokens.insert_one(cast(dict[str, Any], document))


async def void(db: Database, user_id: ObjectId, purpose: Purpose) -> None:
    """Every unused `purpose` token of the user stops working (a newer mail, a password change)."""
    await db.mail_tokens.delete_many({"user_id": user_id, "purpose": purpose})


def decoy_user(email: str) -> dict[str, Any]:
    """The stand-in account of an address without an active account, for the mail flows that must cost
    the same either way (reset, the resend page): its id is the same for every request for the address,
    so a newer request's writes meet the older's, as they would a real account's; 12 bytes of a digest,
    which an ObjectId the server makes equals only by a 2**-96 chance. No account has it, so a token
    stored under it can change nothing."""
    user_id = ObjectId(hashlib.sha256(b"decoy:" + email.lower().encode()).digest()[:12])
    return {"_id": user_id, "email": email, "username": email}


async def is_live(db: Database, token: str, purpose: Purpose) -> bool:
    """Whether `token` would be accepted now (a read: it stays usable)."""
    query = {"_id": hash_secret(token), "purpose": purpose, "expires_at": {"$gt": utcnow()}}
    return await db.mail_tokens.find_one(query, projection={"_id": 1}) is not None


async def consume(db: Database, token: str, purpose: Purpose) -> MailToken | None:
    """Use `token` once: the live document it names, deleted in the same write; None when it is unknown,
    used, expired or for another purpose."""
    found = await db.mail_tokens.find_one_and_delete(
        {"_id": hash_secret(token), "purpose": purpose, "expires_at": {"$gt": utcnow()}}
    )
    return cast(MailToken | None, found)


async def reserve_mail(db: Database, key: str, limit: int, detail: str) -> None:
    """One of `limit` sends an hour for `key`, taken atomically across processes (the counter of the
    sign-in throttle, under keys no username can take: they hold a colon); TooManyRequests with
    `detail` and the time the window reopens beyond it."""
    reserved, window_end = await repository.reserve_login_attempt(db, f"mail:{key}", limit, HOUR)
    if not reserved:
        raise TooManyRequests(detail, retry_after=int((window_end - utcnow()).total_seconds()) + 1)


# --- the user-document writes of the links ------------------------------------------------------


async def user_by_email(db: Database, email: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = await db.users.find_one({"email_key": email.lower()})
    return found


async def mark_verified(db: Database, token: MailToken) -> dict[str, Any] | None:
    """`email_verified` true, if the user still has the address the link was mailed to."""
    found = await db.users.find_one_and_update(
        {"_id": token["user_id"], "email_key": token["email_key"]},
        {"$set": {"email_verified": True, "updated": utcnow()}, "$inc": {"version": 1}},
        projection={"_id": 1},
    )
    return cast(dict[str, Any] | None, found)


async def reset_password(db: Database, token: MailToken, password_hash: str) -> dict[str, Any] | None:
    """The new password, if the account is active, still has the address the link went to, and has not
    changed its password (or been deactivated) since: one conditional write that also bumps
    `token_generation`, so every token issued before it stops working at once. The link proved the
    address, so it is verified too."""
    generation: Any = {"$in": [0, None]} if token["generation"] == 0 else token["generation"]
    found = await db.users.find_one_and_update(
        {"_id": token["user_id"], "email_key": token["email_key"], "is_active": True, "token_generation": generation},
        {
            "$set": {"password_hash": password_hash, "email_verified": True, "updated": utcnow()},
            "$inc": {"version": 1, "token_generation": 1},  # nosec B105 - counters, not a password
        },
        projection={"_id": 1},
    )
    return cast(dict[str, Any] | None, found)
