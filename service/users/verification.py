"""Email verification: a mail with a single-use link on sign-up, on request and on every change of
address (with a notice to the old one); the link's token marks the address verified.

At most VERIFY_MAILS_PER_HOUR verification mails per account (the sign-up's counts), across processes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from service import mail
from service.audit import trail as audit
from service.caller import Principal
from service.context import Context
from service.errors import BadRequest, Conflict, TooManyRequests
from service.users import mailtokens

log = logging.getLogger(__name__)

VERIFY_MAILS_PER_HOUR = 3
RESEND_REQUESTS_PER_HOUR = 10  # the sign-in page's anonymous "send it again", per client address
RESEND_MAILS_PER_HOUR = 3  # and per address asked for
INVALID_LINK = "This verification link is invalid, used or expired; ask for a new one."
VERIFY_PATH = "/auth/email/verify"


def duration(seconds: int) -> str:
    """`24 hours`, `30 minutes`: how long a link lives, in words for a mail."""
    if seconds % 3600 == 0:
        hours = seconds // 3600
        return f"{hours} hour{'s' if hours != 1 else ''}"
    minutes = max(1, seconds // 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def display_name(user: Mapping[str, Any]) -> str:
    return str(user.get("first_name") or user["username"])


async def send_link(ctx: Context, user: Mapping[str, Any]) -> None:
    """Mail a verification link to the user's address; TooManyRequests beyond the account's hourly
    budget (VERIFY_MAILS_PER_HOUR)."""
    try:
        await mailtokens.reserve_mail(
            ctx.db,
            f"verify:{user['_id']}",
            VERIFY_MAILS_PER_HOUR,
            "Too many verification mails for this account; try again later.",
        )
    except TooManyRequests:
        audit.record("email.verification_throttled", subject_id=user["_id"])
        raise
    await _queue_link(ctx, user, deliver=True)


async def _queue_link(ctx: Context, user: Mapping[str, Any], deliver: bool) -> None:
    """Store a link's token and queue its mail; with `deliver` false (a `mailtokens.decoy_user`), the
    same writes as decoys: a token no account can use, the mail stored void."""
    token, document = mailtokens.new_document("verify", user, ctx.settings.email_token_ttl)
    await mailtokens.insert(ctx.db, document)
    context = {
        "name": display_name(user),
        "email": user["email"],
        "link": f"{ctx.issuer}{VERIFY_PATH}?token={token}",
        "token": token,
        "valid_for": duration(ctx.settings.email_token_ttl),
    }
    if not deliver:
        await mail.send_decoy(ctx, "verify_email", context)
        return
    await mail.send(ctx, user["email"], "verify_email", context)
    audit.record("email.verification_sent", subject_id=user["_id"])


async def resend(ctx: Context, caller: Principal) -> None:
    """POST /users/me/email-verification: a new link for the caller's own address."""
    if caller.user.get("email_verified", False):
        raise Conflict("Your email address is verified already.")
    await send_link(ctx, caller.user)


async def resend_by_email(ctx: Context, email: str, client_address: str) -> None:
    """The sign-in page's "send the mail again": a link if `email` is an active account's unverified
    address, and the same answer after the same work otherwise, so neither the answer nor its time
    tells whether the address has an account: for any other address the token and the mail are decoys,
    as for a password reset (`service.users.reset`). Its limits are its own and do not depend on the
    account (whose budget other flows spend, so its state would show): RESEND_REQUESTS_PER_HOUR per
    client address, RESEND_MAILS_PER_HOUR per address asked for, whether or not it has an account."""
    await mailtokens.reserve_mail(
        ctx.db,
        f"resend-from:{client_address}",
        RESEND_REQUESTS_PER_HOUR,
        "Too many requests from your address; try again later.",
    )
    await mailtokens.reserve_mail(
        ctx.db,
        f"resend-to:{email.lower()}",
        RESEND_MAILS_PER_HOUR,
        "Too many verification mails for this address; try again later.",
    )
    user = await mailtokens.user_by_email(ctx.db, email)
    if user is not None and user.get("is_active") and not user.get("email_verified", False):
        await _queue_link(ctx, user, deliver=True)
    else:
        await _queue_link(ctx, mailtokens.decoy_user(email), deliver=False)


async def email_changed(ctx: Context, before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
    """A new address: a notice to the old one (someone else may have changed it), and a link to the new
    one (skipped, not refused, beyond the hourly budget: the change itself is done)."""
    context = {"name": display_name(after), "old_email": before["email"], "new_email": after["email"]}
    await mail.send(ctx, before["email"], "email_changed_notice", context)
    audit.record("email.change_notice_sent", subject_id=after["_id"])
    try:
        await send_link(ctx, after)
    except TooManyRequests:
        log.info("no verification mail for user %s: hourly budget spent", after["_id"])


async def confirm(ctx: Context, token: str) -> None:
    """Use a verification link's token: the address it was mailed to is verified, if it is still the
    user's. A used, expired, unknown or stale token is 400 with one detail whatever the reason."""
    found = await mailtokens.consume(ctx.db, token, "verify")
    if found is None or await mailtokens.mark_verified(ctx.db, found) is None:
        audit.record("email.verification_refused", subject_id=found["user_id"] if found else None)
        raise BadRequest(INVALID_LINK)
    audit.record("email.verified", actor_id=found["user_id"], subject_id=found["user_id"])
    ctx.cache.invalidate()  # cached principals hold the user as it was
