"""Small response helpers that keep handlers thin: JSON bodies, ETags, pagination headers."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from service.errors import PreconditionFailed
from service.pagination import Page


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None, content_type: str = "application/json"
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type=content_type, charset="utf-8"
    )


def etag(document: dict[str, Any]) -> str:
    return f'"{document["version"]}"'


def with_etag(data: Any, document: dict[str, Any], *, status: int = 200, **headers: str) -> web.Response:
    return json_response(data, status=status, headers={"ETag": etag(document), **headers})


def if_match_version(request: web.Request) -> int | None:
    """The version an If-Match header pins (None when absent or `*`); a malformed tag matches nothing."""
    header = request.headers.get("If-Match", "").strip()
    if header in ("", "*"):
        return None
    for tag in header.split(","):
        tag = tag.strip()
        if tag.startswith('"') and tag.endswith('"') and tag[1:-1].isdigit():
            return int(tag[1:-1])
    return -1


def check_version(expected: int | None, document: dict[str, Any]) -> None:
    """412 when the caller's If-Match no longer matches the stored document."""
    if expected is not None and expected != document["version"]:
        raise PreconditionFailed("The resource has changed since you read it (If-Match does not match its ETag).")


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
