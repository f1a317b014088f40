"""OAuth2 collections (clients, tokens, authorization codes): every query, and their indexes.

Tokens are stored by the SHA-256 digest of the access token (`_id`) and of the refresh token
(`refresh_hash`); `expires_at` (the later of both expiries) drives a TTL index, so MongoDB deletes
dead tokens on its own. Liveness is also checked on every read, since the TTL monitor runs lazily.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, NotRequired, TypedDict, cast

from bson import ObjectId
from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.errors import DuplicateKeyError

from service.db import Database, utcnow
from service.errors import Conflict
from service.pagination import Cursors, Page, PageRequest, fetch_page

INDEXES: dict[str, list[IndexModel]] = {
    "oauth2_clients": [IndexModel([("user_id", ASCENDING), ("created", ASCENDING), ("_id", ASCENDING)])],
    "oauth2_tokens": [
        IndexModel("refresh_hash", unique=True, sparse=True),  # absent for client_credentials tokens
        IndexModel("family_id"),
        IndexModel("user_id"),
        IndexModel("client_id"),
        IndexModel("expires_at", expireAfterSeconds=0),
    ],
    "oauth2_codes": [IndexModel("expires_at", expireAfterSeconds=0)],
}


# --- clients ---------------------------------------------------------------------------------


class ClientDocument(TypedDict):
    """A stored OAuth2 client; its `_id` is the client_id."""

    _id: str
    client_type: str  # "public" or "confidential"
    token_endpoint_auth_method: str | None  # None: Basic or form, the client's choice
    secret_hash: str | None  # None for public clients
    # After a rotation: the previous secret's digest and when it stops working (CLIENT_SECRET_OVERLAP).
    previous_secret_hash: NotRequired[str | None]
    previous_secret_expires: NotRequired[datetime | None]
    grant_types: list[str]  # what the token endpoint lets it do (migration 0008 gave older clients theirs)
    client_name: NotRequired[str | None]
    redirect_uris: list[str]
    post_logout_redirect_uris: NotRequired[list[str]]
    backchannel_logout_uri: NotRequired[str | None]
    first_party: NotRequired[bool]  # the service's own application (set by administrators only)
    dpop_bound_access_tokens: NotRequired[bool]
    registration_token_hash: NotRequired[str]  # RFC 7592 registration access token (registered clients)
    default_scopes: list[str]
    allowed_scopes: list[str]
    user_id: ObjectId  # the owner
    created: datetime
    updated: datetime
    version: int


async def insert_client(db: Database, document: ClientDocument) -> ClientDocument:
    """Store a new client. Whatever an earlier client of the same id left behind (a delete that stopped
    half-way: fixtures choose ids) goes first, so the new one inherits no token, code or consent."""
    try:
        await db.oauth2_clients.insert_one(cast(dict[str, Any], document))
    except DuplicateKeyError:
        raise Conflict("An OAuth2 client with this client_id already exists.") from None
    await _drop_client_data(db, document["_id"])
    return document


async def get_client(db: Database, client_id: str) -> ClientDocument | None:
    return cast(ClientDocument | None, await db.oauth2_clients.find_one({"_id": client_id}))


async def list_clients(db: Database, user_id: Any, request: PageRequest, cursors: Cursors) -> Page:
    return await fetch_page(db, "oauth2_clients", {"user_id": user_id}, request, cursors, "oauth2_clients")


async def update_client(
    db: Database, client_id: str, version: int | None, changes: dict[str, Any]
) -> ClientDocument | None:
    """Set `changes` only if the client is still at `version` (any version when None); None otherwise."""
    query: dict[str, Any] = {"_id": client_id} if version is None else {"_id": client_id, "version": version}
    updated = await db.oauth2_clients.find_one_and_update(
        query, {"$set": {**changes, "updated": utcnow()}, "$inc": {"version": 1}}, return_document=ReturnDocument.AFTER
    )
    return cast(ClientDocument | None, updated)


async def delete_client(db: Database, client_id: str, version: int | None = None) -> bool:
    """Delete the client (only at `version`, when given) first, then its tokens, codes and consents: a crash
    in between leaves tokens that no longer authenticate (every token lookup joins its client), and the
    next delete or creation of that id finishes the job. True if the client was deleted."""
    query: dict[str, Any] = {"_id": client_id} if version is None else {"_id": client_id, "version": version}
    deleted = (await db.oauth2_clients.delete_one(query)).deleted_count == 1
    if not deleted and await db.oauth2_clients.find_one({"_id": client_id}, {"_id": 1}) is not None:
        return False  # changed since it was read: it stays, and so does everything of it
    await _drop_client_data(db, client_id)
    return deleted


async def _drop_client_data(db: Database, client_id: str) -> None:
    """A client's tokens, codes and consents (tokens and consents by a client_id index; codes live a minute)."""
    await db.oauth2_tokens.delete_many({"client_id": client_id})
    await db.oauth2_codes.delete_many({"client_id": client_id})
    await db.oauth2_consents.delete_many({"client_id": client_id})


