"""`Idempotency-Key` on every POST under /api/v1 (draft-ietf-httpapi-idempotency-key-header): a client
that lost the answer to a POST (a network blip, a timeout) sends it again with the same key and gets the
first answer back, replayed, instead of a second team.

A key belongs to one caller (the token's client and user: another caller's same key is another key),
lives 24 h in the `idempotency_keys` collection (a TTL index), and is claimed by inserting a "running"
record under a unique index, so that of two processes receiving the same key at once exactly one runs
the request; the other answers 409 until it is done, and replays it after. The record remembers a
SHA-256 fingerprint of the method, path and body: the same key with another request is 422 (draft
section 2.7). A request that fails (an error raised, or a 5xx) releases its key, since it acted on
nothing the client could rely on and may be sent again.

A request without the header costs nothing here; an anonymous one (sign-up, password reset) ignores a
well-formed one:
those requests hold no caller to scope a key to, and what they create is unique by its own data (an
email address), so a repeat is a 409 of its own.
"""

from __future__ import annotations

import hashlib
import logging
import re
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeAlias

from aiohttp import web
from aiohttp.typedefs import Handler
from bson import Binary
from pymongo import ASCENDING, IndexModel
from pymongo.errors import DuplicateKeyError

from service.bodies import read_bytes
from service.caller import CALLER, Principal
from service.db import MONGO, aware, utcnow
from service.errors import ApiError, BadRequest, Conflict

if TYPE_CHECKING:
    from motor.motor_asyncio import AsyncIOMotorCollection

    Collection: TypeAlias = AsyncIOMotorCollection[dict[str, Any]]

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
COLLECTION = "idempotency_keys"
TTL = timedelta(hours=24)
# A request still "running" after this long was lost with its process (no handler here runs for
# minutes): its key may be claimed again.
RUNNING_LEASE = timedelta(minutes=5)
MAX_STORED_BODY = 256 * 1024  # far above any POST answer of this API; a bigger one is not replayable
KEPT_HEADERS = ("Location", "ETag", "Content-Type")
RETRY_AFTER = "1"

INDEXES: dict[str, list[IndexModel]] = {
    COLLECTION: [
        IndexModel([("caller", ASCENDING), ("key", ASCENDING)], unique=True, name="caller_key"),
        IndexModel("created", expireAfterSeconds=int(TTL.total_seconds()), name="created_ttl"),
    ]
}

_KEY = re.compile(r"[\x20-\x7e]{1,255}")
_SF_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')


class KeyReused(ApiError):
    """The key was used for another request (other method, path or body)."""

    status = 422


def parse_key(values: list[str]) -> str:
    """The key: 1 to 255 printable ASCII characters (what the OpenAPI pattern says), sent bare or as the
    draft's sf-string (`"abc"`, the quotes counted); one header only. Else 400."""
    if len(values) != 1:
        raise BadRequest("Send one Idempotency-Key header.")
    value = values[0].strip(" \t")
    if not _KEY.fullmatch(value):
        raise BadRequest("Idempotency-Key must be 1 to 255 printable ASCII characters.")
    quoted = _SF_STRING.fullmatch(value)
    if quoted and quoted.group(1):
        value = re.sub(r"\\([\"\\])", r"\1", quoted.group(1))
    return value


def fingerprint(method: str, path: str, body: bytes) -> str:
    """What makes a request the same request: its method, path (with query) and body bytes (decoded from
    their Content-Encoding)."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def owner(caller: Principal) -> str:
    """Whose key it is: the token's client and user, so no other caller ever sees the replay."""
    return f"{caller.client_id} {caller.user_id}"


@web.middleware
async def idempotency_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Replay, refuse or run a POST that carries an Idempotency-Key (after authentication and the rate
    limit, before validation: an invalid body is refused, and its key released, like any failure)."""
    if request.method != "POST" or HEADER not in request.headers:
        return await handler(request)
    key = parse_key(request.headers.getall(HEADER))  # malformed is 400 for everyone, as documented
    caller = request.get(CALLER)
    if caller is None:
        return await handler(request)
    body = await read_bytes(request)
    keys: Collection = request.config_dict[MONGO].db[COLLECTION]
    scope = {"caller": owner(caller), "key": key}
    claimed = await _claim(keys, scope, fingerprint(request.method, request.path_qs, body))
    if isinstance(claimed, web.Response):
        return claimed
    try:
        response = await handler(request)
    except BaseException:
        await _release(keys, claimed)
        raise
    stored = response.body if isinstance(response, web.Response) else None
    if response.status >= 500 or not isinstance(stored, bytes | None) or len(stored or b"") > MAX_STORED_BODY:
        await _release(keys, claimed)
        return response
    kept = {name: response.headers[name] for name in KEPT_HEADERS if name in response.headers}
    answer = {"status": response.status, "headers": kept, "body": Binary(stored or b"")}
    await keys.update_one({"_id": claimed}, {"$set": {"state": "done", **answer}})
    return response


async def _claim(keys: Collection, scope: dict[str, str], print_: str) -> Any:
    """Insert the running record (the unique index makes one claimant win across processes) and return
    its id; or the replayed response. 422 for another request under the key, 409 while it runs."""
    for _ in range(3):
        now = utcnow()
        try:
            inserted = await keys.insert_one({**scope, "fingerprint": print_, "state": "running", "created": now})
            return inserted.inserted_id
        except DuplicateKeyError:
            found = await keys.find_one(scope)
        if found is None:  # released or expired since: claim it again
            continue
        if found["fingerprint"] != print_:
            raise KeyReused("This Idempotency-Key was used for another request (method, path or body).")
        if found["state"] == "done":
            return _replay(found)
        if now - aware(found["created"]) > RUNNING_LEASE:
            taken = await keys.update_one(
                {"_id": found["_id"], "state": "running", "created": found["created"]}, {"$set": {"created": now}}
            )
            if taken.modified_count:
                return found["_id"]
        break
    raise Conflict(
        "A request with this Idempotency-Key is still running; retry after it ends.",
        headers={"Retry-After": RETRY_AFTER},
    )


def _replay(found: dict[str, Any]) -> web.Response:
    headers = {**found["headers"], REPLAYED: "true"}
    return web.Response(status=found["status"], body=bytes(found["body"]), headers=headers)


async def _release(keys: Collection, record: Any) -> None:
    """Free the key of a request that failed, so that it may be sent again; if the database is away too,
    the record is left running and its lease frees it."""
    try:
        await keys.delete_one({"_id": record, "state": "running"})
    except Exception:  # the request's own failure is the one to report
        log.warning("could not release an idempotency key", exc_info=True)
