"""User rules: sign-up, who sees whom, and JSON Patch with its password and role guards."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from service import patch
from service.audit import trail as audit
from service.caller import Principal, is_admin, visible_or_404
from service.context import Context
from service.db import is_unavailable_error
from service.errors import Forbidden, ValidationFailed, check_version
from service.pagination import Page, PageRequest
from service.schemas import load
from service.users import mailtokens, repository, verification
from service.users.permissions import ADMIN_ONLY_PATHS, PASSWORD_GUARDED_PATHS, may_see_user
from service.users.repository import UserDocument
from service.users.schemas import EditableUserSchema
from service.users.signin import check_password

log = logging.getLogger(__name__)
EDITABLE = EditableUserSchema()


async def signup(ctx: Context, data: dict[str, Any], caller: Principal | None) -> UserDocument:
    db, hasher = ctx.db, ctx.hasher
    if not ctx.settings.signup_enabled and not (caller and is_admin(caller.user)):
        raise Forbidden("Sign-up is disabled; an administrator can create your account.")
    conflict = await repository.existing_conflict(db, data["username"], data["email"])
    if conflict is not None:  # a duplicate must not cost a password hash
        raise conflict
    password_hash = await hasher.hash(data.pop("password"))
    document = repository.new_user_document(
        username=data["username"], email=data["email"], password_hash=password_hash, names=data, roles={}
    )
    user = await repository.insert_user(db, document)
    ctx.cache.invalidate()  # the name was unknown until now, and may be cached as such
    try:
        await verification.send_link(ctx, user)  # the first of the account's hourly verification mails
    except Exception as exc:
        # The account exists: a 503 would tell the client to send the sign-up again, which a 409 answers.
        if not is_unavailable_error(exc):
            raise
        log.warning(
            "verification mail for new user %s not queued (database unavailable); it can be asked again", user["_id"]
        )
    return user


async def get_visible_user(ctx: Context, caller: Principal, user_id: str) -> UserDocument:
    return await visible_or_404(lambda oid: repository.get_user(ctx.db, oid), user_id, caller, may_see_user, "user")


async def list_users(ctx: Context, request: PageRequest) -> Page:
    return await repository.list_users(ctx.db, request, ctx.cursors)


def _editable(user: UserDocument) -> dict[str, Any]:
    return {
        "first_name": user["first_name"],
        "middle_name": user["middle_name"],
        "last_name": user["last_name"],
        "email": user["email"],
        "is_active": user["is_active"],
        "is_regular_user": user["is_regular_user"],
        "is_admin": user["is_admin"],
        "password": None,  # nosec B105 - the field is write-only: nothing to show
    }


# Told when a user's tokens were made useless (a password change, a deactivation), so the domain that
# stores tokens and sessions (auth, which registers here in its setup) can mark them revoked and end the
# sessions: users knows neither.
TokensRevoked = Callable[[Context, Any], Awaitable[object]]
TOKENS_REVOKED: web.AppKey[list[TokensRevoked]] = web.AppKey("service.users.tokens_revoked", list)


async def _mark_tokens_revoked(ctx: Context, user_id: Any) -> None:
    """Bookkeeping only: the generation bump in the user's update already made the tokens useless,
    so a failure here must not turn a successful change into an error."""
    try:
        for mark in ctx[TOKENS_REVOKED]:
            await mark(ctx, user_id)
    except Exception as exc:
        if not is_unavailable_error(exc):
            raise
        log.warning("could not mark revoked tokens of user %s (already ineffective)", user_id)


async def _check_guards(ctx: Context, caller: Principal, operations: list[dict[str, Any]]) -> None:
    """Role paths need an admin; email and password need a preceding `test /current_password`, which is
    checked like a sign-in (same per-username throttle), once per patch at most."""
    if not is_admin(caller.user) and any(op["path"] in ADMIN_ONLY_PATHS for op in operations):
        raise Forbidden("Only administrators may change is_active, is_regular_user or is_admin.")
    proofs = [i for i, op in enumerate(operations) if op["path"] == "/current_password"]
    guarded = [i for i, op in enumerate(operations) if op["path"] in PASSWORD_GUARDED_PATHS]
    if len(proofs) > 1:
        raise ValidationFailed({"_schema": ["At most one test of /current_password per patch."]})
    if any(operations[i]["op"] != "test" for i in proofs):
        raise Forbidden("/current_password can only be tested.")
    if guarded and not (proofs and proofs[0] < guarded[0]):
        raise Forbidden("Changing email or password needs a preceding test of /current_password.")
    if proofs:
        value = operations[proofs[0]].get("value")
        user = caller.user

        async def own_hash() -> str | None:
            return user.get("password_hash")

        if not isinstance(value, str) or not await check_password(ctx, user["username"], value, own_hash):
            raise Forbidden("The current password is wrong.")


def _audit_changes(caller: Principal, target: UserDocument, changes: dict[str, Any]) -> None:
    who = {"actor_id": caller.user_id, "subject_id": target["_id"]}
    if "password_hash" in changes:
        audit.record("user.password_changed", **who)
    if "email" in changes and changes["email"] != target.get("email"):
        audit.record("user.email_changed", **who)
    roles = {
        key: changes[key] for key in ("is_admin", "is_regular_user") if changes.get(key, target[key]) != target[key]
    }
    if roles:
        audit.record("user.role_changed", **who, roles=roles)
    if changes.get("is_active", target["is_active"]) != target["is_active"]:
        audit.record("user.activated" if changes["is_active"] else "user.deactivated", **who)


async def patch_user(
    ctx: Context, caller: Principal, user_id: str, operations: list[dict[str, Any]], expected_version: int | None
) -> tuple[UserDocument, bool]:
    """Apply a JSON Patch atomically; returns the user and whether their tokens were revoked.

    The patch is applied to what was read and stored only if the document is still at that version,
    so a concurrent change is never overwritten: with If-Match the caller gets 412, without it the
    patch is re-applied to the fresh document.
    """
    await _check_guards(ctx, caller, operations)
    changes_ops = [op for op in operations if op["path"] != "/current_password"]
    blind = patch.is_blind(changes_ops, expected_version)

    async def attempt() -> tuple[UserDocument, bool] | None:
        target = await get_visible_user(ctx, caller, user_id)
        check_version(expected_version, target)
        result = load(EDITABLE, patch.apply(_editable(target), changes_ops))
        changes = {key: result[key] for key in patch.touched(changes_ops) if key != "password"}
        if not blind:  # guarded: write only what differs from the version we read
            changes = {key: value for key, value in changes.items() if value != target.get(key)}
        if result.get("password"):
            changes["password_hash"] = await ctx.hasher.hash(result["password"])
        if not changes:
            return target, False
        new_address = "email" in changes and changes["email"].lower() != target["email"].lower()
        if new_address:
            changes["email_verified"] = False  # until a link mailed to the new address is opened
        revoke = "password_hash" in changes or changes.get("is_active") is False
        version = None if blind else target["version"]
        updated = await repository.update_user(ctx.db, target["_id"], version, changes, revoke_tokens=revoke)
        if updated is None:
            return None
        _audit_changes(caller, target, changes)
        if "password_hash" in changes:  # any password change voids the reset links mailed before it
            await mailtokens.void(ctx.db, updated["_id"], "reset")
        if new_address:
            await verification.email_changed(ctx, target, updated)
        if revoke:
            await _mark_tokens_revoked(ctx, updated["_id"])
        return updated, revoke

    updated, revoked = await patch.optimistically(attempt, expected_version, "user")
    ctx.cache.invalidate()  # this process forgets the user's cached principals at once
    return updated, revoked
