"""Sign-in sessions seen from outside: RP-Initiated Logout 1.0 (`/auth/oauth2/logout`, the
`end_session_endpoint`) and the user's sessions API (`/api/v1/users/me/sessions`)."""

from __future__ import annotations

import secrets

from aiohttp import web
from aiohttp_apigami import docs
from authlib.common.urls import add_params_to_uri

from service.auth import grants, logout, sessions
from service.auth.routes import NO_STORE, _error_page, _page
from service.auth.schemas import SessionSchema
from service.bodies import BodyError, read_form
from service.context import Context
from service.errors import NotFound
from service.openapi import responds
from service.responses import json_response
from service.security import principal, requires

logout_routes = web.RouteTableDef()
routes = web.RouteTableDef()

LOGOUT = "/auth/oauth2/logout"
CSRF_COOKIE = "logout_csrf"
SESSIONS = SessionSchema(many=True)


@logout_routes.route("*", LOGOUT)
async def end_session(request: web.Request) -> web.Response:
    """GET or POST from a relying party, or POST from the confirmation form (it carries `action`)."""
    if request.method not in ("GET", "POST"):
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
    try:
        pairs = list(request.query.items()) if request.method == "GET" else await read_form(request)
    except BodyError as exc:
        return _error_page(request, exc.detail or "The form could not be read.", exc.status)
    params, repeated = grants.single_values(pairs)
    action, csrf = params.pop("action", None), params.pop("csrf_token", None)
    ctx = Context.of(request)
    try:
        checked = await logout.check_logout_request(ctx, params, repeated - {"action", "csrf_token"})
    except logout.LogoutPageError as exc:
        return _error_page(request, str(exc))
    signed = await sessions.signed_in(ctx, request)
    if action is not None:  # the confirmation form's answer
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if request.method != "POST" or not cookie or not secrets.compare_digest(cookie.encode(), (csrf or "").encode()):
            return _error_page(request, "The form has expired or did not come from this page; start again.", 403)
        if action != "logout":
            return _page(request, "account_message.html", {"title": "Still signed in", "message": "Nothing changed."})
    elif logout.needs_confirmation(checked, signed):
        return _confirmation(request, checked)
    if signed is not None:
        await sessions.end(ctx, signed[0])
    response = _signed_out(request, checked)
    sessions.clear_cookie(ctx, response)
    response.del_cookie(CSRF_COOKIE, path=LOGOUT)
    return response


def _confirmation(request: web.Request, checked: logout.LogoutRequest) -> web.Response:
    csrf = secrets.token_urlsafe(32)
    client_name = (checked.client.get("client_name") or checked.client["_id"]) if checked.client else None
    context = {"client_name": client_name, "hidden": list(checked.as_form().items()), "csrf": csrf}
    response = _page(request, "logout.html", context, form_target=checked.redirect_uri)
    response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="Strict", path=LOGOUT, max_age=1800)
    return response


def _signed_out(request: web.Request, checked: logout.LogoutRequest) -> web.Response:
    """Back to the client's registered page (with its `state`), or a page saying it is done."""
    if checked.redirect_uri is None:
        return _page(request, "account_message.html", {"title": "Signed out", "message": "You are signed out."})
    params = [("state", checked.state)] if checked.state is not None else []
    status = 303 if request.method == "POST" else 302
    return web.Response(
        status=status, headers={"Location": add_params_to_uri(checked.redirect_uri, params), **NO_STORE}
    )


@routes.get("/users/me/sessions", allow_head=False)
@docs(
    tags=["auth"],
    summary="List your sign-in sessions (browsers signed in at the authorization server)",
    description="Newest first. `current` marks the session the calling token was issued under, or the one "
    "of the browser making the call.",
    operation_id="listMySessions",
)
@requires("auth:read", who="yourself")
@responds(SESSIONS)
async def list_my_sessions(request: web.Request) -> web.Response:
    ctx, caller = Context.of(request), principal(request)
    found = await sessions.list_for_user(ctx, caller.user_id)
    current = await sessions.current(ctx, request, caller.token_id)
    listed = [{**session, "current": session["sid"] == current} for session in found]
    return json_response(SESSIONS.dump(listed))


@routes.delete("/users/me/sessions/{session_id}")
@docs(
    tags=["auth"],
    summary="End one of your sign-in sessions (its clients get a back-channel logout)",
    operation_id="endMySession",
)
@requires("auth:write", who="yourself")
@responds(None, 204, description="Ended", errors=(404,))
async def end_my_session(request: web.Request) -> web.Response:
    ctx = Context.of(request)
    if not await sessions.end_for_user(ctx, principal(request).user_id, request.match_info["session_id"]):
        raise NotFound("No such session.")
    return web.Response(status=204)
