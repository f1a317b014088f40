"""RFC 8628 at the site root: the device authorization endpoint and the /auth/device page (user code,
then sign-in and consent on one form, or consent alone in a browser with a sign-in session, then
"return to your device"). The page shares the sign-in
page's rendering (CSP, no-store) and its CSRF double-submit cookie rule."""

from __future__ import annotations

import secrets
from collections.abc import Mapping

from aiohttp import web
from authlib.oauth2.base import OAuth2Error

from service.auth import device, grants, principals, second_factor, sessions
from service.auth.routes import NO_STORE, _error_page, _page, form_parameters, oauth_endpoint
from service.bodies import BodyError, read_form
from service.context import Context
from service.errors import Conflict, ServiceUnavailable, TooManyRequests
from service.ratelimit import client_address
from service.responses import json_response
from service.scopes import SCOPES
from service.users.repository import UserDocument

device_routes = web.RouteTableDef()
CSRF_COOKIE = "device_csrf"
PAGE = "/auth/device"


@device_routes.post("/auth/oauth2/device_authorization")
@oauth_endpoint
async def device_authorization(request: web.Request) -> web.Response:
    ctx = Context.of(request)
    params = await form_parameters(request)
    client = await grants.authenticate_client(ctx, params, request.headers.get("Authorization"))
    return json_response(await device.start(ctx, client, params), headers=NO_STORE)


def _device_page(request: web.Request, csrf: str, context: Mapping[str, object], status: int = 200) -> web.Response:
    defaults = {"csrf": csrf, "error": None, "user_code": "", "step": "code"}
    response = _page(request, "device.html", {**defaults, **context}, status=status)
    response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="Strict", path=PAGE, max_age=1800)
    return response


@device_routes.get(PAGE)
async def device_page(request: web.Request) -> web.Response:
    typed = request.query.get("user_code", "")[:32]
    return _device_page(request, secrets.token_urlsafe(32), {"user_code": typed})


@device_routes.post(PAGE)
async def device_decision(request: web.Request) -> web.Response:
    try:
        form, _ = grants.single_values(await read_form(request))
    except BodyError as exc:
        return _error_page(request, exc.detail or "The form could not be read.", exc.status)
    cookie, sent = request.cookies.get(CSRF_COOKIE, ""), form.get("csrf_token", "")
    if not cookie or not sent or not secrets.compare_digest(cookie.encode(), sent.encode()):
        return _error_page(request, "The form has expired or did not come from this page; start again.", 403)
    ctx, typed = Context.of(request), form.get("user_code", "")[:32]
    try:
        found = await device.pending(ctx, client_address(request, ctx.settings.trusted_proxies), typed)
    except TooManyRequests as exc:
        return _error_page(request, exc.detail or "Too many wrong codes; try again later.", 429)
    except device.WrongUserCode:
        error = "That code is wrong, expired or already used; check your device."
        return _device_page(request, cookie, {"user_code": typed, "error": error}, 400)
    client = await principals.client(ctx.cache, ctx.db, found["client_id"])
    consent: dict[str, object] = {
        "step": "consent",
        "user_code": device.display(device.normalize(typed) or typed),
        "client_name": (client.get("client_name") if client else None) or found["client_id"],
        "scopes": [(scope, SCOPES.get(scope, scope)) for scope in found["scopes"]],
    }
    signed = await sessions.signed_in(ctx, request)
    if "username" not in form and "signin_token" not in form and form.get("step") != "session":
        if signed is not None:  # the code was entered in a signed-in browser: consent as that user
            return _device_page(request, cookie, {**consent, "step": "session", "username": signed[1]["username"]})
        return _device_page(request, cookie, consent)  # sign-in and consent
    if form.get("action") != "approve":
        await device.decide(ctx, found, None)
        return _done(request, approved=False)
    if form.get("step") == "session":
        if signed is None:  # the session ended meanwhile
            return _device_page(request, cookie, {**consent, "error": "Your session has ended; sign in."}, 400)
        await sessions.signed_in_to(ctx, signed[0], found["client_id"])
        return await _decided(request, found, signed[1])
    binding = device.DeviceSignIn(dict(client or {"_id": found["client_id"]}), found["_id"])
    if "signin_token" in form:  # the second step: a code after a right password
        return await _second_step(request, cookie, consent, binding, (found, form))
    try:
        user = await grants.authenticate_user(ctx, form["username"], form.get("password", ""), found["client_id"])
    except (TooManyRequests, ServiceUnavailable) as exc:
        return _device_page(request, cookie, {**consent, "error": exc.detail or "Try again later."}, exc.status)
    except OAuth2Error as exc:
        return _device_page(request, cookie, {**consent, "error": exc.description}, 400)
    if second_factor.required(user):  # the password was right; a code completes the sign-in
        pending = await second_factor.start(ctx, binding, user)
        return _device_page(request, cookie, {**consent, "step": "otp", "signin_token": pending})
    return await _signed_in(request, found, user, second_factor.PASSWORD)


async def _signed_in(
    request: web.Request, found: device.DeviceDocument, user: UserDocument, amr: tuple[str, ...]
) -> web.Response:
    """A sign-in on the page approves the device and starts a session in this browser (single sign-on
    for what it opens next), which notes the device's client for logout."""
    ctx = Context.of(request)
    value, session = await sessions.start(ctx, request, user, amr)
    await sessions.signed_in_to(ctx, session, found["client_id"])
    response = await _decided(request, found, user)
    sessions.set_cookie(ctx, response, value)
    return response


async def _decided(request: web.Request, found: device.DeviceDocument, user: UserDocument) -> web.Response:
    if not await device.decide(Context.of(request), found, user):
        return _error_page(request, "This request was already decided or has expired; start again on your device.")
    return _done(request, approved=True)


async def _second_step(
    request: web.Request,
    cookie: str,
    consent: dict[str, object],
    binding: device.DeviceSignIn,
    sent: tuple[device.DeviceDocument, dict[str, str]],
) -> web.Response:
    """The pending sign-in from the form and a right TOTP or recovery code approve the device."""
    (found, form), ctx, pending = sent, Context.of(request), sent[1]["signin_token"]
    otp_page = {**consent, "step": "otp", "signin_token": pending}
    try:
        user = await second_factor.finish(ctx, binding, pending, form.get("otp", ""))
    except second_factor.StartAgain as exc:
        return _device_page(request, cookie, {**consent, "error": str(exc)}, 400)
    except (TooManyRequests, ServiceUnavailable, Conflict) as exc:
        return _device_page(request, cookie, {**otp_page, "error": exc.detail or "Try again later."}, exc.status)
    if user is None:
        return _device_page(request, cookie, {**otp_page, "error": "The code is wrong or was already used."}, 400)
    return await _signed_in(request, found, user, second_factor.PASSWORD_AND_OTP)


def _done(request: web.Request, *, approved: bool) -> web.Response:
    response = _page(request, "device.html", {"step": "done", "approved": approved})
    response.del_cookie(CSRF_COOKIE, path=PAGE)
    return response
