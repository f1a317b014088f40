"""The `users` and `login_attempts` collections: every query and update, and their indexes.

Usernames and emails are unique case-insensitively through unique indexes on lower-cased copies
(`username_key`, `email_key`), so two concurrent sign-ups cannot both win.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, NotRequired, TypedDict, cast

from bson import ObjectId
from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.errors import DuplicateKeyError

from service.db import Database, aware, utcnow
from service.errors import Conflict
from service.pagination import Cursors, Page, PageRequest, fetch_page

INDEXES: dict[str, list[IndexModel]] = {
    "users": [
        IndexModel("username_key", unique=True),
        IndexModel("email_key", unique=True),
        IndexModel([("created", ASCENDING), ("_id", ASCENDING)]),
    ],
    "login_attempts": [IndexModel("expires_at", expireAfterSeconds=0)],
}


class MfaDocument(TypedDict):
    """A user's second factor (users.mfa): a TOTP secret, encrypted, and recovery code digests."""

    secret: str  # the base32 TOTP secret, Fernet-encrypted with DATA_ENCRYPTION_KEY
    active: bool  # False until a code from the secret confirms the enrollment
    last_step: int  # the latest time step whose code was accepted (a code is accepted once)
    recovery_codes: list[str]  # SHA-256 digests of the unused ones
    enrolled: datetime
    confirmed: NotRequired[datetime]


class UserDocument(TypedDict):
    """A stored user, as this module writes it."""

    _id: ObjectId
    username: str
    username_key: str
    email: str
    email_key: str
    password_hash: str
    first_name: str
    middle_name: str
    last_name: str
    is_active: bool
    is_regular_user: bool
    is_admin: bool
    created: datetime
    updated: datetime
    version: int
    token_generation: NotRequired[int]  # absent until the first revocation
    email_verified: NotRequired[bool]  # absent (users from before verification existed): false
    mfa: NotRequired[MfaDocument]  # absent without a second factor


def _conflict(exc: DuplicateKeyError) -> Conflict:
    field = "email" if "email_key" in str(exc) else "username"
    return Conflict(f"A user with this {field} already exists.")


def new_user_document(
    *, username: str, email: str, password_hash: str, names: dict[str, str], roles: dict[str, bool]
) -> UserDocument:
    now = utcnow()
    return {
        "_id": ObjectId(),
        "username": username,
        "username_key": username.lower(),
        "email": email,
        "email_key": email.lower(),
        "email_verified": False,
        "password_hash": password_hash,
        "first_name": names.get("first_name", ""),
        "middle_name": names.get("middle_name", ""),
        "last_name": names.get("last_name", ""),
        "is_active": roles.get("is_active", True),
        "is_regular_user": roles.get("is_regular_user", True),
        "is_admin": roles.get("is_admin", False),
        "created": now,
        "updated": now,
        "version": 1,
    }


async def existing_conflict(db: Database, username: str, email: str) -> Conflict | None:
    """The 409 a new user with this username or email would get, read before any work is spent on it
    (a password hash); the unique indexes still decide when two sign-ups race."""
    found = await db.users.find_one(
        {"$or": [{"username_key": username.lower()}, {"email_key": email.lower()}]}, projection={"username_key": 1}
    )
    if found is None:
        return None
    return Conflict(
        f"A user with this {'username' if found['username_key'] == username.lower() else 'email'} already exists."
    )


async def insert_user(db: Database, document: UserDocument) -> UserDocument:
    try:
        await db.users.insert_one(cast(dict[str, Any], document))
    except DuplicateKeyError as exc:
        raise _conflict(exc) from None
    return document


async def get_user(db: Database, user_id: ObjectId) -> UserDocument | None:
    return cast(UserDocument | None, await db.users.find_one({"_id": user_id}))


async def get_user_by_username(db: Database, username: str) -> UserDocument | None:
    return cast(UserDocument | None, await db.users.find_one({"username_key": username.lower()}))


