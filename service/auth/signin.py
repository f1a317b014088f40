"""Password checks, throttled per username across every server process, and shed under overload.

One function serves every place a password is checked (the password grant, the sign-in page, a user
PATCH's `current_password` test), so they share one budget: at most LOGIN_MAX_FAILURES failed checks
per username per LOGIN_WINDOW, whatever the concurrency.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from service.auth import repository
from service.config import Settings
from service.db import Database, utcnow
from service.errors import TooManyRequests
from service.passwords import PasswordHasher


async def check_password(
    db: Database,
    hasher: PasswordHasher,
    settings: Settings,
    username: str,
    password: str,
    find_hash: Callable[[], Awaitable[str | None]],
) -> bool:
    """Whether `password` is right for `username`, whose stored hash `find_hash` reads.

    In order: a place in the hashing queue (503 at once when the wait would be too long), then an
    attempt reserved atomically against the username's budget (429 when spent), then the hash. A
    right password gives its attempt back. `find_hash` returning None (unknown or deactivated user)
    costs the same hash and fails, so neither the answer nor its timing tells those cases apart.
    """
    key = username.lower()
    with hasher.admit():
        reopens = await repository.reserve_login_attempt(db, key, settings.login_max_failures, settings.login_window)
        if reopens is not None:
            seconds = int((reopens - utcnow()).total_seconds()) + 1
            raise TooManyRequests("Too many failed sign-in attempts; try again later.", retry_after=seconds)
        verified = await hasher.verify(await find_hash(), password, admitted=True)
    if verified:
        await repository.release_login_attempt(db, key)
    return verified
