"""What a request hands to domain rules: one small object, built in one place (`Context.of`).

Handlers never pass the database, settings, hasher or caches one by one: a domain function takes the
context, the caller and what the request asked for. State a single domain owns (its key ring, its kept
sign-in attempts) lives under that domain's own typed key and is read as `ctx[KEY]`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from aiohttp import web

from service.cache import PRINCIPAL_CACHE, PrincipalCache
from service.config import SETTINGS, Settings
from service.db import MONGO, Database
from service.pagination import CURSORS, Cursors
from service.passwords import HASHER, PasswordHasher

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Context:
    db: Database
    settings: Settings
    hasher: PasswordHasher
    cache: PrincipalCache
    cursors: Cursors
    issuer: str  # PUBLIC_URL, or the request's own scheme and host
    state: Mapping[Any, Any]  # the app's state, for a domain's own keys

    @classmethod
    def of(cls, request: web.Request) -> Context:
        """The context of a request: its app's state, and the issuer its own scheme and host give."""
        return cls.of_app(request.config_dict, f"{request.scheme}://{request.host}")

    @classmethod
    def of_app(cls, state: Mapping[Any, Any], origin: str) -> Context:
        """The context of a running app (`state`: its config_dict), outside a request too (tests)."""
        settings = state[SETTINGS]
        return cls(
            db=state[MONGO].db,
            settings=settings,
            hasher=state[HASHER],
            cache=state[PRINCIPAL_CACHE],
            cursors=state[CURSORS],
            issuer=settings.public_url or origin,
            state=state,
        )

    def __getitem__(self, key: web.AppKey[T]) -> T:
        return cast(T, self.state[key])