# --- tokens ----------------------------------------------------------------------------------


class TokenDocument(TypedDict):
    """A stored token pair: digests only (the access token's is the `_id`), never the tokens."""

    _id: str
    refresh_hash: NotRequired[str]  # absent when no refresh token was issued (client credentials)
    family_id: str  # every rotation of one sign-in shares it; a replay revokes the family
    code_id: str | None  # the authorization code it came from, if any
    client_id: str
    user_id: ObjectId
    generation: int  # the user's token_generation when issued
    scopes: list[str]
    access_expires: datetime
    refresh_expires: datetime | None
    expires_at: datetime  # the later of the two: the TTL index removes the document then
    revoked: bool
    rotated: bool
    replays: NotRequired[int]  # presentations after rotation retired it (see note_replay)
    revoked_at: NotRequired[datetime]
    created: datetime
    auth_time: int  # when the user last signed in (Unix time), for ID tokens
    amr: NotRequired[list[str]]  # how they signed in (RFC 8176), kept through refreshes; absent: ["pwd"]
    sid: NotRequired[str]  # the sign-in session it came from (authorization code grant), for ID tokens
    aud: NotRequired[list[str]]  # RFC 8707: the resources it is for; absent on tokens issued before (the API)
    jkt: NotRequired[str]  # DPoP (RFC 9449): the thumbprint of the key the access token is bound to
    refresh_jkt: NotRequired[str]  # and the refresh token's (public clients' only, RFC 9449 5)


async def insert_token(db: Database, document: TokenDocument) -> None:
    await db.oauth2_tokens.insert_one(cast(dict[str, Any], document))


async def find_live_access_token(db: Database, digest: str) -> dict[str, Any] | None:
    """The live token with its user and client, in one round trip; None if anything is not live."""
    pipeline: list[dict[str, Any]] = [
        {"$match": {"_id": digest, "revoked": False, "access_expires": {"$gt": utcnow()}}},
        {"$lookup": {"from": "users", "localField": "user_id", "foreignField": "_id", "as": "user"}},
        {"$lookup": {"from": "oauth2_clients", "localField": "client_id", "foreignField": "_id", "as": "client"}},
        {"$limit": 1},
    ]
    found = await db.oauth2_tokens.aggregate(pipeline).to_list(1)
    if not found:
        return None
    token = found[0]
    if not token["client"] or not token["user"]:
        return None
    token["user"] = token["user"][0]
    return token if is_current(token, token["user"]) else None


def is_current(token: Mapping[str, Any], user: Mapping[str, Any] | None) -> bool:
    """A token (or code) still speaks for its user: the user is active and has not revoked everything
    since it was issued (a password change or deactivation bumps `token_generation` atomically)."""
    if not user or not user.get("is_active"):
        return False
    return bool(token.get("generation", 0) == user.get("token_generation", 0))


async def find_token(
    db: Database, *, access_digest: str | None = None, refresh_digest: str | None = None
) -> TokenDocument | None:
    query = {"_id": access_digest} if access_digest else {"refresh_hash": refresh_digest}
    return cast(TokenDocument | None, await db.oauth2_tokens.find_one(query))


