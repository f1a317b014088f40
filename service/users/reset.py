"""Password reset by mail, without telling anyone whether an address has an account.

A request for a known address and one for an unknown address get the same answer after the same work:
the same counters, the same lookup, a token made and stored, the mail rendered and stored. For an unknown
address the writes are decoys of the same kind and size: the previous decoy token for that address
deleted, a token stored for an account id derived from the address (no account has it, so it can reset
nothing, and nobody learns it), and the mail stored as a `void` message that is never sent. A write that
changes nothing costs less than one that does (a journal flush, a replica set's majority), so a stand-in
that matched nothing would show in the answer time. The hourly limits are counted per requested address
(whether or not it has an account, so a 429 says nothing either) and per client address.
"""

from __future__ import annotations

from typing import Any

from service import mail
from service.audit import trail as audit
from service.context import Context
from service.errors import BadRequest, TooManyRequests
from service.users import mailtokens
from service.users.service import _mark_tokens_revoked
from service.users.verification import display_name, duration

RESET_MAILS_PER_HOUR = 3  # per address asked for
RESET_REQUESTS_PER_HOUR = 10  # per client address
ACCEPTED = "If an account has this address, a link to choose a new password is on its way."
INVALID_LINK = "This password reset link is invalid, used or expired; ask for a new one."
RESET_PATH = "/auth/password/reset"


async def _reserve(ctx: Context, key: str, limit: int, detail: str) -> None:
    try:
        await mailtokens.reserve_mail(ctx.db, key, limit, detail)
    except TooManyRequests:
        audit.record("password.reset_throttled")
        raise


async def request_reset(ctx: Context, email: str, client_address: str) -> str:
    """Mail a reset link if `email` is an active account's address; the answer (ACCEPTED) and the work
    are the same when it is not. TooManyRequests beyond the hourly limits."""
    await _reserve(
        ctx,
        f"reset-from:{client_address}",
        RESET_REQUESTS_PER_HOUR,
        "Too many password reset requests from your address; try again later.",
    )
    await _reserve(
        ctx,
        f"reset-to:{email.lower()}",
        RESET_MAILS_PER_HOUR,
        "Too many password reset mails for this address; try again later.",
    )
    found = await mailtokens.user_by_email(ctx.db, email)
    known = found is not None and bool(found.get("is_active"))
    user: dict[str, Any] = found if found is not None and known else mailtokens.decoy_user(email)
    token, document = mailtokens.new_document("reset", user, ctx.settings.reset_token_ttl)
    context = {
        "name": display_name(user),
        "link": f"{ctx.issuer}{RESET_PATH}?token={token}",
        "token": token,
        "valid_for": duration(ctx.settings.reset_token_ttl),
    }
    await mailtokens.void(ctx.db, user["_id"], "reset")  # a newer mail voids the older links
    await mailtokens.insert(ctx.db, document)  # for an unknown address, a token no account can use
    if known:
        await mail.send(ctx, user["email"], "password_reset", context)
    else:
        await mail.send_decoy(ctx, "password_reset", context)
    audit.record("password.reset_requested", subject_id=user["_id"] if known else None)
    return ACCEPTED


async def confirm(ctx: Context, token: str, password: str) -> None:
    """Set a new password with a reset link's token: single use, and only while the account still has
    the address the link went to and no password change came after it. Every token of the user is
    revoked. A used, expired, unknown or voided token is 400 with one detail whatever the reason."""
    if not await mailtokens.is_live(ctx.db, token, "reset"):  # a bad token costs no password hash
        audit.record("password.reset_refused")
        raise BadRequest(INVALID_LINK)
    password_hash = await ctx.hasher.hash(password)
    found = await mailtokens.consume(ctx.db, token, "reset")
    if found is None or await mailtokens.reset_password(ctx.db, found, password_hash) is None:
        audit.record("password.reset_refused", subject_id=found["user_id"] if found else None)
        raise BadRequest(INVALID_LINK)
    user_id = found["user_id"]
    await mailtokens.void(ctx.db, user_id, "reset")
    await _mark_tokens_revoked(ctx, user_id)
    ctx.cache.invalidate()  # this process forgets the user's cached principals at once
    audit.record("password.reset_completed", actor_id=user_id, subject_id=user_id)
