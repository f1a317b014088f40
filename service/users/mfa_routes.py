"""/api/v1/users/.../mfa: the second factor (TOTP) and its recovery codes; thin handlers, rules in users.mfa."""

from __future__ import annotations

from aiohttp import web
from aiohttp_apigami import docs, json_schema

from service import keys
from service.context import Context
from service.openapi import problem, responds
from service.responses import json_response
from service.security import principal, requires
from service.users import mfa
from service.users.schemas import (
    EnrollTotpSchema,
    RecoveryCodesSchema,
    RemoveTotpSchema,
    TotpCodeSchema,
    TotpEnrollmentSchema,
)

routes = web.RouteTableDef()
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # every answer here holds a secret
WHY_409 = {
    409: problem(
        "Not now: a second factor is already active (enrollment), there is none to confirm, remove or use "
        "(the others), or the server has no DATA_ENCRYPTION_KEY to keep the secret with (enrollment)."
    )
}
THROTTLED = {
    429: problem(
        "Too many failed sign-in checks for this username; retry after `Retry-After` seconds.",
        headers={"Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait."}},
    ),
}
CODE_CHECKS = (
    "Codes spend the per-username budget wrong passwords spend (LOGIN_MAX_FAILURES per LOGIN_WINDOW): a wrong "
    "code is 403, and once the budget is spent every check is 429 until the window passes."
)


@routes.post("/users/me/mfa/totp")
@docs(
    tags=["users"],
    summary="Start enrolling a TOTP second factor",
    description=(
        "Checks `current_password` (throttled like a sign-in), then answers a new secret as text, as an "
        "`otpauth://` URI and as a QR code (SVG) to scan. Nothing changes at sign-in until the enrollment is "
        "confirmed with a code; starting again replaces an unconfirmed secret. 409 when a second factor is "
        "already active, or when the server has no DATA_ENCRYPTION_KEY to store the secret with."
    ),
    operation_id="enrollTotp",
)
@requires("users:write", who="the signed-in user, for their own account")
@json_schema(EnrollTotpSchema)
@responds(TotpEnrollmentSchema, 201, description="Enrollment started (not active yet)", errors=(422,))
@docs(responses={**WHY_409, **THROTTLED})
async def enroll_totp(request: web.Request) -> web.Response:
    body = request[keys.body]
    enrollment = await mfa.enroll(Context.of(request), principal(request), body["current_password"])
    return json_response(enrollment, status=201, headers=NO_STORE)


@routes.post("/users/me/mfa/totp/confirm")
@docs(
    tags=["users"],
    summary="Confirm the TOTP enrollment with a code; get the recovery codes",
    description=(
        "A current 6-digit code from the new secret activates the second factor; the answer holds ten "
        "single-use recovery codes, shown this once. 409 without an unconfirmed enrollment. " + CODE_CHECKS
    ),
    operation_id="confirmTotp",
)
@requires("users:write", who="the signed-in user, for their own account")
@json_schema(TotpCodeSchema)
@responds(RecoveryCodesSchema, description="Active; the recovery codes", errors=(422,))
@docs(responses={**WHY_409, **THROTTLED})
async def confirm_totp(request: web.Request) -> web.Response:
    codes = await mfa.confirm(Context.of(request), principal(request), request[keys.body]["code"])
    return json_response({"recovery_codes": codes}, headers=NO_STORE)


@routes.delete("/users/me/mfa/totp")
@docs(
    tags=["users"],
    summary="Remove your own second factor",
    description=(
        "Needs `current_password` and a code (or a recovery code) in a JSON body. 409 when no second "
        "factor is active. " + CODE_CHECKS
    ),
    operation_id="removeOwnTotp",
)
@requires("users:write", who="the signed-in user, for their own account")
@json_schema(RemoveTotpSchema)
@responds(None, 204, description="Removed", errors=(422,))
@docs(responses={**WHY_409, **THROTTLED})
async def remove_own_totp(request: web.Request) -> web.Response:
    body = request[keys.body]
    await mfa.remove_own(Context.of(request), principal(request), body["current_password"], body["code"])
    return web.Response(status=204)


@routes.delete("/users/{user_id:[0-9a-fA-F]{24}}/mfa/totp")
@docs(
    tags=["users"],
    summary="Remove a user's second factor (admins)",
    description="For a user who lost their device and their recovery codes; audited. 204 also when none is set.",
    operation_id="removeUserTotp",
)
@requires("users:write", admin=True)
@responds(None, 204, description="Removed (or there was none)", errors=(404,))
async def remove_user_totp(request: web.Request) -> web.Response:
    await mfa.remove(Context.of(request), principal(request), request.match_info["user_id"])
    return web.Response(status=204)


@routes.post("/users/me/mfa/recovery-codes")
@docs(
    tags=["users"],
    summary="Replace your recovery codes",
    description=(
        "For a code (or a recovery code): ten new recovery codes, shown this once; the old ones stop working. "
        "409 when no second factor is active. " + CODE_CHECKS
    ),
    operation_id="regenerateRecoveryCodes",
)
@requires("users:write", who="the signed-in user, for their own account")
@json_schema(TotpCodeSchema)
@responds(RecoveryCodesSchema, description="The new recovery codes", errors=(422,))
@docs(responses={**WHY_409, **THROTTLED})
async def regenerate_recovery_codes(request: web.Request) -> web.Response:
    codes = await mfa.regenerate_recovery_codes(Context.of(request), principal(request), request[keys.body]["code"])
    return json_response({"recovery_codes": codes}, headers=NO_STORE)
