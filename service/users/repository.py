"""The `users` collection: every query and update, and its indexes.

Usernames and emails are unique case-insensitively through unique indexes on lower-cased copies
(`username_key`, `email_key`), so two concurrent sign-ups cannot both win.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NotRequired, TypedDict, cast

from bson import ObjectId
from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.errors import DuplicateKeyError

from service.db import Database, utcnow
from service.errors import Conflict
from service.pagination import Cursors, Page, PageRequest, fetch_page

INDEXES: dict[str, list[IndexModel]] = {
    "users": [
        IndexModel("username_key", unique=True),
        IndexModel("email_key", unique=True),
        IndexModel([("created", ASCENDING), ("_id", ASCENDING)]),
    ],
}


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
