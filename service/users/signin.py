"""Password checks, throttled per username across every server process, and shed under overload.

One function serves every place a password is checked (the password grant, the sign-in page, a user
PATCH's `current_password` test), so they share one budget: at most LOGIN_MAX_FAILURES failed checks
per username per LOGIN_WINDOW, whatever the concurrency. Second-factor codes (`check_code`) spend the
same budget.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from aiohttp import web

from service.cache import ANY
from service.context import Context
from service.db import Database, utcnow
from service.errors import TooManyRequests
from service.users import repository
from service.users.repository import UserDocument


class HeldAttempts:
    """Attempts kept by right passwords, for the same username's next check in this process.

    A right password must not count against the budget, but giving its attempt back is a database
    write. Instead the process keeps the attempt, and the username's next check here uses it with no
    write at all (the common case: the same user signing in again). An attempt is kept only while its
    window lasts, at most one per username, so the budget other processes see can be smaller by the
    attempts processes keep, never larger; a process that stops just forgets them."""

    MARGIN = timedelta(seconds=30)  # a kept attempt this close to its window's end is not used

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._kept: dict[str, datetime] = {}

    def take(self, key: str) -> datetime | None:
        """The end of the window of an attempt kept for `key`, now the caller's; None if none is."""
        window_end = self._kept.pop(key, None)
        return window_end if window_end is not None and window_end - utcnow() > self.MARGIN else None

    def keep(self, key: str, window_end: datetime) -> bool:
        """Keep a right password's attempt; False when one is kept already (the caller gives it back)."""
        if key in self._kept or len(self._kept) >= self.max_entries:
            return False
        self._kept[key] = window_end
        return True


async def check_password(
    ctx: Context, username: str, password: str, find_hash: Callable[[], Awaitable[str | None]]
) -> bool:
    """Whether `password` is right for `username`, whose stored hash `find_hash` reads.

    In order: a place in the hashing queue (503 at once when the wait would be too long), then an
    attempt reserved atomically against the username's budget (429 when spent), then the hash. A
    right password gives its attempt back (by keeping it for the next check, see HeldAttempts).
    `find_hash` returning None (unknown or deactivated user) costs the same hash and fails, so neither
    the answer nor its timing tells those cases apart.
    """
    hasher = ctx.hasher
    with hasher.admit():

        async def verify() -> bool:
            return await hasher.verify(await find_hash(), password, admitted=True)

        return await _budgeted(ctx, username, verify)


async def check_code(ctx: Context, username: str, verify: Callable[[], Awaitable[bool]]) -> bool:
    """Whether a second-factor code is right for `username`, under the budget its passwords use. `verify`
    checks the code and uses it up (a conditional write)."""
    return await _budgeted(ctx, username, verify)


async def _budgeted(ctx: Context, username: str, verify: Callable[[], Awaitable[bool]]) -> bool:
    """`verify()` on one attempt of `username`'s budget: reserved first (429 when spent), kept as a
    failure when the answer is wrong, given back when it is right. If `verify` fails to run (the database
    or the hashing pool failed, or the request was cancelled), nothing was checked: no failure, so the
    attempt goes back, as far as the database lets it."""
    db, held, key = ctx.db, ctx[HELD_ATTEMPTS], username.lower()
    window_end = await _reserve(ctx, key)
    try:
        verified = await verify()
    except BaseException:
        with contextlib.suppress(Exception):  # the original error is the one to report
            await _give_back(db, held, key, window_end)
        raise
    if verified:
        await _give_back(db, held, key, window_end)
    return verified


async def _reserve(ctx: Context, key: str) -> datetime:
    """One attempt of `key`'s budget (one kept here by a right answer, or one reserved in the database);
    the end of its window. 429 when the budget is spent."""
    window_end = ctx[HELD_ATTEMPTS].take(key)
    if window_end is None:
        settings = ctx.settings
        reserved, window_end = await repository.reserve_login_attempt(
            ctx.db, key, settings.login_max_failures, settings.login_window
        )
        if not reserved:
            seconds = int((window_end - utcnow()).total_seconds()) + 1
            raise TooManyRequests("Too many failed sign-in attempts; try again later.", retry_after=seconds)
    return window_end


async def _give_back(db: Database, held: HeldAttempts, key: str, window_end: datetime) -> None:
    """An attempt that was no failure: kept for the username's next check here, or released."""
    if not held.keep(key, window_end):
        await repository.release_login_attempt(db, key)


HELD_ATTEMPTS: web.AppKey[HeldAttempts] = web.AppKey("service.held_attempts", HeldAttempts)


async def user_by_username(ctx: Context, username: str) -> UserDocument | None:
    """A user by username, through the principal cache; an unknown name is kept too (until any user
    changes), so a sign-in as an unknown user costs the database what one as a known user does."""
    return await ctx.cache.fetch(
        f"username:{username.lower()}",
        lambda: repository.get_user_by_username(ctx.db, username),
        lambda found: [("users", found["_id"])] if found else [("users", ANY)],
    )
