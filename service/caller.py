"""Who is calling, and the rules every domain applies the same way: who is an administrator, and the
404 that hides what a caller may not see. Neutral ground: domains and the web layer both use it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from service.db import document_id
from service.errors import NotFound

D = TypeVar("D", bound=Mapping[str, Any])  # a stored document


def is_admin(user: Mapping[str, Any]) -> bool:
    """The one admin predicate: the role, on an active account."""
    return bool(user.get("is_admin")) and bool(user.get("is_active"))


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the user a token acts for, through which client, with which scopes."""

    user: dict[str, Any]
    scopes: frozenset[str]
    client_id: str
    token_id: str

    @property
    def user_id(self) -> Any:
        return self.user["_id"]

    @property
    def is_admin(self) -> bool:
        return is_admin(self.user)


async def visible_or_404(
    fetch: Callable[[Any], Awaitable[D | None]],
    raw_id: str,
    caller: Principal,
    may_see: Callable[[dict[str, Any], D], bool],
    what: str,
) -> D:
    """The object with id `raw_id` if the caller may see it. A malformed id, a missing object and one
    the caller may not see all get the same 404: they may not learn that it exists."""
    oid = document_id(raw_id)
    found = await fetch(oid) if oid is not None else None
    if found is None or not may_see(caller.user, found):
        raise NotFound(f"No such {what}.")
    return found


CALLER: web.RequestKey[Principal] = web.RequestKey("service.caller", Principal)
