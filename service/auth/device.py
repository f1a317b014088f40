"""The device authorization grant (RFC 8628): device and user codes, the polling rules, and the
decisions taken on the /auth/device page.

Both codes are stored only as digests. One document per device authorization; each poll and each
decision is one conditional write, so concurrent polls cannot beat the interval and a device code
gives tokens once."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NotRequired, TypedDict, cast

from authlib.oauth2.rfc6749 import errors as oauth
from pymongo import IndexModel
from pymongo.errors import DuplicateKeyError

from service.audit import trail as audit
from service.auth import grants
from service.auth.repository import ClientDocument
from service.context import Context
from service.crypto import hash_secret, new_token
from service.db import aware, utcnow
from service.errors import TooManyRequests
from service.users import repository as users_repository
from service.users.repository import UserDocument

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"
ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"  # no vowels (no words), no look-alike digits
USER_CODE_LENGTH = 8
INTERVAL = 5  # seconds between polls (RFC 8628 3.2); slow_down adds 5
GUESS_LIMIT, GUESS_WINDOW = 10, 15 * 60  # wrong user codes per client address
COLLECTION = "oauth2_device_codes"
EXPIRED_KEPT = 3600  # an expired device code is kept an hour: its polls answer expired_token, not invalid_grant
INDEXES: dict[str, list[IndexModel]] = {
    COLLECTION: [IndexModel("user_code_hash", unique=True), IndexModel("expires_at", expireAfterSeconds=EXPIRED_KEPT)]
}


class DeviceDocument(TypedDict):
    _id: str  # digest of the device code
    user_code_hash: str
    client_id: str
    scopes: list[str]
    status: str  # pending, approved, denied, used
    interval: int
    next_poll: Any  # datetime: the earliest poll that is not too fast
    expires_at: Any
    created: Any
    user_id: NotRequired[Any]
    auth_time: NotRequired[int]
    resources: NotRequired[list[str]]  # RFC 8707: asked at the device authorization request


class WrongUserCode(Exception):
    """No pending device authorization has this user code."""


def new_user_code() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(USER_CODE_LENGTH))


def normalize(user_code: str) -> str | None:
    """The 8 letters of a user code as typed (any case, dashes and spaces ignored), or None."""
    letters = "".join(ch for ch in user_code.upper() if ch not in "- \t")
    if len(letters) != USER_CODE_LENGTH or not set(letters) <= set(ALPHABET):
        return None
    return letters


def display(user_code: str) -> str:
    return f"{user_code[:4]}-{user_code[4:]}"


async def start(ctx: Context, client: ClientDocument, params: dict[str, str]) -> dict[str, Any]:
    """RFC 8628 3.1/3.2: a new device code and user code for an authenticated client."""
    if GRANT_TYPE not in client["grant_types"]:
        raise oauth.UnauthorizedClientError("This client is not registered for the device_code grant.")
    scopes = grants.parse_scope(params.get("scope"), client["allowed_scopes"], client["default_scopes"])
    resources = grants.audience(ctx, params)
    ttl = ctx.settings.device_code_ttl
    now = utcnow()
    device_code = new_token()
    for _ in range(5):  # a user code already in use (one in 20^8) is drawn again
        user_code = new_user_code()
        document: DeviceDocument = {
            "_id": hash_secret(device_code),
            "user_code_hash": hash_secret(user_code),
            "client_id": client["_id"],
            "scopes": scopes,
            "status": "pending",
            "interval": INTERVAL,
            "next_poll": now,
            "expires_at": now + timedelta(seconds=ttl),
            "created": now,
            "resources": resources,
        }
        try:
            await ctx.db[COLLECTION].insert_one(dict(document))
            break
        except DuplicateKeyError:
            continue
    else:
        raise oauth.OAuth2Error("Try again.", status_code=503)
    audit.record("device.authorization_started", client_id=client["_id"])
    verification_uri = f"{ctx.issuer}/auth/device"
    return {
        "device_code": device_code,
        "user_code": display(user_code),
        "verification_uri": verification_uri,
        "verification_uri_complete": f"{verification_uri}?user_code={display(user_code)}",
        "expires_in": ttl,
        "interval": INTERVAL,
    }


async def device_code_grant(ctx: Context, client: ClientDocument, params: dict[str, str]) -> dict[str, Any]:
    """RFC 8628 3.4/3.5: poll; tokens once the user approved (one conditional write takes them)."""
    (device_code,) = grants.required(params, "device_code")
    digest = hash_secret(device_code)
    collection = ctx.db[COLLECTION]
    found = cast(DeviceDocument | None, await collection.find_one({"_id": digest}))
    if found is None or found["client_id"] != client["_id"]:
        raise oauth.InvalidGrantError("The device code is invalid.")
    if found["status"] == "used":
        raise oauth.InvalidGrantError("The device code was already used.")
    resources = tuple(grants.audience(ctx, params, found.get("resources")))
    now = utcnow()
    if aware(found["expires_at"]) <= now:
        raise _error("expired_token", "The device code has expired; start again.")
    polled = await collection.update_one(
        {"_id": digest, "interval": found["interval"], "next_poll": {"$lte": now}},
        {"$set": {"next_poll": now + timedelta(seconds=found["interval"])}},
    )
    if not polled.modified_count:  # too soon after the last poll, or a concurrent poll won
        slower = found["interval"] + 5
        await collection.update_one(
            {"_id": digest}, {"$inc": {"interval": 5}, "$set": {"next_poll": now + timedelta(seconds=slower)}}
        )
        raise _error("slow_down", f"Poll at most every {slower} seconds.")
    if found["status"] == "pending":
        raise _error("authorization_pending", "The user has not decided yet.")
    if found["status"] == "denied":
        raise _error("access_denied", "The user denied the request.")
    claimed = await collection.update_one({"_id": digest, "status": "approved"}, {"$set": {"status": "used"}})
    if not claimed.modified_count:
        raise oauth.InvalidGrantError("The device code was already used.")
    user = await users_repository.get_user(ctx.db, found["user_id"]) if "user_id" in found else None
    if user is None or not user.get("is_active"):
        raise oauth.InvalidGrantError("The account is deactivated.")
    issue = grants.Issue(GRANT_TYPE, auth_time=found.get("auth_time"), audience=resources)
    return await grants.issue_token(ctx, client, user, found["scopes"], issue)


def _error(error: str, description: str) -> oauth.OAuth2Error:
    exc = oauth.OAuth2Error(description, status_code=400)
    exc.error = error
    return exc


async def pending(ctx: Context, address: str, user_code: str) -> DeviceDocument:
    """The pending device authorization with this user code; a wrong code counts against `address`
    (GUESS_LIMIT per GUESS_WINDOW, then TooManyRequests, also for right codes)."""
    key = f"device:{address}"
    reserved, window_end = await users_repository.reserve_login_attempt(ctx.db, key, GUESS_LIMIT, GUESS_WINDOW)
    if not reserved:
        seconds = int((window_end - utcnow()).total_seconds()) + 1
        raise TooManyRequests("Too many wrong codes; try again later.", retry_after=seconds)
    letters = normalize(user_code)
    found: DeviceDocument | None = None
    if letters is not None:
        query = {"user_code_hash": hash_secret(letters), "status": "pending", "expires_at": {"$gt": utcnow()}}
        found = cast(DeviceDocument | None, await ctx.db[COLLECTION].find_one(query))
    if found is None:
        audit.record("device.wrong_user_code")
        raise WrongUserCode()
    await users_repository.release_login_attempt(ctx.db, key)
    return found


async def decide(ctx: Context, found: DeviceDocument, user: UserDocument | None) -> bool:
    """Approve for `user`, or deny (None); False when the request was decided or expired meanwhile."""
    change: dict[str, Any] = {"status": "denied"}
    if user is not None:
        change = {"status": "approved", "user_id": user["_id"], "auth_time": int(utcnow().timestamp())}
    result = await ctx.db[COLLECTION].update_one(
        {"_id": found["_id"], "status": "pending", "expires_at": {"$gt": utcnow()}}, {"$set": change}
    )
    if result.modified_count:
        event = "device.approved" if user is not None else "device.denied"
        audit.record(event, actor_id=user["_id"] if user else None, client_id=found["client_id"])
    return bool(result.modified_count)


grants.GRANTS[GRANT_TYPE] = device_code_grant  # the token endpoint's grants (and the metadata's list)


@dataclass(frozen=True, slots=True)
class DeviceSignIn:
    """A device authorization as what a pending sign-in (second factor) is bound to."""

    client: dict[str, Any]
    device_id: str  # the device code's digest

    def as_form(self) -> dict[str, str]:
        return {"device": self.device_id, "client_id": str(self.client["_id"])}
