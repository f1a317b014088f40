"""Domain errors and the one middleware that turns every failure into RFC 9457 problem details."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from service.db import is_unavailable_error
from service.metrics import DB_UNAVAILABLE

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
DB_RETRY_AFTER = "5"


class ApiError(Exception):
    """An error the client can act on; `status` picks the HTTP status."""

    status = 500

    def __init__(self, detail: str | None = None, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})

    def extra(self) -> dict[str, Any]:
        return {}


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    """No, invalid or expired bearer token (RFC 6750 section 3)."""

    status = 401

    def __init__(
        self, detail: str = "A valid bearer token is required.", *, error: str | None = "invalid_token"
    ) -> None:
        challenge = 'Bearer realm="api"'
        if error:
            challenge += f', error="{error}", error_description="{detail}"'
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class Forbidden(ApiError):
    status = 403


class InsufficientScope(Forbidden):
    def __init__(self, scopes: tuple[str, ...]) -> None:
        scope = " ".join(scopes)
        super().__init__(
            f"The token lacks the scope {scope}.",
            headers={"WWW-Authenticate": f'Bearer realm="api", error="insufficient_scope", scope="{scope}"'},
        )


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class PreconditionFailed(ApiError):
    status = 412


class UnsupportedMediaType(ApiError):
    status = 415


class ValidationFailed(ApiError):
    """422 with field errors: {"field": ["message", ...]}."""

    status = 422

    def __init__(self, errors: Mapping[str, Any], detail: str = "The request has invalid values.") -> None:
        super().__init__(detail)
        self.errors = dict(errors)

    def extra(self) -> dict[str, Any]:
        return {"errors": self.errors}


class TooManyRequests(ApiError):
    status = 429

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after))})


class ServiceUnavailable(ApiError):
    status = 503

    def __init__(
        self, detail: str = "The database is unavailable; try again shortly.", retry_after: int | None = None
    ) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after) if retry_after else DB_RETRY_AFTER})


def problem_response(
    status: int, detail: str | None = None, *, headers: Mapping[str, str] | None = None, **extra: Any
) -> web.Response:
    """Build an RFC 9457 problem+json response."""
    body: dict[str, Any] = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        headers=headers,
        content_type=PROBLEM_JSON,
        charset="utf-8",
    )


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost error boundary: every error leaves as problem+json and nothing internal leaks."""
    try:
        return await handler(request)
    except ApiError as exc:
        return problem_response(exc.status, exc.detail, headers=exc.headers, **exc.extra())
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "WWW-Authenticate", "Retry-After")}
        detail = _HTTP_DETAILS.get(exc.status)
        if exc.status == 405:
            detail = f"{request.method} is not allowed here; allowed: {headers.get('Allow', 'none')}."
        return problem_response(exc.status, detail, headers=headers)
    except Exception as exc:
        if is_unavailable_error(exc):
            DB_UNAVAILABLE.inc()
            log.warning("database unavailable: %s", type(exc).__name__)
            unavailable = ServiceUnavailable()
            return problem_response(503, unavailable.detail, headers=unavailable.headers)
        log.exception("unhandled error on %s %s", request.method, request.rel_url.path)
        return problem_response(500, "An unexpected error occurred; it has been logged.")


_HTTP_DETAILS = {
    400: "The request is malformed.",
    404: "Nothing is here.",
    413: "The request body is too large.",
    415: "The content type is not supported.",
}


def check_version(expected: int | None, document: Mapping[str, Any]) -> None:
    """412 when the caller's If-Match no longer matches the stored document."""
    if expected is not None and expected != document["version"]:
        raise PreconditionFailed("The resource has changed since you read it (If-Match does not match its ETag).")
