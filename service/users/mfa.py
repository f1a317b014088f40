"""Second factor: TOTP (RFC 6238) with recovery codes. Enrollment, confirmation, the checks a sign-in or a
guarded change makes, regeneration and removal; the queries behind them.

State lives on the user document under `mfa` (see MfaDocument), so reading a user's own view costs nothing
more. The secret is encrypted with the data encryption key (service/encryption.py); recovery codes are
stored as SHA-256 digests only. Every check is one conditional write, so a code is used once across any
number of processes: a TOTP code moves `last_step` forward (a replay in the same or an earlier step matches
nothing), a recovery code is pulled out of the list. Wrong codes spend the per-username budget that wrong
passwords spend (users.signin.check_code).
"""

from __future__ import annotations

import hmac
import io
import secrets
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import pyotp
import segno
from bson import ObjectId

from service.audit import trail as audit
from service.caller import Principal, visible_or_404
from service.context import Context
from service.crypto import hash_secret
from service.db import Database, utcnow
from service.encryption import DATA_KEYS, KeyUnavailable
from service.errors import Conflict, Forbidden
from service.users import repository
from service.users.permissions import may_see_user
from service.users.repository import MfaDocument, UserDocument
from service.users.signin import check_code, check_password

STEP = 30  # seconds per TOTP time step (RFC 6238's default, what every authenticator app uses)
DIGITS = 6
DRIFT = 1  # steps of clock drift accepted either way
RECOVERY_CODES = 10
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: read off paper, typed by hand
_RECOVERY_LENGTH = 16  # about 79 bits each: a fast digest is enough
CODE_WRONG = "The code is wrong or was already used."


# --- state -----------------------------------------------------------------------------------


def is_active(user: Mapping[str, Any]) -> bool:
    """The user has a confirmed second factor: sign-ins ask for a code, the password grant refuses."""
    return bool(user.get("mfa", {}).get("active"))


def _current_step() -> int:
    return int(time.time() // STEP)


def _normalized(code: str) -> str:
    return "".join(code.split()).replace("-", "").lower()


def _new_recovery_codes() -> tuple[list[str], list[str]]:
    """Ten fresh codes as shown (`abcd-efgh-jkmn-pqrs`) and their digests, as stored."""
    shown = []
    for _ in range(RECOVERY_CODES):
        raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(_RECOVERY_LENGTH))
        shown.append("-".join(raw[i : i + 4] for i in range(0, _RECOVERY_LENGTH, 4)))
    return shown, [hash_secret(_normalized(code)) for code in shown]


