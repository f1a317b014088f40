"""OAuth2 endpoints (root app) and /api/v1/auth/oauth2_clients (API sub-app): thin handlers. Together
(a little over 300 lines) because they share the RFC 6749 error shape and the client resource's rules."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from aiohttp_apigami import docs, json_schema, querystring_schema
from authlib.common.urls import add_params_to_uri
from authlib.oauth2.base import OAuth2Error

from service import keys, metrics
from service.auth import authorize, clients, dpop, grants, introspection, oidc, second_factor, sessions
from service.auth.bearer import authenticate
from service.auth.schemas import (
    CreatedOAuth2ClientSchema,
    CreateOAuth2ClientSchema,
    ListOAuth2ClientsSchema,
    OAuth2ClientPatchOperationSchema,
    OAuth2ClientSchema,
    RotatedSecretSchema,
    web_origin,
)
from service.auth.signing import KEYRING
from service.bodies import BodyError, read_form
from service.context import Context
from service.db import is_unavailable_error
from service.errors import Conflict, InsufficientScope, ServiceUnavailable, TooManyRequests, Unauthorized
from service.openapi import IF_MATCH, responds
from service.pagination import PageRequest
from service.responses import if_match_version, json_response, page, with_etag
from service.scopes import SCOPES
from service.security import principal, requires
from service.users.repository import UserDocument

oauth_routes = web.RouteTableDef()
routes = web.RouteTableDef()

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
CLIENT = OAuth2ClientSchema()
CLIENTS = OAuth2ClientSchema(many=True)
CREATED_CLIENT = CreatedOAuth2ClientSchema()
CLIENT_PATCH = OAuth2ClientPatchOperationSchema(many=True)
ROTATED_SECRET = RotatedSecretSchema()


async def form_parameters(request: web.Request) -> dict[str, str]:
    """The OAuth2 parameters of a form request (RFC 6749 needs form encoding), read by the guarded reader."""
    return grants.merge_parameters(await read_form(request), request.query.items())


def _refusal(exc: TooManyRequests | ServiceUnavailable) -> web.Response:
    """A refusal to work now, in RFC 6749 shape: `slow_down` (429) or `temporarily_unavailable` (503)."""
    error = "slow_down" if exc.status == 429 else "temporarily_unavailable"
    return json_response({"error": error, "error_description": exc.detail}, status=exc.status, headers=exc.headers)


OAuthHandler = Callable[[web.Request], Awaitable[web.Response]]


def oauth_endpoint(handler: OAuthHandler) -> OAuthHandler:
    """RFC 6749 5.2 error bodies (not problem+json) and no caching for every OAuth2 endpoint."""

    async def wrapper(request: web.Request) -> web.Response:
        try:
            response = await handler(request)
        except OAuth2Error as exc:
            status, body, headers = exc()
            extra = {name: value for name, value in headers if name.lower() != "content-type"}
            response = json_response(body, status=status, headers=extra)
        except (TooManyRequests, ServiceUnavailable) as exc:  # throttled, or shed under load
            response = _refusal(exc)
        except BodyError as exc:  # a body that cannot be read: invalid_request, 400 (413 when too large)
            body = {"error": "invalid_request", "error_description": exc.detail}
            response = json_response(body, status=413 if exc.status == 413 else 400)
        except Exception as exc:
            if not is_unavailable_error(exc):
                raise
            metrics.DB_UNAVAILABLE.inc()
            response = _refusal(ServiceUnavailable())
        response.headers.update(NO_STORE)
        return response

    return wrapper


@oauth_routes.post("/auth/oauth2/token")
@oauth_endpoint
async def token(request: web.Request) -> web.Response:
    params = await form_parameters(request)  # (a grant evicts from the cache just what it retires or revokes)
    ctx = Context.of(request)
    proofs, proof = request.headers.getall("DPoP", []), None
    if proofs:  # RFC 9449 5: the proof is checked (and its jti claimed) before the grant runs
        proof = await dpop.verify(ctx[dpop.DPOP], proofs, (request.method, f"{ctx.issuer}{request.rel_url.raw_path}"))
    response = json_response(await grants.token(ctx, params, request.headers.get("Authorization"), proof))
    if proof is not None and ctx[dpop.DPOP].demands_nonce(at_api=False):
        response.headers["DPoP-Nonce"] = await ctx[dpop.DPOP].nonce()  # RFC 9449 8.2: the next one to use
    return response


@oauth_routes.post("/auth/oauth2/revoke")
@oauth_endpoint
async def revoke(request: web.Request) -> web.Response:
    params = await form_parameters(request)
    await introspection.revoke(
        Context.of(request), params, request.headers.get("Authorization")
    )  # evicts what it revokes
    return web.Response(status=200)


@oauth_routes.post("/auth/oauth2/introspect")
@oauth_endpoint
async def introspect(request: web.Request) -> web.Response:
    params = await form_parameters(request)
    result = await introspection.introspect(Context.of(request), params, request.headers.get("Authorization"))
    return json_response(result)


@oauth_routes.get("/.well-known/oauth-authorization-server")
async def server_metadata(request: web.Request) -> web.Response:
    ctx = Context.of(request)
    return json_response(introspection.metadata(ctx.issuer, ctx.settings.registration != "closed"))


@oauth_routes.get("/.well-known/oauth-protected-resource")
@oauth_routes.get("/.well-known/oauth-protected-resource/api/v1")
async def protected_resource_metadata(request: web.Request) -> web.Response:
    """RFC 9728 3: the API's metadata, at its identifier's path after the well-known part (and, for
    clients that look there first, without it: the API is the only resource)."""
    return json_response(introspection.resource_metadata(Context.of(request).issuer))


@oauth_routes.get("/.well-known/openid-configuration")
async def openid_configuration(request: web.Request) -> web.Response:
    ctx = Context.of(request)
    registration = ctx.settings.registration != "closed"
    return json_response(oidc.discovery(introspection.metadata(ctx.issuer, registration), ctx.issuer))


@oauth_routes.get("/auth/oauth2/jwks")
async def jwks(request: web.Request) -> web.Response:
    """The public signing keys (JWK Set); clients may cache them for a few minutes."""
    response = json_response(await Context.of(request)[KEYRING].jwks())
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@oauth_routes.route("*", "/auth/oauth2/userinfo")
async def userinfo(request: web.Request) -> web.Response:
    """OpenID Connect UserInfo (GET or POST): the claims the bearer token's scopes allow; RFC 6750 errors.
    The token comes in the Authorization header or, on a POST, as `access_token` in a form body."""
    if request.method not in ("GET", "POST"):
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
    form_token = None
    if request.method == "POST" and request.content_type == "application/x-www-form-urlencoded":
        form_token = dict(await read_form(request)).get("access_token") or None  # RFC 6750 2.2
    caller = await authenticate(request, form_token)
    if caller is None:
        raise Unauthorized("A bearer token is required.", error=None)
    if "openid" not in caller.scopes:
        raise InsufficientScope(("openid",))
    return json_response(oidc.user_claims(caller.user, caller.scopes), headers=NO_STORE)


# --- /api/v1/auth/oauth2_clients -------------------------------------------------------------


@routes.get("/auth/oauth2_clients/", allow_head=False)
@docs(tags=["auth"], summary="List OAuth2 clients", operation_id="listOAuth2Clients")
@requires("auth:read", who="your own clients; admins may pass user_id")
@querystring_schema(ListOAuth2ClientsSchema)
@responds(CLIENTS, headers=("X-Total-Count", "Link"), errors=(422,))
async def list_clients(request: web.Request) -> web.Response:
    query = request[keys.query]
    found = await clients.list_clients(
        Context.of(request), principal(request), query.get("user_id"), PageRequest.from_query(query)
    )
    return page(request, CLIENTS.dump(found.items), found)


@routes.post("/auth/oauth2_clients/")
@docs(
    tags=["auth"],
    summary="Register an OAuth2 client",
    description="`grant_types` defaults to authorization_code and refresh_token (and client_credentials for a "
    "confidential client); asking for `password` or `first_party` without being an administrator is 403.",
    operation_id="createOAuth2Client",
)
@requires("auth:write", who="any active user (the password grant and first_party: admins only)")
@json_schema(CreateOAuth2ClientSchema)
@responds(CREATED_CLIENT, 201, description="Created", headers=("Location", "ETag"), errors=(400, 409, 413, 415, 422))
async def create_client(request: web.Request) -> web.Response:
    client, secret = await clients.register_client(Context.of(request), principal(request), request[keys.body])
    body = CREATED_CLIENT.dump({**client, **({"client_secret": secret} if secret else {})})
    return with_etag(body, client, status=201, Location=f"/api/v1/auth/oauth2_clients/{client['_id']}", **NO_STORE)


@routes.get("/auth/oauth2_clients/{client_id}", allow_head=False)
@docs(tags=["auth"], summary="Get an OAuth2 client", operation_id="getOAuth2Client")
@requires("auth:read", who="the client's owner or an admin")
@responds(CLIENT, headers=("ETag",), errors=(404,))
async def get_client(request: web.Request) -> web.Response:
    client = await clients.get_visible_client(Context.of(request), principal(request), request.match_info["client_id"])
    return with_etag(CLIENT.dump(client), client)


@routes.patch("/auth/oauth2_clients/{client_id}")
@docs(
    tags=["auth"],
    summary="Change an OAuth2 client (RFC 6902 JSON Patch): name, URIs, scopes, grant types, DPoP binding",
    description="The password grant and `first_party` may be given by administrators only (403). Each value is "
    "validated as at registration (422); a patch that would leave `default_scopes` outside `allowed_scopes`, or "
    "give a public client `client_credentials`, conflicts with the client's state (409).",
    operation_id="patchOAuth2Client",
    parameters=[IF_MATCH],
)
@requires("auth:write", who="the client's owner or an admin")
@json_schema(CLIENT_PATCH)
@responds(CLIENT, headers=("ETag",), errors=(400, 404, 409, 412, 413, 415, 422))
async def patch_client(request: web.Request) -> web.Response:
    ctx = Context.of(request)
    client = await clients.patch_client(
        ctx, principal(request), request.match_info["client_id"], request[keys.body], if_match_version(request)
    )
    ctx.cache.invalidate()  # the client's new rules apply here at once (other processes follow the stream)
    return with_etag(CLIENT.dump(client), client)


@routes.post("/auth/oauth2_clients/{client_id}/secret")
@docs(
    tags=["auth"],
    summary="Rotate a confidential client's secret (the previous one works for CLIENT_SECRET_OVERLAP seconds)",
    operation_id="rotateOAuth2ClientSecret",
)
@requires("auth:write", who="the client's owner or an admin")
@responds(ROTATED_SECRET, headers=("ETag",), errors=(404, 409))
async def rotate_client_secret(request: web.Request) -> web.Response:
    ctx = Context.of(request)
    client, secret, expires = await clients.rotate_secret(ctx, principal(request), request.match_info["client_id"])
    ctx.cache.invalidate()
    body = ROTATED_SECRET.dump(
        {"client_id": client["_id"], "client_secret": secret, "previous_secret_expires_at": expires}
    )
    return with_etag(body, client, status=200, **NO_STORE)


@routes.delete("/auth/oauth2_clients/{client_id}")
@docs(
    tags=["auth"],
    summary="Delete an OAuth2 client (its tokens stop working)",
    operation_id="deleteOAuth2Client",
    parameters=[IF_MATCH],
)
@requires("auth:write", who="the client's owner or an admin")
@responds(None, 204, description="Deleted", errors=(400, 404, 412))
async def delete_client(request: web.Request) -> web.Response:
    ctx = Context.of(request)
    await clients.delete_client(ctx, principal(request), request.match_info["client_id"], if_match_version(request))
    ctx.cache.invalidate()  # the client and its tokens, here at once (other processes follow the stream)
    return web.Response(status=204)


# --- /auth/oauth2/authorize: sign-in and consent page ----------------------------------------

CSRF_COOKIE = "oauth_csrf"


def _page(
    request: web.Request, template: str, context: dict[str, Any], *, status: int = 200, form_target: str | None = None
) -> web.Response:
    """A page from service/templates (autoescaped), never cached, under a CSP that allows no script."""
    response = aiohttp_jinja2.render_template(template, request, context, status=status)
    response.headers.update(NO_STORE)
    # Chromium applies form-action to the redirect after the POST, so allow the client's origin too.
    origin = web_origin(form_target) if form_target else None
    target = f" {origin}" if origin else ""
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; style-src 'unsafe-inline'; form-action 'self'{target}; frame-ancestors 'none'"
    )
    return response


def _error_page(request: web.Request, message: str, status: int = 400) -> web.Response:
    return _page(request, "error.html", {"message": message}, status=status)


def _consent_page(
    request: web.Request,
    auth: authorize.AuthorizationRequest,
    csrf: str,
    error: str | None = None,
    status: int = 200,
    *,
    unverified: bool = False,
) -> web.Response:
    context = {
        "client_id": auth.client["_id"],
        "client_name": auth.client.get("client_name") or auth.client["_id"],
        "scopes": [(scope, SCOPES.get(scope, scope)) for scope in auth.scopes],
        "hidden": list(auth.as_form().items()),
        "csrf": csrf,
        "error": error,
        "unverified": unverified,  # REQUIRE_VERIFIED_EMAIL refused a right password: offer the mail again
    }
    response = _page(request, "authorize.html", context, status=status, form_target=auth.redirect_uri)
    _set_csrf(response, csrf)
    return response


def _redirect(request: web.Request, uri: str, params: list[tuple[str, str]]) -> web.Response:
    """Back to the client, always with `iss` (RFC 9207); 303 after a POST so the browser GETs the client."""
    location = add_params_to_uri(uri, [*params, ("iss", Context.of(request).issuer)])
    status = 303 if request.method == "POST" else 302
    response = web.Response(status=status, headers={"Location": location, **NO_STORE})
    response.del_cookie(CSRF_COOKIE, path="/auth/oauth2/authorize")
    return response


async def _checked_request(
    request: web.Request, pairs: Iterable[tuple[str, str]]
) -> authorize.AuthorizationRequest | web.Response:
    """The validated authorization request, or the response that refuses it (page or redirect)."""
    params, repeated = grants.single_values(pairs)
    try:
        return await authorize.check_authorization_request(Context.of(request), params, repeated)
    except authorize.AuthorizePageError as exc:
        return _error_page(request, str(exc))
    except OAuth2Error as exc:
        return _redirect(request, exc.redirect_uri, exc.get_body())


@oauth_routes.get("/auth/oauth2/authorize")
async def authorize_page(request: web.Request) -> web.Response:
    """With a live session and consent, straight back to the client (single sign-on); else the sign-in
    page or the consent screen; `prompt`, `max_age` and `id_token_hint` decide (authorize.next_step)."""
    checked = await _checked_request(request, request.query.items())
    if isinstance(checked, web.Response):
        return checked
    ctx, csrf = Context.of(request), secrets.token_urlsafe(32)
    signed = await sessions.signed_in(ctx, request)
    try:
        step = await authorize.next_step(ctx, checked, signed)
    except OAuth2Error as exc:  # prompt=none could not be honoured, or a bad id_token_hint
        return _redirect(request, exc.redirect_uri, exc.get_body())
    if signed is None or step is authorize.Step.SIGN_IN:
        return _consent_page(request, checked, csrf)
    if step is authorize.Step.CONSENT:
        return _consent_screen(request, checked, csrf)
    return await _issue(request, checked, signed)


@oauth_routes.post("/auth/oauth2/authorize")
async def authorize_decision(request: web.Request) -> web.Response:
    try:
        pairs = await read_form(request)
    except BodyError as exc:
        return _error_page(request, exc.detail or "The form could not be read.", exc.status)
    form, _ = grants.single_values(pairs)
    cookie, sent = request.cookies.get(CSRF_COOKIE, ""), form.get("csrf_token", "")
    if not cookie or not sent or not secrets.compare_digest(cookie.encode(), sent.encode()):
        return _error_page(request, "The form has expired or did not come from this page; start again.", 403)
    checked = await _checked_request(request, pairs)
    if isinstance(checked, web.Response):
        return checked
    state = [("state", checked.state)] if checked.state is not None else []
    if form.get("action") != "approve":
        return _redirect(request, checked.redirect_uri, [("error", "access_denied"), *state])
    ctx = Context.of(request)
    if form.get("step") == "consent":  # the consent screen of a signed-in user
        signed = await sessions.signed_in(ctx, request)
        if signed is None:  # the session ended meanwhile
            return _consent_page(request, checked, cookie, "Your session has ended; sign in again.", 400)
        return await _issue(request, checked, signed)
    if form.get("signin_token"):  # the second step: a code after a right password
        return await _second_step(request, checked, form, cookie)
    try:
        user = await grants.authenticate_user(
            ctx, form.get("username", ""), form.get("password", ""), checked.client["_id"]
        )
    except (TooManyRequests, ServiceUnavailable) as exc:
        return _consent_page(request, checked, cookie, exc.detail or "Try again later.", exc.status)
    except grants.UnverifiedEmail as exc:
        return _consent_page(request, checked, cookie, exc.description, 400, unverified=True)
    except OAuth2Error as exc:
        return _consent_page(request, checked, cookie, exc.description, 400)
    if second_factor.required(user):  # the password was right; a code completes the sign-in
        pending = await second_factor.start(ctx, checked, user)
        return _code_page(request, checked, cookie, pending)
    return await _sign_in(request, checked, user, second_factor.PASSWORD)


async def _sign_in(
    request: web.Request, checked: authorize.AuthorizationRequest, user: UserDocument, amr: tuple[str, ...]
) -> web.Response:
    """A completed sign-in on the page (which showed the scopes: approving it is consent): a new session,
    its cookie, and the code."""
    ctx = Context.of(request)
    value, session = await sessions.start(ctx, request, user, amr)
    response = await _issue(request, checked, (session, user))
    sessions.set_cookie(ctx, response, value)
    return response


async def _issue(
    request: web.Request, checked: authorize.AuthorizationRequest, signed: authorize.SignedIn
) -> web.Response:
    code = await authorize.issue_code(Context.of(request), checked, signed)
    state = [("state", checked.state)] if checked.state is not None else []
    return _redirect(request, checked.redirect_uri, [("code", code), *state])


def _consent_screen(request: web.Request, auth: authorize.AuthorizationRequest, csrf: str) -> web.Response:
    """A signed-in user is asked to allow a client (not first-party) scopes it was not yet granted."""
    context = {
        "client_id": auth.client["_id"],
        "client_name": auth.client.get("client_name") or auth.client["_id"],
        "scopes": [(scope, SCOPES.get(scope, scope)) for scope in auth.scopes],
        "hidden": [*auth.as_form().items(), ("step", "consent")],
        "csrf": csrf,
    }
    response = _page(request, "consent.html", context, form_target=auth.redirect_uri)
    _set_csrf(response, csrf)
    return response


def _set_csrf(response: web.Response, csrf: str) -> None:
    response.set_cookie(
        CSRF_COOKIE, csrf, httponly=True, samesite="Strict", path="/auth/oauth2/authorize", max_age=1800
    )


def _code_page(
    request: web.Request,
    auth: authorize.AuthorizationRequest,
    csrf: str,
    signin_token: str,
    error: tuple[str, int] | None = None,
) -> web.Response:
    """The sign-in page's second step: the code field, with the pending sign-in (never the password) in
    the form; `error` is a message and the page's status."""
    context = {
        "client_id": auth.client["_id"],
        "client_name": auth.client.get("client_name") or auth.client["_id"],
        "scopes": [(scope, SCOPES.get(scope, scope)) for scope in auth.scopes],
        "hidden": [*auth.as_form().items(), ("signin_token", signin_token)],
        "csrf": csrf,
        "error": error[0] if error else None,
        "second_step": True,
    }
    status = error[1] if error else 200
    response = _page(request, "authorize.html", context, status=status, form_target=auth.redirect_uri)
    _set_csrf(response, csrf)
    return response


async def _second_step(
    request: web.Request, checked: authorize.AuthorizationRequest, form: dict[str, str], cookie: str
) -> web.Response:
    """The pending sign-in from the form and a right code complete the sign-in: a code for the client."""
    ctx, pending = Context.of(request), form["signin_token"]
    try:
        user = await second_factor.finish(ctx, checked, pending, form.get("otp", ""))
    except second_factor.StartAgain as exc:
        return _consent_page(request, checked, cookie, str(exc), 400)
    except (TooManyRequests, ServiceUnavailable, Conflict) as exc:
        return _code_page(request, checked, cookie, pending, (exc.detail or "Try again later.", exc.status))
    if user is None:
        return _code_page(request, checked, cookie, pending, ("The code is wrong or was already used.", 400))
    return await _sign_in(request, checked, user, second_factor.PASSWORD_AND_OTP)
