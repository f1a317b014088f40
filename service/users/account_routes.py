"""Email verification and password reset: the API (/api/v1/users/me/email-verification,
/api/v1/auth/email-verification, /api/v1/auth/password-reset[/confirm]) and the HTML pages a mailed link
opens (/auth/email/verify, /auth/email/resend, /auth/password/forgot, /auth/password/reset). Thin
handlers: the rules live in users.verification and users.reset.

The pages' forms are protected by a double-submit cookie (SameSite=Strict, scoped to the page's path);
a GET never uses a token (mail scanners open links), only the POST of the page's one button does.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from aiohttp_apigami import docs, json_schema

from service import keys
from service.bodies import read_form
from service.context import Context
from service.errors import ApiError, ValidationFailed
from service.openapi import responds
from service.ratelimit import client_address, per_address_limit
from service.responses import json_response
from service.schemas import load
from service.security import principal, requires
from service.users import reset, verification
from service.users.schemas import AcceptedSchema, MailTokenSchema, PasswordResetRequestSchema, PasswordResetSchema

routes = web.RouteTableDef()  # under /api/v1
pages = web.RouteTableDef()  # at the site root

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
ACCEPTED = AcceptedSchema()
RESET_REQUEST = PasswordResetRequestSchema()
RESET = PasswordResetSchema()
VERIFICATION_SENT = "A verification link is on its way to your address."
RESEND_ACCEPTED = "If an account with an unverified address has this one, a new verification link is on its way."
ANYONE = "**Who:** anyone{}. **Scopes:** none (no token needed)."


def _address(request: web.Request) -> str:
    return client_address(request, Context.of(request).settings.trusted_proxies)


# --- API ----------------------------------------------------------------------------------------


@routes.post("/users/me/email-verification")
@docs(
    tags=["users"],
    summary="Send (again) a link that verifies your email address",
    description=(
        "Queues a mail with a single-use link (valid `EMAIL_TOKEN_TTL` seconds, default 24 h) to your address. "
        "At most 3 verification mails an hour per account, the sign-up's included (429 with `Retry-After` "
        "beyond); 409 when the address is verified already."
    ),
    operation_id="requestEmailVerification",
)
@requires("users:write", who="the user themself")
@responds(ACCEPTED, 202, description="Accepted: the mail is queued", errors=(409, 429))
async def request_email_verification(request: web.Request) -> web.Response:
    await verification.resend(Context.of(request), principal(request))
    return json_response({"detail": VERIFICATION_SENT}, status=202, headers=NO_STORE)


@routes.post("/auth/email-verification")
@per_address_limit
@docs(
    tags=["users"],
    summary="Verify an email address with the token of a mailed link",
    description=(
        "204: the address the link was mailed to is verified (if it is still the user's). A used, expired, "
        "unknown or altered token is 400, with the same detail whatever the reason.\n\n"
        + ANYONE.format(" with the mail's token")
    ),
    operation_id="verifyEmail",
    security=[],
)
@json_schema(MailTokenSchema)
@responds(None, 204, description="Verified", errors=(400, 422, 429))
async def verify_email(request: web.Request) -> web.Response:
    await verification.confirm(Context.of(request), request[keys.body]["token"])
    return web.Response(status=204, headers=NO_STORE)


@routes.post("/auth/password-reset")
@per_address_limit
@docs(
    tags=["users"],
    summary="Ask for a password reset link by mail",
    description=(
        "Always 202 with the same body, after the same work, whether or not the address has an account (a "
        "link valid `RESET_TOKEN_TTL` seconds, default 30 minutes, goes to an active account's address; a "
        "newer one voids it). At most 3 requests an hour per address asked for and 10 an hour per client "
        "address: 429 with `Retry-After` beyond (counted whether or not the address has an account).\n\n"
        + ANYONE.format("")
    ),
    operation_id="requestPasswordReset",
    security=[],
)
@json_schema(PasswordResetRequestSchema)
@responds(ACCEPTED, 202, description="Accepted (whether or not the address has an account)", errors=(422, 429))
async def request_password_reset(request: web.Request) -> web.Response:
    detail = await reset.request_reset(Context.of(request), request[keys.body]["email"], _address(request))
    return json_response({"detail": detail}, status=202, headers=NO_STORE)


@routes.post("/auth/password-reset/confirm")
@per_address_limit
@docs(
    tags=["users"],
    summary="Choose a new password with the token of a mailed reset link",
    description=(
        "204: the password is changed (sign-up rules: 8 to 1024 characters), every token of the user is "
        "revoked and every other reset link voided. A used, expired, unknown, altered or voided token (a "
        "newer reset mail, or any password change since) is 400 with the same detail whatever the reason.\n\n"
        + ANYONE.format(" with the mail's token")
    ),
    operation_id="confirmPasswordReset",
    security=[],
)
@json_schema(PasswordResetSchema)
@responds(None, 204, description="Password changed; every token of the user is revoked", errors=(400, 422, 429))
async def confirm_password_reset(request: web.Request) -> web.Response:
    body = request[keys.body]
    await reset.confirm(Context.of(request), body["token"], body["password"])
    return web.Response(status=204, headers=NO_STORE)


# --- HTML pages ---------------------------------------------------------------------------------

CSRF_COOKIE = "account_csrf"
CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"


def _page(request: web.Request, template: str, context: dict[str, Any], *, status: int = 200) -> web.Response:
    """A page from service/templates (autoescaped), never cached, under a CSP that allows no script."""
    response = aiohttp_jinja2.render_template(template, request, context, status=status)
    response.headers.update(NO_STORE)
    response.headers["Content-Security-Policy"] = CSP
    return response


def _form_page(request: web.Request, template: str, context: dict[str, Any], *, status: int = 200) -> web.Response:
    """A page with a POST form: its CSRF value in a hidden field and in a cookie for this path only."""
    csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
    response = _page(request, template, {**context, "csrf": csrf}, status=status)
    response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="Strict", path=request.path, max_age=1800)
    return response


def _message(request: web.Request, title: str, message: str, *, status: int = 200) -> web.Response:
    return _page(request, "account_message.html", {"title": title, "message": message}, status=status)


def _error(request: web.Request, exc: ApiError) -> web.Response:
    response = _page(request, "error.html", {"message": exc.detail or "The request failed."}, status=exc.status)
    response.headers.update({k: v for k, v in exc.headers.items() if k == "Retry-After"})
    return response


class _PageError(ApiError):
    status = 400


async def _posted(request: web.Request, names: Iterable[str]) -> dict[str, str]:
    """The form's fields `names` (absent: ""), after the CSRF check; _PageError (or a BodyError) when
    the body cannot be read, a field is sent twice or the form did not come from this page."""
    pairs = await read_form(request)
    wanted = {*names, "csrf_token"}
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in wanted:
            if name in form:
                raise _PageError(f"The field {name} was sent twice.")
            form[name] = value
    cookie, sent = request.cookies.get(CSRF_COOKIE, ""), form.pop("csrf_token", "")
    if not cookie or not sent or not secrets.compare_digest(cookie.encode(), sent.encode()):
        error = _PageError("The form has expired or did not come from this page; open the link again.")
        error.status = 403
        raise error
    return {name: form.get(name, "") for name in names}


def _field_error(exc: ValidationFailed) -> str:
    messages = [f"{field}: {' '.join(map(str, errors))}" for field, errors in exc.errors.items()]
    return "; ".join(messages) or (exc.detail or "Invalid values.")


@pages.get("/auth/email/verify")
async def verify_page(request: web.Request) -> web.Response:
    token = request.query.get("token", "")
    if not token:
        return _message(request, "Cannot continue", verification.INVALID_LINK, status=400)
    return _form_page(request, "email_verify.html", {"token": token})


@pages.post("/auth/email/verify")
async def verify_submit(request: web.Request) -> web.Response:
    try:
        form = await _posted(request, ("token",))
        load(MailTokenSchema(), form)
        await verification.confirm(Context.of(request), form["token"])
    except ValidationFailed:
        return _message(request, "Cannot continue", verification.INVALID_LINK, status=400)
    except ApiError as exc:
        return _error(request, exc)
    return _message(request, "Email address verified", "Thank you: your email address is verified.")


@pages.get("/auth/email/resend")
async def resend_page(request: web.Request) -> web.Response:
    return _form_page(request, "email_resend.html", {})


@pages.post("/auth/email/resend")
async def resend_submit(request: web.Request) -> web.Response:
    async def resend(ctx: Context, email: str, address: str) -> str:
        await verification.resend_by_email(ctx, email, address)
        return RESEND_ACCEPTED

    return await _email_form_submit(request, "email_resend.html", resend)


@pages.get("/auth/password/forgot")
async def forgot_page(request: web.Request) -> web.Response:
    return _form_page(request, "password_forgot.html", {})


@pages.post("/auth/password/forgot")
async def forgot_submit(request: web.Request) -> web.Response:
    return await _email_form_submit(request, "password_forgot.html", reset.request_reset)


async def _email_form_submit(
    request: web.Request, template: str, act: Callable[[Context, str, str], Awaitable[str]]
) -> web.Response:
    """A page whose form asks for an email address only: `act(ctx, email, client address)` says what the
    same answer for every address is ("check your mail")."""
    try:
        form = await _posted(request, ("email",))
        data = load(RESET_REQUEST, form)
        detail = await act(Context.of(request), data["email"], _address(request))
    except ValidationFailed as exc:
        return _form_page(request, template, {"error": _field_error(exc), **form}, status=400)
    except ApiError as exc:
        return _error(request, exc)
    return _message(request, "Check your mail", detail)


@pages.get("/auth/password/reset")
async def reset_page(request: web.Request) -> web.Response:
    token = request.query.get("token", "")
    if not token:
        return _message(request, "Cannot continue", reset.INVALID_LINK, status=400)
    return _form_page(request, "password_reset.html", {"token": token})


@pages.post("/auth/password/reset")
async def reset_submit(request: web.Request) -> web.Response:
    try:
        form = await _posted(request, ("token", "password", "password_again"))
        if form["password"] != form["password_again"]:
            raise ValidationFailed({"password": ["The two passwords differ."]})
        data = load(RESET, {"token": form["token"], "password": form["password"]})
        await reset.confirm(Context.of(request), data["token"], data["password"])
    except ValidationFailed as exc:
        context = {"token": form["token"], "error": _field_error(exc)}
        return _form_page(request, "password_reset.html", context, status=400)
    except ApiError as exc:
        return _error(request, exc)
    return _message(request, "Password changed", "Your password is changed: sign in again with it.")
