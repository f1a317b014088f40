"""Small response helpers that keep handlers thin: JSON bodies, ETags, pagination headers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import hdrs, web

from service.errors import BadRequest
from service.pagination import Page


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None, content_type: str = "application/json"
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type=content_type, charset="utf-8"
    )


def with_etag(data: Any, document: Mapping[str, Any], *, status: int = 200, **headers: str) -> web.Response:
    """A single object's response; its strong ETag is the stored version (what If-Match names)."""
    response = json_response(data, status=status, headers=headers)
    response.etag = str(document["version"])
    return response


_ENTITY_TAG = r'(?:W/)?"[\x21\x23-\x7e\x80-\xff]*"'
_IF_MATCH = re.compile(rf"\s*(?:\*|{_ENTITY_TAG}(?:\s*,\s*{_ENTITY_TAG})*)\s*")
_VERSION = re.compile(r"[0-9]{1,18}")  # ASCII digits only ("²".isdigit() is true), and no 4,300-digit ints


def if_match_version(request: web.Request) -> int | None:
    """The version an If-Match header pins: None when absent or `*`, -1 when no tag can match (weak or
    foreign tags: If-Match compares strongly). A malformed header is 400: a precondition the server
    cannot read must never turn into an unconditional write."""
    if hdrs.IF_MATCH not in request.headers:
        return None
    if not _IF_MATCH.fullmatch(request.headers[hdrs.IF_MATCH]):
        raise BadRequest('If-Match must be * or a list of entity tags such as "3".')
    tags = request.if_match or ()
    if any(tag.value == "*" for tag in tags):
        return None
    return next((int(tag.value) for tag in tags if not tag.is_weak and _VERSION.fullmatch(tag.value)), -1)


def page(request: web.Request, data: list[Any], result: Page) -> web.Response:
    """A list response: `X-Total-Count` on offset pages, `Link: rel="next"` (RFC 8288, a cursor) while
    more items remain; the next link keeps the request's other parameters."""
    headers: dict[str, str] = {}
    if result.total is not None:
        headers["X-Total-Count"] = str(result.total)
    if result.next_after is not None:
        query = {k: v for k, v in request.query.items() if k not in ("offset", "after")}
        url = request.rel_url.with_query({**query, "after": result.next_after})
        headers["Link"] = f'<{url}>; rel="next"'
    return json_response(data, headers=headers)