async def claim_refresh_token(db: Database, refresh_digest: str) -> TokenDocument | None:
    """Atomically retire a live refresh token (and its access token); only one caller can win."""
    claimed = await db.oauth2_tokens.find_one_and_update(
        {"refresh_hash": refresh_digest, "revoked": False, "rotated": False, "refresh_expires": {"$gt": utcnow()}},
        {"$set": {"rotated": True, "revoked": True, "revoked_at": utcnow()}},
        return_document=ReturnDocument.BEFORE,
    )
    return cast(TokenDocument | None, claimed)


async def note_replay(db: Database, *, refresh_digest: str | None = None, code_digest: str | None = None) -> bool:
    """After a failed claim: count a replay of the refresh token (if rotation retired it) or of the code
    (if it was used); True if it was one. The write itself says so, never an earlier read, so of two
    presentations at once the one that lost the claim always knows it replays.

    (One conditional write each, not a claim that returns its pre-image: the predicate re-checked at the
    write is what every server keeps atomic; the test server's findAndModify answers a stale pre-image
    when a concurrent write left the document still matching.)"""
    if refresh_digest:
        result = await db.oauth2_tokens.update_one(
            {"refresh_hash": refresh_digest, "rotated": True}, {"$inc": {"replays": 1}}
        )
    else:
        result = await db.oauth2_codes.update_one({"_id": code_digest, "used": True}, {"$inc": {"replays": 1}})
    return result.matched_count == 1


async def replayed_since_claimed(
    db: Database, *, refresh_digest: str | None = None, code_digest: str | None = None
) -> bool:
    """Whether the refresh token or code the caller claimed has been replayed since (see `note_replay`).

    The winner asks AFTER storing the token it issues: a replay's revocation either ran after that
    store, and so took the new token, or its `note_replay` came before this read, which then sees it."""
    replayed = {"replays": {"$gt": 0}}
    if refresh_digest:
        return await db.oauth2_tokens.find_one({"refresh_hash": refresh_digest, **replayed}, {"_id": 1}) is not None
    return await db.oauth2_codes.find_one({"_id": code_digest, **replayed}, {"_id": 1}) is not None


async def revoke_tokens(db: Database, query: dict[str, Any]) -> int:
    """Revoke the live tokens `query` selects; the rotated-out ones it selects are voided, which ends
    their grace window (`reuse_within_grace`): a revoked family cannot come back through it."""
    await db.oauth2_tokens.update_many({**query, "rotated": True, "void": {"$ne": True}}, {"$set": {"void": True}})
    result = await db.oauth2_tokens.update_many(
        {**query, "revoked": False}, {"$set": {"revoked": True, "revoked_at": utcnow()}}
    )
    return result.modified_count


async def reuse_within_grace(db: Database, refresh_digest: str, grace: timedelta) -> bool:
    """A refresh token rotated out less than `grace` ago, whose family was not revoked since, may be
    presented again (REFRESH_REUSE_GRACE: a lost response, two tabs refreshing at once). One conditional
    write decides, as for the claim."""
    now = utcnow()
    result = await db.oauth2_tokens.update_one(
        {
            "refresh_hash": refresh_digest,
            "rotated": True,
            "void": {"$ne": True},
            "revoked_at": {"$gt": now - grace},
            "refresh_expires": {"$gt": now},
        },
        {"$inc": {"grace_reuses": 1}},
    )
    return result.matched_count == 1


async def is_void(db: Database, refresh_digest: str) -> bool:
    """Whether the rotated-out refresh token's family was revoked since (see `revoke_tokens`)."""
    return await db.oauth2_tokens.find_one({"refresh_hash": refresh_digest, "void": True}, {"_id": 1}) is not None


# --- authorization codes ---------------------------------------------------------------------


