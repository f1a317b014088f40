"""Remembered consent: which scopes each user granted each client, and the user's connected apps.

One document per (user, client) in `oauth2_consents`, behind a unique index on the pair: the
authorization page asks it one indexed read (`missing`), every issued code widens it with one upsert
(`remember`), and the connected apps API lists and forgets it. Forgetting a client also revokes, in one
write, every token it holds for the user (OpenID Connect Core 1.0 section 3.1.2.4: consent is the
user's to withdraw; RFC 7009 section 2.1: a revocation reaches the related tokens), and drops the
codes it was given but has not exchanged yet, so nothing the client holds for the user works after.

Clients an administrator marked `first_party` never ask (`missing` is always empty for them); they
are still remembered, so they appear among the user's connected apps and can be cut off the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, TypedDict, cast

from bson import ObjectId
from pymongo import ASCENDING, IndexModel
from pymongo.errors import DuplicateKeyError

from service.audit import trail as audit
from service.auth import principals
from service.auth.repository import ClientDocument
from service.caller import Principal
from service.context import Context
from service.db import utcnow
from service.errors import NotFound

COLLECTION = "oauth2_consents"
# The pair is the identity of a consent (unique: concurrent first sign-ins make one document); the
# user's list reads the same index by its prefix, in client_id order. A deleted client's consents go
# with it (repository.delete_client) by the client_id index: a client registered later under the same
# id (fixtures choose ids) must ask again.
BY_USER_AND_CLIENT = [("user_id", ASCENDING), ("client_id", ASCENDING)]
INDEXES: dict[str, list[IndexModel]] = {
    COLLECTION: [IndexModel(BY_USER_AND_CLIENT, unique=True), IndexModel("client_id")]
}


class ConsentDocument(TypedDict):
    _id: ObjectId
    user_id: ObjectId
    client_id: str
    scopes: list[str]  # every scope the user ever granted this client (a union)
    first_used: datetime
    last_used: datetime  # when the client was last given a code for the user


class ConnectedApp(TypedDict):
    client_id: str
    client_name: str | None
    scopes: list[str]
    first_used: datetime
    last_used: datetime


async def missing(ctx: Context, user_id: Any, client: ClientDocument, scopes: Iterable[str]) -> list[str]:
    """The scopes of `scopes` (in their order, once each) the user has not granted `client` yet: the
    ones the consent page must show. Always [] for a first-party client. One indexed read."""
    wanted = list(dict.fromkeys(scopes))
    if client.get("first_party") or not wanted:
        return []
    found = await ctx.db[COLLECTION].find_one({"user_id": user_id, "client_id": client["_id"]}, {"scopes": 1})
    granted = set(found["scopes"]) if found else set()
    return [scope for scope in wanted if scope not in granted]


async def remember(ctx: Context, user_id: Any, client_id: str, scopes: Iterable[str]) -> None:
    """Add `scopes` to what the user granted the client and note the use (called at every code issued,
    first-party clients included). One upsert; two first grants at once make one document (the loser
    of the unique index retries as an update)."""
    now = utcnow()
    update = {
        "$addToSet": {"scopes": {"$each": list(dict.fromkeys(scopes))}},
        "$setOnInsert": {"first_used": now},
        "$set": {"last_used": now},
    }
    query = {"user_id": user_id, "client_id": client_id}
    try:
        await ctx.db[COLLECTION].update_one(query, update, upsert=True)
    except DuplicateKeyError:
        await ctx.db[COLLECTION].update_one(query, update)


async def forget(ctx: Context, user_id: Any, client_id: str) -> bool:
    """Withdraw the client's access for the user: revoke every token it holds for them (one write; the
    principal cache here forgets them at once, other processes follow the change stream), drop its
    unexchanged codes, then the consent. True if there was a consent, a live token or a code to take away.

    Tokens go first: if anything fails half-way, the consent is still listed and a retry finishes."""
    revoked = await principals.revoke_grant(ctx.cache, ctx.db, user_id, client_id)
    codes = (await ctx.db.oauth2_codes.delete_many({"user_id": user_id, "client_id": client_id})).deleted_count
    deleted = (await ctx.db[COLLECTION].delete_one({"user_id": user_id, "client_id": client_id})).deleted_count
    if not (deleted or revoked or codes):
        return False
    audit.record("consent.revoked", actor_id=user_id, subject_id=user_id, client_id=client_id, tokens_revoked=revoked)
    return True


# --- the connected apps API (the caller's own) ------------------------------------------------


async def connected_apps(ctx: Context, caller: Principal) -> list[ConnectedApp]:
    """The caller's consents in client_id order, each with its client's current name. A consent whose
    client was deleted since is left out: that client can no longer use anything (its tokens went with
    it). Two indexed reads: the consents, then their clients' names by _id."""
    consents = cast(
        list[ConsentDocument],
        await ctx.db[COLLECTION].find({"user_id": caller.user_id}).sort(BY_USER_AND_CLIENT).to_list(None),
    )
    ids = [consent["client_id"] for consent in consents]
    clients = ctx.db.oauth2_clients.find({"_id": {"$in": ids}}, {"client_name": 1})
    names = {client["_id"]: client.get("client_name") async for client in clients}
    return [
        {
            "client_id": consent["client_id"],
            "client_name": names[consent["client_id"]],
            "scopes": consent["scopes"],
            "first_used": consent["first_used"],
            "last_used": consent["last_used"],
        }
        for consent in consents
        if consent["client_id"] in names
    ]


async def revoke(ctx: Context, caller: Principal, client_id: str) -> None:
    """Forget the caller's consent to `client_id` and revoke that client's tokens for them; 404 if the
    client has neither. Only ever the caller's own: the user is the token's, never a parameter."""
    if not await forget(ctx, caller.user_id, client_id):
        raise NotFound("You have not authorized this client.")
