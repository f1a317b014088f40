"""Bearer tokens (RFC 6750): the API sub-app's middleware that resolves a token into the caller,
enforces each route's `@requires` declaration and spends the caller's per-token budget, before anything
else looks at the request."""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler

from service.auth import dpop
from service.auth.dpop import DPoPUnauthorized
from service.auth.grants import API_PATH, api_identifier
from service.auth.principals import live_token
from service.cache import PRINCIPAL_CACHE
from service.caller import CALLER, Principal
from service.config import SETTINGS
from service.crypto import hash_secret
from service.db import MONGO
from service.errors import BadRequest, Forbidden, InsufficientScope, Unauthorized
from service.ratelimit import API_RATE_LIMITER, over_api_budget
from service.security import Requirement


async def authenticate(
    request: web.Request, form_token: str | None = None, resource: str | None = None
) -> Principal | None:
    """Resolve the bearer token, if any, into a Principal; 401 for a bad one. `form_token`: one sent in a
    form body (RFC 6750 2.2, where an endpoint accepts it); sending it both ways is refused (RFC 6750 2).
    `resource`: the protected resource asking; a token whose audience (RFC 8707) does not name it is
    refused (tokens stored before audiences existed have none: they were issued for the API)."""
    return await _authenticate(request, request.config_dict, form_token, resource)


async def _authenticate(
    request: web.Request, state: Any, form_token: str | None, resource: str | None
) -> Principal | None:
    header = request.headers.get("Authorization")
    if header is None and form_token is None:
        return None
    if header is not None and form_token is not None:
        raise BadRequest("Send the access token one way only (RFC 6750 2).")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "dpop" and token.strip():
            return _principal(await _dpop_token(request, state, token.strip()), resource)
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("The Authorization header must be 'Bearer <token>'.")
    else:
        token = form_token or ""
    digest = hash_secret(token.strip())
    found = await live_token(state[PRINCIPAL_CACHE], state[MONGO].db, digest)
    if found is None:
        raise Unauthorized("The access token is invalid, expired or revoked.")
    if "jkt" in found:  # RFC 9449 7.2: a DPoP-bound token is never accepted as a bearer token
        raise DPoPUnauthorized("This access token is DPoP-bound: send it as 'DPoP <token>' with a DPoP proof.")
    return _principal(found, resource)


async def _dpop_token(request: web.Request, state: Any, token: str) -> dict[str, Any]:
    """RFC 9449 7.1: `Authorization: DPoP <token>` with a proof for this request (method, URI without
    query, `ath` of the token) signed by the key the token is bound to; errors in a `DPoP` challenge."""
    found = await live_token(state[PRINCIPAL_CACHE], state[MONGO].db, hash_secret(token))
    if found is None:
        raise DPoPUnauthorized("The access token is invalid, expired or revoked.")
    if "jkt" not in found:
        raise DPoPUnauthorized("This access token is not DPoP-bound: send it as 'Bearer <token>'.")
    proofs = request.headers.getall("DPoP", [])
    if not proofs:
        raise DPoPUnauthorized("A DPoP-bound access token needs a DPoP proof.", error="invalid_dpop_proof")
    uri = f"{state[SETTINGS].public_url or f'{request.scheme}://{request.host}'}{request.rel_url.raw_path}"  # as sent
    try:
        await dpop.verify(state[dpop.DPOP], proofs, (request.method, uri), token, found["jkt"])
    except dpop.ProofError as exc:
        raise DPoPUnauthorized.of(exc) from None
    if state[dpop.DPOP].demands_nonce(at_api=True):  # RFC 9449 9: the nonce to use next, on the answer
        request[dpop.NEXT_NONCE] = await state[dpop.DPOP].nonce()
    return found


def _principal(found: dict[str, Any], resource: str | None) -> Principal:
    audience = found.get("aud")
    if resource is not None and audience is not None and not _names(audience, resource):
        raise Unauthorized("The access token is not meant for this API (its audience, RFC 8707).")
    return Principal(
        user=found["user"], scopes=frozenset(found["scopes"]), client_id=found["client_id"], token_id=found["_id"]
    )


@web.middleware
async def bearer_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Enforce the route's `@requires` before anything else looks at the request."""
    requirement: Requirement | None = getattr(request.match_info.handler, "__requirement__", None)
    if requirement is None:
        return await handler(request)
    refused = None
    state = request.config_dict  # once: each read builds a chain over the apps, and this runs on every API request
    public_url = state[SETTINGS].public_url
    try:
        principal = await _authenticate(request, state, None, _api_resource(public_url))
        if principal is None and not requirement.optional:
            raise Unauthorized("A bearer token is required.", error=None)
    except (Unauthorized, DPoPUnauthorized) as exc:  # RFC 9728 5.1: where to learn how to get a token
        origin = public_url or f"{request.scheme}://{request.host}"
        challenge = exc.headers.get("WWW-Authenticate", 'Bearer realm="api"')
        exc.headers["WWW-Authenticate"] = f'{challenge}, resource_metadata="{resource_metadata_url(origin)}"'
        raise
    if principal is not None:
        missing = tuple(scope for scope in requirement.scopes if scope not in principal.scopes)
        if missing:
            raise InsufficientScope(requirement.scopes)
        if requirement.admin and not principal.is_admin:
            raise Forbidden("Only administrators may do this.")
        request[CALLER] = principal
        refused = over_api_budget(request, state[API_RATE_LIMITER], principal.token_id)
    response = await handler(request) if refused is None else refused
    if "DPoP" in request.headers:  # only a DPoP request may have a nonce to hand out
        nonce = request.get(dpop.NEXT_NONCE)
        if nonce is not None and not response.prepared:
            response.headers["DPoP-Nonce"] = nonce
    return response


def resource_metadata_url(issuer: str) -> str:
    """RFC 9728 3.1: the API's protected resource metadata, its identifier's path after the well-known part."""
    return f"{issuer}/.well-known/oauth-protected-resource/api/v1"


@lru_cache(maxsize=8)
def _api_resource(public_url: str | None) -> str:
    """The API's identifier as the audience check compares it (made once, not on every request)."""
    return api_identifier(public_url) if public_url else API_PATH


@lru_cache(maxsize=1024)
def _path_of(uri: str) -> str:
    return urlsplit(uri).path


def _names(audience: list[str], resource: str) -> bool:
    """Whether a token's audience names the API: its identifier under PUBLIC_URL; without PUBLIC_URL the
    server's own names are unknown (the issuer is whatever host a request used), so by path alone
    (parsed once per distinct audience: this runs on every API request)."""
    if resource in audience:
        return True
    return resource == API_PATH and any(_path_of(value) == API_PATH for value in audience)
