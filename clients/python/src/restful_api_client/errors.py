"""Typed exceptions: RFC 9457 problem details from the API, RFC 6749 errors from the OAuth2 endpoints."""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Base of every error this SDK raises."""


class ApiError(ClientError):
    """An error answer from the API (`application/problem+json`, RFC 9457)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str = "",
        type: str = "about:blank",  # the RFC 9457 member's name
        problem: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {title}" + (f": {detail}" if detail else ""))
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.problem: dict[str, Any] = problem or {}
        self.retry_after = retry_after


class BadRequest(ApiError):
    """400: a malformed body or header."""


class Unauthorized(ApiError):
    """401: no, invalid or expired token, after the SDK tried to renew it once."""


class Forbidden(ApiError):
    """403: authenticated but not allowed (role, ownership or a missing scope)."""


class NotFound(ApiError):
    """404: no such object, or one the caller may not see."""


class Conflict(ApiError):
    """409: a duplicate, a failed JSON Patch `test`, the last leader, or a request still running."""


class PreconditionFailed(ApiError):
    """412: the object changed since the caller read it. `current` is the object as it is now (fetched
    after the refusal, with its new ETag), or None when it could not be read."""

    current: Any = None


class PayloadTooLarge(ApiError):
    """413."""


class ValidationError(ApiError):
    """422: well-formed but invalid values; `errors` maps fields to messages."""

    @property
    def errors(self) -> dict[str, Any]:
        errors = self.problem.get("errors")
        return errors if isinstance(errors, dict) else {}


class RateLimited(ApiError):
    """429 after the retries the policy allows; `retry_after` says how long the server asked to wait."""


class ServerError(ApiError):
    """5xx."""


class ServiceUnavailable(ServerError):
    """503 after the retries the policy allows (the database unavailable, overload)."""


class OAuthError(ClientError):
    """An RFC 6749 section 5.2 error from the authorization server (`invalid_grant`, `invalid_client`...)."""

    def __init__(self, error: str, description: str = "", status: int = 400, retry_after: float | None = None) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
        self.status = status
        self.retry_after = retry_after


class TransportError(ClientError):
    """The server could not be reached, or the connection dropped, after the retries the policy allows."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    412: PreconditionFailed,
    413: PayloadTooLarge,
    422: ValidationError,
    429: RateLimited,
    503: ServiceUnavailable,
}


def api_error(status: int, body: Any, reason: str, retry_after: float | None) -> ApiError:
    """The exception for an error answer: the problem's members when the body is one, else the status line."""
    problem: dict[str, Any] = body if isinstance(body, dict) else {}
    kind = _BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
    return kind(
        status,
        str(problem.get("title") or reason),
        str(problem.get("detail") or ""),
        str(problem.get("type") or "about:blank"),
        problem,
        retry_after,
    )