def _matching_step(secret: str, code: str) -> int | None:
    """The time step within ±DRIFT of now whose code `code` is; every candidate is compared (in constant
    time), so the answer's timing says nothing about which one matched."""
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP)
    now = _current_step()
    found = None
    for step in range(now - DRIFT, now + DRIFT + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            found = step
    return found


def _secret(ctx: Context, mfa: MfaDocument) -> str:
    try:
        return ctx[DATA_KEYS].decrypt(mfa["secret"])
    except KeyUnavailable as exc:
        raise Conflict(f"The second factor cannot be checked: {exc} Use a recovery code.") from None


# --- queries ---------------------------------------------------------------------------------


async def _store_pending(db: Database, user_id: ObjectId, document: MfaDocument) -> bool:
    """A new, unconfirmed enrollment, unless one is active (which only a removal may end)."""
    result = await db.users.update_one({"_id": user_id, "mfa.active": {"$ne": True}}, {"$set": {"mfa": document}})
    return result.matched_count == 1


async def _use_step(
    db: Database, user_id: ObjectId, mfa: MfaDocument, step: int, also: Mapping[str, Any] | None = None
) -> bool:
    """Accept the code of `step` once: only if no code of this step or a later one was accepted before, and
    the secret is still the one checked. `also` sets more fields in the same write (a confirmation)."""
    changes: dict[str, Any] = {"$set": {"mfa.last_step": step, **(also or {})}}
    if also:
        changes["$set"]["updated"] = utcnow()
        changes["$inc"] = {"version": 1}
    result = await db.users.update_one(
        {"_id": user_id, "mfa.secret": mfa["secret"], "mfa.active": mfa["active"], "mfa.last_step": {"$lt": step}},
        changes,
    )
    return result.matched_count == 1


async def _use_recovery_code(db: Database, user_id: ObjectId, digest: str) -> bool:
    """Use one recovery code up: the write that pulls it is the one that may use it."""
    result = await db.users.update_one(
        {"_id": user_id, "mfa.active": True, "mfa.recovery_codes": digest},
        {"$pull": {"mfa.recovery_codes": digest}, "$set": {"updated": utcnow()}, "$inc": {"version": 1}},
    )
    return result.modified_count == 1


async def _replace_recovery_codes(db: Database, user_id: ObjectId, secret: str, digests: list[str]) -> bool:
    result = await db.users.update_one(
        {"_id": user_id, "mfa.active": True, "mfa.secret": secret},
        {"$set": {"mfa.recovery_codes": digests, "updated": utcnow()}, "$inc": {"version": 1}},
    )
    return result.matched_count == 1


async def _remove(db: Database, user_id: ObjectId, secret: str | None = None) -> bool:
    """Remove the second factor (only the one with `secret`, when given)."""
    query: dict[str, Any] = {"_id": user_id, "mfa": {"$exists": True}}
    if secret is not None:
        query["mfa.secret"] = secret
    result = await db.users.update_one(
        query, {"$unset": {"mfa": ""}, "$set": {"updated": utcnow()}, "$inc": {"version": 1}}
    )
    return result.modified_count == 1


# --- checks ----------------------------------------------------------------------------------


async def _use_code(ctx: Context, user: UserDocument, code: str) -> str | None:
    """Check and use up `code` for `user`'s active second factor: "otp" for a TOTP code, "recovery" for a
    recovery code, None when it is wrong or used."""
    mfa = user.get("mfa")
    if mfa is None or not mfa.get("active"):
        return None
    code = _normalized(code)
    if len(code) == DIGITS and code.isdigit():
        step = _matching_step(_secret(ctx, mfa), code)
        return "otp" if step is not None and await _use_step(ctx.db, user["_id"], mfa, step) else None
    if len(code) != _RECOVERY_LENGTH:
        return None
    if not await _use_recovery_code(ctx.db, user["_id"], hash_secret(code)):
        return None
    audit.record("mfa.recovery_code_used", actor_id=user["_id"], subject_id=user["_id"])
    ctx.cache.invalidate()  # recovery_codes_left changed
    return "recovery"


async def check_second_factor(ctx: Context, user: UserDocument, code: str, client_id: str | None = None) -> bool:
    """Whether `code` (a TOTP code or a recovery code) is right for `user`, who must have an active second
    factor, and use it up; throttled with the user's password checks (429 once the budget is spent)."""

    async def verify() -> bool:
        return await _use_code(ctx, user, code) is not None

    right = await check_code(ctx, user["username"], verify)
    if not right:
        audit.record("mfa.code_rejected", subject_id=user["_id"], client_id=client_id)
    return right


async def _fresh(ctx: Context, caller: Principal) -> UserDocument:
    """The caller's user as stored now (the cached principal may lag a second-factor change elsewhere)."""
    user = await repository.get_user(ctx.db, caller.user_id)
    if user is None:  # (deleted since the token was checked)
        raise Forbidden("The account no longer exists.")
    return user


async def _require_password(ctx: Context, user: UserDocument, password: str) -> None:
    async def own_hash() -> str | None:
        return user.get("password_hash")

    if not await check_password(ctx, user["username"], password, own_hash):
        raise Forbidden("The current password is wrong.")


# --- rules -----------------------------------------------------------------------------------


async def enroll(ctx: Context, caller: Principal, current_password: str) -> dict[str, str]:
    """Start (or restart) an enrollment: a new secret, not active until confirmed with a code from it."""
    keys = ctx[DATA_KEYS]
    if not keys.available:
        raise Conflict(f"TOTP cannot be enabled on this server: {keys.why} An operator must set it.")
    user = await _fresh(ctx, caller)
    if is_active(user):
        raise Conflict("A second factor is already active; remove it first.")
    await _require_password(ctx, user, current_password)
    secret = pyotp.random_base32()
    pending: MfaDocument = {
        "secret": keys.encrypt(secret),
        "active": False,
        "last_step": 0,
        "recovery_codes": [],
        "enrolled": utcnow(),
    }
    if not await _store_pending(ctx.db, user["_id"], pending):
        raise Conflict("A second factor is already active; remove it first.")
    audit.record("mfa.totp_enrolled", actor_id=user["_id"], subject_id=user["_id"])
    issuer = urlsplit(ctx.issuer).hostname or "service"
    uri = pyotp.TOTP(secret, digits=DIGITS, interval=STEP).provisioning_uri(name=user["username"], issuer_name=issuer)
    svg = io.BytesIO()
    segno.make(uri, error="m").save(svg, kind="svg", xmldecl=False, svgns=True, nl=False, scale=4, border=4)
    return {"secret": secret, "otpauth_uri": uri, "qr_svg": svg.getvalue().decode()}


async def confirm(ctx: Context, caller: Principal, code: str) -> list[str]:
    """Activate the pending enrollment with a code from it; returns the recovery codes (shown only now)."""
    user = await _fresh(ctx, caller)
    mfa = user.get("mfa")
    if mfa is None:
        raise Conflict("There is no TOTP enrollment to confirm; start one with POST /users/me/mfa/totp.")
    if mfa["active"]:
        raise Conflict("The second factor is already confirmed.")
    secret = _secret(ctx, mfa)
    shown, digests = _new_recovery_codes()

    async def verify() -> bool:
        normalized = _normalized(code)
        step = _matching_step(secret, normalized) if len(normalized) == DIGITS and normalized.isdigit() else None
        also = {"mfa.active": True, "mfa.recovery_codes": digests, "mfa.confirmed": utcnow()}
        return step is not None and await _use_step(ctx.db, user["_id"], mfa, step, also)

    if not await check_code(ctx, user["username"], verify):
        audit.record("mfa.code_rejected", subject_id=user["_id"])
        raise Forbidden(CODE_WRONG)
    audit.record("mfa.totp_confirmed", actor_id=user["_id"], subject_id=user["_id"])
    ctx.cache.invalidate()
    return shown


async def remove_own(ctx: Context, caller: Principal, current_password: str, code: str) -> None:
    """The user removes their own second factor: their password and a code (or a recovery code) first."""
    user = await _fresh(ctx, caller)
    mfa = user.get("mfa")
    if mfa is None or not mfa["active"]:
        raise Conflict("No second factor is active.")
    await _require_password(ctx, user, current_password)
    if not await check_second_factor(ctx, user, code, caller.client_id):
        raise Forbidden(CODE_WRONG)
    if await _remove(ctx.db, user["_id"], mfa["secret"]):
        audit.record("mfa.totp_removed", actor_id=user["_id"], subject_id=user["_id"])
    ctx.cache.invalidate()


async def remove(ctx: Context, caller: Principal, user_id: str) -> None:
    """An admin removes a user's second factor (confirmed or pending); nothing to remove is no error."""
    target = await visible_or_404(lambda oid: repository.get_user(ctx.db, oid), user_id, caller, may_see_user, "user")
    if await _remove(ctx.db, target["_id"]):
        audit.record("mfa.totp_removed", actor_id=caller.user_id, subject_id=target["_id"], by_admin=True)
        ctx.cache.invalidate()


async def regenerate_recovery_codes(ctx: Context, caller: Principal, code: str) -> list[str]:
    """Ten new recovery codes for a code (or a recovery code); the old ones stop working at once."""
    user = await _fresh(ctx, caller)
    mfa = user.get("mfa")
    if mfa is None or not mfa["active"]:
        raise Conflict("No second factor is active.")
    if not await check_second_factor(ctx, user, code, caller.client_id):
        raise Forbidden(CODE_WRONG)
    shown, digests = _new_recovery_codes()
    if not await _replace_recovery_codes(ctx.db, user["_id"], mfa["secret"], digests):
        raise Conflict("The second factor was removed meanwhile.")
    audit.record("mfa.recovery_codes_regenerated", actor_id=user["_id"], subject_id=user["_id"])
    ctx.cache.invalidate()
    return shown