async def get_users_by_ids(db: Database, user_ids: list[ObjectId]) -> dict[ObjectId, UserDocument]:
    found = cast(list[UserDocument], await db.users.find({"_id": {"$in": user_ids}}).to_list(None))
    return {user["_id"]: user for user in found}


async def list_users(db: Database, request: PageRequest, cursors: Cursors) -> Page:
    return await fetch_page(db, "users", {}, request, cursors, "users")


async def update_user(
    db: Database, user_id: ObjectId, version: int | None, changes: dict[str, Any], *, revoke_tokens: bool = False
) -> UserDocument | None:
    """Apply `changes` only if the stored version is still `version` (any when None: a blind write);
    None when it moved on or vanished.

    `revoke_tokens` bumps `token_generation` in the same write, which invalidates every token and code
    issued before it at once: no window where the password changed but old tokens still work."""
    changes = dict(changes)
    increments = {"version": 1, **({"token_generation": 1} if revoke_tokens else {})}  # nosec B105
    if "email" in changes:
        changes["email_key"] = changes["email"].lower()
    changes["updated"] = utcnow()
    try:
        updated = await db.users.find_one_and_update(
            {"_id": user_id} if version is None else {"_id": user_id, "version": version},
            {"$set": changes, "$inc": increments},
            return_document=ReturnDocument.AFTER,
        )
    except DuplicateKeyError as exc:
        raise _conflict(exc) from None
    return cast(UserDocument | None, updated)


async def set_password_hash(db: Database, user_id: ObjectId, password_hash: str) -> None:
    """Store a re-hashed password (same password, new parameters); not a user-visible change."""
    await db.users.update_one({"_id": user_id}, {"$set": {"password_hash": password_hash}})


async def count_users(db: Database) -> int:
    return await db.users.count_documents({})


# --- login throttling ------------------------------------------------------------------------


async def reserve_login_attempt(db: Database, key: str, limit: int, window: int) -> tuple[bool, datetime]:
    """Take one of the `limit` password checks `key` may fail per `window` seconds, before hashing.

    Returns (True, when the attempt's window ends) when an attempt was reserved, else (False, when the
    window reopens). Each step is one atomic conditional write, so no number of concurrent requests (in
    any number of processes sharing the database) gets more than `limit` checks in a window: the count
    is taken before the check runs, not after it fails."""
    for _ in range(3):
        now = utcnow()
        cutoff = now - timedelta(seconds=window)
        try:  # a live window below the limit counts one more; no document at all starts a window
            taken = await db.login_attempts.find_one_and_update(
                {"_id": key, "window_start": {"$gt": cutoff}, "failures": {"$lt": limit}},
                {
                    "$inc": {"failures": 1},
                    "$setOnInsert": {"window_start": now, "expires_at": now + timedelta(seconds=window)},
                },
                projection={"window_start": 1},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
            if taken is not None:  # (None only when a concurrent upsert raced this one: look again)
                return True, aware(taken["window_start"]) + timedelta(seconds=window)
        except DuplicateKeyError:
            pass  # the document exists but did not match: its window has passed, or it is at the limit
        fresh = {"window_start": now, "failures": 1, "expires_at": now + timedelta(seconds=window)}
        renewed = await db.login_attempts.update_one({"_id": key, "window_start": {"$lte": cutoff}}, {"$set": fresh})
        if renewed.matched_count:
            return True, now + timedelta(seconds=window)
        current = await db.login_attempts.find_one({"_id": key})
        if current is not None and current["failures"] >= limit and aware(current["window_start"]) > cutoff:
            return False, aware(current["window_start"]) + timedelta(seconds=window)
    return False, utcnow() + timedelta(seconds=window)  # the document keeps changing under us: refuse, safely


async def release_login_attempt(db: Database, key: str) -> None:
    """Give back a reserved attempt whose password was right: only failures count."""
    await db.login_attempts.update_one({"_id": key, "failures": {"$gt": 0}}, {"$inc": {"failures": -1}})