class CodeDocument(TypedDict):
    """A stored authorization code: its digest is the `_id`; single use, short-lived."""

    _id: str
    client_id: str
    redirect_uri: str
    scopes: list[str]
    user_id: ObjectId
    generation: int  # the user's token_generation when issued
    code_challenge: str | None  # PKCE S256
    nonce: str | None  # OpenID Connect, echoed in the ID token
    auth_time: int
    amr: NotRequired[list[str]]  # how the user signed in on the page (RFC 8176): ["pwd"] or ["pwd", "otp"]
    sid: NotRequired[str]  # the sign-in session that approved it
    dpop_jkt: NotRequired[str]  # RFC 9449 10: only a proof with this key's thumbprint may exchange it
    resources: NotRequired[list[str]]  # RFC 8707: the resources asked for (absent or empty: the API)
    expires_at: datetime
    used: bool
    replays: NotRequired[int]  # presentations after it was used (see note_replay)


async def insert_code(db: Database, document: CodeDocument) -> None:
    await db.oauth2_codes.insert_one(cast(dict[str, Any], document))


async def find_code(db: Database, digest: str) -> CodeDocument | None:
    return cast(CodeDocument | None, await db.oauth2_codes.find_one({"_id": digest}))


async def claim_code(db: Database, digest: str) -> bool:
    """Mark an unused code used; True for the one caller that wins."""
    result = await db.oauth2_codes.update_one({"_id": digest, "used": False}, {"$set": {"used": True}})
    return result.modified_count == 1


# --- change feed for the principal cache -----------------------------------------------------

PRINCIPAL_COLLECTIONS = ("users", "oauth2_tokens", "oauth2_clients")
CHANGE_STREAM_AWAIT_MS = 500


def watch_principal_changes(db: Database, resume_after: Any = None) -> Any:
    """A change stream of every write that can alter a cached principal: updates, replacements and
    deletions, and a new user (who may take a username cached as unknown). Other inserts (every
    sign-in's token) are left out. Each `getMore` waits on the server (awaitData) until a change
    arrives or CHANGE_STREAM_AWAIT_MS pass, so an idle instance sends two commands a second, and a
    change reaches it milliseconds after the write."""
    pipeline: list[dict[str, Any]] = [
        {
            "$match": {
                "ns.coll": {"$in": list(PRINCIPAL_COLLECTIONS)},
                "$or": [
                    {"operationType": {"$in": ["update", "replace", "delete"]}},
                    {"operationType": "insert", "ns.coll": "users"},
                ],
            }
        },
        {"$project": {"operationType": 1, "ns": 1, "documentKey": 1, "clusterTime": 1}},
    ]
    return db.watch(pipeline, max_await_time_ms=CHANGE_STREAM_AWAIT_MS, resume_after=resume_after)


# --- migrations (listed, in order, in service/domains.py) ---


# What every client could do before clients had grant types (the token endpoint refused
# client_credentials to public clients already).
LEGACY_GRANTS = {
    "confidential": ["authorization_code", "refresh_token", "client_credentials", "password"],
    "public": ["authorization_code", "refresh_token", "password"],
}


async def clients_keep_their_grants(db: Database) -> None:
    """Give every client stored before grant types existed exactly the grants it could use then."""
    for client_type, grants in LEGACY_GRANTS.items():
        await db.oauth2_clients.update_many(
            {"client_type": client_type, "grant_types": {"$exists": False}},
            {"$set": {"grant_types": grants}, "$inc": {"version": 1}},
        )


async def documentation_client_is_first_party(db: Database) -> None:
    """The docs page is the service's own application: it signs users in without a consent screen."""
    await db.oauth2_clients.update_one(
        {"_id": "documentation", "first_party": {"$ne": True}}, {"$set": {"first_party": True}, "$inc": {"version": 1}}
    )


async def documentation_client_may_sign_in(db: Database) -> None:
    """The docs page's client may ask for the OpenID Connect scopes (databases loaded before OIDC)."""
    await db.oauth2_clients.update_one(
        {"_id": "documentation"}, {"$addToSet": {"allowed_scopes": {"$each": ["openid", "profile", "email"]}}}
    )
