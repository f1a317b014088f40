"""Cross-cutting request handling: request ids, security headers, body limits and input validation."""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import MutableMapping

from aiohttp import hdrs, web, web_protocol
from aiohttp.typedefs import Handler
from aiohttp.web_request import BaseRequest
from aiohttp_apigami.validation import ValidationSchema
from opentelemetry import trace

from service import keys
from service.bodies import read_json
from service.config import SETTINGS
from service.errors import BadRequest, problem_response
from service.log import request_id_var
from service.schemas import load

# Unique without a syscall per request: a random per-process prefix and a counter.
_PROCESS_PREFIX = uuid.uuid4().hex[:16]
_request_ids = (f"{_PROCESS_PREFIX}{n:016x}" for n in itertools.count(1))
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
_HTML_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_API_CSP = "default-src 'none'; frame-ancestors 'none'"


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: give the request an id (the caller's X-Request-ID when sane) for every log line, and put
    it and the security headers on every response, errors included. One layer, since it runs per request."""
    incoming = request.headers.get("X-Request-ID", "")
    request_id = incoming if _REQUEST_ID.fullmatch(incoming) else next(_request_ids)
    request[keys.request_id] = request_id
    trace.get_current_span().set_attribute("http.request.id", request_id)
    token = request_id_var.set(request_id)
    try:
        try:
            limit = request.config_dict[SETTINGS].max_body_size
            if request.content_length is not None and request.content_length > limit:
                # Refused before anything reads it; chunked bodies hit aiohttp's own client_max_size.
                response: web.StreamResponse = problem_response(413, "The request body is too large.")
            else:
                response = await handler(request)
        except web.HTTPException as exc:  # redirects and the like, which the problem middleware lets through
            exc.headers["X-Request-ID"] = request_id
            raise
    finally:
        request_id_var.reset(token)
    headers = response.headers
    headers["X-Request-ID"] = request_id
    if hdrs.AUTHORIZATION in request.headers:  # personal data: no shared or private cache may keep it
        headers["Cache-Control"] = "no-store"
    # A FileResponse learns its content type only when sent, so static files get the page policy.
    is_html = isinstance(response, web.FileResponse) or (response.content_type or "").startswith("text/html")
    _security_headers(headers, is_html)
    return response


def _security_headers(headers: MutableMapping[str, str], is_html: bool) -> None:
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Content-Security-Policy", _HTML_CSP if is_html else _API_CSP)


_aiohttp_error_page = web_protocol.RequestHandler.handle_error


def _problem_error_page(
    self: web_protocol.RequestHandler,
    request: BaseRequest,
    status: int = 500,
    exc: BaseException | None = None,
    message: str | None = None,
) -> web.StreamResponse:
    """aiohttp's own answer to a request it cannot parse (a bad header, a broken request line), which no
    middleware sees: problem+json with the security headers, echoing nothing the client sent."""
    _aiohttp_error_page(self, request, status, exc, message)  # it logs, and refuses once a response went out
    response = problem_response(status, "The request is malformed." if status < 500 else None)
    _security_headers(response.headers, is_html=False)
    response.force_close()
    return response


def harden_error_pages() -> None:
    """Process-wide, like the Server header: aiohttp has no setting for its low-level error pages."""
    web_protocol.RequestHandler.handle_error = _problem_error_page  # type: ignore[method-assign]


@web.middleware
async def validation_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Parse and validate what the route declared with apigami's decorators; runs after authentication."""
    schemas: list[ValidationSchema] = getattr(request.match_info.handler, "__schemas__", [])
    for declared in schemas:
        if declared.location == "json":
            body = await read_json(request)
            if declared.schema.many and not (
                body and isinstance(body, list) and all(isinstance(i, dict) for i in body)
            ):
                raise BadRequest("The body must be a non-empty JSON array of objects.")
            request[keys.body] = load(declared.schema, body)
        elif declared.location == "querystring":
            request[keys.query] = load(declared.schema, {k: request.query.getone(k) for k in request.query})
        else:  # pragma: no cover - a programming error, caught by the route tests
            raise RuntimeError(f"unsupported schema location {declared.location}")
    return await handler(request)
