"""Pages of a list, by offset or by key, and the opaque cursors that name a position.

Every list is ordered by (created, _id), served by an index in that order. A cursor is the sort key
of the last item of a page, with an HMAC over it and the list it belongs to, so a client cannot forge
or alter one (that is a 422, as is a cursor from another list). A page fetched by cursor is one
query with no count: following `Link: rel="next"` costs the same on page 10,000 as on page 1 and
stays correct while items are inserted and deleted (each item present for the whole walk is seen once).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web
from bson import ObjectId
from bson.errors import InvalidId

from service.db import Database, aware
from service.errors import ValidationFailed

KEYS = ("created", "_id")
_MAC_BYTES = 16
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class PageRequest:
    """What the client asked for: `limit`, and `offset` or an `after` cursor (never both)."""

    limit: int
    offset: int = 0
    after: str | None = None

    @classmethod
    def from_query(cls, query: dict[str, Any]) -> PageRequest:
        if query.get("after") is not None and query.get("offset"):
            raise ValidationFailed({"after": ["Send either offset or after, not both."]})
        return cls(limit=query["limit"], offset=query.get("offset", 0), after=query.get("after"))


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    next_after: str | None  # the cursor of the next page, while more items remain
    total: int | None  # offset pages only


class Cursors:
    """Signs and reads cursors with a key every process shares (kept in the database)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, scope: str, payload: bytes) -> bytes:
        return hmac.new(self._key, scope.encode() + b"\0" + payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, scope: str, created: datetime, key: Any) -> str:
        payload = orjson.dumps([millis(created), str(key), "o" if isinstance(key, ObjectId) else "s"])
        return _b64(payload) + "." + _b64(self._mac(scope, payload))

    def decode(self, scope: str, cursor: str) -> tuple[datetime, Any]:
        """The (created, _id) a cursor names; 422 when it is malformed, altered or from another list."""
        try:
            encoded_payload, encoded_mac = cursor.split(".")
            payload, mac = _unb64(encoded_payload), _unb64(encoded_mac)
            if not hmac.compare_digest(mac, self._mac(scope, payload)):
                raise ValueError("bad signature")
            millis, raw_id, kind = orjson.loads(payload)
            created = datetime.fromtimestamp(int(millis) / 1000, UTC)
            key = ObjectId(raw_id) if kind == "o" else str(raw_id)
        except (ValueError, TypeError, binascii.Error, InvalidId, orjson.JSONDecodeError, OverflowError):
            raise ValidationFailed({"after": ["The cursor is malformed, altered or from another list."]}) from None
        return created, key


@dataclass(frozen=True, slots=True)
class Line:
    """A list kept in order in one indexed string field: `prefix` (which list), then each item's
    (created, _id), fixed-width, so string order is list order. One field is then both the filter
    and the order: any planner scans exactly the page from its index, and a cursor is an exact bound
    (no ties at one instant to step over). A team's members are such a list (`<team id>:`)."""

    field: str
    prefix: str

    def at(self, created: datetime, key: Any) -> str:
        return f"{self.prefix}{millis(created):013d}:{key}"

    def bounds(self, after: tuple[datetime, Any] | None) -> dict[str, str]:
        end = self.prefix[:-1] + chr(ord(self.prefix[-1]) + 1)  # just past every string with the prefix
        return {"$gt": self.at(*after) if after else self.prefix, "$lt": end}


def millis(moment: datetime) -> int:
    """Milliseconds since the epoch, exactly (BSON's precision; below it truncated, as BSON does)."""
    return (aware(moment) - EPOCH) // timedelta(milliseconds=1)


def sort_key(item: Mapping[str, Any], keys: tuple[str, str] = ("created", "_id")) -> tuple[datetime, Any]:
    """An item's place in list order (timestamps read back naive by some drivers count as UTC)."""
    return (aware(item[keys[0]]), item[keys[1]])


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# Items sharing the cursor's millisecond that the first query may have to step over.
TIE_SLACK = 16


def page_filter(
    query: Mapping[str, Any],
    request: PageRequest,
    cursors: Cursors,
    scope: str,
    *,
    descending: bool = False,
    keys: tuple[str, str] = KEYS,
    line: Line | None = None,
) -> dict[str, Any]:
    """The filter a page's query runs with (the tests `explain` it).

    After a cursor: a plain range on `created` from the cursor's instant, so the index bounds the scan
    on any planner; the few items at that very instant up to the cursor's id are dropped in `fetch_page`.
    (An `$or` of "later, or same instant and larger id" is exact but makes some planners scan the
    collection; it serves only as the fallback when more than TIE_SLACK items share that instant.)"""
    filters = dict(query)
    if line is not None:
        filters[line.field] = line.bounds(cursors.decode(scope, request.after) if request.after else None)
    elif request.after is not None:
        created, _ = cursors.decode(scope, request.after)
        filters[keys[0]] = {"$lte" if descending else "$gte": created}
    return filters


async def fetch_page(
    db: Database,
    collection: str,
    query: Mapping[str, Any],
    request: PageRequest,
    cursors: Cursors,
    scope: str,
    projection: Mapping[str, Any] | None = None,
    *,
    descending: bool = False,
    keys: tuple[str, str] = KEYS,
    line: Line | None = None,
    total: int | None = None,
) -> Page:
    """One page of `collection` matching `query`, in list order (oldest first, or newest first when
    `descending`): by cursor one query, by offset two at most. `keys` names the (time, id) fields that order
    it when they are not `created` and `_id` (a member's teams are ordered by the teams' own). `total`:
    the count, where a counter already knows it (a team's members); a page that reaches the end of the
    list knows it too. Either way such an offset page is one query. `line`: the list is kept in that
    one field, and its index is hinted (SecantusDB, which has no limit push-down, then walks that index
    in order and sorts nothing, so a page's cost does not depend on the list's length)."""
    wanted = request.limit + 1  # one more than the page, to know whether more remain
    order = [(line.field, 1)] if line else [(name, -1 if descending else 1) for name in keys]
    filters = page_filter(query, request, cursors, scope, descending=descending, keys=keys, line=line)
    found = db[collection].find(filters, projection).sort(order)
    if line is not None:
        found = found.hint(order)
    if request.after is None or line is not None:
        items = await found.skip(request.offset).limit(wanted).to_list(wanted)
    else:
        position = cursors.decode(scope, request.after)
        batch = await found.limit(wanted + TIE_SLACK).to_list(wanted + TIE_SLACK)
        items = [
            item
            for item in batch
            if (sort_key(item, keys) < position if descending else sort_key(item, keys) > position)
        ]
        if len(items) < wanted and len(batch) == wanted + TIE_SLACK:  # the slack went on ties: go exact
            created, key = position
            beyond = "$lt" if descending else "$gt"
            exact = {**query, "$or": [{keys[0]: {beyond: created}}, {keys[0]: created, keys[1]: {beyond: key}}]}
            items = await db[collection].find(exact, projection).sort(order).limit(wanted).to_list(wanted)
    more = len(items) > request.limit
    items = items[: request.limit]
    if request.after is not None:
        total = None
    elif total is None and not more and (items or not request.offset):
        total = request.offset + len(items)  # the page reached the end: it is the count
    elif total is None:
        total = await db[collection].count_documents(dict(query))
    next_after = cursors.encode(scope, *sort_key(items[-1], keys)) if more and items else None
    return Page(items, next_after, total)


CURSORS: web.AppKey[Cursors] = web.AppKey("service.cursors", Cursors)
